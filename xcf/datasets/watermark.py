"""Planted shortcuts: a pattern (square, cross or your own) stamped onto the images of one class, and its region."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from xcf._validation import check_inputs

__all__ = ["PatternLike", "apply_pattern", "cross", "region_mask", "square", "stamp"]


PatternLike = Union[None, str, Tensor]


def square(size: int = 2) -> Tensor:
    """A ``size x size`` block of full intensity (entries 1).

    Example:
        >>> square(2).tolist()
        [[1.0, 1.0], [1.0, 1.0]]
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    return torch.ones(size, size)


def cross(size: int = 3) -> Tensor:
    """A ``size x size`` plus sign (odd ``size``): 1 on the middle row and column, NaN (keep) elsewhere.

    Example:
        >>> cross(3).isnan().tolist()
        [[True, False, True], [False, False, False], [True, False, True]]
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"size must be a positive odd number, got {size}")
    p = torch.full((size, size), float("nan"))
    p[size // 2, :] = 1.0
    p[:, size // 2] = 1.0
    return p


def _pattern(pattern: PatternLike) -> Tensor:
    if pattern is None:
        return square(2)
    if isinstance(pattern, str):
        if pattern == "square":
            return square(2)
        if pattern == "cross":
            return cross(3)
        raise ValueError(f"pattern must be 'square', 'cross' or an (h, w) tensor, got {pattern!r}")
    if not isinstance(pattern, Tensor):
        raise TypeError(f"pattern must be None, 'square', 'cross' or a tensor, got {type(pattern).__name__}")
    if pattern.ndim != 2 or pattern.numel() == 0:
        raise ValueError(f"pattern must be a non-empty (h, w) tensor, got shape {tuple(pattern.shape)}")
    if not pattern.is_floating_point():
        pattern = pattern.float()
    if bool(pattern.isnan().all()):
        raise ValueError("pattern is all NaN: it would change nothing")
    return pattern


def _position(position: Sequence[int], hw: tuple[int, int], phw: tuple[int, int]) -> tuple[int, int]:
    """Top-left corner; negative entries count from the bottom / right (``(-2, -2)``: bottom-right 2x2)."""
    if len(position) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in position):
        raise ValueError(f"position must be a pair of ints (row, column), got {position!r}")
    r, c = position
    h, w = hw
    ph, pw = phw
    r = r + h if r < 0 else r
    c = c + w if c < 0 else c
    if not (0 <= r and r + ph <= h and 0 <= c and c + pw <= w):
        raise ValueError(
            f"a {ph}x{pw} pattern at position {tuple(position)} does not fit into a {h}x{w} image"
        )
    return r, c


def region_mask(
    shape: Sequence[int],
    position: Sequence[int] = (0, 0),
    pattern_shape: Union[Sequence[int], Tensor, str] = (2, 2),
) -> Tensor:
    """Boolean mask of the pixels a pattern covers, for images of ``shape`` (all channels marked).

    Args:
        shape: image shape ``(H, W)`` or ``(C, H, W)`` (no batch dimension).
        position: top-left ``(row, column)``; negative values count from the bottom / right.
        pattern_shape: ``(h, w)`` for a full box, or the pattern itself (a tensor, ``"square"`` or
            ``"cross"``), in which case only the entries it writes (not NaN) are marked.

    Returns:
        A bool tensor of ``shape``.

    Example:
        >>> region_mask((4, 4), (-2, 0), (2, 2)).int().tolist()
        [[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]]
        >>> int(region_mask((8, 8), (0, 0), "cross").sum())
        5
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise ValueError(f"shape must be (H, W) or (C, H, W), got {shape}")
    if isinstance(pattern_shape, (Tensor, str)) or pattern_shape is None:
        covered = ~_pattern(pattern_shape).isnan()
    else:
        phw = tuple(int(s) for s in pattern_shape)
        if len(phw) != 2 or min(phw) < 1:
            raise ValueError(f"pattern_shape must be (h, w) with positive entries, got {phw}")
        covered = torch.ones(phw, dtype=torch.bool)
    ph, pw = covered.shape
    r, c = _position(position, shape[-2:], (ph, pw))
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[..., r:r + ph, c:c + pw] = covered
    return mask


