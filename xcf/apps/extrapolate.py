"""``xcf extrapolate``: knowledge extrapolation on the digits GAN, truncated update against the baseline.

Knowledge ``l`` is "the image is digit ``k``", with posterior ``P_l(x) = softmax(f(x))[k]`` from the
reference classifier ``f``.  Principal knowledge descent minimises ``E_z[log(1 − P_l(G_θ(z)))]``, which
*raises* ``P_l``: the edited generator draws its digits toward ``k``.  Other knowledge is measured
with the classifier's penultimate features ``f_r = f.features``; ``δ`` is their mean absolute change
on fixed latent codes, ``Δ`` the descent of the objective on the same codes.

The comparison is made at (approximately) equal ``Δ``: the truncated run uses the given settings;
the plain gradient-descent baseline keeps the same number of steps, batches and seed, and its step
size is found by bisection (in ``log ε``) so that its ``Δ`` matches.  Then ``δ`` and ``Δ/δ`` say which
update bought the same amount of knowledge ``l`` with less change elsewhere.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from xcf.extrapolate import ExtrapolationHistory, KnowledgeExtrapolation
from xcf.apps.methods import reference_model
from xcf.report.figures import figure_grid, image_of, save_figure

__all__ = ["run_extrapolation_demo", "match_plain_step", "extrapolation_figure"]


def match_plain_step(
    generator: nn.Module,
    posterior: Callable[[Tensor], Tensor],
    target: float,
    *,
    features: Optional[Callable[[Tensor], Tensor]] = None,
    start: float = 1e-2,
    tolerance: float = 0.02,
    max_runs: int = 24,
    **kwargs: Any,
) -> tuple[nn.Module, ExtrapolationHistory, list[tuple[float, float]]]:
    """Find the step size of ``method="plain"`` whose descent ``Δ`` matches ``target``.

    Brackets ``target`` by scaling ``ε`` by 4, then bisects in ``log ε`` until
    ``|Δ − target| <= tolerance · target`` or ``max_runs`` runs were made; returns the closest run.

    Args:
        generator, posterior, features: as for :class:`~xcf.extrapolate.KnowledgeExtrapolation`.
        target: the ``Δ`` to match (> 0).
        start: the first ``ε`` tried.
        tolerance: relative tolerance on ``Δ``.
        max_runs: the most runs made.
        **kwargs: the other settings (``steps``, ``batch_size``, ``eval_latents``, ``seed``...).

    Returns:
        ``(edited generator, history, [(ε, Δ) of every run])``.
    """
    if not target > 0:
        raise ValueError(f"target must be > 0, got {target}")
    tried: list[tuple[float, float]] = []
    best: Optional[tuple[nn.Module, ExtrapolationHistory]] = None

    def attempt(eps: float) -> float:
        nonlocal best
        G, h = KnowledgeExtrapolation(generator, posterior, features=features, method="plain", epsilon=eps,
                                      **kwargs).run()
        tried.append((eps, h.Delta))
        if best is None or abs(h.Delta - target) < abs(best[1].Delta - target):
            best = (G, h)
        return h.Delta

    lo = hi = None
    eps = start
    while len(tried) < max_runs:
        d = attempt(eps)
        if abs(d - target) <= tolerance * target:
            break
        if d < target:
            lo = eps
            eps = eps * 4 if hi is None else math.sqrt(eps * hi)
        else:
            hi = eps
            eps = eps / 4 if lo is None else math.sqrt(lo * eps)
    assert best is not None
    return best[0], best[1], tried


def extrapolation_figure(
    before: Tensor,
    edited: dict[str, Tensor],
    classifier: Callable[[Tensor], Tensor],
    knowledge: int,
    title: str = "",
) -> Figure:
    """Same latent codes before and after each edit: images, ``P_k``, and the change ``x_after − x_before``."""
    rows = [("before", before)]
    for name, x in edited.items():
        rows += [(name, x), (f"{name} − before", x - before)]
    n = before.shape[0]
    fig, axes = figure_grid(len(rows), n, (n * 1.05, len(rows) * 1.25))
    scale = max(float((x - before).abs().max()) for x in edited.values()) or 1.0
    for r, (name, x) in enumerate(rows):
        is_diff = "−" in name
        probs = None if is_diff else torch.softmax(classifier(x), dim=1)
        for i in range(n):
            ax = axes[r, i]
            if is_diff:
                ax.imshow(image_of(x[i]), cmap="RdBu_r", vmin=-scale, vmax=scale, interpolation="nearest")
            else:
                ax.imshow(image_of(x[i]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                pred = int(probs[i].argmax())
                ax.set_title(f"{pred}  p{knowledge}={float(probs[i, knowledge]):.2f}", fontsize=6,
                             color="green" if pred == knowledge else "black")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(name, fontsize=7)
    fig.suptitle((title + "\n" if title else "") + f"labels: predicted class, P_{knowledge}; "
                 "difference rows: red = brighter after the edit, blue = darker", fontsize=8)
    fig.tight_layout()
    return fig


def _models(cache_dir: Any, quick: bool, retrain: bool, progress: bool) -> tuple[nn.Module, nn.Module]:
    G, _ = reference_model("digits-gan", quick=quick, retrain=retrain, cache_dir=cache_dir, progress=progress)
    classifier, _ = reference_model("digits-classifier", quick=quick, retrain=retrain, cache_dir=cache_dir,
                                    progress=progress)
    return G, classifier


def run_extrapolation_demo(
    out_dir: str | Path = "xcf-out",
    cache_dir: Optional[str | Path] = None,
    knowledge: int = 1,
    steps: int = 20,
    seed: int = 0,
    quick: bool = False,
    retrain: bool = False,
    *,
    keep_fraction: float = 1e-3,
    epsilon: float = 1e-2,
    batch_size: int = 64,
    eval_size: int = 512,
    n_show: int = 10,
    progress: bool = False,
) -> dict[str, Any]:
    """Edit the digits GAN toward digit ``knowledge`` with both updates; write the figure and the numbers.

    Writes ``extrapolation.png`` (same latent codes: before, after each update, and the differences)
    and ``extrapolation.json`` / ``extrapolation.md`` to ``out_dir``.

    Args:
        out_dir: where outputs go (created).
        cache_dir: the model cache (default ``$XCF_CACHE`` or ``~/.cache/xcf``).
        knowledge: the digit ``k``; ``P_l(x) = softmax(f(x))[k]``.
        steps: number of updates ``K`` of both methods.
        seed: seed of the latent codes.
        quick: a smoke test: fewer steps and codes, and tiny reference models trained into the cache.
        retrain: train the digits GAN and classifier again into the cache instead of the shipped weights.
        keep_fraction: share of parameter entries the truncated update moves per step.
        epsilon: step of the truncated update.
        batch_size: latent codes per step.
        eval_size: evaluation codes ``Δ`` and ``δ`` are measured on.
        n_show: codes shown in the figure.
        progress: progress bars.

    Returns:
        The numbers: settings, and per method ``Delta``, ``delta``, ``ratio``, mean ``P_k`` and share of
        samples classified as ``k`` before and after, share of parameters changed, and the pixel change.
    """
    if isinstance(knowledge, bool) or not isinstance(knowledge, int) or not 0 <= knowledge <= 9:
        raise ValueError(f"knowledge must be a digit class 0..9, got {knowledge!r}")
    t0 = time.perf_counter()
    if quick:
        steps, eval_size = min(steps, 10), min(eval_size, 128)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    G, classifier = _models(cache_dir, quick, retrain, progress)
    posterior = lambda x: torch.softmax(classifier(x), dim=1)[:, knowledge]  # noqa: E731
    features = classifier.features
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(eval_size, G.latent_dim, generator=gen)
    common = dict(features=features, steps=steps, batch_size=batch_size, eval_latents=z, seed=seed,
                  progress=progress)

    G_t, h_t = KnowledgeExtrapolation(G, posterior, keep_fraction=keep_fraction, epsilon=epsilon, **common).run()
    if h_t.Delta <= 0:
        raise RuntimeError(f"the truncated update did not descend (Δ = {h_t.Delta:.4g}); raise epsilon or steps")
    G_p, h_p, tried = match_plain_step(G, posterior, h_t.Delta, max_runs=8 if quick else 24, **common)

    with torch.no_grad():
        x0, xt, xp = G.eval()(z), G_t(z), G_p(z)
        pred = {name: classifier(x).argmax(1) for name, x in (("before", x0), ("truncated", xt), ("plain", xp))}

    def numbers(h: ExtrapolationHistory, x: Tensor, name: str) -> dict[str, Any]:
        out = h.summary()
        out.pop("latents", None)
        out["share_classified_k_after"] = float((pred[name] == knowledge).float().mean())
        out["kept_class_share"] = float((pred[name] == pred["before"]).float().mean())
        out["pixel_change"] = float((x - x0).abs().mean())
        return out

    summary: dict[str, Any] = {
        "knowledge": f"digit {knowledge}: P_l = softmax(classifier(x))[{knowledge}]",
        "objective": "minimise E_z log(1 - P_l(G(z))), i.e. raise P_l",
        "features": "classifier.features (penultimate activations)",
        "steps": steps,
        "batch_size": batch_size,
        "eval_size": eval_size,
        "seed": seed,
        "quick": quick,
        "share_classified_k_before": float((pred["before"] == knowledge).float().mean()),
        "truncated": {"keep_fraction": keep_fraction, **numbers(h_t, xt, "truncated")},
        "plain": {"matched_runs": [list(t) for t in tried], **numbers(h_p, xp, "plain")},
    }
    n = min(n_show, eval_size)
    title = (f"knowledge: digit {knowledge}   truncated Δ={h_t.Delta:.3f} δ={h_t.delta:.3f} Δ/δ={h_t.ratio:.2f}   "
             f"plain Δ={h_p.Delta:.3f} δ={h_p.delta:.3f} Δ/δ={h_p.ratio:.2f}")
    with torch.no_grad():
        fig = extrapolation_figure(x0[:n], {"truncated": xt[:n], "plain": xp[:n]}, classifier, knowledge, title)
    save_figure(fig, out / "extrapolation")
    summary["wall_time_s"] = time.perf_counter() - t0
    (out / "extrapolation.json").write_text(json.dumps(summary, indent=2))
    rows = ["| | truncated | plain |", "|---|---|---|"]
    for key in ("epsilon", "Delta", "delta", "ratio", "posterior_before", "posterior_after",
                "share_classified_k_after", "kept_class_share", "changed", "pixel_change"):
        a, b = summary["truncated"][key], summary["plain"][key]
        rows.append(f"| {key} | {a:.4g} | {b:.4g} |")
    (out / "extrapolation.md").write_text("\n".join(rows) + "\n")
    return summary
