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

**Colour.**  :func:`colour_effect` writes each RGB pixel as brightness ``v = max_c x_c`` times colour
``x / v``.  *Recolour* keeps the input's brightness and takes the counterfactual's colour; *reshape* keeps the
input's colour and takes the counterfactual's brightness (where a pixel is dark its colour is the image's
mean colour).  A colour-driven classifier follows the recoloured images, a shape-driven one the reshaped.

:func:`paste_curve` is the companion curve: the change pasted pixel by pixel in order of ``|d|``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from xcf._validation import (
    as_target_tensor,
    check_inputs,
    check_int,
    check_model_output,
    check_module_mode,
    check_number,
    modules_of,
)

__all__ = [
    "ColourEffect",
    "RegionEffect",
    "RegionScan",
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

#: sufficiency and necessity shares are clipped to this range (a paste that overshoots the counterfactual, or
#: pushes away from the target, should not dominate a mean)
SHARE_RANGE = (-1.0, 2.0)
#: control placements per region
CONTROLS = 6
#: a verified region's effect (share of the gain above the control) clears this at the interval's lower end
MIN_EFFECT = 0.05
#: ... and its sufficiency this multiple of the control's.  Measured 2026-12-06 (40-60 inputs): the strongest
#: candidate of a clean MNIST classifier reached 1.2x-1.4x at the interval's lower end, the shipped MNIST
#: watermark 2.9x-14x, the 8x8 digits' 2x2 watermark 1.8x-2.9x (there a 2x2 stroke piece is 6% of the image)
MIN_LIFT = 2.0
#: a hotspot is a *shortcut* when at least this share of its change lies off the objects: on pixels the inputs
#: leave dark (below ``OBJECT_LEVEL`` times the brightest pixel of their mean image), and the reference images too
MIN_OFF_OBJECT = 0.5
OBJECT_LEVEL = 0.2
#: the levels (times the mean map's maximum) at which candidate regions are cut
LEVELS = (0.1, 0.2, 0.3, 0.45, 0.6, 0.8)


# ----------------------------------------------------------------------------------------------- inputs


def _pair(x: Tensor, counterfactual: Tensor) -> tuple[Tensor, Tensor]:
    check_inputs(x, "x", min_dim=3)
    check_inputs(counterfactual, "counterfactual", min_dim=3)
    if counterfactual.shape != x.shape:
        raise ValueError(f"the counterfactuals have shape {tuple(counterfactual.shape)} but their inputs "
                         f"{tuple(x.shape)}: pass one counterfactual per input")
    if counterfactual.device != x.device:
        raise ValueError(f"the counterfactuals are on {counterfactual.device}, their inputs on {x.device}")
    return x.detach(), counterfactual.detach().to(x.dtype)


def _plane(region: Any, x: Tensor, name: str = "region") -> Tensor:
    """``region`` as a bool ``(H, W)`` mask of ``x``'s image plane."""
    if not isinstance(region, Tensor):
        raise TypeError(f"{name} must be a bool tensor of the image plane (H, W), got {type(region).__name__}")
    r = region.detach()
    if r.dtype != torch.bool:
        r = r != 0
    plane = tuple(x.shape[-2:])
    if r.ndim == 3 and r.shape[0] in (1, x.shape[1]) and tuple(r.shape[1:]) == plane:
        r = r.any(0)  # a mask of one sample's shape: its channels together
    if tuple(r.shape) != plane:
        raise ValueError(f"{name} of shape {tuple(region.shape)} does not fit images of shape {tuple(x.shape[1:])}: "
                         f"it must be an (H, W) = {plane} mask")
    if not bool(r.any()):
        raise ValueError(f"{name} is empty: it selects no pixel")
    if bool(r.all()):
        raise ValueError(f"{name} covers the whole image: there is nothing to compare it with")
    return r.to(x.device)


def paste(x: Tensor, counterfactual: Tensor, region: Tensor) -> Tensor:
    """``x + 1_R * (x' - x)``: the inputs with only the counterfactual's change inside ``region``.

    Example:
        >>> x, xc = torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)
        >>> paste(x, xc, torch.tensor([[True, False], [False, False]])).flatten().tolist()
        [1.0, 0.0, 0.0, 0.0]
    """
    x, xc = _pair(x, counterfactual)
    return torch.where(_plane(region, x), xc, x)


def remove(x: Tensor, counterfactual: Tensor, region: Tensor) -> Tensor:
    """``x' - 1_R * (x' - x)``: the counterfactuals with their change inside ``region`` undone."""
    x, xc = _pair(x, counterfactual)
    return torch.where(_plane(region, x), x, xc)


# ----------------------------------------------------------------------------------------------- regions


def _box(mask: Tensor) -> tuple[int, int, int, int]:
    rows, cols = mask.nonzero(as_tuple=True)
    return int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1


def control_regions(region: Tensor, change: Tensor, count: int = CONTROLS) -> Tensor:
    """Placements of ``region``'s shape elsewhere: those that do not overlap it, holding the most ``change``.

    Args:
        region: bool ``(H, W)``.
        change: ``(H, W)`` non-negative change per pixel (e.g. the mean ``|x' - x|`` over the inputs).
        count: how many placements to return (fewer when fewer fit).

    Returns:
        bool ``(m, H, W)``, ``1 <= m <= count``, the placement with the most change first.

    Example:
        >>> r = torch.zeros(4, 4, dtype=torch.bool); r[0, 0] = True
        >>> change = torch.zeros(4, 4); change[3, 3] = 1.0
        >>> control_regions(r, change, count=2)[0].nonzero().tolist()
        [[3, 3]]
    """
    count = check_int(count, "controls", minimum=1)
    if not isinstance(change, Tensor) or tuple(change.shape) != tuple(region.shape):
        raise ValueError(f"change must be an (H, W) tensor of the region's shape {tuple(region.shape)}")
    r = region.detach().cpu().bool()
    t, left, b, right = _box(r)
    patch = r[t:b, left:right].float()
    h, w = patch.shape
    H, W = r.shape
    c = change.detach().double().cpu()
    # mass of change and overlap with the region for every placement of the patch's top-left corner
    kernel = patch.double()[None, None]
    mass, overlap = (torch.nn.functional.conv2d(img[None, None], kernel)[0, 0] for img in (c, r.double()))
    free = overlap == 0
    if not bool(free.any()):
        raise ValueError(f"region of box {(t, left, b, right)} leaves no room in the {H}x{W} image for a control "
                         "region of the same shape that does not overlap it; use a smaller region")
    ij = free.nonzero()
    order = torch.argsort(mass[free], descending=True, stable=True)[:count]
    out = torch.zeros(len(order), H, W, dtype=torch.bool)
    for n, (i, j) in enumerate(ij[order].tolist()):
        out[n, i:i + h, j:j + w] = r[t:b, left:right]
    return out.to(region.device)


def candidate_regions(mean_change: Tensor, *, max_area: float = 0.1,
                      levels: Sequence[float] = LEVELS) -> list[Tensor]:
    """Compact regions of a class's mean signed change ``(C, H, W)``: the connected regions (4-neighbourhood)
    of pixels where ``|sum_c mean change|`` reaches ``level`` times its maximum, for each level, and their
    bounding boxes, of at most ``max_area`` of the image, without repeats.

    Example:
        >>> m = torch.zeros(1, 8, 8); m[0, :2, :2] = 1.0; m[0, 5, 5] = 0.5
        >>> [tuple(_box(r)) for r in candidate_regions(m)]
        [(0, 0, 2, 2), (5, 5, 6, 6)]
    """
    from scipy.ndimage import label

    if not isinstance(mean_change, Tensor) or mean_change.ndim != 3:
        raise ValueError(f"mean_change must be a (C, H, W) tensor, got {getattr(mean_change, 'shape', mean_change)}")
    m = mean_change.detach().double().cpu().sum(0).abs().numpy()
    if not m.max() > 0:
        return []
    cross = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)
    found: list[np.ndarray] = []
    for level in sorted(levels):
        labels, count = label(m >= level * m.max(), structure=cross)
        for j in range(1, count + 1):
            r = labels == j
            rows, cols = np.nonzero(r)
            box = np.zeros_like(r)
            box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
            for c in (r, box):  # the region and its bounding box (a watermark is often a rectangle)
                if c.mean() <= max_area and not any(np.array_equal(c, o) for o in found):
                    found.append(c)
    return [torch.from_numpy(r) for r in found]


