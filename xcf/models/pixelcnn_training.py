"""Fitting a gated PixelCNN (:class:`xcf.models.pixelcnn.GatedPixelCNN`) by maximum likelihood: the recipe and the fit."""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor

from xcf.models.pixelcnn import _MODEL_KEYS, GatedPixelCNN, _check_int, _check_shape
from xcf.models.recipes import _check_budget, _check_images, _epochs, seeded
from xcf.models.training import TrainContext, fit

__all__ = ["pixelcnn_recipe", "build_pixelcnn", "fit_pixelcnn"]

_TRAIN_KEYS = ("epochs", "lr", "batch_size", "clip", "weight_decay")
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
        "train": {"epochs": _epochs(n, 200_000, 5, 500), "lr": 2e-3, "batch_size": 64, "clip": 1.0,
                  "weight_decay": 0.0},
        "seed": int(seed),
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


def fit_pixelcnn(
    x: Tensor,
    *,
    x_test: Optional[Tensor] = None,
    max_seconds: Optional[float] = None,
    progress: bool = False,
    seed: int = 0,
    config: Optional[dict[str, Any]] = None,
) -> tuple[GatedPixelCNN, dict[str, Any]]:
    r"""Build the recommended PixelCNN for ``x``'s shape (:func:`pixelcnn_recipe`) and train it on ``x``.

    Maximum likelihood: the loss is the mean negative log-likelihood per sub-pixel (cross-entropy over the
    ``L`` levels of ``k = round(x (L - 1))``), minimised by Adam with a cosine learning rate (annealed to 0
    also under ``max_seconds``) in :func:`xcf.models.training.fit`, on ``x``'s device.

    Args:
        x: training images ``(N, C, H, W)`` in ``[0, 1]``.
        x_test: held-out images for ``metrics["test_bits_per_dim"]``.
        max_seconds: wall-clock budget of the training (default: no cap).
        progress: show a progress bar.
        seed: seed of the initialisation and the shuffling, unless ``config`` has its own ``"seed"``.
        config: a configuration to use instead of the recipe's (e.g. a smaller model or shorter training).

    Returns:
        ``(model in eval mode, metrics)``: ``train_bits_per_dim`` (mean over up to 1,000 training images),
        ``test_bits_per_dim`` (with ``x_test``), ``train_seconds``, ``epochs``, ``steps``, ``capped``,
        ``history`` (training bits/dim per epoch) and ``config`` (``"model"``, ``"train"``, ``"seed"``).

    Example:
        >>> x = torch.randint(0, 4, (32, 1, 4, 4)) / 3.0
        >>> cfg = pixelcnn_recipe((1, 4, 4), n=32)
        >>> cfg["model"].update(hidden=4, layers=1, levels=4); cfg["train"]["epochs"] = 1
        >>> model, metrics = fit_pixelcnn(x, config=cfg)
        >>> model.training, 0 < metrics["train_bits_per_dim"] < 3
        (False, True)
    """
    c, h, w = _check_images(x, "x")
    if x_test is not None and _check_images(x_test, "x_test") != (c, h, w):
        raise ValueError(f"x_test has images of shape {tuple(x_test.shape[1:])}, x of shape {(c, h, w)}")
    max_seconds = _check_budget(max_seconds)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    cfg = pixelcnn_recipe((c, h, w), x.shape[0], seed) if config is None else _check_config(config)
    cfg = {"model": dict(cfg["model"]), "train": dict(cfg["train"]), "seed": int(cfg.get("seed", seed))}
    if tuple(cfg["model"].get("shape", (1, 28, 28))) != (c, h, w):
        raise ValueError(f"the configuration's model takes images of shape {tuple(cfg['model'].get('shape', ()))}, "
                         f"the data has {(c, h, w)}")
    model = build_pixelcnn(cfg).to(x.device)
    cfg["model"] = model.config()
    metrics = _train_pixelcnn(model, cfg, x, x_test, max_seconds, progress)
    return model, {**metrics, "config": cfg}


def _train_pixelcnn(model: GatedPixelCNN, cfg: dict[str, Any], x: Tensor, x_test: Optional[Tensor],
                    max_seconds: Optional[float], progress: bool) -> dict[str, Any]:
    levels = model.levels
    train = cfg["train"]

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
        metrics["test_bits_per_dim"] = float(model.bits_per_dim(x_test).mean())
    metrics.update(train_seconds=float(history["seconds"]), epochs=int(history["epochs"]),
                   steps=int(history["steps"]), capped=bool(history["capped"]),
                   history={"bits_per_dim": [float(v) for v in history.get("bits_per_dim", [])]})
    return metrics
