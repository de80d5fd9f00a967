"""``xcf audit --fit``: generative models fitted on the classifier's training data for one audit.

A Clever-Hans audit needs a flow (and a generator) of the classifier's own training distribution: one
fitted on images without a watermark cannot draw it, so its counterfactuals could never show it.
:func:`fitted` trains them with the recipes of ``xcf train`` (:func:`xcf.apps.train.run_train`) into
``out_dir/fitted/`` and reuses them while the training data is the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from xcf.apps.train import run_train
from xcf.datasets.files import ImageData
from xcf.models.loading import LoadedModel, load_model
from xcf.models.registry import KINDS

__all__ = ["FITTABLE", "FIT_MINUTES", "check_fit", "fitted"]

#: what ``xcf audit --fit`` fits on the training data
FITTABLE = tuple(k.name for k in KINDS.values() if "flow" in k.roles or "generator" in k.roles)
#: the default wall-clock budget of each model ``--fit`` trains, in minutes
FIT_MINUTES = 10.0


def check_fit(fit: Sequence[str], flow: Optional[str], generator: Optional[str]) -> list[str]:
    """The models to fit, in :data:`FITTABLE` order; refuses unknown ones, two generators, and a model that
    ``--flow`` / ``--generator`` already names."""
    chosen = [k.strip() for k in ([fit] if isinstance(fit, str) else list(fit or [])) if k.strip()]
    unknown = sorted(set(chosen) - set(FITTABLE))
    if unknown:
        raise ValueError(f"cannot fit {unknown}; --fit takes a comma-separated subset of {list(FITTABLE)}")
    if "gan" in chosen and "vae" in chosen:
        raise ValueError("--fit gan,vae: the audit takes one generator; fit a GAN or a VAE")
    if "flow" in chosen and flow is not None:
        raise ValueError(f"--flow {flow} and --fit flow both name the flow; give one")
    if generator is not None and ("gan" in chosen or "vae" in chosen):
        raise ValueError(f"--generator {generator} and --fit {','.join(chosen)} both name the generator; give one")
    return [k for k in FITTABLE if k in chosen]


def fitted(kind: str, train: ImageData, out: Path, minutes: float, device: str, seed: int, overwrite: bool,
           progress: bool, write: bool) -> LoadedModel:
    """The ``kind`` model fitted on ``train`` for this audit: trained once (by rank 0) into
    ``out/fitted/{kind}.pt``, reused while the training data's fingerprint is the same."""
    path = out / "fitted" / f"{kind}.pt"
    role = "flow" if kind == "flow" else "generator"
    if path.is_file() and not overwrite:
        loaded = load_model(str(path), role)
        if loaded.metrics.get("data_fingerprint") == train.fingerprint:
            return loaded
    if write:
        path.parent.mkdir(parents=True, exist_ok=True)
        run_train(kind, train.source, path, max_minutes=minutes, device=device, seed=seed,
                  channels=train.shape[0], layout=train.layout, progress=progress)
    return load_model(str(path), role)
