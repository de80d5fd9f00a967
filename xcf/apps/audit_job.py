"""``xcf audit``: resolve the data, the models and the targets, check them all, then run the one audit.

:func:`run_audit` is the engine of ``xcf audit``.  It opens ``data`` (a built-in set, an ImageFolder or an
``.npz``, :func:`xcf.datasets.files.open_images`), loads the user's classifier, flow, generator and realism
judge (:func:`xcf.models.loading.load_model`: xcf model files, TorchScript or torch.export classifiers,
factories), and checks every one of them on two of the data's images *before* anything heavy runs or
anything is written: a wrong input shape, a model on another device, a target out of range each end as
one sentence.  Then it runs :func:`xcf.apps.audit.audit` (streaming, resumable, ``torchrun``-able).

On the digits built-ins, models not given are the cached reference models (trained on first use).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn

from xcf._io import atomic_write, check_writable_path
from xcf.apps.audit import AuditOutcome, audit
from xcf.apps.fitting import FIT_MINUTES, check_fit, fitted
from xcf.apps.methods import METHODS, build_explainers, check_methods, flow_nll, pixelcnn_nll, reference_model
from xcf.charts import FlowChart
from xcf.datasets.files import BUILTIN, ImageData, open_images
from xcf.evaluate.quality import frechet_distance, pca_features
from xcf.models.loading import OUTPUTS, LoadedModel, as_logits, load_model, probe_classifier
from xcf.apps.targets import parse_target
from xcf.scale.distributed import init_distributed, pick_device
from xcf.scale.precision import accelerate

__all__ = ["DATASETS", "parse_target", "run_audit"]

#: the built-in data sets ``xcf audit --data`` knows besides files
DATASETS = BUILTIN
_DIGITS_FLOWS = ("realnvp", "glow")
_TRAIN_OF = {"digits-test": "digits-train", "digits-all": None, "digits-shifted": "digits-train",
             "mnist-test": "mnist-train"}


def _devices(module: Any) -> set[torch.device]:
    return {p.device for p in module.parameters()} | {b.device for b in module.buffers()} \
        if isinstance(module, nn.Module) else set()


def _place(models: Sequence[Optional[LoadedModel]], dev: torch.device) -> None:
    """Files are loaded onto ``dev``; a factory's model must already be there (xcf does not move a user's model)."""
    for m in models:
        if m is None:
            continue
        if m.source != "factory":
            m.module = m.module.to(dev)
            continue
        where = _devices(m.module)
        if where and where != {dev}:
            raise ValueError(f"--{m.role} {m.spec} returned a model on {', '.join(sorted(map(str, where)))}, but the "
                             f"audit runs on {dev} (--device): build it there, or pass --device to match")


def _check_generative(flow: Any, generator: Optional[LoadedModel], judge: Optional[LoadedModel], x: Tensor,
                      flow_spec: str) -> None:
    """The flow, the generator and the judge on two of the data's images: one sentence for a misfit."""
    if flow is not None:
        try:
            chart = FlowChart(flow)
            chart.check(x)
            with torch.no_grad():
                back = chart.decode(chart.encode(x))
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"--flow {flow_spec} does not take the data's images of shape {tuple(x.shape[1:])}: "
                             f"{' '.join(str(e).split())}") from None
        if back.shape != x.shape or not bool(torch.isfinite(back).all()):
            raise ValueError(f"--flow {flow_spec} does not map the data's images back to themselves")
    if generator is not None:
        g = generator.module
        decode = g.decoder if generator.kind == "vae" else g
        with torch.no_grad():
            out = decode(torch.zeros(2, int(g.latent_dim), device=x.device))
        if tuple(out.shape[1:]) != tuple(x.shape[1:]):
            raise ValueError(f"--generator {generator.spec} makes images of shape {tuple(out.shape[1:])}; the data has "
                             f"{tuple(x.shape[1:])}")
    if judge is not None:
        nll = _judge_nll(judge, x.shape[1:])
        try:
            ok = bool(torch.isfinite(nll(x)).all())
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"--judge {judge.spec} does not take the data's images: {' '.join(str(e).split())}") from None
        if not ok:
            raise ValueError(f"--judge {judge.spec} gives non-finite log-likelihoods on the data's first images")


