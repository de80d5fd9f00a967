"""Models: the kinds xcf builds and trains (one registry), the reference models it ships, and model files.

* **kinds** (:mod:`xcf.models.registry`): classifier, flow, GAN, VAE and PixelCNN, each declared once next to
  its architecture (recipe, builder, training step, test metric); :func:`fit_model` builds the recommended model
  of a kind for a data set and trains it through the one loop :func:`fit`; :func:`fit_flow` and its siblings are
  the same call per kind;
* **reference models** (:mod:`xcf.models.shipped`): :func:`reference` loads a shipped, sha256-verified weights
  file (``reference("mnist-flow")``); :func:`references` lists the table;
* architectures: :class:`DigitsCNN`, flows (:func:`realnvp_flow`, :func:`glow_flow` and their layers),
  :class:`DCGANGenerator` / :class:`DCGANDiscriminator`, :class:`VAE`, :class:`GatedPixelCNN`;
* files (:mod:`xcf.models.io`, :mod:`xcf.models.loading`): :func:`save_model`, :func:`load_state`,
  :func:`save_weights`, :func:`read_weights`, :func:`load_model`.
"""

from xcf.models.classifier import DigitsCNN, accuracy, build_classifier, classifier_recipe, train_classifier
from xcf.models.encoder import LatentEncoder, fit_encoder, train_encoder
from xcf.models.flow_training import bits_per_dim, build_flow, flow_recipe, infer_levels, train_flow
from xcf.models.flows import BoundedAffineCoupling, Dequantize, Logit, glow_flow, realnvp_flow
from xcf.models.gan import DCGANDiscriminator, DCGANGenerator, build_gan, gan_recipe, train_gan
from xcf.models.io import cache_dir, cached_model, load_state, read_weights, save_model, save_weights
from xcf.models.pixelcnn import GatedPixelCNN
from xcf.models.pixelcnn_training import build_pixelcnn, pixelcnn_recipe
from xcf.models.shipped import Reference, reference, references
from xcf.models.registry import (
    KINDS,
    fit_classifier,
    fit_flow,
    fit_gan,
    fit_model,
    fit_pixelcnn,
    fit_vae,
    get_kind,
)
from xcf.models.kind import ModelKind
from xcf.models.training import TrainContext, fit
from xcf.models.vae import VAE, build_vae, train_vae, vae_loss, vae_recipe

__all__ = [
    # kinds
    "KINDS",
    "ModelKind",
    "get_kind",
    "fit_model",
    "fit_flow",
    "fit_classifier",
    "fit_gan",
    "fit_vae",
    "fit_pixelcnn",
    # reference models
    "Reference",
    "reference",
    "references",
    # architectures, recipes and builders
    "DigitsCNN",
    "classifier_recipe",
    "build_classifier",
    "Dequantize",
    "Logit",
    "BoundedAffineCoupling",
    "realnvp_flow",
    "glow_flow",
    "flow_recipe",
    "build_flow",
    "DCGANGenerator",
    "LatentEncoder",
    "fit_encoder",
    "train_encoder",
    "DCGANDiscriminator",
    "gan_recipe",
    "build_gan",
    "VAE",
    "vae_recipe",
    "build_vae",
    "GatedPixelCNN",
    "pixelcnn_recipe",
    "build_pixelcnn",
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
    # files
    "save_model",
    "load_state",
    "save_weights",
    "read_weights",
    "cache_dir",
    "cached_model",
]
