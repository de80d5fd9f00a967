"""The data manifold seen through a generator: tangent spaces, their dimension, on-manifold shares."""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional

import torch
from torch import Tensor

from xcf.evaluate.geometry import jacobian

__all__ = ["Decode", "TangentSpace", "manifold_dimension", "on_manifold_fraction", "tangent_space"]


Decode = Callable[[Tensor], Any]

class TangentSpace(NamedTuple):
    """The thin SVD of the per-sample Jacobians, ``J = U Σ Vᵀ``.

    Attributes:
        singular_values: ``(N, r)`` with ``r = min(dim_x, dim_z)``, in descending order.
        basis: ``(N, dim_x, k)``, the first ``k`` left singular vectors (orthonormal columns).
    """

    singular_values: Tensor
    basis: Tensor


def tangent_space(
    decode: Decode, z: Tensor, k: Optional[int] = None, chunk_size: Optional[int] = None
) -> TangentSpace:
    """Singular values and left singular vectors of each sample's Jacobian.

    Args:
        decode: ``(N, *z_shape) -> (N, *x_shape)``.
        z: ``(N, *z_shape)`` codes.
        k: how many left singular vectors to keep (the ``k`` largest); ``None``: all ``r``.
        chunk_size: passed to :func:`jacobian`.

    Returns:
        :class:`TangentSpace`: ``singular_values (N, r)`` (all of them, descending) and
        ``basis (N, dim_x, k)`` with orthonormal columns spanning the top-``k`` tangent directions.

    Example:
        >>> A = torch.randn(6, 2)
        >>> ts = tangent_space(lambda q: q @ A.T, torch.randn(4, 2))
        >>> ts.singular_values.shape, ts.basis.shape
        (torch.Size([4, 2]), torch.Size([4, 6, 2]))
    """
    J = jacobian(decode, z, chunk_size=chunk_size)
    r = min(J.shape[1], J.shape[2])
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(f"k must be an int or None, got {type(k).__name__}")
        if not 1 <= k <= r:
            raise ValueError(f"k must be in 1..{r} (min(dim_x, dim_z) = min({J.shape[1]}, {J.shape[2]})), got {k}")
    U, S, _ = torch.linalg.svd(J, full_matrices=False)
    return TangentSpace(singular_values=S, basis=U[..., : (r if k is None else k)])


def manifold_dimension(singular_values: Tensor, min_ratio: float = 10.0) -> Tensor:
    """Estimate the data manifold's dimension from a Jacobian spectrum by its largest gap.

    Rule: sort ``σ_1 >= ... >= σ_r``; the estimate is the ``d`` that maximises the log gap
    ``log σ_d - log σ_{d+1}``, provided that ratio ``σ_d / σ_{d+1}`` is at least ``min_ratio``;
    a spectrum without such a gap is full-dimensional (``d = r``), and an all-zero spectrum gives
    ``0``.  Zero singular values count as the smallest positive float (an infinite gap).

    Args:
        singular_values: ``(N, r)`` (or ``(r,)`` for one sample), non-negative.
        min_ratio: the smallest ratio of consecutive singular values that counts as a gap (> 1).

    Returns:
        ``(N,)`` long tensor (a 0-d tensor for a 1-D input).

    Example:
        >>> manifold_dimension(torch.tensor([[5.0, 3.0, 1e-3], [1.0, 0.9, 0.8]])).tolist()
        [2, 3]
    """
    if not isinstance(singular_values, Tensor):
        raise TypeError(f"singular_values must be a torch.Tensor, got {type(singular_values).__name__}")
    if not min_ratio > 1:
        raise ValueError(f"min_ratio must be > 1, got {min_ratio}")
    single = singular_values.ndim == 1
    s = singular_values.unsqueeze(0) if single else singular_values
    if s.ndim != 2 or s.shape[1] == 0:
        raise ValueError(f"singular_values must have shape (N, r) or (r,), got {tuple(singular_values.shape)}")
    if not s.is_floating_point():
        s = s.float()
    if bool((s < 0).any()) or not bool(torch.isfinite(s).all()):
        raise ValueError("singular_values must be finite and non-negative")
    s = s.sort(dim=1, descending=True).values
    r = s.shape[1]
    dim = torch.full((s.shape[0],), r, dtype=torch.long, device=s.device)
    if r > 1:
        logs = s.clamp_min(torch.finfo(s.dtype).tiny).log()
        gap, idx = (logs[:, :-1] - logs[:, 1:]).max(dim=1)
        dim = torch.where(gap >= math.log(min_ratio), idx + 1, dim)
    dim = torch.where(s[:, 0] == 0, torch.zeros_like(dim), dim)
    return dim[0] if single else dim


def on_manifold_fraction(delta: Tensor, basis: Tensor, orthonormalize: bool = False) -> Tensor:
    """The share of ``||δ||²`` in the span of the basis columns, per sample: ``||Bᵀ δ||² / ||δ||²``.

    Args:
        delta: ``(N, *x_shape)`` changes, e.g. ``x' - x``.
        basis: ``(N, dim_x, k)`` per-sample bases (e.g. :attr:`TangentSpace.basis`), or one
            ``(dim_x, k)`` basis for all samples.  Columns must be orthonormal unless
            ``orthonormalize`` is set.
        orthonormalize: orthonormalise the columns first (QR; they must be linearly independent).

    Returns:
        ``(N,)`` fractions in ``[0, 1]``; NaN where ``δ = 0`` (no change, no direction).

    Example:
        >>> basis = torch.eye(3)[:, :1]                 # the first axis
        >>> on_manifold_fraction(torch.tensor([[3.0, 4.0, 0.0]]), basis)
        tensor([0.3600])
    """
    if not isinstance(delta, Tensor) or not isinstance(basis, Tensor):
        raise TypeError("delta and basis must be torch.Tensors")
    if delta.ndim < 2:
        raise ValueError(f"delta must have a batch dimension (N, ...), got shape {tuple(delta.shape)}")
    d = delta.flatten(1)
    n, dim_x = d.shape
    if basis.ndim == 2:
        basis = basis.unsqueeze(0).expand(n, -1, -1)
    if basis.ndim != 3 or basis.shape[0] != n or basis.shape[1] != dim_x or basis.shape[2] < 1:
        raise ValueError(
            f"basis must have shape (N, dim_x, k) = ({n}, {dim_x}, k) or (dim_x, k) for delta of shape "
            f"{tuple(delta.shape)}, got {tuple(basis.shape)}"
        )
    basis = basis.to(device=d.device, dtype=d.dtype)
    if orthonormalize:
        basis = torch.linalg.qr(basis, mode="reduced").Q
    else:
        norms = basis.norm(dim=1)
        tol = 1e-3 if d.dtype in (torch.float32, torch.float64) else 1e-2
        if not bool(((norms - 1).abs() <= tol).all()):
            raise ValueError(
                "basis columns are not unit vectors; pass orthonormal columns (TangentSpace.basis) "
                "or orthonormalize=True"
            )
    inside = torch.einsum("nd,ndk->nk", d, basis).pow(2).sum(dim=1)
    total = d.pow(2).sum(dim=1)
    frac = (inside / total).clamp(0.0, 1.0)
    return torch.where(total > 0, frac, torch.full_like(frac, float("nan")))
