"""Adversarial baselines: the same ascent in pixel space, free or inside a norm ball (PGD).

Pixel space is the identity chart, so the search minimises ``CE(f(x'), k)`` over ``x'`` itself.
Without a constraint this is the control experiment of the diffeomorphic method: the same loss,
stopping rule (``softmax(f(x'))[k] >= confidence``) and step budget, with Adam, but without the
generator's metric ``γ⁻¹ = J Jᵀ`` damping the directions off the data manifold, so the change is
an adversarial perturbation rather than a counterfactual.

With ``norm`` and ``radius`` it is projected gradient descent (Madry et al., 2018) toward the
target class inside the ball ``B = {x' : ||x' - x|| <= radius}`` around each sample's own input::

    L-inf:  x' <- Π(x' - α sign(∇ CE))            (the sign step)
    L2:     x' <- Π(x' - α ∇ CE / ||∇ CE||₂)       (the normalised-gradient step, per sample)

where ``Π`` clamps ``x' - x`` to the ball (``clamp(-r, r)`` for L-inf, rescaling to norm ``r`` for
L2) and then clamps to ``bounds``.  The random start draws ``x' = Π(x + u)`` with ``u`` uniform in
the ball: uniform in the cube for L-inf; a uniform direction times ``r·U^{1/d}`` (``d`` values per
sample, ``U ~ U(0, 1)``) for L2.  For the L-inf ball the iterates are those of
:class:`captum.robust.PGD` with ``targeted=True`` and a per-sample cross-entropy loss, except that
each sample stops as soon as it reaches the target.
"""

from __future__ import annotations

from typing import Callable, Optional

from torch import Tensor

from xcf._typing import OutputKind
from xcf.charts.ball import BallChart, _check_bounds
from xcf.charts.base import Chart
from xcf.charts.pixel import PixelChart
from xcf.explain.base import CounterfactualExplainer

__all__ = ["AdversarialCounterfactual"]


class AdversarialCounterfactual(CounterfactualExplainer):
    """Ascent of the target class directly in pixel space: the adversarial baseline.

    With ``norm=None`` the search runs Adam in pixel space (:class:`xcf.PixelChart`, iterates
    clamped to ``bounds``) with the same loss ``-log softmax(f(x'))[k]``, stopping rule and budget as
    the other explainers, so comparisons with :class:`xcf.DiffeomorphicCounterfactual` are fair.
    With ``norm="linf"`` or ``"l2"`` and a ``radius`` it is targeted PGD inside the ball around each
    input (see :class:`BallChart`): sign steps for L-inf, normalised gradient steps for L2,
    an optional seeded random start, per-sample early stop at the target confidence.

    Args:
        forward_func: the classifier ``f``.
        bounds: ``(low, high)`` of the data range (iterates are clamped to it), or ``None``.
        norm: ``None`` (free Adam ascent), ``"linf"`` or ``"l2"`` (PGD).
        radius: the ball's radius; required with ``norm``, refused without it.
        output: what ``forward_func`` returns: ``"logits"`` (default), ``"probs"`` or ``"log_probs"``.
        random_start: PGD only: start from a uniform random point of the ball (ignored with
            ``norm=None``).  Because the draw depends on the batch, batched and per-example calls
            agree only with ``random_start=False``.
        seed: PGD only: seed of the random start.

    Example:
        >>> clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
        >>> x = torch.rand(2, 1, 4, 4)
        >>> pgd = AdversarialCounterfactual(clf, norm="linf", radius=0.3)
        >>> result = pgd.counterfactual(x, target=[2, 0])
        >>> bool(((result.counterfactual - x).abs() <= 0.3 + 1e-6).all())
        True
        >>> delta = AdversarialCounterfactual(clf).attribute(x, target=1, steps=50)
        >>> delta.shape
        torch.Size([2, 1, 4, 4])
    """

    method = "adversarial"

    def __init__(
        self,
        forward_func: Callable[..., Tensor],
        *,
        bounds: Optional[tuple[float, float]] = (0.0, 1.0),
        norm: Optional[str] = None,
        radius: Optional[float] = None,
        output: OutputKind = "logits",
        random_start: bool = True,
        seed: int = 0,
    ):
        bounds = _check_bounds(bounds)
        chart: Chart
        if norm is None:
            if radius is not None:
                raise ValueError(
                    f"radius={radius} given without a norm; pass norm='linf' or 'l2' for a ball "
                    "(PGD) or leave radius=None for the free pixel-space search"
                )
            chart = PixelChart(bounds)
        else:
            chart = BallChart(norm, radius, bounds, random_start=random_start, seed=seed)
        super().__init__(forward_func, chart, output=output)
        self.bounds = bounds
        self.norm = None if norm is None else chart.norm
        self.radius = None if norm is None else chart.radius
        self.random_start = bool(random_start)
        self.seed = int(seed)
