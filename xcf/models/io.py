"""Saving and loading models as plain state dicts, and the cache the demo trains into.

Files hold only tensors and plain Python values, so they load with ``torch.load(weights_only=True)``:
a file a user hands in cannot run code.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from xcf._io import atomic_write

__all__ = ["save_model", "load_state", "cache_dir", "cached_model", "merged", "QUICK"]

FORMAT = 1

#: tiny training budgets of the reference models, for smoke tests of whole pipelines (``--quick``):
#: pass ``overrides=QUICK[name]`` to ``digits_classifier``, ``digits_flow``, ``digits_gan``, ``digits_vae``
QUICK: dict[str, dict[str, Any]] = {
    "classifier": {"train": {"epochs": 3}},
    "flow": {"train": {"epochs": 2}},
    "gan": {"epochs": 2},
    "vae": {"epochs": 2},
    "pixelcnn": {"model": {"hidden": 4, "layers": 1, "head": 4}, "train": {"epochs": 1}, "max_seconds": 5},
}


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

    The file name carries a hash of ``config``, so changing a setting never loads a stale model.

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
    if path.is_file() and not retrain:
        payload = load_state(path)
        model.load_state_dict(payload["state_dict"])
        return model.eval(), payload["metrics"]
    metrics = train(model) or {}
    model.eval()
    save_model(model, path, config, metrics)
    return model, metrics
