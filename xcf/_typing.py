"""Type aliases shared by the whole package, in one place."""

from __future__ import annotations

from typing import Literal, Sequence, Tuple, Union

from torch import Tensor

__all__ = ["LatentShape", "OutputKind", "TargetType", "TensorOrTuple"]

#: what a classifier returns: logits (default), probabilities or log-probabilities
OutputKind = Literal["logits", "probs", "log_probs"]
#: Captum-style target: one class for all inputs, one per input, or a tensor of classes
TargetType = Union[int, Sequence[int], Tensor]
#: Captum-style inputs: a tensor, or a tuple of tensors (xcf explains models with one input)
TensorOrTuple = Union[Tensor, Tuple[Tensor, ...]]
#: the shape of one latent of a generator: ``16`` or ``(16,)``, ``(16, 1, 1)``...
LatentShape = Union[int, Sequence[int]]
