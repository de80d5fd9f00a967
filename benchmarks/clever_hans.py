"""The numbers of docs/clever-hans.md: Clever-Hans audits with generators fitted on the classifier's own data.

    python benchmarks/clever_hans.py watermark --data digits|mnist   # localisation table, off-region change
    python benchmarks/clever_hans.py positions                       # hotspots of watermarks planted elsewhere
    python benchmarks/clever_hans.py colour --data digits|mnist      # colour-vs-shape shares

The default scenario's models are the shipped references (``xcf.models.reference``); a watermark planted
elsewhere trains the same table configurations on its data (cached under ``--cache``); the checks are
:func:`xcf.apps.audit.clever_hans_check`, the one the demo's report runs.  Prints Markdown tables and writes
them as JSON to ``--out``.  One CPU thread unless ``--threads`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from xcf.apps.audit import CleverHansCheck, clever_hans_check
from xcf.apps.methods import clever_hans_explainers
from xcf.datasets import balanced_order, load_digits, load_mnist
from xcf.datasets.watermark import region_mask
from xcf.datasets.scenarios import WATERMARKS, watermarked
from xcf.models import cached_model, get_kind, reference
from xcf.models.shipped import reference_entry

#: where ``positions`` plants the 8x8 digits' watermark (top-left corners) and how large
POSITIONS = [(0, 0), (6, 0), (6, 6), (3, 0), (0, 6)]
SIZES = [1, 2]


def _others(data: str, k: int, n: int = 40) -> torch.Tensor:
    x, y = (load_digits if data == "digits" else load_mnist)("test")
    order = balanced_order(y)
    x, y = x[order], y[order]
    return x[y != k][:n]


def watermark_models(data: str, cache: str, watermark: dict | None = None) -> dict:
    """The scenario's shortcut classifier, flow and VAE: the shipped ones, or for another watermark the same table
    configurations trained on the data it marks (cached)."""
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

        def train(model, kind=kind, entry=entry):
            return {**kind.train(model, entry.config, x, y, x_test, y_test, None, False), "trained_on": f"{w}"}

        models[role] = cached_model(f"{data}-watermark-{name}-moved", {**entry.config, "watermark": w},
                                    lambda _, kind=kind, entry=entry: kind.build(entry.config), train, directory=cache)
    return models


def _checks(data: str, cache: str, watermark: dict | None = None, vae: bool = True) -> tuple[list, dict]:
    models = watermark_models(data, cache, watermark=watermark)
    w = {**WATERMARKS[data], **(watermark or {})}
    clean = reference(f"{data}-classifier")[0]
    k = w["target_class"]
    others = _others(data, k)
    region = region_mask(others.shape[1:], tuple(w["position"]), (w["size"], w["size"]))
    gen = {"flow": models["flow"][0], "vae": models["vae"][0] if vae else None}
    checks = [CleverHansCheck(name, clf, clever_hans_explainers(clf, **gen), others, k, region)
              for name, clf in (("shortcut", models["shortcut"][0]), ("clean", clean))]
    return checks, models


def watermark(data: str, cache: str) -> list[dict]:
    checks, models = _checks(data, cache)
    rows = []
    for check in checks:
        verdicts, _, spots = clever_hans_check(check)
        for method, v in verdicts.items():
            if method in ("saliency", "integrated_gradients"):
                continue
            top = spots[method][0] if spots[method] else None
            rows.append({"classifier": check.name, "method": method,
                         "median localisation": v.median, "lift (x chance)": v.lift, "flagged": v.flagged,
                         "off-region change per pixel": v.off_region,
                         "hotspot": f"{top.box} {top.share:.2f}" if top else "none"})
    print(f"{data}: region area share {checks[0].region.float().mean():.4f}; shortcut test accuracy (clean test) "
          f"{models['shortcut'][1].get('test_accuracy')}; flow {models['flow'][1].get('test_bits_per_dim'):.3f} bits/dim")
    return rows


def positions(cache: str) -> list[dict]:
    rows = []
    for size in SIZES:
        for position in POSITIONS:
            w = {"size": size, "position": list(position)}
            checks, _ = _checks("digits", cache, w, vae=False)
            for check in checks:
                verdicts, _, spots = clever_hans_check(check)
                found = spots["diffeomorphic"]
                planted = (position[0], position[1], position[0] + size, position[1] + size)
                rows.append({"size": size, "planted at": planted, "classifier": check.name,
                             "diffeomorphic localisation": verdicts["diffeomorphic"].median,
                             "lift": verdicts["diffeomorphic"].lift,
                             "top hotspot": found[0].box if found else "none",
                             "its share": found[0].share if found else None,
                             "exact": bool(found) and found[0].box == planted,
                             "pixel (L2) hotspot": spots["pixel (L2 steps)"][0].box if spots["pixel (L2 steps)"]
                             else "none"})
                print(rows[-1], flush=True)
    return rows


def colour(data: str, cache: str, out: Path) -> list[dict]:
    from xcf.apps.colour import run_colour_demo

    s = run_colour_demo(out / f"colour-{data}", f"coloured-{data}", cache_dir=cache, progress=False)
    return [{"classifier": c, "test accuracy (random colours)": v["test_accuracy_random_colours"], "method": m,
             "success": r["success_rate"], "colour share": r["colour"], "q25": r["q25"], "q75": r["q75"]}
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
    rows = {"watermark": lambda: watermark(a.data, a.cache), "positions": lambda: positions(a.cache),
            "colour": lambda: colour(a.data, a.cache, out)}[a.part]()
    print(_markdown(rows))
    print(f"{time.perf_counter() - t0:.0f} s, {torch.get_num_threads()} thread(s)")
    name = f"clever_hans_{a.part}" + ("" if a.part == "positions" else f"_{a.data}")
    (out / f"{name}.json").write_text(json.dumps(rows, indent=2, default=str))


if __name__ == "__main__":
    main()
