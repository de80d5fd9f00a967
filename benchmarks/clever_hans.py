"""The numbers of docs/clever-hans.md: Clever-Hans audits with generators fitted on the classifier's own data.

    python benchmarks/clever_hans.py watermark --data digits|mnist   # the shipped scenario, verified by effect
    python benchmarks/clever_hans.py positions --data digits|mnist   # watermarks planted elsewhere: verdicts, hotspots
    python benchmarks/clever_hans.py colour --data digits|mnist      # colour or shape: flip rates of each part

The default scenario's models are the shipped references (``xcf.models.reference``); a watermark planted
elsewhere trains the same table configurations on its data (cached under ``--cache``); the checks are
:func:`xcf.apps.audit.clever_hans_check`, the one the demo's report runs.  Prints Markdown tables and writes
them as JSON to ``--out``.  One CPU thread unless ``--threads`` says otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from xcf.apps.audit import CleverHansCheck, clever_hans_check
from xcf.apps.methods import clever_hans_explainers
from xcf.datasets import balanced_order, load_digits, load_mnist
from xcf.datasets.watermark import apply_pattern, region_mask, square
from xcf.datasets.scenarios import WATERMARKS, watermarked
from xcf.models import cached_model, get_kind, reference
from xcf.models.shipped import reference_entry

#: where ``positions`` plants the watermark (top-left corner, size): a corner, beside the strokes, touching them,
#: on the 7's own bar, a single pixel; the first of each list is the shipped scenario
PLACEMENTS = {
    "digits": [((0, 0), 2), ((6, 0), 2), ((3, 0), 2), ((6, 6), 2), ((0, 6), 2), ((0, 0), 1), ((6, 6), 1)],
    "mnist": [((0, 0), 4), ((12, 24), 4), ((16, 6), 4), ((2, 25), 1)],
}
#: MNIST flows for moved watermarks train 40 epochs (the shipped table flow 120: 25 minutes on one thread)
MOVED_FLOW_EPOCHS = {"digits": None, "mnist": 40}


def _others(data: str, k: int, n: int = 40) -> torch.Tensor:
    x, y = (load_digits if data == "digits" else load_mnist)("test")
    order = balanced_order(y)
    x, y = x[order], y[order]
    return x[y != k][:n]


def watermark_models(data: str, cache: str, watermark: dict | None = None, flow_epochs: int | None = None) -> dict:
    """The scenario's shortcut classifier, flow and VAE: the shipped ones, or for another watermark the same table
    configurations trained on the data it marks (cached); ``flow_epochs`` shortens the flow's training (the
    MNIST table flow takes 25 minutes on one thread)."""
    names = {"shortcut": "classifier", "flow": "flow", "vae": "vae"}
    if watermark is None:
        return {role: reference(f"{data}-watermark-{name}") for role, name in names.items()}
    w = {**WATERMARKS[data], **watermark, "position": [int(v) for v in watermark.get("position", WATERMARKS[data]["position"])]}
    x, y, _ = watermarked(data, "train", w)
    x_test, y_test = (load_digits if data == "digits" else load_mnist)("test")
    models = {}
    for role, name in names.items():
        entry = reference_entry(f"{data}-watermark-{name}")
        kind = get_kind(entry.kind)
        if name == "flow" and flow_epochs is not None:
            entry = dataclasses.replace(entry, config={**entry.config, "train": {**entry.config["train"],
                                                                                  "epochs": int(flow_epochs)}})

        def train(model, kind=kind, entry=entry):
            return {**kind.train(model, entry.config, x, y, x_test, y_test, None, False), "trained_on": f"{w}"}

        models[role] = cached_model(f"{data}-watermark-{name}-moved", {**entry.config, "watermark": w},
                                    lambda _, kind=kind, entry=entry: kind.build(entry.config), train, directory=cache)
    return models


def _checks(data: str, cache: str, watermark: dict | None = None, n: int | None = None) -> tuple[list, dict]:
    n = (80 if data == "digits" else 40) if n is None else n  # as the demo
    models = watermark_models(data, cache, watermark=watermark,
                              flow_epochs=MOVED_FLOW_EPOCHS[data] if watermark is not None else None)
    w = {**WATERMARKS[data], **(watermark or {})}
    clean = reference(f"{data}-classifier")[0]
    k = w["target_class"]
    others = _others(data, k, n)
    x, y = (load_digits if data == "digits" else load_mnist)("test")
    region = region_mask(others.shape[1:], tuple(w["position"]), (w["size"], w["size"]))
    gen = {"flow": models["flow"][0], "vae": models["vae"][0]}
    checks = [CleverHansCheck(name, clf, clever_hans_explainers(clf, **gen), others, k, region,
                              reference=x[y == k][:n])
              for name, clf in (("shortcut", models["shortcut"][0]), ("clean", clean))]
    return checks, models


def iou(a, b) -> float:
    """Intersection over union of two ``(top, left, bottom, right)`` boxes."""
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    area = lambda q: (q[2] - q[0]) * (q[3] - q[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def reliance(classifier, x: torch.Tensor, planted, k: int) -> float:
    """The ground truth: share of ``x`` (other classes) classified as ``k`` once the watermark is stamped on."""
    size = planted[2] - planted[0]
    with torch.no_grad():
        return float((classifier(apply_pattern(x, square(size), planted[:2])).argmax(1) == k).float().mean())


def _rows(check, planted, verdicts, scans, extra: dict) -> list[dict]:
    extra = {**extra, "reliance (stamped)": reliance(check.classifier, check.x, planted, check.target_class)}
    rows = []
    for method, v in verdicts.items():
        if v.verification is None:  # saliency, Integrated Gradients: no counterfactual to paste
            continue
        e, scan = v.verification, scans[method]
        top = scan.hotspots[0] if scan.hotspots else None
        rows.append({**extra, "classifier": check.name, "method": method, "localisation": v.median,
                     "sufficiency": e.sufficiency, "control": e.control, "effect": e.effect,
                     "interval": f"[{e.interval[0]:+.2f}, {e.interval[1]:+.2f}]", "lift low": e.lift_low,
                     "flip": e.flip_rate, "relies": e.verified,
                     "top verified hotspot": top.box if top else "none",
                     "IoU": iou(top.box, planted) if top else None,
                     "hotspots": len(scan.hotspots),
                     "strongest candidate (lift low)": f"{scan.best.box} {scan.best.lift_low:.2f}" if scan.best else "none"})
    return rows


def watermark(data: str, cache: str) -> list[dict]:
    checks, models = _checks(data, cache)
    w = WATERMARKS[data]
    planted = (w["position"][0], w["position"][1], w["position"][0] + w["size"], w["position"][1] + w["size"])
    rows = []
    for check in checks:
        verdicts, _, scans = clever_hans_check(check)
        rows += _rows(check, planted, verdicts, scans, {})
    print(f"{data}: region area share {checks[0].region.float().mean():.4f}; shortcut test accuracy (clean test) "
          f"{models['shortcut'][1].get('test_accuracy')}; flow {models['flow'][1].get('test_bits_per_dim'):.3f} bits/dim")
    return rows


def positions(data: str, cache: str) -> list[dict]:
    rows = []
    for i, (position, size) in enumerate(PLACEMENTS[data]):
        shipped = i == 0
        w = None if shipped else {"size": size, "position": list(position)}
        checks, models = _checks(data, cache, w)
        planted = (position[0], position[1], position[0] + size, position[1] + size)
        extra = {"planted": planted, "flow bits/dim": models["flow"][1].get("test_bits_per_dim"),
                 "shortcut accuracy": models["shortcut"][1].get("test_accuracy")}
        for check in checks:
            verdicts, _, scans = clever_hans_check(check)
            rows += _rows(check, planted, verdicts, scans, extra)
            for r in rows[-3:]:
                print(r, flush=True)
    return rows


def colour(data: str, cache: str, out: Path) -> list[dict]:
    from xcf.apps.colour import run_colour_demo

    s = run_colour_demo(out / f"colour-{data}", f"coloured-{data}", cache_dir=cache, progress=False)
    return [{"classifier": c, "test accuracy (random colours)": v["test_accuracy_random_colours"], "method": m,
             "success": r["success_rate"], "colour flip": r["effect"]["colour_flip"],
             "colour control": r["effect"]["colour_control"],
             "colour interval": "[{:+.2f}, {:+.2f}]".format(*r["effect"]["colour_interval"]),
             "shape flip": r["effect"]["shape_flip"], "shape control": r["effect"]["shape_control"],
             "shape interval": "[{:+.2f}, {:+.2f}]".format(*r["effect"]["shape_interval"]),
             "reads": r["effect"]["reads"], "colour share": r["colour"]}
            for c, v in s["classifiers"].items() for m, r in v["methods"].items()]


def _markdown(rows: list[dict]) -> str:
    cols = list(rows[0])
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    return "\n".join(["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
                     + ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("part", choices=("watermark", "positions", "colour"))
    p.add_argument("--data", choices=("digits", "mnist"), default="digits")
    p.add_argument("--cache", default=None)
    p.add_argument("--out", default="benchmarks/out")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows = {"watermark": lambda: watermark(a.data, a.cache), "positions": lambda: positions(a.data, a.cache),
            "colour": lambda: colour(a.data, a.cache, out)}[a.part]()
    print(_markdown(rows))
    print(f"{time.perf_counter() - t0:.0f} s, {torch.get_num_threads()} thread(s)")
    name = f"clever_hans_{a.part}_{a.data}"
    (out / f"{name}.json").write_text(json.dumps(rows, indent=2, default=str))


if __name__ == "__main__":
    main()
