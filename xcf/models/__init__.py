"""Models: architectures, their trainers (one loop, :func:`fit`), the reference models and model files.

* architectures: :class:`DigitsCNN`, flows (:func:`realnvp_flow`, :func:`glow_flow` and their layers),
  :class:`DCGANGenerator` / :class:`DCGANDiscriminator`, :class:`VAE`;
* training: :func:`fit` (:mod:`xcf.models.training`) and the trainers built on it,
  :func:`train_classifier`, :func:`train_flow`, :func:`train_gan`, :func:`train_vae`;
* reference models (:mod:`xcf.models.zoo`): ``build_digits_*`` builders and the cached ``digits_*``;
* files (:mod:`xcf.models.io`): :func:`save_model`, :func:`load_state`, :func:`cached_model`.
"""

from xcf.models.classifier import DigitsCNN, accuracy, train_classifier
from xcf.models.flow_training import bits_per_dim, train_flow
from xcf.models.flows import BoundedAffineCoupling, Dequantize, Logit, glow_flow, realnvp_flow
from xcf.models.gan import DCGANDiscriminator, DCGANGenerator, train_gan
from xcf.models.io import QUICK, cache_dir, cached_model, load_state, merged, save_model
from xcf.models.training import TrainContext, fit
from xcf.models.vae import VAE, train_vae, vae_loss
from xcf.models.zoo import (
    DIGITS_CLASSIFIER_CONFIG,
    DIGITS_FLOW_CONFIGS,
    DIGITS_GAN_CONFIG,
    DIGITS_VAE_CONFIG,
    WATERMARK,
    build_digits_classifier,
    build_digits_flow,
    build_digits_gan,
    build_digits_vae,
    digits_classifier,
    digits_flow,
    digits_gan,
    digits_vae,
    load_classifier,
    watermark_classifier,
)

__all__ = [
    # architectures
    "DigitsCNN",
    "Dequantize",
    "Logit",
    "BoundedAffineCoupling",
    "realnvp_flow",
    "glow_flow",
    "DCGANGenerator",
    "DCGANDiscriminator",
    "VAE",
    # training
    "fit",
    "TrainContext",
    "train_classifier",
    "train_flow",
    "train_gan",
    "train_vae",
    "accuracy",
    "bits_per_dim",
    "vae_loss",
    # reference models
    "DIGITS_CLASSIFIER_CONFIG",
    "DIGITS_FLOW_CONFIGS",
    "DIGITS_GAN_CONFIG",
    "DIGITS_VAE_CONFIG",
    "WATERMARK",
    "build_digits_classifier",
    "build_digits_flow",
    "build_digits_gan",
    "build_digits_vae",
    "digits_classifier",
    "digits_flow",
    "digits_gan",
    "digits_vae",
    "watermark_classifier",
    "load_classifier",
    # files
    "save_model",
    "load_state",
    "cache_dir",
    "cached_model",
    "merged",
    "QUICK",
]
