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
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

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
_GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}  # 16-bit greyscale (PNG, TIFF): divided by 65535
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, the weights of PIL's convert("L")
_ORIENTATION = 0x0112  # the EXIF tag
_SIDEWAYS = (5, 6, 7, 8)  # orientations that swap width and height


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
        data = _folder(path, channels)
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


# ----------------------------------------------------------------------------------------- folder
class _FolderImages(Dataset):
    """``(x, class)`` of the files of an ImageFolder, decoded on access to ``channels`` (1 or 3) channels of
    ``size`` ``(H, W)`` (see the module docstring for what each file mode gives)."""

    def __init__(self, samples: Sequence[tuple[str, int]], channels: int, size: tuple[int, int]):
        self.samples, self.channels, self.size = list(samples), int(channels), tuple(size)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        from PIL import Image

        path, label = self.samples[i]
        try:
            with Image.open(path) as img:
                x = _decode(img, self.channels)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            # PIL: truncated data, bad chunks, changed since listing; ours: values outside the mode's range
            raise ValueError(f"{path} cannot be decoded: {' '.join(str(e).split())}") from None
        if tuple(x.shape[1:]) != self.size:
            raise ValueError(f"{path} decodes to {x.shape[2]}x{x.shape[1]} pixels (after its EXIF orientation), but "
                             f"the folder's images are {self.size[1]}x{self.size[0]}: it changed since it was listed, "
                             "or its orientation tag comes after its pixels")
        return x, label


def _decode(img: Any, channels: int) -> Tensor:
    """One image as float32 ``(channels, H, W)`` in ``[0, 1]``, upright, without alpha."""
    from PIL import ImageOps

    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode in _WIDE_MODES or mode == "F":
        a = np.asarray(img).astype(np.float32)
        if mode in _WIDE_MODES:
            lo, hi = float(a.min()), float(a.max())
            if lo < 0 or hi > 65535:
                raise ValueError(f"its {mode} pixels lie in [{lo:g}, {hi:g}], outside the 16-bit range [0, 65535]")
            x = torch.from_numpy(a).div_(65535.0)
        else:
            if not np.isfinite(a).all() or float(a.min()) < 0 or float(a.max()) > 1:
                raise ValueError(f"its float pixels lie in [{np.nanmin(a):.4g}, {np.nanmax(a):.4g}] or are not finite; "
                                 "xcf takes float images in [0, 1]")
            x = torch.from_numpy(a)
        x = x.unsqueeze(0)
        return x.expand(3, -1, -1).contiguous() if channels == 3 else x
    if mode in ("P", "PA") or "transparency" in img.info:
        img = img.convert("RGBA")  # through the palette, with its transparency (dropped below)
    a = np.asarray(img.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    x = torch.from_numpy(a.copy()).float().div_(255.0)
    return x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1).contiguous()


