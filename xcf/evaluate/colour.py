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
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from xcf._validation import check_inputs, check_number
from xcf.evaluate.regions import SHARE_RANGE, Measure, _pair, prepare
from xcf.result import CounterfactualResult

__all__ = ["COLOUR_THRESHOLD", "ColourEffect", "ColourVerdict", "colour_audit", "colour_effect", "colour_share",
           "recolour_reshape"]


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


@dataclass
class ColourEffect:
    """Does the classifier follow the counterfactuals' colour, their shape, or both?

    Attributes:
        target: the most common target class.
        n: inputs measured.
        colour_flip: share of inputs recoloured as their counterfactuals (brightness kept) classified as the target.
        colour_control: the same with the colours of another input's counterfactual (toward another class).
        colour_interval: bootstrap interval of ``colour_flip - colour_control`` (paired).
        shape_flip, shape_control, shape_interval: the same for the counterfactuals' brightness in the inputs'
            colours (the control: another counterfactual's brightness).
        colour_share, shape_share: mean share of the counterfactuals' log-probability gain each part reaches.
        level: the intervals' confidence level.
        reads_colour, reads_shape: the interval lies above zero.
        explanation: a sentence for the report.
    """

    target: int
    n: int
    colour_flip: float
    colour_control: float
    colour_interval: tuple[float, float]
    shape_flip: float
    shape_control: float
    shape_interval: tuple[float, float]
    colour_share: float
    shape_share: float
    level: float
    reads_colour: bool
    reads_shape: bool
    explanation: str = ""

    @property
    def reads(self) -> str:
        """``"colour"``, ``"shape"``, ``"colour and shape"`` or ``"neither"``."""
        parts = [p for p, on in (("colour", self.reads_colour), ("shape", self.reads_shape)) if on]
        return " and ".join(parts) or "neither"

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "colour_interval": list(self.colour_interval),
                "shape_interval": list(self.shape_interval), "reads": self.reads}


def _brightness_colour(v: Tensor, dark: float = 0.05) -> tuple[Tensor, Tensor]:
    """``v = max_c x_c`` ``(N, 1, H, W)`` and colour ``x / v`` ``(N, 3, H, W)``; dark pixels take the image's
    mean colour (weighted by brightness), or white for a black image."""
    bright = v.amax(1, keepdim=True)
    colour = v / bright.clamp_min(1e-12)
    weight = bright.clamp_min(0)
    mean = (colour * weight).sum((2, 3), keepdim=True) / weight.sum((2, 3), keepdim=True).clamp_min(1e-12)
    mean = mean / mean.amax(1, keepdim=True).clamp_min(1e-12)
    mean = torch.where(weight.sum((2, 3), keepdim=True) > 0, mean, torch.ones_like(mean))
    return bright, torch.where(bright > dark, colour, mean.expand_as(colour))


def recolour_reshape(x: Tensor, counterfactual: Tensor) -> tuple[Tensor, Tensor]:
    """``(recoloured, reshaped)``: the inputs' brightness in the counterfactuals' colour, and the
    counterfactuals' brightness in the inputs' colour (RGB images in ``[0, 1]``).

    Example:
        >>> red, green = torch.zeros(1, 3, 1, 2), torch.zeros(1, 3, 1, 2)
        >>> red[0, 0, 0, 0], green[0, 1, 0, :] = 1.0, 1.0          # a red dot; a green bar
        >>> recoloured, reshaped = recolour_reshape(red, green)
        >>> recoloured[0, :, 0, 0].tolist(), reshaped[0, :, 0, 1].tolist()
        ([0.0, 1.0, 0.0], [1.0, 0.0, 0.0])
    """
    x, xc = _pair(x, counterfactual)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"colour checks need RGB images (N, 3, H, W), got shape {tuple(x.shape)}")
    bx, cx = _brightness_colour(x)
    bc, cc = _brightness_colour(xc)
    return (bx * cc).clamp(0, 1), (bc * cx).clamp(0, 1)


def colour_effect(
    classifier: Callable[[Tensor], Tensor],
    x: Tensor,
    counterfactual: Tensor,
    target: Any,
    *,
    level: float = 0.95,
    seed: int = 0,
    batch_size: int = 256,
) -> ColourEffect:
    """Apply only the colour part, or only the brightness (shape) part, of each counterfactual's change: which one
    turns the classifier to the target?

    The flip rate of each part is compared with a control: the same part taken from the counterfactual of another
    input sent to another class.  The classifier reads colour (shape) when the paired difference's bootstrap
    interval lies above zero.  Flip rates, not gain shares, decide: a steepest-descent counterfactual hides a
    little adversarial gain in every pixel's colour, which moves the log-probability but flips nothing.

    Args:
        classifier: the audited classifier (logits), in eval mode.
        x: ``(N, 3, H, W)`` RGB inputs in ``[0, 1]``.
        counterfactual: their counterfactuals.
        target: the class each counterfactual was sent to (at least two classes among the inputs).
        level: confidence level of the bootstrap intervals.
        seed: seed of the bootstrap.
        batch_size: images per classifier call.

    Returns:
        A :class:`ColourEffect`.
    """
    if not 0 < check_number(level, "level") < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    scorer, x, xc, t = prepare(classifier, x, counterfactual, target, batch_size)
    recolour_reshape(x[:1], xc[:1])  # refuses grey images before the classifier runs
    m = Measure(scorer, x, xc, t, seed, 2000)
    n, tm = m.n, m.target.cpu()
    if bool((tm == tm[0]).all()):
        raise ValueError("colour_effect needs counterfactuals toward at least two classes: the control takes the "
                         "colour of a counterfactual toward another class")
    other = torch.tensor([next(j % n for j in range(i + 1, i + n) if tm[j % n] != tm[i]) for i in range(n)],
                         device=m.x.device)
    own_c, own_s = recolour_reshape(m.x, m.xc)
    ctl_c, ctl_s = recolour_reshape(m.x, m.xc[other])
    lp, hit = m.scorer(torch.cat([own_c, own_s, ctl_c, ctl_s]), m.target)
    lp, hit = lp.view(4, n), hit.view(4, n).double()
    share = ((lp[:2] - m.l0) / m.gain).clamp(*SHARE_RANGE)
    alpha = 1 - level
    q = torch.tensor([alpha / 2, 1 - alpha / 2], dtype=torch.float64)
    ci = [tuple(torch.quantile((hit[i] - hit[i + 2])[m.boot].mean(1), q).tolist()) for i in (0, 1)]
    e = ColourEffect(int(torch.mode(tm).values), n, float(hit[0].mean()), float(hit[2].mean()), ci[0],
                     float(hit[1].mean()), float(hit[3].mean()), ci[1], float(share[0].mean()), float(share[1].mean()),
                     level, ci[0][0] > 0, ci[1][0] > 0)
    e.explanation = (
        f"reads {e.reads}: recoloured as their counterfactuals (brightness kept), {e.colour_flip:.0%} of the inputs "
        f"turn to the target (control {e.colour_control:.0%}; difference [{ci[0][0]:+.2f}, {ci[0][1]:+.2f}]); "
        f"redrawn with their counterfactuals' brightness in their own colour, {e.shape_flip:.0%} (control "
        f"{e.shape_control:.0%}; [{ci[1][0]:+.2f}, {ci[1][1]:+.2f}]); intervals at {level:.0%}, {n} inputs.")
    return e
