"""Pixel space: the identity chart, with iterates kept inside the data range."""

from __future__ import annotations

from torch import Tensor

from xcf.charts.base import Chart

__all__ = ["PixelChart"]


class PixelChart(Chart):
    """Search directly in input space; iterates are clamped to ``bounds`` after every update.

    Because ``decode`` is the identity and the projection keeps iterates in range, the classifier
    judges exactly the tensor that is returned.

    Args:
        bounds: ``(low, high)`` of the data range, or ``None`` for no clamping.
        update: the engine's step rule: ``"adam"`` (default), ``"sign"`` or ``"l2"`` (normalised
            gradient steps, which concentrate a change on the pixels the classifier is most
            sensitive to, where Adam moves every pixel by about the same amount).
    """

    name = "pixel"
    lr = 5e-3
    steps = 1000

    def __init__(self, bounds: tuple[float, float] | None = (0.0, 1.0), update: str = "adam",
                 lr: float | None = None):
        if update not in ("adam", "sign", "l2"):
            raise ValueError(f"update must be 'adam', 'sign' or 'l2', got {update!r}")
        self.update = update
        if lr is not None:
            if not lr > 0:
                raise ValueError(f"lr must be > 0, got {lr}")
            self.lr = float(lr)
        if bounds is not None:
            lo, hi = bounds
            if not lo < hi:
                raise ValueError(f"bounds must satisfy low < high, got {bounds}")
        self.bounds = bounds

    def encode(self, x: Tensor) -> Tensor:
        return x.detach().clone()

    def decode(self, p: Tensor) -> Tensor:
        return p

    def project(self, p: Tensor, index: Tensor) -> Tensor:
        return p if self.bounds is None else p.clamp_(*self.bounds)

    def check(self, x: Tensor) -> None:
        if self.bounds is not None:
            lo, hi = self.bounds
            if bool((x < lo).any()) or bool((x > hi).any()):
                raise ValueError(
                    f"inputs lie outside bounds {self.bounds} (min {float(x.min()):.4g}, "
                    f"max {float(x.max()):.4g}); pass the data range as bounds"
                )
