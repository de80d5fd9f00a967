"""``xcf demo --data coloured-mnist`` (or ``coloured-digits``): the colour-shortcut audit.

Training digits are painted in their class's colour with probability 0.99 (``TRAIN_FOLLOW``); test digits in random colours
(:func:`xcf.datasets.colour.load_coloured`).  A *colour* classifier trained on the former learns the colour;
a *shape* classifier, trained on the same digits in random colours, learns the strokes.  Both are explained
toward ``(y + 3) mod 10`` with diffeomorphic counterfactuals in a 3-channel flow fitted on the colour-following
training set, and with steepest-descent pixel counterfactuals for comparison.  The audit's number is the
*colour share* of each change (:func:`xcf.evaluate.colour.colour_share`): the part of ``|x' - x|^2`` that turns
the pixels' hue rather than their brightness.  The report shows the counterfactuals in colour.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

from xcf.apps.methods import CLEVER_HANS_CONFIDENCE, clever_hans_explainers, reference_model
from xcf.datasets import balanced_order
from xcf.datasets.colour import COLOUR_NAMES, TRAIN_FOLLOW, load_coloured
from xcf.evaluate.causal import colour_effect
from xcf.evaluate.colour import colour_audit
from xcf.models.classifier import accuracy
from xcf.report.figures import rows_grid, save_figure
from xcf.report.html import Report, check_writable

__all__ = ["COLOUR_DATA", "run_colour_demo"]

#: ``xcf demo --data`` names of the colour scenario, and the grey data each paints
COLOUR_DATA = {"coloured-digits": "digits", "coloured-mnist": "mnist"}

_EFFECT_TEXT = (
    "Each counterfactual's change split in two and applied alone (xcf.evaluate.causal.colour_effect): the input "
    "recoloured as its counterfactual with its own brightness (colour flip: share then classified as the target), "
    "and the counterfactual's brightness drawn in the input's colour (shape flip). Control: the same part taken from "
    "the counterfactual of another input, sent to another class. A classifier reads colour (shape) when the "
    "bootstrap interval of flip minus control lies above zero (95%)."
)


def _interval(ci: Any) -> str:
    return f"[{ci[0]:+.2f}, {ci[1]:+.2f}]"


_TEXT = (
    "Colour share: the part of |x' − x|² that changes a pixel's colour (its hue turns at the same brightness) "
    "rather than its brightness in its own colour (a stroke drawn, thickened or erased); the median over "
    "successful counterfactuals (xcf.evaluate.colour). A classifier that learnt the colour shortcut is reached "
    "by repainting the digit; one that learnt shapes by redrawing it (share near 0). Colour-driven: a median of "
    "at least 0.2 (xcf.evaluate.colour.COLOUR_THRESHOLD)."
)


def run_colour_demo(out_dir: str | Path = "xcf-out", data: str = "coloured-mnist", *,
                    cache_dir: Optional[str | Path] = None, n: Optional[int] = None, steps: int = 1000,
                    seed: int = 0, progress: bool = True, quick: bool = False, retrain: bool = False) -> dict[str, Any]:
    """Run the colour-shortcut audit; write ``report.html``, ``metrics.json`` and figures to ``out_dir``.

    Args:
        out_dir: where outputs go (created).
        data: ``"coloured-mnist"`` (28x28) or ``"coloured-digits"`` (8x8, fast).
        cache_dir: the model cache.
        n: test images to explain (default 100).
        steps: step budget per counterfactual.
        seed: seed of the inversions and searches.
        progress: progress bars while training.
        quick: tiny models trained into the cache instead of the shipped weights (a smoke test; numbers
            meaningless).
        retrain: train the scenario's reference models again into the cache instead of the shipped weights.

    Returns:
        The metrics written to ``metrics.json``: per classifier its test accuracy in random colours and, per
        method, the success rate and the colour share (median and quartiles).
    """
    if data not in COLOUR_DATA:
        raise ValueError(f"data must be one of {list(COLOUR_DATA)}, got {data!r}")
    t0 = time.perf_counter()
    out = check_writable(out_dir)
    grey = COLOUR_DATA[data]
    x_test, y_test, _ = load_coloured(grey, "test")
    n = 100 if n is None else n
    if not 1 <= n <= x_test.shape[0]:
        raise ValueError(f"n must be in [1, {x_test.shape[0]}] for the {data} test split, got {n}")
    models = {role: reference_model(f"{grey}-{name}", quick=quick, retrain=retrain, cache_dir=cache_dir,
                                    progress=progress)
              for role, name in (("colour", "colour-classifier"), ("shape", "colour-shape-classifier"),
                                 ("flow", "colour-flow"))}
    flow, flow_metrics = models["flow"]
    order = balanced_order(y_test)
    x, y = x_test[order][:n], y_test[order][:n]
    target = (y + 3) % 10
    summary: dict[str, Any] = {"data": data, "n": n, "targets": "(y + 3) mod 10", "confidence": CLEVER_HANS_CONFIDENCE,
                               "flow_trained_on": flow_metrics["trained_on"],
                               "flow_test_bits_per_dim": flow_metrics.get("test_bits_per_dim"), "classifiers": {}}
    report = Report(f"xcf colour-shortcut audit — {data}")
    report.section("Data and models")
    report.text(f"Training digits take their class's colour with probability {TRAIN_FOLLOW:g} ({', '.join(COLOUR_NAMES)} for "
                "0 to 9), test digits a random one. Test accuracies below are on test digits in random colours.")
    rows, results = [], {}
    for name in ("colour", "shape"):
        clf, metrics = models[name]
        summary["classifiers"][name] = {"trained_on": metrics["trained_on"], "test_accuracy_random_colours":
                                        accuracy(clf, x_test, y_test), "methods": {}}
        rows.append({"model": f"{name} classifier", "trained on": metrics["trained_on"],
                     "test accuracy (random colours)": summary["classifiers"][name]["test_accuracy_random_colours"]})
        for method, explainer in clever_hans_explainers(clf, flow=flow, seed=seed).items():
            r = explainer.counterfactual(x, target, steps=steps)
            v = colour_audit(r, method=method)
            effect = colour_effect(clf, r.inputs, r.counterfactual, r.target, seed=seed)
            results[f"{method}, {name} classifier"] = r
            summary["classifiers"][name]["methods"][method] = {"success_rate": r.success_rate, **v.to_dict(),
                                                               "effect": effect.to_dict()}
    rows.append({"model": "flow (diffeomorphic)", "trained on": flow_metrics["trained_on"],
                 "test bits/dim": flow_metrics.get("test_bits_per_dim")})
    report.table(rows, ["model", "trained on", "test accuracy (random colours)", "test bits/dim"])
    report.section("Colour or shape? Verified by effect")
    report.text(_EFFECT_TEXT)
    for c, s in summary["classifiers"].items():
        for m, v in s["methods"].items():
            if m == "diffeomorphic":
                report.verdict(f"{c} classifier / {m}: {v['effect']['explanation']}", v["effect"]["reads_colour"])
    report.table([{"classifier": c, "explanation": m, "success": v["success_rate"],
                   "colour flip": v["effect"]["colour_flip"], "colour control": v["effect"]["colour_control"],
                   "colour interval": _interval(v["effect"]["colour_interval"]),
                   "shape flip": v["effect"]["shape_flip"], "shape control": v["effect"]["shape_control"],
                   "shape interval": _interval(v["effect"]["shape_interval"]), "reads": v["effect"]["reads"]}
                  for c, s in summary["classifiers"].items() for m, v in s["methods"].items()])
    report.section("Where the change is: colour share")
    report.text(_TEXT)
    report.table([{"classifier": c, "explanation": m, "colour share (median)": v["colour"],
                   "q25": v["q25"], "q75": v["q75"], "share rule": "repaints (colour)" if v["colour_driven"] else
                   "redraws (shape)"} for c, s in summary["classifiers"].items() for m, v in s["methods"].items()])
    diffeo = {k: r for k, r in results.items() if k.startswith("diffeomorphic")}
    fig = rows_grid(diffeo, n=8, title=f"{data}: diffeomorphic counterfactuals toward (y + 3) mod 10")
    save_figure(fig, out / "figure_colour", formats=("png", "pdf"))
    report.figure("colour counterfactuals", fig, "the first eight test digits (random colours); per classifier "
                  "the counterfactuals (green title: reached the target) and x' − x in colour (grey: no change)")
    report.write(out)
    summary["wall_time_s"] = time.perf_counter() - t0
    (out / "metrics.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
