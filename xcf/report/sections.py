"""The sections of the one audit report: each renders numbers and results it is given, computes nothing.

:func:`audit_report` assembles them in a fixed order; :func:`xcf.apps.audit.audit` is its only caller in
xcf.  Every section takes plain values, tables or results, so a report can be re-rendered from a store
without running anything again.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

from torch import Tensor

from xcf.evaluate.metrics import MetricsTable
from xcf.report.figures import comparison_grid, mean_map_figure, method_grid
from xcf.report.html import Report
from xcf.report.maps import plot_map_grid
from xcf.result import CounterfactualResult

__all__ = ["CleverHansSection", "audit_report"]

_HOTSPOTS_TEXT = (
    "Hotspots, found without being told where to look: compact regions (at most 10% of the image) of a class's "
    "mean change that carry at least 15% of it and lie mostly off the pixels the audited inputs draw their "
    "objects on. Every counterfactual painting the same small patch toward a class, off the objects, is what a "
    "shortcut such as a watermark looks like (xcf.evaluate.hotspots)."
)

_CLEVER_HANS_TEXT = (
    "Counterfactuals toward the suspected class, of inputs of other classes. localisation: share of |x' − x| in "
    "the suspected region (chance: its area share); off-region change: the mean |x' − x| per pixel outside it, "
    "the noise a person looks through; hotspot: the top region found in the mean map without the region "
    "(rows..columns, share of the change), as xcf.evaluate.hotspots finds it."
)


def _rows_columns(box: Sequence[int]) -> tuple[str, str]:
    """A hotspot's ``(top, left, bottom, right)`` box (bottom, right exclusive) as inclusive row and column ranges."""
    return f"{box[0]}..{box[2] - 1}", f"{box[1]}..{box[3] - 1}"


def _spot_text(spots: Sequence[Any]) -> str:
    if not spots:
        return "none"
    rows, columns = _rows_columns(spots[0].box)
    return f"rows {rows}, columns {columns}: {spots[0].share:.0%} of the change"


_METRICS_TEXT = (
    "Means over every input (n). success: the search reached the target with the stopping confidence "
    "within the step budget; validity: the audited classifier predicts the target at x'; svm_transfer: an "
    "RBF SVM fitted on the training data agrees; knn_agreement: share of the 10 nearest training examples "
    "with the target label; l1/l2: size of x' − x; sparsity: share of entries changed by more than 0.01; "
    "out_of_range(_pixels): share of counterfactuals (of pixels) outside the data range; realism_bpd: bits "
    "per dimension of x' under the realism judge (lower is more realistic); on_manifold: share of "
    "||x' − x||² in the generator's tangent space at x; reconstruction_error: RMS of g(z0) − x, where the "
    "search started (0 for exact charts); poor_reconstruction: share of inputs whose reconstruction misses them "
    "(RMS above the generator's threshold, 0.15): their counterfactuals explain g(z0), not the input; score: the "
    "target's probability at x'."
)


class CleverHansSection:
    """What one Clever-Hans check found, ready to render.

    Args:
        name: the audited classifier's name.
        target_class: the suspected class.
        verdicts: ``{explanation: AuditVerdict}``.
        inputs: the inputs explained (a few are drawn).
        maps: ``{explanation: maps}`` with the inputs' shape.
        hotspots: ``{explanation: [Hotspot, ...]}`` found in the mean map toward the class without the region.
        fitted_on: ``{generative model: the data it was fitted on}``.
    """

    def __init__(self, name: str, target_class: int, verdicts: Mapping[str, Any], inputs: Tensor,
                 maps: Mapping[str, Tensor], hotspots: Optional[Mapping[str, Sequence[Any]]] = None,
                 fitted_on: Optional[Mapping[str, str]] = None):
        self.name, self.target_class, self.verdicts, self.inputs, self.maps = (
            name, target_class, dict(verdicts), inputs, dict(maps))
        self.hotspots, self.fitted_on = dict(hotspots or {}), dict(fitted_on or {})