def _judge_nll(judge: LoadedModel, shape: Sequence[int]) -> Any:
    return pixelcnn_nll(judge.module) if judge.kind == "pixelcnn" else flow_nll(judge.module, shape)


def _optional(spec: Optional[str], role: str) -> Optional[LoadedModel]:
    return load_model(spec, role) if spec is not None else None


def run_audit(
    out_dir: str | Path = "xcf-audit",
    *,
    data: str = "digits-test",
    n: Optional[int] = None,
    batch_size: int = 100,
    steps: int = 1000,
    confidence: Optional[float] = None,
    seed: int = 0,
    target: Optional[str] = None,
    target_shift: Optional[int] = None,
    methods: Optional[Sequence[str]] = None,
    classifier_file: Optional[str] = None,
    flow: Optional[str] = None,
    generator: Optional[str] = None,
    judge: Optional[str] = None,
    train_data: Optional[str] = None,
    fit: Sequence[str] = (),
    fit_minutes: Optional[float] = FIT_MINUTES,
    channels: Optional[int] = None,
    layout: str | None = None,
    output: str = "logits",
    flow_kind: Optional[str] = None,
    cache_dir: Optional[str | Path] = None,
    quick: bool = False,
    retrain: bool = False,
    num_workers: int = 0,
    overwrite: bool = False,
    precision: str = "fp32",
    compile: bool = False,
    device: str = "auto",
    max_batches: Optional[int] = None,
    progress: bool = True,
) -> AuditOutcome:
    """Audit a classifier over a whole data set, resumably (the engine of ``xcf audit``).

    Args:
        out_dir: output folder (``store/`` with the shards, ``report.html``, ``summary.json``, ``metrics.csv``).
        data: a built-in name (:data:`DATASETS`), an ImageFolder or an ``.npz`` file.
        n: audit ``n`` images spread evenly over the data (default: all; ``digits-shifted`` is grown to ``n``,
            9 x 450 by default).
        batch_size: inputs per batch and shard.
        steps: step budget per counterfactual.
        confidence: stop each search once the target's probability reaches it, for every method (default:
            each method's own, 0.99).
        seed: the run's seed (inversion starts, per-batch seeds).
        target: ``+K``, a class, ``runner-up`` or a per-image file (see :func:`parse_target`).
        target_shift: the older spelling of ``target="+K"``.
        methods: subset of :data:`xcf.apps.methods.METHODS` (default: those the models given allow).
        classifier_file: the audited classifier (a file or ``module:function``; required unless ``data`` is
            a digits built-in, whose reference CNN is the default).
        flow: the flow of the diffeomorphic method (file or factory; ``"realnvp"``/``"glow"``: the digits
            reference flow).
        generator: the GAN generator or VAE of the approximate method (file or factory).
        judge: a PixelCNN or flow that judges realism (bits/dim) and took no part in the search.
        train_data: the classifier's training images (labelled): the SVM and k-NN validators and the
            Fréchet distance are fitted on them (default for built-ins: their training split).
        fit: generative models to fit on ``train_data`` for this audit, from :data:`FITTABLE` (``"flow"`` and
            one generator, ``"gan"`` or ``"vae"``), instead of files: a Clever-Hans audit needs generators of
            the classifier's own training distribution (a flow fitted on images without a watermark cannot draw
            one).  They are trained with the recipes of ``xcf train`` and saved under ``out_dir/fitted/``; a
            resumed audit reuses them while the training data is unchanged.
        fit_minutes: wall-clock budget of each fitted model (default :data:`FIT_MINUTES`).
        channels: read the images as greyscale (1) or RGB (3).
        layout: the channel order of ``.npz`` files (``data`` and ``train_data``), ``"nchw"`` or ``"nhwc"``
            (default: from the shape; see :func:`~xcf.datasets.files.open_images`).
        output: what ``classifier_file`` returns (:data:`~xcf.models.loading.OUTPUTS`): ``"logits"`` (default),
            ``"probs"`` (xcf then searches on their logarithm, :func:`~xcf.models.loading.as_logits`) or
            ``"log_probs"``; outputs that look like another kind than declared are refused before anything runs.
        flow_kind: deprecated alias of ``flow="realnvp"|"glow"``.
        cache_dir: the reference-model cache.
        quick: tiny reference models trained into the cache instead of the shipped weights (a smoke test).
        retrain: train the reference models again into the cache instead of loading the shipped weights.
        num_workers: DataLoader workers.
        overwrite: discard a previous store in ``out_dir`` instead of resuming it.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` for the classifier.
        compile: ``torch.compile`` the classifier.
        device: ``"auto"`` (CUDA GPU ``LOCAL_RANK`` when available), ``"cpu"`` or ``"cuda"``.
        max_batches: compute at most this many new batches per process, then stop (resume later).
        progress: a progress bar on rank 0.
    """
    t0 = time.perf_counter()
    flow = flow if flow is not None else flow_kind
    if target_shift is not None:
        if target is not None:
            raise ValueError("give --target or --target-shift, not both")
        target = f"+{target_shift}" if target_shift >= 0 else str(target_shift)
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {list(OUTPUTS)}, got {output!r}")
    check_writable_path(out_dir, "--out", folder=True)
    if cache_dir is not None and (quick or retrain):
        check_writable_path(cache_dir, "--cache", folder=True)
    images = open_images(data, channels=channels, n=n, layout=layout)
    digits = images.source.startswith("digits")
    if classifier_file is None and not digits:
        raise ValueError(f"--classifier is required for {images.source}: the reference classifier exists for the "
                         "digits built-ins only")
    if classifier_file is None and output != "logits":
        raise ValueError(f"--output {output.replace('_', '-')} describes --classifier; the reference digits classifier "
                         "returns logits")
    if flow in _DIGITS_FLOWS and not digits:
        raise ValueError(f"--flow {flow} names a digits reference flow; for {images.source} give a flow file "
                         "(xcf train flow) or a factory")
    own = _optional(classifier_file, "classifier")
    own_flow = _optional(flow, "flow") if flow is not None and flow not in _DIGITS_FLOWS else None
    gen = _optional(generator, "generator")
    own_judge = _optional(judge, "judge")
    fit = check_fit(fit, flow, generator)
    train_spec = train_data if train_data is not None else _TRAIN_OF.get(images.source) if digits or \
        images.source.startswith("mnist") else None
    train = open_images(train_spec, channels=images.shape[0], layout=layout) if train_spec is not None else None
    if train is not None and (train.shape != images.shape or not train.labelled):
        raise ValueError(f"--train-data {train.source} must hold labelled images of shape {images.shape}, got "
                         f"{train.shape}{'' if train.labelled else ' without labels'}")
    if fit and train is None:
        raise ValueError(f"--fit {','.join(fit)} fits on the classifier's training data: give --train-data")
    if fit and not (isinstance(fit_minutes, (int, float)) and not isinstance(fit_minutes, bool) and fit_minutes > 0):
        raise ValueError(f"fit_minutes must be a number > 0, got {fit_minutes!r}")
    gen_kind = gen.kind if gen is not None else next((k for k in fit if k != "flow"), None)
    methods = _methods(methods, digits, own_flow is not None or digits or "flow" in fit, gen_kind)

    dist = init_distributed()
    try:
        dev = pick_device(device, dist.local_rank)
        _place([own, own_flow, gen, own_judge], dev)
        x2 = images.first(2).to(dev)
        if own is not None:
            n_classes = probe_classifier(own.module, x2, f"--classifier {own.spec}", output=output)
        _check_generative(own_flow.module if own_flow else None, gen, own_judge, x2, str(flow))
        show = progress and dist.rank == 0

        def ref(name: str) -> Any:
            return reference_model(name, quick=quick, retrain=retrain, cache_dir=cache_dir, progress=show)[0]

        if dist.rank != 0:  # rank 0 trains whatever the cache lacks; the others wait, then load the same files
            dist.barrier()
        for kind in fit:
            model_fit = fitted(kind, train, Path(out_dir), fit_minutes, device, seed, overwrite, show,
                               dist.rank == 0)
            model_fit.module.to(dev)
            if kind == "flow":
                own_flow = model_fit
            else:
                gen = model_fit
        clf = as_logits(own.module, output) if own is not None else ref("digits-classifier")
        n_classes = probe_classifier(clf, x2, "the classifier")
        rule = parse_target(target, images, n_classes, clf)
        labels = images.labels()
        if labels is not None and int(labels.max()) >= n_classes:
            raise ValueError(f"{images.source} has labels up to {int(labels.max())}, but the classifier has {n_classes} "
                             "classes")
        flow_model = own_flow.module if own_flow is not None else None
        if flow_model is None and "diffeomorphic" in methods:
            flow_model = ref(f"digits-{flow or 'realnvp'}").to(dev)
        gan = gen.module if gen is not None and gen.kind == "gan" else None
        vae = gen.module if gen is not None and gen.kind == "vae" else None
        if gan is None and "approximate (GAN)" in methods:
            gan = ref("digits-gan").to(dev)
        if vae is None and "approximate (VAE)" in methods:
            vae = ref("digits-vae").to(dev)
        nll_fn = _judge_nll(own_judge, images.shape) if own_judge is not None else None
        judge_name = own_judge.describe() if own_judge is not None else None
        if nll_fn is None and digits:
            nll_fn, judge_name = pixelcnn_nll(ref("digits-pixelcnn").to(dev)), "reference digits PixelCNN"
        if dist.rank == 0:
            dist.barrier()
        models_s = time.perf_counter() - t0

        clf = clf.to(dev) if own is None or own.source != "factory" else clf
        fast = accelerate(clf, precision, compile)
        explainers = build_explainers(fast, methods, flow=flow_model, gan=gan, vae=vae, seed=seed,
                                      confidence=confidence)
        xy_train = train.tensors() if train is not None else None
        set_metrics, reference = _realism(xy_train, images, nll_fn, judge_name, dev)
        described = {role: (m.describe() if m is not None else None) for role, m in
                     (("classifier", own), ("flow", own_flow), ("generator", gen), ("judge", own_judge))}
        config = {"data": images.source, "data_fingerprint": images.fingerprint, "quick": quick, "retrain": retrain,
                  "train_data": train.fingerprint if train is not None else None, "precision": precision,
                  "compile": compile, "classifier": described["classifier"] or "reference digits CNN",
                  "flow": described["flow"] or (flow or "realnvp" if "diffeomorphic" in methods else None),
                  "realism_judge": judge_name}
        if output != "logits":  # a store made before --output existed keeps its configuration
            config["classifier_output"] = output
        info = _info(images, train, [own, own_flow, gen, own_judge], judge_name, confidence)
        outcome = audit(
            fast, images.dataset, rule, explainers, out_dir, train=xy_train, nll_fn=nll_fn, batch_size=batch_size,
            steps=steps, seed=seed, num_workers=num_workers, config=config, overwrite=overwrite, device=dev,
            progress=progress, dist=dist, max_batches=max_batches, set_metrics=set_metrics,
            realism_reference=reference, summary=info, class_names=_class_names(images, own, n_classes),
            title=f"xcf audit — {images.source}, {len(images)} images")
        outcome.timing["models"] = models_s
        if outcome.report is not None:  # the whole command's time, models included
            outcome.summary.update(models_seconds=models_s, wall_seconds=time.perf_counter() - t0)
            text = json.dumps(outcome.summary, indent=2, default=str)
            atomic_write(Path(out_dir) / "summary.json", lambda fh: fh.write(text.encode()))
        return outcome
    finally:
        dist.close()