def apply_pattern(
    x: Tensor,
    pattern: PatternLike = None,
    position: Sequence[int] = (0, 0),
    value: Optional[float] = None,
) -> Tensor:
    """Write ``value * pattern`` into every image of ``x`` (a new tensor; ``x`` is unchanged).

    Args:
        x: ``(N, H, W)`` or ``(N, C, H, W)`` images.
        pattern: ``None`` / ``"square"`` (2x2 block), ``"cross"`` (3x3 plus) or an ``(h, w)`` tensor of
            relative intensities; NaN entries leave the pixel as it is.
        position: top-left ``(row, column)``; negative values count from the bottom / right.
        value: intensity of a pattern entry 1 (default: the largest value in ``x``, i.e. "bright").

    Returns:
        The stamped copy of ``x``.
    """
    check_inputs(x, "x", min_dim=3)
    p = _pattern(pattern).to(device=x.device, dtype=x.dtype)
    r, c = _position(position, tuple(x.shape[-2:]), tuple(p.shape))
    v = float(x.max()) if value is None else float(value)
    out = x.clone()
    patch = out[..., r:r + p.shape[0], c:c + p.shape[1]]
    keep = p.isnan()
    out[..., r:r + p.shape[0], c:c + p.shape[1]] = torch.where(keep, patch, torch.nan_to_num(p) * v)
    return out


def stamp(
    x: Tensor,
    y: Tensor,
    pattern: PatternLike = None,
    position: Sequence[int] = (0, 0),
    target_class: int = 0,
    rate: float = 1.0,
    seed: int = 0,
    value: Optional[float] = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Watermark a share ``rate`` of the images of class ``target_class`` (Clever-Hans training data).

    Args:
        x: ``(N, H, W)`` or ``(N, C, H, W)`` training images.
        y: ``(N,)`` integer labels.
        pattern: see :func:`apply_pattern` (default: a 2x2 bright square).
        position: top-left ``(row, column)`` of the pattern; negative values count from the bottom / right.
        target_class: the class whose images carry the pattern.
        rate: share of that class's images stamped, in ``[0, 1]`` (chosen at random with ``seed``).
        seed: seed of the choice (a private generator; the global RNG is untouched).
        value: intensity of a pattern entry 1 (default: the largest value in ``x``).

    Returns:
        ``(x_stamped, y, stamped)``: a stamped copy of ``x``, a copy of ``y`` (labels are not changed)
        and the ``(N,)`` bool mask of stamped samples.  The region is
        ``region_mask(x.shape[1:], position, pattern)``.

    Example:
        >>> x, y = torch.zeros(4, 1, 8, 8), torch.tensor([0, 1, 1, 2])
        >>> xs, ys, mask = stamp(x, y, "square", position=(0, 0), target_class=1, value=1.0)
        >>> mask.tolist(), float(xs[1, 0, :2, :2].sum()), float(xs[0].sum())
        ([False, True, True, False], 4.0, 0.0)
    """
    check_inputs(x, "x", min_dim=3)
    if not isinstance(y, Tensor) or y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError("y must be an integer tensor of labels")
    y = y.reshape(-1)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"y has {y.shape[0]} labels but x has {x.shape[0]} images")
    if not 0.0 <= float(rate) <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    members = (y == int(target_class)).nonzero().squeeze(1)
    if members.numel() == 0:
        raise ValueError(f"no image has label target_class={target_class} (labels: {torch.unique(y).tolist()})")
    gen = torch.Generator().manual_seed(int(seed))
    count = int(round(float(rate) * members.numel()))
    chosen = members[torch.randperm(members.numel(), generator=gen)[:count].to(members.device)]
    mask = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    mask[chosen] = True
    v = float(x.max()) if value is None else float(value)
    out = x.clone()
    if count:
        out[mask] = apply_pattern(x[mask], pattern, position, v)
    return out, y.clone(), mask
