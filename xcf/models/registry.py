r"""Every kind of model xcf builds and trains, in one table: :data:`KINDS`, and :func:`fit_model`.

Each kind declares, once and next to its architecture, a :class:`~xcf.models.kind.ModelKind`: its recipe for a
data shape, its builder from a configuration, its training step through the one loop
:func:`xcf.models.training.fit`, its held-out metric and a smoke-test budget.  Loading model files, ``xcf train``,
``xcf audit --fit``, the reference weights (:mod:`xcf.models.shipped`) and the command line's choices all read
this table, so a new kind is one module and one line below.

=============  ===========================================  ====================  ===========================
kind           model                                        declared in           held-out metric
=============  ===========================================  ====================  ===========================
classifier     :class:`~xcf.models.classifier.DigitsCNN`    ``classifier.py``     ``test_accuracy``
flow           Glow or RealNVP (nflows), logit inside        ``flow_training.py``  ``test_bits_per_dim``
gan            :class:`~xcf.models.gan.DCGANGenerator`      ``gan.py``            (Fréchet distance, apps)
vae            :class:`~xcf.models.vae.VAE`                 ``vae.py``            ``test_loss`` (negative ELBO)
pixelcnn       :class:`~xcf.models.pixelcnn.GatedPixelCNN`  ``pixelcnn_training``  ``test_bits_per_dim``
=============  ===========================================  ====================  ===========================

All configurations share one schema: ``{"model": {...}, "train": {...}, "seed": int, "version": int}``.
"""

from __future__ import annotations

import copy
from typing import Any, Optional

import torch
from torch import Tensor, nn

from xcf.models import classifier, flow_training, gan, pixelcnn_training, vae
from xcf.models.flow_training import infer_levels
from xcf.models.kind import ModelKind, check_budget, check_images

__all__ = ["KINDS", "get_kind", "smoke_config", "config_shape", "fit_model", "fit_flow", "fit_classifier", "fit_gan",
           "fit_vae", "fit_pixelcnn"]

#: the model kinds, by name
KINDS: dict[str, ModelKind] = {k.name: k for k in (
    classifier.KIND, flow_training.KIND, gan.KIND, vae.KIND, pixelcnn_training.KIND,
)}


def get_kind(name: str) -> ModelKind:
    """The :class:`~xcf.models.kind.ModelKind` called ``name``, or an error that lists the known ones.

    Example:
        >>> get_kind("flow").test_metric
        'test_bits_per_dim'
    """
    if name not in KINDS:
        raise ValueError(f"unknown model kind {name!r}; known: {list(KINDS)}")
    return KINDS[name]


def _overlay(base: dict[str, Any], over: Any) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in dict(over).items():
        if key not in out:
            continue  # a setting this architecture does not have (RealNVP has no steps_per_scale)
        out[key] = _overlay(out[key], value) if isinstance(out[key], dict) and isinstance(value, dict) else value
    return out


def smoke_config(kind: str, config: dict[str, Any]) -> dict[str, Any]:
    """``config`` shrunk by the kind's smoke-test budget: a tiny model that trains in seconds (numbers
    meaningless), for tests of whole pipelines.

    Example:
        >>> smoke_config("classifier", classifier.classifier_recipe((1, 8, 8)))["train"]["epochs"]
        1
    """
    out = _overlay(config, get_kind(kind).smoke)
    if "max_seconds" in out.get("train", {}):
        out["train"]["max_seconds"] = min(float(out["train"]["max_seconds"]), 5.0)
    return out


def config_shape(config: dict[str, Any]) -> tuple[int, int, int]:
    """The image shape ``(C, H, W)`` a configuration's model takes."""
    model = config["model"]
    if "shape" in model:
        return tuple(int(s) for s in model["shape"])  # type: ignore[return-value]
    side = int(model["image_size"])
    return int(model.get("in_channels", model.get("channels", 1))), side, side


