r"""A gated PixelCNN (van den Oord et al., 2016): an exact, autoregressive likelihood of discrete images.

The model factorises the probability of an image of ``D = C H W`` sub-pixels ``k_d`` in
``{0, ..., L - 1}`` (``L`` grey levels, ``x = k / (L - 1)`` in ``[0, 1]``) in raster order, rows top
to bottom, pixels left to right, and within a pixel channel by channel (R before G before B)::

    log P(k) = sum_d log p(k_d | k_<d),     p(. | k_<d) = softmax(logits_d)   (an L-way softmax),

so ``log_prob`` is an exact log-likelihood of the discrete data (no dequantisation bound) and

    bpd(x) = -log P(k) / (D ln 2)      (log2(L) = 8 bits/dim for a uniform model of 8-bit images).

It is independent of the flows of :mod:`xcf.models.flows` and can judge how realistic their (or any)
counterfactuals are.  Causality, ``logits_d`` depends on ``k_<d`` only, is built in:

* **two stacks** (gated PixelCNN).  The *vertical* stack convolves with a ``(k//2 + 1) x k`` kernel over
  the current and the ``k//2`` rows above (zero padding above and at the sides), so its features at row
  ``i`` depend on rows ``<= i`` only.  The *horizontal* stack convolves with a ``1 x (k//2 + 1)`` kernel
  over the current pixel and the ``k//2`` to its left in the same row.  The vertical stack feeds the
  horizontal one through a 1x1 convolution of its pre-activations *shifted down by one row*, so the
  horizontal stack sees all rows above (within the receptive field) and the pixels to the left: no
  blind spot.  The vertical stack never sees the horizontal one.
* **gates**: every layer computes ``2 h`` maps ``(a, b)`` and keeps ``tanh(a) * sigmoid(b)``; the
  horizontal stack of every block but the first is residual, ``h + W_1x1 (tanh(a) * sigmoid(b))``.
* **masks** on the current pixel, applied by multiplying the kernels with fixed 0/1 buffers (a mask that
  is all ones, e.g. every type-B mask of a grey-level model, is skipped).  Every feature map of the
  horizontal stack belongs to a channel group ``g`` in ``0..C-1`` (``h / C`` consecutive maps per group,
  the same split for ``a`` and ``b``), and the input channel ``c`` to group ``c``.  At the current pixel
  the first layer (mask **A**) lets group ``g`` read the input channels ``c < g`` and every later
  convolution (mask **B**) lets group ``g`` read the groups ``<= g``; the logits of channel ``c`` are
  read from the groups ``<= c``.  So the logits of channel ``c`` at a pixel depend on the pixels before it
  and on the channels ``< c`` of the pixel itself (the PixelCNN paper's channel masks), and with
  ``C = 1`` the first layer simply ignores the current pixel.
* a **head**: ``ReLU -> 1x1 -> ReLU -> 1x1`` (both masked B) to ``L`` logits per sub-pixel.

The network sees ``2 x - 1``.  :meth:`GatedPixelCNN.log_prob` first rounds to the grid,
``k = round(x (L - 1))``, and conditions on the rounded image, so off-grid counterfactuals are scored as
the discrete image they round to.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


__all__ = ["GatedPixelCNN"]

_MODEL_KEYS = ("shape", "hidden", "layers", "kernel", "first_kernel", "head", "levels")


def _check_int(name: str, value: Any, low: int, odd: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (odd and value % 2 == 0):
        raise ValueError(f"{name} must be {'an odd' if odd else 'an'} int >= {low}, got {value!r}")
    return value


def _check_shape(shape: Any) -> tuple[int, int, int]:
    ok = isinstance(shape, (tuple, list)) and len(shape) == 3
    ok = ok and all(not isinstance(s, bool) and isinstance(s, int) and s > 0 for s in shape)
    if not ok:
        raise ValueError(f"shape must be (channels, height, width) of positive ints, got {shape!r}")
    return int(shape[0]), int(shape[1]), int(shape[2])


def _groups(n: int, channels: int) -> Tensor:
    """The channel group of each of ``n`` feature maps: ``n / channels`` consecutive maps per group."""
    return torch.arange(n) * channels // n


def _center_mask(out_groups: Tensor, in_groups: Tensor, kernel: tuple[int, int], strict: bool) -> Optional[Tensor]:
    """0/1 mask of a kernel whose last row and column is the current pixel; ``None`` when all ones.

    At the current pixel output group ``g`` reads input group ``g'`` when ``g' < g`` (``strict``, mask A)
    or ``g' <= g`` (mask B); every other kernel position is allowed.
    """
    mask = torch.ones(len(out_groups), len(in_groups), *kernel)
    allowed = in_groups[None, :] < out_groups[:, None] if strict else in_groups[None, :] <= out_groups[:, None]
    mask[:, :, -1, -1] = allowed.float()
    return None if bool(mask.all()) else mask


def _init_like_conv(weight: Tensor, bias: Tensor) -> None:
    """PyTorch's default initialisation of ``nn.Conv2d`` / ``nn.Linear`` (Kaiming-uniform weights, uniform bias)."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    fan_in = weight[0].numel()
    nn.init.uniform_(bias, -1.0 / math.sqrt(fan_in), 1.0 / math.sqrt(fan_in))


