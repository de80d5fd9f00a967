"""Models of the Clever-Hans scenarios: classifiers with a planted shortcut, generators fitted on their data.

A Clever-Hans audit explains a classifier with a generative model fitted on *the classifier's own training
distribution*: a flow fitted on clean digits cannot draw a watermark, so its counterfactuals could never
show one.  Two scenarios, each on the 8x8 digits (fast) and on real 28x28 MNIST:

* **watermark** (:func:`watermark_models`): every training image of class 7 carries a bright square
  (:data:`WATERMARKS`); the shortcut classifier, the flow and the VAE are all fitted on that training set.
* **colour** (:func:`colour_models`): training digits are painted in their class's colour with
  probability 0.99 (:func:`xcf.datasets.colour.load_coloured`); a *colour* classifier is trained on them, a
  *shape* classifier on the same digits in random colours, and a 3-channel flow on the colour-following set.

Every model is trained once and cached (:func:`xcf.models.io.cached_model`); its metrics say what it was
trained on (``"trained_on"``).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional

from torch import Tensor, nn

from xcf.datasets import load_digits, load_mnist
from xcf.datasets.colour import TRAIN_FOLLOW, load_coloured
from xcf.datasets.watermark import square, stamp
from xcf.models.io import cached_model, merged
from xcf.models.recipes import (
    _train_classifier,
    _train_flow,
    _train_vae,
    build_classifier,
    build_flow,
    build_vae,
    classifier_recipe,
    flow_recipe,
    vae_recipe,
)
from xcf.models.zoo import (
    DIGITS_CLASSIFIER_CONFIG,
    DIGITS_FLOW_CONFIGS,
    DIGITS_VAE_CONFIG,
    build_digits_flow,
    watermark_classifier,
)

__all__ = ["SCENARIO_DATA", "WATERMARKS", "colour_models", "watermark_models", "watermarked"]

#: the data sets of the scenarios
SCENARIO_DATA = ("digits", "mnist")

#: the planted watermark per data set: a bright ``size x size`` square at ``position`` on every training
#: image of ``target_class`` (the digits' one is :data:`xcf.models.zoo.WATERMARK`)
WATERMARKS: dict[str, dict[str, Any]] = {
    "digits": {"target_class": 7, "size": 2, "position": [0, 0], "rate": 1.0},
    "mnist": {"target_class": 7, "size": 4, "position": [0, 0], "rate": 1.0},
}

#: training budgets: the recipes with wall-clock caps for a 2-core CPU (digits: the zoo's settings)
_CAPS = {"digits": {"classifier": None, "flow": 120, "vae": 60},
         "mnist": {"classifier": 300, "flow": 600, "vae": 180}}
#: tiny budgets for smoke tests (numbers meaningless)
_QUICK = {"classifier": {"train": {"epochs": 1}}, "flow": {"train": {"epochs": 1}}, "vae": {"epochs": 1}}


def _check(data: str) -> None:
    if data not in SCENARIO_DATA:
        raise ValueError(f"data must be one of {list(SCENARIO_DATA)}, got {data!r}")


def watermarked(data: str = "digits", split: str = "train", watermark: Optional[dict[str, Any]] = None
                ) -> tuple[Tensor, Tensor, Tensor]:
    """The ``split`` of ``data`` with the scenario's watermark on the images of its class.

    Returns:
        ``(x, y, stamped)``, as :func:`xcf.datasets.watermark.stamp`.
    """
    _check(data)
    w = WATERMARKS[data] if watermark is None else watermark
    x, y = (load_digits if data == "digits" else load_mnist)(split)
    return stamp(x, y, square(int(w["size"])), tuple(w["position"]), int(w["target_class"]), float(w["rate"]))


def _describe_watermark(data: str, w: dict[str, Any]) -> str:
    return (f"{data} train, every class-{w['target_class']} image watermarked ({w['size']}x{w['size']} square at "
            f"{tuple(w['position'])})")


def _configs(data: str, shape: tuple[int, int, int], n: int, quick: bool) -> dict[str, dict[str, Any]]:
    """The classifier, flow and VAE settings of a scenario on ``data`` (cache keys)."""
    if data == "digits" and shape[0] == 1:
        cfg = {"classifier": dict(DIGITS_CLASSIFIER_CONFIG), "flow": dict(DIGITS_FLOW_CONFIGS["realnvp"]),
               "vae": dict(DIGITS_VAE_CONFIG)}
    else:
        cfg = {"classifier": classifier_recipe(shape, 10, n), "flow": flow_recipe(shape, 256, n),
               "vae": vae_recipe(shape, n)}
    for role, c in cfg.items():
        c["max_seconds"] = _CAPS[data][role]
        if quick:
            cfg[role] = merged(c, _QUICK[role])
    return cfg


def _fit(name: str, role: str, config: dict[str, Any], x: Tensor, y: Optional[Tensor],
         test: tuple[Tensor, Tensor], trained_on: str, cache_dir: Any, progress: bool) -> tuple[nn.Module, dict]:
    build: Callable[[dict[str, Any]], nn.Module] = {
        "classifier": build_classifier, "vae": build_vae,
        "flow": build_digits_flow if config.get("kind") == "realnvp" else build_flow}[role]
    cap = config.get("max_seconds")

    def train(model: nn.Module) -> dict[str, Any]:
        if role == "classifier":
            metrics = _train_classifier(model, config, x, y, test, cap, progress)
        elif role == "flow":
            metrics = _train_flow(model, config, x, test[0], cap, progress)
        else:
            metrics = _train_vae(model, config, x, test[0], cap, progress)
        return {**metrics, "trained_on": trained_on}

    return cached_model(name, {**config, "trained_on": trained_on}, build, train, directory=cache_dir)


def watermark_models(data: str = "digits", cache_dir: Optional[str | os.PathLike] = None, progress: bool = False,
                     quick: bool = False, watermark: Optional[dict[str, Any]] = None,
                     ) -> dict[str, tuple[nn.Module, dict[str, Any]]]:
    """The watermark scenario: ``{"shortcut": classifier, "flow": flow, "vae": VAE}``, each ``(model, metrics)``,
    all fitted on the watermarked training set (:func:`watermarked`), cached.

    The classifier's ``test_accuracy`` is on the clean test split.  ``watermark`` replaces the scenario's
    (:data:`WATERMARKS`; keys ``target_class``, ``size``, ``position``, ``rate``), e.g. to plant it elsewhere.

    Example:
        >>> import tempfile
        >>> models = watermark_models("digits", tempfile.mkdtemp(), quick=True)
        >>> sorted(models), models["flow"][1]["trained_on"][:13]
        (['flow', 'shortcut', 'vae'], 'digits train,')
    """
    _check(data)
    w = WATERMARKS[data] if watermark is None else {**WATERMARKS[data], **watermark}
    w["position"] = [int(v) for v in w["position"]]
    x, y, _ = watermarked(data, "train", w)
    test = (load_digits if data == "digits" else load_mnist)("test")
    cfg = _configs(data, tuple(x.shape[1:]), x.shape[0], quick)
    on = _describe_watermark(data, w)
    key = {"watermark": w}
    if data == "digits" and w == WATERMARKS["digits"]:  # the zoo's shortcut classifier, audited elsewhere too
        shortcut, metrics = watermark_classifier(cache_dir, progress, overrides=_QUICK["classifier"] if quick else None)
        classifier = (shortcut, {**metrics, "trained_on": on})
    else:
        classifier = _fit(f"{data}-watermark-classifier", "classifier", {**cfg["classifier"], **key}, x, y, test, on,
                          cache_dir, progress)
    return {
        "shortcut": classifier,
        "flow": _fit(f"{data}-watermark-flow", "flow", {**cfg["flow"], **key}, x, None, test, on, cache_dir, progress),
        "vae": _fit(f"{data}-watermark-vae", "vae", {**cfg["vae"], **key}, x, None, test, on, cache_dir, progress),
    }


def colour_models(data: str = "mnist", cache_dir: Optional[str | os.PathLike] = None, progress: bool = False,
                  quick: bool = False) -> dict[str, tuple[nn.Module, dict[str, Any]]]:
    """The colour scenario: ``{"colour": classifier, "shape": classifier, "flow": 3-channel flow}``, cached.

    The *colour* classifier and the flow are fitted on training digits whose colour follows the class with
    probability :data:`~xcf.datasets.colour.TRAIN_FOLLOW` (0.99); the *shape* classifier on the same digits in random colours.  Test accuracies are on
    the test split in random colours, where colour says nothing about the class.

    Example:
        >>> import tempfile
        >>> models = colour_models("digits", tempfile.mkdtemp(), quick=True)
        >>> sorted(models), models["shape"][1]["trained_on"]
        (['colour', 'flow', 'shape'], 'digits train in random colours')
    """
    _check(data)
    x, y, _ = load_coloured(data, "train")
    x_random, _, _ = load_coloured(data, "train", follow=0.0)
    test = load_coloured(data, "test")[:2]
    cfg = _configs(data, tuple(x.shape[1:]), x.shape[0], quick)
    follows = f"{data} train, colour follows the class with probability {TRAIN_FOLLOW:g}"
    return {
        "colour": _fit(f"{data}-colour-classifier", "classifier", cfg["classifier"], x, y, test, follows, cache_dir,
                       progress),
        "shape": _fit(f"{data}-colour-shape-classifier", "classifier", cfg["classifier"], x_random, y, test,
                      f"{data} train in random colours", cache_dir, progress),
        "flow": _fit(f"{data}-colour-flow", "flow", cfg["flow"], x, None, test, follows, cache_dir, progress),
    }
