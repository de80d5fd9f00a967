"""Clever-Hans detection: does a classifier rely on a small pattern instead of the object?

A *Clever-Hans* classifier (Lapuschkin et al.) solves its training task through a spurious feature,
e.g. a watermark carried by the images of one class.  :func:`stamp` makes such data on purpose: a small
pattern (square, cross or any ``(h, w)`` array) written at a fixed position into a share ``rate`` of the
training images of class ``k``.  A classifier trained on it learns the shortcut.

The audit asks each explanation where its mass lies.  For a map ``m`` (a difference map ``x' - x`` or
an attribution) and a region ``R`` (a boolean mask) the *localisation score* is

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
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor

from xcf._validation import check_inputs, format_inputs
from xcf.maps import _attribute
from xcf.objectives import TargetType, as_target_tensor
from xcf.search import CounterfactualResult

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

PatternLike = Union[None, str, Tensor]


def square(size: int = 2) -> Tensor:
    """A ``size x size`` block of full intensity (entries 1).

    Example:
        >>> square(2).tolist()
        [[1.0, 1.0], [1.0, 1.0]]
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    return torch.ones(size, size)


def cross(size: int = 3) -> Tensor:
    """A ``size x size`` plus sign (odd ``size``): 1 on the middle row and column, NaN (keep) elsewhere.

    Example:
        >>> cross(3).isnan().tolist()
        [[True, False, True], [False, False, False], [True, False, True]]
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"size must be a positive odd number, got {size}")
    p = torch.full((size, size), float("nan"))
    p[size // 2, :] = 1.0
    p[:, size // 2] = 1.0
    return p


def _pattern(pattern: PatternLike) -> Tensor:
    if pattern is None:
        return square(2)
    if isinstance(pattern, str):
        if pattern == "square":
            return square(2)
        if pattern == "cross":
            return cross(3)
        raise ValueError(f"pattern must be 'square', 'cross' or an (h, w) tensor, got {pattern!r}")
    if not isinstance(pattern, Tensor):
        raise TypeError(f"pattern must be None, 'square', 'cross' or a tensor, got {type(pattern).__name__}")
    if pattern.ndim != 2 or pattern.numel() == 0:
        raise ValueError(f"pattern must be a non-empty (h, w) tensor, got shape {tuple(pattern.shape)}")
    if not pattern.is_floating_point():
        pattern = pattern.float()
    if bool(pattern.isnan().all()):
        raise ValueError("pattern is all NaN: it would change nothing")
    return pattern


def _position(position: Sequence[int], hw: tuple[int, int], phw: tuple[int, int]) -> tuple[int, int]:
    """Top-left corner; negative entries count from the bottom / right (``(-2, -2)``: bottom-right 2x2)."""
    if len(position) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in position):
        raise ValueError(f"position must be a pair of ints (row, column), got {position!r}")
    r, c = position
    h, w = hw
    ph, pw = phw
    r = r + h if r < 0 else r
    c = c + w if c < 0 else c
    if not (0 <= r and r + ph <= h and 0 <= c and c + pw <= w):
        raise ValueError(
            f"a {ph}x{pw} pattern at position {tuple(position)} does not fit into a {h}x{w} image"
        )
    return r, c


def region_mask(
    shape: Sequence[int],
    position: Sequence[int] = (0, 0),
    pattern_shape: Union[Sequence[int], Tensor, str] = (2, 2),
) -> Tensor:
    """Boolean mask of the pixels a pattern covers, for images of ``shape`` (all channels marked).

    Args:
        shape: image shape ``(H, W)`` or ``(C, H, W)`` (no batch dimension).
        position: top-left ``(row, column)``; negative values count from the bottom / right.
        pattern_shape: ``(h, w)`` for a full box, or the pattern itself (a tensor, ``"square"`` or
            ``"cross"``), in which case only the entries it writes (not NaN) are marked.

    Returns:
        A bool tensor of ``shape``.

    Example:
        >>> region_mask((4, 4), (-2, 0), (2, 2)).int().tolist()
        [[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]]
        >>> int(region_mask((8, 8), (0, 0), "cross").sum())
        5
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise ValueError(f"shape must be (H, W) or (C, H, W), got {shape}")
    if isinstance(pattern_shape, (Tensor, str)) or pattern_shape is None:
        covered = ~_pattern(pattern_shape).isnan()
    else:
        phw = tuple(int(s) for s in pattern_shape)
        if len(phw) != 2 or min(phw) < 1:
            raise ValueError(f"pattern_shape must be (h, w) with positive entries, got {phw}")
        covered = torch.ones(phw, dtype=torch.bool)
    ph, pw = covered.shape
    r, c = _position(position, shape[-2:], (ph, pw))
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[..., r:r + ph, c:c + pw] = covered
    return mask


