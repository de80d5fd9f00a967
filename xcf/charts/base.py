"""The chart contract: coordinates a search runs in, and what one search call needs from them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from torch import Tensor

__all__ = ["Chart", "Coordinates"]


@dataclass
class Coordinates:
    """What a chart gives one search call for one batch of inputs.

    Attributes:
        start: ``(N, ...)`` starting coordinates ``encode(x)``.
        decode: coordinates of the samples still searching -> inputs (differentiable, inputs' shape).
        project: ``project(p, index)`` maps updated iterates of the samples ``index`` (positions in the
            batch) back onto the feasible set, or ``None``.
        info: per-sample tensors the result should record (e.g. inversion steps).
    """

    start: Tensor
    decode: Callable[[Tensor], Tensor]
    project: Optional[Callable[[Tensor, Tensor], Tensor]] = None
    info: dict[str, Tensor] = field(default_factory=dict)


class Chart:
    """Coordinates in which the search runs.

    ``decode`` must be differentiable; ``encode`` may be exact (a flow), the identity (pixels) or an
    optimisation (a generator's inversion).  ``project`` maps an iterate back onto the feasible set after
    each update (identity by default).  ``lr``, ``steps``, ``update`` and ``confidence`` are the defaults
    that suit the chart's coordinates; ``needs_eval`` says whether the chart's own modules must be in eval mode.

    A chart keeps no state between calls: :meth:`start` returns everything one search needs for one
    batch (:class:`Coordinates`), so one chart serves inputs of any shape it supports, in any order.
    """

    name: str = "chart"
    lr: float = 5e-2
    steps: int = 1000
    #: the engine's step rule for this chart: "adam", "sign" or "l2" (see :func:`xcf.engine.search`)
    update: str = "adam"
    #: the default stopping confidence of a class target: stop once ``softmax(f(x'))[k] >= confidence``
    confidence: float = 0.99
    #: whether the chart's modules must be in eval mode (flows: dequantisation noise, ActNorm init)
    needs_eval: bool = False

    def encode(self, x: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def decode(self, p: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def project(self, p: Tensor, index: Tensor) -> Tensor:
        """Project iterates of the samples ``index`` onto the feasible set (default: no constraint)."""
        return p

    def start(self, x: Tensor, *, progress: bool = False) -> Coordinates:
        """The coordinates of one search call on ``x`` (default: ``encode``, ``decode``, ``project``)."""
        return Coordinates(self.encode(x).detach(), self.decode, self.project)

    def step_size(self, start: Tensor) -> float:
        """The default step size of a search that starts at ``start`` (default: :attr:`lr`)."""
        return self.lr

    def modules(self) -> list[Any]:
        """The user's modules the chart calls (checked for mode and restored afterwards)."""
        return []

    def check(self, x: Tensor) -> None:
        """Check that the chart can handle inputs like ``x``; raise ``ValueError`` otherwise."""

    def check_reconstruction(self, error: Tensor) -> dict[str, Tensor]:
        """Judge the per-sample RMS error of ``decode(encode(x))``.

        Raise ``ValueError`` if it makes the chart unusable; return per-sample tensors to record in
        the result's ``info`` (e.g. a poor-reconstruction flag).  Default: accept, record nothing.
        """
        return {}
