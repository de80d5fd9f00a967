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

import torch
from torch import Tensor

from xcf._validation import check_inputs, check_module_mode, format_inputs, preserved
from xcf.objectives import TargetType, as_target_tensor
from xcf.result import CounterfactualResult

__all__ = ["MapSource", "compare_attributions", "difference_map", "mean_map_per_target"]


MapSource = Union[Tensor, CounterfactualResult, Any]


def difference_map(result: CounterfactualResult, absolute: bool = False) -> Tensor:
    """The difference map ``x' - x`` (or ``|x' - x|``) of every sample, with the input's shape.

    Args:
        result: a :class:`~xcf.result.CounterfactualResult`.
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
        result: a :class:`~xcf.result.CounterfactualResult` with class targets.
        absolute: average ``|x' - x|`` instead of the signed change.
        only_valid: average only samples whose search succeeded.

    Returns:
        ``{class index: (...) map}`` in increasing class order; classes with no (valid) sample are absent.

    Example:
        >>> clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
        >>> result = xcf.AdversarialCounterfactual(clf).counterfactual(torch.rand(4, 1, 4, 4), target=[1, 1, 2, 2])
        >>> maps = mean_map_per_target(result, absolute=True)
        >>> sorted(maps), tuple(maps[1].shape)
        ([1, 2], (1, 4, 4))
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
            :class:`~xcf.result.CounterfactualResult` (its ``x' - x``), an explainer with
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
        >>> clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
        >>> x = torch.rand(2, 1, 4, 4)
        >>> maps = compare_attributions(clf, x, 2, {"counterfactual": xcf.AdversarialCounterfactual(clf)})
        >>> list(maps), tuple(maps["saliency"].shape)
        (['counterfactual', 'saliency', 'integrated_gradients'], (2, 1, 4, 4))
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
