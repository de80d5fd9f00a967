"""Model files: xcf's ``.pt`` files (a state dict and the configuration that rebuilds it), the shipped
``.safetensors`` weights (verified by sha256), and the cache that retrained models go to.

Files hold only tensors and plain values: ``.pt`` files load with ``torch.load(weights_only=True)`` and
``.safetensors`` files are read by the safetensors library, so a file handed in cannot run code.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from xcf._io import atomic_write

__all__ = ["WEIGHTS_FORMAT", "save_model", "load_state", "cache_dir", "cached_model", "merged", "read_weights",
           "save_weights", "sha256_of"]

FORMAT = 1

def save_model(model: nn.Module, path: str | os.PathLike, config: dict[str, Any], metrics: Optional[dict] = None) -> Path:
    """Write ``model``'s state dict with the ``config`` that rebuilds it, atomically.

    Args:
        model: the module.
        path: the file to write (parent folders are created).
        config: plain values (ints, floats, strings, lists) that the builder takes.
        metrics: optional plain values recorded with the model (accuracy, bits per dimension...).

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "class": type(model).__name__,
        "config": dict(config),
        "metrics": dict(metrics or {}),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    return atomic_write(path, lambda fh: torch.save(payload, fh))


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read a file written by :func:`save_model` with ``weights_only=True``.

    Returns:
        A dict with ``class``, ``config``, ``metrics`` and ``state_dict``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - every failure of a weights-only load means the same to the user
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            first = "it holds Python objects beyond tensors and plain values, which xcf never unpickles"
        raise ValueError(f"cannot read {path} as an xcf model file (a weights-only torch file written by "
                         f"xcf.models.io.save_model): {first}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or "state_dict" not in payload:
        raise ValueError(f"{path} is not an xcf model file (format {FORMAT})")
    return payload


def merged(base: dict[str, Any], overrides: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """A copy of ``base`` with ``overrides`` applied, nested dicts merged key by key.

    Unknown keys are refused, so a typo cannot silently train the default model.
    """
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for key, value in (overrides or {}).items():
        if key not in base:
            raise ValueError(f"unknown setting {key!r}; known: {sorted(base)}")
        out[key] = merged(base[key], value) if isinstance(base[key], dict) and isinstance(value, dict) else value
    return out


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """The model cache: ``path``, else ``$XCF_CACHE``, else ``~/.cache/xcf``."""
    if path is None:
        path = os.environ.get("XCF_CACHE") or Path.home() / ".cache" / "xcf"
    return Path(path)


def cached_model(
    name: str,
    config: dict[str, Any],
    build: Callable[[dict[str, Any]], nn.Module],
    train: Callable[[nn.Module], Optional[dict]],
    directory: str | os.PathLike | None = None,
    retrain: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """Load ``name`` from the cache if a file for exactly this ``config`` exists, else build, train, save.

    The file name carries a hash of ``config``, so changing a setting never loads a stale model, and a
    ``<file>.sha256`` beside it records the file's hash: a truncated or edited file is refused, never loaded.

    Args:
        name: a short name (``"digits-classifier"``).
        config: everything that determines the model and its training (plain values).
        build: ``config -> module`` (untrained).
        train: trains the module in place; returns metrics to record (or ``None``).
        directory: the cache folder (see :func:`cache_dir`).
        retrain: ignore a cached file.

    Returns:
        ``(module in eval mode, metrics)``.
    """
    key = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    path = cache_dir(directory) / f"{name}-{key}.pt"
    model = build(config)
    record = path.with_name(path.name + ".sha256")
    if path.is_file() and not retrain:
        expected = record.read_text().strip() if record.is_file() else None
        if expected != sha256_of(path):
            raise ValueError(f"the cached model {path} is not the file xcf wrote ("
                             + ("no checksum recorded" if expected is None else "its sha256 changed: truncated or edited")
                             + "); delete it or retrain (retrain=True, --retrain); nothing was loaded")
        payload = load_state(path)
        model.load_state_dict(payload["state_dict"])
        return model.eval(), payload["metrics"]
    metrics = train(model) or {}
    model.eval()
    save_model(model, path, config, metrics)
    text = sha256_of(path) + "\n"
    atomic_write(record, lambda fh: fh.write(text.encode()))
    return model, metrics


# ----------------------------------------------------------------------------------- safetensors weights
#: the format tag in the metadata of every ``.safetensors`` file xcf writes; another tag is refused
WEIGHTS_FORMAT = "xcf-weights/1"


def sha256_of(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, as 64 hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_weights(model: nn.Module, path: str | os.PathLike, kind: str, config: dict[str, Any],
                 metrics: Optional[dict[str, Any]] = None) -> str:
    """Write ``model``'s state dict as safetensors, with ``kind``, ``config`` and ``metrics`` (plain JSON values) in
    the metadata; atomically.

    Returns:
        The sha256 of the written file.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "lin.safetensors"
        >>> digest = save_weights(nn.Linear(2, 1), path, "toy", {"model": {}})
        >>> state, meta = read_weights(path, sha256=digest)
        >>> sorted(state), meta["kind"]
        (['bias', 'weight'], 'toy')
    """
    from safetensors.torch import save

    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    metadata = {"format": WEIGHTS_FORMAT, "kind": str(kind), "architecture": type(model).__name__,
                "config": json.dumps(config, sort_keys=True), "metrics": json.dumps(metrics or {}, sort_keys=True)}
    data = save(state, metadata=metadata)
    atomic_write(Path(path), lambda fh: fh.write(data))
    return hashlib.sha256(data).hexdigest()


def read_weights(path: str | os.PathLike, sha256: Optional[str] = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a ``.safetensors`` file written by :func:`save_weights`, after checking its sha256 when given.

    Returns:
        ``(state dict, metadata)``; the metadata has ``format``, ``kind``, ``architecture``, ``config`` and
        ``metrics`` (the last two decoded from JSON).

    Raises:
        ValueError: one sentence naming the file: missing, a sha256 other than ``sha256``, not safetensors
        (truncated, edited), or not of :data:`WEIGHTS_FORMAT`.  Nothing is loaded from such a file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no weights file at {path}")
    data = path.read_bytes()
    if sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise ValueError(f"{path} is not the file xcf recorded: sha256 {actual[:16]}..., expected {sha256[:16]}... "
                             f"({len(data):,} bytes; truncated, edited or of another version); nothing was loaded")
    try:
        if len(data) < 8:
            raise ValueError("shorter than a header")
        (header_len,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + header_len])
        state = load(data)
    except (SafetensorError, ValueError, UnicodeDecodeError, struct.error) as e:
        raise ValueError(f"{path} is not a readable safetensors file ({' '.join(str(e).split())[:200]}); "
                         "nothing was loaded") from None
    meta = dict(header.get("__metadata__") or {})
    if meta.get("format") != WEIGHTS_FORMAT:
        raise ValueError(f"{path} is not an xcf weights file of format {WEIGHTS_FORMAT!r} (its metadata says "
                         f"{meta.get('format')!r})")
    try:
        meta["config"] = json.loads(meta.get("config", "{}"))
        meta["metrics"] = json.loads(meta.get("metrics", "{}"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: its metadata is not valid JSON ({e.msg})") from None
    return state, meta
