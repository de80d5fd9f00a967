"""Dataset-scale audits: streamed through a DataLoader, written per batch, resumable, sharded over ranks.

:func:`stream_audit` runs the explainers of an audit over a whole map-style data set.  The data set is
cut into fixed *global batches* (batch ``b`` holds positions ``[b * B, (b + 1) * B)``); each batch is
explained, validated and written as one shard of a :class:`~xcf.store.ShardStore`, and then dropped, so
peak memory does not grow with the number of images.

- **Resume.**  Batches with a finished shard are skipped: running the same call (or command) again after
  a kill recomputes only what was not written.  A store of another configuration is refused.
- **Scale-out.**  Under ``torchrun`` (or any initialised ``torch.distributed`` process group) rank ``r``
  of ``W`` takes the batches ``b`` with ``b % W == r``; gloo on CPU, NCCL on GPU.  A batch's results
  depend only on the batch (per-batch seed, per-sample early stopping), so the shards, and the report
  that rank 0 merges from them in batch order, equal those of a single-process run up to floating-point
  order (bit for bit on CPU with one thread per process).  The ranks must share the output folder.
- **Determinism.**  Before batch ``b`` the global torch seed is set to ``seed * 1_000_003 + b``.

The report (``report.html``, ``summary.json``, ``metrics.csv``) is computed by one streaming pass over
the shards: metric means, mean difference maps per target class, and figures of the first batch.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.distributed as tdist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, default_collate

from xcf.search import CounterfactualResult
from xcf._io import atomic_write, fingerprint_modules, fingerprint_tensors, slug
from xcf.store import ShardStore, StoreError
from xcf.validate import KNNValidator, MetricsTable, SVMValidator, counterfactual_metrics

__all__ = [
    "DistContext",
    "StreamOutcome",
    "accelerate",
    "init_distributed",
    "shift_target",
    "stream_audit",
    "summarise_store",
]

TargetRule = Union[int, Callable[[Tensor, Optional[Tensor]], Tensor]]

#: per-method arrays every shard holds (besides one array per metric)
RESULT_FIELDS = ("counterfactual", "reconstruction", "latent", "success", "steps", "score", "start_score")
_IMAGE_FIELDS = ("counterfactual", "reconstruction", "latent")


# ------------------------------------------------------------------------------------------ ranks
@dataclass
class DistContext:
    """Where this process stands in a ``torch.distributed`` group (rank 0 of 1 without one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.active:
            tdist.barrier()

    def close(self) -> None:
        if self.owns_group and tdist.is_initialized():
            tdist.destroy_process_group()
            self.owns_group = False


def init_distributed(backend: Optional[str] = None) -> DistContext:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Uses an already initialised group as it is.  Otherwise, when ``WORLD_SIZE`` > 1, initialises one
    with ``backend`` (default: NCCL when CUDA is available, else gloo) from the ``env://`` variables
    and, for NCCL, selects GPU ``LOCAL_RANK``.  Without ``WORLD_SIZE`` it returns rank 0 of 1.
    """
    if tdist.is_available() and tdist.is_initialized():
        return DistContext(tdist.get_rank(), tdist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not tdist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    tdist.init_process_group(backend=backend)
    return DistContext(tdist.get_rank(), tdist.get_world_size(), local_rank, owns_group=True)


# ------------------------------------------------------------------------------------- batching
class _RankBatches(Sampler[list[int]]):
    """Global batches ``b`` of this rank (``b % world == rank``) that are not yet finished."""

    def __init__(self, batches: Sequence[int], n: int, batch_size: int):
        self.batches, self.n, self.batch_size = list(batches), n, batch_size

    def __iter__(self) -> Iterator[list[int]]:
        for b in self.batches:
            yield list(range(b * self.batch_size, min((b + 1) * self.batch_size, self.n)))

    def __len__(self) -> int:
        return len(self.batches)


class _Collate:
    """``default_collate`` after checking every input's shape (a clear error instead of torch.stack's)."""

    def __init__(self, sample_shape: tuple[int, ...]):
        self.sample_shape = sample_shape

    def __call__(self, items: list[Any]) -> Any:
        for j, item in enumerate(items):
            x = item[0] if isinstance(item, (tuple, list)) and item else item
            if isinstance(x, Tensor) and tuple(x.shape) != self.sample_shape:
                raise ValueError(f"item {j} of the batch has shape {tuple(x.shape)}, expected {self.sample_shape} like "
                                 "item 0 of the data set: the data set yields inconsistent shapes")
        return default_collate(items)


def _split_item(item: Any, where: str) -> tuple[Tensor, Optional[Tensor]]:
    """``(x, y)`` of a data-set item or a collated batch: a tensor, or ``(tensor, label)`` (``y`` None if absent)."""
    if isinstance(item, Tensor):
        return item, None
    if isinstance(item, (tuple, list)) and len(item) in (1, 2) and isinstance(item[0], Tensor):
        return item[0], (torch.as_tensor(item[1]) if len(item) == 2 else None)
    raise TypeError(f"{where}: the data set must yield an input tensor or (input, label); got {type(item).__name__}")


def shift_target(shift: int, num_classes: int) -> Callable[[Tensor, Optional[Tensor]], Tensor]:
    """The target rule ``(y + shift) mod num_classes`` (needs labelled data)."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")

    def rule(x: Tensor, y: Optional[Tensor]) -> Tensor:
        if y is None:
            raise ValueError("the target rule (y + shift) mod C needs labels, but the data set yields none")
        return (y.long() + shift) % num_classes

    rule.xcf_config = f"(y + {shift}) mod {num_classes}"  # type: ignore[attr-defined]
    return rule


