"""Benchmark: batched Jacobians with :func:`xcf.evaluate.geometry.jacobian` against autograd loops.

Model: an MLP generator ``g: R^64 -> R^784`` (64 -> 256 -> 512 -> 784, softplus, sigmoid output),
the shape of a GAN on 28 x 28 digits; batch 64.  Compared, one timed run each after a warm-up on two
samples, all giving the same ``(64, 784, 64)`` Jacobians (checked):

* ``xcf``: :func:`xcf.evaluate.geometry.jacobian` (forward mode: 64 JVPs of the batch, vmapped over
  directions);
* ``per-sample``: one :func:`torch.autograd.functional.jacobian` call per sample (its default,
  reverse mode with one backward pass per output value: 64 x 784 backward passes);
* ``per-sample-column``: one :func:`torch.autograd.functional.jvp` call per sample and column of
  ``J`` (64 x 64 calls; the double-backward trick);
* ``batch-column``: one such call of the whole batch per column (64 calls): batched over samples,
  looped over directions without ``vmap``, the strongest of the loops.

Headline: ``per-sample / xcf`` and ``per-sample-column / xcf`` (target >= 10x at one thread);
``batch-column / xcf`` is what vmapping the directions adds on top of batching the samples.

Run: ``python benchmarks/bench_jacobian.py [--threads 1] [--batch 64] [--device cpu]``.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch import nn

from xcf.evaluate.geometry import jacobian


def generator(dim_z: int = 64, dim_x: int = 784, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(dim_z, 256), nn.Softplus(), nn.Linear(256, 512), nn.Softplus(), nn.Linear(512, dim_x), nn.Sigmoid()
    ).eval()


def per_sample(g: nn.Module, z: torch.Tensor) -> torch.Tensor:
    jac = torch.autograd.functional.jacobian
    return torch.stack([jac(lambda q: g(q.unsqueeze(0))[0], z[i]) for i in range(len(z))])


def per_sample_column(g: nn.Module, z: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(z.shape[1], dtype=z.dtype, device=z.device)
    jvp = torch.autograd.functional.jvp
    cols = [[jvp(g, z[i : i + 1], eye[j : j + 1])[1][0] for j in range(z.shape[1])] for i in range(len(z))]
    return torch.stack([torch.stack(c, dim=1) for c in cols])


def batch_column(g: nn.Module, z: torch.Tensor) -> torch.Tensor:
    cols = []
    for j in range(z.shape[1]):
        v = torch.zeros_like(z)
        v[:, j] = 1
        cols.append(torch.autograd.functional.jvp(g, z, v)[1])
    return torch.stack(cols, dim=2)


def timed(fn, *args) -> tuple[torch.Tensor, float]:
    if args[-1].is_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn(*args)
    if args[-1].is_cuda:
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description="batched Jacobians vs autograd loops")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--dim-z", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    g = generator(args.dim_z).to(device)
    z = torch.randn(args.batch, args.dim_z, device=device, generator=torch.Generator(device).manual_seed(1))

    methods = {
        "xcf": lambda m, q: jacobian(m, q),
        "xcf (reverse mode)": lambda m, q: jacobian(m, q, mode="reverse"),
        "per-sample": per_sample,
        "per-sample-column": per_sample_column,
        "batch-column": batch_column,
    }
    for fn in methods.values():  # warm-up
        fn(g, z[:2])
    results, times = {}, {}
    for name, fn in methods.items():
        results[name], times[name] = timed(fn, g, z)
    ref = results["per-sample"]
    for name, J in results.items():
        err = float((J.reshape(ref.shape) - ref).abs().max())
        assert err < 1e-4, f"{name} differs from autograd by {err}"

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"batch {args.batch}, dim z {args.dim_z} -> dim x 784, load average {load:.1f}")
    for name, t in times.items():
        print(f"  {name:20s} {t * 1e3:9.1f} ms   ({times['per-sample'] / t:7.1f}x vs per-sample)")
    ratio = times["per-sample"] / times["xcf"]
    ratios = {f"ratio_{k}": times[k] / times["xcf"] for k in ("per-sample", "per-sample-column", "batch-column")}
    print(f"speed-up of xcf.evaluate.geometry.jacobian: {ratio:.1f}x vs per-sample autograd.functional.jacobian, "
          f"{ratios['ratio_per-sample-column']:.1f}x vs one jvp call per sample and column, "
          f"{ratios['ratio_batch-column']:.1f}x vs one batched jvp call per column")
    return {**ratios, **times}


if __name__ == "__main__":
    main()
