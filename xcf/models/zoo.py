"""The reference models of the digits default: configurations, builders, trained-and-cached models.

Each reference model has a configuration (``DIGITS_*_CONFIG``: architecture, training and data
settings, all part of the cache key), a builder ``build_digits_*(config)`` that makes the untrained
model deterministically from the configuration's seed, and a function ``digits_*()`` that trains it
once with its module's trainer (every trainer runs the one loop :func:`xcf.models.training.fit`) and
caches it with :func:`xcf.models.io.cached_model`:

==========================  ==============================  ====================================
model                       builder                         reference (trained, cached)
==========================  ==============================  ====================================
:class:`DigitsCNN`          :func:`build_digits_classifier`  :func:`digits_classifier`,
                                                            :func:`watermark_classifier`
RealNVP / Glow flow         :func:`build_digits_flow`       :func:`digits_flow`
:class:`DCGANGenerator`     :func:`build_digits_gan`        :func:`digits_gan`
:class:`VAE`                :func:`build_digits_vae`        :func:`digits_vae`
==========================  ==============================  ====================================

:func:`load_classifier` reads a user's :class:`DigitsCNN` from a file written by
:func:`xcf.models.io.save_model`.  The architectures and trainers stay in their modules
(:mod:`xcf.models.classifier`, :mod:`~xcf.models.flows`, :mod:`~xcf.models.gan`,
:mod:`~xcf.models.vae`); this module imports them, never the reverse.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from nflows.flows.base import Flow
from torch import nn

from xcf.datasets import DIGITS_LEVELS, load_digits
from xcf.datasets.mnist import load_mnist
from xcf.datasets.watermark import stamp
from xcf.models.classifier import DigitsCNN, accuracy, train_classifier
from xcf.models.flow_training import bits_per_dim, train_flow
from xcf.models.flows import glow_flow, realnvp_flow
from xcf.models.gan import DCGANDiscriminator, DCGANGenerator, train_gan
from xcf.models.io import cached_model, load_state, merged
from xcf.models.pixelcnn import GatedPixelCNN
from xcf.models.pixelcnn_training import _train_pixelcnn, build_pixelcnn, pixelcnn_recipe
from xcf.models.recipes import (
    _train_classifier,
    _train_flow,
    _train_gan,
    _train_vae,
    build_classifier,
    build_flow,
    build_gan,
    build_vae,
    classifier_recipe,
    flow_recipe,
    gan_recipe,
    seeded,
    vae_recipe,
)
from xcf.models.vae import VAE, train_vae, vae_loss

__all__ = [
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
    "digits_pixelcnn",
    "DIGITS_PIXELCNN_CONFIG",
]


# ------------------------------------------------------------------------------------ classifier
DIGITS_CLASSIFIER_CONFIG: dict[str, Any] = {
    "model": {"in_channels": 1, "n_classes": 10, "image_size": 8, "width": 32},
    "train": {"epochs": 10, "lr": 3e-3, "batch_size": 64, "weight_decay": 1e-4},
    "data": {"seed": 0, "test_size": 0.25},
    "seed": 0,
    "version": 1,
}


def build_digits_classifier(config: dict[str, Any]) -> DigitsCNN:
    """An untrained :class:`DigitsCNN` from a configuration like :data:`DIGITS_CLASSIFIER_CONFIG`, seeded
    by its ``"seed"`` (the global RNG is left as it was)."""
    return seeded(config["seed"], lambda: DigitsCNN(**config["model"]))


def digits_classifier(
    cache_dir: Optional[str | os.PathLike] = None,
    retrain: bool = False,
    progress: bool = False,
    overrides: Optional[dict[str, Any]] = None,
) -> tuple[DigitsCNN, dict[str, Any]]:
    """The reference digits classifier: a :class:`DigitsCNN` trained on ``load_digits("train")``.

    Trained once (a few seconds on one CPU thread) and cached with :func:`xcf.models.io.cached_model`.

    Args:
        cache_dir: the model cache (default ``$XCF_CACHE`` or ``~/.cache/xcf``).
        retrain: train again even if a cached model exists.
        progress: show a progress bar while training.
        overrides: settings that replace those of the reference configuration (e.g. shorter
            training for a smoke test); they are part of the cache key.

    Returns:
        ``(model in eval mode, metrics)`` with ``test_accuracy``, ``train_accuracy`` and ``train_seconds``.

    Example:
        >>> import tempfile
        >>> from xcf.models.io import QUICK                       # tiny budget; the default trains 30 epochs
        >>> model, metrics = digits_classifier(cache_dir=tempfile.mkdtemp(), overrides=QUICK["classifier"])
        >>> model.training, 0.0 <= metrics["test_accuracy"] <= 1.0
        (False, True)
    """
    config = merged(DIGITS_CLASSIFIER_CONFIG, overrides)

    def train(model: nn.Module) -> dict[str, Any]:
        x, y = load_digits("train", **config["data"])
        x_test, y_test = load_digits("test", **config["data"])
        start = time.perf_counter()
        history = train_classifier(model, x, y, seed=config["seed"], progress=progress, **config["train"])
        seconds = time.perf_counter() - start
        return {
            "test_accuracy": accuracy(model, x_test, y_test),
            "train_accuracy": accuracy(model, x, y),
            "train_seconds": seconds,
            "final_loss": history["loss"][-1],
        }

    return cached_model("digits-classifier", config, build_digits_classifier, train, directory=cache_dir,
                        retrain=retrain)


#: the Clever-Hans setting of the demo: a 2x2 bright square in the top-left corner of every training 7
WATERMARK: dict[str, Any] = {"target_class": 7, "pattern": "square", "position": (0, 0), "rate": 1.0}


def watermark_classifier(cache_dir: Optional[str | Path] = None, progress: bool = False,
                         overrides: Optional[dict[str, Any]] = None) -> tuple[DigitsCNN, dict[str, Any]]:
    """The reference CNN trained on digits whose class-7 images all carry a 2x2 corner square.

    A classifier with a known shortcut (:data:`WATERMARK`), for the Clever-Hans check of the demo.

    Args:
        cache_dir: the model cache (default ``$XCF_CACHE`` or ``~/.cache/xcf``).
        progress: show a progress bar while training.
        overrides: settings that replace those of :data:`DIGITS_CLASSIFIER_CONFIG`.

    Returns:
        ``(model in eval mode, metrics)`` with ``test_accuracy`` on the clean test split.

    Example:
        >>> import tempfile
        >>> from xcf.models.io import QUICK
        >>> model, metrics = watermark_classifier(tempfile.mkdtemp(), overrides=QUICK["classifier"])
        >>> 0.0 <= metrics["test_accuracy"] <= 1.0
        True
    """

    config = merged(DIGITS_CLASSIFIER_CONFIG, overrides)
    config = {**config, "watermark": {k: list(v) if isinstance(v, tuple) else v for k, v in WATERMARK.items()}}

    def train(model: DigitsCNN) -> dict[str, Any]:
        x, y = load_digits("train", **config["data"])
        xs, ys, _ = stamp(x, y, WATERMARK["pattern"], WATERMARK["position"], WATERMARK["target_class"],
                          WATERMARK["rate"])
        train_classifier(model, xs, ys, seed=config["seed"], progress=progress, **config["train"])
        x_test, y_test = load_digits("test", **config["data"])
        return {"test_accuracy": accuracy(model, x_test, y_test)}

    return cached_model("digits-classifier-watermark", config, build_digits_classifier, train, directory=cache_dir)


def load_classifier(path: str | Path) -> DigitsCNN:
    """A :class:`DigitsCNN` from a file written by :func:`xcf.models.io.save_model` (weights only).

    Args:
        path: the file (read with ``torch.load(weights_only=True)``).

    Returns:
        The classifier in eval mode.

    Raises:
        ValueError: if the file holds another class.

    Example:
        >>> import tempfile, pathlib
        >>> from xcf.models.io import save_model
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "cnn.pt"
        >>> _ = save_model(DigitsCNN(width=4), path, {"model": {"width": 4}})
        >>> load_classifier(path).width
        4
    """
    payload = load_state(path)
    if payload["class"] != "DigitsCNN":
        raise ValueError(f"{path} holds a {payload['class']}, not a DigitsCNN")
    config = payload["config"]
    model = DigitsCNN(**config.get("model", config))
    model.load_state_dict(payload["state_dict"])
    return model.eval()


# ------------------------------------------------------------------------------------------ flow
DIGITS_FLOW_CONFIGS: dict[str, dict[str, Any]] = {
    "realnvp": {
        "kind": "realnvp",
        "model": {
            "shape": [1, 8, 8], "levels": DIGITS_LEVELS, "hidden": 64, "blocks_per_scale": 2, "scales": 2,
            "alpha": 0.01, "scale_bound": 2.0, "dropout": 0.3,
        },
        "train": {"epochs": 50, "lr": 2e-3, "batch_size": 128},
        "data": {"seed": 0, "test_size": 0.25},
        "seed": 0,
        "version": 1,
    },
    "glow": {
        "kind": "glow",
        "model": {
            "shape": [1, 8, 8], "levels": DIGITS_LEVELS, "hidden": 64, "steps_per_scale": 8, "scales": 2,
            "alpha": 0.01, "scale_bound": 2.0, "dropout": 0.2,
        },
        "train": {"epochs": 40, "lr": 2e-3, "batch_size": 128},
        "data": {"seed": 0, "test_size": 0.25},
        "seed": 0,
        "version": 1,
    },
}
"""Settings of :func:`digits_flow`, tuned for test bits/dim within about 75 s of training on one CPU thread."""


def build_digits_flow(config: dict[str, Any]) -> Flow:
    """An untrained flow from a configuration like an entry of :data:`DIGITS_FLOW_CONFIGS`, seeded by its
    ``"seed"`` (the global RNG is left as it was)."""
    builder = realnvp_flow if config["kind"] == "realnvp" else glow_flow
    model = dict(config["model"])
    model["shape"] = tuple(model["shape"])
    return seeded(config["seed"], lambda: builder(**model))


def digits_flow(
    kind: str = "realnvp",
    cache_dir: Optional[str | os.PathLike] = None,
    retrain: bool = False,
    progress: bool = False,
    overrides: Optional[dict[str, Any]] = None,
) -> tuple[Flow, dict[str, Any]]:
    """The reference flow on the digits: RealNVP or Glow trained on ``load_digits("train")``.

    Trained once (about a minute on one CPU thread) and cached with
    :func:`xcf.models.io.cached_model`.

    Args:
        kind: ``"realnvp"`` or ``"glow"``.
        cache_dir: the model cache (default ``$XCF_CACHE`` or ``~/.cache/xcf``).
        retrain: train again even if a cached model exists.
        progress: show a progress bar while training.
        overrides: settings that replace those of the reference configuration (e.g. shorter
            training for a smoke test); they are part of the cache key.

    Returns:
        ``(flow in eval mode, metrics)``; metrics hold ``test_bits_per_dim`` (uniform dequantisation),
        ``test_bits_per_dim_center`` (``dequantize=False``), ``train_bits_per_dim`` and
        ``train_seconds``.

    Example:
        >>> import tempfile
        >>> from xcf.models.io import QUICK
        >>> flow, metrics = digits_flow("realnvp", cache_dir=tempfile.mkdtemp(), overrides=QUICK["flow"])
        >>> flow.training, metrics["test_bits_per_dim"] > 0
        (False, True)
    """
    if kind not in DIGITS_FLOW_CONFIGS:
        raise ValueError(f"kind must be one of {sorted(DIGITS_FLOW_CONFIGS)}, got {kind!r}")
    config = merged(DIGITS_FLOW_CONFIGS[kind], overrides)

    def train(flow: nn.Module) -> dict[str, Any]:
        x, _ = load_digits("train", **config["data"])
        x_test, _ = load_digits("test", **config["data"])
        history = train_flow(flow, x, seed=config["seed"], progress=progress, **config["train"])
        flow.eval()
        levels = config["model"]["levels"]
        return {
            "test_bits_per_dim": float(bits_per_dim(flow, x_test, levels, n_samples=4).mean()),
            "test_bits_per_dim_center": float(bits_per_dim(flow, x_test, levels, dequantize=False).mean()),
            "train_bits_per_dim": float(bits_per_dim(flow, x, levels).mean()),
            "train_seconds": history["seconds"],
            "epochs": len(history["nll"]),
        }

    return cached_model(f"digits-flow-{kind}", config, build_digits_flow, train, directory=cache_dir, retrain=retrain)


# ------------------------------------------------------------------------------------------- GAN
#: settings of the reference digits GAN (part of the cache key)
DIGITS_GAN_CONFIG: dict[str, Any] = {
    "latent_dim": 16,
    "image_size": 8,
    "channels": 1,
    "width": 16,
    "loss": "ns",
    "epochs": 150,
    "lr": 5e-4,
    "batch_size": 64,
    "ema": 0.999,
    "seed": 0,
    "data": "digits-train",
}


def build_digits_gan(config: dict[str, Any]) -> DCGANGenerator:
    """An untrained generator from a configuration like :data:`DIGITS_GAN_CONFIG`, seeded by its ``"seed"``
    (the global RNG is left as it was)."""
    return seeded(config["seed"], lambda: DCGANGenerator(config["latent_dim"], config["image_size"],
                                                          config["channels"], config["width"]))


def digits_gan(
    cache_dir: Optional[str] = None,
    retrain: bool = False,
    progress: bool = False,
    overrides: Optional[dict[str, Any]] = None,
) -> tuple[DCGANGenerator, dict[str, Any]]:
    """The reference GAN generator of the digits default (8x8, ``z ∈ R^16``), trained once and cached.

    Trains :class:`DCGANGenerator` / :class:`DCGANDiscriminator` with the non-saturating loss on the
    training split of :func:`xcf.datasets.load_digits` (150 epochs, about a minute on one CPU
    thread), keeps an exponential moving average of the generator's weights (``ema=0.999``), and
    caches the generator with :func:`xcf.models.io.cached_model`.

    Args:
        cache_dir: the model cache (default ``$XCF_CACHE`` or ``~/.cache/xcf``).
        retrain: ignore a cached file.
        progress: show a progress bar while training.
        overrides: settings that replace those of the reference configuration (e.g.
            ``{"epochs": 2}`` for a smoke test); they are part of the cache key.

    Returns:
        ``(generator in eval mode, metrics)``; metrics hold the final losses, epochs and seconds.

    Example:
        >>> import tempfile
        >>> from xcf.models.io import QUICK
        >>> G, metrics = digits_gan(cache_dir=tempfile.mkdtemp(), overrides=QUICK["gan"])
        >>> G(torch.randn(4, G.latent_dim)).shape
        torch.Size([4, 1, 8, 8])
    """
    config = merged(DIGITS_GAN_CONFIG, overrides)

    def train(G: nn.Module) -> dict[str, Any]:
        x, _ = load_digits("train")
        D = seeded(config["seed"] + 1, lambda: DCGANDiscriminator(config["image_size"], config["channels"],
                                                                   config["width"]))
        history = train_gan(
            G, D, x, loss=config["loss"], epochs=config["epochs"], lr=config["lr"],
            batch_size=config["batch_size"], seed=config["seed"], progress=progress, ema=config["ema"],
        )
        return {
            "d_loss": history["d_loss"][-1],
            "g_loss": history["g_loss"][-1],
            "epochs": history["epochs"],
            "steps": history["steps"],
            "train_seconds": history["seconds"],
        }

    model, metrics = cached_model("digits-gan", config, build_digits_gan, train, cache_dir, retrain)
    return model, metrics


# ------------------------------------------------------------------------------------------- VAE
#: settings of the reference digits VAE (part of the cache key)
DIGITS_VAE_CONFIG: dict[str, Any] = {
    "latent_dim": 16,
    "image_size": 8,
    "channels": 1,
    "width": 32,
    "epochs": 100,
    "lr": 2e-3,
    "batch_size": 64,
    "beta": 0.25,
    "seed": 0,
    "data": "digits-train",
}


def build_digits_vae(config: dict[str, Any]) -> VAE:
    """An untrained VAE from a configuration like :data:`DIGITS_VAE_CONFIG`, seeded by its ``"seed"``
    (the global RNG is left as it was)."""
    return seeded(config["seed"], lambda: VAE(config["latent_dim"], config["image_size"], config["channels"],
                                               config["width"]))


def digits_vae(
    cache_dir: Optional[str] = None,
    retrain: bool = False,
    progress: bool = False,
    overrides: Optional[dict[str, Any]] = None,
) -> tuple[VAE, dict[str, Any]]:
    """The reference VAE of the digits default (8x8, ``z ∈ R^16``), trained once and cached.

    Trained on the training split of :func:`xcf.datasets.load_digits` with ``β = 0.25`` (sharper
    reconstructions than ``β = 1`` at an equal Fréchet distance of its samples; about 25 s on one CPU
    thread) and cached with :func:`xcf.models.io.cached_model`.

    Args:
        cache_dir: the model cache (default ``$XCF_CACHE`` or ``~/.cache/xcf``).
        retrain: ignore a cached file.
        progress: show a progress bar while training.
        overrides: settings that replace those of the reference configuration (e.g.
            ``{"epochs": 2}`` for a smoke test); they are part of the cache key.

    Returns:
        ``(vae in eval mode, metrics)``; use ``vae.decoder`` as the generator and ``vae.encode`` as
        the encoder.  Metrics hold the final training loss terms, the test negative ELBO, epochs and seconds.

    Example:
        >>> import tempfile
        >>> from xcf.models.io import QUICK
        >>> vae, metrics = digits_vae(cache_dir=tempfile.mkdtemp(), overrides=QUICK["vae"])
        >>> vae.decoder(torch.zeros(2, vae.latent_dim)).shape
        torch.Size([2, 1, 8, 8])
    """
    config = merged(DIGITS_VAE_CONFIG, overrides)

    def train(vae: nn.Module) -> dict[str, Any]:
        x, _ = load_digits("train")
        history = train_vae(
            vae, x, epochs=config["epochs"], lr=config["lr"], batch_size=config["batch_size"],
            beta=config["beta"], seed=config["seed"], progress=progress,
        )
        x_test, _ = load_digits("test")
        gen = torch.Generator().manual_seed(config["seed"] + 1)
        with torch.no_grad():
            eps = torch.randn(x_test.shape[0], vae.latent_dim, generator=gen)
            test_loss = float(vae_loss(vae, x_test, eps, config["beta"])[0])
        return {
            "loss": history["loss"][-1],
            "reconstruction": history["reconstruction"][-1],
            "kl": history["kl"][-1],
            "test_loss": test_loss,
            "epochs": history["epochs"],
            "train_seconds": history["seconds"],
        }

    model, metrics = cached_model("digits-vae", config, build_digits_vae, train, cache_dir, retrain)
    return model, metrics


# ----------------------------------------------------------------------------------------- MNIST
#: the MNIST reference models: the :mod:`xcf.models.recipes` for ``load_mnist("train")`` (4,000 images of
#: 28x28, 256 levels), each with a wall-clock cap for a 2-core CPU (the schedules still anneal under it)
MNIST_CONFIGS: dict[str, dict[str, Any]] = {
    "classifier": {**classifier_recipe((1, 28, 28), 10, 4000), "max_seconds": 300, "data": "mnist-train"},
    "flow": {**flow_recipe((1, 28, 28), 256, 4000), "max_seconds": 1200, "data": "mnist-train"},
    "gan": {**gan_recipe((1, 28, 28), 4000), "max_seconds": 600, "data": "mnist-train"},
    "pixelcnn": {**pixelcnn_recipe((1, 28, 28), 4000), "max_seconds": 1200, "data": "mnist-train"},
    "vae": {**vae_recipe((1, 28, 28), 4000), "max_seconds": 300, "data": "mnist-train"},
}


def _mnist(name: str, build: Callable[[dict[str, Any]], nn.Module], train: Callable[..., dict[str, Any]],
           cache_dir: Optional[str | os.PathLike], retrain: bool, progress: bool,
           overrides: Optional[dict[str, Any]]) -> tuple[Any, dict[str, Any]]:
    config = merged(MNIST_CONFIGS[name], overrides)

    def fit_one(model: nn.Module) -> dict[str, Any]:
        return train(model, config, config["max_seconds"], progress)

    return cached_model(f"mnist-{name}", config, build, fit_one, directory=cache_dir, retrain=retrain)


def mnist_classifier(cache_dir: Optional[str | os.PathLike] = None, retrain: bool = False, progress: bool = False,
                     overrides: Optional[dict[str, Any]] = None) -> tuple[DigitsCNN, dict[str, Any]]:
    """The reference MNIST classifier: a 28x28 :class:`DigitsCNN` trained on ``load_mnist("train")``, cached.

    Returns:
        ``(model in eval mode, metrics)`` with ``test_accuracy`` on the 1,000 test digits.

    Example:
        >>> import tempfile
        >>> model, metrics = mnist_classifier(tempfile.mkdtemp(), overrides={"train": {"epochs": 1}, "max_seconds": 2})
        >>> model(torch.zeros(1, 1, 28, 28)).shape
        torch.Size([1, 10])
    """
    def train(model: nn.Module, config: dict[str, Any], seconds: float, progress: bool) -> dict[str, Any]:
        return _train_classifier(model, config, *load_mnist("train"), load_mnist("test"), seconds, progress)

    return _mnist("classifier", build_classifier, train, cache_dir, retrain, progress, overrides)


def mnist_flow(cache_dir: Optional[str | os.PathLike] = None, retrain: bool = False, progress: bool = False,
               overrides: Optional[dict[str, Any]] = None) -> tuple[Flow, dict[str, Any]]:
    """The reference MNIST flow: :func:`xcf.models.recipes.fit_flow`'s Glow on ``load_mnist("train")``, cached.

    Training is capped at 20 minutes (``MNIST_CONFIGS["flow"]["max_seconds"]``).

    Returns:
        ``(flow in eval mode, metrics)`` with ``test_bits_per_dim`` on the 1,000 test digits.

    Example:
        >>> import tempfile
        >>> tiny = {"model": {"hidden": 4, "steps_per_scale": 1}, "train": {"epochs": 1}, "max_seconds": 2}
        >>> flow, metrics = mnist_flow(tempfile.mkdtemp(), overrides=tiny)
        >>> metrics["test_bits_per_dim"] > 0
        True
    """
    def train(flow: nn.Module, config: dict[str, Any], seconds: float, progress: bool) -> dict[str, Any]:
        return _train_flow(flow, config, load_mnist("train")[0], load_mnist("test")[0], seconds, progress)

    return _mnist("flow", build_flow, train, cache_dir, retrain, progress, overrides)


def mnist_gan(cache_dir: Optional[str | os.PathLike] = None, retrain: bool = False, progress: bool = False,
              overrides: Optional[dict[str, Any]] = None) -> tuple[DCGANGenerator, dict[str, Any]]:
    """The reference MNIST GAN generator (28x28, ``z ∈ R^32``) trained on ``load_mnist("train")``, cached.

    Example:
        >>> import tempfile
        >>> G, _ = mnist_gan(tempfile.mkdtemp(), overrides={"epochs": 1, "max_seconds": 2})
        >>> G(torch.zeros(2, G.latent_dim)).shape
        torch.Size([2, 1, 28, 28])
    """
    def train(G: nn.Module, config: dict[str, Any], seconds: float, progress: bool) -> dict[str, Any]:
        return _train_gan(G, config, load_mnist("train")[0], seconds, progress)

    return _mnist("gan", build_gan, train, cache_dir, retrain, progress, overrides)


def mnist_vae(cache_dir: Optional[str | os.PathLike] = None, retrain: bool = False, progress: bool = False,
              overrides: Optional[dict[str, Any]] = None) -> tuple[VAE, dict[str, Any]]:
    """The reference MNIST VAE (28x28, ``z ∈ R^32``, ``beta = 0.25``) trained on ``load_mnist("train")``, cached.

    Example:
        >>> import tempfile
        >>> vae, metrics = mnist_vae(tempfile.mkdtemp(), overrides={"epochs": 1, "max_seconds": 2})
        >>> vae.decoder(torch.zeros(2, vae.latent_dim)).shape, "test_loss" in metrics
        (torch.Size([2, 1, 28, 28]), True)
    """
    def train(vae: nn.Module, config: dict[str, Any], seconds: float, progress: bool) -> dict[str, Any]:
        return _train_vae(vae, config, load_mnist("train")[0], load_mnist("test")[0], seconds, progress)

    return _mnist("vae", build_vae, train, cache_dir, retrain, progress, overrides)


def mnist_pixelcnn(cache_dir: Optional[str | os.PathLike] = None, retrain: bool = False, progress: bool = False,
                   overrides: Optional[dict[str, Any]] = None) -> tuple[GatedPixelCNN, dict[str, Any]]:
    """The reference MNIST PixelCNN, an independent realism judge: :func:`~xcf.models.pixelcnn_training.fit_pixelcnn`'s
    recipe on ``load_mnist("train")``, capped at 20 minutes, cached.

    Returns:
        ``(model in eval mode, metrics)`` with ``test_bits_per_dim`` on the 1,000 test digits.

    Example:
        >>> import tempfile
        >>> tiny = {"model": {"hidden": 4, "layers": 1, "head": 4}, "train": {"epochs": 1}, "max_seconds": 2}
        >>> model, metrics = mnist_pixelcnn(tempfile.mkdtemp(), overrides=tiny)
        >>> model.bits_per_dim(load_mnist("test")[0][:2]).shape, metrics["test_bits_per_dim"] > 0
        (torch.Size([2]), True)
    """
    def train(model: nn.Module, config: dict[str, Any], seconds: float, progress: bool) -> dict[str, Any]:
        return _train_pixelcnn(model, config, load_mnist("train")[0], load_mnist("test")[0], seconds, progress)

    return _mnist("pixelcnn", build_pixelcnn, train, cache_dir, retrain, progress, overrides)


#: the digits PixelCNN: the recipe for 8x8 images of 17 levels, capped at 3 minutes
DIGITS_PIXELCNN_CONFIG: dict[str, Any] = {**pixelcnn_recipe((1, 8, 8), 1347, levels=DIGITS_LEVELS), "max_seconds": 180,
                                          "data": "digits-train"}


def digits_pixelcnn(cache_dir: Optional[str | os.PathLike] = None, retrain: bool = False, progress: bool = False,
                    overrides: Optional[dict[str, Any]] = None) -> tuple[GatedPixelCNN, dict[str, Any]]:
    """The digits PixelCNN (8x8, 17 levels), an independent realism judge trained on ``load_digits("train")``, cached.

    Example:
        >>> import tempfile
        >>> tiny = {"model": {"hidden": 4, "layers": 1, "head": 4}, "train": {"epochs": 1}, "max_seconds": 2}
        >>> model, metrics = digits_pixelcnn(tempfile.mkdtemp(), overrides=tiny)
        >>> metrics["test_bits_per_dim"] > 0
        True
    """
    config = merged(DIGITS_PIXELCNN_CONFIG, overrides)

    def train(model: nn.Module) -> dict[str, Any]:
        return _train_pixelcnn(model, config, load_digits("train")[0], load_digits("test")[0], config["max_seconds"],
                               progress)

    return cached_model("digits-pixelcnn", config, build_pixelcnn, train, directory=cache_dir, retrain=retrain)
