"""Clever-Hans detection: does a classifier rely on a small pattern instead of the object?

A *Clever-Hans* classifier (Lapuschkin et al.) solves its training task through a spurious feature,
e.g. a watermark carried by the images of one class.  :func:`stamp` makes such data on purpose: a small
pattern (square, cross or any ``(h, w)`` array) written at a fixed position into a share ``rate`` of the
training images of class ``k``.  A classifier trained on it learns the shortcut.

Given the classifier and counterfactuals, :func:`clever_hans_audit` judges by *effect*
(:func:`xcf.evaluate.causal.verify_region`): the counterfactuals' change inside the region, pasted alone into the
inputs, must move the classifier toward the class clearly more than the same shape elsewhere.  On 28x28 digits
that is what separates a shortcut from a clean classifier; where the change lies does not.

Without them (maps, attributions) the audit asks each explanation where its mass lies.  For a map ``m`` (a
difference map ``x' - x`` or an attribution) and a region ``R`` (a boolean mask) the *localisation score* is

    L(m, R) = sum_{p in R} |m_p| / sum_p |m_p|,

the share of the map's absolute mass inside ``R``.  A map with no preference puts the region's area
share ``a = |R| / D`` there (the *chance baseline*).  Counterfactuals toward ``k`` of a Clever-Hans
classifier only need to paint the pattern, so their maps concentrate in ``R`` (``L >> a``); those of a
classifier that learned the digits change strokes elsewhere (``L`` about or below ``a``).
:func:`clever_hans_audit` turns the scores into a verdict: flagged when the median score is at least
``threshold`` (default ``min(0.9, max(0.05, 2 a))``: twice chance).

Which explanation is audited matters.  Steepest-descent counterfactuals (pixel chart with the ``"l2"``
step) and saliency follow the gradient and find the pattern; Adam in pixel space moves every pixel by
about the same step and so spreads its map; Integrated Gradients with a black baseline gives zero
attribution to pixels that are black in the input, so it cannot point at a pattern that is *absent*
from the images it explains.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

import torch
from torch import Tensor

from xcf._validation import check_inputs, format_inputs
from xcf.datasets.watermark import apply_pattern, cross, region_mask, square, stamp
from xcf.evaluate.causal import RegionEffect, verify_region
from xcf.evaluate.maps import _attribute
from xcf.objectives import TargetType, as_target_tensor
from xcf.result import CounterfactualResult

__all__ = [
    "square",
    "cross",
    "region_mask",
    "apply_pattern",
    "stamp",
    "localisation_score",
    "AuditVerdict",
    "clever_hans_audit",
    "audit_maps",
    "default_threshold",
]

def localisation_score(map: Tensor, region: Tensor) -> Tensor:
    """Share of each map's absolute mass inside ``region``: ``sum_R |m| / sum |m|``.

    Args:
        map: ``(N, ...)`` maps (difference maps or attributions).
        region: bool mask of shape ``(H, W)``, of one sample's shape, or ``(N, ...)``.

    Returns:
        ``(N,)`` scores in ``[0, 1]``; NaN for a map that is zero everywhere.

    Example:
        >>> m = torch.zeros(1, 4, 4); m[0, 0, 0] = 3.0; m[0, 3, 3] = -1.0
        >>> localisation_score(m, region_mask((4, 4), (0, 0), (2, 2))).tolist()
        [0.75]
    """
    if not isinstance(map, Tensor) or not map.is_floating_point():
        raise TypeError("map must be a floating-point tensor")
    if map.ndim < 2:
        raise ValueError(f"map must have shape (N, ...), got {tuple(map.shape)}")
    r = _region_for(region, map)
    m = map.detach().abs()
    inside = (m * r).flatten(1).sum(dim=1)
    total = m.flatten(1).sum(dim=1)
    return torch.where(total > 0, inside / total.clamp_min(torch.finfo(m.dtype).tiny), torch.full_like(total, float("nan")))


def _region_for(region: Tensor, map: Tensor) -> Tensor:
    if not isinstance(region, Tensor):
        raise TypeError(f"region must be a bool tensor, got {type(region).__name__}")
    r = region.to(device=map.device)
    if r.dtype != torch.bool:
        r = r != 0
    sample = tuple(map.shape[1:])
    if tuple(r.shape) in (sample, tuple(map.shape)):
        pass
    elif r.ndim == 2 and tuple(r.shape) == tuple(map.shape[-2:]):
        r = r.expand(sample)
    else:
        raise ValueError(f"region of shape {tuple(region.shape)} does not fit maps of shape {tuple(map.shape)}")
    if not bool(r.any()):
        raise ValueError("region is empty")
    return r.to(map.dtype)


def default_threshold(baseline: float) -> float:
    """Twice chance, at least 5% of the mass, at most 90%: ``min(0.9, max(0.05, 2 * baseline))``.

    Measured on 8x8 digits with a 2x2 / plus-shaped stamp (see ``docs/validation.md``): maps of clean
    classifiers put 0.1x-1.3x chance in the region, steepest-descent counterfactual and saliency maps
    of shortcut classifiers 2.2x-4.8x.
    """
    return min(max(0.05, 2.0 * baseline), 0.9)


@dataclass
class AuditVerdict:
    """The Clever-Hans verdict for one class and region.

    Attributes:
        flagged: the median localisation score reached ``threshold``.
        target: the audited class (the most common target when several are given).
        n: number of maps scored (zero maps, e.g. inputs already of the target class, are left out).
        mean, median, std, q25, q75: statistics of the localisation scores.
        fraction_above: share of maps whose score reaches ``threshold``.
        threshold: the flagging threshold.
        baseline: the region's area share (what a map with no preference scores).
        lift: ``median / baseline``.
        off_region: median over the maps of the mean absolute value per pixel *outside* the region (in the
            map's units, e.g. grey levels for ``x' - x``): the change a person looks through to find the
            pattern.
        method: a name for the explanation method.
        success_rate: share of successful counterfactual searches (NaN for attributions).
        scores: the per-sample scores.
        explanation: a sentence for the report.
        verification: the region's effect on the classifier (:func:`xcf.evaluate.causal.verify_region`) when the
            audit was given the classifier and counterfactuals; then ``flagged`` is its verdict.
    """

    flagged: bool
    target: int
    n: int
    mean: float
    median: float
    std: float
    q25: float
    q75: float
    fraction_above: float
    threshold: float
    baseline: float
    lift: float
    off_region: float = float("nan")
    method: str = ""
    success_rate: float = float("nan")
    scores: Tensor = field(default_factory=lambda: torch.empty(0), repr=False)
    explanation: str = ""
    verification: Optional[RegionEffect] = None

    @property
    def rule(self) -> str:
        """How ``flagged`` was decided: ``"effect"`` (verified on the classifier) or ``"localisation"``."""
        return "effect" if self.verification is not None else "localisation"

    def to_dict(self) -> dict[str, Any]:
        """The verdict as plain Python values (scores left out)."""
        d = {k: v for k, v in self.__dict__.items() if k not in ("scores", "verification")}
        d["rule"] = self.rule
        if self.verification is not None:
            d["verification"] = self.verification.to_dict()
        return d


def clever_hans_audit(
    explainer_or_maps: Any,
    x: Tensor,
    target: TargetType,
    region: Tensor,
    threshold: Optional[float] = None,
    *,
    method: Optional[str] = None,
    attribute_kwargs: Optional[Mapping[str, Any]] = None,
    classifier: Optional[Callable[[Tensor], Tensor]] = None,
) -> AuditVerdict:
    """Flag a classifier that relies on ``region`` to reach ``target``.

    With ``classifier`` and counterfactuals (an xcf explainer or a result) the verdict is *causal*: the
    counterfactuals' change inside ``region`` is pasted into the inputs and must move the classifier toward
    ``target`` clearly more than the same shape elsewhere (:func:`xcf.evaluate.causal.verify_region`).
    Otherwise (maps, attributions) it is the localisation rule: the median share of the maps' mass in
    ``region`` reaches ``threshold``.

    Args:
        explainer_or_maps: ready maps ``(N, ...)``, a :class:`~xcf.result.CounterfactualResult`, an
            explainer with ``counterfactual(x, target=...)`` (xcf; its ``x' - x`` is used and the
            success rate recorded) or ``attribute(x, target=...)`` (Captum), or ``fn(x, target)``.
        x: ``(N, ...)`` inputs to explain, usually images of *other* classes than ``target``.
        target: the suspected class (int) or one class per input.
        region: where the suspected pattern sits: bool mask ``(H, W)`` or of one sample's shape
            (e.g. from :func:`region_mask`).
        threshold: flag when the median localisation score is at least this (default
            :func:`default_threshold` of the region's area share).
        method: a name for the explanation in the verdict (default: the explainer's ``method`` or
            class name).
        attribute_kwargs: passed to the explainer's ``counterfactual`` / ``attribute`` call.
        classifier: the audited classifier: verify the region by its effect (needs counterfactuals).

    Returns:
        An :class:`AuditVerdict`.

    Example:
        >>> w = torch.zeros(1, 4, 4); w[0, 0, 0] = 5.0            # class 1 reads one corner pixel only
        >>> clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2)).eval()
        >>> with torch.no_grad(): _ = clf[1].weight.copy_(torch.stack([torch.zeros(16), w.flatten()]))
        >>> explainer = xcf.CounterfactualExplainer(clf, xcf.PixelChart(update="l2", lr=0.05))
        >>> verdict = clever_hans_audit(explainer, torch.rand(8, 1, 4, 4) * 0.2, 1, region_mask((1, 4, 4), (0, 0), (1, 1)))
        >>> verdict.flagged
        True
    """
    x, _ = format_inputs(x)
    check_inputs(x, "x")
    t = as_target_tensor(target, x.shape[0], x.device)
    kwargs = dict(attribute_kwargs or {})
    success_rate = float("nan")
    source = explainer_or_maps
    if method is None:
        if isinstance(source, Tensor):
            method = "maps"
        elif isinstance(source, CounterfactualResult):
            method = source.method or "counterfactual"
        else:
            method = getattr(source, "method", None) or type(source).__name__
    if not isinstance(source, (Tensor, CounterfactualResult)) and callable(getattr(source, "counterfactual", None)):
        source = source.counterfactual(x, target=t, **kwargs)
    if isinstance(source, CounterfactualResult):
        success_rate = source.success_rate
        if source.inputs.shape != x.shape:
            raise ValueError(f"the result explains inputs of shape {tuple(source.inputs.shape)}, x has {tuple(x.shape)}")
    maps = _attribute(source, x, t, kwargs)
    if maps.shape != x.shape:
        raise ValueError(f"maps have shape {tuple(maps.shape)} but x has {tuple(x.shape)}")
    r = _region_for(region, maps)
    baseline = float(r.reshape(-1, *maps.shape[1:])[0].float().mean()) if r.ndim == maps.ndim else float(r.float().mean())
    thr = default_threshold(baseline) if threshold is None else float(threshold)
    if not 0.0 < thr <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    scores = localisation_score(maps, region)
    valid = scores[~scores.isnan()].double().cpu()
    n = int(valid.numel())
    cls = int(torch.mode(t).values) if t.numel() else -1
    if n == 0:
        return AuditVerdict(False, cls, 0, *(float("nan"),) * 6, thr, baseline, float("nan"), float("nan"), method,
                            success_rate, scores, "no non-zero maps to score: nothing to judge")
    med = float(valid.median())
    q = torch.quantile(valid, torch.tensor([0.25, 0.75], dtype=valid.dtype))
    flagged = med >= thr
    verification = None
    if classifier is not None and isinstance(source, CounterfactualResult):
        verification = verify_region(classifier, x, source.counterfactual, t, _plane_of(r, maps))
        flagged = verification.verified
    lift = med / baseline if baseline > 0 else math.inf
    outside = 1.0 - r.expand_as(maps)
    off = (maps.detach().abs() * outside).flatten(1).sum(1) / outside.flatten(1).sum(1).clamp_min(1.0)
    off_region = float(off[~scores.isnan()].double().cpu().median())
    verdict = "FLAGGED: likely Clever-Hans shortcut" if flagged else "not flagged"
    explanation = (
        f"{method} maps toward class {cls} put a median {med:.0%} of their mass in the "
        f"{baseline:.1%}-area region ({lift:.1f}x chance; threshold {thr:.1%}; {n} maps); off the region they "
        f"change a median {off_region:.3g} per pixel."
    )
    if verification is not None:
        explanation = f"{verdict} by effect. {verification.explanation} Localisation: {explanation}"
    else:
        explanation = f"{verdict} by localisation. {explanation}"
    return AuditVerdict(
        flagged=bool(flagged),
        target=cls,
        n=n,
        mean=float(valid.mean()),
        median=med,
        std=float(valid.std()) if n > 1 else 0.0,
        q25=float(q[0]),
        q75=float(q[1]),
        fraction_above=float((valid >= thr).double().mean()),
        threshold=thr,
        baseline=baseline,
        lift=lift,
        off_region=off_region,
        method=method,
        success_rate=success_rate,
        scores=scores,
        explanation=explanation,
        verification=verification,
    )


def _plane_of(region: Tensor, maps: Tensor) -> Tensor:
    """The image-plane ``(H, W)`` mask of a region given in the maps' sample shape (any channel counts)."""
    r = region.reshape(-1, *maps.shape[1:])[0] if region.ndim == maps.ndim else region
    return r.bool().reshape(-1, *maps.shape[-2:]).any(0)


def audit_maps(
    maps: Mapping[str, Any],
    x: Tensor,
    target: TargetType,
    region: Tensor,
    threshold: Optional[float] = None,
    **kwargs: Any,
) -> dict[str, AuditVerdict]:
    """:func:`clever_hans_audit` for several explanations at once, e.g. the output of
    :func:`xcf.evaluate.maps.compare_attributions`: ``{name: verdict}``.

    Example:
        >>> from xcf.evaluate.maps import compare_attributions
        >>> clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2)).eval()
        >>> x, region = torch.rand(3, 1, 4, 4), region_mask((1, 4, 4), (0, 0), (2, 2))
        >>> sorted(audit_maps(compare_attributions(clf, x, 0, {}), x, 0, region))
        ['integrated_gradients', 'saliency']
    """
    if not maps:
        raise ValueError("maps is empty")
    return {name: clever_hans_audit(source, x, target, region, threshold, method=name, **kwargs)
            for name, source in maps.items()}
