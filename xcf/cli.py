"""The ``xcf`` command line: ``xcf demo`` (the main job on the embedded digits default)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    import torch

    from xcf.report.demo import run_demo

    if args.threads:
        torch.set_num_threads(args.threads)
    summary = run_demo(
        out_dir=args.out,
        cache_dir=args.cache,
        n=args.n,
        steps=args.steps,
        seed=args.seed,
        flow_kind=args.flow,
        progress=not args.no_progress,
        quick=args.quick,
    )
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out}/")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xcf", description="Audit image classifiers with counterfactual explanations.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train/load the digits models and explain a batch of test digits")
    demo.add_argument("--out", default="xcf-out", help="output directory (default: xcf-out)")
    demo.add_argument("--cache", default=None, help="model cache (default: $XCF_CACHE or ~/.cache/xcf)")
    demo.add_argument("--n", type=int, default=100, help="test digits to explain (default: 100)")
    demo.add_argument("--steps", type=int, default=1000, help="step budget per counterfactual")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--flow", choices=("realnvp", "glow"), default="realnvp")
    demo.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    demo.add_argument("--quick", action="store_true", help="tiny training budgets: a smoke test, not real numbers")
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(func=_demo)
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
