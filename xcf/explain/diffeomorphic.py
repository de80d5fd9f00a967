"""Diffeomorphic counterfactuals: ascent in the base space of a normalizing flow."""

from __future__ import annotations

from typing import Any, Callable, Optional

from torch import Tensor

from xcf._typing import OutputKind
from xcf.charts.flow import FlowChart
from xcf.explain.base import CounterfactualExplainer

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
        max_recon_error: largest acceptable RMS reconstruction error of the flow (worse is refused).
        recon_tol: deprecated name of ``max_recon_error``.
        bounds: ``(low, high)`` of the data range: clamp ``g(z)`` onto it, so the classifier judges the
            projected image (``None``, the default: ``g(z)`` as is; see
            :meth:`~xcf.result.CounterfactualResult.out_of_range`).
        lr: default L2 step size in the base space (``None``: ``2 sqrt(D / 784)``, chosen on MNIST).
        confidence: default stopping confidence (``None``: 0.99; 0.999999 on MNIST, see docs/mnist.md).

    Example:
        >>> from xcf.models.flows import realnvp_flow
        >>> flow = realnvp_flow((1, 4, 4), levels=256, hidden=8, blocks_per_scale=1, scales=1).eval()
        >>> clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
        >>> explainer = DiffeomorphicCounterfactual(clf, flow)
        >>> x = torch.rand(3, 1, 4, 4) * 0.8 + 0.1
        >>> delta = explainer.attribute(x, target=2)                          # x' - x, Captum-style
        >>> result = explainer.counterfactual(x, target=2, confidence=0.9)
        >>> delta.shape, result.method, bool((result.score[result.success] >= 0.9).all())
        (torch.Size([3, 1, 4, 4]), 'diffeomorphic', True)
    """

    method = "diffeomorphic"

    def __init__(
        self,
        forward_func: Callable[..., Tensor],
        flow: Any,
        *,
        output: OutputKind = "logits",
        event_shape: Optional[tuple[int, ...]] = None,
        max_recon_error: float = 1e-3,
        recon_tol: Optional[float] = None,
        bounds: Optional[tuple[float, float]] = None,
        lr: Optional[float] = None,
        confidence: Optional[float] = None,
    ):
        chart = FlowChart(flow, event_shape=event_shape, max_recon_error=max_recon_error, recon_tol=recon_tol,
                          bounds=bounds, lr=lr, confidence=confidence)
        super().__init__(forward_func, chart, output=output)
        self.flow = flow
