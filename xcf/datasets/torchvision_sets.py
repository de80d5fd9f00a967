"""torchvision's MNIST-like data sets, read from a local root (never downloaded unless asked)."""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
import torch
from torch import Tensor

__all__ = ["load_torchvision"]


TORCHVISION_SETS = {"mnist": "MNIST", "fashionmnist": "FashionMNIST"}
"""Names :func:`load_torchvision` accepts (case, ``-`` and ``_`` ignored) and their torchvision classes."""

_SPLITS = ("train", "test", "all")

def _torchvision_class(name: str):
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, got {type(name).__name__}")
    key = name.lower().replace("-", "").replace("_", "")
    if key not in TORCHVISION_SETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {sorted(TORCHVISION_SETS.values())}")
    import torchvision.datasets

    return getattr(torchvision.datasets, TORCHVISION_SETS[key])


def load_torchvision(
    name: str,
    root: str | os.PathLike,
    train: bool = True,
    download: bool = False,
    limit: Optional[int] = None,
) -> tuple[Tensor, Tensor]:
    """MNIST or FashionMNIST from a local folder, as tensors in ``[0, 1]``.

    The files are read by torchvision, which looks for the raw IDX files in
    ``root/MNIST/raw/`` (or ``root/FashionMNIST/raw/``): ``train-images-idx3-ubyte``,
    ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``.

    Args:
        name: ``"mnist"`` or ``"fashionmnist"`` (case, ``-`` and ``_`` are ignored).
        root: the folder holding ``MNIST/`` or ``FashionMNIST/``.
        train: the training part (60,000 images) or the test part (10,000).
        download: let torchvision download missing files into ``root`` (off by default: nothing is
            fetched unless asked).
        limit: keep only the first ``limit`` samples.

    Returns:
        ``(x, y)``: ``x`` float32 ``(N, 1, 28, 28)`` with ``x = k / 255``, ``y`` long ``(N,)``.

    Raises:
        ValueError: unknown ``name`` or a bad ``limit``.
        FileNotFoundError: the files are not under ``root`` and ``download`` is false.

    Example (with the MNIST files under ``~/data/MNIST/raw``)::

        x, y = load_torchvision("mnist", "~/data", train=False, limit=1000)
    """
    cls = _torchvision_class(name)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    root = os.path.expanduser(os.fspath(root))
    raw = os.path.join(root, cls.__name__, "raw")
    try:
        data = cls(root=root, train=bool(train), download=bool(download))
    except RuntimeError as e:
        if "not found" not in str(e).lower():
            raise
        raise FileNotFoundError(
            f"{cls.__name__} not found under root={root!r} (torchvision looks for the IDX files in {raw}); "
            "put the files there or pass download=True to fetch them"
        ) from e
    images, labels = data.data, data.targets
    if not isinstance(images, Tensor):
        images = torch.as_tensor(np.asarray(images))
    labels = torch.as_tensor(labels)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    x = images.to(torch.float32).div(255.0).unsqueeze(1).contiguous()
    y = labels.to(torch.long).clone()
    return x, y