def _targets(rule: TargetRule, x: Tensor, y: Optional[Tensor], b: int) -> Tensor:
    if isinstance(rule, bool):
        raise TypeError("target must be an int class or a callable (x, y) -> classes")
    if isinstance(rule, int):
        return torch.full((x.shape[0],), rule, dtype=torch.long)
    t = rule(x, y)
    t = torch.as_tensor(t).long().reshape(-1)
    if t.shape[0] != x.shape[0]:
        raise ValueError(f"batch {b}: the target rule returned {t.shape[0]} targets for {x.shape[0]} inputs")
    return t.cpu()


def _rule_config(rule: TargetRule) -> str:
    if isinstance(rule, int):
        return f"class {rule}"
    return getattr(rule, "xcf_config", getattr(rule, "__qualname__", type(rule).__name__))


# ------------------------------------------------------------------------------------ precision
class _Autocast(nn.Module):
    """Runs the wrapped classifier under ``torch.autocast`` and returns float32 logits."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model, self.dtype = model, dtype
        self.training = model.training  # mirror, without touching the wrapped model's mode

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(device_type=x.device.type, dtype=self.dtype):
            out = self.model(x)
        return out.float()


def accelerate(classifier: nn.Module, precision: str = "fp32", compile: bool = False) -> nn.Module:
    """The classifier with mixed precision and/or ``torch.compile`` (the GPU recipe's knobs).

    Mixed precision is applied to the classifier only: flows and generators keep float32, since
    log-determinants, inversions and the small steps of the search need its precision.

    Args:
        classifier: the audited classifier (left as it is; the wrapper holds it).
        precision: ``"fp32"`` (unchanged), ``"bf16"`` or ``"fp16"`` (autocast; fp16 on CUDA only).
        compile: wrap in ``torch.compile`` (one compilation per input shape; pays off for many batches).
    """
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be 'fp32', 'bf16' or 'fp16', got {precision!r}")
    model = classifier
    if precision != "fp32":
        model = _Autocast(model, torch.bfloat16 if precision == "bf16" else torch.float16)
    if compile:
        model = torch.compile(model)
    return model


# ---------------------------------------------------------------------------------------- outcome
@dataclass
class StreamOutcome:
    """What :func:`stream_audit` did.

    Attributes:
        store: the shard store.
        table: the metrics table over every finished batch (rank 0; ``None`` on other ranks or
            without ``report``).
        summary: plain values written to ``summary.json`` (rank 0).
        report: path of ``report.html`` (rank 0, when written).
        computed: global batches this process computed in this call.
        skipped: global batches of this process that were already finished.
        timing: seconds this process spent per phase (``data``, ``search``, ``metrics``, ``write``),
            plus ``loop`` (the whole batch loop) and ``setup``.
    """

    store: ShardStore
    table: Optional[MetricsTable] = None
    summary: dict[str, Any] = field(default_factory=dict)
    report: Optional[Path] = None
    computed: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)


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
    batch_size: int = 100,
    steps: Optional[int] = None,
    seed: int = 0,
    num_workers: int = 0,
    config: Optional[Mapping[str, Any]] = None,
    overwrite: bool = False,
    device: Optional[torch.device | str] = None,
    report: bool = True,
    class_names: Optional[Sequence[str]] = None,
    title: str = "xcf audit",
    progress: bool = False,
    dist: Optional[DistContext] = None,
    max_batches: Optional[int] = None,
) -> StreamOutcome:
    """Explain every item of ``data`` with every explainer, batch by batch, into ``out_dir/store``.

    Args:
        classifier: the audited classifier (logits), in eval mode, on ``device``.
        data: a map-style data set (``len`` and ``data[i]``) yielding an input tensor or
            ``(input, label)``; every input must have the shape of item 0.
        target: a class index for every input, or a rule ``target(x, y) -> (B,) classes`` (``y`` is
            ``None`` for unlabelled data), e.g. :func:`shift_target`.
        explainers: ``{method name: explainer}`` with ``counterfactual(x, target, steps=...)``.
        out_dir: output folder: ``store/`` (the shards) and, from rank 0, the report files.
        train: ``(x_train, y_train)`` to fit the SVM and k-NN validators on (or pass them fitted).
        svm, knn: fitted validators (fitted here from ``train`` when not given).
        nll_fn: per-sample negative log-likelihood in nats (realism in bits/dim).
        batch_size: inputs per global batch (and per shard).  Part of the configuration.
        steps: step budget per counterfactual (default: each explainer's own).
        seed: the run's seed; batch ``b`` runs under ``torch.manual_seed(seed * 1_000_003 + b)``.
        num_workers: DataLoader worker processes.
        config: extra plain values that identify the run (data set name, model files...); the store
            refuses to resume under a different configuration.
        overwrite: start afresh, deleting the store's previous shards (never other files).
        device: where the inputs go (default: the device of the classifier's parameters, else CPU).
        report: merge the shards into ``report.html``, ``summary.json`` and ``metrics.csv`` at the end.
        class_names: class names for the figures.
        title: the report's title.
        progress: a progress bar (rank 0).
        dist: the process group (default: :func:`init_distributed`, i.e. the ``torchrun`` environment).
        max_batches: compute at most this many new batches in this call (then stop, unfinished; the
            next call resumes).  For chunked runs under a time limit.

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
    x0, y0 = _split_item(data[0], "item 0")
    own_dist = dist is None
    dist = dist if dist is not None else init_distributed()
    try:
        return _run(classifier, data, target, explainers, out_dir, dist, t_setup, n, x0, y0, slugs,
                    train=train, svm=svm, knn=knn, nll_fn=nll_fn, batch_size=batch_size, steps=steps, seed=seed,
                    num_workers=num_workers, config=config, overwrite=overwrite, device=device, report=report,
                    class_names=class_names, title=title, progress=progress, max_batches=max_batches)
    finally:
        if own_dist:
            dist.close()  # only a group this call created


def _run(classifier, data, target, explainers, out_dir, dist, t_setup, n, x0, y0, slugs, *, train, svm, knn,
         nll_fn, batch_size, steps, seed, num_workers, config, overwrite, device, report, class_names, title,
         progress, max_batches) -> StreamOutcome:
    sample_shape = tuple(x0.shape)
    if device is None:
        params = list(classifier.parameters()) if isinstance(classifier, nn.Module) else []
        device = params[0].device if params else torch.device("cpu")
    device = torch.device(device)
    num_batches = math.ceil(n / batch_size)

    run_config = {
        "methods": {name: slugs[name] for name in explainers},
        "explainers": {name: _describe(e) for name, e in explainers.items()},
        "models": fingerprint_modules(classifier, *[m for e in explainers.values() for m in _modules(e)]),
        "n": n,
        "sample_shape": list(sample_shape),
        "labelled": y0 is not None,
        "batch_size": batch_size,
        "steps": steps,
        "seed": seed,
        "target": _rule_config(target),
        "validators": {"svm": repr(svm) if svm is not None else ("fit on train" if train is not None else None),
                       "knn": repr(knn) if knn is not None else ("fit on train" if train is not None else None),
                       "train": fingerprint_tensors(*train) if train is not None else None},
        "realism": nll_fn is not None,
        **dict(config or {}),
    }
    out = Path(out_dir)
    root = out / "store"
    # Rank 0 creates (or checks) the store and clears leftovers of killed writes before anyone writes.
    store = None
    if dist.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        store = ShardStore(root, run_config, num_batches, overwrite=overwrite)
    dist.barrier()
    if store is None:
        store = ShardStore(root, run_config, num_batches, create=False, clean_partial=False)

    if train is not None:
        if svm is None:
            svm = SVMValidator().fit(*train)
        if knn is None:
            knn = KNNValidator().fit(*train)

    done = store.finished()
    mine = [b for b in range(dist.rank, num_batches, dist.world_size)]
    todo = [b for b in mine if b not in done]
    skipped = [b for b in mine if b in done]
    if max_batches is not None:
        todo = todo[:max(0, int(max_batches))]
    loader = DataLoader(data, batch_sampler=_RankBatches(todo, n, batch_size), num_workers=num_workers,
                        collate_fn=_Collate(sample_shape), pin_memory=device.type == "cuda")
    timing = {"setup": time.perf_counter() - t_setup, "data": 0.0, "search": 0.0, "metrics": 0.0, "write": 0.0}
    bar = None
    if progress and dist.rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=f"audit (rank 0 of {dist.world_size})", unit="batch")
    computed: list[int] = []
    warned: dict[tuple[str, type], list] = {}
    t_loop = time.perf_counter()
    t = time.perf_counter()
    batches = iter(loader)
    for b in todo:
        first = b * batch_size
        try:
            batch = next(batches)
        except ValueError as e:
            raise ValueError(f"batch {b} (items {first}..{min(first + batch_size, n) - 1}): {e}") from e
        x, y = _split_item(batch, f"batch {b}")
        timing["data"] += time.perf_counter() - t
        t = time.perf_counter()
        expected = min(batch_size, n - b * batch_size)
        if tuple(x.shape[1:]) != sample_shape or x.shape[0] != expected:
            raise ValueError(f"batch {b} (items {first}..{first + x.shape[0] - 1}) has inputs of "
                             f"shape {tuple(x.shape)}; expected ({expected}, {', '.join(map(str, sample_shape))}) "
                             "like item 0: the data set yields inconsistent shapes")
        if not x.is_floating_point():
            raise ValueError(f"batch {b}: inputs must be floating point, got {x.dtype}")
        if not bool(torch.isfinite(x).all()):
            bad = int((~torch.isfinite(x.flatten(1))).any(1).nonzero()[0])
            raise ValueError(f"batch {b}: item {b * batch_size + bad} has NaN or infinite values")
        tgt = _targets(target, x, y, b)
        x = x.to(device, non_blocking=True)
        arrays: dict[str, np.ndarray] = {
            "index": np.arange(b * batch_size, b * batch_size + x.shape[0], dtype=np.int64),
            "input": x.detach().cpu().numpy(),
            "target": tgt.numpy(),
            "label": (y.long().cpu().numpy() if y is not None else np.full(x.shape[0], -1, dtype=np.int64)),
        }
        for name, explainer in explainers.items():
            torch.manual_seed(seed * 1_000_003 + b)
            kw = {} if steps is None else {"steps": steps}
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = explainer.counterfactual(x, tgt.to(device), **kw)
            for w in caught:  # one summary per method at the end instead of one warning per batch
                noted = warned.setdefault((name, w.category), [0, str(w.message)])
                noted[0] += 1
            timing["search"] += time.perf_counter() - t
            t = time.perf_counter()
            metrics = counterfactual_metrics(result, classifier, svm=svm, knn=knn, nll_fn=nll_fn)
            s = slugs[name]
            for f in RESULT_FIELDS:
                arrays[f"{s}/{f}"] = getattr(result, f).detach().cpu().numpy()
            for key, values in result.info.items():
                if isinstance(values, Tensor) and values.shape[:1] == (x.shape[0],):
                    arrays[f"{s}/{key}"] = values.detach().cpu().numpy()
            for metric, values in metrics.items():
                if metric not in RESULT_FIELDS:
                    arrays[f"{s}/{metric}"] = values.detach().cpu().numpy()
            timing["metrics"] += time.perf_counter() - t
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
                      category, stacklevel=2)
    timing["loop"] = time.perf_counter() - t_loop
    images = sum(min(batch_size, n - b * batch_size) for b in computed)
    _write_timing(store, dist, timing, images)
    outcome = StreamOutcome(store, computed=computed, skipped=skipped, timing=timing)

    dist.barrier()
    if dist.rank == 0 and report:
        missing = store.missing()
        if missing:
            outcome.summary = {"finished_batches": num_batches - len(missing), "num_batches": num_batches,
                               "complete": False}
        else:
            store.write_index()
            outcome.table, outcome.summary, outcome.report = summarise_store(
                store, out, classifier=classifier, names=list(explainers), class_names=class_names, title=title,
                world_size=dist.world_size)
    dist.barrier()
    return outcome


def _modules(explainer: Any) -> list[Any]:
    chart = getattr(explainer, "chart", None)
    mods = list(chart.modules()) if callable(getattr(chart, "modules", None)) else []
    return [getattr(explainer, "forward_func", None), *mods]


def _describe(explainer: Any) -> str:
    """Class and search settings of an explainer (they change the results, so they are configuration)."""
    chart = getattr(explainer, "chart", None)
    if chart is None:
        return type(explainer).__name__
    settings = {k: getattr(chart, k) for k in ("lr", "steps", "update") if hasattr(chart, k)}
    inner = ", ".join(f"{k}={v!r}" for k, v in settings.items())
    return f"{type(explainer).__name__}({type(chart).__name__}, {inner})"


def _write_timing(store: ShardStore, dist: DistContext, timing: Mapping[str, float], images: int) -> None:
    record = {"rank": dist.rank, "world_size": dist.world_size, "images": images, **timing}
    atomic_write(store.root / f"timing-rank{dist.rank}.json", lambda fh: fh.write(json.dumps(record).encode()))


# ------------------------------------------------------------------------------------ the report
def _result_of(arrays: Mapping[str, np.ndarray], s: str) -> CounterfactualResult:
    g = lambda k: torch.from_numpy(arrays[f"{s}/{k}"])  # noqa: E731
    x = torch.from_numpy(arrays["input"])
    return CounterfactualResult(
        inputs=x, counterfactual=g("counterfactual"), latent=g("latent"), latent_start=g("latent"),
        reconstruction=g("reconstruction"), reconstruction_error=g("reconstruction_error"),
        target=torch.from_numpy(arrays["target"]), success=g("success").bool(), steps=g("steps"), score=g("score"),
        start_score=g("start_score"), trace=torch.zeros(x.shape[0], 0), wall_time=0.0, method=s)


def summarise_store(
    store: ShardStore,
    out_dir: str | os.PathLike,
    *,
    classifier: Optional[Callable[[Tensor], Tensor]] = None,
    names: Optional[Sequence[str]] = None,
    class_names: Optional[Sequence[str]] = None,
    title: str = "xcf audit",
    world_size: Optional[int] = None,
) -> tuple[MetricsTable, dict[str, Any], Path]:
    """Merge a finished store into ``report.html``, ``summary.json`` and ``metrics.csv`` in one pass.

    Memory holds one shard plus running sums (metric sums, difference-map sums per target class) and the
    first shard for the figures.  Batches are visited in order, so the numbers do not depend on how many
    processes wrote the shards.
    """
    from xcf.report.figures import comparison_grid, mean_map_figure, method_grid
    from xcf.report.html import Report, check_writable

    out = check_writable(out_dir)
    methods: dict[str, str] = store.config.get("methods", {})
    names = list(names or methods)
    sums: dict[str, dict[str, float]] = {m: {} for m in names}
    counts: dict[str, dict[str, int]] = {m: {} for m in names}
    map_sum: dict[str, dict[int, Tensor]] = {m: {} for m in names}
    map_n: dict[str, dict[int, int]] = {m: {} for m in names}
    first: Optional[dict[str, np.ndarray]] = None
    rows = 0
    for _, arrays in store.iter_batches():
        if first is None:
            first = arrays
        rows += arrays["index"].shape[0]
        target = torch.from_numpy(arrays["target"])
        for m in names:
            s = methods[m]
            for key, v in arrays.items():
                if not key.startswith(s + "/") or key.split("/", 1)[1] in _IMAGE_FIELDS:
                    continue
                metric = key.split("/", 1)[1]
                v = v.astype(np.float64).reshape(-1)
                ok = ~np.isnan(v)
                sums[m][metric] = sums[m].get(metric, 0.0) + float(v[ok].sum())
                counts[m][metric] = counts[m].get(metric, 0) + int(ok.sum())
            diff = torch.from_numpy(arrays[f"{s}/counterfactual"]).double() - torch.from_numpy(arrays["input"]).double()
            for k in torch.unique(target).tolist():
                sel = target == k
                map_sum[m][k] = map_sum[m].get(k, 0) + diff[sel].sum(0)
                map_n[m][k] = map_n[m].get(k, 0) + int(sel.sum())
    if first is None:
        raise StoreError(f"{store.root} has no finished shards to summarise")
    table = MetricsTable({m: {k: sums[m][k] / counts[m][k] if counts[m][k] else float("nan") for k in sums[m]}
                          for m in names}, {m: rows for m in names})
    mean_maps = {m: {k: (map_sum[m][k] / map_n[m][k]).float() for k in sorted(map_sum[m])} for m in names}

    timing = _read_timing(store, world_size)
    cfg = store.config
    summary: dict[str, Any] = {
        "images": rows,
        "batches": store.num_batches,
        "batch_size": cfg.get("batch_size"),
        "methods": list(names),
        "metrics": table.to_dict(),
        "throughput": timing,
        "store": str(store.root),
        "config": cfg,
    }

    report = Report(title)
    report.section("Data and models")
    info = {"inputs explained": rows, "input shape": tuple(cfg.get("sample_shape", ())), "batches": store.num_batches,
            "batch size": cfg.get("batch_size"), "targets": cfg.get("target"), "step budget": cfg.get("steps"),
            "seed": cfg.get("seed"), "store": str(store.root)}
    info.update({k: v for k, v in cfg.items() if k in ("data", "classifier", "flow", "precision", "compile")})
    report.table([{"item": k, "value": v} for k, v in info.items()], ["item", "value"])
    report.section("Metrics over the whole data set")
    report.text("Means over every input (n). validity: the audited classifier predicts the target at x'; "
                "svm_transfer / knn_agreement: independent models trained on the training data agree; "
                "realism_bpd: flow bits per dimension of x'; l1/l2/sparsity: size of x' − x.")
    report.table([{"method": m, **row} for m, row in table.to_dict().items()])
    if timing:
        report.section("Throughput")
        report.text(f"This run: {timing['images']} images computed by {timing['processes']} process(es) in "
                    f"{timing['wall_s']:.1f} s, {timing['images_per_s']:.2f} images/s. Share of the batch loop "
                    "per phase, summed over processes:")
        report.table([{"phase": k, "share": v} for k, v in timing["shares"].items()], ["phase", "share"])
    first_results = {m: _result_of(first, methods[m]) for m in names}
    report.section("Counterfactuals of the first batch")
    report.figure("comparison", comparison_grid(first_results, classifier, n=8, class_names=class_names),
                  "the same inputs and targets, every method (green: reached the target)")
    for m, r in first_results.items():
        report.figure(f"grid_{m}", method_grid(r, classifier, n=6, class_names=class_names, title=m),
                      f"{m}: input, reconstruction, counterfactual, difference")
    report.section("Mean difference maps per target class (whole data set)")
    report.figure("mean_maps", mean_map_figure(mean_maps, class_names), "mean x' − x of all inputs sent to each class")
    path = report.write(out)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    table.to_csv(str(out / "metrics.csv"))
    return table, summary, path


def _read_timing(store: ShardStore, world_size: Optional[int]) -> dict[str, Any]:
    files = sorted(store.root.glob("timing-rank*.json"))
    stats = []
    for p in files:
        try:
            stats.append(json.loads(p.read_text()))
        except (OSError, ValueError):
            continue
    if world_size is not None:
        stats = [s for s in stats if s.get("world_size") == world_size and s.get("rank", 0) < world_size]
    if not stats:
        return {}
    phases = ("data", "search", "metrics", "write")
    loop = sum(s.get("loop", 0.0) for s in stats)
    wall = max(s.get("setup", 0.0) + s.get("loop", 0.0) for s in stats)
    images = sum(s.get("images", 0) for s in stats)
    return {
        "processes": len(stats),
        "images": images,
        "wall_s": wall,
        "images_per_s": images / wall if wall > 0 else float("nan"),
        "loop_images_per_s": images / max(s.get("loop", 0.0) for s in stats) if loop > 0 else float("nan"),
        "shares": {p: (sum(s.get(p, 0.0) for s in stats) / loop if loop > 0 else float("nan")) for p in phases},
        "seconds": {p: sum(s.get(p, 0.0) for s in stats) for p in (*phases, "setup", "loop")},
    }
