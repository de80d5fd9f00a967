"""Causal verification: does the classifier rely on what a counterfactual changed inside a region?

A difference map ``d = x' - x`` shows *where* a counterfactual changed the input; it does not show what each
part of the change *does*.  On 28x28 digits a counterfactual toward 7 of a classifier that learnt a watermark
redraws the digit *and* paints a faint mark: the mark is a small share of ``|d|`` although the classifier
reads it.  This module measures effects instead of shares.

**Gain share.**  With ``l(v) = log softmax(f(v))[k]`` the counterfactual raised the target's log-probability by
``l(x') - l(x)``.  Pasting only the change inside a region ``R`` (a bool mask of the image plane),

    paste_R = x + 1_R * d,

reaches the share ``s_R = (l(paste_R) - l(x)) / (l(x') - l(x))`` of that gain (*sufficiency*, clipped to
``[-1, 2]``); removing it from the counterfactual, ``x' - 1_R * d``, loses the share
``(l(x') - l(x' - 1_R * d)) / (l(x') - l(x))`` (*necessity*).  Flip rates say how often the pasted image is
classified as ``k``.

**Control.**  A region of the change always does *something* when the change there is large.  The control
is the same shape moved elsewhere: the ``controls`` placements that do not overlap ``R`` and hold the most
mean change ``|d|`` (the strongest competitors, not empty background).  The *effect* is the paired
difference ``s_R - mean_j s_{C_j}`` per input; its interval is a percentile bootstrap over the inputs
(Bonferroni-corrected when several candidate regions are tested).  A region is **verified** (the classifier
relies on it) only when the interval's lower end is at least ``min_effect`` *and* the sufficiency is at least
``min_lift`` times the control's at that lower end: a shortcut's few pixels do several times more than any
other part of the change of their size, a stroke piece does about as much as other stroke pieces.

**Hotspots by effect.**  :func:`verify_hotspots` proposes candidate regions from each class's mean signed
change (connected regions at several levels, at most ``max_area`` of the image, and any region the auditor
names) and verifies each.  A verified region whose change lies mostly where the inputs are dark (off the
objects) is a *hotspot*, a suspected shortcut such as a watermark; one on the objects is a *cue* (a clean
classifier that needs a stroke erased to read a 7 relies on that stroke, and that is no shortcut).  Nested
candidates describe one region: the one with the largest effect stands for them.  Both lists are ranked by
effect per unit area.

Colour is verified the same way by :func:`xcf.evaluate.colour.colour_effect`.

:func:`paste_curve` is the companion curve: the change pasted pixel by pixel in order of ``|d|``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from xcf._validation import check_inputs, check_int, check_number
from xcf.evaluate.colour import ColourEffect, colour_effect, recolour_reshape
from xcf.evaluate.regions import (
    CONTROLS,
    Measure, NoGain, NoRoom,
    candidate_regions,
    control_regions,
    overlap_groups,
    paste,
    paste_curve,
    prepare,
    remove,
)
from xcf.evaluate.regions import _box, _plane

__all__ = [
    "ColourEffect",
    "RegionEffect",
    "RegionScan",
    "Verification",
    "candidate_regions",
    "colour_effect",
    "control_regions",
    "paste",
    "paste_curve",
    "recolour_reshape",
    "remove",
    "verify_hotspots",
    "verify_region",
]

#: a verified region's effect (share of the gain above the control) clears this at the interval's lower end
MIN_EFFECT = 0.1  # 0.05 let adversarial background noise through on a clean MNIST classifier ([+0.08, +0.13])
#: ... and its sufficiency this multiple of the control's.  Measured 2026-12-06 (40-80 inputs): the strongest
#: candidate of a clean MNIST classifier reached 1.2x-1.4x at the interval's lower end, the shipped MNIST
#: watermark 2.9x-14x, the 8x8 digits' 2x2 watermarks 2.0x-6.3x (there a 2x2 stroke piece is 6% of the image)
MIN_LIFT = 2.0
#: a hotspot is a *shortcut* when at least this share of its change lies off the objects: on pixels the inputs
#: leave dark (:data:`xcf.evaluate.regions.OBJECT_LEVEL`), and the reference images too
MIN_OFF_OBJECT = 0.5


@dataclass
class RegionEffect:
    """What the counterfactuals' change inside one region does to the classifier.

    Attributes:
        target: the target class.
        box: ``(top, left, bottom, right)`` of the region (bottom, right exclusive).
        mask: bool ``(H, W)``.
        area: the region's share of the image.
        n: inputs measured (counterfactuals that raised the target's log-probability).
        sufficiency: mean share of the counterfactual's log-probability gain that pasting the region's change
            alone reaches.
        control: the same for the control placements (mean over placements and inputs).
        effect: ``sufficiency - control`` (mean of the paired differences).
        interval: ``(low, high)`` bootstrap interval of ``effect`` at ``level``.
        lift: ``sufficiency / control`` (``inf`` when the control does nothing).
        lift_low: the lower end of ``lift``'s bootstrap interval.
        flip_rate, control_flip_rate: share of pasted inputs classified as the target.
        necessity: mean share of the gain lost when the region's change is removed from ``x'`` (a counterfactual
            that overshoots can lose a region it relies on and still reach the target: reported, not judged).
        level: the interval's confidence level (after the correction for several candidates).
        verified: the classifier relies on the region (see the module docstring).
        off_object: share of the region's mean change ``|x' - x|`` on pixels the inputs leave dark.
        source: ``"named"`` (given by the auditor) or ``"mean map"`` (a candidate found there).
        crop: the mean signed change ``(C, h, w)`` inside ``box``.
        explanation: a sentence for the report.
    """

    target: int
    box: tuple[int, int, int, int]
    mask: Tensor = field(repr=False)
    area: float
    n: int
    sufficiency: float
    control: float
    effect: float
    interval: tuple[float, float]
    lift: float
    lift_low: float
    flip_rate: float
    control_flip_rate: float
    necessity: float
    level: float
    verified: bool
    off_object: float = float("nan")
    source: str = "named"
    crop: Tensor = field(default_factory=lambda: torch.empty(0), repr=False)
    explanation: str = ""

    @property
    def concentration(self) -> float:
        """``effect / area``: the effect per unit of image area (how hotspots are ranked)."""
        return self.effect / self.area

    @property
    def shortcut(self) -> bool:
        """Verified, and off the objects: a pattern the classifier reads besides the objects (a watermark)."""
        return self.verified and self.off_object >= MIN_OFF_OBJECT

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (mask and crop left out)."""
        d = {k: v for k, v in self.__dict__.items() if k not in ("mask", "crop")}
        return {**d, "box": list(self.box), "interval": list(self.interval), "concentration": self.concentration,
                "shortcut": self.shortcut}


@dataclass
class RegionScan:
    """The hotspots of one target class, verified by effect.

    Attributes:
        target: the class.
        hotspots: verified regions off the objects (suspected shortcuts), one per hotspot, ranked by effect per
            unit area.
        cues: verified regions on the objects (the classifier's own cues, e.g. a stroke it needs erased), one per
            group, ranked the same way.
        best: the candidate with the largest effect per unit area whether verified or not (``None`` when no
            candidate could be measured): what a clean classifier's strongest region does.
        candidates: how many candidate regions were tested.
        n: inputs measured.
    """

    target: int
    hotspots: list[RegionEffect]
    best: RegionEffect | None
    candidates: int
    n: int
    cues: list[RegionEffect] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "candidates": self.candidates, "n": self.n,
                "hotspots": [h.to_dict() for h in self.hotspots], "cues": [c.to_dict() for c in self.cues],
                "best": self.best.to_dict() if self.best else None}