# ----------------------------------------------------------------------------------------------- effects


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


class _Scorer:
    """Log-probabilities of the target under ``classifier``, batched, without gradients."""

    def __init__(self, classifier: Callable[[Tensor], Tensor], batch_size: int) -> None:
        if not callable(classifier):
            raise TypeError(f"classifier must be callable, got {type(classifier).__name__}")
        check_module_mode(classifier, "classifier")
        self.classifier, self.batch_size = classifier, check_int(batch_size, "batch_size", minimum=1)
        first = next((p for m in modules_of(classifier) for p in m.parameters()), None)
        self.device = first.device if first is not None else None  # inputs follow the classifier

    def __call__(self, v: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """``(log p_target, argmax == target)`` per row of ``v`` (targets repeat over the stacked copies)."""
        reps = v.shape[0] // target.shape[0]
        t = target.repeat(reps)
        lp, hit = [], []
        with torch.no_grad():
            for chunk, tc in zip(v.split(self.batch_size), t.split(self.batch_size)):
                if self.device is not None:
                    chunk, tc = chunk.to(self.device), tc.to(self.device)
                out = check_model_output(self.classifier(chunk), chunk.shape[0]).float().log_softmax(1)
                if not bool((tc < out.shape[1]).all()):
                    raise ValueError(f"target class {int(tc.max())} is out of range for a classifier with "
                                     f"{out.shape[1]} outputs")
                lp.append(out.gather(1, tc[:, None])[:, 0])
                hit.append(out.argmax(1) == tc)
        return torch.cat(lp).cpu().double(), torch.cat(hit).cpu()


def _check_options(controls: int, level: float, min_effect: float, min_lift: float) -> None:
    check_int(controls, "controls", minimum=1)
    if not 0 < check_number(level, "level") < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if not 0 <= check_number(min_effect, "min_effect") < 1:
        raise ValueError(f"min_effect must lie in [0, 1), got {min_effect}")
    if not check_number(min_lift, "min_lift") >= 1:
        raise ValueError(f"min_lift must be at least 1, got {min_lift}")


class _Measure:
    """The shared part of verifying several regions on one batch: inputs, counterfactuals, base scores."""

    def __init__(self, scorer: _Scorer, x: Tensor, xc: Tensor, target: Tensor, seed: int, resamples: int,
                 reference: Tensor | None = None) -> None:
        l0, _ = scorer(x, target)
        l1, _ = scorer(xc, target)
        gain = l1 - l0
        keep = gain > 1e-3  # a counterfactual that did not raise the target has no gain to share
        if not bool(keep.any()):
            raise ValueError("no counterfactual raised the target's probability: there is no change to verify")
        idx = keep.nonzero().flatten().to(x.device)
        self.scorer, self.x, self.xc, self.target = scorer, x[idx], xc[idx], target[idx]
        self.l0, self.l1, self.gain = l0[keep], l1[keep], gain[keep]
        self.n = int(keep.sum())
        self.change = (self.xc - self.x).abs().sum(1).mean(0)
        self.mean_signed = (self.xc - self.x).mean(0).detach().cpu()
        self.dark = _dark(self.x)
        if reference is not None and reference.shape[0]:
            self.dark = self.dark & _dark(reference.to(self.x.device))
        gen = torch.Generator().manual_seed(int(seed))
        self.boot = torch.randint(0, self.n, (int(resamples), self.n), generator=gen)

    def off_object(self, region: Tensor) -> float:
        """Share of the mean change ``|x' - x|`` inside ``region`` that lies on dark pixels."""
        r = region.to(self.change.device)
        mass = float(self.change[r].sum())
        return float(self.change[r & self.dark].sum()) / mass if mass > 0 else float("nan")

    def shares(self, masks: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per mask and input the sufficiency and the flip after pasting, ``(m, n)`` each, and the necessity of
        the first mask, ``(n,)``."""
        m = masks.to(self.x.device)[:, None, None]  # (m, 1, 1, H, W)
        lp, hit = self.scorer(torch.where(m, self.xc[None], self.x[None]).flatten(0, 1), self.target)
        lr, _ = self.scorer(torch.where(m[0], self.x, self.xc), self.target)
        k = masks.shape[0]
        suff = ((lp.view(k, -1) - self.l0) / self.gain).clamp(*SHARE_RANGE)
        nec = ((self.l1 - lr) / self.gain).clamp(*SHARE_RANGE)
        return suff, hit.view(k, -1).double(), nec

    def effect(self, region: Tensor, controls: int, level: float, min_effect: float, min_lift: float,
               source: str) -> RegionEffect:
        ctrl = control_regions(region.cpu(), self.change.cpu(), controls)
        suff, flip, nec = self.shares(torch.cat([region.cpu()[None], ctrl]))
        s_r, s_c = suff[0], suff[1:].mean(0)
        diff = s_r - s_c
        b_r, b_c = s_r[self.boot].mean(1), s_c[self.boot].mean(1)
        alpha = 1 - level
        q = torch.tensor([alpha / 2, 1 - alpha / 2], dtype=torch.float64)
        lo, hi = torch.quantile(b_r - b_c, q).tolist()
        lift = _ratio(float(s_r.mean()), float(s_c.mean()))
        lift_low = float(torch.quantile(torch.tensor([_ratio(a, b) for a, b in zip(b_r.tolist(), b_c.tolist())],
                                                     dtype=torch.float64).clamp(max=1e6), alpha))
        verified = lo >= min_effect and lift_low >= min_lift
        box = _box(region)
        area = float(region.double().mean())
        off = self.off_object(region)
        e = RegionEffect(
            target=int(self.target[0]), box=box, mask=region.cpu(), area=area, n=self.n,
            sufficiency=float(s_r.mean()), control=float(s_c.mean()), effect=float(diff.mean()), interval=(lo, hi),
            lift=lift, lift_low=lift_low, flip_rate=float(flip[0].mean()), control_flip_rate=float(flip[1:].mean()),
            necessity=float(nec.mean()), level=level, verified=verified, off_object=off,
            source=source, crop=self.mean_signed[:, box[0]:box[2], box[1]:box[3]].float())
        e.explanation = _explain(e, min_effect, min_lift)
        return e


def _dark(images: Tensor) -> Tensor:
    """``(H, W)``: pixels below :data:`OBJECT_LEVEL` times the brightest pixel of the images' mean (channels by
    their maximum)."""
    bright = images.detach().amax(1).mean(0)
    if not bool(bright.max() > 0):
        return torch.ones_like(bright, dtype=torch.bool)
    return bright < OBJECT_LEVEL * bright.max()


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


def _prepare(classifier: Any, x: Tensor, counterfactual: Tensor, target: Any, batch_size: int
             ) -> tuple[_Scorer, Tensor, Tensor, Tensor]:
    x, xc = _pair(x, counterfactual)
    if x.ndim != 4:
        raise ValueError(f"x must be (N, C, H, W) images, got shape {tuple(x.shape)}")
    t = as_target_tensor(target, x.shape[0], x.device)
    return _Scorer(classifier, batch_size), x, xc, t


def verify_region(
    classifier: Callable[[Tensor], Tensor],
    x: Tensor,
    counterfactual: Tensor,
    target: Any,
    region: Tensor,
    *,
    controls: int = CONTROLS,
    level: float = 0.95,
    min_effect: float = MIN_EFFECT,
    min_lift: float = MIN_LIFT,
    seed: int = 0,
    batch_size: int = 256,
) -> RegionEffect:
    """Verify by its effect that ``classifier`` relies on the counterfactuals' change inside ``region``.

    Args:
        classifier: the audited classifier (logits), in eval mode.
        x: ``(N, C, H, W)`` inputs.
        counterfactual: ``(N, C, H, W)`` their counterfactuals ``x'``.
        target: the class each counterfactual was sent to (int or ``(N,)``).
        region: bool ``(H, W)`` mask (or of one sample's shape: its channels are taken together).
        controls: control placements of the region's shape (see :func:`control_regions`).
        level: confidence level of the bootstrap interval.
        min_effect: the smallest effect (share of the gain above the control) the interval must clear.
        min_lift: the smallest ``sufficiency / control`` ratio the interval must clear.
        seed: seed of the bootstrap.
        batch_size: images per classifier call.

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
    _check_options(controls, level, min_effect, min_lift)
    scorer, x, xc, t = _prepare(classifier, x, counterfactual, target, batch_size)
    r = _plane(region, x)
    measure = _Measure(scorer, x, xc, t, seed, 2000)
    return measure.effect(r, controls, level, min_effect, min_lift, "named")


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
    controls: int = CONTROLS,
    level: float = 0.95,
    min_effect: float = MIN_EFFECT,
    min_lift: float = MIN_LIFT,
    seed: int = 0,
    batch_size: int = 256,
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
        controls, level, min_effect, min_lift, seed, batch_size: as for :func:`verify_region`.

    Returns:
        ``{class: RegionScan}`` for every target class present.
    """
    _check_options(controls, level, min_effect, min_lift)
    if not 0 < check_number(max_area, "max_area") < 1:
        raise ValueError(f"max_area must lie in (0, 1), got {max_area}")
    scorer, x, xc, t = _prepare(classifier, x, counterfactual, target, batch_size)
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
            measure = _Measure(scorer, x[own], xc[own], t[own], seed, 2000, ref)
        except ValueError:
            out[int(k)] = RegionScan(int(k), [], None, 0, 0)
            continue
        cands = [(r.to(x.device), "named") for r in named]
        cands += [(r.to(x.device), "mean map") for r in candidate_regions(measure.mean_signed, max_area=max_area)
                  if cues or measure.off_object(r) >= MIN_OFF_OBJECT]
        # nested cuts of one region are nearly the same test: correct for the number of separate regions
        lvl = 1 - (1 - level) / max(len(_groups([r for r, _ in cands])), 1)
        effects = []
        for r, source in cands:
            try:
                effects.append(measure.effect(r, controls, lvl, min_effect, min_lift, source))
            except ValueError:  # no room for a control of this shape
                continue
        best = max(effects, key=lambda e: e.concentration, default=None)
        out[int(k)] = RegionScan(int(k), _distinct([e for e in effects if e.shortcut]), best, len(effects), measure.n,
                                 _distinct([e for e in effects if e.verified and not e.shortcut]))
    return out


def _groups(masks: list[Tensor]) -> list[list[int]]:
    """Indices of ``masks`` grouped by overlap (a mask joins the first group it overlaps)."""
    groups: list[list[int]] = []
    for i, m in enumerate(masks):
        for g in groups:
            if any(bool((m & masks[j]).any()) for j in g):
                g.append(i)
                break
        else:
            groups.append([i])
    return groups


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


# ----------------------------------------------------------------------------------------------- colour


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
    scorer, x, xc, t = _prepare(classifier, x, counterfactual, target, batch_size)
    recolour_reshape(x[:1], xc[:1])  # refuses grey images before the classifier runs
    m = _Measure(scorer, x, xc, t, seed, 2000)
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


# ----------------------------------------------------------------------------------------------- curve


def paste_curve(
    classifier: Callable[[Tensor], Tensor],
    x: Tensor,
    counterfactual: Tensor,
    target: Any,
    fractions: Sequence[float] = tuple(i / 20 for i in range(21)),
    *,
    batch_size: int = 256,
) -> dict[str, Any]:
    """The change pasted pixel by pixel in order of ``|x' - x|`` (largest first; the insertion curve of
    counterfactual evaluation): the mean target probability and gain share after pasting each fraction of the
    image's pixels.

    Returns:
        ``{"fractions": [...], "probability": [...], "gain_share": [...], "area": area under the gain-share
        curve}``.
    """
    fr = [check_number(f, "fractions") for f in fractions]
    if not fr or any(not 0 <= f <= 1 for f in fr):
        raise ValueError(f"fractions must lie in [0, 1], got {list(fractions)}")
    scorer, x, xc, t = _prepare(classifier, x, counterfactual, target, batch_size)
    measure = _Measure(scorer, x, xc, t, 0, 1)
    x, xc, t, l0, gain = measure.x, measure.xc, measure.target, measure.l0, measure.gain
    d = xc - x
    mag = d.abs().sum(1).flatten(1)
    rank = torch.argsort(torch.argsort(mag, dim=1, descending=True, stable=True), dim=1)
    pixels = mag.shape[1]
    prob, share = [], []
    for f in fr:
        m = (rank < round(f * pixels)).view(x.shape[0], 1, *x.shape[2:])
        lp, _ = scorer(torch.where(m, xc, x), t)
        prob.append(float(lp.exp().mean()))
        share.append(float(((lp - l0) / gain).clamp(*SHARE_RANGE).mean()))
    area = float(np.trapezoid(share, fr)) if len(fr) > 1 else float("nan")
    return {"fractions": fr, "probability": prob, "gain_share": share, "area": area}
