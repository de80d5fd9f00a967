"""Augmentation for training on small image sets: random translations."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["random_shift"]


def random_shift(x: Tensor, max_shift: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """Each image of ``x`` translated by its own random integer offset ``(dy, dx)``, ``|dy|, |dx| <= max_shift``.

    Pixels moved in from outside repeat the border (zeros for MNIST-like images on a black background).
    Offsets are drawn from ``generator`` (on its device, then moved to ``x``'s).

    Args:
        x: ``(N, C, H, W)`` images.
        max_shift: largest offset in pixels (``0``: ``x`` itself).
        generator: the random generator (default: torch's global one).

    Returns:
        A new ``(N, C, H, W)`` tensor on ``x``'s device and dtype.

    Example:
        >>> x = torch.zeros(2, 1, 5, 5); x[:, :, 2, 2] = 1
        >>> y = random_shift(x, 1, torch.Generator().manual_seed(0))
        >>> y.sum().item(), y.shape
        (2.0, torch.Size([2, 1, 5, 5]))
    """
    if x.ndim != 4:
        raise ValueError(f"x must be (N, C, H, W), got shape {tuple(x.shape)}")
    if isinstance(max_shift, bool) or not isinstance(max_shift, int) or max_shift < 0:
        raise ValueError(f"max_shift must be an int >= 0, got {max_shift!r}")
    if max_shift == 0:
        return x.clone()
    n, _, h, w = x.shape
    s = max_shift
    device = generator.device if generator is not None else torch.device("cpu")
    offsets = torch.randint(0, 2 * s + 1, (n, 2), generator=generator, device=device).to(x.device)
    padded = F.pad(x, (s, s, s, s), mode="replicate")
    rows = (torch.arange(h, device=x.device).view(1, h) + offsets[:, :1]).view(n, 1, h, 1)
    cols = (torch.arange(w, device=x.device).view(1, w) + offsets[:, 1:]).view(n, 1, 1, w)
    index = rows * (w + 2 * s) + cols                                   # (N, 1, H, W) flat indices
    flat = padded.flatten(2)                                            # (N, C, (H+2s)(W+2s))
    return flat.gather(2, index.flatten(2).expand(-1, x.shape[1], -1)).view_as(x)
