"""A user's images from files, and the built-in sets, behind one name: :func:`open_images`.

``xcf train --data`` and ``xcf audit --data`` take

* a built-in name (:data:`BUILTIN`): ``digits-train``, ``digits-test``, ``digits-all``, ``digits-shifted``,
  ``mnist-train``, ``mnist-test``;
* a folder in ImageFolder layout (one sub-folder per class holding PNG or JPEG files, found by
  :func:`torchvision.datasets.folder.make_dataset`); the class names are the sub-folder names, numbered
  in sorted order, except that sub-folders named by integers (``0/``, ``7/``...) are those classes;
* an ``.npz`` file (read with ``allow_pickle=False``) holding ``x`` of shape ``(N, C, H, W)`` or ``(N, H, W)``,
  ``uint8`` (``x / 255``) or float in ``[0, 1]``, and optionally ``y`` (``N`` class indices) and ``classes``
  (their names).

Everything is checked before any pixel is decoded: no images, images of mixed sizes, an ``.npz`` without
``x``, labels out of range each give one error that names the file.  Folder images are decoded only
when an item is read, so a large folder streams through an audit.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset, TensorDataset

from xcf.datasets.digits import DIGITS_LEVELS, ShiftedImages, load_digits
from xcf.datasets.mnist import MNIST_LEVELS, load_mnist

__all__ = ["BUILTIN", "IMAGE_EXTENSIONS", "ImageData", "open_images"]

#: the built-in data sets (no files needed)
BUILTIN = ("digits-train", "digits-test", "digits-all", "digits-shifted", "mnist-train", "mnist-test")
#: file endings an ImageFolder is read for (case ignored)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, the weights of PIL's convert("L")


@dataclass
class ImageData:
    """Images opened by :func:`open_images`.

    Attributes:
        dataset: a map-style data set yielding ``(x, y)`` (labelled) or ``x``; ``x`` float32 ``(C, H, W)``
            in ``[0, 1]``.
        shape: ``(C, H, W)``.
        source: what was opened (the name or the path).
        classes: class names (``None`` when unknown).
        labelled: whether items carry labels.
        levels: grey levels per channel (256 for 8-bit files).
        fingerprint: identifies the content (file names, sizes and times for a folder; the bytes of a file).
    """

    dataset: Dataset
    shape: tuple[int, int, int]
    source: str
    classes: Optional[list[str]]
    labelled: bool
    levels: Optional[int]
    fingerprint: str

    def __len__(self) -> int:
        return len(self.dataset)

    def tensors(self) -> tuple[Tensor, Optional[Tensor]]:
        """All images as one tensor ``(N, C, H, W)`` and labels ``(N,)`` (``None`` without labels)."""
        if isinstance(self.dataset, TensorDataset):
            ts = self.dataset.tensors
            return ts[0], (ts[1] if len(ts) > 1 else None)
        items = [self.dataset[i] for i in range(len(self.dataset))]
        x = torch.stack([_image(item) for item in items])
        return x, (torch.as_tensor([int(y) for _, y in items], dtype=torch.long) if self.labelled else None)

    def labels(self) -> Optional[Tensor]:
        """The labels ``(N,)`` without decoding any image (``None`` without labels)."""
        if not self.labelled:
            return None
        ds, index = self.dataset, None
        if isinstance(ds, Subset):
            ds, index = ds.dataset, list(ds.indices)
        if isinstance(ds, _FolderImages):
            y = torch.as_tensor([label for _, label in ds.samples], dtype=torch.long)
        elif isinstance(ds, TensorDataset):
            y = ds.tensors[1]
        else:
            return self.tensors()[1]
        return y[index] if index is not None else y

    def first(self, k: int) -> Tensor:
        """The first ``k`` images ``(k, C, H, W)`` (fewer if there are fewer)."""
        return torch.stack([_image(self.dataset[i]) for i in range(min(k, len(self)))])

    def head(self, n: Optional[int]) -> "ImageData":
        """``n`` items (all for ``None``) spread evenly over the set (positions ``round(linspace(0, N - 1, n))``),
        so that a set sorted by class, as every folder is, keeps all its classes."""
        if n is None or n >= len(self):
            if n is not None and n > len(self):
                raise ValueError(f"{n} images asked for, but {self.source} has {len(self)}")
            return self
        # Data sets are often sorted by class (a folder always is): n items spread evenly over the whole set
        index = torch.from_numpy(np.linspace(0, len(self) - 1, n).round().astype(np.int64))
        if isinstance(self.dataset, TensorDataset):
            ds: Dataset = TensorDataset(*(t[index] for t in self.dataset.tensors))
        else:
            ds = Subset(self.dataset, index.tolist())
        return ImageData(ds, self.shape, self.source, self.classes, self.labelled, self.levels,
                         f"{self.fingerprint}[spread {n}]")


def _image(item: object) -> Tensor:
    return item if isinstance(item, Tensor) else item[0]  # type: ignore[index]


def open_images(spec: str | os.PathLike, *, channels: Optional[int] = None, n: Optional[int] = None) -> ImageData:
    """Open a built-in data set, an ImageFolder or an ``.npz`` file (see the module docstring).

    Args:
        spec: a name from :data:`BUILTIN`, a folder or an ``.npz`` file.
        channels: read the images as greyscale (1) or RGB (3); ``None``: as they are (a folder of
            greyscale files gives 1 channel, any colour file makes it 3).
        n: keep ``n`` images (see :meth:`ImageData.head`; ``digits-shifted`` is grown to ``n``).

    Returns:
        An :class:`ImageData`.

    Raises:
        ValueError: an unknown name, no images, mixed sizes, a malformed ``.npz``, bad labels.

    Example:
        >>> data = open_images("digits-test", n=5)      # 5 images spread over the 450
        >>> len(data), data.shape, data.classes[:3], data.labelled
        (5, (1, 8, 8), ['0', '1', '2'], True)
    """
    if channels is not None and channels not in (1, 3):
        raise ValueError(f"channels must be 1 (greyscale) or 3 (RGB), got {channels!r}")
    text = os.fspath(spec)
    if text in BUILTIN:
        data = _builtin(text, n)
        return data if channels in (None, data.shape[0]) else _convert(data, channels)
    path = Path(text).expanduser()
    if path.is_dir():
        data = _folder(path, channels)
    elif path.is_file():
        if path.suffix.lower() != ".npz":
            raise ValueError(f"{path}: expected a folder of class sub-folders or an .npz file, got a {path.suffix or 'file'}"
                             " file")
        data = _npz(path, channels)
    else:
        raise ValueError(f"data {text!r} is neither a built-in set ({', '.join(BUILTIN)}) nor an existing folder or "
                         ".npz file")
    return data.head(n)


# --------------------------------------------------------------------------------------- built-in
def _builtin(name: str, n: Optional[int]) -> ImageData:
    classes = [str(k) for k in range(10)]
    if name.startswith("digits"):
        x, y = load_digits("all" if name == "digits-all" else "train" if name == "digits-train" else "test")
        if name == "digits-shifted":
            return ImageData(ShiftedImages(x, y, n), (1, 8, 8), name, classes, True, DIGITS_LEVELS, name)
        levels = DIGITS_LEVELS
    else:
        x, y = load_mnist(name.split("-")[1])
        levels = MNIST_LEVELS
    data = ImageData(TensorDataset(x, y), tuple(x.shape[1:]), name, classes, True, levels, name)  # type: ignore[arg-type]
    return data.head(n)


# ----------------------------------------------------------------------------------------- folder
class _FolderImages(Dataset):
    """``(x, class)`` of the files of an ImageFolder, decoded on access as ``mode`` (``"L"`` or ``"RGB"``)."""

    def __init__(self, samples: Sequence[tuple[str, int]], mode: str):
        self.samples, self.mode = list(samples), mode

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        from PIL import Image

        path, label = self.samples[i]
        try:
            with Image.open(path) as img:
                a = np.asarray(img.convert(self.mode), dtype=np.uint8)
        except (OSError, ValueError, SyntaxError) as e:  # PIL: truncated data, bad chunks, changed since listing
            raise ValueError(f"{path} cannot be decoded: {' '.join(str(e).split())}") from None
        x = torch.from_numpy(a.copy()).float().div_(255.0)
        return (x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1).contiguous()), label


def _folder(root: Path, channels: Optional[int]) -> ImageData:
    from PIL import Image, UnidentifiedImageError
    from torchvision.datasets.folder import make_dataset

    subs = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not subs:
        raise ValueError(f"{root} has no class sub-folders: the ImageFolder layout is {root}/<class>/<image>.png")
    # Folders named 0, 1, 2... are those class indices (so a folder of some classes keeps the classifier's
    # numbering); other names are numbered in sorted order, as ImageFolder does.
    numeric = all(c.isdigit() for c in subs)
    index = {c: int(c) for c in subs} if numeric else {c: i for i, c in enumerate(subs)}
    names = [str(k) for k in range(max(index.values()) + 1)] if numeric else subs
    try:
        samples = make_dataset(str(root), index, extensions=IMAGE_EXTENSIONS, allow_empty=True)
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"{root}: {e}") from None
    if not samples:
        raise ValueError(f"{root} holds no images ({', '.join(IMAGE_EXTENSIONS)}) in its class sub-folders "
                         f"{subs[:5]}{'...' if len(subs) > 5 else ''}")
    sizes: dict[tuple[int, int], str] = {}
    colour = False
    h = hashlib.sha256()
    for path, _ in samples:
        try:
            with Image.open(path) as img:  # reads the header only
                sizes.setdefault(img.size, path)
                colour = colour or img.mode not in _GREY_MODES
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"{path} is not a readable image: {e}") from None
        st = os.stat(path)
        h.update(f"{os.path.relpath(path, root)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    if len(sizes) > 1:
        (a, pa), (b, pb) = list(sizes.items())[:2]
        raise ValueError(f"{root} holds images of {len(sizes)} sizes, e.g. {a[0]}x{a[1]} ({pa}) and {b[0]}x{b[1]} "
                         f"({pb}): resize them to one size first")
    (w, hgt), = sizes
    c = channels if channels is not None else (3 if colour else 1)
    return ImageData(_FolderImages(samples, "L" if c == 1 else "RGB"), (c, hgt, w), str(root), names, True, 256,
                     "folder:" + h.hexdigest()[:16])


# -------------------------------------------------------------------------------------------- npz
def _npz(path: Path, channels: Optional[int]) -> ImageData:
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise ValueError(f"cannot read {path} as an .npz of arrays (numpy.savez; object arrays are refused): "
                         f"{' '.join(str(e).split())}") from None
    if "x" not in arrays:
        raise ValueError(f"{path} holds the arrays {sorted(arrays)} but no 'x' (the images, (N, C, H, W) or (N, H, W))")
    x, levels = _npz_images(path, arrays["x"])
    y = _npz_labels(path, arrays["y"], x.shape[0]) if "y" in arrays else None
    classes = _npz_classes(path, arrays["classes"], y) if "classes" in arrays else None
    if classes is None and y is not None:
        classes = [str(k) for k in range(int(y.max()) + 1)]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    ds = TensorDataset(x, y) if y is not None else TensorDataset(x)
    data = ImageData(ds, tuple(x.shape[1:]), str(path), classes, y is not None, levels, "npz:" + digest)  # type: ignore[arg-type]
    return data if channels in (None, data.shape[0]) else _convert(data, channels)


def _npz_images(path: Path, x: np.ndarray) -> tuple[Tensor, Optional[int]]:
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[0] == 0 or min(x.shape[2:]) < 1:
        raise ValueError(f"{path}: 'x' must have shape (N, C, H, W) or (N, H, W) with N >= 1, got {x.shape}")
    if x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
        raise ValueError(f"{path}: 'x' has shape {x.shape}, which looks like (N, H, W, C); xcf takes (N, C, H, W): "
                         "use x.transpose(0, 3, 1, 2)")
    if x.dtype == np.uint8:
        return torch.from_numpy(x.astype(np.float32) / 255.0), 256
    if x.dtype == np.bool_:
        return torch.from_numpy(x.astype(np.float32)), 2
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{path}: 'x' must be uint8 (0..255) or float in [0, 1], got {x.dtype}")
    if not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x.reshape(x.shape[0], -1)).all(1))[0])
        raise ValueError(f"{path}: 'x' has NaN or infinite values (image {bad})")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{path}: float 'x' must lie in [0, 1], got [{lo:.4g}, {hi:.4g}] (store uint8, or divide by 255)")
    return torch.from_numpy(x.astype(np.float32)), None


def _npz_labels(path: Path, y: np.ndarray, n: int) -> Tensor:
    if y.shape != (n,) or not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_)):
        raise ValueError(f"{path}: 'y' must hold {n} integer class indices (one per image), got {y.dtype} {y.shape}")
    if n and int(y.min()) < 0:
        raise ValueError(f"{path}: 'y' has a negative class index {int(y.min())}")
    return torch.from_numpy(y.astype(np.int64))


def _npz_classes(path: Path, classes: np.ndarray, y: Optional[Tensor]) -> list[str]:
    if classes.ndim != 1 or classes.dtype.kind not in "US":
        raise ValueError(f"{path}: 'classes' must be a 1-d array of strings, got {classes.dtype} {classes.shape}")
    names = [str(c) for c in classes.tolist()]
    if y is not None and int(y.max()) >= len(names):
        raise ValueError(f"{path}: 'y' has class {int(y.max())} but 'classes' names only {len(names)}")
    return names


def _convert(data: ImageData, channels: int) -> ImageData:
    """Greyscale to RGB (repeat) or RGB to greyscale (ITU-R 601 luma) for in-memory data."""
    c = data.shape[0]
    if not isinstance(data.dataset, TensorDataset) or c not in (1, 3):
        raise ValueError(f"{data.source} has {c} channels and cannot be read with {channels}")
    x, *rest = data.dataset.tensors
    if channels == 3:
        x = x.expand(-1, 3, -1, -1).contiguous()
    else:
        x = torch.einsum("nchw,c->nhw", x, torch.tensor(_LUMA)).unsqueeze(1).clamp_(0, 1)
    return ImageData(TensorDataset(x, *rest), (channels,) + data.shape[1:], data.source, data.classes, data.labelled,
                     data.levels if channels == 3 else None, f"{data.fingerprint}|c{channels}")
