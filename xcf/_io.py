"""Files and names: the one atomic write, the one content hash, the one slug, the one number format.

Every module that writes a file a later run may trust (store shards, model files, reports) writes it
with :func:`atomic_write`, and every command checks where it will write with :func:`check_writable_path`
before any work; every fingerprint of weights or data is :func:`fingerprint_modules` /
:func:`fingerprint_tensors`; every name turned into a file name or an array key goes through
:func:`slug`; every number shown to a person goes through :func:`format_number`.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional

import numpy as np
import torch
from torch import nn

__all__ = ["TMP_PREFIX", "atomic_write", "check_writable_path", "fingerprint_modules", "fingerprint_tensors",
           "format_number", "slug"]

#: prefix of the temporary files :func:`atomic_write` creates (never read; safe to delete)
TMP_PREFIX = ".tmp-"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def check_writable_path(path: str | os.PathLike, what: str, *, folder: bool) -> Path:
    """Refuse, before any work and without creating anything, a ``path`` that could not be written later: a
    file where a folder must be (``path`` or one of the folders above it), a folder where the file must be, a
    folder xcf may not write into.

    Args:
        path: the folder (``folder=True``) or file to write; missing folders above it will be created.
        what: how the message names it (``"--out"``).
        folder: whether ``path`` is a folder.

    Returns:
        ``path`` as a :class:`~pathlib.Path` (``~`` expanded).

    Raises:
        ValueError: one sentence naming ``path`` and the problem.

    Example:
        >>> import tempfile
        >>> blocker = Path(tempfile.mkdtemp()) / "file"; _ = blocker.write_text("x")
        >>> try:
        ...     check_writable_path(blocker / "model.pt", "--out", folder=False)
        ... except ValueError as e:
        ...     print(str(e).rsplit('/', 1)[-1])
        file is a file, not a folder, so nothing can be written under it
    """
    path = Path(path).expanduser()
    if path.exists() and folder != path.is_dir():
        raise ValueError(f"{what} {path} exists and is not a folder" if folder else
                         f"{what} {path} is a folder; give the file to write (e.g. {path / 'model.pt'})")
    existing = path
    while not existing.exists() and not existing.is_symlink() and existing != existing.parent:
        existing = existing.parent
    if existing != path and not existing.is_dir():
        raise ValueError(f"{what} {path}: {existing} is {'a file' if existing.is_file() else 'not a folder'}, not a "
                         "folder, so nothing can be written under it")
    into = existing if existing.is_dir() else existing.parent
    if not os.access(into, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path}: cannot write into {into} (permission denied)")
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> Path:
    """``write(binary_file)`` to a temporary file beside ``path``, fsync it, rename it into place.

    A reader sees the old file or the whole new one, never a part: a crash or a full disk leaves at most
    a temporary named ``.tmp-<name>.*``, which is removed here when ``write`` raises.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
        >>> _ = atomic_write(p, lambda f: f.write(b"hello"))
        >>> p.read_bytes()
        b'hello'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def _hash_tensor(h: Any, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def fingerprint_modules(*objs: Any) -> str:
    """sha256 (first 16 hex digits) of the parameters and buffers of the ``nn.Module`` s in ``objs``.

    Bound methods count as their owner module; other objects (functions, ``None``) contribute their
    type name only.  Equal weights give equal fingerprints on any device.

    Example:
        >>> torch.manual_seed(0); a = nn.Linear(2, 2)                      # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> b = nn.Linear(2, 2); b.load_state_dict(a.state_dict())         # doctest: +ELLIPSIS
        <All keys matched successfully>
        >>> fingerprint_modules(a) == fingerprint_modules(b) != fingerprint_modules(nn.Linear(2, 2))
        True
    """
    h = hashlib.sha256()
    for obj in objs:
        owner = obj if isinstance(obj, nn.Module) else getattr(obj, "__self__", None)
        if not isinstance(owner, nn.Module):
            h.update(type(obj).__name__.encode())
            continue
        h.update(type(owner).__name__.encode())
        for name, t in owner.state_dict().items():
            h.update(name.encode())
            _hash_tensor(h, t)
    return h.hexdigest()[:16]


def fingerprint_tensors(*tensors: Any) -> str:
    """sha256 (first 16 hex digits) of the dtypes, shapes and values of ``tensors`` (e.g. training data)."""
    h = hashlib.sha256()
    for t in tensors:
        _hash_tensor(h, torch.as_tensor(t))
    return h.hexdigest()[:16]


def slug(name: str, default: Optional[str] = None) -> str:
    """``name`` as a file name or array key: lower case, runs of other characters as one ``-``.

    Dots count as separators too, so ``"a.b"`` and ``"a.c"`` never collide by a suffix rule.  A name
    without letters or digits gives ``default``, or a ``ValueError`` without one.

    Example:
        >>> slug("approximate (GAN)"), slug("Mean map, v1.2")
        ('approximate-gan', 'mean-map-v1-2')
    """
    s = re.sub(r"[^a-z0-9]+", "-", str(name).lower()).strip("-")
    if not s:
        if default is None:
            raise ValueError(f"name {name!r} has no letters or digits")
        return default
    return s


def format_number(value: Any, digits: int = 3) -> str:
    """Numbers for people: ``digits`` decimals for shares, fewer for large values, scientific for tiny.

    ``None`` and NaN print as ``-``; ints and bools as themselves; anything else with ``str``.

    Example:
        >>> [format_number(v) for v in (0.87312, 12.34, 2048.0, 3e-5, float("nan"), 7)]
        ['0.873', '12.3', '2048', '3.0e-05', '-', '7']
    """
    if value is None:
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if not isinstance(value, (float, np.floating)):
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    a = abs(value)
    if a == 0:
        return "0"
    if a >= 1000:
        return f"{value:.0f}"
    if a >= 10:
        return f"{value:.1f}"
    if a >= 10 ** -digits:
        return f"{value:.{digits}f}"
    return f"{value:.1e}"
