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
    "Hotspots, found without being told where to look and verified by their effect (xcf.evaluate.causal): "
    "candidate regions (at most 10% of the image) are cut from each class's mean change; the counterfactuals' "
    "change inside a candidate is pasted alone into the inputs. sufficiency: the share of the counterfactuals' "
    "gain in log-probability of the class that this reaches; control: the same for the same shape placed where "
    "the change is largest elsewhere; effect: their difference with its bootstrap interval (corrected for the "
    "number of candidates). A region is verified when the interval clears 0.1 and the sufficiency is at least "
    "twice the control's; a verified region with at least half of its change off the objects (where the "
    "inputs are dark) is a hotspot, a suspected shortcut such as a watermark. Ranked by effect per unit area."
)

_CLEVER_HANS_TEXT = (
    "Counterfactuals toward the suspected class, of inputs of other classes. Verdicts by effect "
    "(xcf.evaluate.causal): the counterfactuals' change inside the suspected region, pasted alone into the inputs, "
    "must reach clearly more of their gain toward the class (sufficiency) than the same shape where the change is "
    "largest elsewhere (control); flip: share of pasted inputs then classified as the class; necessity: share of "
    "the gain lost when the region's change is taken out of x'. Saliency and Integrated Gradients have no "
    "counterfactual to paste and are shown by localisation only: share of |map| in the region (chance: its area "
    "share). verified hotspot: the top region found without being told the region."
)


def _rows_columns(box: Sequence[int]) -> tuple[str, str]:
    """A hotspot's ``(top, left, bottom, right)`` box (bottom, right exclusive) as inclusive row and column ranges."""
    return f"{box[0]}..{box[2] - 1}", f"{box[1]}..{box[3] - 1}"


def _spot_text(scan: Any) -> str:
    if scan is None:
        return "—"
    if not scan.hotspots:
        return "none verified"
    h = scan.hotspots[0]
    rows, columns = _rows_columns(h.box)
    return f"rows {rows}, columns {columns}: effect {h.effect:+.2f} (control {h.control:.2f})"


def _effect_row(e: Any) -> dict[str, Any]:
    """The columns of a verified region."""
    return {"sufficiency": e.sufficiency, "control": e.control, "effect": e.effect,
            "interval": f"[{e.interval[0]:+.2f}, {e.interval[1]:+.2f}]", "lift (low end)": e.lift_low,
            "flip": e.flip_rate, "necessity": e.necessity}


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
        hotspots: ``{counterfactual method: RegionScan}`` toward the class, found without the region and verified
            (:func:`xcf.evaluate.causal.verify_hotspots`).
        fitted_on: ``{generative model: the data it was fitted on}``.
    """

    def __init__(self, name: str, target_class: int, verdicts: Mapping[str, Any], inputs: Tensor,
                 maps: Mapping[str, Tensor], hotspots: Optional[Mapping[str, Any]] = None,
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
    hotspots: Optional[Mapping[str, Mapping[int, Any]]] = None,
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
        hotspots: ``{method: {class: RegionScan}}`` (:func:`xcf.evaluate.causal.verify_hotspots`): verified
            hotspots are outlined on the mean maps and listed.

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
    boxes = {m: {k: [h.box for h in scan.hotspots] for k, scan in per.items()} for m, per in (hotspots or {}).items()}
    report.figure("mean maps", mean_map_figure(dict(mean_maps), class_names, boxes),
                  "mean x' − x of all inputs sent to each class; green: verified hotspots")
    if hotspots is not None:
        report.text(_HOTSPOTS_TEXT)
        name = (lambda k: class_names[k]) if class_names else (lambda k: k)  # noqa: E731
        rows = [{"method": m, "target": name(k), **dict(zip(("rows", "columns"), _rows_columns(h.box))),
                 "area share": h.area, **_effect_row(h), "effect per area": h.concentration, "inputs": h.n}
                for m, per in hotspots.items() for k, scan in per.items() for h in scan.hotspots]
        if rows:
            report.table(rows)
        else:
            report.text("No verified hotspot: no candidate region off the objects, in any method's mean change toward "
                        "any class, moves the classifier clearly more than the same shape elsewhere.")
        cues = [{"method": m, "target": name(k), **dict(zip(("rows", "columns"), _rows_columns(c.box))),
                 "area share": c.area, **_effect_row(c), "off the objects": c.off_object}
                for m, per in hotspots.items() for k, scan in per.items() for c in scan.cues]
        if cues:
            report.text("Verified cues on the objects: regions the classifier relies on that lie where the inputs draw "
                        "their objects (a stroke it needs drawn or erased). They are how it reads the class, not a "
                        "shortcut beside the objects; a shortcut on the objects themselves (a texture) would look alike.")
            report.table(cues)
        strongest = [(m, k, scan.best) for m, per in hotspots.items() for k, scan in per.items()
                     if scan.best is not None and not scan.hotspots]
        if strongest:
            m, k, b = max(strongest, key=lambda t: t[2].lift_low)
            report.text(f"The strongest candidate that was not verified: {m}, class {name(k)}, rows "
                        f"{_rows_columns(b.box)[0]}, columns {_rows_columns(b.box)[1]}: sufficiency "
                        f"{b.sufficiency:.2f} against {b.control:.2f} for the control, lift at the interval's low end "
                        f"{b.lift_low:.1f}x.")
    if clever_hans:
        report.section("Clever-Hans check")
        report.text(_CLEVER_HANS_TEXT)
    for check in clever_hans:
        if check.fitted_on:
            report.text(f"{check.name}: " + "; ".join(f"the {m} was fitted on {d}" for m, d in check.fitted_on.items()))
        for method, v in check.verdicts.items():
            if v.verification is not None:
                report.verdict(f"{check.name} / {method}: {'RELIES ON THE REGION' if v.flagged else 'does not rely'} "
                               f"— {v.verification.explanation}", v.flagged)
        report.table([{"explanation": m, "judged by": v.rule, "flagged": v.flagged,
                       **(_effect_row(v.verification) if v.verification is not None else {}),
                       "median localisation": v.median, "chance": v.baseline,
                       "verified hotspot (no region given)": _spot_text(check.hotspots.get(m))}
                      for m, v in check.verdicts.items()])
        grid = {m: v for m, v in check.maps.items() if m not in ("saliency", "integrated_gradients")} or check.maps
        report.figure(f"clever hans {check.name}", plot_map_grid(check.inputs[:6], grid, n=6, scale="row"),
                      f"{check.name}: counterfactual changes x' − x toward class {check.target_class} of inputs of "
                      "other classes, one colour scale per row (the same units for every method)")
    return report
