"""``xcf models``: list the reference models, verify the shipped files, rebuild them from nothing.

* :func:`table_rows`: every entry of :data:`xcf.models.shipped.TABLE` with its kind, data, budget, test metric
  and size (``xcf models``).
* :func:`verify`: loads every shipped file (sha256 checked), re-measures its recorded test metric on the test
  split and compares (``xcf models verify``).
* :func:`rebuild`: trains every entry on its data with its configuration and thread count, writes
  ``<name>.safetensors`` and ``manifest.json`` into a folder (``xcf models rebuild --out DIR``; the package's own
  ``xcf/models/weights`` in a source checkout).  ``docs/models.md`` has the command and its timings.
"""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn

from xcf._io import atomic_write
from xcf._version import __version__
from xcf.datasets.scenarios import describe_data, reference_data
from xcf.evaluate.quality import frechet_distance, pca_features
from xcf.models.io import save_weights
from xcf.models.shipped import TABLE, Reference, reference, reference_entry, references
from xcf.models.registry import fit_model, get_kind

__all__ = ["budget", "frechet_of_generator", "measure", "rebuild", "table_rows", "verify"]


def frechet_of_generator(kind: str, model: nn.Module, x: Tensor, x_test: Tensor, seed: int = 0) -> dict[str, float]:
    """Fréchet distance of generated samples, and of training images (the floor), to the test images, in the
    features of the top principal components of the training data (no trained model takes part)."""
    pca = pca_features(x.cpu(), dims=min(50, x.shape[0], x[0].numel()))
    gen = torch.Generator().manual_seed(seed)
    n = x_test.shape[0]
    decode = model if kind == "gan" else model.decoder
    with torch.no_grad():
        z = torch.randn(n, model.latent_dim, generator=gen).to(x.device)
        fake = decode(z).clamp(0, 1).cpu()
    real = x_test.cpu()
    floor = x[torch.randperm(x.shape[0], generator=gen)[:n]].cpu()
    out = {"frechet_distance_pca": frechet_distance(real, fake, features=pca)}
    if floor.shape[0] >= 2:
        out["frechet_distance_pca_real_train"] = frechet_distance(real, floor, features=pca)
    return out


def measure(entry: Reference, model: nn.Module) -> float:
    """The entry's test metric, measured now on its data's test split."""
    kind = get_kind(entry.kind)
    x_test, y_test = reference_data(entry.data, "test")
    if kind.measure is not None:
        return float(kind.measure(model, entry.config, x_test, y_test))
    x, _ = reference_data(entry.data, "train")
    return frechet_of_generator(entry.kind, model, x, x_test)[kind.test_metric]  # type: ignore[index]


def budget(entry: Reference) -> str:
    """The training budget in words: ``"220 epochs"`` or ``"600 s cap (31 epochs)"``."""
    train = entry.config["train"]
    done = entry.trained.get("epochs")
    if "max_seconds" in train:
        return f"{train['max_seconds']:g} s cap" + (f" ({done} epochs)" if done is not None else "")
    return f"{train['epochs']} epochs"


def table_rows() -> list[dict[str, Any]]:
    """One row per reference model: name, kind, data, budget, seed, threads, test metric and value, size, sha256."""
    rows = []
    for e in references():
        metric = e.test_metric
        rows.append({"name": e.name, "kind": e.kind, "data": e.data, "budget": budget(e), "seed": e.config["seed"],
                     "threads": e.threads, "metric": metric, "value": e.metrics.get(metric) if metric else None,
                     "bytes": e.bytes, "sha256": e.sha256, "about": e.about})
    return rows


def verify(names: Optional[Sequence[str]] = None, tolerance: float = 1e-3) -> list[dict[str, Any]]:
    """Load each shipped file (its sha256 checked), re-measure its test metric and compare it with the record.

    Returns:
        One dict per entry: ``name``, ``metric``, ``recorded``, ``measured``, ``ok`` (within ``tolerance``, relative
        to the recorded value's size and at least ``tolerance`` absolute) and ``seconds``.
    """
    out = []
    for name in names or [e.name for e in TABLE]:
        entry = reference_entry(name)
        start = time.perf_counter()
        model, metrics = reference(name)
        value = measure(entry, model)
        recorded = metrics.get(entry.test_metric)  # type: ignore[arg-type]
        ok = recorded is not None and abs(value - recorded) <= tolerance * max(1.0, abs(recorded))
        out.append({"name": name, "metric": entry.test_metric, "recorded": recorded, "measured": value, "ok": ok,
                    "seconds": time.perf_counter() - start})
    return out


def _write_manifest(folder: Path, records: dict[str, Any]) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text()) if path.is_file() else {}
    manifest.update(records)
    ordered = {e.name: manifest[e.name] for e in TABLE if e.name in manifest}
    text = json.dumps(ordered, indent=1, sort_keys=True) + "\n"
    atomic_write(path, lambda fh: fh.write(text.encode()))


def save_reference(entry: Reference, model: nn.Module, metrics: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Write ``model`` as ``folder/<name>.safetensors`` and record it in ``folder/manifest.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    plain = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool)) and k != "config"}
    plain["trained_on"] = describe_data(entry.data)
    path = folder / f"{entry.name}.safetensors"
    digest = save_weights(model, path, entry.kind, entry.config, plain)
    record = {"sha256": digest, "bytes": path.stat().st_size, "metrics": plain,
              "trained": {"seconds": round(float(metrics.get("train_seconds", 0.0)), 1),
                          "epochs": metrics.get("epochs"), "threads": entry.threads, "torch": torch.__version__,
                          "xcf": __version__, "date": datetime.date.today().isoformat()}}
    _write_manifest(folder, {entry.name: record})
    return record


def rebuild(folder: str | Path, names: Optional[Sequence[str]] = None, progress: bool = False) -> list[dict[str, Any]]:
    """Train every reference model (or those in ``names``) from nothing into ``folder``.

    Each entry trains on its data's train split with its configuration, under its own thread count (restored
    afterwards), and is measured on the test split; ``folder/manifest.json`` records what came out.

    Returns:
        One record per entry (name, sha256, bytes, metrics, trained).
    """
    folder = Path(folder)
    chosen = [reference_entry(n) for n in (names or [e.name for e in TABLE])]
    out = []
    for entry in chosen:
        threads = torch.get_num_threads()
        torch.set_num_threads(entry.threads)
        try:
            x, y = reference_data(entry.data, "train")
            x_test, y_test = reference_data(entry.data, "test")
            model, metrics = fit_model(entry.kind, x, y, x_test=x_test, y_test=y_test, config=entry.config,
                                       progress=progress)
        finally:
            torch.set_num_threads(threads)
        if metrics["config"] != entry.config:
            raise RuntimeError(f"{entry.name}: the kind normalised its configuration; write the normal form in TABLE")
        if "generator" in get_kind(entry.kind).roles:  # the GAN's test metric; the VAE's second number
            metrics.update(frechet_of_generator(entry.kind, model, x, x_test))
        out.append({"name": entry.name, **save_reference(entry, model, metrics, folder)})
    return out

