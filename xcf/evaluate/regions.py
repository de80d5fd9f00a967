"""Pasting a counterfactual's change region by region, and scoring what it does to the classifier.

The machinery under :mod:`xcf.evaluate.causal` (the verdicts) and :func:`xcf.evaluate.colour.colour_effect`:
:func:`paste` and :func:`remove` a region's change, same-shape :func:`control_regions` elsewhere,
:func:`candidate_regions` cut from a class's mean change, and :class:`Measure`, one batch prepared for scoring
(gain shares of the target's log-probability, the bootstrap resamples, the pixels the objects leave dark).
:func:`paste_curve` pastes the change pixel by pixel in order of ``|x' - x|``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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

__all__ = ["Measure", "NoGain", "NoRoom", "Scorer", "candidate_regions", "control_regions", "dark_pixels",
           "overlap_groups", "paste", "paste_curve", "prepare", "remove"]

#: sufficiency and necessity shares are clipped to this range (a paste that overshoots the counterfactual, or
#: pushes away from the target, should not dominate a mean)
SHARE_RANGE = (-1.0, 2.0)
#: control placements per region
CONTROLS = 6
#: pixels below this share of the brightest pixel of the images' mean image are dark (off the objects)
OBJECT_LEVEL = 0.2
#: the levels (times the mean map's maximum) at which candidate regions are cut
LEVELS = (0.1, 0.2, 0.3, 0.45, 0.6, 0.8)


class NoGain(ValueError):
    """No counterfactual of the batch raised the target's log-probability: there is no change to verify."""


class NoRoom(ValueError):
    """No placement of the region's shape fits beside it: it has no control."""


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
        raise NoRoom(f"region of box {(t, left, b, right)} leaves no room in the {H}x{W} image for a control "
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


def overlap_groups(masks: list[Tensor]) -> list[list[int]]:
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


def dark_pixels(images: Tensor) -> Tensor:
    """``(H, W)``: pixels below :data:`OBJECT_LEVEL` times the brightest pixel of the images' mean (channels by
    their maximum)."""
    bright = images.detach().amax(1).mean(0)
    if not bool(bright.max() > 0):
        return torch.ones_like(bright, dtype=torch.bool)
    return bright < OBJECT_LEVEL * bright.max()


class Scorer:
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


class Measure:
    """One batch prepared for pasting: the inputs whose counterfactual raised the target, their base scores, the
    mean change, the dark pixels and the bootstrap resamples (shared by every region verified on it)."""

    def __init__(self, scorer: Scorer, x: Tensor, xc: Tensor, target: Tensor, seed: int, resamples: int,
                 reference: Tensor | None = None) -> None:
        l0, _ = scorer(x, target)
        l1, _ = scorer(xc, target)
        gain = l1 - l0
        keep = gain > 1e-3  # a counterfactual that did not raise the target has no gain to share
        if not bool(keep.any()):
            raise NoGain("no counterfactual raised the target's probability: there is no change to verify")
        idx = keep.nonzero().flatten().to(x.device)
        self.scorer, self.x, self.xc, self.target = scorer, x[idx], xc[idx], target[idx]
        self.l0, self.l1, self.gain = l0[keep], l1[keep], gain[keep]
        self.n = int(keep.sum())
        self.change = (self.xc - self.x).abs().sum(1).mean(0)
        self.mean_signed = (self.xc - self.x).mean(0).detach().cpu()
        self.dark = dark_pixels(self.x)
        if reference is not None and reference.shape[0]:
            self.dark = self.dark & dark_pixels(reference.to(self.x.device))
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


def prepare(classifier: Any, x: Tensor, counterfactual: Tensor, target: Any, batch_size: int
             ) -> tuple[Scorer, Tensor, Tensor, Tensor]:
    x, xc = _pair(x, counterfactual)
    if x.ndim != 4:
        raise ValueError(f"x must be (N, C, H, W) images, got shape {tuple(x.shape)}")
    t = as_target_tensor(target, x.shape[0], x.device)
    return Scorer(classifier, batch_size), x, xc, t


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
    scorer, x, xc, t = prepare(classifier, x, counterfactual, target, batch_size)
    measure = Measure(scorer, x, xc, t, 0, 1)
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
