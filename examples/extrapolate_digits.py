"""Knowledge extrapolation on the digits GAN: truncated (principal knowledge descent) vs plain descent.

Edits copies of the reference digits GAN so that it draws more of digit ``k`` (minimising
``E_z log(1 − P_k(G(z)))`` raises the classifier's ``P_k``), once with the truncated sign update and once
with plain gradient descent whose step size is tuned to the same descent ``Δ``; prints ``Δ``, ``δ``
(mean absolute change of the classifier's penultimate features on the same latent codes) and ``Δ/δ``,
and writes ``examples/figures/extrapolation.png`` (same codes, before and after, both methods).

Run::

    python examples/extrapolate_digits.py            # about a minute once the models are cached
    python examples/extrapolate_digits.py --knowledge 7 --steps 40
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional

import torch

from xcf.apps.extrapolate import run_extrapolation_demo

FIGURES = Path(__file__).resolve().parent / "figures"


def run(
    out_dir: str | Path = FIGURES,
    cache_dir: Optional[str | Path] = None,
    knowledge: int = 1,
    steps: int = 20,
    seed: int = 0,
    quick: bool = False,
    **kwargs: Any,
) -> dict[str, Any]:
    """Run the comparison, print the numbers, and return them (see ``run_extrapolation_demo``)."""
    summary = run_extrapolation_demo(out_dir, cache_dir, knowledge, steps, seed, quick, **kwargs)
    print(f"knowledge: {summary['knowledge']}   ({summary['objective']})")
    print(f"K = {summary['steps']} steps, batch {summary['batch_size']}, {summary['eval_size']} evaluation codes, "
          f"seed {summary['seed']}; share classified {knowledge} before: {summary['share_classified_k_before']:.3f}")
    print(f"{'':28s}{'truncated':>12s}{'plain':>12s}")
    for key in ("epsilon", "Delta", "delta", "ratio", "posterior_after", "share_classified_k_after",
                "kept_class_share", "changed", "pixel_change"):
        print(f"{key:28s}{summary['truncated'][key]:12.4g}{summary['plain'][key]:12.4g}")
    print(f"truncated keep_fraction = {summary['truncated']['keep_fraction']}; figure: {Path(out_dir) / 'extrapolation.png'}")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", default=str(FIGURES))
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--knowledge", type=int, default=1, help="the digit k whose posterior is raised")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke test: few steps and codes")
    args = parser.parse_args()
    torch.set_num_threads(1)
    run(args.out_dir, args.cache_dir, args.knowledge, args.steps, args.seed, args.quick)


if __name__ == "__main__":
    main()
