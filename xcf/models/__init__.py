"""Models: architectures, their trainers (one loop, :func:`fit`), the reference models and model files.

* architectures: :class:`DigitsCNN`, flows (:func:`realnvp_flow`, :func:`glow_flow` and their layers),
  :class:`DCGANGenerator` / :class:`DCGANDiscriminator`, :class:`VAE`;
* training: :func:`fit` (:mod:`xcf.models.training`) and the trainers built on it,
  :func:`train_classifier`, :func:`train_flow`, :func:`train_gan`, :func:`train_vae`;
* recipes (:mod:`xcf.models.recipes`): the recommended model for a data set's shape, fitted in one call:
  :func:`fit_flow`, :func:`fit_classifier`, :func:`fit_gan`, :func:`fit_vae`, :func:`fit_pixelcnn`;
* reference models (:mod:`xcf.models.zoo`): ``build_digits_*`` builders and the cached ``digits_*`` and
  ``mnist_*``;
* files (:mod:`xcf.models.io`): :func:`save_model`, :func:`load_state`, :func:`cached_model`.
"""

from xcf.models.classifier import DigitsCNN, accuracy, train_classifier
from xcf.models.flow_training import bits_per_dim, infer_levels, train_flow
from xcf.models.flows import BoundedAffineCoupling, Dequantize, Logit, glow_flow, realnvp_flow
from xcf.models.gan import DCGANDiscriminator, DCGANGenerator, train_gan
from xcf.models.io import QUICK, cache_dir, cached_model, load_state, merged, save_model
from xcf.models.pixelcnn import GatedPixelCNN
from xcf.models.pixelcnn_training import build_pixelcnn, fit_pixelcnn, pixelcnn_recipe
from xcf.models.recipes import (
    classifier_recipe,
    fit_classifier,
    fit_flow,
    fit_gan,
    fit_vae,
    flow_recipe,
    gan_recipe,
    vae_recipe,
)
from xcf.models.training import TrainContext, fit
from xcf.models.vae import VAE, train_vae, vae_loss
from xcf.models.zoo import (
    DIGITS_CLASSIFIER_CONFIG,
    DIGITS_FLOW_CONFIGS,
    DIGITS_GAN_CONFIG,
    DIGITS_VAE_CONFIG,
    DIGITS_PIXELCNN_CONFIG,
    MNIST_CONFIGS,
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
    digits_pixelcnn,
    mnist_classifier,
    mnist_flow,
    mnist_gan,
    mnist_pixelcnn,
    mnist_vae,
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
    "GatedPixelCNN",
    # training
    "fit",
    "TrainContext",
    "train_classifier",
    "train_flow",
    "train_gan",
    "train_vae",
    "accuracy",
    "bits_per_dim",
    "infer_levels",
    "vae_loss",
    # recipes
    "fit_flow",
    "fit_classifier",
    "fit_gan",
    "fit_vae",
    "fit_pixelcnn",
    "build_pixelcnn",
    "pixelcnn_recipe",
    "flow_recipe",
    "classifier_recipe",
    "gan_recipe",
    "vae_recipe",
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
    "MNIST_CONFIGS",
    "mnist_classifier",
    "mnist_flow",
    "mnist_gan",
    "mnist_vae",
    "mnist_pixelcnn",
    "DIGITS_PIXELCNN_CONFIG",
    "digits_pixelcnn",
    # files
    "save_model",
    "load_state",
    "cache_dir",
    "cached_model",
    "merged",
    "QUICK",
]
