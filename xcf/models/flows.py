r"""Normalizing flows for images (RealNVP and Glow on nflows), with the pre-processing inside the flow.

Every flow built here is an :class:`nflows.flows.Flow` whose transform maps *pixel space* to the base
space ``R^D`` (``D`` = number of pixels) in three exact, invertible stages::

    x in [0, 1]  --Dequantize-->  t in (0, 1)  --Logit-->  y in R^D  --RealNVP / Glow-->  z ~ N(0, I)

* :class:`Dequantize` with ``L`` grey levels (``x = k / (L - 1)``, ``k`` integer):
  ``t = (x (L - 1) + u) / L``.  In training mode ``u ~ U(0, 1)`` per pixel (uniform dequantisation:
  ``t`` is uniform on the cell ``[k / L, (k + 1) / L)`` of the integer ``k``); in eval mode ``u = 1/2``
  (the cell's centre), so the whole flow is a deterministic bijection of pixel space.  The map is
  affine in ``x`` in both modes: ``log|det| = D log((L - 1) / L)``.
* :class:`Logit` with ``alpha``: ``y = logit(alpha + (1 - 2 alpha) t)``,
  ``log|det| = sum_i [log(1 - 2 alpha) - log s_i - log(1 - s_i)]`` with ``s = alpha + (1 - 2 alpha) t``.
* multi-scale RealNVP (affine couplings with checkerboard and channel masks, squeezing, factoring
  out half of the variables after each scale) or Glow (ActNorm, invertible 1x1 convolution, affine
  coupling per step).  Coupling scales are bounded: ``log s = b tanh(h / b)`` with ``b = scale_bound``.

So in eval mode ``flow.transform_to_noise(x)`` is ``z = g^{-1}(x)`` and ``flow._transform.inverse(z)``
is ``x = g(z)``: an exact chart (float32 round trip error about 1e-6) whose image is an open box
slightly larger than ``[0, 1]^D``.  ``flow.log_prob(x)`` is the density of the continuous variable in
pixel space; :func:`bits_per_dim` turns it into the discrete data's bits per dimension.

Bits per dimension (Theis et al., 2016).  For discrete ``k`` the dequantised ``t`` has density
``p_t`` on ``[0, 1]^D`` and ``log P(k) >= E_u[log p_t(t)] - D log L``, so

    bpd(x) = (-log p_t(t) + D log L) / (D ln 2),   log p_t(t) = flow.log_prob(x) - D log((L - 1) / L),

an upper bound on the code length of ``k`` in expectation over ``u`` (exact for the uniform noise
the flow was trained with; ``log2(L)`` for a uniform model).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from nflows.distributions.normal import StandardNormal
from nflows.flows.base import Flow
from nflows.transforms.base import CompositeTransform, MultiscaleCompositeTransform, Transform
from nflows.transforms.conv import OneByOneConvolution
from nflows.transforms.coupling import AffineCouplingTransform
from nflows.transforms.normalization import ActNorm
from nflows.transforms.reshape import SqueezeTransform
from torch import Tensor, nn

from xcf.datasets import DIGITS_LEVELS, load_digits  # noqa: F401  (the doctests use load_digits)

__all__ = [
    "Dequantize",
    "Logit",
    "BoundedAffineCoupling",
    "realnvp_flow",
    "glow_flow",
]


def _per_sample(x: Tensor, value: Tensor | float) -> Tensor:
    return x.new_ones(x.shape[0]) * value


class Dequantize(Transform):
    r"""Uniform dequantisation of ``L``-level pixels, ``t = (x (L - 1) + u) / L``.

    Training mode draws ``u ~ U(0, 1)`` independently per pixel; eval mode uses ``u = 1/2`` and is an
    exact bijection ``[0, 1] -> [1/(2L), 1 - 1/(2L)]``.  The inverse is always the eval-mode one,
    ``x = (t L - 1/2) / (L - 1)``.  ``log|det dt/dx| = D log((L - 1) / L)`` in both modes.

    Args:
        levels: number of grey levels ``L >= 2`` (pixels ``x = k / (L - 1)``).

    Example:
        >>> dq = Dequantize(17).eval()
        >>> t, logdet = dq(torch.zeros(2, 1, 8, 8))
        >>> bool(torch.allclose(t, torch.full_like(t, 0.5 / 17)))
        True
    """

    def __init__(self, levels: int):
        super().__init__()
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
            raise ValueError(f"levels must be an int >= 2, got {levels!r}")
        self.levels = levels

    def _logdet(self, x: Tensor) -> Tensor:
        dims = x[0].numel()
        return _per_sample(x, dims * math.log((self.levels - 1) / self.levels))

    def forward(self, inputs: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        L = self.levels
        u = torch.rand_like(inputs) if self.training else 0.5
        return (inputs * (L - 1) + u) / L, self._logdet(inputs)

    def inverse(self, inputs: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        L = self.levels
        return (inputs * L - 0.5) / (L - 1), -self._logdet(inputs)

    def extra_repr(self) -> str:
        return f"levels={self.levels}"


class Logit(Transform):
    r"""``y = logit(s)`` with ``s = alpha + (1 - 2 alpha) t``, mapping ``(0, 1)`` onto ``R``.

    ``log|det| = sum_i [log(1 - 2 alpha) - log s_i - log(1 - s_i)]``; the inverse is
    ``t = (sigmoid(y) - alpha) / (1 - 2 alpha)``.

    Args:
        alpha: margin in ``[0, 1/2)`` that keeps the logit away from ``0`` and ``1``.

    Example:
        >>> y, logdet = Logit(0.05)(torch.full((1, 3), 0.5))
        >>> y
        tensor([[0., 0., 0.]])
    """

    def __init__(self, alpha: float = 0.01):
        super().__init__()
        if not 0.0 <= alpha < 0.5:
            raise ValueError(f"alpha must be in [0, 0.5), got {alpha!r}")
        self.alpha = float(alpha)

    def forward(self, inputs: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        a = self.alpha
        s = a + (1 - 2 * a) * inputs
        log_s, log_1ms = torch.log(s), torch.log1p(-s)
        logdet = (math.log1p(-2 * a) - log_s - log_1ms).flatten(1).sum(1)
        return log_s - log_1ms, logdet

    def inverse(self, inputs: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        a = self.alpha
        t = (torch.sigmoid(inputs) - a) / (1 - 2 * a)
        logdet = (F.logsigmoid(inputs) + F.logsigmoid(-inputs) - math.log1p(-2 * a)).flatten(1).sum(1)
        return t, logdet

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class BoundedAffineCoupling(AffineCouplingTransform):
    r"""Affine coupling ``x_b -> x_b exp(s) + m`` with a bounded log-scale ``s = b tanh(h / b)``.

    ``(h, m)`` come from a network of the untouched half ``x_a`` (nflows' channel mask).  With the
    network's last layer zero-initialised the layer starts as the identity; the bound keeps every
    coupling's Jacobian within ``[exp(-b), exp(b)]`` per dimension, which keeps training and the
    inverse numerically stable.
    """

    def __init__(self, mask: Tensor, transform_net_create_fn: Any, scale_bound: float = 2.0):
        super().__init__(mask, transform_net_create_fn)
        if not scale_bound > 0:
            raise ValueError(f"scale_bound must be > 0, got {scale_bound!r}")
        self.scale_bound = float(scale_bound)

    def _log_scale_and_shift(self, params: Tensor) -> tuple[Tensor, Tensor]:
        n = self.num_transform_features
        b = self.scale_bound
        return b * torch.tanh(params[:, n:] / b), params[:, :n]

    def _coupling_transform_forward(self, inputs: Tensor, transform_params: Tensor) -> tuple[Tensor, Tensor]:
        log_scale, shift = self._log_scale_and_shift(transform_params)
        return inputs * torch.exp(log_scale) + shift, log_scale.flatten(1).sum(1)

    def _coupling_transform_inverse(self, inputs: Tensor, transform_params: Tensor) -> tuple[Tensor, Tensor]:
        log_scale, shift = self._log_scale_and_shift(transform_params)
        return (inputs - shift) * torch.exp(-log_scale), -log_scale.flatten(1).sum(1)


class _ConvNet(nn.Module):
    """``conv3x3 -> ReLU -> conv1x1 -> ReLU -> conv3x3`` with a zero-initialised last layer (Glow's)."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Conv2d(hidden, out_channels, 3, padding=1),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, inputs: Tensor, context: Optional[Tensor] = None) -> Tensor:
        return self.net(inputs)


def _net_factory(hidden: int, dropout: float):
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    return lambda c_in, c_out: _ConvNet(c_in, c_out, hidden, dropout)


def _checkerboard_mask(channels: int, parity: int) -> Tensor:
    """After a 2x2 squeeze, channel ``4c + 2i + j`` holds pixel ``(2h + i, 2w + j)`` of input channel
    ``c``; selecting ``(i + j) % 2 == parity`` is RealNVP's checkerboard mask."""
    k = torch.arange(channels) % 4
    return ((k // 2 + k % 2) % 2 == parity).to(torch.uint8)


def _channel_mask(channels: int, first: bool) -> Tensor:
    mask = (torch.arange(channels) < channels // 2).to(torch.uint8)
    return mask if first else 1 - mask


def _check_shape(shape: Any, scales: int) -> tuple[int, int, int]:
    if not (isinstance(shape, (tuple, list)) and len(shape) == 3 and all(isinstance(s, int) and s > 0 for s in shape)):
        raise ValueError(f"shape must be (channels, height, width) of positive ints, got {shape!r}")
    if isinstance(scales, bool) or not isinstance(scales, int) or scales < 1:
        raise ValueError(f"scales must be an int >= 1, got {scales!r}")
    c, h, w = shape
    factor = 2**scales
    if h % factor or w % factor:
        raise ValueError(
            f"{scales} scales halve height and width {scales} times: {h}x{w} must be divisible by {factor}"
        )
    return c, h, w


def _check_positive(**values: Any) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def _assemble(shape: tuple[int, int, int], levels: int, alpha: float, scales: int, make_scale: Any) -> Flow:
    c, h, w = shape
    body = MultiscaleCompositeTransform(num_transforms=scales)
    current = (c, h, w)
    for i in range(scales):
        out_shape = (4 * current[0], current[1] // 2, current[2] // 2)
        transform = CompositeTransform([SqueezeTransform(2)] + make_scale(out_shape[0]))
        current = body.add_transform(transform, out_shape)
    transform = CompositeTransform([Dequantize(levels), Logit(alpha), body])
    return Flow(transform, StandardNormal([c * h * w]))


def realnvp_flow(
    shape: tuple[int, int, int] = (1, 8, 8),
    levels: int = DIGITS_LEVELS,
    hidden: int = 64,
    blocks_per_scale: int = 2,
    scales: int = 2,
    alpha: float = 0.01,
    scale_bound: float = 2.0,
    dropout: float = 0.0,
) -> Flow:
    """A multi-scale RealNVP (Dinh et al., 2017) from pixel space ``[0, 1]`` to ``N(0, I)``.

    Each scale squeezes ``(C, H, W) -> (4C, H/2, W/2)`` and applies ``blocks_per_scale`` pairs of
    affine couplings with checkerboard masks (complementary parities), then as many pairs with channel
    masks; after every scale but the last half of the channels are factored out to the base.
    Pre-processing (:class:`Dequantize`, :class:`Logit`) is part of the flow.

    Args:
        shape: ``(channels, height, width)``; height and width divisible by ``2 ** scales``.
        levels: grey levels of the data (:data:`xcf.datasets.DIGITS_LEVELS` for the digits).
        hidden: channels of the coupling networks.
        blocks_per_scale: coupling pairs per mask type and scale.
        scales: number of scales.
        alpha: the logit margin.
        scale_bound: bound ``b`` on each coupling's log-scale.
        dropout: dropout probability in the coupling networks (training mode only).

    Returns:
        An :class:`nflows.flows.Flow` with a :class:`~nflows.distributions.normal.StandardNormal` base
        over ``C * H * W`` dimensions; ``flow.log_prob(x)`` takes ``x`` of shape ``(N, *shape)``.

    Example:
        >>> flow = realnvp_flow(hidden=8, blocks_per_scale=1).eval()
        >>> x = torch.rand(4, 1, 8, 8)
        >>> z = flow.transform_to_noise(x)
        >>> z.shape
        torch.Size([4, 64])
        >>> bool(torch.allclose(flow._transform.inverse(z)[0], x, atol=1e-5))
        True
    """
    shape = _check_shape(shape, scales)
    _check_positive(hidden=hidden, blocks_per_scale=blocks_per_scale, levels=levels)
    make_net = _net_factory(hidden, dropout)

    def make_scale(channels: int) -> list[Transform]:
        layers: list[Transform] = []
        for _ in range(blocks_per_scale):
            for parity in (0, 1):
                layers.append(BoundedAffineCoupling(_checkerboard_mask(channels, parity), make_net, scale_bound))
        for _ in range(blocks_per_scale):
            for first in (True, False):
                layers.append(BoundedAffineCoupling(_channel_mask(channels, first), make_net, scale_bound))
        return layers

    return _assemble(shape, levels, alpha, scales, make_scale)


def glow_flow(
    shape: tuple[int, int, int] = (1, 8, 8),
    levels: int = DIGITS_LEVELS,
    hidden: int = 64,
    steps_per_scale: int = 4,
    scales: int = 2,
    alpha: float = 0.01,
    scale_bound: float = 2.0,
    dropout: float = 0.0,
) -> Flow:
    """A multi-scale Glow (Kingma & Dhariwal, 2018) from pixel space ``[0, 1]`` to ``N(0, I)``.

    Each scale squeezes ``(C, H, W) -> (4C, H/2, W/2)`` and applies ``steps_per_scale`` steps of
    ``ActNorm -> invertible 1x1 convolution (LU-parametrised) -> affine coupling`` (channel mask); after
    every scale but the last half of the channels are factored out.  ActNorm initialises from the
    first training batch (:func:`train_flow` does a plain forward pass for it).  The 1x1
    convolutions' fixed channel permutations are drawn from torch's global generator (seed it; they
    are buffers, so saving and loading keeps them).

    Args:
        shape: ``(channels, height, width)``; height and width divisible by ``2 ** scales``.
        levels: grey levels of the data.
        hidden: channels of the coupling networks.
        steps_per_scale: flow steps per scale.
        scales: number of scales.
        alpha: the logit margin.
        scale_bound: bound ``b`` on each coupling's log-scale.
        dropout: dropout probability in the coupling networks (training mode only).

    Returns:
        An :class:`nflows.flows.Flow` with a standard normal base over ``C * H * W`` dimensions.

    Example:
        >>> flow = glow_flow(hidden=8, steps_per_scale=1)
        >>> flow.transform_to_noise(torch.rand(4, 1, 8, 8)).shape
        torch.Size([4, 64])
    """
    shape = _check_shape(shape, scales)
    _check_positive(hidden=hidden, steps_per_scale=steps_per_scale, levels=levels)
    make_net = _net_factory(hidden, dropout)

    def make_scale(channels: int) -> list[Transform]:
        layers: list[Transform] = []
        for _ in range(steps_per_scale):
            layers += [
                ActNorm(channels),
                OneByOneConvolution(channels),
                BoundedAffineCoupling(_channel_mask(channels, True), make_net, scale_bound),
            ]
        return layers

    return _assemble(shape, levels, alpha, scales, make_scale)
