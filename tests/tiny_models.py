"""Tiny models with known answers, shared by the test modules."""

import torch
from torch import nn


def two_class_linear(w: torch.Tensor) -> nn.Module:
    """logits = [0, w·x]: p(class 1) = sigmoid(w·x)."""

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(w.clone())

        def forward(self, x):
            s = x.flatten(1) @ self.w
            return torch.stack([torch.zeros_like(s), s], dim=1)

    return M().eval()
