"""The base space of a normalizing flow: an exact chart (diffeomorphic counterfactuals)."""

from __future__ import annotations

import math
import warnings
from typing import Any, Optional

import torch
from torch import Tensor, nn

from xcf.charts.base import Chart, Coordinates
from xcf.models.flows import Dequantize

__all__ = ["FlowChart"]


class FlowChart(Chart):
    """Encode with the flow's exact inverse ``z = g⁻¹(x)``, decode with ``x = g(z)``.

    ``flow`` is an :class:`nflows.flows.Flow` (xcf's builders or the user's own) or any object with
    ``encode(x) -> z`` and ``decode(z) -> x``.  A flow defined on flattened vectors is detected on
    each call and inputs are flattened for it, decoded samples reshaped back; nothing is kept between calls.

    Args:
        flow: the flow.
        event_shape: the shape of one sample as the flow expects it; ``None`` infers it.
        max_recon_error: largest acceptable per-sample RMS error of ``decode(encode(x))``; a flow that
            does worse is refused, since then its base space is no chart of the inputs.  (Generator charts
            only *flag* poor reconstructions, with ``recon_threshold``.)
        recon_tol: deprecated name of ``max_recon_error``.
        bounds: ``(low, high)``: project decoded samples onto the data range (clamp), so the classifier
            judges, and the result holds, an image inside it; ``None`` (default) leaves ``g(z)`` as it is.
        lr: the default L2 step size (``None``: ``2 sqrt(D / 784)`` for ``D`` base dimensions).
        confidence: the default stopping confidence (``None``: 0.99).
    """

    name = "flow"
    # Normalised gradient steps keep the direction of the base-space gradient, so to first order a
    # step in x is J Jᵀ ∇ₓ (the induced metric damps off-manifold directions).  Adam rescales each
    # base coordinate and so loses that property.  The step size grows with the square root of the
    # base dimension D (a step moves every coordinate by about lr / sqrt(D)): 2.0 for 28x28 images,
    # 0.57 for the 8x8 digits.  Chosen on real MNIST (docs/mnist.md: 100 test digits toward (y + 3)
    # mod 10, validators on raw pixels): L2 steps of 2.0 gave SVM transfer 0.56 / 10-NN 0.40 at
    # confidence 0.99 where 0.5 (the 8x8 digits' earlier default) gave 0.48 / 0.26, and 0.87 / 0.63 at
    # confidence 0.999999.  The confidence default stays 0.99: on the 8x8 digits only 76% of the
    # searches reach 0.999999 within 1000 steps.  Pass confidence= (here or per call) to go further.
    lr = 2.0
    lr_per_sqrt_dim = 2.0 / 28.0
    steps = 1000
    update = "l2"
    needs_eval = True

    def __init__(self, flow: Any, event_shape: Optional[tuple[int, ...]] = None, max_recon_error: float = 1e-3,
                 *, recon_tol: Optional[float] = None, bounds: Optional[tuple[float, float]] = None,
                 lr: Optional[float] = None, confidence: Optional[float] = None):
        is_nflows = hasattr(flow, "transform_to_noise") and hasattr(flow, "_transform")
        if not is_nflows and not (hasattr(flow, "encode") and hasattr(flow, "decode")):
            raise TypeError(
                "flow must be an nflows.flows.Flow or have encode(x) -> z and decode(z) -> x methods, "
                f"got {type(flow).__name__}"
            )
        if recon_tol is not None:
            warnings.warn("FlowChart(recon_tol=...) is renamed max_recon_error and will be removed in xcf 0.3",
                          DeprecationWarning, stacklevel=2)
            max_recon_error = recon_tol
        if not max_recon_error > 0:
            raise ValueError(f"max_recon_error must be > 0, got {max_recon_error}")
        self.flow = flow
        self.is_nflows = is_nflows
        self.event_shape = tuple(event_shape) if event_shape is not None else None
        self.max_recon_error = float(max_recon_error)
        if bounds is not None:
            lo, hi = bounds
            if not lo < hi:
                raise ValueError(f"bounds must satisfy low < high, got {bounds}")
            bounds = (float(lo), float(hi))
        self.bounds = bounds
        if lr is not None and not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0):
            raise ValueError(f"lr must be a number > 0, got {lr!r}")
        if confidence is not None and not (isinstance(confidence, float) and 0.0 < confidence <= 1.0):
            raise ValueError(f"confidence must be a float in (0, 1], got {confidence!r}")
        self._lr = None if lr is None else float(lr)
        if confidence is not None:
            self.confidence = confidence

    # -- shape handling -------------------------------------------------------------------------
    def sample_shape(self, x: Tensor) -> tuple[int, ...]:
        """The shape the flow takes one sample of ``x`` in: ``event_shape``, else probed (as is, then flat)."""
        shape = self.event_shape if self.event_shape is not None else self._infer_event_shape(x)
        if torch.Size(shape).numel() != x[0].numel():
            raise ValueError(
                f"the flow takes samples of shape {shape} ({torch.Size(shape).numel()} "
                f"values) but the inputs have shape {tuple(x.shape[1:])} ({x[0].numel()} values)"
            )
        return tuple(shape)

    def check(self, x: Tensor) -> None:
        if isinstance(self.flow, nn.Module) and any(isinstance(m, Dequantize) for m in self.flow.modules()):
            lo, hi = float(x.min()), float(x.max())
            if lo < 0.0 or hi > 1.0:
                raise ValueError(f"inputs lie in [{lo:.4g}, {hi:.4g}] but this flow dequantises images in [0, 1]: "
                                 "scale them to [0, 1] (e.g. x / 255)")
        self.sample_shape(x)

    def _infer_event_shape(self, x: Tensor) -> tuple[int, ...]:
        base_shape = getattr(getattr(self.flow, "_distribution", None), "_shape", None)
        if self.is_nflows and base_shape is not None and torch.Size(base_shape).numel() != x[0].numel():
            raise ValueError(
                f"the flow models samples of {torch.Size(base_shape).numel()} values (its base distribution has "
                f"shape {tuple(base_shape)}), but the inputs have {x[0].numel()} values of shape "
                f"{tuple(x.shape[1:])}: use a flow fitted on data of this shape (xcf.models.fit_flow)"
            )
        probe = x[:1].detach()
        errors = []
        for shape in (tuple(x.shape[1:]), (x[0].numel(),)):
            try:
                with torch.no_grad():
                    self._to_base(probe.reshape((1,) + shape))
                return shape
            except Exception as e:  # noqa: BLE001 - report both attempts below
                errors.append(f"{shape}: {type(e).__name__}: {e}")
        raise ValueError("the flow accepts neither the input shape nor flattened inputs; " + "; ".join(errors))

    def _to_base(self, x: Tensor) -> Tensor:
        if self.is_nflows:
            return self.flow.transform_to_noise(x)
        return self.flow.encode(x)

    def _from_base(self, z: Tensor) -> Tensor:
        if self.is_nflows:
            x, _ = self.flow._transform.inverse(z)
            return x
        return self.flow.decode(z)

    # -- chart ------------------------------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self._to_base(x.reshape((x.shape[0],) + self.sample_shape(x)))

    def decode(self, p: Tensor) -> Tensor:
        """Base coordinates to samples in the flow's own shape (:meth:`start` reshapes to the inputs')."""
        return self._from_base(p)

    def start(self, x: Tensor, *, progress: bool = False) -> Coordinates:
        shape = tuple(x.shape[1:])
        with torch.no_grad():
            z = self._to_base(x.reshape((x.shape[0],) + self.sample_shape(x)))

        def decode(p: Tensor) -> Tensor:
            out = self._from_base(p)
            out = out.reshape((out.shape[0],) + shape)
            return out if self.bounds is None else out.clamp(*self.bounds)

        return Coordinates(z.detach(), decode)

    def step_size(self, start: Tensor) -> float:
        """The L2 step size: the one given, else ``lr_per_sqrt_dim * sqrt(D)`` for ``D`` base dimensions."""
        return self._lr if self._lr is not None else self.lr_per_sqrt_dim * math.sqrt(start[0].numel())

    def modules(self) -> list[Any]:
        return [self.flow]

    def check_reconstruction(self, error: Tensor) -> dict[str, Tensor]:
        worst = float(error.max())
        if not worst <= self.max_recon_error:
            raise ValueError(
                f"the flow does not reconstruct its input: decode(encode(x)) differs from x by RMS up to "
                f"{worst:.3g} (> max_recon_error={self.max_recon_error:g}); is it trained, in eval mode and "
                "invertible in this precision?"
            )
        return {}
