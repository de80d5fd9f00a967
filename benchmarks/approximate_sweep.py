"""Approximate counterfactuals on real MNIST: how to invert the generator, and how to search its latent space.

Two tables for ``docs/approximate.md``, on the first ``--n`` test digits of ``load_mnist("test")`` in class-balanced
order, with the shipped reference CNN (``reference("mnist-classifier")``) toward ``(y + 3) mod 10``:

1. **Inversion** of the shipped GAN (``reference("mnist-gan")``): RMS error of ``G(z0)`` against the digit and ms per
   digit, for 8 random starts of 300 Adam steps (the earlier default), the GAN's encoder alone, and the encoder
   followed by 100 and 300 refinement steps (one start).  The VAE's own encoder, refined, for comparison.
2. **Search** in the GAN and VAE latents from the inverted start (computed once and reused, so the table times the
   search alone): step rule and size (Adam 2e-2, the earlier default; L2 steps of 0.5, 1.0, 2.0, the ball projection
   of :class:`~xcf.charts.generator.GeneratorChart` always on) x stopping confidence (0.99, 0.9999, 0.999999).
   Judged by validators that took no part in the search: an RBF SVM and a 10-NN on raw pixels fitted on the 4,000
   training digits (``SVM transfer``, ``10-NN agreement``), and the L2 distance ``||x' - x||``.

Usage::

    python benchmarks/approximate_sweep.py [--n 200] [--threads 2] [--out docs/approximate_sweep.md]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from xcf import ApproximateCounterfactual
from xcf.charts.inversion import invert
from xcf.datasets import balanced_order, load_mnist
from xcf.evaluate.validators import KNNValidator, SVMValidator
from xcf.models import reference


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def inversion_rows(G, vae, x):
    n, d = x.shape[0], G.latent_dim
    runs = {
        "GAN: 8 random starts x 300 Adam steps": lambda: invert(G, x, d, restarts=8, steps=300),
        "GAN: encoder alone": lambda: invert(G, x, d, encoder=G.encoder, restarts=1, steps=0),
        "GAN: encoder + 100 steps": lambda: invert(G, x, d, encoder=G.encoder, restarts=1, steps=100),
        "GAN: encoder + 300 steps (default)": lambda: invert(G, x, d, encoder=G.encoder, restarts=1, steps=300),
        "VAE: its encoder alone": lambda: invert(vae.decoder, x, vae.latent_dim, encoder=vae.encode, restarts=1,
                                                 steps=0),
        "VAE: its encoder + 300 steps (default)": lambda: invert(vae.decoder, x, vae.latent_dim, encoder=vae.encode,
                                                                 restarts=1, steps=300),
    }
    rows, starts = [], {}
    for name, run in runs.items():
        inv, seconds = timed(run)
        rows.append({"inversion": name, "rms": float(inv.error.mean()), "p90": float(inv.error.quantile(0.9)),
                     "poor": float((inv.error > 0.15).float().mean()), "ms": 1000 * seconds / n})
        print(json.dumps(rows[-1]), flush=True)
        if "(default)" in name:
            starts[name.split(":")[0]] = inv.z
    return rows, starts


def search_rows(clf, models, starts, x, y, svm, knn):
    target = (y + 3) % 10
    rules = [("adam", 2e-2), ("l2", 0.5), ("l2", 1.0), ("l2", 2.0)]
    rows = []
    for name, (generator, d) in models.items():
        z0 = starts[name]
        for update, lr in rules:
            for confidence in (0.99, 0.9999, 0.999999):
                # the inverted start, reused: an "encoder" that returns it, with no refinement steps
                explainer = ApproximateCounterfactual(clf, generator, (d,), encoder=lambda v, z0=z0: z0,
                                                      inversion_steps=0, lr=lr, confidence=confidence)
                r, seconds = timed(lambda: explainer.counterfactual(x, target, update=update))
                xc = r.counterfactual
                rows.append({"generator": name, "step": f"{update} {lr:g}", "confidence": confidence,
                             "success": r.success_rate, "svm": float(svm.transfer(xc, target).float().mean()),
                             "knn": float(knn.agreement(xc, target).mean()),
                             "l2": float((xc - x).flatten(1).norm(dim=1).mean()),
                             "steps": float(r.steps.float().median()), "ms": 1000 * seconds / x.shape[0]})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x_train, y_train = load_mnist("train")
    x_test, y_test = load_mnist("test")
    order = balanced_order(y_test)
    x, y = x_test[order][: args.n], y_test[order][: args.n]
    clf, _ = reference("mnist-classifier")
    G, _ = reference("mnist-gan")
    vae, _ = reference("mnist-vae")
    svm = SVMValidator().fit(x_train, y_train)
    knn = KNNValidator(k=10).fit(x_train, y_train)

    inv, starts = inversion_rows(G, vae, x)
    search = search_rows(clf, {"GAN": (G, G.latent_dim), "VAE": (vae.decoder, vae.latent_dim)}, starts, x, y, svm,
                         knn)
    lines = [f"{args.n} MNIST test digits (class-balanced), {args.threads} threads.", "",
             "| inversion | RMS error (mean) | 90th percentile | share > 0.15 | ms / digit |", "|---|---|---|---|---|"]
    lines += [f"| {r['inversion']} | {r['rms']:.4f} | {r['p90']:.4f} | {r['poor']:.3f} | {r['ms']:.1f} |" for r in inv]
    lines += ["", "| latent | step | confidence | success | SVM transfer | 10-NN agreement | L2 distance | median steps "
              "| ms / CF (search) |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['generator']} | {r['step']} | {r['confidence']:g} | {r['success']:.3f} | {r['svm']:.3f} | "
              f"{r['knn']:.3f} | {r['l2']:.2f} | {r['steps']:.0f} | {r['ms']:.1f} |" for r in search]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
