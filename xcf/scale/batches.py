"""Global batches of a data set: which positions a rank takes, checked collation, targets per batch."""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional, Sequence, Union

import torch
from torch import Tensor
from torch.utils.data import (
    Sampler,
    default_collate,
)

from xcf._io import fingerprint_tensors

__all__ = ["RunnerUp", "TargetRule", "shift_target"]


#: a class for every input, a per-item tensor of classes, or a rule ``target(x, y) -> (B,)`` classes
TargetRule = Union[int, Tensor, Callable[[Tensor, Optional[Tensor]], Tensor]]

#: per-method arrays every shard holds (besides one array per metric and per-sample ``info`` entry)
RESULT_FIELDS = ("counterfactual", "reconstruction", "latent", "success", "steps", "score", "start_score",
                 "reconstruction_error")
IMAGE_FIELDS = ("counterfactual", "reconstruction", "latent")
# ------------------------------------------------------------------------------------- batching
class _RankBatches(Sampler[list[int]]):
    """Global batches ``b`` of this rank (``b % world == rank``) that are not yet finished."""

    def __init__(self, batches: Sequence[int], n: int, batch_size: int):
        self.batches, self.n, self.batch_size = list(batches), n, batch_size

    def __iter__(self) -> Iterator[list[int]]:
        for b in self.batches:
            yield list(range(b * self.batch_size, min((b + 1) * self.batch_size, self.n)))

    def __len__(self) -> int:
        return len(self.batches)


class _Collate:
    """``default_collate`` after checking every input's shape (a clear error instead of torch.stack's)."""

    def __init__(self, sample_shape: tuple[int, ...]):
        self.sample_shape = sample_shape

    def __call__(self, items: list[Any]) -> Any:
        for j, item in enumerate(items):
            x = item[0] if isinstance(item, (tuple, list)) and item else item
            if isinstance(x, Tensor) and tuple(x.shape) != self.sample_shape:
                raise ValueError(f"item {j} of the batch has shape {tuple(x.shape)}, expected {self.sample_shape} like "
                                 "item 0 of the data set: the data set yields inconsistent shapes")
        return default_collate(items)


def _split_item(item: Any, where: str) -> tuple[Tensor, Optional[Tensor]]:
    """``(x, y)`` of a data-set item or a collated batch: a tensor, or ``(tensor, label)`` (``y`` None if absent)."""
    if isinstance(item, Tensor):
        return item, None
    if isinstance(item, (tuple, list)) and len(item) in (1, 2) and isinstance(item[0], Tensor):
        return item[0], (torch.as_tensor(item[1]) if len(item) == 2 else None)
    raise TypeError(f"{where}: the data set must yield an input tensor or (input, label); got {type(item).__name__}")


def shift_target(shift: int, num_classes: int) -> Callable[[Tensor, Optional[Tensor]], Tensor]:
    """The target rule ``(y + shift) mod num_classes`` (needs labelled data)."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")

    def rule(x: Tensor, y: Optional[Tensor]) -> Tensor:
        if y is None:
            raise ValueError("the target rule (y + shift) mod C needs labels, but the data set yields none")
        return (y.long() + shift) % num_classes

    rule.xcf_config = f"(y + {shift}) mod {num_classes}"  # type: ignore[attr-defined]
    return rule


class RunnerUp:
    """The target rule "the classifier's second most likely class" (needs no labels).

    Example:
        >>> clf = torch.nn.Linear(3, 3, bias=False)
        >>> _ = torch.nn.init.eye_(clf.weight)
        >>> RunnerUp(clf)(torch.tensor([[3.0, 1.0, 2.0]]), None)
        tensor([2])
    """

    xcf_config = "runner-up class of the classifier"

    def __init__(self, classifier: Callable[[Tensor], Tensor]):
        self.classifier = classifier

    def __call__(self, x: Tensor, y: Optional[Tensor]) -> Tensor:
        params = list(self.classifier.parameters()) if isinstance(self.classifier, torch.nn.Module) else []
        device = params[0].device if params else x.device
        with torch.no_grad():
            logits = self.classifier(x.to(device))
        if logits.ndim != 2 or logits.shape[1] < 2:
            raise ValueError(f"the runner-up target needs logits of shape (N, C) with C >= 2, got {tuple(logits.shape)}")
        return logits.topk(2, dim=1).indices[:, 1].cpu()


def _targets(rule: TargetRule, x: Tensor, y: Optional[Tensor], index: Tensor, b: int) -> Tensor:
    if isinstance(rule, bool):
        raise TypeError("target must be an int class, a tensor of classes or a callable (x, y) -> classes")
    if isinstance(rule, int):
        return torch.full((x.shape[0],), rule, dtype=torch.long)
    t = rule[index] if isinstance(rule, Tensor) else rule(x, y)
    t = torch.as_tensor(t).long().reshape(-1)
    if t.shape[0] != x.shape[0]:
        raise ValueError(f"batch {b}: the target rule returned {t.shape[0]} targets for {x.shape[0]} inputs")
    return t.cpu()


def _rule_config(rule: TargetRule) -> str:
    if isinstance(rule, int):
        return f"class {rule}"
    if isinstance(rule, Tensor):
        return f"per-item classes {fingerprint_tensors(rule)}"
    return getattr(rule, "xcf_config", getattr(rule, "__qualname__", type(rule).__name__))