def _methods(methods: Optional[Sequence[str]], digits: bool, has_flow: bool, gen_kind: Optional[str]) -> list[str]:
    """The methods to run: those asked for, or those the models allow (``gen_kind``: ``"gan"``, ``"vae"``, ``None``)."""
    if methods is None:
        if digits and gen_kind is None:
            return list(METHODS)
        allowed = {"diffeomorphic": has_flow, "approximate (GAN)": gen_kind == "gan",
                   "approximate (VAE)": gen_kind == "vae", "adversarial": True}
        return [m for m in METHODS if allowed[m]]
    chosen = check_methods(methods)
    if not digits:
        need = {"diffeomorphic": ("--flow or --fit flow", has_flow),
                "approximate (GAN)": ("--generator (a GAN) or --fit gan", gen_kind == "gan"),
                "approximate (VAE)": ("--generator (a VAE) or --fit vae", gen_kind == "vae")}
        for m in chosen:
            flag, ok = need.get(m, ("", True))
            if not ok:
                raise ValueError(f"method {m!r} needs {flag}")
    return chosen


def _realism(train: Optional[tuple[Tensor, Optional[Tensor]]], images: ImageData, nll_fn: Any,
             judge_name: Optional[str], device: torch.device) -> tuple[dict, dict]:
    """Set-level judges with the real audited images beside them (the floor): the realism judge's bits/dim
    and a Fréchet distance to the training images in their PCA space (no trained model takes part)."""
    metrics: dict[str, Any] = {}
    if nll_fn is not None:
        per_dim = math.prod(images.shape) * math.log(2)
        def judged(v: Tensor) -> float:
            with torch.no_grad():
                return float(torch.cat([nll_fn(part.to(device)).cpu() for part in v.split(250)]).mean()) / per_dim

        metrics[f"bits/dim under {judge_name}"] = judged
    if train is not None and train[0].shape[0] >= 3:
        x_train = train[0]
        pca = pca_features(x_train, dims=min(50, x_train.shape[0] - 1, x_train[0].numel()))
        metrics["Fréchet distance to training images (PCA-50)"] = lambda v: frechet_distance(x_train, v, features=pca)
    ref = images.first(1000)
    return metrics, ({"real audited images (floor)": ref} if metrics and ref.shape[0] >= 2 else {})


