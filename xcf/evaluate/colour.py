"""Colour or shape: does a counterfactual repaint the object or redraw it?

A classifier that learnt a colour shortcut reaches another class by changing the object's colour; one that
learnt shapes changes strokes and keeps the colour.  :func:`colour_share` splits every pixel's change
``d = x' - x`` (an RGB vector) into two orthogonal parts relative to the pixel's own colour
``u = (x + x') / |x + x'|``:

* *luminance* ``(d . u) u``: brighter or darker in the same colour (a stroke drawn, thickened or erased);
* *chroma* ``d - (d . u) u``: the colour itself turns (red to green at the same brightness).

The *colour share* of a counterfactual is ``sum_p |chroma_p|^2 / sum_p |d_p|^2`` in ``[0, 1]`` (the parts are
orthogonal, so their squares add up to ``|d|^2``): near 1 for a repainted digit, near 0 for a redrawn one.
A plain chroma/luminance split of the YCbCr kind would not do here: a new *red* stroke changes a red
pixel's Cb and Cr as much as its Y, and would count as a colour change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from xcf._validation import check_inputs
from xcf.result import CounterfactualResult

__all__ = ["COLOUR_THRESHOLD", "ColourVerdict", "colour_audit", "colour_share"]


def colour_share(x: Tensor, counterfactual: Tensor) -> Tensor:
    """Per sample, the share of ``|x' - x|^2`` that changes the pixels' colour rather than their brightness.

    Args:
        x: ``(N, 3, H, W)`` RGB inputs.
        counterfactual: ``(N, 3, H, W)`` their counterfactuals ``x'``.

    Returns:
        ``(N,)`` shares in ``[0, 1]``; NaN where ``x' = x``.

    Example:
        >>> red, green = torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)
        >>> red[:, 0], green[:, 1] = 1.0, 1.0
        >>> colour_share(red, green).tolist(), colour_share(0.5 * red, red).tolist()    # repainted, brightened
        ([1.0], [0.0])
    """
    check_inputs(x, "x", min_dim=4)
    check_inputs(counterfactual, "counterfactual", min_dim=4)
    if x.shape != counterfactual.shape:
        raise ValueError(f"x has shape {tuple(x.shape)}, counterfactual {tuple(counterfactual.shape)}")
    if x.shape[1] != 3:
        raise ValueError(f"colour_share takes RGB images (N, 3, H, W), got {tuple(x.shape)}")
    x, xc = x.detach().double(), counterfactual.detach().double()
    d = xc - x
    u = x + xc
    u = u / u.norm(dim=1, keepdim=True).clamp_min(1e-12)
    along = (d * u).sum(1, keepdim=True) * u
    chroma = (d - along).pow(2).flatten(1).sum(1)
    total = d.pow(2).flatten(1).sum(1)
    share = chroma / total.clamp_min(torch.finfo(total.dtype).tiny)
    return torch.where(total > 0, share.clamp(0, 1), torch.full_like(total, float("nan"))).to(counterfactual.dtype)


@dataclass
class ColourVerdict:
    """Whether counterfactuals change colour rather than shape.

    Attributes:
        colour: the median colour share of successful counterfactuals (:func:`colour_share`).
        q25, q75: its quartiles.
        n: counterfactuals scored.
        colour_driven: ``colour >= threshold``.
        threshold: the decision threshold.
        method: the explanation.
    """

    colour: float
    q25: float
    q75: float
    n: int
    colour_driven: bool
    threshold: float
    method: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


#: colour-driven at or above this median colour share.  Measured on the coloured digits (docs/clever-hans.md):
#: diffeomorphic counterfactuals of shape classifiers 0.09, of colour-shortcut classifiers 0.20-0.41 (their
#: on-manifold changes redraw *and* repaint, since in the shortcut's training data shape and colour go together)
COLOUR_THRESHOLD = 0.2


def colour_audit(result: CounterfactualResult | tuple[Tensor, Tensor], threshold: float = COLOUR_THRESHOLD,
                 method: str = "") -> ColourVerdict:
    """Median colour share of successful counterfactuals, and whether it reaches ``threshold``.

    Args:
        result: a :class:`~xcf.result.CounterfactualResult` (its successful samples are scored) or a pair
            ``(x, counterfactual)`` (all scored).
        threshold: colour-driven when the median share reaches it.
        method: a name for the explanation (default: the result's).

    Example:
        >>> x = torch.zeros(2, 3, 2, 2); x[:, 0] = 1.0                     # red images, repainted green
        >>> colour_audit((x, x.roll(1, dims=1))).colour_driven
        True
    """
    if not 0.0 < float(threshold) < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    if isinstance(result, CounterfactualResult):
        share = colour_share(result.inputs, result.counterfactual)[result.success.to(result.inputs.device)]
        name = method or result.method
    elif isinstance(result, tuple) and len(result) == 2:
        share, name = colour_share(*result), method
    else:
        raise TypeError(f"result must be a CounterfactualResult or a pair (x, counterfactual), got {type(result).__name__}")
    share = share[~share.isnan()].double().cpu()
    if share.numel() == 0:
        return ColourVerdict(float("nan"), float("nan"), float("nan"), 0, False, float(threshold), name)
    q = torch.quantile(share, torch.tensor([0.25, 0.5, 0.75], dtype=share.dtype))
    return ColourVerdict(float(q[1]), float(q[0]), float(q[2]), int(share.numel()), bool(q[1] >= threshold),
                         float(threshold), name)