def fit_model(
    kind: str,
    x: Tensor,
    y: Optional[Tensor] = None,
    *,
    x_test: Optional[Tensor] = None,
    y_test: Optional[Tensor] = None,
    levels: Optional[int] = None,
    max_seconds: Optional[float] = None,
    progress: bool = False,
    seed: int = 0,
    config: Optional[dict[str, Any]] = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Build the recommended ``kind`` of model for ``x`` (its recipe) and train it, on ``x``'s device.

    Args:
        kind: a name in :data:`KINDS`.
        x: training images ``(N, C, H, W)`` in ``[0, 1]``.
        y: class labels ``(N,)`` (a classifier needs them).
        x_test, y_test: held-out images (and labels) for the kind's test metric.
        levels: grey levels of the data (flow and PixelCNN; default: inferred from ``x``, ``x = k / (L - 1)``).
        max_seconds: wall-clock budget (the cosine schedule still anneals; default: the configuration's cap).
        progress: show a progress bar.
        seed: seed of the initialisation and the training (a given ``config`` keeps its own).
        config: a configuration to use instead of the recipe's (e.g. shorter training).

    Returns:
        ``(model in eval mode, metrics)``: the kind's training numbers, its test metric (with ``x_test``),
        ``train_seconds``, ``epochs`` and ``config``.

    Example:
        >>> from xcf.datasets import load_digits
        >>> x, y = load_digits("train")
        >>> cfg = smoke_config("classifier", classifier.classifier_recipe((1, 8, 8)))
        >>> model, metrics = fit_model("classifier", x, y, config=cfg)
        >>> model.training, 0.0 <= metrics["train_accuracy"] <= 1.0
        (False, True)
    """
    spec = get_kind(kind)
    shape = check_images(x)
    if x_test is not None and check_images(x_test, "x_test") != shape:
        raise ValueError(f"x_test has images of shape {tuple(x_test.shape[1:])}, x of shape {shape}")
    for name, labels, images in (("y", y, x), ("y_test", y_test, x_test)):
        if labels is not None and (not isinstance(labels, Tensor) or labels.dtype != torch.long
                                   or images is None or labels.shape != (images.shape[0],)):
            raise ValueError(f"{name} must be a long tensor of one class index per image")
    if spec.labels and y is None:
        raise ValueError(f"a {kind} trains on labelled images: pass y")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    budget = check_budget(max_seconds)
    if config is None:
        if spec.levels and levels is None:
            levels = infer_levels(x)
        n_classes = int(y.max()) + 1 if y is not None else 0
        cfg = spec.recipe(shape, int(x.shape[0]), int(levels or 256), n_classes)
        cfg["seed"] = int(seed)
    else:
        cfg = copy.deepcopy(config)
        cfg.setdefault("seed", int(seed))
    model = spec.build(cfg)
    if config_shape(cfg) != shape:
        raise ValueError(f"the configuration's {kind} takes images of shape {config_shape(cfg)}, the data has {shape}")
    if callable(getattr(model, "config", None)):
        cfg["model"] = model.config()  # the architecture's own normal form
    model = model.to(x.device)
    metrics = spec.train(model, cfg, x, y, x_test, y_test, budget, progress)
    return model.eval(), {**metrics, "config": cfg}


# ------------------------------------------------------------- one call per kind, with its own signature
def fit_flow(x: Tensor, *, x_test: Optional[Tensor] = None, levels: Optional[int] = None,
             max_seconds: Optional[float] = None, progress: bool = False, seed: int = 0,
             config: Optional[dict[str, Any]] = None) -> tuple[nn.Module, dict[str, Any]]:
    """``fit_model("flow", x, ...)``: the recommended Glow for ``x``, trained by maximum likelihood with random
    one-pixel shifts of every batch (:func:`xcf.models.flow_training.train_flow`).

    Returns:
        ``(flow in eval mode, metrics)``: ``train_bits_per_dim`` (on up to 1,000 training images),
        ``test_bits_per_dim`` and ``test_bits_per_dim_center`` (with ``x_test``), ``train_seconds``,
        ``epochs``, ``capped`` and ``config``.

    Example:
        >>> x = torch.randint(0, 2, (64, 1, 8, 8)).float()
        >>> cfg = flow_training.flow_recipe((1, 8, 8), levels=2, n=64)
        >>> cfg["model"].update(hidden=8, steps_per_scale=1); cfg["train"]["epochs"] = 1
        >>> flow, metrics = fit_flow(x, config=cfg)
        >>> flow.training, metrics["train_bits_per_dim"] > 0
        (False, True)
    """
    return fit_model("flow", x, x_test=x_test, levels=levels, max_seconds=max_seconds, progress=progress, seed=seed,
                     config=config)


def fit_classifier(x: Tensor, y: Tensor, *, test: Optional[tuple[Tensor, Tensor]] = None,
                   max_seconds: Optional[float] = None, progress: bool = False, seed: int = 0,
                   config: Optional[dict[str, Any]] = None) -> tuple[nn.Module, dict[str, Any]]:
    """``fit_model("classifier", x, y, ...)``: the recommended CNN, cross-entropy with AdamW.

    Returns:
        ``(classifier in eval mode, metrics)``: ``train_accuracy``, ``test_accuracy`` (with ``test``),
        ``train_seconds``, ``config``.
    """
    x_test, y_test = test if test is not None else (None, None)
    return fit_model("classifier", x, y, x_test=x_test, y_test=y_test, max_seconds=max_seconds, progress=progress,
                     seed=seed, config=config)


def fit_gan(x: Tensor, *, max_seconds: Optional[float] = None, progress: bool = False, seed: int = 0,
            config: Optional[dict[str, Any]] = None) -> tuple[nn.Module, dict[str, Any]]:
    """``fit_model("gan", x, ...)``: the recommended DCGAN (non-saturating loss, EMA generator).

    Returns:
        ``(generator in eval mode, metrics)``: final losses, ``epochs``, ``train_seconds``, ``config``.
    """
    return fit_model("gan", x, max_seconds=max_seconds, progress=progress, seed=seed, config=config)


def fit_vae(x: Tensor, *, x_test: Optional[Tensor] = None, max_seconds: Optional[float] = None,
            progress: bool = False, seed: int = 0, config: Optional[dict[str, Any]] = None
            ) -> tuple[nn.Module, dict[str, Any]]:
    """``fit_model("vae", x, ...)``: the recommended VAE (negative ELBO, Adam).

    Returns:
        ``(vae in eval mode, metrics)``: final loss terms, ``test_loss`` (with ``x_test``), ``epochs``,
        ``train_seconds``, ``config``.
    """
    return fit_model("vae", x, x_test=x_test, max_seconds=max_seconds, progress=progress, seed=seed, config=config)


def fit_pixelcnn(x: Tensor, *, x_test: Optional[Tensor] = None, levels: Optional[int] = None,
                 max_seconds: Optional[float] = None, progress: bool = False, seed: int = 0,
                 config: Optional[dict[str, Any]] = None) -> tuple[nn.Module, dict[str, Any]]:
    """``fit_model("pixelcnn", x, ...)``: the recommended gated PixelCNN, an exact likelihood of discrete images.

    Returns:
        ``(model in eval mode, metrics)``: ``train_bits_per_dim`` (over up to 1,000 training images),
        ``test_bits_per_dim`` (with ``x_test``), ``train_seconds``, ``epochs``, ``steps``, ``capped``,
        ``history`` (training bits/dim per epoch) and ``config``.

    Example:
        >>> x = torch.randint(0, 4, (32, 1, 4, 4)) / 3.0
        >>> cfg = pixelcnn_training.pixelcnn_recipe((1, 4, 4), n=32, levels=4)
        >>> cfg["model"].update(hidden=4, layers=1); cfg["train"]["epochs"] = 1
        >>> model, metrics = fit_pixelcnn(x, config=cfg)
        >>> model.training, 0 < metrics["train_bits_per_dim"] < 3
        (False, True)
    """
    return fit_model("pixelcnn", x, x_test=x_test, levels=levels, max_seconds=max_seconds, progress=progress,
                     seed=seed, config=config)
