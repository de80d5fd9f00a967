"""The chart contract: a pair ``encode`` / ``decode`` between inputs and search coordinates."""

from __future__ import annotations

from typing import Any

from torch import Tensor

__all__ = ["Chart"]


class Chart:
    """Coordinates in which the search runs.

    ``decode`` must be differentiable; ``encode`` may be exact (a flow), the identity (pixels) or
    an optimisation (a generator's inversion).  ``project`` maps an iterate back onto the feasible
    set after each update (identity by default).  ``lr`` and ``steps`` are the defaults that suit
    the chart's coordinates; ``update`` is the step rule.
    """

    name: str = "chart"
    lr: float = 5e-2
    steps: int = 1000
    #: the engine's step rule for this chart: "adam", "sign" or "l2" (see :func:`xcf.search.search`)
    update: str = "adam"

    def encode(self, x: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def decode(self, p: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def project(self, p: Tensor, index: Tensor) -> Tensor:
        """Project iterates of the samples ``index`` onto the feasible set (default: no constraint)."""
        return p

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