def _orientation(img: Any) -> int:
    """The EXIF orientation (1: upright) read from the header; a PNG's is looked up only when its header holds
    one (elsewhere PIL would decode the whole file to find it)."""
    if img.format == "PNG" and "exif" not in img.info:
        return 1
    try:
        return int(img.getexif().get(_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - a malformed EXIF block: decoding will say so
        return 1


def _is_grey(img: Any) -> bool:
    if img.mode in _GREY_MODES:
        return True
    if img.mode in ("P", "PA"):
        palette = np.asarray(img.getpalette() or [0, 0, 0], dtype=np.int64)
        rgb = palette[: len(palette) // 3 * 3].reshape(-1, 3)
        return bool((rgb == rgb[:, :1]).all())
    return False


def _walk(top: str, seen: set[str], counts: Counter) -> list[str]:
    """The image files under ``top`` in torchvision's ``make_dataset`` order (folder by folder, names sorted),
    skipping names that start with '.'; links are followed, every folder read once (by its resolved path)."""
    found: list[tuple[str, str]] = []
    for folder, dirs, files in os.walk(top, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen and folder != top:
            counts["again"] += 1
            dirs[:] = []
            continue
        seen.add(real)
        counts["hidden"] += sum(d.startswith(".") for d in dirs) + sum(f.startswith(".") for f in files)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.startswith("."):
                continue
            if name.lower().endswith(IMAGE_EXTENSIONS):
                found.append((folder, name))
            else:
                counts["other"] += 1
    return [os.path.join(folder, name) for folder, name in sorted(found)]


def _list_classes(root: Path, subs: list[str], index: dict[str, int]) -> tuple[list[tuple[str, int]], Counter]:
    """``(path, class)`` of every image, after checking the layout: no empty class folder, not a folder of
    data sets (``DIR/train/<class>``) given for a folder of classes."""
    counts: Counter = Counter()
    reals = {c: os.path.realpath(root / c) for c in subs}
    seen: set[str] = {os.path.realpath(root), *reals.values()}  # a link into another class is not followed
    samples: list[tuple[str, int]] = []
    nested: dict[str, set[str]] = {}  # class -> its sub-folders that hold images, when none lie at its top
    empty: list[str] = []
    for c in subs:
        twin = next((d for d in subs if d < c and reals[d] == reals[c]), None)
        if twin is not None:
            raise ValueError(f"the class folders {root / twin} and {root / c} are the same folder ({reals[c]}): two "
                             "classes cannot share their images")
        top = str(root / c)
        files = _walk(top, seen, counts)
        if not files:
            empty.append(c)
            continue
        parts = [Path(os.path.relpath(f, top)).parts for f in files]
        if all(len(q) > 1 for q in parts):
            nested[c] = {q[0] for q in parts}
        samples.extend((f, index[c]) for f in files)
    if not samples:
        hidden = f"; {counts['hidden']} hidden files and folders were skipped" if counts["hidden"] else ""
        raise ValueError(f"{root} holds no images ({', '.join(IMAGE_EXTENSIONS)}) in its class sub-folders "
                         f"{subs[:5]}{'...' if len(subs) > 5 else ''}{hidden}")
    holders = [c for c in subs if c not in empty]
    if all(len(nested.get(c, ())) >= 2 for c in holders):
        best = next((c for c in ("train", "training") if c in holders), holders[0])
        inner = sorted(nested[best])
        raise ValueError(f"{root} looks like a folder of data sets, not of classes: {', '.join(holders[:4])}"
                         f"{'...' if len(holders) > 4 else ''} hold class folders ({', '.join(inner[:5])}"
                         f"{'...' if len(inner) > 5 else ''}) rather than images; did you mean {root / best}? (to "
                         f"keep {holders[0]} as one class, put its images at its top level)")
    if empty:
        raise ValueError(f"the class folder {root / empty[0]} holds no images ({', '.join(IMAGE_EXTENSIONS)}, "
                         f"names not starting with '.'){f' (nor do {len(empty) - 1} more)' if len(empty) > 1 else ''}: "
                         "add images or remove the folder")
    return samples, counts


def _folder(root: Path, channels: Optional[int]) -> ImageData:
    from PIL import Image

    entries = list(os.scandir(root))
    subs = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    if not subs:
        raise ValueError(f"{root} has no class sub-folders: the ImageFolder layout is {root}/<class>/<image>.png")
    # Folders named 0, 1, 2... are those class indices (so a folder of some classes keeps the classifier's
    # numbering); other names are numbered in sorted order, as ImageFolder does.
    numeric = all(c.isdigit() for c in subs)
    index = {c: int(c) for c in subs} if numeric else {c: i for i, c in enumerate(subs)}
    names = [str(k) for k in range(max(index.values()) + 1)] if numeric else subs
    samples, counts = _list_classes(root, subs, index)
    counts["hidden"] += sum(e.name.startswith(".") for e in entries)
    sizes: dict[tuple[int, int], str] = {}
    colour, alpha, wide, floating = False, [], False, False
    h = hashlib.sha256()
    for path, _ in samples:
        try:
            with Image.open(path) as img:  # reads the header only
                w, hgt = img.size
                sizes.setdefault((hgt, w) if _orientation(img) in _SIDEWAYS else (w, hgt), path)
                colour = colour or not _is_grey(img)
                wide, floating = wide or img.mode in _WIDE_MODES, floating or img.mode == "F"
                if img.mode in _ALPHA_MODES or "transparency" in img.info:
                    alpha.append(path)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise ValueError(f"{path} is not a readable image: {' '.join(str(e).split())}") from None
        st = os.stat(path)
        h.update(f"{os.path.relpath(path, root)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    if len(sizes) > 1:
        (a, pa), (b, pb) = list(sizes.items())[:2]
        raise ValueError(f"{root} holds images of {len(sizes)} sizes, e.g. {a[0]}x{a[1]} ({pa}) and {b[0]}x{b[1]} "
                         f"({pb}): resize them to one size first")
    (w, hgt), = sizes
    c = channels if channels is not None else (3 if colour else 1)
    notes = []
    if counts["hidden"]:
        notes.append(f"{root}: skipped {counts['hidden']} hidden files and folders (names starting with '.', such as "
                     ".ipynb_checkpoints)")
    if counts["again"]:
        notes.append(f"{root}: {counts['again']} folders reached again through links were read once")
    if alpha:
        notes.append(f"{root}: {len(alpha)} of the {len(samples)} images have an alpha channel (e.g. {alpha[0]}); "
                     "it is dropped and the colour read as stored: composite them onto their background first if "
                     "transparency matters")
    levels = None if floating else 65536 if wide else 256
    return ImageData(_FolderImages(samples, c, (hgt, w)), (c, hgt, w), str(root), names, True, levels,
                     "folder:" + h.hexdigest()[:16], notes)


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
