"""The batch loop of a dataset-scale audit: DataLoader batches in, one verified shard per batch out.

:func:`stream_audit` runs the explainers of an audit over a whole map-style data set.  The data set is
cut into fixed *global batches* (batch ``b`` holds positions ``[b * B, (b + 1) * B)``); each batch is
explained, judged (:func:`xcf.evaluate.metrics.counterfactual_metrics`) and written as one shard of a
:class:`~xcf.scale.store.ShardStore`, and then dropped, so peak memory does not grow with the number of
images.  It computes and writes; the one report of an audit is made from the store afterwards
(:func:`xcf.scale.summary.summarise_store`, :func:`xcf.apps.audit.audit`).

- **Resume.**  Batches with a finished shard are skipped: running the same call (or command) again after
  a kill recomputes only what was not written.  A store of another configuration is refused.
- **Scale-out.**  Under ``torchrun`` (or any initialised ``torch.distributed`` process group) rank ``r``
  of ``W`` takes the batches ``b`` with ``b % W == r``; gloo on CPU, NCCL on GPU.  A batch's results
  depend only on the batch (per-batch seed, per-sample early stopping), so the shards equal those of a
  single-process run up to floating-point order (bit for bit on CPU with one thread per process).
- **Determinism.**  Before batch ``b`` the global torch seed is set to ``seed * 1_000_003 + b`` (the
  caller's global RNG state is restored afterwards).
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import (
    DataLoader,
    Dataset,
    IterableDataset,
)

from xcf._io import atomic_write, fingerprint_modules, fingerprint_tensors, slug
from xcf.evaluate.metrics import counterfactual_metrics
from xcf.evaluate.validators import KNNValidator, SVMValidator
from xcf.result import CounterfactualResult
from xcf.scale.batches import (
    RESULT_FIELDS,
    TargetRule,
    _Collate,
    _RankBatches,
    _rule_config,
    _split_item,
    _targets,
    shift_target,
)
from xcf.scale.distributed import DistContext, init_distributed
from xcf.scale.store import ShardStore

__all__ = ["RESULT_FIELDS", "StreamOutcome", "TargetRule", "result_from_shard", "shift_target", "stream_audit"]



# ---------------------------------------------------------------------------------------- outcome
@dataclass
class StreamOutcome:
    """What :func:`stream_audit` did in this process.

    Attributes:
        store: the shard store.
        computed: global batches this process computed in this call.
        skipped: global batches of this process that were already finished.
        timing: seconds this process spent per phase (``data``, ``search``, ``metrics``, ``write``),
            plus ``loop`` (the whole batch loop) and ``setup``.
        results: with ``collect=True``, ``{method: [(batch, result), ...]}`` of the batches computed here.
    """

    store: ShardStore
    computed: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)
    results: dict[str, list[tuple[int, CounterfactualResult]]] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Every batch of the data set has a finished shard."""
        return not self.store.missing()


@dataclass(frozen=True)
class _Job:
    """One call of :func:`stream_audit`, checked: what to explain, with what, where, how."""

    classifier: Callable[[Tensor], Tensor]
    data: Dataset
    target: TargetRule
    explainers: Mapping[str, Any]
    slugs: Mapping[str, str]
    n: int
    sample_shape: tuple[int, ...]
    labelled: bool
    device: torch.device
    options: Mapping[str, Any]

    def __getattr__(self, name: str) -> Any:  # the options read as attributes: job.batch_size...
        try:
            return self.__dict__["options"][name]
        except KeyError:
            raise AttributeError(name) from None


