r"""Recommended models for a data set's shape, fitted in one call: :func:`fit_flow` and its siblings.

Each ``*_recipe(shape, ...)`` returns a plain configuration (architecture and training settings, JSON
ready, so it can key a cache or travel in a model file); ``build_*(config)`` makes the untrained model
from it under its seed; ``fit_*(x, ...)`` does both and trains on ``x`` with the module's trainer (every
trainer runs the one loop :func:`xcf.models.training.fit`) on ``x``'s device, and returns
``(model in eval mode, metrics)`` with the configuration inside the metrics.

==========================  ==========================================================================
model                       recipe
==========================  ==========================================================================
flow (:func:`fit_flow`)     multi-scale Glow: squeeze, ActNorm, invertible 1x1 convolution, affine
                            coupling with zero-initialised output and bounded scale, factor-out of half
                            the channels after every scale but the last; dequantisation and logit
                            inside; trained with random one-pixel shifts (augmentation)
classifier                  :class:`~xcf.models.classifier.DigitsCNN` sized to the images
GAN                         DCGAN generator and discriminator, non-saturating loss, EMA of the generator
VAE                         convolutional VAE, ``beta = 0.25``
==========================  ==========================================================================

The training length follows the data size (about the same number of samples seen for any ``N``) and
a ``max_seconds`` cap, under which the cosine learning-rate schedule still anneals to zero.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Optional

import torch
from nflows.flows.base import Flow
from torch import Tensor, nn

from xcf._validation import check_image_size
from xcf.models.classifier import DigitsCNN, accuracy, train_classifier
from xcf.models.flow_training import bits_per_dim, infer_levels, train_flow
from xcf.models.flows import glow_flow
from xcf.models.gan import DCGANDiscriminator, DCGANGenerator, train_gan
from xcf.models.vae import VAE, train_vae, vae_loss

__all__ = [
    "flow_recipe",
    "build_flow",
    "fit_flow",
    "classifier_recipe",
    "build_classifier",
    "fit_classifier",
    "gan_recipe",
    "build_gan",
    "fit_gan",
    "vae_recipe",
    "build_vae",
    "fit_vae",
]


def seeded(seed: int, make: Callable[[], nn.Module]) -> nn.Module:
    """``make()`` under ``torch.manual_seed(seed)``, leaving the global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


def _check_images(x: Any, role: str = "x") -> tuple[int, int, int]:
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim != 4 or x.shape[0] < 2:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{role} must be a float tensor of images (N, C, H, W) with N >= 2, got {shape}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{role} contains NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{role} lies in [{lo:.4g}, {hi:.4g}]; the recipes take images in [0, 1] (e.g. x / 255)")
    c, h, w = (int(s) for s in x.shape[1:])
    return c, h, w


def _epochs(n: int, samples: int, low: int, high: int) -> int:
    """Epochs that show the model about ``samples`` examples, within ``[low, high]``."""
    return int(min(high, max(low, math.ceil(samples / max(n, 1)))))


def _check_budget(max_seconds: Optional[float]) -> Optional[float]:
    if max_seconds is None:
        return None
    if isinstance(max_seconds, bool) or not isinstance(max_seconds, (int, float)) or not max_seconds > 0:
        raise ValueError(f"max_seconds must be a number > 0 or None, got {max_seconds!r}")
    return float(max_seconds)


# ------------------------------------------------------------------------------------------ flow
def _flow_scales(h: int, w: int) -> int:
    scales = 0
    while scales < 3 and h % 2 ** (scales + 1) == 0 and w % 2 ** (scales + 1) == 0 \
            and min(h, w) // 2 ** (scales + 1) >= 2:
        scales += 1
    return scales


def flow_recipe(shape: tuple[int, int, int], levels: int = 256, n: int = 4000) -> dict[str, Any]:
    """The recommended flow for images of ``shape`` with ``levels`` grey levels, trained on ``n`` images.

    A Glow (:func:`xcf.models.flows.glow_flow`) with as many scales as halving allows (at most 3, the
    last at least 2x2 pixels): 2 for 28x28, 3 for 32x32.

    Example:
        >>> flow_recipe((1, 28, 28))["model"]["scales"], flow_recipe((3, 32, 32))["model"]["scales"]
        (2, 3)
    """
    if not (isinstance(shape, (tuple, list)) and len(shape) == 3 and all(isinstance(s, int) and s > 0 for s in shape)):
        raise ValueError(f"shape must be (channels, height, width) of positive ints, got {shape!r}")
    c, h, w = shape
    scales = _flow_scales(h, w)
    if scales == 0:
        raise ValueError(f"a multi-scale flow halves height and width: {h}x{w} images need even sides of at least 4 "
                         "pixels (crop or pad them)")
    return {
        "kind": "glow",
        "model": {"shape": [c, h, w], "levels": int(levels), "hidden": 64, "steps_per_scale": 8, "scales": scales,
                  "alpha": 0.01, "scale_bound": 2.0, "dropout": 0.0},
        "train": {"epochs": _epochs(n, 400_000, 20, 500), "lr": 1e-3, "batch_size": 64, "max_shift": 1},
        "seed": 0,
        "version": 1,
    }