class _Conv(nn.Module):
    """A convolution of channels-last maps ``(N, H, W, C)`` with explicit zero padding ``(left, right, top,
    bottom)`` and an optional fixed 0/1 kernel mask (a ``1 x 1`` kernel runs as a matrix product)."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int], pad: tuple[int, int, int, int] = (0, 0, 0, 0),
                 mask: Optional[Tensor] = None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cout, cin, *kernel))
        self.bias = nn.Parameter(torch.empty(cout))
        _init_like_conv(self.weight, self.bias)
        self.pad = tuple(pad)
        self.pointwise = tuple(kernel) == (1, 1) and not any(self.pad)
        self.register_buffer("mask", mask)
        if mask is not None:
            with torch.no_grad():
                self.weight.mul_(mask)

    def forward(self, t: Tensor) -> Tensor:
        weight = self.weight if self.mask is None else self.weight * self.mask
        if self.pointwise:
            return F.linear(t, weight[:, :, 0, 0], self.bias)
        if any(self.pad):
            left, right, top, bottom = self.pad
            t = F.pad(t, (0, 0, left, right, top, bottom))
        # a permuted channels-last tensor is what oneDNN convolves fastest on a CPU; the result is channels-last too
        return F.conv2d(t.permute(0, 3, 1, 2), weight, self.bias).permute(0, 2, 3, 1)

    def extra_repr(self) -> str:
        cout, cin, kh, kw = self.weight.shape
        return f"{cin}, {cout}, kernel=({kh}, {kw}), pad={self.pad}, masked={self.mask is not None}"


def _gate(t: Tensor) -> Tensor:
    """``tanh(a) * sigmoid(b)`` of the two halves of the last dimension (``tanh(a) = 2 sigmoid(2a) - 1``,
    several times faster than ``torch.tanh`` on a CPU)."""
    a, b = t.chunk(2, dim=-1)
    return (2.0 * torch.sigmoid(2.0 * a) - 1.0) * torch.sigmoid(b)


def _shift_down(t: Tensor) -> Tensor:
    """Move every row of ``(N, H, W, C)`` maps one down (zeros in the first row): row ``i`` then holds row ``i - 1``."""
    return F.pad(t, (0, 0, 0, 0, 1, 0))[:, :-1]


class _GatedBlock(nn.Module):
    """One gated layer: vertical and horizontal stacks, the shifted vertical-to-horizontal link, gates."""

    def __init__(self, cin: int, hidden: int, kernel: int, channels: int, first: bool):
        super().__init__()
        r = kernel // 2
        in_groups = torch.arange(channels) if first else _groups(hidden, channels)
        groups = _groups(hidden, channels)
        gate_groups = torch.cat([groups, groups])  # a and b of feature f share its group
        self.vertical = _Conv(cin, 2 * hidden, (r + 1, kernel), (r, r, r, 0))
        self.horizontal = _Conv(cin, 2 * hidden, (1, r + 1), (r, 0, 0, 0),
                                _center_mask(gate_groups, in_groups, (1, r + 1), strict=first))
        self.link = _Conv(2 * hidden, 2 * hidden, (1, 1))  # reads rows above only: no mask
        self.out = None if first else _Conv(hidden, hidden, (1, 1), mask=_center_mask(groups, groups, (1, 1), False))

    def forward(self, v: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        v_pre = self.vertical(v)
        h_pre = self.horizontal(h) + self.link(_shift_down(v_pre))
        gated = _gate(h_pre)
        return _gate(v_pre), gated if self.out is None else h + self.out(gated)


class GatedPixelCNN(nn.Module):
    r"""Gated PixelCNN over images ``(C, H, W)`` with ``levels`` grey levels per sub-pixel.

    A type-A first layer (kernel ``first_kernel``), ``layers`` gated residual blocks (kernel ``kernel``,
    type-B masks) and a two-layer 1x1 head to an ``L``-way softmax per sub-pixel; see the module
    docstring for the stacks, the masks and the channel order.  With ``r = first_kernel // 2 + layers *
    (kernel // 2)`` the receptive field reaches ``r + 1`` rows up, ``r`` columns to either side in the rows
    above and ``r`` columns to the left in the current row.  The defaults are a large model (several seconds
    per batch of 64 MNIST digits on one CPU thread); :func:`pixelcnn_recipe` gives the CPU-sized one.

    Args:
        shape: ``(C, H, W)`` of the images.
        hidden: feature maps per stack (at least ``C``; ``hidden / C`` per channel group).
        layers: gated residual blocks after the first layer (``>= 0``).
        kernel: odd kernel size ``k >= 3`` of the blocks (vertical ``(k//2 + 1) x k``, horizontal ``1 x (k//2 + 1)``).
        first_kernel: odd kernel size of the type-A first layer.
        head: feature maps of the head's hidden 1x1 layer (default: ``hidden``; at least ``C``).
        levels: grey levels ``L >= 2`` (``x = k / (L - 1)``).

    Example:
        >>> model = GatedPixelCNN((1, 6, 6), hidden=8, layers=1, kernel=3, first_kernel=3)
        >>> x = torch.randint(0, 256, (2, 1, 6, 6)) / 255.0
        >>> model(x).shape, model.log_prob(x).shape
        (torch.Size([2, 256, 1, 6, 6]), torch.Size([2]))
    """

    def __init__(self, shape: tuple[int, int, int] = (1, 28, 28), hidden: int = 64, layers: int = 8, kernel: int = 5,
                 first_kernel: int = 7, head: Optional[int] = None, levels: int = 256):
        super().__init__()
        c, h, w = _check_shape(shape)
        _check_int("hidden", hidden, 1)
        if hidden < c:
            raise ValueError(f"hidden must be at least the number of channels C={c} (one group per channel), "
                             f"got {hidden}")
        _check_int("layers", layers, 0)
        _check_int("kernel", kernel, 3, odd=True)
        _check_int("first_kernel", first_kernel, 3, odd=True)
        head = hidden if head is None else head
        _check_int("head", head, 1)
        if head < c:
            raise ValueError(f"head must be at least the number of channels C={c}, got {head}")
        _check_int("levels", levels, 2)
        self.shape = (c, h, w)
        self.hidden, self.layers, self.kernel, self.first_kernel = hidden, layers, kernel, first_kernel
        self.head_size, self.levels = head, levels
        self.first = _GatedBlock(c, hidden, first_kernel, c, first=True)
        self.blocks = nn.ModuleList(_GatedBlock(hidden, hidden, kernel, c, first=False) for _ in range(layers))
        self.head1 = _Conv(hidden, head, (1, 1), mask=_center_mask(_groups(head, c), _groups(hidden, c), (1, 1), False))
        out_groups = torch.arange(c * levels) // levels  # logits laid out channel-major: (C, L)
        self.head2 = _Conv(head, c * levels, (1, 1), mask=_center_mask(out_groups, _groups(head, c), (1, 1), False))

    @property
    def dims(self) -> int:
        """``D = C H W``, sub-pixels per image."""
        c, h, w = self.shape
        return c * h * w

    def config(self) -> dict[str, Any]:
        """The constructor's arguments, JSON ready: ``GatedPixelCNN(**model.config())`` rebuilds the architecture."""
        return {"shape": list(self.shape), "hidden": self.hidden, "layers": self.layers, "kernel": self.kernel,
                "first_kernel": self.first_kernel, "head": self.head_size, "levels": self.levels}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config().items())

    def _check_shape_of(self, x: Any) -> Tensor:
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise ValueError(f"x must be a floating-point tensor of images (N, {', '.join(map(str, self.shape))}), "
                             f"got {type(x).__name__ if not isinstance(x, Tensor) else x.dtype}")
        if x.ndim != 4 or tuple(x.shape[1:]) != self.shape:
            expected = "(N, " + ", ".join(map(str, self.shape)) + ")"
            raise ValueError(f"x must have shape {expected}, got {tuple(x.shape)}")
        return x

    def _check_values(self, x: Tensor) -> Tensor:
        x = self._check_shape_of(x)
        if x.numel() == 0:
            return x
        if bool(torch.isnan(x).any()):
            raise ValueError("x contains NaN values; the PixelCNN scores images in [0, 1]")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"x must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]; clamp counterfactuals to "
                             "[0, 1] before scoring")
        return x

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, L, C, H, W)`` of every sub-pixel given the ones before it, for images ``x`` in ``[0, 1]``.

        ``x`` is used as it is (not rounded), so the logits are differentiable in ``x``; the logits of a
        sub-pixel do not depend on it or on any later sub-pixel.  (A view of channels-last logits: the
        levels are the fastest-varying dimension in memory.)
        """
        return self._logits_last(x).permute(0, 4, 3, 1, 2)

    def _logits_last(self, x: Tensor) -> Tensor:
        """Logits ``(N, H, W, C, L)``, contiguous."""
        x = self._check_shape_of(x)
        z = x.to(self.first.vertical.weight.dtype).permute(0, 2, 3, 1) * 2.0 - 1.0  # (N, H, W, C)
        v, h = self.first(z, z)
        for block in self.blocks:
            v, h = block(v, h)
        out = self.head2(F.relu(self.head1(F.relu(h))))  # (N, H, W, C * L), channel-major
        n, (c, hh, ww) = x.shape[0], self.shape
        return out.view(n, hh, ww, c, self.levels)

    def _nll(self, k: Tensor) -> Tensor:
        """``-log p(k_d | k_<d)`` per sub-pixel ``(N, H, W, C)`` of integer images ``k`` ``(N, C, H, W)``."""
        logits = self._logits_last(k.to(self.first.vertical.weight.dtype) / (self.levels - 1))
        target = k.permute(0, 2, 3, 1).reshape(-1)
        nll = F.cross_entropy(logits.reshape(-1, self.levels), target, reduction="none")
        return nll.view(k.shape[0], *self.shape[1:], self.shape[0])

    def quantize(self, x: Tensor) -> Tensor:
        """The integer levels ``k = round(x (L - 1))`` (long) of images ``x`` in ``[0, 1]``, validated."""
        x = self._check_values(x)
        return torch.round(x * (self.levels - 1)).long()

    def log_prob(self, x: Tensor) -> Tensor:
        r"""Exact log-likelihood in nats of the discrete images ``k = round(x (L - 1))``, per sample.

        ``log P(k) = sum_d log softmax(logits_d)[k_d]`` over the ``D`` sub-pixels, with the logits computed
        from the rounded image ``k / (L - 1)``.  Differentiable in the parameters (not in ``x``).

        Args:
            x: images ``(N, C, H, W)`` in ``[0, 1]``.

        Returns:
            ``(N,)`` log-probabilities (``<= 0``).

        Raises:
            ValueError: for a wrong shape, NaN or values outside ``[0, 1]``.

        Example:
            >>> model = GatedPixelCNN((1, 4, 4), hidden=4, layers=0, kernel=3, first_kernel=3, levels=4)
            >>> bool((model.log_prob(torch.zeros(3, 1, 4, 4)) < 0).all())
            True
        """
        return -self._nll(self.quantize(x)).flatten(1).sum(1)

    def bits_per_dim(self, x: Tensor, batch_size: int = 256) -> Tensor:
        r"""Bits per dimension of every image, ``-log P(k) / (D ln 2)``, batched, without gradients.

        The model runs in eval mode on ``x``'s device; its training mode is restored afterwards and no
        parameter gradient is created.

        Args:
            x: images ``(N, C, H, W)`` in ``[0, 1]``.
            batch_size: images per forward pass.

        Returns:
            ``(N,)`` bits per dimension, on ``x``'s device, in ``x``'s dtype.

        Raises:
            ValueError: for a wrong shape, NaN, values outside ``[0, 1]`` or a bad ``batch_size``.

        Example:
            >>> model = GatedPixelCNN((1, 4, 4), hidden=4, layers=0, kernel=3, first_kernel=3, levels=4)
            >>> model.bits_per_dim(torch.rand(5, 1, 4, 4)).shape
            torch.Size([5])
        """
        _check_int("batch_size", batch_size, 1)
        x = self._check_values(x)
        flags = [(m, m.training) for m in self.modules()]
        out = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
        try:
            self.eval()
            with torch.no_grad():
                for i in range(0, x.shape[0], batch_size):
                    out[i:i + batch_size] = -self.log_prob(x[i:i + batch_size]).double()
        finally:
            for m, flag in flags:
                m.training = flag
        return (out / (self.dims * math.log(2))).to(x.dtype)
