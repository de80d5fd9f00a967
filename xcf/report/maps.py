"""Drawing attribution and difference maps: a greyscale input with a zero-centred diverging map on top."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from xcf.report.figures import figure_grid, image_of

__all__ = ["overlay", "plot_map_grid", "to_captum_image", "to_image"]


# -------------------------------------------------------------------------------------------- plots
def to_image(a: Tensor) -> np.ndarray:
    """One image (``(H, W)``, ``(1, H, W)`` or ``(C, H, W)``) as a 2-D numpy array (channels averaged)."""
    if not isinstance(a, Tensor):
        a = torch.as_tensor(np.asarray(a))
    a = a.detach().float().cpu()
    if a.ndim == 3:
        a = a.mean(dim=0)
    if a.ndim != 2:
        raise ValueError(f"expected one image of shape (H, W) or (C, H, W), got {tuple(a.shape)}")
    return a.numpy()


def to_captum_image(a: Tensor, rgb: bool = False) -> np.ndarray:
    """One ``(C, H, W)`` (or ``(H, W)``) map or image as the ``(H, W, C)`` array Captum's visualisation expects.

    Args:
        a: the map or image.
        rgb: repeat a single channel three times (Captum's ``"alpha_scaling"`` needs an RGB image).

    Example:
        >>> to_captum_image(torch.zeros(1, 8, 8)).shape, to_captum_image(torch.zeros(8, 8), rgb=True).shape
        ((8, 8, 1), (8, 8, 3))
    """
    if not isinstance(a, Tensor):
        a = torch.as_tensor(np.asarray(a))
    a = a.detach().float().cpu()
    if a.ndim == 2:
        a = a.unsqueeze(0)
    if a.ndim != 3:
        raise ValueError(f"expected one map of shape (C, H, W) or (H, W), got {tuple(a.shape)}")
    if rgb and a.shape[0] == 1:
        a = a.expand(3, -1, -1)
    return a.permute(1, 2, 0).contiguous().numpy()


def overlay(
    input: Tensor,
    map: Tensor,
    ax: Any = None,
    *,
    cmap: str = "bwr",
    alpha: float = 0.85,
    vmax: Optional[float] = None,
    title: Optional[str] = None,
    colorbar: bool = False,
) -> Any:
    """Draw a greyscale ``input`` with a signed ``map`` on top, zero-centred on a diverging colour map.

    Args:
        input: one image ``(H, W)`` or ``(C, H, W)`` (colour images are shown as their grey mean).
        map: a map of the same spatial size (channels are averaged).
        ax: a matplotlib ``Axes`` (default: a new figure's).
        cmap: diverging colour map; red is an increase, blue a decrease with ``"bwr"``.
        alpha: opacity of the map where ``|map| = vmax``; it falls off as ``sqrt(|map| / vmax)`` so
            that unchanged pixels show the input.
        vmax: colour limit ``[-vmax, vmax]`` (default: the map's largest magnitude).
        title: axes title.
        colorbar: add a colour bar.

    Returns:
        The axes.
    """
    import matplotlib
    from matplotlib.figure import Figure

    img, m = to_image(input), to_image(map)
    if img.shape != m.shape:
        raise ValueError(f"input is {img.shape[0]}x{img.shape[1]} but the map is {m.shape[0]}x{m.shape[1]}")
    created = ax is None
    if created:
        ax = Figure(figsize=(3.2 if colorbar else 2.5, 2.5)).subplots()
    if vmax is None:
        vmax = float(np.abs(m).max())
    vmax = vmax if vmax > 0 else 1.0
    ax.imshow(img, cmap="gray", interpolation="nearest")
    # Colour by sign and size; opacity grows with |map| so unchanged pixels show the input itself.
    colours = matplotlib.colormaps[cmap](np.clip(m / (2 * vmax) + 0.5, 0.0, 1.0))
    colours[..., 3] = alpha * np.sqrt(np.clip(np.abs(m) / vmax, 0.0, 1.0))
    ax.imshow(colours, interpolation="nearest")
    im = matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(-vmax, vmax), matplotlib.colormaps[cmap])
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9, parse_math=False)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if created:
        ax.figure.tight_layout()
    return ax


def plot_map_grid(
    x: Tensor,
    maps: Mapping[str, Tensor],
    titles: Optional[Sequence[str]] = None,
    *,
    row_labels: Optional[Sequence[str]] = None,
    n: Optional[int] = None,
    counterfactual: Optional[Tensor] = None,
    scale: str = "cell",
    cell: float = 1.6,
    cmap: str = "bwr",
) -> Any:
    """A grid: one row per sample, the input, (optionally) the counterfactual, then each map overlaid.

    Args:
        x: ``(N, C, H, W)`` or ``(N, H, W)`` inputs.
        maps: ``{name: (N, ...) map}``, e.g. from :func:`compare_attributions`.
        titles: column titles for the maps (default: the dict keys).
        row_labels: a label per row (e.g. ``"3 -> 8"``).
        n: show only the first ``n`` samples.
        counterfactual: ``(N, ...)`` counterfactuals to show after the input.
        scale: colour limits per ``"cell"`` (each map its own largest magnitude, the default), per
            ``"column"`` (all maps of one method share a scale; methods have different units) or per ``"row"``
            (all maps of one input share a scale: methods in the same units, such as ``x' - x``, compared).
        cell: size of one cell in inches.
        cmap: diverging colour map of the maps.

    Returns:
        A :class:`matplotlib.figure.Figure`.
    """

    if scale not in ("cell", "column", "row"):
        raise ValueError(f"scale must be 'cell', 'column' or 'row', got {scale!r}")
    if not maps:
        raise ValueError("maps is empty")
    names = list(maps)
    titles = list(titles) if titles is not None else names
    if len(titles) != len(names):
        raise ValueError(f"{len(titles)} titles for {len(names)} maps")
    count = x.shape[0] if n is None else min(int(n), x.shape[0])
    for name in names:
        if maps[name].shape[0] < count or maps[name].shape[-2:] != x.shape[-2:]:
            raise ValueError(f"map {name!r} has shape {tuple(maps[name].shape)}, inputs have {tuple(x.shape)}")
    if row_labels is not None and len(row_labels) < count:
        raise ValueError(f"{len(row_labels)} row labels for {count} rows")
    lead = 2 if counterfactual is not None else 1
    cols = lead + len(names)
    fig, axes = figure_grid(count, cols, (cell * cols, cell * count))
    col_vmax = {name: float(maps[name][:count].abs().max()) for name in names}
    row_vmax = [max(float(np.abs(to_image(maps[name][i])).max()) for name in names) for i in range(count)]
    for i in range(count):
        ax = axes[i, 0]
        ax.imshow(image_of(x[i]) if x.ndim == 4 and x.shape[1] == 3 else to_image(x[i]), cmap="gray",
                  interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        if row_labels is not None:
            ax.set_ylabel(str(row_labels[i]), fontsize=9, parse_math=False)
        if counterfactual is not None:
            ax = axes[i, 1]
            ax.imshow(to_image(counterfactual[i]), cmap="gray", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        for j, name in enumerate(names):
            vmax = {"column": col_vmax[name], "row": row_vmax[i], "cell": None}[scale]
            overlay(x[i], maps[name][i], axes[i, lead + j], cmap=cmap, vmax=vmax)
    axes[0, 0].set_title("input", fontsize=9, parse_math=False)
    if counterfactual is not None:
        axes[0, 1].set_title("counterfactual", fontsize=9, parse_math=False)
    for j, t in enumerate(titles):
        axes[0, lead + j].set_title(t, fontsize=9, parse_math=False)
    fig.tight_layout()
    return fig
