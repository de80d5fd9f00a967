"""The one audit pipeline: explain a data set with several methods, judge, write one report.

:func:`audit` is the Python entry point behind ``xcf audit`` and the end of ``xcf demo``.  It streams the
data (a tensor or any map-style data set) through :func:`xcf.scale.stream.stream_audit` into
``out_dir/store`` (resumable, shardable over ``torchrun`` ranks), reduces the store in one pass
(:func:`xcf.scale.summary.summarise_store`), runs the Clever-Hans checks it is given and renders
``report.html`` (:func:`xcf.report.sections.audit_report`), ``summary.json`` and ``metrics.csv``.  An
in-memory audit is the same streaming audit over an in-memory data set: there is no second pipeline.

:func:`xcf.apps.audit_job.run_audit` is ``xcf audit``: it resolves the user's data and model files, checks
them, and calls :func:`audit`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from xcf._io import atomic_write
from xcf._validation import as_target_tensor, check_inputs
from xcf.evaluate.causal import RegionScan, verify_hotspots
from xcf.evaluate.cleverhans import AuditVerdict, clever_hans_audit
from xcf.evaluate.maps import compare_attributions
from xcf.evaluate.metrics import MetricsTable
from xcf.evaluate.quality import judge_sets
from xcf.report.html import check_writable
from xcf.report.sections import CleverHansSection, audit_report
from xcf.result import CounterfactualResult
from xcf.scale.distributed import DistContext, init_distributed
from xcf.scale.store import ShardStore
from xcf.scale.stream import StreamOutcome, TargetRule, stream_audit
from xcf.scale.summary import StoreSummary, load_results, summarise_store

__all__ = ["AuditOutcome", "CleverHansCheck", "audit", "clever_hans_check"]


@dataclass
class CleverHansCheck:
    """A suspected shortcut: explanations toward ``target_class`` should not concentrate in ``region``.

    Attributes:
        name: what is audited (e.g. ``"shortcut classifier"``).
        classifier: the classifier to audit.
        explainers: ``{name: explainer or map source}`` as accepted by :func:`xcf.evaluate.cleverhans.audit_maps`.
        x: inputs of *other* classes, explained toward ``target_class``.
        target_class: the suspected class.
        region: bool mask of the suspected pattern.
        fitted_on: ``{generative model: the data it was fitted on}``, said in the report (a flow fitted on
            data without the pattern cannot draw it, so its counterfactuals could never show a shortcut).
        reference: images of ``target_class`` (without the pattern): a verified region on their objects is a cue
            of the class, not a shortcut (:func:`xcf.evaluate.causal.verify_hotspots`).
    """

    name: str
    classifier: Callable[[Tensor], Tensor]
    explainers: Mapping[str, Any]
    x: Tensor
    target_class: int
    region: Tensor
    fitted_on: Mapping[str, str] = field(default_factory=dict)
    reference: Optional[Tensor] = None


def clever_hans_check(check: CleverHansCheck, steps: Optional[int] = None
                      ) -> tuple[dict[str, AuditVerdict], dict[str, Tensor], dict[str, RegionScan]]:
    """Each explainer of ``check`` (and saliency, Integrated Gradients) audited on ``check.region``, and the hotspots
    each counterfactual method shows *without* being told the region, both verified by their effect on the classifier.

    Counterfactual methods are judged by effect (:func:`xcf.evaluate.causal.verify_region`,
    :func:`~xcf.evaluate.causal.verify_hotspots`); saliency and Integrated Gradients, which have no counterfactual
    to paste, by localisation only.

    Returns:
        ``({explanation: verdict}, {explanation: maps}, {counterfactual method: RegionScan toward the class})``.
    """
    kwargs = {"steps": steps} if steps is not None else {}
    k = int(check.target_class)
    sources: dict[str, Any] = {}
    for name, e in check.explainers.items():
        explains = callable(getattr(e, "counterfactual", None))
        sources[name] = e.counterfactual(check.x, target=k, **kwargs) if explains else e
    maps = compare_attributions(check.classifier, check.x, k, sources)
    verdicts = {m: clever_hans_audit(sources.get(m, v), check.x, k, check.region, method=m, classifier=check.classifier)
                for m, v in maps.items()}
    scans = {m: verify_hotspots(check.classifier, r.inputs, r.counterfactual, k, reference=check.reference)[k]
             for m, r in sources.items() if isinstance(r, CounterfactualResult)}
    return verdicts, maps, scans


@dataclass
class AuditOutcome:
    """What :func:`audit` produced (on rank 0; other ranks get ``store`` and their ``stream`` only).

    Attributes:
        store: the shard store under ``out_dir/store``.
        stream: what the batch loop of this process did (computed / skipped batches, timing).
        table: metric means per method over every input (``None`` until the store is complete).
        results: ``{method: CounterfactualResult}`` over the whole data set when ``keep_results``.
        clever_hans: ``{check name: {explanation: verdict}}``.
        report: path of ``report.html`` (``None`` until the store is complete).
        summary: plain values written to ``summary.json``.
    """

    store: ShardStore
    stream: StreamOutcome
    table: Optional[MetricsTable] = None
    results: dict[str, CounterfactualResult] = field(default_factory=dict)
    clever_hans: dict[str, dict[str, AuditVerdict]] = field(default_factory=dict)
    report: Optional[Path] = None
    summary: dict[str, Any] = field(default_factory=dict)

    # the batch loop's record, read through (outcome.computed, outcome.skipped, outcome.timing)
    @property
    def computed(self) -> list[int]:
        return self.stream.computed

    @property
    def skipped(self) -> list[int]:
        return self.stream.skipped

    @property
    def timing(self) -> dict[str, float]:
        return self.stream.timing


def _as_dataset(data: Any, target: Any) -> tuple[Dataset, Any]:
    """A tensor of inputs becomes a data set; a per-input target becomes a per-item target tensor."""
    if isinstance(data, Tensor):
        check_inputs(data, "data")
        n = data.shape[0]
        if not isinstance(target, int) and not callable(target):
            target = as_target_tensor(target, n, torch.device("cpu"))
        return TensorDataset(data.detach().cpu()), target
    return data, target


def audit(
    classifier: Callable[[Tensor], Tensor],
    data: Tensor | Dataset,
    target: TargetRule,
    explainers: Mapping[str, Any],
    out_dir: str | Path,
    *,
    train: Optional[tuple[Tensor, Tensor]] = None,
    steps: Optional[int] = None,
    nll_fn: Optional[Callable[[Tensor], Tensor]] = None,
    on_manifold_fn: Optional[Callable[[CounterfactualResult], Tensor]] = None,
    quality: Optional[Mapping[str, float]] = None,
    clever_hans: Sequence[CleverHansCheck] = (),
    set_metrics: Optional[Mapping[str, Callable[[Tensor], float]]] = None,
    realism_reference: Optional[Mapping[str, Tensor]] = None,
    figures: Optional[Callable[[Mapping[str, CounterfactualResult]], Sequence[tuple[str, Any, str]]]] = None,
    summary: Optional[Mapping[str, Any]] = None,
    class_names: Optional[Sequence[str]] = None,
    title: str = "xcf audit",
    batch_size: int = 100,
    seed: int = 0,
    config: Optional[Mapping[str, Any]] = None,
    overwrite: bool = False,
    keep_results: Optional[bool] = None,
    device: Optional[torch.device | str] = None,
    num_workers: int = 0,
    dist: Optional[DistContext] = None,
    max_batches: Optional[int] = None,
    progress: bool = False,
) -> AuditOutcome:
    """Explain ``data`` toward ``target`` with every explainer, judge the results and write the report.

    Args:
        classifier: the audited classifier (logits), in eval mode.
        data: ``(N, ...)`` inputs, or a map-style data set yielding ``x`` or ``(x, label)``.
        target: a class for all inputs, one class per input (int list or tensor), or a rule
            ``target(x, y) -> classes`` such as :func:`xcf.scale.stream.shift_target`.
        explainers: ``{method name: explainer}`` with ``counterfactual(x, target, steps=...)``.
        out_dir: where ``store/``, ``report.html``, ``summary.json``, ``metrics.csv`` and ``figures/`` go.
        train: ``(x_train, y_train)``, the classifier's training data: the SVM and k-NN validators are
            fitted on it.
        steps: step budget per counterfactual (default: each explainer's own).
        nll_fn: per-sample negative log-likelihood in nats (realism in bits/dim), e.g. from a flow.
        on_manifold_fn: per-sample on-manifold share of ``x' - x`` (see :mod:`xcf.evaluate.geometry`); it
            gets each batch's result, whose ``info["index"]`` holds the data-set positions.
        quality: generator quality numbers to report (e.g. Fréchet distances).
        clever_hans: shortcut checks to run and report.
        set_metrics: ``{judge: fn(counterfactuals) -> float}`` computed on each method's whole set of
            counterfactuals (clamped to ``[0, 1]`` when the inputs lie there), e.g. a Fréchet distance to
            real images; reported per method and in ``summary.json`` under ``"realism"``.
        realism_reference: ``{name: images}`` judged by the same ``set_metrics`` and shown beside the
            methods (e.g. ``{"real test images": x_test}``).
        figures: ``figures(results) -> [(name, figure, caption)]``: extra report figures drawn from the
            full results (``{method: CounterfactualResult}``).
        summary: extra plain values for the data and model summary.
        class_names: names of the classes for the figures.
        title: the report's title.
        batch_size: inputs per batch and shard.
        seed: the run's seed (see :func:`~xcf.scale.stream.stream_audit`).
        config: extra plain values that identify the run (a rerun under another one is refused).
        overwrite: discard a previous store in ``out_dir`` instead of resuming it.
        keep_results: return every result in memory (default: for tensor ``data``).
        device, num_workers, dist, max_batches: see :func:`~xcf.scale.stream.stream_audit`.
        progress: progress bars.

    Returns:
        An :class:`AuditOutcome`.

    Example:
        >>> import torch, tempfile, xcf
        >>> clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
        >>> x = torch.rand(6, 1, 4, 4)
        >>> out = audit(clf, x, 2, {"adversarial": xcf.AdversarialCounterfactual(clf)}, tempfile.mkdtemp(),
        ...             steps=30, train=(torch.rand(30, 1, 4, 4), torch.arange(30) % 3))
        >>> out.report.name, len(out.results["adversarial"])
        ('report.html', 6)
    """
    out = check_writable(out_dir)
    keep = isinstance(data, Tensor) if keep_results is None else bool(keep_results)
    dataset, target = _as_dataset(data, target)
    own_dist = dist is None
    dist = dist if dist is not None else init_distributed()
    try:
        stream = stream_audit(classifier, dataset, target, explainers, out, train=train, nll_fn=nll_fn,
                              on_manifold_fn=on_manifold_fn, batch_size=batch_size, steps=steps, seed=seed,
                              num_workers=num_workers, config=config, overwrite=overwrite, device=device,
                              progress=progress, dist=dist, max_batches=max_batches,
                              collect=keep or bool(set_metrics) or figures is not None)
        outcome = AuditOutcome(stream.store, stream)
        if dist.rank != 0:
            return outcome
        store = stream.store
        if store.missing():
            outcome.summary = {"finished_batches": store.num_batches - len(store.missing()),
                               "num_batches": store.num_batches, "complete": False}
            return outcome
        reduced = summarise_store(store, list(explainers), world_size=dist.world_size)
        results = _results(stream, store, list(explainers))  # hotspots are verified on them
        if keep:
            outcome.results = dict(results)
        sets = {m: r.counterfactual.clamp(0, 1) if 0 <= float(r.inputs.min()) and float(r.inputs.max()) <= 1
                else r.counterfactual for m, r in results.items()}
        realism = judge_sets({**sets, **(realism_reference or {})}, set_metrics or {})
        extra = list(figures(results)) if figures is not None else []
        _report(outcome, reduced, out, classifier, steps, quality, clever_hans, summary, class_names, title,
                realism, extra, results)
        return outcome
    finally:
        if own_dist:
            dist.close()


def _results(stream: StreamOutcome, store: ShardStore, names: list[str]) -> dict[str, CounterfactualResult]:
    """Results computed in this call, in batch order; batches finished by an earlier call read from the store."""
    if stream.skipped or len(stream.computed) != store.num_batches or any(m not in stream.results for m in names):
        return load_results(store, names)
    return {m: CounterfactualResult.concat([r for _, r in sorted(stream.results[m], key=lambda p: p[0])])
            for m in names}


#: at most this many inputs per target class and method are used to verify hotspots in an audit's report
HOTSPOT_INPUTS = 100


def _verified_hotspots(classifier: Any, result: CounterfactualResult) -> dict[int, RegionScan]:
    """Hotspots of every target class, found in the mean change and verified by effect (the first
    :data:`HOTSPOT_INPUTS` inputs per class)."""
    t = result.target.reshape(-1).cpu()
    keep = torch.cat([(t == k).nonzero().flatten()[:HOTSPOT_INPUTS] for k in torch.unique(t)])
    keep = keep.sort().values
    # every audited image marks where objects are drawn, whatever its class
    return verify_hotspots(classifier, result.inputs[keep], result.counterfactual[keep], t[keep],
                           reference=result.inputs[keep], cues=False)


def _report(outcome: AuditOutcome, reduced: StoreSummary, out: Path, classifier: Any, steps: Optional[int],
            quality: Optional[Mapping[str, float]], clever_hans: Sequence[CleverHansCheck],
            summary: Optional[Mapping[str, Any]], class_names: Optional[Sequence[str]], title: str,
            realism: Mapping[str, Mapping[str, float]], figures: Sequence[tuple[str, Any, str]],
            results: Mapping[str, CounterfactualResult]) -> None:
    cfg = reduced.config
    info = {"inputs explained": reduced.images, "input shape": tuple(cfg.get("sample_shape", ())),
            "batches": outcome.store.num_batches, "batch size": cfg.get("batch_size"), "targets": cfg.get("target"),
            "step budget": cfg.get("steps"), "seed": cfg.get("seed"), "store": str(outcome.store.root)}
    info.update({k: v for k, v in cfg.items() if k in ("data", "classifier", "flow", "precision", "compile")})
    info.update(dict(summary or {}))
    checked = {check.name: clever_hans_check(check, steps) for check in clever_hans}
    sections = [CleverHansSection(c.name, c.target_class, checked[c.name][0], c.x, checked[c.name][1],
                                  hotspots=checked[c.name][2], fitted_on=c.fitted_on) for c in clever_hans]
    spots = {m: _verified_hotspots(classifier, r) for m, r in results.items()}
    report = audit_report(title, info, reduced.table, reduced.first, reduced.mean_maps, classifier=classifier,
                          class_names=class_names, quality=quality, timing=reduced.timing,
                          non_finite=reduced.non_finite, clever_hans=sections, realism=realism, figures=figures,
                          hotspots=spots)
    outcome.report = report.write(out)
    outcome.table = reduced.table
    outcome.clever_hans = {name: verdicts for name, (verdicts, _, _) in checked.items()}
    plain = reduced.to_dict(outcome.store)
    plain["quality"] = dict(quality or {})
    plain["realism"] = {m: dict(v) for m, v in realism.items()}
    plain["clever_hans"] = {c: {m: {**v.to_dict(), **({"hotspots": checked[c][2][m].to_dict()} if m in checked[c][2]
                                                        else {})}
                                for m, v in vs.items()} for c, vs in outcome.clever_hans.items()}
    plain["hotspots"] = {m: {str(k): scan.to_dict() for k, scan in per.items()} for m, per in spots.items()}
    plain.update({k: v for k, v in (summary or {}).items() if isinstance(v, (int, float, str, bool))})
    outcome.summary = plain
    text = json.dumps(plain, indent=2, default=str)
    atomic_write(out / "summary.json", lambda fh: fh.write(text.encode()))
    csv = reduced.table.to_csv()
    atomic_write(out / "metrics.csv", lambda fh: fh.write(csv.encode()))
