"""The geometry of a generator: batched Jacobians, the induced metric and the tangent space.

For a decoder ``g`` (a flow's inverse, a GAN or VAE generator) the Jacobian at a code ``z`` is
``J = ∂g/∂z`` (``dim x × dim z``).  An ascent step of size ``λ`` in ``z`` on ``h(g(z))`` moves the
decoded point by ``δx = λ J Jᵀ ∇ₓh + O(λ²)``: the gradient is multiplied by the induced (inverse)
metric ``γ⁻¹ = J Jᵀ``.  With the thin SVD ``J = U Σ Vᵀ`` we get ``J Jᵀ = U Σ² Uᵀ``: the left
singular vectors with large singular values span the tangent space of the data manifold at
``g(z)``, and directions with small singular values are damped.  Hence

* :func:`jacobian` computes ``J`` per sample, batched with :mod:`torch.func`;
* :func:`jvp`, :func:`vjp` give ``J v`` and ``Jᵀ u``; :func:`metric_vector_product` gives
  ``J (Jᵀ v)`` without forming ``J``;
* :func:`tangent_space` returns ``Σ`` and ``U`` per sample;
* :func:`manifold_dimension` counts the singular values above the largest gap of the log spectrum;
* :func:`on_manifold_fraction` measures the share ``||P δ||² / ||δ||²`` of a change ``δ = x' - x``
  that lies in the span of a basis (``P`` the orthogonal projector onto it).

**Batching.** ``decode`` is called on the whole batch ``(N, *z_shape) -> (N, *x_shape)``.  Samples
must be independent (the decoder in eval mode): then one JVP of the batch with the same basis
direction ``e_j`` in every sample gives column ``j`` of every sample's Jacobian.  :func:`jacobian`
vmaps that JVP over the *direction* axis (not over the batch, which nflows' spline and in-place
log-det code do not survive), ``chunk_size`` directions at a time to bound memory.  Forward mode
needs ``dim z`` JVPs; reverse mode needs ``dim x`` VJPs, so forward mode is used for GANs
(``dim z << dim x``) and flows (equal), reverse mode for wide maps, each falling back on the other
when an operation lacks that kind of derivative.

**Layout.** Jacobians are *flattened*: ``(N, dim_x, dim_z)`` with ``dim_x = prod(x_shape)`` and
``dim_z = prod(z_shape)`` (row-major, as ``x.flatten(1)`` and ``z.flatten(1)``), so they feed
``torch.linalg`` directly.  All results are detached and live on ``z``'s device and dtype.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional

import torch
from torch import Tensor
from torch.func import jvp as _func_jvp
from torch.func import vjp as _func_vjp
from torch.func import vmap

from xcf._validation import check_inputs, check_module_mode, modules_of, preserved

__all__ = [
    "TangentSpace",
    "jacobian",
    "jvp",
    "vjp",
    "metric_vector_product",
    "tangent_space",
    "manifold_dimension",
    "on_manifold_fraction",
]

Decode = Callable[[Tensor], Any]


class TangentSpace(NamedTuple):
    """The thin SVD of the per-sample Jacobians, ``J = U Σ Vᵀ``.

    Attributes:
        singular_values: ``(N, r)`` with ``r = min(dim_x, dim_z)``, in descending order.
        basis: ``(N, dim_x, k)``, the first ``k`` left singular vectors (orthonormal columns).
    """

    singular_values: Tensor
    basis: Tensor


# -- checks ---------------------------------------------------------------------------------------
def _modules(decode: Any) -> list[Any]:
    """The modules ``decode`` runs: a module, a module's bound method, or a chart's ``decode``."""
    found = modules_of(decode)
    owner = getattr(decode, "__self__", None)
    if not found and owner is not None and callable(getattr(owner, "modules", None)):
        try:
            items = list(owner.modules())  # a Chart lists the user's models it calls
        except TypeError:
            items = []
        found = [m for item in items for m in modules_of(item)]
    return found


def _check_decode(decode: Any) -> None:
    if not callable(decode):
        raise TypeError(f"decode must be callable (z -> x), got {type(decode).__name__}")
    for module in _modules(decode):
        check_module_mode(module, "decoder")
        for sub in module.modules():
            # nflows' BatchNorm transform and a not-yet-initialised ActNorm change their buffers
            flag = getattr(sub, "initialized", None)
            stateful = type(sub).__name__ == "BatchNorm" or (isinstance(flag, Tensor) and not bool(flag))
            if sub.training and stateful:
                raise ValueError(
                    f"the decoder is in training mode and contains {type(sub).__name__}, whose buffers "
                    "would change (batch statistics or data-dependent initialisation); call .eval() on it first"
                )


def _call(decode: Decode, z: Tensor) -> Tensor:
    out = decode(z)
    if isinstance(out, tuple) and len(out) >= 1 and isinstance(out[0], Tensor):
        out = out[0]  # nflows transforms return (outputs, logabsdet)
    if not isinstance(out, Tensor):
        raise TypeError(f"decode must return a tensor (or an (x, logabsdet) tuple), got {type(out).__name__}")
    return out


def _prepare(decode: Decode, z: Tensor) -> tuple[Callable[[Tensor], Tensor], Tensor]:
    """Check ``decode`` and ``z``; return the tensor-valued decoder and ``decode(z)``."""
    _check_decode(decode)
    check_inputs(z, name="z")

    def f(q: Tensor) -> Tensor:
        return _call(decode, q)

    with torch.no_grad():
        x = f(z)
    if x.ndim < 1 or x.shape[0] != z.shape[0]:
        raise ValueError(
            f"decode must keep the batch dimension: z has {z.shape[0]} samples (shape {tuple(z.shape)}) "
            f"but decode(z) has shape {tuple(x.shape)}"
        )
    return f, x


def _check_like(name: str, t: Any, shape: torch.Size, what: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.shape != shape:
        raise ValueError(f"{name} must have the shape of {what}, {tuple(shape)}, got {tuple(t.shape)}")


def _check_chunk(chunk_size: Optional[int], total: int) -> int:
    if chunk_size is None:
        return max(total, 1)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError(f"chunk_size must be an int or None, got {type(chunk_size).__name__}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 (directions per batched JVP), got {chunk_size}")
    return min(chunk_size, max(total, 1))


# -- Jacobian -------------------------------------------------------------------------------------
def _basis(dim: int, start: int, stop: int, n: int, shape: torch.Size, like: Tensor) -> Tensor:
    """Directions ``e_start..e_{stop-1}``, each repeated for the ``n`` samples: ``(c, n, *shape)``."""
    eye = torch.zeros(stop - start, dim, dtype=like.dtype, device=like.device)
    eye[torch.arange(stop - start, device=like.device), torch.arange(start, stop, device=like.device)] = 1
    return eye.reshape((stop - start, 1) + tuple(shape)).expand((stop - start, n) + tuple(shape))


def _jacobian_forward(f: Callable[[Tensor], Tensor], z: Tensor, dim_x: int, chunk: int) -> Tensor:
    n, dim_z = z.shape[0], z[0].numel()

    def column(v: Tensor) -> Tensor:
        return _func_jvp(f, (z,), (v,))[1]

    cols = []
    with torch.no_grad():  # forward AD ignores it; no graph is kept to the decoder's parameters
        for start in range(0, dim_z, chunk):
            stop = min(start + chunk, dim_z)
            out = vmap(column)(_basis(dim_z, start, stop, n, z.shape[1:], z))  # (c, n, *x_shape)
            cols.append(out.reshape(stop - start, n, dim_x))
    return torch.cat(cols).permute(1, 2, 0).contiguous()


def _jacobian_reverse(f: Callable[[Tensor], Tensor], z: Tensor, x: Tensor, chunk: int) -> Tensor:
    n, dim_z, dim_x = z.shape[0], z[0].numel(), x[0].numel()
    rows = []
    with torch.enable_grad():
        _, pullback = _func_vjp(f, z)
        for start in range(0, dim_x, chunk):
            stop = min(start + chunk, dim_x)
            (out,) = vmap(pullback)(_basis(dim_x, start, stop, n, x.shape[1:], x))  # (c, n, *z_shape)
            rows.append(out.detach().reshape(stop - start, n, dim_z))
    return torch.cat(rows).permute(1, 0, 2).contiguous()


def jacobian(
    decode: Decode,
    z: Tensor,
    chunk_size: Optional[int] = None,
    mode: str = "auto",
) -> Tensor:
    """Per-sample Jacobians ``J_i = ∂decode(z)_i / ∂z_i`` of a batch, flattened.

    Forward mode: one :func:`torch.func.jvp` of the whole batch per basis direction of ``z``,
    vmapped over the directions, ``chunk_size`` at a time.  Reverse mode: one VJP per basis
    direction of ``x``, vmapped the same way.  ``"auto"`` takes the cheaper one (forward when
    ``dim_z <= dim_x``) and falls back on the other if an operation lacks that derivative.

    Args:
        decode: ``(N, *z_shape) -> (N, *x_shape)``, samples independent (eval mode); may return an
            ``(x, logabsdet)`` tuple like nflows transforms (``flow._transform.inverse``) and may be
            :meth:`xcf.FlowChart.decode`.
        z: ``(N, *z_shape)`` codes.
        chunk_size: directions per batched call (``None``: all at once).  Peak memory grows with
            ``chunk_size × N`` decoder activations.
        mode: ``"auto"``, ``"forward"`` or ``"reverse"`` (the last two do not fall back).

    Returns:
        ``(N, dim_x, dim_z)`` with ``dim_x = prod(x_shape)``, ``dim_z = prod(z_shape)``; entry
        ``[i, a, b]`` is ``∂ x_i.flatten()[a] / ∂ z_i.flatten()[b]``.

    Raises:
        ValueError: bad shapes, ``chunk_size < 1``, a BatchNorm decoder in training mode.
        RuntimeError: neither mode can differentiate ``decode`` (both errors are quoted).

    Example:
        >>> A = torch.randn(5, 2)
        >>> J = jacobian(lambda z: z @ A.T, torch.randn(3, 2))
        >>> J.shape, torch.allclose(J, A.expand(3, 5, 2))
        (torch.Size([3, 5, 2]), True)
    """
    if mode not in ("auto", "forward", "reverse"):
        raise ValueError(f"mode must be 'auto', 'forward' or 'reverse', got {mode!r}")
    if chunk_size is not None:
        _check_chunk(chunk_size, 1)
    with preserved(*_modules(decode)):
        f, x = _prepare(decode, z)
        dim_z, dim_x = z[0].numel(), x[0].numel()
        if mode == "auto":
            order = ["forward", "reverse"] if dim_z <= dim_x else ["reverse", "forward"]
        else:
            order = [mode]
        errors = []
        for m in order:
            try:
                if m == "forward":
                    return _jacobian_forward(f, z, dim_x, _check_chunk(chunk_size, dim_z))
                return _jacobian_reverse(f, z, x, _check_chunk(chunk_size, dim_x))
            except torch.OutOfMemoryError as e:
                raise torch.OutOfMemoryError(
                    f"{e}\n(xcf.geometry.jacobian: pass a smaller chunk_size, or fewer samples per call)"
                ) from e
            except (RuntimeError, NotImplementedError) as e:
                errors.append(f"{m} mode failed: {type(e).__name__}: {e}")
        raise RuntimeError(
            "could not compute the Jacobian of decode with torch.func: "
            + " | ".join(errors)
            + ". Operations need a forward-mode (jvp) or a vmap-able reverse-mode derivative; "
            "custom autograd.Functions need setup_context, and jvp or generate_vmap_rule=True."
        )


# -- products -------------------------------------------------------------------------------------
def _jvp(f: Callable[[Tensor], Tensor], z: Tensor, v: Tensor) -> Tensor:
    v = v.to(device=z.device, dtype=z.dtype)
    try:
        with torch.no_grad():
            return _func_jvp(f, (z,), (v,))[1].detach()
    except (RuntimeError, NotImplementedError):
        with torch.enable_grad():  # the double-backward trick: reverse mode twice
            return torch.autograd.functional.jvp(f, z.detach(), v)[1].detach()


def _vjp(f: Callable[[Tensor], Tensor], z: Tensor, u: Tensor) -> Tensor:
    with torch.enable_grad():
        q = z.detach().requires_grad_(True)
        x = f(q)
        (g,) = torch.autograd.grad(x, q, u.to(device=x.device, dtype=x.dtype))
    return g.detach()


def jvp(decode: Decode, z: Tensor, v: Tensor) -> Tensor:
    """The directional derivative ``J v`` per sample (forward mode, one pass over the batch).

    Falls back on the double-backward trick (:func:`torch.autograd.functional.jvp`) for operations
    without a forward-mode derivative.

    Args:
        decode: ``(N, *z_shape) -> (N, *x_shape)``, samples independent.
        z: ``(N, *z_shape)`` codes.
        v: ``(N, *z_shape)`` directions, one per sample.

    Returns:
        ``(N, *x_shape)``: ``J_i v_i``.

    Example:
        >>> A = torch.randn(5, 2)
        >>> z, v = torch.randn(3, 2), torch.randn(3, 2)
        >>> torch.allclose(jvp(lambda q: q @ A.T, z, v), v @ A.T)
        True
    """
    with preserved(*_modules(decode)):
        f, _ = _prepare(decode, z)
        _check_like("v", v, z.shape, "z")
        return _jvp(f, z, v)


def vjp(decode: Decode, z: Tensor, u: Tensor) -> Tensor:
    """The pulled-back covector ``Jᵀ u`` per sample (reverse mode, one backward pass).

    Args:
        decode: ``(N, *z_shape) -> (N, *x_shape)``, samples independent.
        z: ``(N, *z_shape)`` codes.
        u: ``(N, *x_shape)``, one per sample.

    Returns:
        ``(N, *z_shape)``: ``J_iᵀ u_i``.

    Example:
        >>> A = torch.randn(5, 2)
        >>> z, u = torch.randn(3, 2), torch.randn(3, 5)
        >>> torch.allclose(vjp(lambda q: q @ A.T, z, u), u @ A)
        True
    """
    with preserved(*_modules(decode)):
        f, x = _prepare(decode, z)
        _check_like("u", u, x.shape, "decode(z)")
        return _vjp(f, z, u)


def metric_vector_product(decode: Decode, z: Tensor, v: Tensor) -> Tensor:
    """The induced metric applied to ``v``: ``γ⁻¹ v = J (Jᵀ v)`` per sample, without forming ``J``.

    This is the first-order change of ``decode(z)`` when ``z`` takes a gradient step on a
    function whose gradient in input space is ``v`` (one VJP, then one JVP).

    Args:
        decode: ``(N, *z_shape) -> (N, *x_shape)``.
        z: ``(N, *z_shape)`` codes.
        v: ``(N, *x_shape)`` input-space vectors.

    Returns:
        ``(N, *x_shape)``: ``J_i J_iᵀ v_i``.

    Example:
        >>> A = torch.randn(5, 2)
        >>> z, v = torch.randn(3, 2), torch.randn(3, 5)
        >>> torch.allclose(metric_vector_product(lambda q: q @ A.T, z, v), v @ A @ A.T, atol=1e-5)
        True
    """
    with preserved(*_modules(decode)):
        f, x = _prepare(decode, z)
        _check_like("v", v, x.shape, "decode(z)")
        return _jvp(f, z, _vjp(f, z, v))


# -- spectrum -------------------------------------------------------------------------------------
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
