"""A user's images from files, and the built-in sets, behind one name: :func:`open_images`.

``xcf train --data`` and ``xcf audit --data`` take

* a built-in name (:data:`BUILTIN`): ``digits-train``, ``digits-test``, ``digits-all``, ``digits-shifted``,
  ``mnist-train``, ``mnist-test``;
* a folder in ImageFolder layout (one sub-folder per class holding PNG or JPEG files, also in nested
  folders); the class names are the sub-folder names, numbered in sorted order, except that sub-folders
  named by integers (``0/``, ``7/``...) are those classes;
* an ``.npz`` file (read with ``allow_pickle=False``) holding ``x`` of shape ``(N, C, H, W)``, ``(N, H, W, C)``
  or ``(N, H, W)``, ``uint8`` (``x / 255``) or float in ``[0, 1]``, and optionally ``y`` (``N`` class indices)
  and ``classes`` (their names).

**Folders.**  Names starting with ``.`` (``.ipynb_checkpoints``, ``.DS_Store``...) are skipped, files and
folders alike, and a :class:`DataNote` says how many.  Links are followed, but every folder is read once
(by its resolved path), so a link loop or a second link to the same folder reads nothing twice.  A
folder whose sub-folders hold class folders rather than images (``DIR/train/<class>/img.png`` given as
``DIR``) is refused with the likely right path, and so is a class folder without images.

**Decoding** gives each file the values it means, in ``[0, 1]``:

* 8-bit files (``L``, ``RGB``, ``1``, ``CMYK``...) are divided by 255;
* 16-bit greyscale (PIL modes ``I;16``, ``I;16B``, ``I``: 16-bit PNG and TIFF) is divided by 65535 (``levels``
  is then 65,536); 32-bit float (``F``) is taken as it is and must lie in ``[0, 1]``;
* palette images (``P``) are expanded through their palette: greyscale when every palette entry is grey,
  RGB otherwise;
* an alpha channel (``RGBA``, ``LA``, ``PA``, a palette or colour key with transparency) is **dropped** with a
  :class:`DataNote`: the colour channels are read as stored, so composite transparent images onto the
  background you mean first;
* the EXIF orientation is applied (:func:`PIL.ImageOps.exif_transpose`), so a photo rotated by its camera
  tag is read upright and its size is the upright one.

Every file that cannot be read or decoded raises a ``ValueError`` that names it.

**Arrays.**  The channel axis of a 4-d ``x`` is decided from its shape: ``(N, C, H, W)`` when ``shape[1]`` is 1,
3 or 4 and ``shape[-1]`` is not; ``(N, H, W, C)`` when ``shape[-1]`` is and ``shape[1]`` is not; when both are,
1 or 3 channels win over 4 (``(N, 3, 4, 4)`` is 4x4 RGB); otherwise (both 1 or 3, both 4, or neither) it is
refused: name the layout with ``layout="nchw"|"nhwc"`` (``--layout``).  4 channels are RGBA: the alpha is
dropped with a :class:`DataNote`.

Everything is checked before any pixel is decoded: no images, images of mixed sizes, an ``.npz`` without
``x``, labels out of range each give one error that names the file.  Folder images are decoded only
when an item is read, so a large folder streams through an audit.
"""

from __future__ import annotations

import hashlib
import os
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset, TensorDataset

from xcf.datasets.digits import DIGITS_LEVELS, ShiftedImages, load_digits
from xcf.datasets.mnist import MNIST_LEVELS, load_mnist

__all__ = ["BUILTIN", "IMAGE_EXTENSIONS", "LAYOUTS", "DataNote", "ImageData", "open_images"]

#: the built-in data sets (no files needed)
BUILTIN = ("digits-train", "digits-test", "digits-all", "digits-shifted", "mnist-train", "mnist-test")
#: file endings an ImageFolder is read for (case ignored)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
#: the channel orders an ``.npz`` ``x`` can be named in (``layout=``, ``--layout``)
LAYOUTS = ("nchw", "nhwc")
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, the weights of PIL's convert("L")


