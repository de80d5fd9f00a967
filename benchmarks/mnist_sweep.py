"""Sweep of the flow chart's search defaults on real MNIST: step rule, step size, stopping confidence.

Diffeomorphic counterfactuals of ``--n`` test digits (the first of ``load_mnist("test")``, 10 per class
per 100) toward ``(y + 3) mod 10`` with the shipped ``mnist-classifier`` and ``mnist-flow``, judged by
validators that took no part in the search: an RBF SVM and a 10-NN on raw pixels, fitted on the 4,000
training digits.  One row per setting: success, SVM transfer, 10-NN agreement, share of counterfactuals
with pixels outside ``[0, 1]``, L2 distance, median steps, ms per counterfactual.

Usage::

    python benchmarks/mnist_sweep.py [--threads 2] [--n 200] [--out docs/mnist_sweep.md]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import torch

from xcf import DiffeomorphicCounterfactual
from xcf.datasets import balanced_order, load_mnist
from xcf.evaluate.validators import KNNValidator, SVMValidator
from xcf.models import reference

GRID = {
    "l2": [0.25, 0.5, 1.0, 2.0],
    "sign": [1e-2],
    "adam": [5e-2],
}
CONFIDENCES = [0.99, 0.9999, 0.999999]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--out", default=None, help="write the markdown table here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    classifier, _ = reference("mnist-classifier")
    flow, flow_metrics = reference("mnist-flow")
    x_train, y_train = load_mnist("train")
    x_test, y_test = load_mnist("test")
    order = balanced_order(y_test)  # the first n test digits in a class-balanced order
    x, y = x_test[order[: args.n]], y_test[order[: args.n]]
    target = (y + 3) % 10
    svm = SVMValidator().fit(x_train, y_train)
    knn = KNNValidator(k=10).fit(x_train, y_train)
    explainer = DiffeomorphicCounterfactual(classifier, flow)

    rows = []
    for (update, lrs), confidence in itertools.product(GRID.items(), CONFIDENCES):
        for lr in lrs:
            start = time.perf_counter()
            r = explainer.counterfactual(x, target, update=update, lr=lr, confidence=confidence, steps=args.steps)
            seconds = time.perf_counter() - start
            ok = r.success
            row = {
                "update": update, "lr": lr, "confidence": confidence,
                "success": r.success_rate,
                "svm": float(svm.transfer(r.counterfactual, target).float().mean()),
                "knn": float(knn.agreement(r.counterfactual, target).mean()),
                "out_of_range": float((r.out_of_range() > 0).float().mean()),
                "l2": float(r.difference.flatten(1).norm(dim=1).mean()),
                "median_steps": float(r.steps[ok].float().median()) if bool(ok.any()) else float("nan"),
                "ms": 1000 * seconds / len(r),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)

    head = "| update | lr | confidence | success | SVM transfer | 10-NN agreement | out of [0,1] | L2 | median steps | ms / CF |"
    lines = [f"{args.n} MNIST test digits toward (y + 3) mod 10, flow test bits/dim "
             f"{flow_metrics['test_bits_per_dim']:.3f}, {args.threads} threads", "", head, "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['update']} | {r['lr']:g} | {r['confidence']:g} | {r['success']:.2f} | {r['svm']:.2f} | "
                     f"{r['knn']:.2f} | {r['out_of_range']:.2f} | {r['l2']:.2f} | {r['median_steps']:.0f} | "
                     f"{r['ms']:.0f} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
