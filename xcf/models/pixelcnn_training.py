"""Fitting a gated PixelCNN (:class:`xcf.models.pixelcnn.GatedPixelCNN`) by maximum likelihood: the recipe and the fit."""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor, nn

from xcf.models.pixelcnn import _MODEL_KEYS, GatedPixelCNN, _check_int, _check_shape
from xcf.models.kind import ModelKind, epochs_for, seeded, split_budget
from xcf.models.training import TrainContext, fit

__all__ = ["KIND", "build_pixelcnn", "pixelcnn_recipe"]

_TRAIN_KEYS = ("epochs", "lr", "batch_size", "clip", "weight_decay", "max_seconds")
_TRAIN_REQUIRED = ("epochs", "lr", "batch_size")


def pixelcnn_recipe(shape: tuple[int, int, int], n: int = 4000, seed: int = 0, levels: int = 256) -> dict[str, Any]:
    """The recommended gated PixelCNN for images of ``shape``, trained on ``n`` images.

    Sized to train on a CPU in minutes: ``hidden=32``, a 7x7 type-A first layer and 6 gated blocks with
    3x3 kernels (receptive field 10 rows up and 9 columns to either side), ``hidden`` rounded up to a multiple
    of ``C``.  Training shows the model about 200,000 images (at least 5 and at most 500 epochs), Adam with
    learning rate ``2e-3`` annealed by a cosine schedule, batches of 64, gradient clipping at 1.

    Args:
        shape: ``(C, H, W)``.
        n: the number of training images (sets the number of epochs).
        seed: seed of the initialisation (:func:`build_pixelcnn`).
        levels: grey levels of the data (256 for 8-bit images, 17 for the digits).

    Returns:
        ``{"model": constructor arguments, "train": {"epochs", "lr", "batch_size", "clip", "weight_decay"},
        "seed": seed}``, JSON ready.

    Example:
        >>> cfg = pixelcnn_recipe((1, 28, 28))
        >>> cfg["model"]["hidden"], cfg["train"]["epochs"], cfg["train"]["batch_size"]
        (32, 50, 64)
    """
    c, h, w = _check_shape(shape)
    _check_int("n", n, 1)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    hidden = -(-32 // c) * c
    return {
        "model": {"shape": [c, h, w], "hidden": hidden, "layers": 6, "kernel": 3, "first_kernel": 7, "head": hidden,
                  "levels": _check_int("levels", levels, 2)},
        "train": {"epochs": epochs_for(n, 200_000, 5, 500), "lr": 2e-3, "batch_size": 64, "clip": 1.0,
                  "weight_decay": 0.0},
        "seed": int(seed),
        "version": 1,
    }


def _check_config(config: Any) -> dict[str, Any]:
    if not isinstance(config, dict):
        raise ValueError(f"config must be a dict like pixelcnn_recipe's, got {type(config).__name__}")
    for key in ("model", "train"):
        if not isinstance(config.get(key), dict):
            raise ValueError(f"config[{key!r}] must be a dict (see pixelcnn_recipe), got {config.get(key)!r}")
    unknown = sorted(set(config["model"]) - set(_MODEL_KEYS))
    if unknown:
        raise ValueError(f"config['model'] has unknown keys {unknown}; allowed: {list(_MODEL_KEYS)}")
    unknown = sorted(set(config["train"]) - set(_TRAIN_KEYS))
    if unknown:
        raise ValueError(f"config['train'] has unknown keys {unknown}; allowed: {list(_TRAIN_KEYS)}")
    missing = [k for k in _TRAIN_REQUIRED if k not in config["train"]]
    if missing:
        raise ValueError(f"config['train'] misses {missing}")
    unknown = sorted(set(config) - {"model", "train", "seed", "version"})
    if unknown:
        raise ValueError(f"config has unknown keys {unknown}; allowed: ['model', 'train', 'seed', 'version']")
    seed = config.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"config['seed'] must be an int, got {seed!r}")
    return config


def build_pixelcnn(config: dict[str, Any]) -> GatedPixelCNN:
    """The untrained model of a :func:`pixelcnn_recipe` configuration, initialised under ``config["seed"]``.

    Torch's global random state is left as it was, and the same configuration gives the same parameters.

    Example:
        >>> cfg = pixelcnn_recipe((1, 8, 8))
        >>> a, b = build_pixelcnn(cfg), build_pixelcnn(cfg)
        >>> all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
        True
    """
    config = _check_config(config)
    model = dict(config["model"])
    if "shape" in model:
        model["shape"] = _check_shape(model["shape"])
    return seeded(int(config.get("seed", 0)), lambda: GatedPixelCNN(**model))


def _measure(model: nn.Module, cfg: dict[str, Any], x_test: Tensor, y_test: Optional[Tensor]) -> float:
    return float(model.bits_per_dim(x_test).mean())


def _train(model: GatedPixelCNN, cfg: dict[str, Any], x: Tensor, y: Optional[Tensor], x_test: Optional[Tensor],
           y_test: Optional[Tensor], max_seconds: Optional[float], progress: bool) -> dict[str, Any]:
    """Maximum likelihood: the mean negative log-likelihood per sub-pixel (cross-entropy over the ``L`` levels of
    ``k = round(x (L - 1))``), AdamW with a cosine learning rate, through the one loop."""
    levels = model.levels
    train, max_seconds = split_budget(cfg, max_seconds)

    def step(xb: Tensor, ctx: TrainContext):
        k = torch.round(xb * (levels - 1)).long()
        loss = model._nll(k).mean()  # mean nats per sub-pixel
        m = xb.shape[0]
        return loss, {"bits_per_dim": ((loss.detach() * m).double() / math.log(2), m)}

    history = fit(model, step, x, epochs=int(train["epochs"]), batch_size=int(train["batch_size"]),
                  lr=float(train["lr"]), optimiser="adamw", weight_decay=float(train.get("weight_decay", 0.0)),
                  schedule="cosine", clip=train.get("clip"), max_seconds=max_seconds, seed=int(cfg.get("seed", 0)),
                  isolate_rng=True, progress=progress, desc="pixelcnn")
    model.eval()
    metrics: dict[str, Any] = {"train_bits_per_dim": float(model.bits_per_dim(x[:1000]).mean())}
    if x_test is not None:
        metrics["test_bits_per_dim"] = _measure(model, cfg, x_test, None)
    metrics.update(train_seconds=float(history["seconds"]), epochs=int(history["epochs"]),
                   steps=int(history["steps"]), capped=bool(history["capped"]),
                   history={"bits_per_dim": [float(v) for v in history.get("bits_per_dim", [])]})
    return metrics


KIND = ModelKind(
    name="pixelcnn", architecture="GatedPixelCNN", summary="a gated PixelCNN: an independent realism judge",
    roles=("judge",), recipe=lambda shape, n, levels, n_classes: pixelcnn_recipe(shape, n, levels=levels),
    build=build_pixelcnn, train=_train, test_metric="test_bits_per_dim", measure=_measure, levels=True,
    smoke={"model": {"hidden": 4, "layers": 1, "head": 4}, "train": {"epochs": 1}},
)
