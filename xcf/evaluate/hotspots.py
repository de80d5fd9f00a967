"""Hotspots: where do counterfactuals toward a class change the image, when nobody says where to look?

:mod:`xcf.evaluate.cleverhans` asks whether explanations concentrate in a region the auditor *names*.
Auditors rarely know where a shortcut sits.  :func:`find_hotspots` looks for it: for each target class
``k`` it takes the mean difference map of the counterfactuals sent to ``k``,

    m_k(p) = | mean_{i: target_i = k} sum_c (x'_i - x_i)[c, p] |,

normalised to a distribution over the pixels (changes the inputs make in the same place add up; changes
that differ from input to input, as strokes do, partly cancel).  Its *hotspots* are the connected
regions (4-neighbourhood: a diagonal touch does not join a patch to a stroke) of pixels with ``m_k >= rel * max m_k`` that

- are compact: at most ``max_area`` of the image;
- carry a large share of the change: ``share >= min_share`` (default: 0.15);
- lie off the class's typical object pixels: at least ``min_off_object`` of the region's mass falls where
  the reference images (the audited inputs, or images the caller passes) are dark, i.e. below
  ``object_level`` times their brightest mean pixel.

A watermark learnt as a shortcut is such a region: every counterfactual toward the shortcut class paints
it at the same place, off the digit.  A classifier that learnt the objects changes strokes, on the object
pixels, so none of its regions passes.  Hotspots are ranked by share, each with its bounding box, area and a
crop of the mean map.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np
import torch
from torch import Tensor

from xcf._validation import check_inputs

__all__ = ["Hotspot", "find_hotspots", "hotspots_of_maps"]


@dataclass
class Hotspot:
    """A compact region that carries a large share of the change toward ``target``.

    Attributes:
        target: the target class.
        box: ``(top, left, bottom, right)``, bottom and right exclusive.
        mask: bool ``(H, W)``, the region's pixels.
        share: share of the class's mean change inside the region.
        area: the region's share of the image.
        off_object: share of the region's change on pixels the reference images leave dark.
        crop: the mean difference map ``(C, h, w)`` inside ``box`` (signed).
    """

    target: int
    box: tuple[int, int, int, int]
    mask: Tensor
    share: float
    area: float
    off_object: float
    crop: Tensor

    @property
    def concentration(self) -> float:
        """``share / area``: how many times more change the region holds than its size would get by chance."""
        return self.share / self.area

    def to_dict(self) -> dict:
        return {"target": self.target, "box": list(self.box), "share": self.share, "area": self.area,
                "off_object": self.off_object, "concentration": self.concentration}


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    from scipy.ndimage import label

    return label(mask, structure=np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool))


def _check(min_share: float, max_area: float, min_off_object: float, rel: float, object_level: float, top: int) -> None:
    for name, v in (("min_share", min_share), ("max_area", max_area), ("rel", rel), ("min_off_object", min_off_object),
                    ("object_level", object_level)):
        if not 0 < float(v) <= 1:
            raise ValueError(f"{name} must lie in (0, 1], got {v}")
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"top must be an int >= 1, got {top!r}")


def _dark(reference: Optional[Tensor], shape: tuple[int, ...], object_level: float) -> Optional[np.ndarray]:
    """Pixels the reference images leave dark (``None``: no reference, or an all-black one)."""
    if reference is None or reference.shape[0] == 0:
        return None
    check_inputs(reference, "reference", min_dim=4)
    if tuple(reference.shape[1:]) != tuple(shape):
        raise ValueError(f"reference images have shape {tuple(reference.shape[1:])}, the maps {tuple(shape)}")
    mean = reference.detach().double().cpu().mean(0).amax(0)
    return (mean < object_level * float(mean.max())).numpy() if float(mean.max()) > 0 else None


def _spots(k: int, signed: Tensor, dark: Optional[np.ndarray], min_share: float, max_area: float,
           min_off_object: float, rel: float, top: int) -> list[Hotspot]:
    m = signed.sum(0).abs().numpy()
    total = float(m.sum())
    spots: list[Hotspot] = []
    if total <= 0:
        return spots
    labels, count = _components(m >= rel * float(m.max()))
    for j in range(1, count + 1):
        region = labels == j
        share = float(m[region].sum()) / total
        area = float(region.mean())
        off = float(m[region & dark].sum() / m[region].sum()) if dark is not None else 1.0
        if share < min_share or area > max_area or off < min_off_object:
            continue
        rows, cols = np.nonzero(region)
        box = (int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1)
        spots.append(Hotspot(int(k), box, torch.from_numpy(region), share, area, off,
                             signed[:, box[0]:box[2], box[1]:box[3]].float()))
    return sorted(spots, key=lambda s: -s.share)[:top]


def hotspots_of_maps(
    mean_maps: Mapping[int, Tensor],
    reference: Optional[Tensor] = None,
    reference_labels: Optional[Tensor] = None,
    *,
    min_share: float = 0.15,
    max_area: float = 0.1,
    min_off_object: float = 0.5,
    rel: float = 0.4,
    object_level: float = 0.2,
    top: int = 3,
) -> dict[int, list[Hotspot]]:
    """Hotspots of mean difference maps ``{class: (C, H, W)}`` (e.g. ``StoreSummary.mean_maps[method]``).

    ``reference`` images mark the object pixels; with ``reference_labels`` class ``k`` is judged against its
    own reference images (those labelled ``k``, when there are any), else against all of them.  The other
    arguments are those of :func:`find_hotspots`.
    """
    _check(min_share, max_area, min_off_object, rel, object_level, top)
    out: dict[int, list[Hotspot]] = {}
    for k, m in sorted(mean_maps.items()):
        m = m.detach().double().cpu()
        if m.ndim != 3:
            raise ValueError(f"the mean map of class {k} must be (C, H, W), got {tuple(m.shape)}")
        ref = reference
        if reference is not None and reference_labels is not None:
            own = torch.as_tensor(reference_labels).reshape(-1) == int(k)
            ref = reference[own] if bool(own.any()) else reference
        out[int(k)] = _spots(int(k), m, _dark(ref, tuple(m.shape), object_level), min_share, max_area,
                             min_off_object, rel, top)
    return out


def find_hotspots(
    difference: Tensor,
    target: Tensor,
    reference: Optional[Tensor] = None,
    *,
    min_share: float = 0.15,
    max_area: float = 0.1,
    min_off_object: float = 0.5,
    rel: float = 0.4,
    object_level: float = 0.2,
    top: int = 3,
) -> dict[int, list[Hotspot]]:
    """Hotspots of the mean difference map of each target class (see the module docstring).

    Args:
        difference: ``(N, C, H, W)`` difference maps ``x' - x``.
        target: ``(N,)`` target classes.
        reference: ``(M, C, H, W)`` images whose mean marks the typical object pixels (e.g. the audited inputs
            or the training images); ``None``: the object test is skipped (every region counts as off-object).
        min_share: the smallest share of a class's change a hotspot carries.
        max_area: the largest image share a hotspot covers.
        min_off_object: the smallest share of a hotspot's change that lies off the object pixels.
        rel: pixels at or above ``rel`` times the map's maximum form the candidate regions.
        object_level: reference pixels at or above this share of the mean reference image's maximum are
            object pixels.
        top: keep at most this many hotspots per class.

    Returns:
        ``{class: [Hotspot, ...]}`` for every target class present, ranked by share (empty lists where none).

    Example:
        >>> d = torch.zeros(4, 1, 8, 8); d[:, :, 0:2, 6:8] = 1.0; d[:, :, 3:6, 3:6] = 0.1 * torch.randn(4, 1, 3, 3)
        >>> ref = torch.zeros(5, 1, 8, 8); ref[:, :, 2:7, 2:7] = 1.0
        >>> spots = find_hotspots(d, torch.full((4,), 7), ref)
        >>> [(s.box, round(s.share, 2)) for s in spots[7]]
        [((0, 6, 2, 8), 0.9)]
    """
    check_inputs(difference, "difference", min_dim=4)
    if difference.ndim != 4:
        raise ValueError(f"difference must be (N, C, H, W) maps, got {tuple(difference.shape)}")
    target = torch.as_tensor(target).reshape(-1).long().cpu()
    if target.shape[0] != difference.shape[0]:
        raise ValueError(f"target holds {target.shape[0]} classes for {difference.shape[0]} maps")
    d = difference.detach().double().cpu()
    means = {int(k): d[target == k].mean(0) for k in torch.unique(target).tolist()}
    return hotspots_of_maps(means, reference, min_share=min_share, max_area=max_area, min_off_object=min_off_object,
                            rel=rel, object_level=object_level, top=top)
