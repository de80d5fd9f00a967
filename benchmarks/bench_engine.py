"""Engine throughput: batched search vs one image at a time, and bookkeeping overhead vs a bare loop.

Measured in one run, on the digits default (cached classifier and RealNVP flow), targets (y+3) mod 10:

1. **batched / sequential**: images per second of ``DiffeomorphicCounterfactual.counterfactual`` on a
   batch of ``--batch`` test digits, against the same explainer called once per image (how the
   paper's reference code works).  Target: >= 50x.
2. **engine / bare loop**: the engine's wall time against a bare loop that performs exactly the same
   forward/backward passes (same per-step batch sizes, taken from the engine's own trace) and the
   same Adam update, without the early-stop bookkeeping.  Target: <= 1.2x.

Usage::

    python benchmarks/bench_engine.py [--threads 1] [--batch 256] [--sequential 64]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from xcf import DiffeomorphicCounterfactual
from xcf.datasets import load_digits
from xcf.models import reference


def bare_loop(classifier, flow, z0, target, active_counts, lr):
    """The same passes as the engine, with the active set given up front (rows stop in order)."""
    z = z0.clone()
    m, v = torch.zeros_like(z), torch.zeros_like(z)
    b1, b2, eps = 0.9, 0.999, 1e-8
    for t, n_t in enumerate(active_counts):
        z, m, v, tgt = z[:n_t], m[:n_t], v[:n_t], target[:n_t]
        q = z.requires_grad_(True)
        x, _ = flow._transform.inverse(q)
        loss = F.cross_entropy(classifier(x.reshape(-1, 1, 8, 8)), tgt, reduction="sum")
        (g,) = torch.autograd.grad(loss, q)
        with torch.no_grad():
            z = q.detach()
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            z.addcdiv_(m, (v / (1 - b2 ** (t + 1))).sqrt_().add_(eps), value=-lr / (1 - b1 ** (t + 1)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--sequential", type=int, default=64, help="images run one at a time (a prefix of the batch)")
    ap.add_argument("--steps", type=int, default=1000)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    classifier, _ = reference("digits-classifier")
    flow, _ = reference("digits-realnvp")
    x, y = load_digits("test")
    x, y = x[: args.batch], y[: args.batch]
    target = (y + 3) % 10
    explainer = DiffeomorphicCounterfactual(classifier, flow)
    opts = {"update": "adam", "lr": 5e-2}  # the reference method's optimiser, as the bare loop
    explainer.counterfactual(x[:4], target[:4], steps=5, **opts)  # warm-up

    t0 = time.perf_counter()
    res = explainer.counterfactual(x, target, steps=args.steps, **opts)
    batched_s = time.perf_counter() - t0

    k = min(args.sequential, len(x))
    t0 = time.perf_counter()
    seq_steps = []
    for i in range(k):
        r = explainer.counterfactual(x[i : i + 1], target[i : i + 1], steps=args.steps, **opts)
        seq_steps.append(int(r.steps))
    sequential_s = time.perf_counter() - t0
    assert seq_steps == res.steps[:k].tolist(), "one-at-a-time and batched runs disagree"

    # The bare loop replays the engine's schedule: sort rows by the step they stopped at, so that the
    # rows still active at step t are a prefix.
    order = torch.argsort(res.steps, descending=True, stable=True)
    active_counts = (~torch.isnan(res.trace)).sum(0)
    active_counts = active_counts[active_counts > 0].tolist()[:-1] or [len(x)]
    z0 = res.latent_start[order]
    t0 = time.perf_counter()
    bare_loop(classifier, flow, z0, target[order], active_counts, opts["lr"])
    bare_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    explainer.counterfactual(x, target, steps=args.steps, **opts)
    engine_s = time.perf_counter() - t0

    report = {
        "threads": args.threads,
        "batch": len(x),
        "sequential_images": k,
        "success_rate": res.success_rate,
        "median_steps": float(res.steps.float().median()),
        "max_steps": int(res.steps.max()),
        "batched_images_per_s": len(x) / batched_s,
        "sequential_images_per_s": k / sequential_s,
        "speedup_batched_vs_sequential": (len(x) / batched_s) / (k / sequential_s),
        "engine_s": engine_s,
        "bare_loop_s": bare_s,
        "overhead_engine_vs_bare": engine_s / bare_s,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
