"""Folders of images in ImageFolder layout (``DIR/<class>/<image>``), for :func:`xcf.datasets.files.open_images`.

The layout is checked before any pixel is decoded: hidden files and folders are skipped (and counted), links
are followed with every folder read once, a folder whose sub-folders hold class folders is refused with the
likely right path, a class folder without images is named.  Files are decoded when an item is read, to the
values they mean: 16-bit greyscale over 65535, palettes through the palette, alpha dropped (with a note), EXIF
orientation applied.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from xcf.datasets.files import IMAGE_EXTENSIONS, ImageData

__all__ = ["read_folder"]

_GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}  # 16-bit greyscale (PNG, TIFF): divided by 65535
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_ORIENTATION = 0x0112  # the EXIF tag
_SIDEWAYS = (5, 6, 7, 8)  # orientations that swap width and height


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


def read_folder(root: Path, channels: Optional[int]) -> ImageData:
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