def build_flow(config: dict[str, Any]) -> Flow:
    """The untrained flow of a :func:`flow_recipe` configuration, seeded by its ``"seed"``."""
    model = dict(config["model"])
    model["shape"] = tuple(model["shape"])
    return seeded(config["seed"], lambda: glow_flow(**model))


def _flow_metrics(flow: Flow, x: Tensor, x_test: Optional[Tensor]) -> dict[str, Any]:
    out = {"train_bits_per_dim": float(bits_per_dim(flow, x[:1000]).mean())}
    if x_test is not None:
        out["test_bits_per_dim"] = float(bits_per_dim(flow, x_test, n_samples=2).mean())
        out["test_bits_per_dim_center"] = float(bits_per_dim(flow, x_test, dequantize=False).mean())
    return out


def fit_flow(
    x: Tensor,
    *,
    x_test: Optional[Tensor] = None,
    levels: Optional[int] = None,
    max_seconds: Optional[float] = None,
    progress: bool = False,
    seed: int = 0,
    config: Optional[dict[str, Any]] = None,
) -> tuple[Flow, dict[str, Any]]:
    """Build the recommended flow for ``x``'s shape (:func:`flow_recipe`) and train it on ``x``.

    Trains on ``x``'s device by maximum likelihood with random one-pixel shifts of every batch
    (:func:`xcf.models.flow_training.train_flow`).

    Args:
        x: training images ``(N, C, H, W)`` in ``[0, 1]``.
        x_test: held-out images for ``metrics["test_bits_per_dim"]``.
        levels: grey levels of the data (default: inferred from ``x``, ``x = k / (L - 1)``).
        max_seconds: wall-clock budget of the training (the schedule still anneals; default: no cap).
        progress: show a progress bar.
        seed: seed of the initialisation, the shuffling, the noise and the augmentation.
        config: a configuration to use instead of the recipe's (e.g. shorter training).

    Returns:
        ``(flow in eval mode, metrics)``: ``train_bits_per_dim`` (on up to 1,000 training images),
        ``test_bits_per_dim`` and ``test_bits_per_dim_center`` (with ``x_test``), ``train_seconds``,
        ``epochs``, ``capped`` and ``config``.

    Example:
        >>> x = torch.randint(0, 2, (64, 1, 8, 8)).float()
        >>> cfg = flow_recipe((1, 8, 8), levels=2, n=64)
        >>> cfg["model"].update(hidden=8, steps_per_scale=1); cfg["train"]["epochs"] = 1
        >>> flow, metrics = fit_flow(x, config=cfg)
        >>> flow.training, metrics["train_bits_per_dim"] > 0
        (False, True)
    """
    c, h, w = _check_images(x)
    if x_test is not None and tuple(_check_images(x_test, "x_test")) != (c, h, w):
        raise ValueError(f"x_test has images of shape {tuple(x_test.shape[1:])}, x of shape {(c, h, w)}")
    levels = infer_levels(x) if levels is None else levels
    cfg = dict(config) if config is not None else flow_recipe((c, h, w), levels, x.shape[0])
    cfg["seed"] = int(seed) if config is None else cfg.get("seed", int(seed))
    if tuple(cfg["model"]["shape"]) != (c, h, w):
        raise ValueError(f"the configuration's flow takes images of shape {tuple(cfg['model']['shape'])}, "
                         f"the data has {(c, h, w)}")
    flow = build_flow(cfg).to(x.device)
    metrics = _train_flow(flow, cfg, x, x_test, _check_budget(max_seconds), progress)
    return flow.eval(), {**metrics, "config": cfg}


