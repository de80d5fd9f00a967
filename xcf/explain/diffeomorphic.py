"""Diffeomorphic counterfactuals: ascent in the base space of a normalizing flow."""

from __future__ import annotations

from typing import Any, Callable, Optional

from torch import Tensor

from xcf.charts.flow import FlowChart
from xcf.explain.base import CounterfactualExplainer
from xcf.objectives import OutputKind

__all__ = ["DiffeomorphicCounterfactual"]


class DiffeomorphicCounterfactual(CounterfactualExplainer):
    """Counterfactuals by gradient ascent in a flow's base space (Dombrowski et al.).

    With ``z0 = g⁻¹(x)`` the search minimises ``-log softmax(f(g(z)))[k]`` over ``z`` and returns
    ``x' = g(z*)``.  To first order an ascent step in ``z`` is an ascent step in ``x`` whose gradient
    is multiplied by ``J Jᵀ`` (``J = ∂g/∂z``): directions off the data manifold are damped, so ``x'``
    stays realistic.

    Args:
        forward_func: the classifier ``f`` (returns logits unless ``output`` says otherwise).
        flow: an :class:`nflows.flows.Flow` mapping inputs to base space (``flow.transform_to_noise``)
            or any object with ``encode(x) -> z`` and ``decode(z) -> x``.  Must be in eval mode.
        output: ``"logits"`` (default), ``"probs"`` or ``"log_probs"``.
        event_shape: sample shape the flow expects (``None``: the input's shape, else flattened).
        recon_tol: largest acceptable RMS reconstruction error of the flow.

    Example:
        >>> explainer = DiffeomorphicCounterfactual(classifier, flow)     # doctest: +SKIP
        >>> delta = explainer.attribute(x, target=3)                      # doctest: +SKIP
        >>> result = explainer.counterfactual(x, target=3, confidence=0.99)  # doctest: +SKIP
        >>> result.success.float().mean()                                 # doctest: +SKIP
    """

    method = "diffeomorphic"
    chart_needs_eval = True

    def __init__(
        self,
        forward_func: Callable[..., Tensor],
        flow: Any,
        output: OutputKind = "logits",
        event_shape: Optional[tuple[int, ...]] = None,
        recon_tol: float = 1e-3,
    ):
        super().__init__(forward_func, FlowChart(flow, event_shape=event_shape, recon_tol=recon_tol), output)
        self.flow = flow
