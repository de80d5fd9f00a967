"""``xcf demo``: the main job on the embedded digits default.

Trains (or loads from the cache) the reference classifier, flow, GAN and VAE; explains a batch of test
digits toward ``(y + 3) mod 10`` with diffeomorphic, approximate (GAN, VAE) and adversarial
counterfactuals; measures success, steps, time, realism (flow bits/dim), SVM transfer, k-NN agreement
and the on-manifold share of each change; runs the Clever-Hans check on a classifier trained with a
watermark and on the clean one; and writes figures, ``metrics.json`` / ``metrics.md`` and the HTML
report to the output directory.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from xcf._io import format_number
from xcf.apps.audit import CleverHansCheck, audit
from xcf.apps.methods import build_explainers, check_methods, flow_nll
from xcf.charts import PixelChart, invert
from xcf.datasets import load_digits
from xcf.datasets.watermark import region_mask
from xcf.evaluate.manifold import on_manifold_fraction, tangent_space
from xcf.evaluate.quality import frechet_distance
from xcf.explain import CounterfactualExplainer, DiffeomorphicCounterfactual
from xcf.models.classifier import accuracy
from xcf.models.flow_training import bits_per_dim
from xcf.models.io import QUICK
from xcf.models.zoo import (
    WATERMARK,
    digits_classifier,
    digits_flow,
    digits_gan,
    digits_vae,
    load_classifier,
    watermark_classifier,
)
from xcf.report.figures import method_grid, save_figure
from xcf.report.html import check_writable

__all__ = ["run_demo"]



def _median_steps(steps: Tensor, ok: Tensor) -> Optional[float]:
    return float(steps[ok].float().median()) if bool(ok.any()) else None


def run_demo(
    out_dir: str | Path = "xcf-out",
    cache_dir: Optional[str | Path] = None,
    n: int = 100,
    steps: int = 1000,
    seed: int = 0,
    flow_kind: str = "realnvp",
    progress: bool = True,
    quick: bool = False,
    classifier_file: Optional[str | Path] = None,
    methods: Optional[list[str]] = None,
) -> dict[str, Any]:
    """Run the demo; write figures, ``metrics.json`` / ``metrics.md`` and ``report.html`` to ``out_dir``.

    Args:
        out_dir: where outputs go (created).
        cache_dir: the model cache (default ``$XCF_CACHE`` or ``~/.cache/xcf``).
        n: number of test digits to explain.
        steps: step budget per counterfactual.
        seed: seed for everything random in the demo.
        flow_kind: ``"realnvp"`` or ``"glow"``.
        progress: progress bars.
        quick: tiny training budgets (:data:`QUICK`): a smoke test of the pipeline, numbers meaningless.
        classifier_file: audit this classifier (a :class:`DigitsCNN` written by
            :func:`xcf.models.io.save_model`) instead of the reference one.
        methods: a subset of ``"diffeomorphic"``, ``"approximate (GAN)"``, ``"approximate (VAE)"``,
            ``"adversarial"`` (default: all).

    Returns:
        The metrics summary (also written as JSON and Markdown).
    """
    methods = check_methods(methods)
    t_start = time.perf_counter()
    out = check_writable(out_dir)
    q = QUICK if quick else {}
    own = load_classifier(classifier_file) if classifier_file is not None else None  # fail before training

    classifier, clf_metrics = digits_classifier(cache_dir=cache_dir, progress=progress, overrides=q.get("classifier"))
    flow, flow_metrics = digits_flow(kind=flow_kind, cache_dir=cache_dir, progress=progress, overrides=q.get("flow"))
    gan, gan_metrics = digits_gan(cache_dir=cache_dir, progress=progress, overrides=q.get("gan"))
    vae, vae_metrics = digits_vae(cache_dir=cache_dir, progress=progress, overrides=q.get("vae"))
    shortcut, shortcut_metrics = watermark_classifier(cache_dir, progress, overrides=q.get("classifier"))
    if own is not None:
        classifier = own
        clf_metrics = {"test_accuracy": accuracy(classifier, *load_digits("test"))}
    t_models = time.perf_counter() - t_start

    x_train, y_train = load_digits("train")
    x_test, y_test = load_digits("test")
    x, y = x_test[:n], y_test[:n]
    target = (y + 3) % 10
    explainers = build_explainers(classifier, methods, flow=flow, gan=gan, vae=vae, seed=seed)

    # On-manifold share: the GAN's tangent space at the inverted code of each input (deterministic per input).
    basis = tangent_space(gan, invert(gan, x, (gan.latent_dim,), seed=seed).z).basis
    on_manifold_fn = lambda r: on_manifold_fraction(r.difference.flatten(1), basis[r.info["index"]])  # noqa: E731

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        z = torch.randn(x_test.shape[0], gan.latent_dim, generator=gen)
        quality = {
            "GAN": frechet_distance(x_test, gan(z), classifier=classifier),
            "VAE": frechet_distance(x_test, vae.decoder(torch.randn(x_test.shape[0], vae.latent_dim, generator=gen)),
                                    classifier=classifier),
            "real training digits (floor)": frechet_distance(x_test, x_train, classifier=classifier),
        }

    k = WATERMARK["target_class"]
    others = x_test[y_test != k][:40]
    region = region_mask(x.shape[1:], WATERMARK["position"], WATERMARK["pattern"])
    checks = [
        CleverHansCheck(name, model, {
            "counterfactual (pixel, L2 steps)": CounterfactualExplainer(model, PixelChart(update="l2", lr=0.05)),
            "diffeomorphic": DiffeomorphicCounterfactual(model, flow),
        }, others, k, region)
        for name, model in (("watermarked classifier", shortcut), ("clean classifier", classifier))
    ]

    summary_models = {
        "classifier test accuracy": clf_metrics.get("test_accuracy"),
        "watermarked classifier test accuracy": shortcut_metrics.get("test_accuracy"),
        f"flow ({flow_kind}) test bits/dim": flow_metrics.get("test_bits_per_dim"),
        "targets": "(y + 3) mod 10",
        "step budget": steps,
    }
    outcome = audit(classifier, x, target, explainers, out, train=(x_train, y_train), steps=steps,
                    nll_fn=flow_nll(flow, x.shape[1:]), on_manifold_fn=on_manifold_fn, quality=quality,
                    clever_hans=checks, summary=summary_models, title="xcf audit — digits demo",
                    batch_size=max(n, 1), seed=seed, overwrite=True, config={"data": f"digits-test[:{n}]"},
                    progress=progress)
    results = outcome.results

    nll_real = bits_per_dim(flow, x_test, dequantize=False)
    summary: dict[str, Any] = {
        "n": n,
        "targets": "(y + 3) mod 10",
        "classifier_test_accuracy": clf_metrics.get("test_accuracy"),
        "flow": flow_kind,
        "flow_test_bits_per_dim": flow_metrics.get("test_bits_per_dim"),
        "bits_per_dim_real_test_digits": float(nll_real.mean()),
        "frechet_distance": quality,
        "methods": {},
        "clever_hans": {c: {m: {"median": v.median, "chance": v.baseline, "flagged": v.flagged}
                            for m, v in vs.items()} for c, vs in outcome.clever_hans.items()},
        "models_seconds": t_models,
    }
    table = outcome.table.to_dict()
    for name, r in results.items():
        summary["methods"][name] = {
            "success_rate": r.success_rate,
            "median_steps": _median_steps(r.steps, r.success),
            "max_steps": int(r.steps.max()),
            "time_per_counterfactual_s": r.time_per_sample,
            "reconstruction_rms_mean": float(r.reconstruction_error.mean()),
            **{m: table[name].get(m) for m in ("validity", "svm_transfer", "knn_agreement", "realism_bpd",
                                               "on_manifold", "l2")},
        }
    if "diffeomorphic" in results:
        diffeo = results["diffeomorphic"]
        ok = diffeo.success
        summary["methods"]["diffeomorphic"]["bits_per_dim_successful"] = (
            float(bits_per_dim(flow, diffeo.counterfactual[ok], dequantize=False).mean()) if bool(ok.any()) else None)
        save_figure(method_grid(diffeo, classifier, n=8, title=f"diffeomorphic counterfactuals ({flow_kind} base space)"),
                    out / "figure_diffeomorphic", formats=("png", "pdf"))
    summary["wall_time_s"] = time.perf_counter() - t_start
    (out / "metrics.json").write_text(json.dumps(summary, indent=2, default=str))
    lines = ["| metric | value |", "|---|---|"]
    for key, value in summary.items():
        if isinstance(value, dict):
            for k2, v2 in value.items():
                if isinstance(v2, dict):
                    lines += [f"| {key}.{k2}.{k3} | {format_number(v3, 4)} |" for k3, v3 in v2.items()]
                else:
                    lines.append(f"| {key}.{k2} | {format_number(v2, 4)} |")
        else:
            lines.append(f"| {key} | {format_number(value, 4)} |")
    lines += ["", "## Metrics table", "", outcome.table.to_markdown()]
    (out / "metrics.md").write_text("\n".join(lines) + "\n")
    return summary
