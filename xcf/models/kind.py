"""What a model kind declares (:class:`ModelKind`), and the helpers every kind's recipe shares.

A kind's module (``classifier.py``, ``flow_training.py``, ``gan.py``, ``vae.py``, ``pixelcnn_training.py``) defines
its architecture, its recipe, its builder and its training step, and ends with ``KIND = ModelKind(...)``;
:data:`xcf.models.registry.KINDS` collects them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

import torch
from torch import Tensor, nn

from xcf._validation import check_image_size

__all__ = ["ModelKind", "check_budget", "check_images", "epochs_for", "seeded", "split_budget", "square_side"]


def seeded(seed: int, make: Callable[[], nn.Module]) -> nn.Module:
    """``make()`` under ``torch.manual_seed(seed)``, leaving the global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


def check_images(x: Any, role: str = "x") -> tuple[int, int, int]:
    """``(C, H, W)`` of a float image batch ``(N, C, H, W)`` in ``[0, 1]`` with ``N >= 2``, or a clear error."""
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


def epochs_for(n: int, samples: int, low: int, high: int) -> int:
    """Epochs that show a model about ``samples`` examples of a set of ``n``, within ``[low, high]``."""
    return int(min(high, max(low, math.ceil(samples / max(n, 1)))))


def check_budget(max_seconds: Optional[float]) -> Optional[float]:
    """A wall-clock budget in seconds: a number > 0, or ``None`` for none."""
    if max_seconds is None:
        return None
    if isinstance(max_seconds, bool) or not isinstance(max_seconds, (int, float)) or not max_seconds > 0:
        raise ValueError(f"max_seconds must be a number > 0 or None, got {max_seconds!r}")
    return float(max_seconds)


@dataclass(frozen=True)
class ModelKind:
    """What xcf knows of one kind of model: declared once, next to its architecture, and collected by
    :data:`xcf.models.registry.KINDS`.

    Every configuration has one schema: ``{"model": constructor arguments, "train": training settings (with an
    optional ``"max_seconds"`` cap), "seed": int, "version": int}``, plain JSON values.

    Attributes:
        name: ``"classifier"``, ``"flow"``, ``"gan"``, ``"vae"`` or ``"pixelcnn"``.
        architecture: the class name a model file records (``"DigitsCNN"``, ``"Flow"``...).
        summary: one line for ``xcf train --help`` and ``xcf models``.
        roles: what the model can be in an audit (``"classifier"``, ``"flow"``, ``"generator"``, ``"judge"``).
        recipe: ``recipe(shape, n, levels, n_classes) -> config``: the recommended model for images of
            ``shape`` (``(C, H, W)``), ``n`` training images of ``levels`` grey levels and ``n_classes`` classes.
        build: ``build(config) -> module``: the untrained model, initialised under ``config["seed"]``.
        train: ``train(module, config, x, y, x_test, y_test, max_seconds, progress) -> metrics``: trains in place
            through the one loop :func:`fit` and measures :attr:`test_metric` when ``x_test`` is given.
        test_metric: the held-out number a trained model records (``"test_accuracy"``...).
        measure: ``measure(module, config, x_test, y_test) -> float``: :attr:`test_metric`, deterministic; ``None``
            where it needs the evaluation layer (the GAN's Fréchet distance, measured by :mod:`xcf.apps.models`).
        higher_is_better: whether a larger :attr:`test_metric` is better.
        labels: whether training needs class labels.
        levels: whether the model is of discrete grey levels (its recipe needs the data's number of levels).
        smoke: overrides of a configuration that make a tiny, fast smoke-test model (numbers meaningless).
    """

    name: str
    architecture: str
    summary: str
    roles: tuple[str, ...]
    recipe: Callable[[tuple[int, int, int], int, int, int], dict[str, Any]]
    build: Callable[[dict[str, Any]], nn.Module]
    train: Callable[..., dict[str, Any]]
    test_metric: Optional[str]
    measure: Optional[Callable[[nn.Module, dict[str, Any], Tensor, Optional[Tensor]], float]] = None
    higher_is_better: bool = False
    labels: bool = False
    levels: bool = False
    smoke: Mapping[str, Any] = field(default_factory=dict)


def split_budget(config: dict[str, Any], max_seconds: Optional[float]) -> tuple[dict[str, Any], Optional[float]]:
    """The training settings without ``"max_seconds"``, and the budget: ``max_seconds`` if given, else the
    configuration's own cap (or ``None``)."""
    train = dict(config["train"])
    cap = train.pop("max_seconds", None)
    return train, check_budget(max_seconds if max_seconds is not None else cap)


def square_side(shape: tuple[int, int, int], what: str) -> tuple[int, int]:
    """``(channels, side)`` of square images of ``shape`` whose side the convolutional ``what`` can take (a
    multiple of 4), or a clear error."""
    c, h, w = shape
    if h != w:
        raise ValueError(f"the recommended {what} takes square images, got {h}x{w}")
    return int(c), check_image_size(h)
