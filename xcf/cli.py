"""The ``xcf`` command line.

- ``xcf demo``: the main job on the embedded digits default (train or load the reference models,
  explain test digits with every method, validate, write the report).
- ``xcf audit``: the same audit with your own digits classifier (``--classifier FILE``) and a choice of
  methods.
- ``xcf extrapolate``: knowledge extrapolation of the digits GAN, truncated vs plain updates.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

__all__ = ["main", "build_parser"]

#: kept here (not imported) so that `xcf --help` does not import torch
METHODS = ("diffeomorphic", "approximate (GAN)", "approximate (VAE)", "adversarial")


def _threads(args: argparse.Namespace) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)


def _demo(args: argparse.Namespace) -> int:
    from xcf.report.demo import run_demo

    _threads(args)
    methods = None
    if getattr(args, "methods", None):
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    summary = run_demo(
        out_dir=args.out,
        cache_dir=args.cache,
        n=args.n,
        steps=args.steps,
        seed=args.seed,
        flow_kind=args.flow,
        progress=not args.no_progress,
        quick=args.quick,
        classifier_file=getattr(args, "classifier", None),
        methods=methods,
    )
    print(json.dumps(summary, indent=2, default=str))
    print(f"wrote {args.out}/report.html, metrics.json, metrics.md and figures/")
    return 0


def _extrapolate(args: argparse.Namespace) -> int:
    from xcf.report.extrapolation import run_extrapolation_demo

    _threads(args)
    summary = run_extrapolation_demo(args.out, cache_dir=args.cache, knowledge=args.knowledge, steps=args.steps,
                                     seed=args.seed, quick=args.quick, progress=not args.no_progress)
    print(json.dumps(summary, indent=2, default=str))
    print(f"wrote {args.out}/")
    return 0


def _common(p: argparse.ArgumentParser, out: str) -> None:
    p.add_argument("--out", default=out, help=f"output directory (default: {out})")
    p.add_argument("--cache", default=None, help="model cache (default: $XCF_CACHE or ~/.cache/xcf)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--quick", action="store_true", help="tiny training budgets: a smoke test, not real numbers")
    p.add_argument("--no-progress", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xcf", description="Audit image classifiers with counterfactual explanations.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, helptext in (("demo", "the main job on the embedded digits default"),
                           ("audit", "audit a digits classifier of yours with every method")):
        p = sub.add_parser(name, help=helptext)
        _common(p, "xcf-out")
        p.add_argument("--n", type=int, default=100, help="test digits to explain (default: 100)")
        p.add_argument("--steps", type=int, default=1000, help="step budget per counterfactual")
        p.add_argument("--flow", choices=("realnvp", "glow"), default="realnvp")
        if name == "audit":
            p.add_argument("--classifier", default=None, help="a DigitsCNN file written by xcf.models.io.save_model")
            p.add_argument("--methods", default=None, help="comma-separated subset of: " + ", ".join(METHODS))
        p.set_defaults(func=_demo)
    p = sub.add_parser("extrapolate", help="knowledge extrapolation of the digits GAN (truncated vs plain)")
    _common(p, "xcf-extrapolate")
    p.add_argument("--knowledge", type=int, default=1, help="the digit class whose knowledge is extrapolated")
    p.add_argument("--steps", type=int, default=20, help="update steps K")
    p.set_defaults(func=_extrapolate)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, PermissionError) as e:
        print(f"xcf {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
