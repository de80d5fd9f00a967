"""What a counterfactual search returns: :class:`CounterfactualResult`, one row per input."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor

__all__ = ["CounterfactualResult"]


@dataclass
class CounterfactualResult:
    """Everything a counterfactual search produced, one row per input.

    Attributes:
        inputs: the inputs ``x``, shape ``(N, ...)``.
        counterfactual: the counterfactuals ``x'`` (the first iterate that reached the objective, or
            the last iterate for failures), shape of ``inputs``.
        latent: the chart coordinates of ``counterfactual``.
        latent_start: the coordinates the search started from (``encode(x)``).
        reconstruction: ``decode(encode(x))``, shape of ``inputs``.
        reconstruction_error: per-sample root-mean-square of ``reconstruction - inputs``.
        target: per-sample target (class index for class objectives).
        success: per-sample bool: the objective was reached within the step budget.
        steps: per-sample number of optimiser updates made before stopping.
        score: per-sample objective score at ``counterfactual`` (for class objectives, the target
            probability; also available as :attr:`target_prob`).
        start_score: the score at the start of the search (at the reconstruction).
        trace: ``(N, steps + 1)`` score after each update; NaN after a sample stopped.
        wall_time: seconds the whole call took (encoding included).
        method: the explainer that made it (``"diffeomorphic"``, ``"approximate"``, ``"adversarial"``).
        info: extra, method-specific per-sample tensors (e.g. a poor-reconstruction flag).
    """

    inputs: Tensor
    counterfactual: Tensor
    latent: Tensor
    latent_start: Tensor
    reconstruction: Tensor
    reconstruction_error: Tensor
    target: Tensor
    success: Tensor
    steps: Tensor
    score: Tensor
    start_score: Tensor
    trace: Tensor
    wall_time: float
    method: str = ""
    info: dict[str, Tensor] = field(default_factory=dict)

    @property
    def target_prob(self) -> Tensor:
        """The target-class probability at the counterfactual (the score of a class objective)."""
        return self.score

    @property
    def difference(self) -> Tensor:
        """The difference map ``x' - x``."""
        return self.counterfactual - self.inputs

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def out_of_range(self, bounds: tuple[float, float] = (0.0, 1.0)) -> Tensor:
        """Per-sample share of the counterfactual's entries outside the data range ``bounds``.

        Diffeomorphic counterfactuals can leave ``[0, 1]`` (a flow's logit range is slightly wider);
        ``(result.out_of_range() > 0).float().mean()`` is the share of counterfactuals that do.
        ``DiffeomorphicCounterfactual(..., bounds=(0, 1))`` projects them onto the range instead.

        Example:
            >>> r = CounterfactualResult(torch.zeros(2, 4), torch.tensor([[0, 1.2, 0, 0], [0.5, 0.5, 0.5, 0.5]]),
            ...     *[torch.zeros(2, 4)] * 3, torch.zeros(2), torch.zeros(2, dtype=torch.long),
            ...     torch.ones(2, dtype=torch.bool), torch.ones(2, dtype=torch.long), torch.ones(2), torch.zeros(2),
            ...     torch.zeros(2, 2), 0.0)
            >>> r.out_of_range().tolist()
            [0.25, 0.0]
        """
        lo, hi = bounds
        if not lo < hi:
            raise ValueError(f"bounds must satisfy low < high, got {bounds}")
        xc = self.counterfactual.detach().flatten(1)
        outside = (xc < lo) | (xc > hi)
        return outside.float().mean(dim=1) if xc.shape[1] else xc.new_zeros(len(self))

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean()) if len(self) else float("nan")

    @property
    def time_per_sample(self) -> float:
        return self.wall_time / max(len(self), 1)

    def __getitem__(self, index: Any) -> "CounterfactualResult":
        """Select samples (int, slice, bool mask or index tensor).

        The wall time is apportioned by sample count, so :attr:`time_per_sample` is unchanged.
        """
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        n_before = len(self)
        changes: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                changes[f.name] = value[index]
        changes["info"] = {k: v[index] for k, v in self.info.items()}
        changes["wall_time"] = self.wall_time * changes["inputs"].shape[0] / max(n_before, 1)
        return replace(self, **changes)

    def to(self, device: torch.device | str) -> "CounterfactualResult":
        changes = {f.name: getattr(self, f.name).to(device) for f in fields(self)
                   if isinstance(getattr(self, f.name), Tensor)}
        changes["info"] = {k: v.to(device) for k, v in self.info.items()}
        return replace(self, **changes)

    @classmethod
    def concat(cls, parts: "list[CounterfactualResult]") -> "CounterfactualResult":
        """Join results of consecutive batches: rows in order, traces padded with NaN, wall times added.

        ``info`` keeps the entries every part has.
        """
        if not parts:
            raise ValueError("concat needs at least one result")
        first = parts[0]
        changes: dict[str, Any] = {}
        width = max(r.trace.shape[1] for r in parts)
        for f in fields(first):
            value = getattr(first, f.name)
            if f.name == "trace":
                changes["trace"] = torch.cat([torch.nn.functional.pad(r.trace, (0, width - r.trace.shape[1]),
                                                                      value=float("nan")) for r in parts])
            elif isinstance(value, Tensor):
                changes[f.name] = torch.cat([getattr(r, f.name) for r in parts])
        keys = set(first.info).intersection(*(r.info for r in parts[1:]))
        changes["info"] = {k: torch.cat([r.info[k] for r in parts]) for k in first.info if k in keys}
        changes["wall_time"] = sum(r.wall_time for r in parts)
        return replace(first, **changes)

    def summary(self) -> dict[str, float]:
        """Success rate, median steps (successes), mean score and time per sample."""
        ok = self.success
        return {
            "n": float(len(self)),
            "success_rate": self.success_rate,
            "median_steps": float(self.steps[ok].float().median()) if bool(ok.any()) else float("nan"),
            "mean_score": float(self.score.float().mean()),
            "mean_reconstruction_error": float(self.reconstruction_error.float().mean()),
            "time_per_sample_s": self.time_per_sample,
        }
