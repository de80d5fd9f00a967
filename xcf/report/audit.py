"""The audit: run explainers on a data set, validate the counterfactuals, write the HTML report.

:func:`audit` is the Python entry point behind ``xcf audit`` and the end of ``xcf demo``.  It takes the
classifier, its training data (for the independent SVM / k-NN validators), the inputs and targets to
explain and any number of named explainers; it returns the results and the metrics table and writes
``report.html`` (figures embedded) with every figure beside it as PNG and PDF.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from torch import Tensor

from xcf.cleverhans import AuditVerdict, audit_maps
from xcf.maps import compare_attributions, mean_map_per_target, plot_map_grid
from xcf.objectives import TargetType, as_target_tensor
from xcf.report.figures import comparison_grid, mean_map_figure, method_grid
from xcf.report.html import Report, check_writable
from xcf.search import CounterfactualResult
from xcf.validate import KNNValidator, MetricsTable, SVMValidator, compare

__all__ = ["AuditOutcome", "CleverHansCheck", "audit", "clever_hans_check"]


@dataclass
class CleverHansCheck:
    """A suspected shortcut: explanations toward ``target_class`` should not concentrate in ``region``.

    Attributes:
        name: what is audited (e.g. ``"shortcut classifier"``).
        classifier: the classifier to audit.
        explainers: ``{name: explainer or map source}`` as accepted by :func:`xcf.cleverhans.audit_maps`.
        x: inputs of *other* classes, explained toward ``target_class``.
        target_class: the suspected class.
        region: bool mask of the suspected pattern.
    """

    name: str
    classifier: Callable[[Tensor], Tensor]
    explainers: Mapping[str, Any]
    x: Tensor
    target_class: int
    region: Tensor


@dataclass
class AuditOutcome:
    """What :func:`audit` produced.

    Attributes:
        results: ``{method: CounterfactualResult}``.
        table: the metrics table (means per method).
        clever_hans: ``{check name: {explanation: verdict}}``.
        report: path of ``report.html``.
        summary: plain values written to ``summary.json``.
    """

    results: dict[str, CounterfactualResult]
    table: MetricsTable
    clever_hans: dict[str, dict[str, AuditVerdict]] = field(default_factory=dict)
    report: Optional[Path] = None
    summary: dict[str, Any] = field(default_factory=dict)


def clever_hans_check(check: CleverHansCheck, steps: Optional[int] = None) -> tuple[dict[str, AuditVerdict], dict[str, Tensor]]:
    """Saliency, Integrated Gradients and each explainer of ``check``, audited on ``check.region``.

    Returns:
        ``({explanation: verdict}, {explanation: maps})``.
    """
    kwargs = {"steps": steps} if steps is not None else None
    maps = compare_attributions(check.classifier, check.x, check.target_class, dict(check.explainers),
                                explainer_kwargs=kwargs)
    return audit_maps(maps, check.x, check.target_class, check.region), maps


def audit(
    classifier: Callable[[Tensor], Tensor],
    train: tuple[Tensor, Tensor],
    x: Tensor,
    target: TargetType,
    explainers: Mapping[str, Any],
    out_dir: str | Path,
    *,
    steps: Optional[int] = None,
    nll_fn: Optional[Callable[[Tensor], Tensor]] = None,
    on_manifold_fn: Optional[Callable[[CounterfactualResult], Tensor]] = None,
    quality: Optional[Mapping[str, float]] = None,
    clever_hans: Sequence[CleverHansCheck] = (),
    summary: Optional[Mapping[str, Any]] = None,
    class_names: Optional[Sequence[str]] = None,
    title: str = "xcf audit",
    results: Optional[Mapping[str, CounterfactualResult]] = None,
    progress: bool = False,
) -> AuditOutcome:
    """Explain ``x`` toward ``target`` with every explainer, validate, and write the report.

    Args:
        classifier: the audited classifier (logits).
        train: ``(x_train, y_train)``, the classifier's training data: the SVM and k-NN validators are
            fitted on it.
        x: ``(N, ...)`` inputs to explain.
        target: class per input.
        explainers: ``{method name: explainer}`` with ``counterfactual(x, target=..., steps=...)``.
        out_dir: where ``report.html``, ``summary.json``, ``metrics.csv`` and ``figures/`` go.
        steps: step budget per counterfactual (default: each explainer's own).
        nll_fn: per-sample negative log-likelihood in nats (realism in bits/dim), e.g. from a flow.
        on_manifold_fn: per-sample on-manifold share of ``x' - x`` (see :mod:`xcf.geometry`).
        quality: generator quality numbers to report (e.g. Fréchet distances).
        clever_hans: shortcut checks to run and report.
        summary: extra plain values for the data and model summary.
        class_names: names of the classes for the figures.
        title: the report's title.
        results: ready results to use instead of running ``explainers`` (same keys).
        progress: progress bars.

    Returns:
        An :class:`AuditOutcome`.
    """
    out = check_writable(out_dir)
    x_train, y_train = train
    tgt = as_target_tensor(target, x.shape[0], x.device)
    if results is None:
        results = {}
        for name, explainer in explainers.items():
            kw = {} if steps is None else {"steps": steps}
            results[name] = explainer.counterfactual(x, tgt, progress=progress, **kw)
    results = dict(results)

    svm = SVMValidator().fit(x_train, y_train)
    knn = KNNValidator().fit(x_train, y_train)
    table = compare(results, classifier, svm=svm, knn=knn, nll_fn=nll_fn, train=(x_train, y_train),
                    on_manifold_fn=on_manifold_fn)
    checked = {check.name: clever_hans_check(check, steps) for check in clever_hans}
    verdicts = {name: v for name, (v, _) in checked.items()}

    report = Report(title)
    report.section("Data and models")
    info = {"inputs explained": x.shape[0], "input shape": tuple(x.shape[1:]),
            "training examples": x_train.shape[0], **dict(summary or {})}
    report.table([{"item": k, "value": v} for k, v in info.items()], ["item", "value"])
    if quality:
        report.section("Generator quality")
        report.text("Fréchet distance between real and generated samples in the audited classifier's "
                    "penultimate-layer features (lower is closer to the data; the real-vs-real floor "
                    "shows the sampling noise).")
        report.table([{"model": k, "Fréchet distance": v} for k, v in quality.items()])
    report.section("Counterfactuals side by side")
    report.text("Green titles: the search reached the target with the required confidence; red: it failed. "
                "Difference maps x' − x share one colour scale (red: brighter, blue: darker).")
    report.figure("comparison", comparison_grid(results, classifier, n=8, class_names=class_names),
                  "the same inputs and targets, every method")
    for name, r in results.items():
        report.figure(f"grid_{name}", method_grid(r, classifier, n=6, class_names=class_names, title=name),
                      f"{name}: input, reconstruction, counterfactual, difference")
    report.section("Metrics")
    report.text("validity: the audited classifier predicts the target at x'; svm_transfer: an RBF SVM "
                "fitted on the training data agrees; knn_agreement: share of the 10 nearest training "
                "examples with the target label; l1/l2: size of x' − x; sparsity: share of entries changed "
                "by more than 0.01; realism_bpd: flow bits per dimension of x' (lower is more realistic); "
                "on_manifold: share of ||x' − x||² in the generator's tangent space at x.")
    report.table([{"method": m, **row} for m, row in table.to_dict().items()])
    report.section("Mean difference maps per target class")
    report.figure("mean_maps", mean_map_figure({n: mean_map_per_target(r) for n, r in results.items()}), "mean x' − x of all inputs sent to each class")
    if verdicts:
        report.section("Clever-Hans check")
        for check in clever_hans:
            for method, v in verdicts[check.name].items():
                report.verdict(f"{check.name} / {method}: {'FLAGGED' if v.flagged else 'not flagged'} — "
                               f"{v.explanation}", v.flagged)
            report.table([{"explanation": m, "median localisation": v.median, "chance": v.baseline,
                           "lift": v.lift, "threshold": v.threshold, "flagged": v.flagged}
                          for m, v in verdicts[check.name].items()])
            maps = checked[check.name][1]
            report.figure(f"clever_hans_{check.name}", plot_map_grid(check.x[:6], maps, n=6),
                          f"{check.name}: explanations toward class {check.target_class} of inputs of other classes "
                          "(the suspected region is where a shortcut would show)")
    path = report.write(out)

    plain = {
        "metrics": table.to_dict(),
        "quality": dict(quality or {}),
        "clever_hans": {c: {m: v.to_dict() for m, v in vs.items()} for c, vs in verdicts.items()},
        **{k: v for k, v in info.items() if isinstance(v, (int, float, str, bool))},
    }
    (out / "summary.json").write_text(json.dumps(plain, indent=2, default=str))
    table.to_csv(str(out / "metrics.csv"))
    return AuditOutcome(results, table, verdicts, path, plain)
