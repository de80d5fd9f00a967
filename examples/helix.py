"""Why base-space ascent stays on the data and pixel-space ascent leaves it: a helix in 3-D.

The data are points on one turn of a helix, ``h(t) = (cos t, sin t, t/π - 1)`` for ``t ∈ [0, 2π)``,
plus Gaussian noise (σ = 0.02): a 1-D manifold in ``R³``.  A small nflows flow ``g`` (rational-
quadratic spline couplings) is fitted to them, and a fixed classifier reads one coordinate:
``logit₁ - logit₀ = 10 · x₃`` (class 1 above the middle of the helix).

1. **Manifold dimension.**  With ``J = ∂g/∂z`` at ``z = g⁻¹(x)``, the singular values of ``J``
   are large along the curve and about σ across it; :func:`xcf.evaluate.geometry.manifold_dimension`
   (largest gap of the log spectrum, ratio >= 10) should return 1.
2. **Counterfactuals.**  From points in the lower half (class 0), reach class 1 with probability
   0.99 (i.e. ``x₃ >= 0.46``) with the same loss, Adam step size, stopping rule and budget, once in
   the flow's base space (:class:`xcf.DiffeomorphicCounterfactual`) and once in input space
   (:class:`xcf.explain.adversarial.AdversarialCounterfactual` with ``bounds=None``).  The
   classifier's gradient points straight up, so pixel ascent moves ``x₃`` alone and leaves the
   helix; in base space the step is multiplied by ``J Jᵀ``, whose range is the tangent, so the
   search climbs along the curve.  We report the mean (and median) distance to the curve.
3. **Adam versus the theory.**  The first-order argument is for gradient steps; Adam rescales
   each base coordinate, which also advances the directions ``J`` damps (by about σ per unit).
   The same base-space search with normalised gradient steps (``update="l2"``, the flow chart's
   default) is printed as a third line.

Run: ``python examples/helix.py`` (about a minute on one thread; ``--threads`` to change).  Writes
``examples/figures/helix.png``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from nflows.distributions import StandardNormal  # noqa: E402
from nflows.flows import Flow  # noqa: E402
from nflows.nn.nets import ResidualNet  # noqa: E402
from nflows.transforms import (  # noqa: E402
    CompositeTransform,
    PiecewiseRationalQuadraticCouplingTransform,
)
from torch import Tensor, nn  # noqa: E402

from xcf import DiffeomorphicCounterfactual, FlowChart  # noqa: E402
from xcf.evaluate.manifold import manifold_dimension, tangent_space
from xcf.explain.adversarial import AdversarialCounterfactual

NOISE = 0.02
SLOPE = 10.0  # classifier: logit difference = SLOPE * x3


def helix(t: Tensor) -> Tensor:
    """Points of the curve at parameters ``t`` (no noise), shape ``(len(t), 3)``."""
    return torch.stack([torch.cos(t), torch.sin(t), t / math.pi - 1], dim=1)


def sample(n: int, generator: torch.Generator) -> Tensor:
    t = torch.rand(n, generator=generator) * 2 * math.pi
    return helix(t) + NOISE * torch.randn(n, 3, generator=generator)


def distance_to_curve(points: Tensor, resolution: int = 20001) -> Tensor:
    """Per-point Euclidean distance to the noiseless helix (dense polyline, error < 2e-4)."""
    curve = helix(torch.linspace(0, 2 * math.pi, resolution, dtype=points.dtype))
    return torch.cdist(points, curve).min(dim=1).values


def build_flow(layers: int = 6, hidden: int = 32) -> Flow:
    """Spline couplings, each transforming one coordinate given the other two, cycling."""
    transforms = []
    for i in range(layers):
        mask = torch.zeros(3)
        mask[i % 3] = 1
        transforms.append(
            PiecewiseRationalQuadraticCouplingTransform(
                mask,
                lambda c_in, c_out: ResidualNet(c_in, c_out, hidden, num_blocks=2),
                num_bins=8,
                tails="linear",
                tail_bound=3.0,
            )
        )
    return Flow(CompositeTransform(transforms), StandardNormal([3]))


def train_flow(flow: Flow, data: Tensor, steps: int, generator: torch.Generator, batch: int = 256) -> float:
    opt = torch.optim.Adam(flow.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    flow.train()
    for _ in range(steps):
        idx = torch.randint(0, len(data), (batch,), generator=generator)
        loss = -flow.log_prob(data[idx]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    flow.eval()
    with torch.no_grad():
        return float(-flow.log_prob(data[:2000]).mean())


def classifier() -> nn.Module:
    """logits = (0, SLOPE * x3): class 1 above x3 = 0."""
    clf = nn.Linear(3, 2)
    with torch.no_grad():
        clf.weight.zero_()
        clf.bias.zero_()
        clf.weight[1, 2] = SLOPE
    return clf.eval()


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--train-steps", type=int, default=800)
    parser.add_argument("--n", type=int, default=100, help="number of inputs to explain")
    parser.add_argument("--lr", type=float, default=5e-2, help="Adam step size for both searches")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "figures" / "helix.png")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    t0, c0 = time.perf_counter(), time.process_time()
    data = sample(20000, gen)
    flow = build_flow()
    nll = train_flow(flow, data, args.train_steps, gen)
    t_train, c_train = time.perf_counter() - t0, time.process_time() - c0
    print(f"flow: {args.train_steps} Adam steps in {t_train:.1f} s wall, {c_train:.1f} s CPU on "
          f"{args.threads} thread(s), NLL {nll:.3f} nats")

    # 1. the manifold's dimension from the spectrum of J = dg/dz at held-out data
    chart = FlowChart(flow, event_shape=(3,))
    held_out = sample(1000, gen)
    with torch.no_grad():
        z = chart.encode(held_out)
    spectrum = tangent_space(chart.decode, z, k=1)
    dims = manifold_dimension(spectrum.singular_values)
    counts = torch.bincount(dims, minlength=4)
    estimate = int(counts.argmax())
    median_sv = spectrum.singular_values.median(dim=0).values
    print(f"manifold dimension: {estimate} (per point: " +
          ", ".join(f"{d}: {int(c)}" for d, c in enumerate(counts.tolist()) if c) +
          f" of {len(dims)}); median singular values {[round(float(s), 4) for s in median_sv]}")

    # 2. counterfactuals from the lower half toward class 1
    clf = classifier()
    pool = sample(20 * args.n, gen)
    x = pool[pool[:, 2] < -0.3][: args.n]
    diffeo = DiffeomorphicCounterfactual(clf, flow, event_shape=(3,))
    pixel = AdversarialCounterfactual(clf, bounds=None)
    res_d = diffeo.counterfactual(x, target=1, lr=args.lr, update="adam")
    res_p = pixel.counterfactual(x, target=1, lr=args.lr, update="adam")
    d_start = distance_to_curve(x)
    numbers = {"manifold_dimension": float(estimate),
               "share_dimension_1": float(counts[1]) / len(dims),
               "train_seconds": t_train, "train_cpu_seconds": c_train}
    print(f"inputs: {len(x)}, mean distance to the curve {float(d_start.mean()):.3f}")
    for name, res in (("base space (diffeomorphic)", res_d), ("pixel space (adversarial)", res_p)):
        dist = distance_to_curve(res.counterfactual)
        ok = res.success
        print(f"{name:28s} success {res.success_rate:.2f}, median steps {float(res.steps.float().median()):.0f}, "
              f"distance to the curve: mean {float(dist.mean()):.3f}, median {float(dist.median()):.3f} "
              f"(successes: mean {float(dist[ok].mean()):.3f}), {res.wall_time:.1f} s")
        key = "diffeomorphic" if res is res_d else "adversarial"
        numbers[f"{key}_success"] = res.success_rate
        numbers[f"{key}_mean_distance"] = float(dist.mean())
        numbers[f"{key}_median_distance"] = float(dist.median())

    # the same search with normalised gradient steps: the x-step is then J Jᵀ ∇ₓ up to a scale, as in
    # the theory; Adam's per-coordinate scaling also advances the directions J damps.
    res_n = diffeo.counterfactual(x, target=1, lr=args.lr, update="l2")
    dist = distance_to_curve(res_n.counterfactual)
    print(f"{'base space, normalised steps':28s} success {res_n.success_rate:.2f}, "
          f"median steps {float(res_n.steps.float().median()):.0f}, "
          f"distance to the curve: mean {float(dist.mean()):.3f}, median {float(dist.median()):.3f}")
    numbers["normalised_steps_mean_distance"] = float(dist.mean())
    numbers["normalised_steps_median_distance"] = float(dist.median())

    # 3. the figure: 3-D view, the unrolled cylinder (angle, height) where the helix is a line, spectrum
    fig = plt.figure(figsize=(15, 4.6))
    ax = fig.add_subplot(1, 3, 1, projection="3d")
    curve = helix(torch.linspace(0, 2 * math.pi, 400)[:-1])
    ax.plot(*curve.T.numpy(), color="0.5", lw=1.5, label="helix")
    ax.scatter(*x.T.numpy(), s=8, color="tab:blue", label="inputs (class 0)")
    ax.scatter(*res_d.counterfactual.T.numpy(), s=8, color="tab:green", label="base-space ascent")
    ax.scatter(*res_p.counterfactual.T.numpy(), s=10, color="tab:red", marker="x", label="pixel-space ascent")
    for a, b in zip(x[:25], res_p.counterfactual[:25]):
        ax.plot(*torch.stack([a, b]).T.numpy(), color="tab:red", lw=0.5, alpha=0.5)
    ax.set_xlabel("x1")
    ax.set_ylabel("x2")
    ax.set_zlabel("x3")
    ax.view_init(elev=20, azim=-60)
    ax.set_title("counterfactuals toward class 1 (x3 >= 0.46)")
    ax.legend(loc="upper left", fontsize=7)

    def unroll(p: Tensor) -> tuple:
        angle = torch.atan2(p[:, 1], p[:, 0]) % (2 * math.pi)
        return angle.numpy(), p[:, 2].numpy()

    ax1 = fig.add_subplot(1, 3, 2)
    ax1.plot(*unroll(curve), color="0.5", lw=1.5, label="helix")
    ax1.scatter(*unroll(data[:1000]), s=1, color="0.8")
    ax1.scatter(*unroll(x), s=10, color="tab:blue", label="inputs")
    ax1.scatter(*unroll(res_d.counterfactual), s=10, color="tab:green", label="base-space ascent")
    ax1.scatter(*unroll(res_p.counterfactual), s=12, color="tab:red", marker="x", label="pixel-space ascent")
    ax1.scatter(*unroll(res_n.counterfactual), s=10, color="tab:olive", marker="^",
                label="base space, normalised steps")
    ax1.axhline(math.log(99) / SLOPE, color="k", lw=0.8, ls=":", label="p(class 1) = 0.99")
    ax1.set_xlabel("angle atan2(x2, x1)")
    ax1.set_ylabel("height x3")
    ax1.set_title("unrolled: the helix is the line")
    ax1.legend(fontsize=7, loc="lower right")

    ax2 = fig.add_subplot(1, 3, 3)
    sv = spectrum.singular_values.log10().numpy()
    for j, color in enumerate(("tab:green", "tab:orange", "tab:purple")):
        ax2.hist(sv[:, j], bins=40, color=color, alpha=0.7, label=f"σ{j + 1}")
    ax2.axvline(math.log10(NOISE), color="k", ls="--", lw=1, label="noise σ = 0.02")
    ax2.set_xlabel("log10 singular value of J = ∂g/∂z")
    ax2.set_ylabel("points")
    ax2.set_title(f"Jacobian spectrum: dimension {estimate} at {float(counts[1]) / len(dims):.0%} of points")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    plt.close(fig)
    print(f"figure: {args.out}")
    return numbers


if __name__ == "__main__":
    main()
