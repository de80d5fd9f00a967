"""``xcf train flow|gan|vae|classifier|pixelcnn``: the recommended model for a data set, fitted and saved.

:func:`run_train` opens the data (:func:`xcf.datasets.files.open_images`), checks that the model kind
fits it (labels for a classifier, image sides the architecture can take) before decoding any pixel,
holds out a test part (or takes ``test_data``), trains the recommended architecture for the data's shape
(its kind's recipe in :data:`xcf.models.registry.KINDS`, trained by :func:`~xcf.models.registry.fit_model`) on the chosen device, measures it on the test
part (bits/dim for density models, Fréchet distance for generators, accuracy for a classifier) and
writes an xcf model file (configuration + weights-only state dict + those numbers) that ``xcf audit``
loads.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from xcf.apps.models import frechet_of_generator
from xcf.datasets.files import ImageData, open_images
from xcf.models.flow_training import infer_levels
from xcf.models.io import save_model
from xcf.models.registry import KINDS, fit_model, get_kind
from xcf.scale.distributed import pick_device

__all__ = ["KINDS", "run_train"]

#: fraction of the data held out for the test numbers when no test data is given
HOLDOUT = 0.1


def _recipe(kind: str, data: ImageData, n: int) -> dict[str, Any]:
    spec = get_kind(kind)
    if spec.labels and not data.labelled:
        raise ValueError(f"a {kind} needs labels, but {data.source} has none (an ImageFolder's sub-folders "
                         "or an .npz 'y' give them)")
    return spec.recipe(data.shape, n, data.levels or 256, len(data.classes or []) or 2)


def _check_out(out: str | os.PathLike) -> Path:
    path = Path(out).expanduser()
    if path.is_dir():
        raise ValueError(f"--out {path} is a folder; give the model file to write (e.g. {path / 'model.pt'})")
    parent = path.parent if str(path.parent) else Path(".")
    if parent.exists() and not os.access(parent, os.W_OK):
        raise ValueError(f"--out {path}: cannot write into {parent}")
    return path


def _split(x: Tensor, y: Optional[Tensor], seed: int) -> tuple[Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """A seeded hold-out of :data:`HOLDOUT` (stratified when labelled); none below 20 images."""
    n = x.shape[0]
    if n < 20:
        return x, y, None, None
    from sklearn.model_selection import train_test_split

    index = torch.arange(n).numpy()
    strat = y.numpy() if y is not None and int(torch.bincount(y).min()) >= 2 else None
    train, test = train_test_split(index, test_size=HOLDOUT, random_state=seed, stratify=strat)
    train, test = torch.as_tensor(sorted(train)), torch.as_tensor(sorted(test))
    return x[train], (y[train] if y is not None else None), x[test], (y[test] if y is not None else None)


def run_train(
    kind: str,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    test_data: Optional[str | os.PathLike] = None,
    max_minutes: Optional[float] = None,
    epochs: Optional[int] = None,
    device: str = "auto",
    seed: int = 0,
    channels: Optional[int] = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Fit the recommended ``kind`` of model on ``data`` and write it to ``out`` (the engine of ``xcf train``).

    Args:
        kind: one of :data:`KINDS`.
        data: a built-in name, an ImageFolder or an ``.npz`` (see :func:`xcf.datasets.files.open_images`).
        out: the model file to write (atomically, only once training finished).
        test_data: held-out images for the test numbers (default: a seeded 10% of ``data``, none below 20 images).
        max_minutes: wall-clock budget of the training (the learning-rate schedule still anneals).
        epochs: passes over the training images (default: the recipe's, about the same number of samples
            seen for any data size).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        seed: seed of the hold-out, the initialisation and the training.
        channels: read the images as greyscale (1) or RGB (3).
        progress: a progress bar.

    Returns:
        Plain values: ``kind``, ``out``, ``images``, ``test_images``, ``shape``, ``train_seconds`` and the test
        numbers (``test_bits_per_dim``, ``test_accuracy`` or ``frechet_distance_pca``), also stored in the file.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "cnn.pt"
        >>> s = run_train("classifier", "digits-train", out, epochs=1, progress=False)
        >>> s["kind"], s["shape"], 0.0 <= s["test_accuracy"] <= 1.0, out.is_file()
        ('classifier', [1, 8, 8], True, True)
    """
    if kind not in KINDS:
        raise ValueError(f"cannot train {kind!r}; choose from {list(KINDS)}")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    if max_minutes is not None and not (isinstance(max_minutes, (int, float)) and max_minutes > 0):
        raise ValueError(f"max_minutes must be a number > 0, got {max_minutes!r}")
    path = _check_out(out)
    dev = pick_device(device)
    images = open_images(data, channels=channels)
    held = open_images(test_data, channels=images.shape[0]) if test_data is not None else None
    if held is not None and held.shape != images.shape:
        raise ValueError(f"--test-data {held.source} has images of shape {held.shape}, --data {images.shape}")
    cfg = _recipe(kind, images, len(images))  # refuses shapes the architecture cannot take, before decoding
    cfg["seed"] = int(seed)
    if epochs is not None:
        cfg["train"]["epochs"] = int(epochs)

    x, y = images.tensors()
    if held is not None:
        x_test, y_test = held.tensors()
    else:
        x, y, x_test, y_test = _split(x, y, seed)
    budget = max_minutes * 60.0 if max_minutes is not None else None
    x, x_test = x.to(dev), (x_test.to(dev) if x_test is not None else None)
    t0 = time.perf_counter()
    metrics = _fit(kind, cfg, x, y, x_test, y_test, images, budget, progress, seed, dev)
    plain = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool)) and k != "history"}
    plain.update({"trained_on": images.source, "data_fingerprint": images.fingerprint, "images": int(x.shape[0]),
                  "test_images": int(x_test.shape[0]) if x_test is not None else 0, "shape": list(images.shape),
                  "classes": list(images.classes or []), "wall_seconds": time.perf_counter() - t0})
    save_model(metrics["model"], path, cfg, plain)
    return {"kind": kind, "out": str(path), **plain}


def _fit(kind: str, cfg: dict[str, Any], x: Tensor, y: Optional[Tensor], x_test: Optional[Tensor],
         y_test: Optional[Tensor], images: ImageData, budget: Optional[float], progress: bool, seed: int,
         dev: torch.device) -> dict[str, Any]:
    levels = (images.levels or infer_levels(x)) if get_kind(kind).levels else None
    y = y.to(dev) if y is not None and get_kind(kind).labels else None
    y_test = y_test.to(dev) if y_test is not None and y is not None else None
    model, m = fit_model(kind, x, y, x_test=x_test, y_test=y_test, levels=levels, max_seconds=budget,
                         progress=progress, config=cfg)
    m = dict(m)
    if "generator" in get_kind(kind).roles and x_test is not None and x_test.shape[0] >= 2:
        m.update(frechet_of_generator(kind, model, x, x_test, seed))
    m["model"] = model
    return m
