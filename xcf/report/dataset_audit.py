"""``xcf audit``: a dataset-scale, resumable audit of a digits classifier (see :mod:`xcf.stream`).

Loads (or trains, once, into the cache) the reference flow, GAN and VAE and the audited classifier,
then streams the chosen data set through :func:`xcf.stream.stream_audit`.  Under
``torchrun --nproc_per_node N -m xcf audit ...`` every rank takes its share of the batches; rank 0
trains missing models first while the others wait, and merges the report at the end.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from xcf.datasets import ShiftedImages, load_digits
from xcf.explain.adversarial import AdversarialCounterfactual
from xcf.explain.approximate import ApproximateCounterfactual
from xcf.explain.diffeomorphic import DiffeomorphicCounterfactual
from xcf.models.classifier import digits_classifier
from xcf.models.flows import bits_per_dim, digits_flow
from xcf.models.gan import digits_gan
from xcf.models.io import QUICK
from xcf.models.vae import digits_vae
from xcf.report.demo import METHODS, load_classifier
from xcf._io import fingerprint_modules
from xcf.stream import StreamOutcome, accelerate, init_distributed, shift_target, stream_audit

__all__ = ["DATASETS", "digits_dataset", "run_audit"]

#: data sets ``xcf audit --data`` knows
DATASETS = ("digits-test", "digits-all", "digits-shifted")


def digits_dataset(name: str, n: Optional[int] = None) -> torch.utils.data.Dataset:
    """``digits-test`` (450), ``digits-all`` (1,797) or ``digits-shifted`` (test digits under nine one-pixel
    shifts, any size), optionally cut to the first ``n`` items."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose from {list(DATASETS)}")
    x, y = load_digits("all" if name == "digits-all" else "test")
    if name == "digits-shifted":
        return ShiftedImages(x, y, n)
    if n is not None:
        if n > x.shape[0]:
            raise ValueError(f"{n} images asked for, but {name} has {x.shape[0]}; use digits-shifted for more")
        x, y = x[:n], y[:n]
    return torch.utils.data.TensorDataset(x, y)


def _device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda but CUDA is not available")
        return torch.device(f"cuda:{local_rank}")
    if name != "cpu":
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    return torch.device("cpu")


def run_audit(
    out_dir: str | Path = "xcf-audit",
    *,
    data: str = "digits-test",
    n: Optional[int] = None,
    batch_size: int = 100,
    steps: int = 1000,
    seed: int = 0,
    target_shift: int = 3,
    methods: Optional[Sequence[str]] = None,
    classifier_file: Optional[str | Path] = None,
    flow_kind: str = "realnvp",
    cache_dir: Optional[str | Path] = None,
    quick: bool = False,
    num_workers: int = 0,
    overwrite: bool = False,
    precision: str = "fp32",
    compile: bool = False,
    device: str = "auto",
    max_batches: Optional[int] = None,
    progress: bool = True,
) -> StreamOutcome:
    """Audit a digits classifier over a whole data set, resumably (the engine of ``xcf audit``).

    Args:
        out_dir: output folder (``store/`` with the shards, ``report.html``, ``summary.json``, ``metrics.csv``).
        data: one of :data:`DATASETS`.
        n: number of items (default: the whole data set; ``digits-shifted`` defaults to 9 x 450).
        batch_size: inputs per batch and shard.
        steps: step budget per counterfactual.
        seed: the run's seed (models' inversion starts, per-batch seeds).
        target_shift: targets are ``(y + target_shift) mod 10``.
        methods: subset of :data:`xcf.report.demo.METHODS` (default: all).
        classifier_file: audit this :class:`~xcf.models.classifier.DigitsCNN` file instead of the reference.
        flow_kind: ``"realnvp"`` or ``"glow"``.
        cache_dir: the model cache.
        quick: tiny training budgets (a smoke test; numbers meaningless).
        num_workers: DataLoader workers.
        overwrite: discard a previous store in ``out_dir`` instead of resuming it.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` for the classifier (see :func:`xcf.stream.accelerate`).
        compile: ``torch.compile`` the classifier.
        device: ``"auto"`` (CUDA GPU ``LOCAL_RANK`` when available), ``"cpu"`` or ``"cuda"``.
        max_batches: compute at most this many new batches per process, then stop (resume later).
        progress: a progress bar on rank 0.
    """
    methods = list(methods or METHODS)
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {list(METHODS)}")
    dataset = digits_dataset(data, n)
    t0 = time.perf_counter()
    dist = init_distributed()
    try:
        dev = _device(device, dist.local_rank)
        q = QUICK if quick else {}
        # Rank 0 trains whatever the cache lacks; the others wait, then load the same files.
        if dist.rank != 0:
            dist.barrier()
        classifier, _ = digits_classifier(cache_dir=cache_dir, progress=progress and dist.rank == 0,
                                          overrides=q.get("classifier"))
        if classifier_file is not None:
            classifier = load_classifier(classifier_file)
        flow, _ = digits_flow(kind=flow_kind, cache_dir=cache_dir, progress=progress and dist.rank == 0,
                              overrides=q.get("flow"))
        gan = vae = None
        if "approximate (GAN)" in methods:
            gan, _ = digits_gan(cache_dir=cache_dir, progress=progress and dist.rank == 0, overrides=q.get("gan"))
        if "approximate (VAE)" in methods:
            vae, _ = digits_vae(cache_dir=cache_dir, progress=progress and dist.rank == 0, overrides=q.get("vae"))
        if dist.rank == 0:
            dist.barrier()
        models_s = time.perf_counter() - t0

        classifier, flow = classifier.to(dev).eval(), flow.to(dev).eval()
        fast = accelerate(classifier, precision, compile)
        explainers: dict[str, Any] = {}
        if "diffeomorphic" in methods:
            explainers["diffeomorphic"] = DiffeomorphicCounterfactual(fast, flow)
        if gan is not None:
            gan = gan.to(dev).eval()
            explainers["approximate (GAN)"] = ApproximateCounterfactual(fast, gan, (gan.latent_dim,), seed=seed)
        if vae is not None:
            vae = vae.to(dev).eval()
            explainers["approximate (VAE)"] = ApproximateCounterfactual(fast, vae.decoder, (vae.latent_dim,),
                                                                        encoder=vae.encode, restarts=1, seed=seed)
        if "adversarial" in methods:
            explainers["adversarial"] = AdversarialCounterfactual(fast)
        explainers = {m: explainers[m] for m in methods}

        dims = math.prod(dataset[0][0].shape)
        nll_fn = lambda v: bits_per_dim(flow, v, dequantize=False) * dims * math.log(2)  # noqa: E731
        config = {
            "data": data,
            "classifier": str(classifier_file) if classifier_file else "reference digits CNN",
            "flow": flow_kind,
            "quick": quick,
            "precision": precision,
            "compile": compile,
            "realism_flow": fingerprint_modules(flow),
        }
        outcome = stream_audit(
            fast, dataset, shift_target(target_shift, 10), explainers, out_dir, train=load_digits("train"),
            nll_fn=nll_fn, batch_size=batch_size, steps=steps, seed=seed, num_workers=num_workers, config=config,
            overwrite=overwrite, device=dev, progress=progress, dist=dist, max_batches=max_batches,
            title=f"xcf audit — {data}, {len(dataset)} images")
        outcome.timing["models"] = models_s
        return outcome
    finally:
        dist.close()