def stream_audit(
    classifier: Callable[[Tensor], Tensor],
    data: Dataset,
    target: TargetRule,
    explainers: Mapping[str, Any],
    out_dir: str | os.PathLike,
    *,
    train: Optional[tuple[Tensor, Tensor]] = None,
    svm: Optional[SVMValidator] = None,
    knn: Optional[KNNValidator] = None,
    nll_fn: Optional[Callable[[Tensor], Tensor]] = None,
    on_manifold_fn: Optional[Callable[[CounterfactualResult], Tensor]] = None,
    batch_size: int = 100,
    steps: Optional[int] = None,
    seed: int = 0,
    num_workers: int = 0,
    config: Optional[Mapping[str, Any]] = None,
    overwrite: bool = False,
    device: Optional[torch.device | str] = None,
    progress: bool = False,
    dist: Optional[DistContext] = None,
    max_batches: Optional[int] = None,
    collect: bool = False,
) -> StreamOutcome:
    """Explain every item of ``data`` with every explainer, batch by batch, into ``out_dir/store``.

    Args:
        classifier: the audited classifier (logits), in eval mode, on ``device``.
        data: a map-style data set (``len`` and ``data[i]``) yielding an input tensor or
            ``(input, label)``; every input must have the shape of item 0.
        target: a class index for every input, a tensor with one class per item, or a rule
            ``target(x, y) -> (B,) classes`` (``y`` is ``None`` for unlabelled data), e.g. :func:`shift_target`.
        explainers: ``{method name: explainer}`` with ``counterfactual(x, target, steps=...)``.
        out_dir: output folder; the shards go to ``out_dir/store``.
        train: ``(x_train, y_train)`` to fit the SVM and k-NN validators on (or pass them fitted).
        svm, knn: fitted validators (fitted here from ``train`` when not given).
        nll_fn: per-sample negative log-likelihood in nats (realism in bits/dim).
        on_manifold_fn: per-sample on-manifold share of ``x' - x``; it gets each batch's result, whose
            ``info["index"]`` holds the data-set positions of its rows.
        batch_size: inputs per global batch (and per shard).  Part of the configuration.
        steps: step budget per counterfactual (default: each explainer's own).
        seed: the run's seed; batch ``b`` runs under ``torch.manual_seed(seed * 1_000_003 + b)``.
        num_workers: DataLoader worker processes.
        config: extra plain values that identify the run (data set name, model files...); the store
            refuses to resume under a different configuration.
        overwrite: start afresh, deleting the store's previous shards (never other files).
        device: where the inputs go (default: the device of the classifier's parameters, else CPU).
        progress: a progress bar (rank 0).
        dist: the process group (default: :func:`~xcf.scale.distributed.init_distributed`, i.e. the
            ``torchrun`` environment).
        max_batches: compute at most this many new batches in this call (then stop, unfinished; the
            next call resumes).  For chunked runs under a time limit.
        collect: also keep the computed results in memory (``StreamOutcome.results``).

    Returns:
        A :class:`StreamOutcome`.

    Raises:
        StoreMismatchError: ``out_dir`` holds a store of another configuration or xcf version.
        StoreWriteError: a shard could not be written (e.g. the disk is full); finished shards stay.
        ValueError: an input of another shape, a non-finite input, a target out of range.
    """
    t_setup = time.perf_counter()
    if isinstance(data, IterableDataset) or not hasattr(data, "__len__"):
        raise TypeError("stream_audit needs a map-style data set (len(data) and data[i]): batches must have "
                        "fixed positions to be resumed and split over processes")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not explainers:
        raise ValueError("explainers is empty: pass {method name: explainer}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    slugs = {name: slug(name) for name in explainers}
    if len(set(slugs.values())) != len(slugs):
        raise ValueError(f"method names must differ after slugging, got {slugs}")
    n = len(data)
    if n == 0:
        raise ValueError("the data set is empty")
    if isinstance(target, Tensor) and target.reshape(-1).shape[0] != n:
        raise ValueError(f"target holds {target.reshape(-1).shape[0]} classes for a data set of {n} items")
    x0, y0 = _split_item(data[0], "item 0")
    if device is None:
        params = list(classifier.parameters()) if isinstance(classifier, nn.Module) else []
        device = params[0].device if params else torch.device("cpu")
    if train is not None:
        svm = svm if svm is not None else SVMValidator().fit(*train)
        knn = knn if knn is not None else KNNValidator().fit(*train)
    job = _Job(classifier, data, target.reshape(-1).long().cpu() if isinstance(target, Tensor) else target,
               explainers, slugs, n, tuple(x0.shape), y0 is not None, torch.device(device),
               dict(train=train, svm=svm, knn=knn, nll_fn=nll_fn, on_manifold_fn=on_manifold_fn,
                    batch_size=batch_size, steps=steps, seed=seed, num_workers=num_workers,
                    config=dict(config or {}), overwrite=overwrite, progress=progress,
                    max_batches=max_batches, collect=collect, t_setup=t_setup))
    own_dist = dist is None
    dist = dist if dist is not None else init_distributed()
    try:
        return _run(job, Path(out_dir), dist)
    finally:
        if own_dist:
            dist.close()  # only a group this call created


def _run_config(job: _Job) -> dict[str, Any]:
    """What identifies the run's results: a store written under another configuration is refused."""
    validators = {k: repr(job.options[k]) if job.options[k] is not None else None for k in ("svm", "knn")}
    validators["train"] = fingerprint_tensors(*job.train) if job.train is not None else None
    return {
        "methods": dict(job.slugs),
        "explainers": {name: _describe(e) for name, e in job.explainers.items()},
        "models": fingerprint_modules(job.classifier, *[m for e in job.explainers.values() for m in _modules(e)]),
        "n": job.n,
        "sample_shape": list(job.sample_shape),
        "labelled": job.labelled,
        "batch_size": job.batch_size,
        "steps": job.steps,
        "seed": job.seed,
        "target": _rule_config(job.target),
        "validators": validators,
        "realism": job.nll_fn is not None,
        "on_manifold": job.on_manifold_fn is not None,
        **job.config,
    }


def _open_store(job: _Job, out: Path, dist: DistContext, num_batches: int) -> ShardStore:
    # Rank 0 takes the store's lock, creates (or checks) the store and clears leftovers of killed writes
    # before anyone writes; the other ranks of the same run join it without the lock.
    store = None
    if dist.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        store = ShardStore(out / "store", _run_config(job), num_batches, overwrite=job.overwrite)
    dist.barrier()
    if store is None:
        store = ShardStore(out / "store", _run_config(job), num_batches, create=False, clean_partial=False,
                           lock=False)
    return store


def _check_batch(x: Tensor, job: _Job, b: int) -> None:
    first = b * job.batch_size
    expected = min(job.batch_size, job.n - first)
    if tuple(x.shape[1:]) != job.sample_shape or x.shape[0] != expected:
        raise ValueError(f"batch {b} (items {first}..{first + x.shape[0] - 1}) has inputs of "
                         f"shape {tuple(x.shape)}; expected ({expected}, {', '.join(map(str, job.sample_shape))}) "
                         "like item 0: the data set yields inconsistent shapes")
    if not x.is_floating_point():
        raise ValueError(f"batch {b}: inputs must be floating point, got {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x.flatten(1))).any(1).nonzero()[0])
        raise ValueError(f"batch {b}: item {first + bad} has NaN or infinite values")


def _explain_batch(job: _Job, b: int, x: Tensor, y: Optional[Tensor], timing: dict[str, float],
                   warned: dict, kept: dict) -> dict[str, np.ndarray]:
    """Every explainer on one batch, judged; the shard's arrays."""
    index = torch.arange(b * job.batch_size, b * job.batch_size + x.shape[0])
    tgt = _targets(job.target, x, y, index, b)
    x = x.to(job.device, non_blocking=True)
    arrays: dict[str, np.ndarray] = {
        "index": index.numpy(),
        "input": x.detach().cpu().numpy(),
        "target": tgt.numpy(),
        "label": (y.long().cpu().numpy() if y is not None else np.full(x.shape[0], -1, dtype=np.int64)),
    }
    kw = {} if job.steps is None else {"steps": job.steps}
    t = time.perf_counter()
    for name, explainer in job.explainers.items():
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings(record=True) as caught:
            torch.manual_seed(job.seed * 1_000_003 + b)
            warnings.simplefilter("always")
            result = explainer.counterfactual(x, tgt.to(job.device), **kw)
        for w in caught:  # one summary per method at the end instead of one warning per batch
            warned.setdefault((name, w.category), [0, str(w.message)])[0] += 1
        result.info["index"] = index.to(job.device)
        timing["search"] += time.perf_counter() - t
        t = time.perf_counter()
        metrics = counterfactual_metrics(result, job.classifier, svm=job.svm, knn=job.knn, nll_fn=job.nll_fn,
                                         on_manifold_fn=job.on_manifold_fn)
        s = job.slugs[name]
        for f in RESULT_FIELDS:
            arrays[f"{s}/{f}"] = getattr(result, f).detach().cpu().numpy()
        for key, values in result.info.items():
            if key != "index" and isinstance(values, Tensor) and values.shape[:1] == (x.shape[0],):
                arrays[f"{s}/{key}"] = values.detach().cpu().numpy()
        for metric, values in metrics.items():
            if metric not in RESULT_FIELDS:
                arrays[f"{s}/{metric}"] = values.detach().cpu().numpy()
        if job.collect:
            kept.setdefault(name, []).append((b, result))
        timing["metrics"] += time.perf_counter() - t
        t = time.perf_counter()
    return arrays


def _run(job: _Job, out: Path, dist: DistContext) -> StreamOutcome:
    num_batches = math.ceil(job.n / job.batch_size)
    store = _open_store(job, out, dist, num_batches)
    try:
        return _loop(job, store, dist, num_batches)
    finally:
        store.close()  # the lock goes with this call, whether it returns or raises


def _loop(job: _Job, store: ShardStore, dist: DistContext, num_batches: int) -> StreamOutcome:
    done = store.finished()
    mine = list(range(dist.rank, num_batches, dist.world_size))
    todo = [b for b in mine if b not in done]
    skipped = [b for b in mine if b in done]
    if job.max_batches is not None:
        todo = todo[:max(0, int(job.max_batches))]
    loader = DataLoader(job.data, batch_sampler=_RankBatches(todo, job.n, job.batch_size),
                        num_workers=job.num_workers, collate_fn=_Collate(job.sample_shape),
                        pin_memory=job.device.type == "cuda")
    timing = {"setup": time.perf_counter() - job.t_setup, "data": 0.0, "search": 0.0, "metrics": 0.0, "write": 0.0}
    bar = None
    if job.progress and dist.rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=f"audit (rank 0 of {dist.world_size})", unit="batch")
    computed: list[int] = []
    warned: dict[tuple[str, type], list] = {}
    kept: dict[str, list[tuple[int, CounterfactualResult]]] = {}
    t_loop = t = time.perf_counter()
    batches = iter(loader)
    for b in todo:
        first = b * job.batch_size
        try:
            batch = next(batches)
        except ValueError as e:
            raise ValueError(f"batch {b} (items {first}..{min(first + job.batch_size, job.n) - 1}): {e}") from e
        x, y = _split_item(batch, f"batch {b}")
        timing["data"] += time.perf_counter() - t
        _check_batch(x, job, b)
        arrays = _explain_batch(job, b, x, y, timing, warned, kept)
        t = time.perf_counter()
        store.write(b, arrays)
        timing["write"] += time.perf_counter() - t
        computed.append(b)
        if bar is not None:
            bar.update(1)
        t = time.perf_counter()
    if bar is not None:
        bar.close()
    for (name, category), (count, example) in warned.items():
        warnings.warn(f"{name}: {count} warning(s) in {len(computed)} batches of this process, e.g. {example}",
                      category, stacklevel=4)
    timing["loop"] = time.perf_counter() - t_loop
    images = sum(min(job.batch_size, job.n - b * job.batch_size) for b in computed)
    _write_timing(store, dist, timing, images)
    dist.barrier()
    if dist.rank == 0 and not store.missing():
        store.write_index()
    dist.barrier()
    return StreamOutcome(store, computed=computed, skipped=skipped, timing=timing, results=kept)


def _modules(explainer: Any) -> list[Any]:
    chart = getattr(explainer, "chart", None)
    mods = list(chart.modules()) if callable(getattr(chart, "modules", None)) else []
    return [getattr(explainer, "forward_func", None), *mods]


def _describe(explainer: Any) -> str:
    """Class and search settings of an explainer (they change the results, so they are configuration)."""
    chart = getattr(explainer, "chart", None)
    if chart is None:
        return type(explainer).__name__
    settings = {k: getattr(chart, k) for k in ("lr", "steps", "update", "confidence") if hasattr(chart, k)}
    inner = ", ".join(f"{k}={v!r}" for k, v in settings.items())
    return f"{type(explainer).__name__}({type(chart).__name__}, {inner})"


def _write_timing(store: ShardStore, dist: DistContext, timing: Mapping[str, float], images: int) -> None:
    record = {"rank": dist.rank, "world_size": dist.world_size, "images": images, **timing}
    atomic_write(store.root / f"timing-rank{dist.rank}.json", lambda fh: fh.write(json.dumps(record).encode()))


def result_from_shard(arrays: Mapping[str, np.ndarray], s: str) -> CounterfactualResult:
    """The :class:`~xcf.result.CounterfactualResult` of method slug ``s`` in one shard (no trace, no timing)."""
    g = lambda k: torch.from_numpy(arrays[f"{s}/{k}"])  # noqa: E731
    x = torch.from_numpy(arrays["input"])
    info = {k.split("/", 1)[1]: torch.from_numpy(v) for k, v in arrays.items()
            if k.startswith(s + "/") and k.split("/", 1)[1] in ("poor_reconstruction", "inversion_steps")}
    info["index"] = torch.from_numpy(arrays["index"])
    return CounterfactualResult(
        inputs=x, counterfactual=g("counterfactual"), latent=g("latent"), latent_start=g("latent"),
        reconstruction=g("reconstruction"), reconstruction_error=g("reconstruction_error"),
        target=torch.from_numpy(arrays["target"]), success=g("success").bool(), steps=g("steps"), score=g("score"),
        start_score=g("start_score"), trace=torch.zeros(x.shape[0], 0), wall_time=0.0, method=s, info=info)
