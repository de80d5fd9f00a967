"""The embedded digits default (scikit-learn's 8x8 digits) and a grown, shifted variant for scale runs."""

from __future__ import annotations

import functools
from typing import Optional

import numpy as np
import torch
from torch import Tensor

__all__ = ["ShiftedImages", "load_digits"]


DIGITS_LEVELS = 17
"""Number of grey levels of the digits set (pixel values ``0, 1, ..., 16``)."""

_SPLITS = ("train", "test", "all")


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = np.asarray(bunch.images, dtype=np.float32)  # (1797, 8, 8), values 0..16
    labels = np.asarray(bunch.target, dtype=np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


@functools.lru_cache(maxsize=16)
def _digits_split(seed: int, test_size: float) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    _, labels = _digits_arrays()
    index = np.arange(labels.shape[0])
    train, test = train_test_split(index, test_size=test_size, random_state=seed, stratify=labels)
    train.setflags(write=False)
    test.setflags(write=False)
    return train, test


def load_digits(split: str = "train", seed: int = 0, test_size: float = 0.25) -> tuple[Tensor, Tensor]:
    """The scikit-learn digits: 1,797 images of 8x8 pixels, ten classes, as tensors.

    ``x = k / 16`` for the integer grey value ``k`` in ``{0, ..., 16}``.  The ``"train"`` and
    ``"test"`` parts are a stratified split of all samples (scikit-learn's ``train_test_split`` with
    ``random_state=seed``): they are disjoint, cover the set, keep the class proportions, and are the
    same on every call with the same ``seed`` and ``test_size``.

    Args:
        split: ``"train"``, ``"test"`` or ``"all"`` (all samples in scikit-learn's order).
        seed: seed of the split.
        test_size: fraction of the samples in the test part, in ``(0, 1)``.

    Returns:
        ``(x, y)``: ``x`` float32 of shape ``(N, 1, 8, 8)`` in ``[0, 1]``, ``y`` long of shape ``(N,)``.
        Fresh tensors: changing them does not change later calls.

    Example:
        >>> x, y = load_digits("test")
        >>> x.shape, y.shape
        (torch.Size([450, 1, 8, 8]), torch.Size([450]))
        >>> float(x.min()), float(x.max())
        (0.0, 1.0)
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    if isinstance(test_size, bool) or not isinstance(test_size, (int, float)) or not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be a fraction in (0, 1), got {test_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    images, labels = _digits_arrays()
    if split == "all":
        index = np.arange(labels.shape[0])
    else:
        train, test = _digits_split(int(seed), float(test_size))
        index = train if split == "train" else test
    x = torch.from_numpy(images[index] / 16.0).to(torch.float32).unsqueeze(1)
    y = torch.from_numpy(labels[index].copy())
    return x, y


class ShiftedImages(torch.utils.data.Dataset):
    """``n`` images made from ``x`` by one-pixel shifts, computed on access (no copy held).

    Item ``i`` is ``x[i mod N]`` moved by the offset ``(dy, dx)`` number ``(i // N) mod 9`` of
    ``(0, 0), (0, 1), (1, 0), (0, -1), (-1, 0), (1, 1), (1, -1), (-1, 1), (-1, -1)``, with zeros moved in,
    and label ``y[i mod N]``.  The first ``N`` items are ``x`` itself; ``9 N`` items are distinct images,
    beyond that they repeat.

    Args:
        x: ``(N, C, H, W)`` images.
        y: ``(N,)`` labels.
        n: number of items (default ``9 N``).

    Example:
        >>> x, y = load_digits("test")
        >>> data = ShiftedImages(x, y, n=20_000)
        >>> len(data), data[450][0].shape
        (20000, torch.Size([1, 8, 8]))
    """

    OFFSETS = ((0, 0), (0, 1), (1, 0), (0, -1), (-1, 0), (1, 1), (1, -1), (-1, 1), (-1, -1))

    def __init__(self, x: Tensor, y: Tensor, n: Optional[int] = None):
        if x.ndim != 4:
            raise ValueError(f"x must be (N, C, H, W), got shape {tuple(x.shape)}")
        if y.shape != (x.shape[0],):
            raise ValueError(f"y must have shape ({x.shape[0]},), got {tuple(y.shape)}")
        if x.shape[0] == 0:
            raise ValueError("x is empty")
        n = 9 * x.shape[0] if n is None else n
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        self.x, self.y, self.n = x, y, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        if not -self.n <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} items")
        i %= self.n
        base, k = i % self.x.shape[0], (i // self.x.shape[0]) % 9
        img = self.x[base]
        dy, dx = self.OFFSETS[k]
        if dy or dx:
            h, w = img.shape[-2:]
            out = torch.zeros_like(img)
            out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
                img[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
            img = out
        return img, self.y[base]
