"""Difference maps: what a counterfactual changed, next to gradient attributions.

For an input ``x`` and its counterfactual ``x'`` toward class ``k`` the *difference map* is the signed
``delta = x' - x`` (or its magnitude ``|x' - x|``).  Averaged over all inputs sent to the same target,

    M_k = (1 / |{i: k_i = k}|) sum_{i: k_i = k} delta_i,

it shows what the classifier needs to see more (``M_k > 0``) or less (``M_k < 0``) of to say ``k``.
Signed maps of inputs drawn from different classes partly cancel; the absolute mean does not.

:func:`compare_attributions` puts these maps beside Captum's gradient attributions for the same
inputs and targets: Saliency ``d f_k / d x`` and Integrated Gradients
``(x - b) * int_0^1 d f_k(b + a (x - b)) / d x da`` (baseline ``b = 0``), all with the input's shape.
:func:`plot_map_grid` and :func:`overlay` draw them: a greyscale input with a diverging, zero-centred
map on top.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from xcf._validation import check_inputs, check_module_mode, format_inputs, preserved
from xcf.objectives import TargetType, as_target_tensor
from xcf.search import CounterfactualResult

__all__ = [
    "difference_map",
    "mean_map_per_target",
    "compare_attributions",
    "to_image",
    "to_captum_image",
    "overlay",
    "plot_map_grid",
]

MapSource = Union[Tensor, CounterfactualResult, Any]


def difference_map(result: CounterfactualResult, absolute: bool = False) -> Tensor:
    """The difference map ``x' - x`` (or ``|x' - x|``) of every sample, with the input's shape.

    Args:
        result: a :class:`~xcf.search.CounterfactualResult`.
        absolute: return magnitudes instead of signed changes.

    Returns:
        A ``(N, ...)`` tensor (detached).

    Example:
        >>> r = CounterfactualResult(inputs=torch.zeros(1, 2), counterfactual=torch.tensor([[1.0, -2.0]]),
        ...     latent=torch.zeros(1, 2), latent_start=torch.zeros(1, 2), reconstruction=torch.zeros(1, 2),
        ...     reconstruction_error=torch.zeros(1), target=torch.tensor([0]), success=torch.tensor([True]),
        ...     steps=torch.tensor([1]), score=torch.tensor([1.0]), start_score=torch.tensor([0.0]),
        ...     trace=torch.zeros(1, 2), wall_time=0.0)
        >>> difference_map(r).tolist(), difference_map(r, absolute=True).tolist()
        ([[1.0, -2.0]], [[1.0, 2.0]])
    """
    if not isinstance(result, CounterfactualResult):
        raise TypeError(f"result must be a CounterfactualResult, got {type(result).__name__}")
    d = result.difference.detach()
    return d.abs() if absolute else d


def mean_map_per_target(
    result: CounterfactualResult,
    absolute: bool = False,
    *,
    only_valid: bool = False,
) -> dict[int, Tensor]:
    """Average difference map per target class, ``{k: mean of x' - x over samples with target k}``.

    Args:
        result: a :class:`~xcf.search.CounterfactualResult` with class targets.
        absolute: average ``|x' - x|`` instead of the signed change.
        only_valid: average only samples whose search succeeded.

    Returns:
        ``{class index: (...) map}`` in increasing class order; classes with no (valid) sample are absent.

    Example:
        >>> maps = mean_map_per_target(result, absolute=True)      # doctest: +SKIP
        >>> sorted(maps)                                          # doctest: +SKIP
        [0, 1, 2]
    """
    d = difference_map(result, absolute)
    target = result.target
    if bool((target < 0).any()):
        raise ValueError("result.target has entries < 0 (a custom objective?): per-target maps need class targets")
    keep = result.success.bool() if only_valid else torch.ones_like(target, dtype=torch.bool)
    out: dict[int, Tensor] = {}
    for k in torch.unique(target[keep]).tolist():
        rows = keep & (target == k)
        out[int(k)] = d[rows].mean(dim=0)
    return out


def _attribute(explainer: Any, x: Tensor, target: Tensor, kwargs: Mapping[str, Any]) -> Tensor:
    """Maps from a tensor, a result, a Captum-style explainer or a callable ``fn(x, target)``."""
    if isinstance(explainer, Tensor):
        m = explainer.detach()
    elif isinstance(explainer, CounterfactualResult):
        m = explainer.difference.detach()
    elif callable(getattr(explainer, "attribute", None)):
        m = explainer.attribute(x, target=target, **kwargs)
    elif callable(explainer):
        m = explainer(x, target)
    else:
        raise TypeError(
            "each explainer must be a map tensor, a CounterfactualResult, an object with "
            f"attribute(inputs, target=...) or a callable fn(x, target); got {type(explainer).__name__}"
        )
    if isinstance(m, tuple):
        m = m[0]
    if not isinstance(m, Tensor):
        raise TypeError(f"an explainer returned {type(m).__name__}, expected a tensor")
    return m.detach()


def compare_attributions(
    classifier: Callable[..., Tensor],
    x: Tensor,
    target: TargetType,
    explainers: Optional[Mapping[str, MapSource]] = None,
    include: Sequence[str] = ("saliency", "integrated_gradients"),
    *,
    ig_steps: int = 32,
    baselines: float | Tensor = 0.0,
    explainer_kwargs: Optional[Mapping[str, Any]] = None,
) -> dict[str, Tensor]:
    """Counterfactual maps and Captum attributions for the same inputs and targets.

    Args:
        classifier: the audited classifier (logits or probabilities; attributions are of output ``target``).
        x: ``(N, ...)`` inputs.
        target: class per input (int, list or tensor).
        explainers: ``{name: source}``, each a ready map tensor ``(N, ...)``, a
            :class:`~xcf.search.CounterfactualResult` (its ``x' - x``), an explainer with
            ``attribute(x, target=...)`` (e.g. :class:`~xcf.explain.base.CounterfactualExplainer`) or a
            callable ``fn(x, target) -> maps``.
        include: Captum baselines to add: ``"saliency"`` (signed input gradient,
            :class:`captum.attr.Saliency` with ``abs=False``), ``"integrated_gradients"``
            (:class:`captum.attr.IntegratedGradients`) and ``"input_x_gradient"``.
        ig_steps: integration steps of Integrated Gradients.
        baselines: Integrated Gradients baseline (scalar or tensor broadcastable to ``x``).
        explainer_kwargs: extra keyword arguments for every ``attribute`` call of ``explainers``.

    Returns:
        ``{name: (N, ...) map}`` with ``x``'s shape: the explainers first, then ``include`` in order.

    Example:
        >>> maps = compare_attributions(clf, x, 3, {"counterfactual": CounterfactualExplainer(clf, PixelChart())})  # doctest: +SKIP
        >>> list(maps)                                                                                           # doctest: +SKIP
        ['counterfactual', 'saliency', 'integrated_gradients']
    """
    from captum.attr import InputXGradient, IntegratedGradients, Saliency

    x, _ = format_inputs(x)
    check_inputs(x)
    t = as_target_tensor(target, x.shape[0], x.device)
    known = {"saliency", "integrated_gradients", "input_x_gradient"}
    unknown = [m for m in include if m not in known]
    if unknown:
        raise ValueError(f"unknown attribution method(s) {unknown}; choose from {sorted(known)}")
    if ig_steps < 1:
        raise ValueError(f"ig_steps must be >= 1, got {ig_steps}")
    maps: dict[str, Tensor] = {}
    for name, source in (explainers or {}).items():
        if name in include:
            raise ValueError(f"explainer name {name!r} clashes with an included Captum method")
        m = _attribute(source, x, t, explainer_kwargs or {})
        if m.shape != x.shape:
            raise ValueError(f"explainer {name!r} returned maps of shape {tuple(m.shape)}, inputs have {tuple(x.shape)}")
        maps[name] = m
    if include:
        with torch.enable_grad(), preserved(classifier):
            check_module_mode(classifier, "classifier")
            xin = x.detach().clone().requires_grad_(True)  # our own copy: Captum would flag it otherwise
            for method in include:
                if method == "saliency":
                    m = Saliency(classifier).attribute(xin, target=t, abs=False)
                elif method == "integrated_gradients":
                    m = IntegratedGradients(classifier).attribute(
                        xin, baselines=baselines, target=t, n_steps=int(ig_steps), internal_batch_size=max(x.shape[0], 1) * 8
                    )
                else:
                    m = InputXGradient(classifier).attribute(xin, target=t)
                maps[method] = m.detach()
    return maps


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
    import matplotlib.pyplot as plt

    img, m = to_image(input), to_image(map)
    if img.shape != m.shape:
        raise ValueError(f"input is {img.shape[0]}x{img.shape[1]} but the map is {m.shape[0]}x{m.shape[1]}")
    created = ax is None
    if created:
        _, ax = plt.subplots(figsize=(3.2 if colorbar else 2.5, 2.5))
    if vmax is None:
        vmax = float(np.abs(m).max())
    vmax = vmax if vmax > 0 else 1.0
    ax.imshow(img, cmap="gray", interpolation="nearest")
    # Colour by sign and size; opacity grows with |map| so unchanged pixels show the input itself.
    colours = plt.get_cmap(cmap)(np.clip(m / (2 * vmax) + 0.5, 0.0, 1.0))
    colours[..., 3] = alpha * np.sqrt(np.clip(np.abs(m) / vmax, 0.0, 1.0))
    ax.imshow(colours, interpolation="nearest")
    im = matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(-vmax, vmax), plt.get_cmap(cmap))
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
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
        scale: colour limits per ``"cell"`` (each map its own largest magnitude, the default) or per
            ``"column"`` (all maps of one method share a scale; methods have different units).
        cell: size of one cell in inches.
        cmap: diverging colour map of the maps.

    Returns:
        A :class:`matplotlib.figure.Figure`.
    """
    import matplotlib.pyplot as plt

    if scale not in ("cell", "column"):
        raise ValueError(f"scale must be 'cell' or 'column', got {scale!r}")
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
    fig, axes = plt.subplots(count, cols, figsize=(cell * cols, cell * count), squeeze=False)
    col_vmax = {name: float(maps[name][:count].abs().max()) for name in names}
    for i in range(count):
        ax = axes[i, 0]
        ax.imshow(to_image(x[i]), cmap="gray", interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        if row_labels is not None:
            ax.set_ylabel(str(row_labels[i]), fontsize=9)
        if counterfactual is not None:
            ax = axes[i, 1]
            ax.imshow(to_image(counterfactual[i]), cmap="gray", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        for j, name in enumerate(names):
            vmax = col_vmax[name] if scale == "column" else None
            overlay(x[i], maps[name][i], axes[i, lead + j], cmap=cmap, vmax=vmax)
    axes[0, 0].set_title("input", fontsize=9)
    if counterfactual is not None:
        axes[0, 1].set_title("counterfactual", fontsize=9)
    for j, t in enumerate(titles):
        axes[0, lead + j].set_title(t, fontsize=9)
    fig.tight_layout()
    return fig
