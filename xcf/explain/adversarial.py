"""Adversarial baselines: the same ascent in pixel space, free or inside a norm ball (PGD).

Pixel space is the identity chart, so the search minimises ``CE(f(x'), k)`` over ``x'`` itself.
Without a constraint this is the control experiment of the diffeomorphic method: the same loss,
stopping rule (``softmax(f(x'))[k] >= confidence``) and step budget, with Adam, but without the
generator's metric ``γ⁻¹ = J Jᵀ`` damping the directions off the data manifold, so the change is
an adversarial perturbation rather than a counterfactual.

With ``norm`` and ``radius`` it is projected gradient descent (Madry et al., 2018) toward the
target class inside the ball ``B = {x' : ||x' - x|| <= radius}`` around each sample's own input::

    L-inf:  x' <- Π(x' - α sign(∇ CE))            (the sign step)
    L2:     x' <- Π(x' - α ∇ CE / ||∇ CE||₂)       (the normalised-gradient step, per sample)

where ``Π`` clamps ``x' - x`` to the ball (``clamp(-r, r)`` for L-inf, rescaling to norm ``r`` for
L2) and then clamps to ``bounds``.  The random start draws ``x' = Π(x + u)`` with ``u`` uniform in
the ball: uniform in the cube for L-inf; a uniform direction times ``r·U^{1/d}`` (``d`` values per
sample, ``U ~ U(0, 1)``) for L2.  For the L-inf ball the iterates are those of
:class:`captum.robust.PGD` with ``targeted=True`` and a per-sample cross-entropy loss, except that
each sample stops as soon as it reaches the target.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from xcf.charts.base import Chart
from xcf.charts.pixel import PixelChart
from xcf.explain.base import CounterfactualExplainer
from xcf.objectives import OutputKind

__all__ = ["AdversarialCounterfactual", "BallChart"]

_NORMS = {"linf": "linf", "l_inf": "linf", "inf": "linf", "l2": "l2"}


def _check_bounds(bounds: Optional[tuple[float, float]]) -> Optional[tuple[float, float]]:
    if bounds is None:
        return None
    try:
        lo, hi = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise TypeError(f"bounds must be a (low, high) pair of numbers or None, got {bounds!r}") from None
    if not lo < hi:
        raise ValueError(f"bounds must satisfy low < high, got {bounds}")
    return lo, hi


def _check_norm(norm: str) -> str:
    key = str(norm).lower() if isinstance(norm, str) else None
    if key not in _NORMS:
        raise ValueError(f"norm must be None, 'linf' or 'l2', got {norm!r}")
    return _NORMS[key]


def _check_radius(radius: Optional[float]) -> float:
    if radius is None:
        raise ValueError("a norm ball needs a radius: pass radius > 0 together with norm")
    if isinstance(radius, bool) or not isinstance(radius, (int, float)):
        raise TypeError(f"radius must be a number, got {type(radius).__name__}")
    if not (radius > 0 and radius < float("inf")):
        raise ValueError(f"radius must be finite and > 0, got {radius}")
    return float(radius)


class BallChart(Chart):
    """Pixel space restricted to a norm ball around each input (and to ``bounds``): PGD's chart.

    ``encode`` records the centres (the inputs) and returns the start of the search: the input
    itself, or a seeded uniform random point of the ball (clamped to ``bounds``).  ``project``
    maps the iterates of the samples ``index`` (positions in the batch given to ``encode``) back
    onto the ball around their own centres, then into ``bounds``.  The step rule is the sign step
    for L-inf and the normalised gradient step for L2.

    Default step size and budget follow Madry et al.: ``lr = 2.5 · radius / steps`` with
    ``steps = 100``, so an iterate can cross the ball from any start.

    Args:
        norm: ``"linf"`` or ``"l2"``.
        radius: the ball's radius (> 0), in the units of the inputs.
        bounds: ``(low, high)`` of the data range, or ``None``.
        random_start: start at a uniform random point of the ball instead of the input.
        seed: seed of the random start (each call to ``encode`` draws from a fresh generator
            seeded with it, so calls are reproducible).

    Example:
        >>> chart = BallChart("linf", 0.1)
        >>> x = torch.rand(4, 1, 8, 8)
        >>> p = chart.encode(x)
        >>> bool(((p - x).abs() <= 0.1 + 1e-7).all())
        True
    """

    name = "pixel"
    steps = 100

    def __init__(
        self,
        norm: str,
        radius: float,
        bounds: Optional[tuple[float, float]] = (0.0, 1.0),
        random_start: bool = True,
        seed: int = 0,
    ):
        self.norm = _check_norm(norm)
        self.radius = _check_radius(radius)
        self.bounds = _check_bounds(bounds)
        self.random_start = bool(random_start)
        self.seed = int(seed)
        self.update = "sign" if self.norm == "linf" else "l2"
        self.lr = 2.5 * self.radius / self.steps
        self._centre: Optional[Tensor] = None

    def check(self, x: Tensor) -> None:
        PixelChart(self.bounds).check(x)

    def encode(self, x: Tensor) -> Tensor:
        self._centre = x.detach().clone()
        if not self.random_start:
            return self._centre.clone()
        gen = torch.Generator(device=x.device)
        gen.manual_seed(self.seed)
        n = x.shape[0]
        if self.norm == "linf":
            u = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype)
            noise = (2 * u - 1) * self.radius
        else:
            d = x[0].numel()
            direction = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
            norms = direction.flatten(1).norm(dim=1).clamp_min(torch.finfo(x.dtype).tiny)
            r = torch.rand(n, generator=gen, device=x.device, dtype=x.dtype).pow(1.0 / d) * self.radius
            # one radius per sample, broadcast over all of the sample's values (not the last axis)
            noise = direction * (r / norms).view((n,) + (1,) * (x.ndim - 1))
        return self.project(self._centre + noise, torch.arange(n, device=x.device))

    def decode(self, p: Tensor) -> Tensor:
        return p

    def project(self, p: Tensor, index: Tensor) -> Tensor:
        if self._centre is None:
            raise RuntimeError("BallChart.project called before encode: the ball's centres are unknown")
        centre = self._centre[index]
        delta = p - centre
        if self.norm == "linf":
            delta = delta.clamp(-self.radius, self.radius)
        else:
            norms = delta.flatten(1).norm(dim=1)
            scale = (self.radius / norms.clamp_min(torch.finfo(p.dtype).tiny)).clamp(max=1.0)
            delta = delta * scale.view((-1,) + (1,) * (p.ndim - 1))
        out = centre + delta
        if self.bounds is not None:
            out = out.clamp(*self.bounds)
        return out


class AdversarialCounterfactual(CounterfactualExplainer):
    """Ascent of the target class directly in pixel space: the adversarial baseline.

    With ``norm=None`` the search runs Adam in pixel space (:class:`xcf.PixelChart`, iterates
    clamped to ``bounds``) with the same loss ``-log softmax(f(x'))[k]``, stopping rule and budget as
    the other explainers, so comparisons with :class:`xcf.DiffeomorphicCounterfactual` are fair.
    With ``norm="linf"`` or ``"l2"`` and a ``radius`` it is targeted PGD inside the ball around each
    input (see :class:`BallChart`): sign steps for L-inf, normalised gradient steps for L2,
    an optional seeded random start, per-sample early stop at the target confidence.

    Args:
        forward_func: the classifier ``f``.
        bounds: ``(low, high)`` of the data range (iterates are clamped to it), or ``None``.
        norm: ``None`` (free Adam ascent), ``"linf"`` or ``"l2"`` (PGD).
        radius: the ball's radius; required with ``norm``, refused without it.
        output: what ``forward_func`` returns: ``"logits"`` (default), ``"probs"`` or ``"log_probs"``.
        random_start: PGD only: start from a uniform random point of the ball (ignored with
            ``norm=None``).  Because the draw depends on the batch, batched and per-example calls
            agree only with ``random_start=False``.
        seed: PGD only: seed of the random start.

    Example:
        >>> clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
        >>> x = torch.rand(2, 1, 4, 4)
        >>> pgd = AdversarialCounterfactual(clf, norm="linf", radius=0.3)
        >>> result = pgd.counterfactual(x, target=[2, 0])
        >>> bool(((result.counterfactual - x).abs() <= 0.3 + 1e-6).all())
        True
        >>> delta = AdversarialCounterfactual(clf).attribute(x, target=1, steps=50)
        >>> delta.shape
        torch.Size([2, 1, 4, 4])
    """

    method = "adversarial"

    def __init__(
        self,
        forward_func: Callable[..., Tensor],
        bounds: Optional[tuple[float, float]] = (0.0, 1.0),
        norm: Optional[str] = None,
        radius: Optional[float] = None,
        output: OutputKind = "logits",
        random_start: bool = True,
        seed: int = 0,
    ):
        bounds = _check_bounds(bounds)
        chart: Chart
        if norm is None:
            if radius is not None:
                raise ValueError(
                    f"radius={radius} given without a norm; pass norm='linf' or 'l2' for a ball "
                    "(PGD) or leave radius=None for the free pixel-space search"
                )
            chart = PixelChart(bounds)
        else:
            chart = BallChart(norm, radius, bounds, random_start=random_start, seed=seed)
        super().__init__(forward_func, chart, output)
        self.bounds = bounds
        self.norm = None if norm is None else chart.norm
        self.radius = None if norm is None else chart.radius
        self.random_start = bool(random_start)
        self.seed = int(seed)