@dataclass(frozen=True)
class Verification:
    """How a region is verified (see the module docstring); checked when made.

    Attributes:
        controls: control placements of the region's shape (:func:`control_regions`).
        level: confidence level of the bootstrap interval (corrected for several candidates by
            :func:`verify_hotspots`).
        min_effect: the smallest effect (share of the gain above the control) the interval must clear.
        min_lift: the smallest ``sufficiency / control`` ratio the interval must clear.
        seed: seed of the bootstrap (2,000 resamples).
        batch_size: images per classifier call.
    """

    controls: int = CONTROLS
    level: float = 0.95
    min_effect: float = MIN_EFFECT
    min_lift: float = MIN_LIFT
    seed: int = 0
    batch_size: int = 256

    def __post_init__(self) -> None:
        check_int(self.controls, "controls", minimum=1)
        check_int(self.seed, "seed")
        check_int(self.batch_size, "batch_size", minimum=1)
        if not 0 < check_number(self.level, "level") < 1:
            raise ValueError(f"level must lie in (0, 1), got {self.level}")
        if not 0 <= check_number(self.min_effect, "min_effect") < 1:
            raise ValueError(f"min_effect must lie in [0, 1), got {self.min_effect}")
        if not check_number(self.min_lift, "min_lift") >= 1:
            raise ValueError(f"min_lift must be at least 1, got {self.min_lift}")