def audit_report(
    title: str,
    info: Mapping[str, Any],
    table: MetricsTable,
    first: Mapping[str, CounterfactualResult],
    mean_maps: Mapping[str, Mapping[int, Tensor]],
    *,
    classifier: Optional[Callable[[Tensor], Tensor]] = None,
    class_names: Optional[Sequence[str]] = None,
    quality: Optional[Mapping[str, float]] = None,
    timing: Optional[Mapping[str, Any]] = None,
    non_finite: Optional[Mapping[str, Mapping[str, int]]] = None,
    clever_hans: Sequence[CleverHansSection] = (),
    realism: Optional[Mapping[str, Mapping[str, float]]] = None,
    figures: Sequence[tuple[str, Any, str]] = (),
    hotspots: Optional[Mapping[str, Mapping[int, Sequence[Any]]]] = None,
) -> Report:
    """The audit report: data and models, generator quality, counterfactuals, metrics, maps, Clever-Hans.

    Args:
        title: the report's title.
        info: ``{item: value}`` rows of the data-and-models table.
        table: metric means per method.
        first: ``{method: result}`` of the inputs to draw (the first batch).
        mean_maps: ``{method: {target class: mean x' − x}}``.
        classifier: the audited classifier (to label the drawn inputs with its predictions).
        class_names: names of the classes for the figures.
        quality: generator quality numbers (Fréchet distances).
        timing: throughput of the run (see :class:`xcf.scale.summary.StoreSummary`).
        non_finite: ``{method: {metric: count}}`` of values left out of the means.
        clever_hans: the Clever-Hans checks to show.
        realism: ``{method: {judge: value}}``: realism of each method's whole counterfactual set, by judges
            that took no part in the search (e.g. a Fréchet distance to real images).
        figures: extra ``(name, figure, caption)`` to show after the side-by-side grids.
        hotspots: ``{method: {class: [Hotspot, ...]}}`` (:func:`xcf.evaluate.hotspots.hotspots_of_maps`), outlined
            on the mean maps and listed.

    Returns:
        A :class:`~xcf.report.html.Report` (call ``write(out_dir)``).
    """
    report = Report(title)
    report.section("Data and models")
    report.table([{"item": k, "value": v} for k, v in info.items()], ["item", "value"])
    if quality:
        report.section("Generator quality")
        report.text("Fréchet distance between real and generated samples in the feature space each row "
                    "names (lower is closer to the data; the real-vs-real floor shows the sampling noise).")
        report.table([{"model": k, "Fréchet distance": v} for k, v in quality.items()])
    report.section("Counterfactuals side by side")
    report.text("Green titles: the search reached the target with the required confidence; red: it failed. "
                "Difference maps x' − x share one colour scale (red: brighter, blue: darker).")
    report.figure("comparison", comparison_grid(dict(first), classifier, n=8, class_names=class_names),
                  "the same inputs and targets, every method")
    for name, r in first.items():
        report.figure(f"grid {name}", method_grid(r, classifier, n=6, class_names=class_names, title=name),
                      f"{name}: input, reconstruction, counterfactual, difference")
    for name, fig, caption in figures:
        report.figure(name, fig, caption)
    report.section("Metrics")
    report.text(_METRICS_TEXT)
    report.table([{"method": m, **{k: v for k, v in row.items() if k != "nonfinite"}}
                  for m, row in table.to_dict().items()])
    poor = {m: row["poor_reconstruction"] for m, row in table.to_dict().items()
            if isinstance(row.get("poor_reconstruction"), float) and row["poor_reconstruction"] > 0}
    if poor:
        report.text("Reconstruction misses the input: " + "; ".join(
            f"{m}: {share:.1%} of the inputs (their counterfactuals explain the generator's reconstruction g(z0), "
            "not the input; see the per-image rms in the grids above)" for m, share in poor.items()))
    if non_finite:
        report.text("Values that were NaN or infinite and are left out of the means above: " + "; ".join(
            f"{m}: " + ", ".join(f"{k} {c}" for k, c in counts.items()) for m, counts in non_finite.items()))
    if realism:
        report.section("Realism of each method's counterfactuals")
        report.text("Judged on the whole set of counterfactuals of each method by models that took no part "
                    "in the search; pixels outside the data range are clamped before scoring.")
        report.table([{"method": m, **row} for m, row in realism.items()])
    if timing:
        report.section("Throughput")
        report.text(f"This run: {timing['images']} images computed by {timing['processes']} process(es) in "
                    f"{timing['wall_s']:.1f} s, {timing['images_per_s']:.2f} images/s. Share of the batch loop "
                    "per phase, summed over processes:")
        report.table([{"phase": k, "share": v} for k, v in timing["shares"].items()], ["phase", "share"])
    report.section("Mean difference maps per target class")
    boxes = {m: {k: [s.box for s in spots] for k, spots in per.items()} for m, per in (hotspots or {}).items()}
    report.figure("mean maps", mean_map_figure(dict(mean_maps), class_names, boxes),
                  "mean x' − x of all inputs sent to each class; green: hotspots")
    if hotspots is not None:
        report.text(_HOTSPOTS_TEXT)
        rows = [{"method": m, "target": class_names[k] if class_names else k,
                 **dict(zip(("rows", "columns"), _rows_columns(s.box))), "share of the change": s.share,
                 "area share": s.area, "concentration": s.concentration, "off the objects": s.off_object}
                for m, per in hotspots.items() for k, spots in per.items() for s in spots]
        if rows:
            report.table(rows)
        else:
            report.text("No hotspot: no method's mean change toward any class has such a region.")
    if clever_hans:
        report.section("Clever-Hans check")
        report.text(_CLEVER_HANS_TEXT)
    for check in clever_hans:
        if check.fitted_on:
            report.text(f"{check.name}: " + "; ".join(f"the {m} was fitted on {d}" for m, d in check.fitted_on.items()))
        for method, v in check.verdicts.items():
            report.verdict(f"{check.name} / {method}: {'FLAGGED' if v.flagged else 'not flagged'} — "
                           f"{v.explanation}", v.flagged)
        report.table([{"explanation": m, "median localisation": v.median, "chance": v.baseline,
                       "lift": v.lift, "threshold": v.threshold, "off-region change per pixel": v.off_region,
                       "flagged": v.flagged, "hotspot (no region given)": _spot_text(check.hotspots.get(m, []))}
                      for m, v in check.verdicts.items()])
        grid = {m: v for m, v in check.maps.items() if m not in ("saliency", "integrated_gradients")} or check.maps
        report.figure(f"clever hans {check.name}", plot_map_grid(check.inputs[:6], grid, n=6, scale="row"),
                      f"{check.name}: counterfactual changes x' − x toward class {check.target_class} of inputs of "
                      "other classes, one colour scale per row (the same units for every method)")
    return report
