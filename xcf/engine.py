"""The ascent engine: one batched, per-sample early-stopping search used by every explainer.

Given a differentiable ``decode`` (the chart), starting coordinates ``p0`` and an objective, the
engine runs Adam on the objective's loss of ``forward_func(decode(p))``.  Each sample stops the first
time its objective is reached; its iterate at that moment is kept and it leaves the *active set*,
together with its Adam moments, so that the cost of a step follows the samples still searching.
Samples that exhaust the step budget are reported as failures, never dropped.

The loss is summed over samples (not averaged), so every sample's update depends on that sample
alone: a batch gives the same answer as one call per sample.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import Tensor
from tqdm.auto import tqdm

from xcf._validation import check_int, check_model_output, check_number
from xcf.objectives import Objective

__all__ = ["rms", "search", "timed"]


#: the per-step score trace of one call may take at most this much memory
_MAX_TRACE_BYTES = 2 * 2**30


def split_forward_args(args: Any, n: int) -> tuple[tuple, list[bool]]:
    """Normalise ``additional_forward_args`` to a tuple and mark which entries are per-sample."""
    if args is None:
        return (), []
    if not isinstance(args, tuple):
        args = (args,)
    per_sample = [isinstance(a, Tensor) and a.ndim > 0 and a.shape[0] == n for a in args]
    return args, per_sample


def _select_args(args: tuple, per_sample: list[bool], index: Tensor) -> tuple:
    return tuple(a[index] if ps else a for a, ps in zip(args, per_sample))


@dataclass
class _Trajectory:
    """Per-sample outputs the engine fills in as samples stop."""

    x: Optional[Tensor] = None
    p: Optional[Tensor] = None


def search(
    forward_func: Callable[..., Tensor],
    decode: Callable[[Tensor], Tensor],
    start: Tensor,
    objective: Objective,
    *,
    steps: int = 1000,
    lr: float = 5e-2,
    update: str = "adam",
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    additional_forward_args: Any = None,
    project: Optional[Callable[[Tensor, Tensor], Tensor]] = None,
    progress: bool = False,
    description: str = "search",
) -> dict[str, Tensor]:
    """Minimise ``objective(forward_func(decode(p)))`` over ``p`` from ``start`` with Adam.

    Each sample stops at the first iterate whose objective is reached (checked *before* each
    update, so a sample that already satisfies it stops with 0 steps).  Finished samples leave the
    active set with their Adam state.  A sample whose score turns non-finite stops as a failure at
    its last finite iterate.

    Args:
        forward_func: the model; called as ``forward_func(x, *additional_forward_args)``.
        decode: the chart's map from coordinates to inputs (identity or a clamp for pixel space).
        start: ``(N, ...)`` starting coordinates.
        objective: see :class:`xcf.objectives.Objective`.
        steps: update budget per sample.
        lr: step size.
        update: the step rule: ``"adam"`` (default), ``"sign"`` (``p -= lr * sign(g)``, the L-inf
            PGD step) or ``"l2"`` (``p -= lr * g / ||g||`` per sample, the L2 PGD step).
        betas, eps: Adam's parameters (as in :class:`torch.optim.Adam`).
        additional_forward_args: extra model arguments; tensors whose first dimension is ``N``
            are split per sample, everything else is passed as is.
        project: ``project(p, index)`` maps updated iterates of the samples ``index`` back onto
            the feasible set (e.g. the data range); called after every update.
        progress: show a tqdm bar over steps.

    Returns:
        A dict of per-sample tensors: ``counterfactual``, ``latent``, ``success``, ``steps``,
        ``score``, ``start_score`` and ``trace``.
    """
    steps = check_int(steps, "steps")
    lr = check_number(lr, "lr", positive=True)
    if update not in ("adam", "sign", "l2"):
        raise ValueError(f"update must be 'adam', 'sign' or 'l2', got {update!r}")
    n = start.shape[0]
    device = start.device
    trace_bytes = n * (steps + 1) * start.element_size()
    if trace_bytes > _MAX_TRACE_BYTES:
        raise ValueError(f"steps={steps} is too large: the per-step score trace of {n} samples would take "
                         f"{trace_bytes / 2**30:.3g} GiB (limit {_MAX_TRACE_BYTES / 2**30:.0f} GiB); use fewer steps "
                         "or smaller batches")
    args, per_sample = split_forward_args(additional_forward_args, n)

    p = start.detach().clone()
    m = torch.zeros_like(p)
    v = torch.zeros_like(p)
    active = torch.arange(n, device=device)
    out = _Trajectory()
    success = torch.zeros(n, dtype=torch.bool, device=device)
    n_steps = torch.zeros(n, dtype=torch.long, device=device)
    score_out = torch.full((n,), float("nan"), dtype=start.dtype, device=device)
    start_score = torch.full_like(score_out, float("nan"))
    trace = torch.full((n, steps + 1), float("nan"), dtype=start.dtype, device=device)
    b1, b2 = betas
    prev_p: Optional[Tensor] = None

    bar = tqdm(total=n, desc=description, unit="sample", disable=not progress, leave=False)
    try:
        for t in range(steps + 1):
            with torch.enable_grad():
                q = p.requires_grad_(True)
                x = decode(q)
                output = forward_func(x, *_select_args(args, per_sample, active))
                if t == 0:
                    if isinstance(output, Tensor):
                        objective.check(output)
                    check_model_output(output, n)
                    if not bool(torch.isfinite(x).all()):
                        raise ValueError("decode produced NaN or Inf at the starting coordinates")
                    out.x = torch.empty((n,) + x.shape[1:], dtype=x.dtype, device=device)
                    out.p = torch.empty_like(start)
                loss, score, reached = objective(output, active)
            score = score.detach()
            trace[active, t] = score
            if t == 0:
                start_score[active] = score
            broken = ~torch.isfinite(score)
            finished = reached | broken
            if t == steps:
                finished = torch.ones_like(finished)
            done = finished.nonzero().squeeze(1)
            if done.numel():
                rows = active[done]
                xd, pd, sd = x.detach()[done], q.detach()[done], score[done]
                bad = broken[done]
                if prev_p is not None and bool(bad.any()):
                    # Fall back to the last iterate that had a finite score.
                    with torch.no_grad():
                        pd[bad] = prev_p[done][bad]
                        xd[bad] = decode(pd[bad])
                        sd[bad] = float("nan")
                out.x[rows] = xd
                out.p[rows] = pd
                success[rows] = reached[done] & ~bad
                n_steps[rows] = t
                score_out[rows] = sd
                bar.update(int(done.numel()))
                keep = (~finished).nonzero().squeeze(1)
                if keep.numel() == 0:
                    break
            else:
                keep = None
            (grad,) = torch.autograd.grad(loss.sum(), q)
            with torch.no_grad():
                p = q.detach()
                if keep is not None:
                    p, m, v, grad, active = p[keep], m[keep], v[keep], grad[keep], active[keep]
                prev_p = p.clone()
                if update == "adam":
                    m.mul_(b1).add_(grad, alpha=1 - b1)
                    v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
                    step_size = lr / (1 - b1 ** (t + 1))
                    denom = (v / (1 - b2 ** (t + 1))).sqrt_().add_(eps)
                    p.addcdiv_(m, denom, value=-step_size)
                elif update == "sign":
                    p.add_(grad.sign(), alpha=-lr)
                else:
                    norm = grad.flatten(1).norm(dim=1).clamp_min(torch.finfo(grad.dtype).tiny)
                    p.add_(grad / norm.view((-1,) + (1,) * (grad.ndim - 1)), alpha=-lr)
                if project is not None:
                    p = project(p, active)
    finally:
        bar.close()
    return {
        "counterfactual": out.x,
        "latent": out.p,
        "success": success,
        "steps": n_steps,
        "score": score_out,
        "start_score": start_score,
        "trace": trace,
    }


def rms(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample root-mean-square difference of two batches."""
    d = (a - b).flatten(1)
    return d.pow(2).mean(dim=1).sqrt() if d.shape[1] else d.new_zeros(d.shape[0])


def timed() -> Callable[[], float]:
    """A stopwatch: ``elapsed = timed(); ...; elapsed()`` gives seconds since the call."""
    t0 = time.perf_counter()
    return lambda: time.perf_counter() - t0
