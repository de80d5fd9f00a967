"""Report figures: counterfactual grids with class probabilities, and saving to PNG/PDF.

Every function returns a :class:`matplotlib.figure.Figure` built with the object-oriented API (no
global pyplot state), so they work headless and inside notebooks alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from matplotlib.figure import Figure
from torch import Tensor

from xcf.result import CounterfactualResult

__all__ = ["method_grid", "comparison_grid", "rows_grid", "mean_map_figure", "save_figure", "image_of"]


def figure_grid(rows: int, cols: int, figsize: tuple[float, float]) -> tuple[Figure, Any]:
    """A figure with a ``rows x cols`` array of axes, made without pyplot (no global state, no backend)."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(rows, cols, squeeze=False)


def image_of(x: Tensor):
    """A ``(H, W)`` or ``(H, W, 3)`` numpy image from a ``(C, H, W)`` tensor."""
    x = x.detach().float().cpu()
    if x.ndim == 3 and x.shape[0] == 1:
        return x[0].numpy()
    if x.ndim == 3:
        return x.permute(1, 2, 0).clamp(0, 1).numpy()
    return x.numpy()


def _predict(classifier: Optional[Callable[[Tensor], Tensor]], x: Tensor) -> Optional[Tensor]:
    if classifier is None:
        return None
    with torch.no_grad():
        return torch.softmax(classifier(x), dim=1)


def _label(probs: Optional[Tensor], i: int, names: Optional[Sequence[str]], prefix: str = "") -> str:
    if probs is None:
        return prefix
    k = int(probs[i].argmax())
    name = names[k] if names else str(k)
    return f"{prefix}{name} ({float(probs[i, k]):.2f})"


def _show(ax, img, title: str, cmap: str = "gray", vmin=0.0, vmax=1.0, color: str = "black") -> None:
    ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_title(title, fontsize=8, color=color, parse_math=False)
    ax.set_xticks([])
    ax.set_yticks([])


def method_grid(
    result: CounterfactualResult,
    classifier: Optional[Callable[[Tensor], Tensor]] = None,
    n: int = 8,
    class_names: Optional[Sequence[str]] = None,
    title: Optional[str] = None,
) -> Figure:
    """Rows of (original, reconstruction, counterfactual, difference map) for one method.

    Titles give the predicted class and its probability; a counterfactual's title is green when
    the search succeeded and red when it failed.  Difference maps share one symmetric colour scale.
    """
    n = min(n, len(result))
    probs_x = _predict(classifier, result.inputs[:n])
    probs_r = _predict(classifier, result.reconstruction[:n])
    probs_c = _predict(classifier, result.counterfactual[:n])
    diff = result.difference[:n]
    scale = float(diff.abs().max()) or 1.0
    fig, axes = figure_grid(n, 4, (4 * 1.6, n * 1.7))
    for i in range(n):
        ok = bool(result.success[i])
        tgt = int(result.target[i])
        tname = class_names[tgt] if class_names and tgt >= 0 else str(tgt)
        _show(axes[i, 0], image_of(result.inputs[i]), _label(probs_x, i, class_names, "x: "))
        _show(axes[i, 1], image_of(result.reconstruction[i]),
              _label(probs_r, i, class_names, "rec: ") + f"\nrms {float(result.reconstruction_error[i]):.3f}")
        _show(axes[i, 2], image_of(result.counterfactual[i]),
              _label(probs_c, i, class_names, f"→{tname}: ") + f"\n{int(result.steps[i])} steps",
              color="green" if ok else "red")
        _show(axes[i, 3], image_of(diff[i].mean(0) if diff[i].ndim == 3 else diff[i]), "x' − x",
              cmap="RdBu_r", vmin=-scale, vmax=scale)
    fig.suptitle(title or f"{result.method} counterfactuals", fontsize=10, parse_math=False)
    fig.tight_layout()
    return fig


def comparison_grid(
    results: Mapping[str, CounterfactualResult],
    classifier: Optional[Callable[[Tensor], Tensor]] = None,
    n: int = 8,
    class_names: Optional[Sequence[str]] = None,
) -> Figure:
    """The same inputs explained by several methods: the input, then per method ``x'`` and ``x' − x``."""
    names = list(results)
    if not names:
        raise ValueError("comparison_grid needs at least one result")
    first = results[names[0]]
    n = min([n] + [len(r) for r in results.values()])
    for name in names[1:]:
        if not torch.equal(results[name].inputs[:n], first.inputs[:n]):
            raise ValueError(f"results {names[0]!r} and {name!r} explain different inputs")
    cols = 1 + 2 * len(names)
    fig, axes = figure_grid(n, cols, (cols * 1.45, n * 1.6))
    probs_x = _predict(classifier, first.inputs[:n])
    scale = max(float(r.difference[:n].abs().max()) for r in results.values()) or 1.0
    for i in range(n):
        _show(axes[i, 0], image_of(first.inputs[i]), _label(probs_x, i, class_names, "x: "))
    for j, name in enumerate(names):
        r = results[name]
        probs_c = _predict(classifier, r.counterfactual[:n])
        for i in range(n):
            ok = bool(r.success[i])
            _show(axes[i, 1 + 2 * j], image_of(r.counterfactual[i]),
                  (f"{name}\n" if i == 0 else "") + _label(probs_c, i, class_names),
                  color="green" if ok else "red")
            d = r.difference[i]
            _show(axes[i, 2 + 2 * j], image_of(d.mean(0) if d.ndim == 3 else d), "x' − x" if i == 0 else "",
                  cmap="RdBu_r", vmin=-scale, vmax=scale)
    fig.tight_layout()
    return fig