class DataNote(UserWarning):
    """Something xcf did to read the data that a user should know: hidden files skipped, an alpha channel
    dropped, a folder reached twice through links read once.  ``xcf`` prints each as one ``note:`` line; the
    notes are also in :attr:`ImageData.notes`."""


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
        notes: what was skipped or dropped while reading (also issued as :class:`DataNote` warnings).
        layout: the channel order an ``.npz`` was read in (``"nchw"`` or ``"nhwc"``; ``None`` otherwise).
    """

    dataset: Dataset
    shape: tuple[int, int, int]
    source: str
    classes: Optional[list[str]]
    labelled: bool
    levels: Optional[int]
    fingerprint: str
    notes: list[str] = field(default_factory=list)
    layout: str | None = None

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
        if isinstance(getattr(ds, "samples", None), list):  # a folder's (path, class) list
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
                         f"{self.fingerprint}[spread {n}]", self.notes, self.layout)


def _image(item: object) -> Tensor:
    return item if isinstance(item, Tensor) else item[0]  # type: ignore[index]


def open_images(spec: str | os.PathLike, *, channels: Optional[int] = None, n: Optional[int] = None,
                layout: str | None = None) -> ImageData:
    """Open a built-in data set, an ImageFolder or an ``.npz`` file (see the module docstring).

    Args:
        spec: a name from :data:`BUILTIN`, a folder or an ``.npz`` file.
        channels: read the images as greyscale (1) or RGB (3); ``None``: as they are (a folder of
            greyscale files gives 1 channel, any colour file makes it 3).
        n: keep ``n`` images (see :meth:`ImageData.head`; ``digits-shifted`` is grown to ``n``).
        layout: the channel order of a 4-d ``.npz`` ``x``: ``"nchw"`` or ``"nhwc"``; ``None``: decided from
            its shape, refused when ambiguous (see the module docstring).  Folders and built-ins ignore it.

    Returns:
        An :class:`ImageData`.  What was skipped or dropped (hidden files, an alpha channel) is in its
        ``notes`` and issued as :class:`DataNote` warnings.

    Raises:
        ValueError: an unknown name, no images, an empty class folder, a folder one level too high, mixed
            sizes, a malformed or ambiguous ``.npz``, bad labels.

    Example:
        >>> data = open_images("digits-test", n=5)      # 5 images spread over the 450
        >>> len(data), data.shape, data.classes[:3], data.labelled
        (5, (1, 8, 8), ['0', '1', '2'], True)
    """
    if channels is not None and channels not in (1, 3):
        raise ValueError(f"channels must be 1 (greyscale) or 3 (RGB), got {channels!r}")
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {list(LAYOUTS)} (or None: from the shape), got {layout!r}")
    text = os.fspath(spec)
    if text in BUILTIN:
        data = _builtin(text, n)
        return data if channels in (None, data.shape[0]) else _convert(data, channels)
    path = Path(text).expanduser()
    if path.is_dir():
        from xcf.datasets.folders import read_folder  # it builds an ImageData of this module

        data = read_folder(path, channels)
    elif path.is_file():
        if path.suffix.lower() != ".npz":
            raise ValueError(f"{path}: expected a folder of class sub-folders or an .npz file, got a {path.suffix or 'file'}"
                             " file")
        data = _npz(path, channels, layout)
    else:
        raise ValueError(f"data {text!r} is neither a built-in set ({', '.join(BUILTIN)}) nor an existing folder or "
                         ".npz file")
    for note in data.notes:
        warnings.warn(note, DataNote, stacklevel=2)
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


# -------------------------------------------------------------------------------------------- npz
def _npz(path: Path, channels: Optional[int], layout: str | None) -> ImageData:
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise ValueError(f"cannot read {path} as an .npz of arrays (numpy.savez; object arrays are refused): "
                         f"{' '.join(str(e).split())}") from None
    if "x" not in arrays:
        raise ValueError(f"{path} holds the arrays {sorted(arrays)} but no 'x' (the images, (N, C, H, W), (N, H, W, C) "
                         "or (N, H, W))")
    x, levels, order, notes = _npz_images(path, arrays["x"], layout)
    y = _npz_labels(path, arrays["y"], x.shape[0]) if "y" in arrays else None
    classes = _npz_classes(path, arrays["classes"], y) if "classes" in arrays else None
    if classes is None and y is not None:
        classes = [str(k) for k in range(int(y.max()) + 1)]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    ds = TensorDataset(x, y) if y is not None else TensorDataset(x)
    data = ImageData(ds, tuple(x.shape[1:]), str(path), classes, y is not None, levels, "npz:" + digest,  # type: ignore[arg-type]
                     notes, order)
    return data if channels in (None, data.shape[0]) else _convert(data, channels)


def _layout(path: Path, shape: tuple[int, ...]) -> str:
    """The channel order of a 4-d ``x`` from its shape (the rule of the module docstring), or a refusal."""
    first, last = shape[1], shape[-1]
    plausible = {"nchw": first in (1, 3, 4), "nhwc": last in (1, 3, 4)}
    if plausible["nchw"] and plausible["nhwc"] and (first == 4) != (last == 4):
        return "nhwc" if first == 4 else "nchw"  # 1 or 3 channels win over 4 (RGBA)
    if plausible["nchw"] != plausible["nhwc"]:
        return "nchw" if plausible["nchw"] else "nhwc"
    if plausible["nchw"]:
        raise ValueError(f"{path}: 'x' has shape {shape}, which reads as (N, C, H, W) with {first} channels and as "
                         f"(N, H, W, C) with {last}: say which with --layout nchw or --layout nhwc (layout= in Python)")
    raise ValueError(f"{path}: 'x' has shape {shape}: neither axis 1 nor the last axis holds 1, 3 or 4 channels "
                     "(greyscale, RGB, RGBA); name its channel axis with --layout nchw or --layout nhwc (layout= in "
                     "Python)")


def _npz_images(path: Path, x: np.ndarray, layout: str | None) -> tuple[Tensor, int | None, str | None, list[str]]:
    notes: list[str] = []
    order = None
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[0] >= 1:
        order = layout or _layout(path, x.shape)
        if order == "nhwc":
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    if x.ndim != 4 or x.shape[0] == 0 or min(x.shape[2:]) < 1:
        raise ValueError(f"{path}: 'x' must have shape (N, C, H, W), (N, H, W, C) or (N, H, W) with N >= 1, got "
                         f"{x.shape}")
    if x.shape[1] == 4:  # RGBA: the alpha is dropped, with a note on what it held
        a = x[:, 3]
        opaque = a.all(axis=(1, 2)) if x.dtype == np.bool_ else (a == (255 if x.dtype == np.uint8 else 1)).all(axis=(1, 2))
        held = "opaque everywhere: nothing is lost" if opaque.all() else \
            f"{int((~opaque).sum())} images have transparent pixels, whose colour is read as stored"
        notes.append(f"{path}: 'x' has 4 channels, read as RGBA; the alpha channel is dropped ({held})")
        x = np.ascontiguousarray(x[:, :3])
    if x.dtype == np.uint8:
        return torch.from_numpy(x.astype(np.float32) / 255.0), 256, order, notes
    if x.dtype == np.bool_:
        return torch.from_numpy(x.astype(np.float32)), 2, order, notes
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{path}: 'x' must be uint8 (0..255) or float in [0, 1], got {x.dtype}")
    if not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x.reshape(x.shape[0], -1)).all(1))[0])
        raise ValueError(f"{path}: 'x' has NaN or infinite values (image {bad})")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{path}: float 'x' must lie in [0, 1], got [{lo:.4g}, {hi:.4g}] (store uint8, or divide by 255)")
    return torch.from_numpy(x.astype(np.float32)), None, order, notes


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
                     data.levels if channels == 3 else None, f"{data.fingerprint}|c{channels}", data.notes, data.layout)