def _class_names(images: ImageData, own: Optional[LoadedModel], n_classes: int) -> list[str]:
    names = images.classes or (own.metrics.get("classes") if own is not None else None) or []
    return [names[k] if k < len(names) else str(k) for k in range(n_classes)]


def _info(images: ImageData, train: Optional[ImageData], models: Sequence[Optional[LoadedModel]],
          judge_name: Optional[str], confidence: Optional[float]) -> dict[str, Any]:
    info: dict[str, Any] = {"data": images.source, "labelled": images.labelled,
                            "classes": ", ".join(images.classes or []) or "unknown",
                            "stopping confidence": confidence if confidence is not None else "each method's own (0.99)",
                            "validators fitted on": train.source if train is not None else
                            "none (no --train-data: SVM and k-NN validation skipped)",
                            "realism judge": judge_name or "none (no --judge)"}
    for m in models:
        if m is None:
            continue
        numbers = {k: v for k, v in m.metrics.items() if k.startswith("test_") or k.startswith("frechet")}
        text = m.describe()
        if m.metrics.get("trained_on"):
            text += f", trained on {m.metrics['trained_on']}"
        if numbers:
            text += ", " + ", ".join(f"{k} {v:.4g}" for k, v in numbers.items())
        info["realism judge" if m.role == "judge" else m.role] = text
    return info