def _train_flow(flow: Flow, cfg: dict[str, Any], x: Tensor, x_test: Optional[Tensor], max_seconds: Optional[float],
                progress: bool) -> dict[str, Any]:
    history = train_flow(flow, x, seed=cfg["seed"], progress=progress, max_seconds=max_seconds, **cfg["train"])
    flow.eval()
    return {**_flow_metrics(flow, x, x_test), "train_seconds": history["seconds"], "epochs": history["epochs"],
            "capped": history["capped"]}


# ------------------------------------------------------------------------------------ classifier
def _square(h: int, w: int, what: str) -> int:
    if h != w:
        raise ValueError(f"the recommended {what} takes square images, got {h}x{w}")
    return check_image_size(h)


def classifier_recipe(shape: tuple[int, int, int], n_classes: int, n: int = 4000) -> dict[str, Any]:
    """The recommended CNN (:class:`DigitsCNN`) for square images of ``shape`` (side a multiple of 4)."""
    c, h, w = shape
    return {
        "model": {"in_channels": c, "n_classes": int(n_classes), "image_size": _square(h, w, "classifier"),
                  "width": 32},
        "train": {"epochs": _epochs(n, 60_000, 10, 100), "lr": 2e-3, "batch_size": 64, "weight_decay": 1e-4},
        "seed": 0,
        "version": 1,
    }


def build_classifier(config: dict[str, Any]) -> DigitsCNN:
    """The untrained classifier of a :func:`classifier_recipe` configuration, seeded by its ``"seed"``."""
    return seeded(config["seed"], lambda: DigitsCNN(**config["model"]))


def fit_classifier(
    x: Tensor,
    y: Tensor,
    *,
    test: Optional[tuple[Tensor, Tensor]] = None,
    max_seconds: Optional[float] = None,
    progress: bool = False,
    seed: int = 0,
    config: Optional[dict[str, Any]] = None,
) -> tuple[DigitsCNN, dict[str, Any]]:
    """Build the recommended classifier for ``x`` and train it on ``(x, y)`` (cross-entropy, AdamW).

    Returns:
        ``(classifier in eval mode, metrics)``: ``train_accuracy``, ``test_accuracy`` (with ``test``),
        ``train_seconds``, ``config``.
    """
    c, h, w = _check_images(x)
    if not isinstance(y, Tensor) or y.dtype != torch.long or y.shape != (x.shape[0],):
        raise ValueError(f"y must be a long tensor of {x.shape[0]} class indices")
    cfg = dict(config) if config is not None else classifier_recipe((c, h, w), int(y.max()) + 1, x.shape[0])
    if config is None:
        cfg["seed"] = int(seed)
    model = build_classifier(cfg).to(x.device)
    metrics = _train_classifier(model, cfg, x, y, test, _check_budget(max_seconds), progress)
    return model.eval(), {**metrics, "config": cfg}


def _train_classifier(model: nn.Module, cfg: dict[str, Any], x: Tensor, y: Tensor,
                      test: Optional[tuple[Tensor, Tensor]], max_seconds: Optional[float],
                      progress: bool) -> dict[str, Any]:
    start = time.perf_counter()
    train_classifier(model, x, y, seed=cfg["seed"], progress=progress, max_seconds=max_seconds, **cfg["train"])
    metrics: dict[str, Any] = {"train_seconds": time.perf_counter() - start, "train_accuracy": accuracy(model, x, y)}
    if test is not None:
        metrics["test_accuracy"] = accuracy(model, *test)
    return metrics


# ------------------------------------------------------------------------------------- GAN / VAE
def gan_recipe(shape: tuple[int, int, int], n: int = 4000) -> dict[str, Any]:
    """The recommended DCGAN for square images of ``shape``: latent 16 for sides up to 8, else 32."""
    c, h, w = shape
    side = _square(h, w, "GAN")
    return {"latent_dim": 16 if side <= 8 else 32, "image_size": side, "channels": c, "width": 16 if side <= 8 else 32,
            "loss": "ns", "epochs": _epochs(n, 250_000, 10, 300), "lr": 5e-4, "batch_size": 64, "ema": 0.999,
            "seed": 0, "version": 1}


def build_gan(config: dict[str, Any]) -> DCGANGenerator:
    """The untrained generator of a :func:`gan_recipe` configuration, seeded by its ``"seed"``."""
    return seeded(config["seed"], lambda: DCGANGenerator(config["latent_dim"], config["image_size"],
                                                          config["channels"], config["width"]))