def _effect(m: Measure, region: Tensor, v: Verification, level: float, source: str) -> RegionEffect:
    """Verify one region on a prepared batch (see the module docstring)."""
    ctrl = control_regions(region.cpu(), m.change.cpu(), v.controls)
    suff, flip, nec = m.shares(torch.cat([region.cpu()[None], ctrl]))
    s_r, s_c = suff[0], suff[1:].mean(0)
    diff = s_r - s_c
    b_r, b_c = s_r[m.boot].mean(1), s_c[m.boot].mean(1)
    alpha = 1 - level
    q = torch.tensor([alpha / 2, 1 - alpha / 2], dtype=torch.float64)
    lo, hi = torch.quantile(b_r - b_c, q).tolist()
    lift = _ratio(float(s_r.mean()), float(s_c.mean()))
    lift_low = float(torch.quantile(torch.tensor([_ratio(a, b) for a, b in zip(b_r.tolist(), b_c.tolist())],
                                                 dtype=torch.float64).clamp(max=1e6), alpha))
    verified = lo >= v.min_effect and lift_low >= v.min_lift
    box = _box(region)
    area = float(region.double().mean())
    off = m.off_object(region)
    e = RegionEffect(
        target=int(m.target[0]), box=box, mask=region.cpu(), area=area, n=m.n,
        sufficiency=float(s_r.mean()), control=float(s_c.mean()), effect=float(diff.mean()), interval=(lo, hi),
        lift=lift, lift_low=lift_low, flip_rate=float(flip[0].mean()), control_flip_rate=float(flip[1:].mean()),
        necessity=float(nec.mean()), level=level, verified=verified, off_object=off,
        source=source, crop=m.mean_signed[:, box[0]:box[2], box[1]:box[3]].float())
    e.explanation = _explain(e, v.min_effect, v.min_lift)
    return e


def _ratio(a: float, b: float) -> float:
    if b <= 0:
        return math.inf if a > 0 else 0.0
    return a / b


def _times(v: float) -> str:
    return "over 100x" if v > 100 else f"{v:.1f}x"


def _explain(e: RegionEffect, min_effect: float, min_lift: float) -> str:
    where = f"rows {e.box[0]}..{e.box[2] - 1}, columns {e.box[1]}..{e.box[3] - 1} ({e.area:.1%} of the image)"
    verdict = "not verified"
    if e.verified:
        verdict = "VERIFIED: the classifier relies on this region" + (
            ", off the objects" if e.shortcut else f", on the objects ({e.off_object:.0%} of its change off them)")
    return (f"{verdict}. Pasting only the change in {where} reaches {e.sufficiency:.0%} of the counterfactuals' "
            f"gain toward class {e.target} ({e.flip_rate:.0%} flip), the same shape where the change is largest "
            f"elsewhere {e.control:.0%}; effect {e.effect:+.2f} [{e.interval[0]:+.2f}, {e.interval[1]:+.2f}] at "
            f"{e.level:.1%}, lift {_times(e.lift)} (low end {_times(e.lift_low)}; verified needs >= {min_effect:g} and "
            f">= {min_lift:g}x; {e.n} inputs).")


def verify_region(
    classifier: Callable[[Tensor], Tensor],
    x: Tensor,
    counterfactual: Tensor,
    target: Any,
    region: Tensor,
    verification: Verification | None = None,
) -> RegionEffect:
    """Verify by its effect that ``classifier`` relies on the counterfactuals' change inside ``region``.

    Args:
        classifier: the audited classifier (logits), in eval mode.
        x: ``(N, C, H, W)`` inputs.
        counterfactual: ``(N, C, H, W)`` their counterfactuals ``x'``.
        target: the class each counterfactual was sent to (int or ``(N,)``).
        region: bool ``(H, W)`` mask (or of one sample's shape: its channels are taken together).
        verification: controls, level, thresholds, seed and batch size (default: :class:`Verification`).

    Returns:
        A :class:`RegionEffect`.

    Example:
        >>> w = torch.zeros(2, 1, 4, 4); w[1, 0, 0, 0] = 8.0            # class 1 reads one corner pixel only
        >>> clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2)).eval()
        >>> with torch.no_grad(): _ = clf[1].weight.copy_(w.flatten(1))
        >>> x = torch.rand(16, 1, 4, 4) * 0.1; x[:, 0, 0, 0] = 0
        >>> xc = (x + 0.3 * torch.rand(16, 1, 4, 4)).clamp(0, 1); xc[:, 0, 0, 0] = 1.0
        >>> corner = torch.zeros(4, 4, dtype=torch.bool); corner[0, 0] = True
        >>> verify_region(clf, x, xc, 1, corner).verified
        True
    """
    v = _options(verification)
    scorer, x, xc, t = prepare(classifier, x, counterfactual, target, v.batch_size)
    r = _plane(region, x)
    measure = Measure(scorer, x, xc, t, v.seed, 2000)
    return _effect(measure, r, v, v.level, "named")


