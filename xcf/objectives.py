"""What the search optimises: objectives on the model's output.

Every objective answers three questions per sample, given the model output for the samples still
searching: the loss to *minimise*, the score that is reported and traced, and whether the
stopping threshold is reached.  The search engine (:mod:`xcf.engine`) never looks inside.

:class:`ClassTarget` is the default: minimise the cross-entropy toward class ``k`` and stop once
``softmax(f(x'))[k] >= confidence``.
"""

from __future__ import annotations

import warnings
from typing import Callable, Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from xcf._typing import OutputKind, TargetType
from xcf._validation import as_target_tensor, check_number, check_output_kind

__all__ = ["Objective", "ClassTarget", "ScalarTarget", "OutputKind", "TargetType", "as_target_tensor"]



class Objective(Protocol):
    """The contract between an objective and the search engine.

    ``index`` holds, for each row of ``output``, its position in the original batch, so that an
    objective with per-sample parameters (one target class per input) can select them while the
    engine shrinks its active set.
    """

    def check(self, output: Tensor) -> None:
        """Raise a ``ValueError`` naming the problem if ``output`` does not fit the objective."""

    def __call__(self, output: Tensor, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Return ``(loss, score, reached)``, each of shape ``(len(output),)``."""


def log_probabilities(output: Tensor, kind: OutputKind) -> Tensor:
    """Log class probabilities from a classifier output of the given kind."""
    if kind == "logits":
        return F.log_softmax(output, dim=1)
    if kind == "log_probs":
        return output
    if kind == "probs":
        return output.clamp_min(torch.finfo(output.dtype).tiny).log()
    raise ValueError(f"output must be 'logits', 'probs' or 'log_probs', got {kind!r}")


def _check_output_kind(output: Tensor, kind: OutputKind) -> None:
    """Tell logits from probabilities (:func:`xcf._validation.check_output_kind`): a warning when probabilities
    come as ``"logits"``, an error when values outside the declared kind's range come as ``"probs"`` or
    ``"log_probs"``."""
    check_output_kind(output, kind, stacklevel=4)


class ClassTarget:
    """Reach class ``target`` with probability at least ``confidence``.

    loss = -log p_k(x'),  score = p_k(x'),  reached = p_k(x') >= confidence

    Args:
        target: ``(N,)`` long tensor of class indices, one per input.
        confidence: the stopping threshold on the target probability, in (0, 1].
        output: what the classifier returns: ``"logits"`` (default), ``"probs"`` or ``"log_probs"``.

    Example:
        >>> obj = ClassTarget(torch.tensor([1, 0]), confidence=0.9)
        >>> loss, score, reached = obj(torch.tensor([[0.0, 5.0], [0.0, 5.0]]), torch.arange(2))
        >>> reached.tolist()
        [True, False]
    """

    def __init__(self, target: Tensor, confidence: float = 0.99, output: OutputKind = "logits"):
        confidence = check_number(confidence, "confidence")
        if not 0.0 < confidence <= 1.0:
            raise ValueError(f"confidence must be in (0, 1], got {confidence}")
        if output not in ("logits", "probs", "log_probs"):
            raise ValueError(f"output must be 'logits', 'probs' or 'log_probs', got {output!r}")
        self.target = target
        self.confidence = float(confidence)
        self.output = output

    def check(self, output: Tensor) -> None:
        if output.ndim != 2:
            raise ValueError(
                f"the classifier must return a (batch, classes) tensor, got shape {tuple(output.shape)}"
            )
        n_classes = output.shape[1]
        bad = (self.target < 0) | (self.target >= n_classes)
        if bool(bad.any()):
            values = sorted(set(self.target[bad].tolist()))
            raise ValueError(
                f"target {values} out of range: the classifier has {n_classes} classes (0..{n_classes - 1})"
            )
        _check_output_kind(output.detach(), self.output)

    def __call__(self, output: Tensor, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logp = log_probabilities(output, self.output).gather(1, self.target[index].unsqueeze(1)).squeeze(1)
        score = logp.exp()
        return -logp, score, score >= self.confidence


class ScalarTarget:
    """Push one scalar of the model output past a threshold (regression, a sigmoid attribute, a margin).

    ``s(x') = transform(select(f(x')))``; with ``direction="increase"`` the loss is ``-s`` and the
    objective is reached once ``s >= threshold``; with ``"decrease"`` the loss is ``s`` and it is
    reached once ``s <= threshold``.  With ``transform="sigmoid"`` the loss is the binary
    cross-entropy toward 1 (or 0), ``-log σ(±logit)``, which does not vanish when the attribute is
    far from the threshold.

    ``check`` (called by the engine on the starting output) warns when samples already satisfy the
    objective: they stop at once with 0 steps and ``success=True``, their counterfactual is the
    start.  ``record`` gives the per-sample threshold and direction that explainers store in
    ``result.info``.

    Args:
        threshold: the value to pass: a float, or a tensor with one value per input.
        direction: ``"increase"`` or ``"decrease"``.
        select: which scalar: ``None`` (the output is ``(N,)`` or ``(N, 1)``), an output column
            (int, like Captum's ``target``), or a callable ``output -> (N,)`` tensor.
        transform: ``None`` or ``"sigmoid"`` (the output is a logit of an attribute).

    Example:
        >>> count = ScalarTarget(threshold=10.0, direction="increase")
        >>> loss, score, reached = count(torch.tensor([[12.0], [3.0]]), torch.arange(2))
        >>> reached.tolist()
        [True, False]
    """

    def __init__(
        self,
        threshold: float | Tensor,
        direction: Literal["increase", "decrease"] = "increase",
        select: int | Callable[[Tensor], Tensor] | None = None,
        transform: Literal["sigmoid"] | None = None,
    ):
        if direction not in ("increase", "decrease"):
            raise ValueError(f"direction must be 'increase' or 'decrease', got {direction!r}")
        if transform not in (None, "sigmoid"):
            raise ValueError(f"transform must be None or 'sigmoid', got {transform!r}")
        if isinstance(select, bool) or not (select is None or isinstance(select, int) or callable(select)):
            raise ValueError(f"select must be None, an output index or a callable, got {select!r}")
        t = torch.as_tensor(threshold, dtype=torch.float64)
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"threshold must be finite, got {threshold!r}")
        if transform == "sigmoid" and bool(((t <= 0) | (t >= 1)).any()):
            raise ValueError(f"a sigmoid attribute's threshold must lie in (0, 1), got {threshold!r}")
        self.threshold = t
        self.direction = direction
        self.select = select
        self.transform = transform

    def value(self, output: Tensor) -> Tensor:
        """The selected scalar before ``transform`` (a logit for sigmoid attributes), shape ``(N,)``."""
        if callable(self.select):
            v = self.select(output)
            if not isinstance(v, Tensor) or v.shape != (output.shape[0],):
                got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
                raise ValueError(f"the objective's select callable must return shape ({output.shape[0]},), got {got}")
            return v
        if self.select is None:
            if output.ndim == 1:
                return output
            if output.ndim == 2 and output.shape[1] == 1:
                return output[:, 0]
            raise ValueError(
                f"the model returns shape {tuple(output.shape)}: pass select=<output index> "
                "or a callable to choose the scalar to optimise"
            )
        if output.ndim != 2 or not -output.shape[1] <= self.select < output.shape[1]:
            raise ValueError(f"output index {self.select} does not exist: the model returns shape {tuple(output.shape)}")
        return output[:, self.select]

    def check(self, output: Tensor) -> None:
        """Check the output's shape and the threshold's length; warn about samples already past it."""
        self.value(output)
        n = output.shape[0]
        if self.threshold.numel() not in (1, n) and self.threshold.ndim > 0:
            raise ValueError(f"threshold has {self.threshold.numel()} entries but the batch has {n} inputs")
        with torch.no_grad():
            _, score, reached = self(output.detach(), torch.arange(n, device=output.device))
        if bool(reached.any()):
            rows = reached.nonzero().flatten().tolist()
            relation = ">=" if self.direction == "increase" else "<="
            warnings.warn(
                f"{len(rows)} of {n} samples already satisfy the objective (score {relation} threshold) at the "
                f"start (samples {rows[:10]}{'...' if len(rows) > 10 else ''}, scores "
                f"{[round(float(s), 4) for s in score[reached][:10]]}): they stop at once with 0 steps and "
                "success=True, and their counterfactual is the start",
                UserWarning,
                stacklevel=2,
            )

    def record(self, n: int, device: torch.device | str | None = None) -> dict[str, Tensor]:
        """Per-sample ``threshold`` (float64) and ``direction`` (+1 increase, -1 decrease) for ``result.info``."""
        thr = self.threshold.to(device=device).reshape(-1)
        thr = thr.expand(n).clone() if thr.numel() == 1 else thr.clone()
        sign = 1 if self.direction == "increase" else -1
        return {"threshold": thr, "direction": torch.full((n,), sign, dtype=torch.int8, device=device)}

    def __call__(self, output: Tensor, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        v = self.value(output)
        thr = self.threshold.to(device=v.device, dtype=v.dtype)
        if thr.ndim > 0 and thr.numel() > 1:
            thr = thr[index]
        sign = 1.0 if self.direction == "increase" else -1.0
        if self.transform == "sigmoid":
            score = torch.sigmoid(v)
            loss = -F.logsigmoid(sign * v)
        else:
            score = v
            loss = -sign * v
        reached = score >= thr if self.direction == "increase" else score <= thr
        return loss, score, reached
