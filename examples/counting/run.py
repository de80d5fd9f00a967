"""Counterfactuals for a counting regressor: what would this image look like with more / fewer objects?

Makes a synthetic data set (16x16 images with 0-5 blobs), trains a small counting CNN (MSE) and a
RealNVP on the images (both cached in ``$XCF_CACHE`` or ``~/.cache/xcf``), then asks for two more and
two fewer objects -- ``ScalarTarget(c + 1.5, "increase")`` / ``ScalarTarget(c - 1.5, "decrease")`` on the
regressor -- in the flow's base space (diffeomorphic) and in pixel space.  Prints, per method and
direction, the success rate, the regressor's mean count before and after, the mean true count of the
10 nearest training images of the counterfactuals and the oracle blob count, and writes
``examples/figures/counting.png``.

Usage:
    python examples/counting/run.py [--quick] [--retrain] [--out examples/figures/counting.png]

A few minutes on one CPU thread the first time (mostly the flow's training); ``--quick`` takes seconds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the example's own module, beside this script

from counting import counting_figure, counting_models, run_counting_example  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny models and few images (seconds)")
    parser.add_argument("--retrain", action="store_true", help="ignore cached models")
    parser.add_argument("--cache-dir", default=None, help="model cache (default $XCF_CACHE or ~/.cache/xcf)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "figures" / "counting.png"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    setting = "quick" if args.quick else "full"
    models = counting_models(setting, cache_dir=args.cache_dir, retrain=args.retrain, progress=args.progress)
    print(f"models ready in {time.perf_counter() - t0:.1f} s: {models['metrics']}")
    run = run_counting_example(setting, models=models, progress=args.progress)
    print(run.format_table())
    fig = counting_figure(run, models["regressor"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"figure: {out}  (total {time.perf_counter() - t0:.1f} s, {torch.get_num_threads()} thread(s))")


if __name__ == "__main__":
    main()