def verify_hotspots(
    classifier: Callable[[Tensor], Tensor],
    x: Tensor,
    counterfactual: Tensor,
    target: Any,
    *,
    regions: Sequence[Tensor] | None = None,
    reference: Tensor | None = None,
    reference_labels: Any = None,
    cues: bool = True,
    max_area: float = 0.1,
    verification: Verification | None = None,
) -> dict[int, RegionScan]:
    """Find and verify hotspots toward each target class, without being told where to look.

    For each target class: candidate regions from the mean signed change of its counterfactuals
    (:func:`candidate_regions`) and ``regions`` (named by the auditor), each verified as in
    :func:`verify_region` with the interval's level corrected for the number of separate regions among them
    (Bonferroni; the nested cuts of one region count once).
    Verified candidates off the objects are hotspots, those on the objects cues (see the module docstring);
    overlapping ones describe one region, represented by the one with the largest effect.

    Args:
        classifier, x, counterfactual, target: as for :func:`verify_region`.
        regions: extra bool ``(H, W)`` regions to test for every class.
        reference: images whose objects count besides the inputs' when a region is judged on or off the objects,
            e.g. images of the target class (a cue draws its strokes; a watermark lies beside them).
        reference_labels: their classes: class ``k`` is then judged against the references labelled ``k``.
        cues: verify candidates on the objects too (else only those that could be hotspots, which is faster:
            most of a mean change lies on the objects).
        max_area: the largest image share of a candidate from the mean map.
        verification: as for :func:`verify_region`; its level is corrected for the number of separate candidates.

    Returns:
        ``{class: RegionScan}`` for every target class present.
    """
    v = _options(verification)
    if not 0 < check_number(max_area, "max_area") < 1:
        raise ValueError(f"max_area must lie in (0, 1), got {max_area}")
    scorer, x, xc, t = prepare(classifier, x, counterfactual, target, v.batch_size)
    if reference is not None:
        check_inputs(reference, "reference", min_dim=4)
        if tuple(reference.shape[1:]) != tuple(x.shape[1:]):
            raise ValueError(f"reference images have shape {tuple(reference.shape[1:])}, the inputs "
                             f"{tuple(x.shape[1:])}")
    named = [_plane(r, x, f"regions[{i}]") for i, r in enumerate(regions or [])]
    out: dict[int, RegionScan] = {}
    for k in torch.unique(t).tolist():
        own = (t == k).nonzero().flatten()
        ref = reference
        if reference is not None and reference_labels is not None:
            ref = reference[torch.as_tensor(reference_labels).reshape(-1).to(reference.device) == int(k)]
        try:
            measure = Measure(scorer, x[own], xc[own], t[own], v.seed, 2000, ref)
        except NoGain:  # nothing toward this class to verify; any other error is the caller's to see
            out[int(k)] = RegionScan(int(k), [], None, 0, 0)
            continue
        cands = [(r.to(x.device), "named") for r in named]
        cands += [(r.to(x.device), "mean map") for r in candidate_regions(measure.mean_signed, max_area=max_area)
                  if cues or measure.off_object(r) >= MIN_OFF_OBJECT]
        # nested cuts of one region are nearly the same test: correct for the number of separate regions
        lvl = 1 - (1 - v.level) / max(len(overlap_groups([r for r, _ in cands])), 1)
        effects = []
        for r, source in cands:
            try:
                effects.append(_effect(measure, r, v, lvl, source))
            except NoRoom:  # no control of this shape fits: the candidate cannot be judged
                continue
        best = max(effects, key=lambda e: e.concentration, default=None)
        out[int(k)] = RegionScan(int(k), _distinct([e for e in effects if e.shortcut]), best, len(effects), measure.n,
                                 _distinct([e for e in effects if e.verified and not e.shortcut]))
    return out


def _options(verification: Verification | None) -> Verification:
    if verification is None:
        return Verification()
    if not isinstance(verification, Verification):
        raise TypeError(f"verification must be a Verification, got {type(verification).__name__}")
    return verification


def _distinct(effects: list[RegionEffect]) -> list[RegionEffect]:
    """One region per group of overlapping verified regions (the largest effect), ranked by effect per area."""
    groups: list[list[RegionEffect]] = []
    for e in sorted(effects, key=lambda e: -e.effect):
        for g in groups:
            if any(bool((e.mask & o.mask).any()) for o in g):
                g.append(e)
                break
        else:
            groups.append([e])
    return sorted((g[0] for g in groups), key=lambda e: -e.concentration)
