"""Integrity checks of store files: the configuration hash, a file's sha256, an intact ``.npz``."""

from __future__ import annotations

import hashlib
import json
import zipfile
import zlib
from pathlib import Path
from typing import Any, Optional

import numpy as np

__all__ = ["READ_ERRORS", "config_hash", "npz_fault", "sha256_file"]

#: what reading a damaged ``.npz`` may raise
READ_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, ValueError, OSError, EOFError, KeyError,
               NotImplementedError)


def config_hash(config: Any) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def npz_fault(source: Any) -> Optional[str]:
    """Why ``source`` is not an intact ``.npz`` (every member's header, length and CRC), or ``None``.

    Streams through the members: no array is held in memory."""
    fmt = np.lib.format
    try:
        with zipfile.ZipFile(source) as zf:
            for info in zf.infolist():
                with zf.open(info) as fh:
                    version = fmt.read_magic(fh)
                    if version == (1, 0):
                        shape, _, dtype = fmt.read_array_header_1_0(fh)
                    elif version == (2, 0):
                        shape, _, dtype = fmt.read_array_header_2_0(fh)
                    else:
                        shape, _, dtype = fmt._read_array_header(fh, version)
                    if dtype.hasobject:
                        return f"member {info.filename} holds Python objects"
                    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                    got = sum(len(c) for c in iter(lambda: fh.read(1 << 20), b""))  # to EOF: checks the CRC
                    if got != expected:
                        return f"member {info.filename} has {got} bytes of data, its header says {expected}"
    except READ_ERRORS as e:
        return f"{type(e).__name__}: {e}"
    return None