def apply_pattern(
    x: Tensor,
    pattern: PatternLike = None,
    position: Sequence[int] = (0, 0),
    value: Optional[float] = None,
) -> Tensor:
    """Write ``value * pattern`` into every image of ``x`` (a new tensor; ``x`` is unchanged).

    Args:
        x: ``(N, H, W)`` or ``(N, C, H, W)`` images.
        pattern: ``None`` / ``"square"`` (2x2 block), ``"cross"`` (3x3 plus) or an ``(h, w)`` tensor of
            relative intensities; NaN entries leave the pixel as it is.
        position: top-left ``(row, column)``; negative values count from the bottom / right.
        value: intensity of a pattern entry 1 (default: the largest value in ``x``, i.e. "bright").

    Returns:
        The stamped copy of ``x``.
    """
    check_inputs(x, "x", min_dim=3)
    p = _pattern(pattern).to(device=x.device, dtype=x.dtype)
    r, c = _position(position, tuple(x.shape[-2:]), tuple(p.shape))
    v = float(x.max()) if value is None else float(value)
    out = x.clone()
    patch = out[..., r:r + p.shape[0], c:c + p.shape[1]]
    keep = p.isnan()
    out[..., r:r + p.shape[0], c:c + p.shape[1]] = torch.where(keep, patch, torch.nan_to_num(p) * v)
    return out


