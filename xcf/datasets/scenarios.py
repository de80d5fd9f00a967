"""The data of the reference models, by name: the digits, MNIST and their Clever-Hans scenarios.

==========================  ===================================================  ==============================
name                        training split                                       test split
==========================  ===================================================  ==============================
``digits``, ``mnist``       :func:`~xcf.datasets.load_digits` / ``load_mnist``   the same loader's test split
``*-watermark``             every class-7 image carries :data:`WATERMARKS`'s      clean (no watermark)
                            square (:func:`watermarked`)
``*-colour``                colour follows the class with probability 0.99        random colours
                            (:func:`~xcf.datasets.colour.load_coloured`)
``*-colour-random``         the same digits in random colours                    random colours
==========================  ===================================================  ==============================
"""

from __future__ import annotations

from typing import Any, Optional

from torch import Tensor

from xcf.datasets.colour import TRAIN_FOLLOW, load_coloured
from xcf.datasets.digits import load_digits
from xcf.datasets.mnist import load_mnist
from xcf.datasets.watermark import square, stamp

__all__ = ["REFERENCE_DATA", "SCENARIO_DATA", "WATERMARKS", "describe_data", "reference_data", "watermarked"]

#: the base data sets of the scenarios
SCENARIO_DATA = ("digits", "mnist")

#: the planted watermark per data set: a bright ``size x size`` square at ``position`` on every training image of
#: ``target_class`` (the one watermark definition of xcf)
WATERMARKS: dict[str, dict[str, Any]] = {
    "digits": {"target_class": 7, "size": 2, "position": [0, 0], "rate": 1.0},
    "mnist": {"target_class": 7, "size": 4, "position": [0, 0], "rate": 1.0},
}

_SUFFIXES = ("", "-watermark", "-colour", "-colour-random")
#: every name :func:`reference_data` knows
REFERENCE_DATA = tuple(f"{base}{suffix}" for base in SCENARIO_DATA for suffix in _SUFFIXES)


def _check(data: str) -> None:
    if data not in SCENARIO_DATA:
        raise ValueError(f"data must be one of {list(SCENARIO_DATA)}, got {data!r}")


def watermarked(data: str = "digits", split: str = "train", watermark: Optional[dict[str, Any]] = None
                ) -> tuple[Tensor, Tensor, Tensor]:
    """The ``split`` of ``data`` with the scenario's watermark (:data:`WATERMARKS`, or ``watermark``) on the
    images of its class.

    Returns:
        ``(x, y, stamped)``, as :func:`xcf.datasets.watermark.stamp`.

    Example:
        >>> x, y, stamped = watermarked("digits", "test")
        >>> bool((x[stamped][:, :, :2, :2] == 1).all()), bool((y[stamped] == 7).all())
        (True, True)
    """
    _check(data)
    w = WATERMARKS[data] if watermark is None else watermark
    x, y = (load_digits if data == "digits" else load_mnist)(split)
    return stamp(x, y, square(int(w["size"])), tuple(w["position"]), int(w["target_class"]), float(w["rate"]))


def _split(name: str) -> tuple[str, str]:
    if name not in REFERENCE_DATA:
        raise ValueError(f"unknown data {name!r}; known: {list(REFERENCE_DATA)}")
    base, _, suffix = name.partition("-")
    return base, suffix


def reference_data(name: str, split: str = "train") -> tuple[Tensor, Tensor]:
    """The ``split`` (``"train"`` or ``"test"``) of the data set called ``name`` (see the table above).

    Example:
        >>> x, y = reference_data("digits-colour", "test")
        >>> tuple(x.shape[1:]), int(y.shape[0])
        ((3, 8, 8), 450)
    """
    base, suffix = _split(name)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if suffix == "watermark" and split == "train":
        return watermarked(base, split)[:2]
    if suffix.startswith("colour"):
        follow = 0.0 if suffix == "colour-random" or split == "test" else TRAIN_FOLLOW
        return load_coloured(base, split, follow=follow)[:2]
    return (load_digits if base == "digits" else load_mnist)(split)


def describe_data(name: str) -> str:
    """One phrase for reports: what the training split of ``name`` is.

    Example:
        >>> describe_data("mnist-watermark")
        'mnist train, every class-7 image watermarked (4x4 square at (0, 0))'
    """
    base, suffix = _split(name)
    if suffix == "watermark":
        w = WATERMARKS[base]
        return (f"{base} train, every class-{w['target_class']} image watermarked ({w['size']}x{w['size']} square at "
                f"{tuple(w['position'])})")
    if suffix == "colour":
        return f"{base} train, colour follows the class with probability {TRAIN_FOLLOW:g}"
    if suffix == "colour-random":
        return f"{base} train in random colours"
    return f"{base} train"