def rows_grid(
    results: Mapping[str, CounterfactualResult],
    classifier: Optional[Callable[[Tensor], Tensor]] = None,
    n: int = 8,
    class_names: Optional[Sequence[str]] = None,
    title: Optional[str] = None,
) -> Figure:
    """The paper's layout: one column per input; a row of originals, then per method a row of
    counterfactuals and a row of difference maps ``x' − x`` (one symmetric colour scale per method; for RGB
    images the map is drawn in colour around grey, so that a repainted object shows its change of hue).

    Titles give the classifier's prediction and probability, green where the search succeeded and red
    where it failed.
    """
    names = list(results)
    if not names:
        raise ValueError("rows_grid needs at least one result")
    first = results[names[0]]
    n = min([n] + [len(r) for r in results.values()])
    for name in names[1:]:
        if not torch.equal(results[name].inputs[:n], first.inputs[:n]):
            raise ValueError(f"results {names[0]!r} and {name!r} explain different inputs")
    rows = 1 + 2 * len(names)
    fig, axes = figure_grid(rows, n, (n * 1.25, rows * 1.35))
    probs_x = _predict(classifier, first.inputs[:n])
    for i in range(n):
        _show(axes[0, i], image_of(first.inputs[i]), _label(probs_x, i, class_names))
    axes[0, 0].set_ylabel("original", fontsize=8)
    for j, name in enumerate(names):
        r = results[name]
        probs_c = _predict(classifier, r.counterfactual[:n])
        scale = float(r.difference[:n].abs().max()) or 1.0
        for i in range(n):
            _show(axes[1 + 2 * j, i], image_of(r.counterfactual[i]), _label(probs_c, i, class_names),
                  color="green" if bool(r.success[i]) else "red")
            d = r.difference[i]
            if d.ndim == 3 and d.shape[0] == 3:  # colour change as colour: grey is no change
                _show(axes[2 + 2 * j, i], image_of(d / (2 * scale) + 0.5), "")
            else:
                _show(axes[2 + 2 * j, i], image_of(d.mean(0) if d.ndim == 3 else d), "", cmap="RdBu_r",
                      vmin=-scale, vmax=scale)
        axes[1 + 2 * j, 0].set_ylabel(name, fontsize=8, parse_math=False)
        axes[2 + 2 * j, 0].set_ylabel("x' − x", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10, parse_math=False)
    fig.tight_layout()
    return fig


def mean_map_figure(maps: Mapping[str, Mapping[int, Tensor]], class_names: Optional[Sequence[str]] = None,
                    boxes: Optional[Mapping[str, Mapping[int, Sequence[Sequence[int]]]]] = None) -> Figure:
    """Rows = methods, columns = target classes: the mean signed difference map, one scale per row; ``boxes``
    ``{method: {class: [(top, left, bottom, right), ...]}}`` are outlined in green (hotspots)."""
    from matplotlib.patches import Rectangle

    names = list(maps)
    classes = sorted({k for m in maps.values() for k in m})
    if not names or not classes:
        raise ValueError("mean_map_figure needs at least one method with one class")
    fig, axes = figure_grid(len(names), len(classes), (len(classes) * 1.3, len(names) * 1.45))
    for i, name in enumerate(names):
        scale = max(float(m.abs().max()) for m in maps[name].values()) or 1.0
        for j, k in enumerate(classes):
            ax = axes[i, j]
            m = maps[name].get(k)
            if m is not None:
                ax.imshow(image_of(m.mean(0) if m.ndim == 3 else m), cmap="RdBu_r", vmin=-scale, vmax=scale,
                          interpolation="nearest")
            for top, left, bottom, right in (boxes or {}).get(name, {}).get(k, []):
                ax.add_patch(Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False,
                                       edgecolor="#1a9850", linewidth=1.6))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"→ {class_names[k] if class_names else k}", fontsize=9, parse_math=False)
            if j == 0:
                ax.set_ylabel(name, fontsize=9, parse_math=False)
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, path: str | Path, formats: Sequence[str] = ("png",), dpi: int = 130) -> list[Path]:
    """Save ``fig`` as ``path.<format>`` for each of ``formats`` (e.g. PNG for the report, PDF for papers).

    The format is appended to the whole name, so ``"run.v1"`` and ``"run.v2"`` stay two files.
    """
    path = Path(path)
    if path.suffix.lstrip(".").lower() in {f.lower() for f in formats}:
        path = path.with_suffix("")
    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        target = path.with_name(f"{path.name}.{fmt}")
        fig.savefig(target, dpi=dpi, bbox_inches="tight")
        written.append(target)
    return written