def stamp(
    x: Tensor,
    y: Tensor,
    pattern: PatternLike = None,
    position: Sequence[int] = (0, 0),
    target_class: int = 0,
    rate: float = 1.0,
    seed: int = 0,
    value: Optional[float] = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Watermark a share ``rate`` of the images of class ``target_class`` (Clever-Hans training data).

    Args:
        x: ``(N, H, W)`` or ``(N, C, H, W)`` training images.
        y: ``(N,)`` integer labels.
        pattern: see :func:`apply_pattern` (default: a 2x2 bright square).
        position: top-left ``(row, column)`` of the pattern; negative values count from the bottom / right.
        target_class: the class whose images carry the pattern.
        rate: share of that class's images stamped, in ``[0, 1]`` (chosen at random with ``seed``).
        seed: seed of the choice (a private generator; the global RNG is untouched).
        value: intensity of a pattern entry 1 (default: the largest value in ``x``).

    Returns:
        ``(x_stamped, y, stamped)``: a stamped copy of ``x``, a copy of ``y`` (labels are not changed)
        and the ``(N,)`` bool mask of stamped samples.  The region is
        ``region_mask(x.shape[1:], position, pattern)``.

    Example:
        >>> x, y = torch.zeros(4, 1, 8, 8), torch.tensor([0, 1, 1, 2])
        >>> xs, ys, mask = stamp(x, y, "square", position=(0, 0), target_class=1, value=1.0)
        >>> mask.tolist(), float(xs[1, 0, :2, :2].sum()), float(xs[0].sum())
        ([False, True, True, False], 4.0, 0.0)
    """
    check_inputs(x, "x", min_dim=3)
    if not isinstance(y, Tensor) or y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError("y must be an integer tensor of labels")
    y = y.reshape(-1)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"y has {y.shape[0]} labels but x has {x.shape[0]} images")
    if not 0.0 <= float(rate) <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    members = (y == int(target_class)).nonzero().squeeze(1)
    if members.numel() == 0:
        raise ValueError(f"no image has label target_class={target_class} (labels: {torch.unique(y).tolist()})")
    gen = torch.Generator().manual_seed(int(seed))
    count = int(round(float(rate) * members.numel()))
    chosen = members[torch.randperm(members.numel(), generator=gen)[:count].to(members.device)]
    mask = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    mask[chosen] = True
    v = float(x.max()) if value is None else float(value)
    out = x.clone()
    if count:
        out[mask] = apply_pattern(x[mask], pattern, position, v)
    return out, y.clone(), mask


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
        method: a name for the explanation method.
        success_rate: share of successful counterfactual searches (NaN for attributions).
        scores: the per-sample scores.
        explanation: a sentence for the report.
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
    method: str = ""
    success_rate: float = float("nan")
    scores: Tensor = field(default_factory=lambda: torch.empty(0), repr=False)
    explanation: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The verdict as plain Python values (scores left out)."""
        return {k: v for k, v in self.__dict__.items() if k != "scores"}


def clever_hans_audit(
    explainer_or_maps: Any,
    x: Tensor,
    target: TargetType,
    region: Tensor,
    threshold: Optional[float] = None,
    *,
    method: Optional[str] = None,
    attribute_kwargs: Optional[Mapping[str, Any]] = None,
) -> AuditVerdict:
    """Flag a classifier whose explanations toward ``target`` concentrate in ``region``.

    Args:
        explainer_or_maps: ready maps ``(N, ...)``, a :class:`~xcf.search.CounterfactualResult`, an
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

    Returns:
        An :class:`AuditVerdict`.

    Example:
        >>> explainer = CounterfactualExplainer(clf, PixelChart())                  # doctest: +SKIP
        >>> verdict = clever_hans_audit(explainer, x_other, 0, region_mask((1, 8, 8), (0, 0), (2, 2)))  # doctest: +SKIP
        >>> verdict.flagged, verdict.explanation                                    # doctest: +SKIP
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
        return AuditVerdict(False, cls, 0, *(float("nan"),) * 6, thr, baseline, float("nan"), method, success_rate,
                            scores, "no non-zero maps to score: nothing to judge")
    med = float(valid.median())
    q = torch.quantile(valid, torch.tensor([0.25, 0.75], dtype=valid.dtype))
    flagged = med >= thr
    lift = med / baseline if baseline > 0 else math.inf
    verdict = "FLAGGED: likely Clever-Hans shortcut" if flagged else "not flagged"
    explanation = (
        f"{verdict}. {method} maps toward class {cls} put a median {med:.0%} of their mass in the "
        f"{baseline:.1%}-area region ({lift:.1f}x chance; threshold {thr:.1%}; {n} maps)."
    )
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
        method=method,
        success_rate=success_rate,
        scores=scores,
        explanation=explanation,
    )


def audit_maps(
    maps: Mapping[str, Any],
    x: Tensor,
    target: TargetType,
    region: Tensor,
    threshold: Optional[float] = None,
    **kwargs: Any,
) -> dict[str, AuditVerdict]:
    """:func:`clever_hans_audit` for several explanations at once, e.g. the output of
    :func:`xcf.maps.compare_attributions`: ``{name: verdict}``.

    Example:
        >>> maps = compare_attributions(clf, x, 0, {"counterfactual": result})   # doctest: +SKIP
        >>> {k: v.median for k, v in audit_maps(maps, x, 0, region).items()}    # doctest: +SKIP
    """
    if not maps:
        raise ValueError("maps is empty")
    return {name: clever_hans_audit(source, x, target, region, threshold, method=name, **kwargs)
            for name, source in maps.items()}
