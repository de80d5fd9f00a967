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

import math
import os
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from xcf._io import check_writable_path
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
    """The model file to write, refused before any training if it could not be written (a folder, a file where a
    folder must be, a folder xcf may not write into)."""
    path = Path(out).expanduser()
    if path.is_dir():
        raise ValueError(f"--out {path} is a folder; give the model file to write (e.g. {path / 'model.pt'})")
    return check_writable_path(path, "--out", folder=False)


def _holdout(y: Tensor | None, n: int, seed: int, labels_needed: bool) -> np.ndarray:
    """The positions held out of ``n`` images: a seeded :data:`HOLDOUT` share, stratified over the classes that
    have at least 2 images (a class of one image stays in training); where that share is smaller than the
    number of those classes (40 images of 10 classes), one image of each of them.  Unstratified without labels,
    or when every class has one image and the model does not learn the labels (a classifier is refused then)."""
    from sklearn.model_selection import train_test_split

    index = np.arange(n)
    size = math.ceil(HOLDOUT * n)
    labels = y.numpy() if y is not None else None
    classes, counts = np.unique(labels, return_counts=True) if labels is not None else (None, None)
    if labels is not None and counts.max() < 2 and labels_needed:
        raise ValueError(f"every class of the {n} images has a single image, so none can be held out for the test "
                         "numbers without losing its class from training: give --test-data")
    if labels is None or counts.max() < 2:
        return np.sort(train_test_split(index, test_size=size, random_state=seed)[1])
    several = classes[counts >= 2]
    eligible = index[np.isin(labels, several)]
    if len(several) <= size <= len(eligible) - len(several):
        return np.sort(train_test_split(eligible, test_size=size, random_state=seed, stratify=labels[eligible])[1])
    rng = np.random.default_rng(seed)
    return np.sort(np.asarray([rng.choice(np.flatnonzero(labels == c)) for c in several]))


def _split(x: Tensor, y: Optional[Tensor], seed: int, labels_needed: bool = True
           ) -> tuple[Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """A seeded hold-out (:func:`_holdout`); none below 20 images."""
    n = x.shape[0]
    if n < 20:
        return x, y, None, None
    test = torch.as_tensor(_holdout(y, n, seed, labels_needed))
    keep = torch.ones(n, dtype=torch.bool)
    keep[test] = False
    train = keep.nonzero().flatten()
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
    layout: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Fit the recommended ``kind`` of model on ``data`` and write it to ``out`` (the engine of ``xcf train``).

    Args:
        kind: one of :data:`KINDS`.
        data: a built-in name, an ImageFolder or an ``.npz`` (see :func:`xcf.datasets.files.open_images`).
        out: the model file to write (atomically, only once training finished).
        test_data: held-out images for the test numbers (default: a seeded 10% of ``data``, stratified by class,
            at least one image of each class with 2 or more; none below 20 images).
        max_minutes: wall-clock budget of the training (the learning-rate schedule still anneals).
        epochs: passes over the training images (default: the recipe's, about the same number of samples
            seen for any data size).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        seed: seed of the hold-out, the initialisation and the training.
        channels: read the images as greyscale (1) or RGB (3).
        layout: the channel order of ``.npz`` files, ``"nchw"`` or ``"nhwc"`` (default: from the shape, see
            :func:`~xcf.datasets.files.open_images`).
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
    images = open_images(data, channels=channels, layout=layout)
    held = open_images(test_data, channels=images.shape[0], layout=layout) if test_data is not None else None
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
        x, y, x_test, y_test = _split(x, y, seed, get_kind(kind).labels)
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
