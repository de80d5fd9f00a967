"""Pixel space restricted to a norm ball around each input: the chart of projected gradient descent (PGD)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from xcf.charts.base import Chart, Coordinates
from xcf.charts.pixel import PixelChart

__all__ = ["BallChart"]


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

    :meth:`start` centres the balls on the call's inputs and returns the start of the search (the
    input itself, or a seeded uniform random point of the ball, clamped to ``bounds``) with a
    projection that maps the iterates of the samples ``index`` back onto the ball around their own
    centres, then into ``bounds``.  Nothing is kept between calls.  The step rule is the sign step
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

    def check(self, x: Tensor) -> None:
        PixelChart(self.bounds).check(x)

    def encode(self, x: Tensor) -> Tensor:
        """The start of the search: ``x`` itself, or a seeded uniform random point of the ball around it."""
        return self.start(x).start

    def start(self, x: Tensor, *, progress: bool = False) -> Coordinates:
        """Start and projection of one call: the balls are centred on this call's inputs."""
        centre = x.detach().clone()

        def project(p: Tensor, index: Tensor) -> Tensor:
            return self._project(p, centre[index])

        if not self.random_start:
            return Coordinates(centre.clone(), self.decode, project)
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
        return Coordinates(self._project(centre + noise, centre), self.decode, project)

    def decode(self, p: Tensor) -> Tensor:
        return p

    def _project(self, p: Tensor, centre: Tensor) -> Tensor:
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
