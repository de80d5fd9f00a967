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

from typing import Any, Callable, Optional

import torch
from torch import Tensor
from torch.func import jvp as _func_jvp
from torch.func import vjp as _func_vjp
from torch.func import vmap

from xcf._validation import check_inputs, check_module_mode, modules_of, preserved

__all__ = [
    "jacobian",
    "jvp",
    "vjp",
    "metric_vector_product",
]

Decode = Callable[[Tensor], Any]


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
                    f"{e}\n(xcf.evaluate.geometry.jacobian: pass a smaller chunk_size, or fewer samples per call)"
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