def fit_gan(
    x: Tensor, *, max_seconds: Optional[float] = None, progress: bool = False, seed: int = 0,
    config: Optional[dict[str, Any]] = None,
) -> tuple[DCGANGenerator, dict[str, Any]]:
    """Build the recommended GAN for ``x`` and train it (non-saturating loss, EMA generator).

    Returns:
        ``(generator in eval mode, metrics)``: final losses, ``epochs``, ``train_seconds``, ``config``.
    """
    c, h, w = _check_images(x)
    cfg = dict(config) if config is not None else gan_recipe((c, h, w), x.shape[0])
    if config is None:
        cfg["seed"] = int(seed)
    G = build_gan(cfg).to(x.device)
    metrics = _train_gan(G, cfg, x, _check_budget(max_seconds), progress)
    return G.eval(), {**metrics, "config": cfg}


def _train_gan(G: nn.Module, cfg: dict[str, Any], x: Tensor, max_seconds: Optional[float],
               progress: bool) -> dict[str, Any]:
    D = seeded(cfg["seed"] + 1, lambda: DCGANDiscriminator(cfg["image_size"], cfg["channels"], cfg["width"]))
    history = train_gan(G, D.to(x.device), x, loss=cfg["loss"], epochs=cfg["epochs"], lr=cfg["lr"],
                        batch_size=cfg["batch_size"], seed=cfg["seed"], progress=progress, ema=cfg["ema"],
                        max_seconds=max_seconds)
    return {"d_loss": history["d_loss"][-1], "g_loss": history["g_loss"][-1], "epochs": history["epochs"],
            "train_seconds": history["seconds"]}


def vae_recipe(shape: tuple[int, int, int], n: int = 4000) -> dict[str, Any]:
    """The recommended VAE for square images of ``shape``: latent 16 for sides up to 8, else 32; ``beta = 0.25``."""
    c, h, w = shape
    side = _square(h, w, "VAE")
    return {"latent_dim": 16 if side <= 8 else 32, "image_size": side, "channels": c, "width": 32,
            "epochs": _epochs(n, 150_000, 10, 200), "lr": 2e-3, "batch_size": 64, "beta": 0.25, "seed": 0,
            "version": 1}


def build_vae(config: dict[str, Any]) -> VAE:
    """The untrained VAE of a :func:`vae_recipe` configuration, seeded by its ``"seed"``."""
    return seeded(config["seed"], lambda: VAE(config["latent_dim"], config["image_size"], config["channels"],
                                               config["width"]))


def fit_vae(
    x: Tensor, *, x_test: Optional[Tensor] = None, max_seconds: Optional[float] = None, progress: bool = False,
    seed: int = 0, config: Optional[dict[str, Any]] = None,
) -> tuple[VAE, dict[str, Any]]:
    """Build the recommended VAE for ``x`` and train it (negative ELBO, Adam).

    Returns:
        ``(vae in eval mode, metrics)``: final loss terms, ``test_loss`` (with ``x_test``), ``epochs``,
        ``train_seconds``, ``config``.
    """
    c, h, w = _check_images(x)
    cfg = dict(config) if config is not None else vae_recipe((c, h, w), x.shape[0])
    if config is None:
        cfg["seed"] = int(seed)
    vae = build_vae(cfg).to(x.device)
    metrics = _train_vae(vae, cfg, x, x_test, _check_budget(max_seconds), progress)
    return vae.eval(), {**metrics, "config": cfg}


def _train_vae(vae: VAE, cfg: dict[str, Any], x: Tensor, x_test: Optional[Tensor], max_seconds: Optional[float],
               progress: bool) -> dict[str, Any]:
    history = train_vae(vae, x, epochs=cfg["epochs"], lr=cfg["lr"], batch_size=cfg["batch_size"], beta=cfg["beta"],
                        seed=cfg["seed"], progress=progress, max_seconds=max_seconds)
    metrics: dict[str, Any] = {"loss": history["loss"][-1], "reconstruction": history["reconstruction"][-1],
                               "kl": history["kl"][-1], "epochs": history["epochs"],
                               "train_seconds": history["seconds"]}
    if x_test is not None:
        gen = torch.Generator().manual_seed(cfg["seed"] + 1)
        with torch.no_grad():
            eps = torch.randn(x_test.shape[0], vae.latent_dim, generator=gen).to(x_test.device)
            metrics["test_loss"] = float(vae_loss(vae, x_test, eps, cfg["beta"])[0])
    return metrics
