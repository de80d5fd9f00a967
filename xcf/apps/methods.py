"""The method list of the applications and the one place that turns it into explainers.

``xcf demo`` and ``xcf audit`` compare the same four methods; both build them here, from the audited
classifier and whichever generative models the methods need.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

from torch import Tensor

from xcf.charts import PixelChart
from xcf.explain import (
    AdversarialCounterfactual,
    ApproximateCounterfactual,
    CounterfactualExplainer,
    DiffeomorphicCounterfactual,
)
from xcf.models.flow_training import bits_per_dim
from xcf.models.shipped import reference

__all__ = ["CLEVER_HANS_CONFIDENCE", "METHODS", "build_explainers", "check_methods", "clever_hans_explainers",
           "flow_nll", "pixelcnn_nll", "reference_model"]

#: the methods of ``xcf demo`` and ``xcf audit``, in report order
METHODS = ("diffeomorphic", "approximate (GAN)", "approximate (VAE)", "adversarial")


def reference_model(name: str, *, quick: bool = False, retrain: bool = False, cache_dir: Any = None,
                    progress: bool = False) -> tuple[Any, dict[str, Any]]:
    """The applications' one way to a reference model (:func:`xcf.models.shipped.reference`): the shipped
    weights; with ``retrain`` the table's recipe trained into the cache; with ``quick`` a tiny smoke-test model
    trained into the cache (numbers meaningless)."""
    return reference(name, retrain=retrain and not quick, smoke=quick, cache_dir=cache_dir, progress=progress)


def check_methods(methods: Optional[Sequence[str]]) -> list[str]:
    """The chosen methods in report order (default: all); unknown or no names are refused."""
    if methods is None:
        return list(METHODS)
    chosen = [m.strip() for m in methods if m.strip()]
    unknown = sorted(set(chosen) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {list(METHODS)}")
    if not chosen:
        raise ValueError(f"no method chosen; choose from {list(METHODS)}")
    return [m for m in METHODS if m in chosen]


def build_explainers(
    classifier: Callable[[Tensor], Tensor],
    methods: Sequence[str],
    *,
    flow: Any = None,
    gan: Any = None,
    vae: Any = None,
    seed: int = 0,
    generative_confidence: Optional[float] = None,
    confidence: Optional[float] = None,
) -> dict[str, Any]:
    """``{method: explainer}`` for ``methods`` (see :data:`METHODS`), each with the models it needs.

    Args:
        classifier: the audited classifier (logits).
        methods: names from :data:`METHODS`.
        flow: the normalizing flow of ``"diffeomorphic"``.
        gan: the generator (with ``latent_dim``) of ``"approximate (GAN)"``.
        vae: the VAE (``decoder``, ``encode``, ``latent_dim``) of ``"approximate (VAE)"``.
        seed: seed of the inversion starts.
        generative_confidence: the stopping confidence of the searches in a generative model's space
            (diffeomorphic and approximate; default: their charts', 0.99); the MNIST demo uses 0.999999, chosen by
            the sweeps in docs/mnist.md (flow) and docs/approximate.md (GAN and VAE latents).
        confidence: the stopping confidence of every method (overrides ``generative_confidence``), so that all
            methods are held to the same bar.
    """
    if confidence is not None and not (isinstance(confidence, float) and 0.0 < confidence < 1.0):
        raise ValueError(f"confidence must be a float in (0, 1), got {confidence!r}")
    needs = {"diffeomorphic": ("flow", flow), "approximate (GAN)": ("gan", gan), "approximate (VAE)": ("vae", vae)}
    explainers: dict[str, Any] = {}
    for method in check_methods(methods):
        role, model = needs.get(method, (None, None))
        if role is not None and model is None:
            raise ValueError(f"method {method!r} needs a {role}")
        if method == "diffeomorphic":
            explainers[method] = DiffeomorphicCounterfactual(classifier, flow, confidence=generative_confidence)
        elif method == "approximate (GAN)":
            # an xcf GAN carries the encoder its inversion starts from; another generator starts from 8 draws
            explainers[method] = ApproximateCounterfactual(classifier, gan, (gan.latent_dim,), seed=seed,
                                                           encoder=getattr(gan, "encoder", None),
                                                           confidence=generative_confidence)
        elif method == "approximate (VAE)":
            explainers[method] = ApproximateCounterfactual(classifier, vae.decoder, (vae.latent_dim,),
                                                           encoder=vae.encode, seed=seed,
                                                           confidence=generative_confidence)
        else:
            explainers[method] = AdversarialCounterfactual(classifier)
        if confidence is not None:
            explainers[method].chart.confidence = confidence  # the explainer's own, freshly built chart
    return explainers


#: the stopping confidence of the Clever-Hans checks' generative searches: a counterfactual that only just
#: crosses 0.99 has often painted half a pattern; at 0.9999 the diffeomorphic maps of the digits' shortcut
#: classifier put 3.4x chance in the watermark, at 0.99 2.2x (docs/clever-hans.md)
CLEVER_HANS_CONFIDENCE = 0.9999


def clever_hans_explainers(classifier: Callable[[Tensor], Tensor], *, flow: Any = None, vae: Any = None,
                           seed: int = 0, confidence: float = CLEVER_HANS_CONFIDENCE) -> dict[str, Any]:
    """The explanations a Clever-Hans check compares, side by side: steepest-descent pixel counterfactuals
    (the baseline that finds a pattern by following the gradient), diffeomorphic ones with ``flow`` and
    approximate ones in ``vae``'s latent space, the generative models fitted on the classifier's own
    training data.  The generative searches stop at ``confidence``."""
    pixel = CounterfactualExplainer(classifier, PixelChart(update="l2", lr=0.05))
    explainers: dict[str, Any] = {"pixel (L2 steps)": pixel}
    if flow is not None:
        explainers["diffeomorphic"] = DiffeomorphicCounterfactual(classifier, flow, confidence=confidence)
    if vae is not None:
        explainers["approximate (VAE)"] = build_explainers(classifier, ["approximate (VAE)"], vae=vae, seed=seed,
                                                           confidence=confidence)["approximate (VAE)"]
    return explainers


def flow_nll(flow: Any, sample_shape: Sequence[int]) -> Callable[[Tensor], Tensor]:
    """Per-sample negative log-likelihood in nats under ``flow`` (deterministic dequantisation): realism."""
    dims = math.prod(sample_shape)
    return lambda v: bits_per_dim(flow, v, dequantize=False) * dims * math.log(2)


def pixelcnn_nll(model: Any) -> Callable[[Tensor], Tensor]:
    """Per-sample negative log-likelihood in nats under a PixelCNN: realism judged by a model that took no
    part in any search."""
    return lambda v: model.bits_per_dim(v) * (v[0].numel() * math.log(2))
