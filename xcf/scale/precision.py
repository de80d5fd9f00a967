"""Reduced precision and compilation of the audited classifier for large audits."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["accelerate"]


# ------------------------------------------------------------------------------------ precision
class _Autocast(nn.Module):
    """Runs the wrapped classifier under ``torch.autocast`` and returns float32 logits."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model, self.dtype = model, dtype
        self.training = model.training  # mirror, without touching the wrapped model's mode

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(device_type=x.device.type, dtype=self.dtype):
            out = self.model(x)
        return out.float()


def accelerate(classifier: nn.Module, precision: str = "fp32", compile: bool = False) -> nn.Module:
    """The classifier with mixed precision and/or ``torch.compile`` (the GPU recipe's knobs).

    Mixed precision is applied to the classifier only: flows and generators keep float32, since
    log-determinants, inversions and the small steps of the search need its precision.

    Args:
        classifier: the audited classifier (left as it is; the wrapper holds it).
        precision: ``"fp32"`` (unchanged), ``"bf16"`` or ``"fp16"`` (autocast; fp16 on CUDA only).
        compile: wrap in ``torch.compile`` (one compilation per input shape; pays off for many batches).
    """
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be 'fp32', 'bf16' or 'fp16', got {precision!r}")
    model = classifier
    if precision != "fp32":
        model = _Autocast(model, torch.bfloat16 if precision == "bf16" else torch.float16)
    if compile:
        model = torch.compile(model)
    return model
