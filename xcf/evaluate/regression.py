"""Metrics for counterfactuals of regression outputs and other scalar objectives.

A counterfactual ``x'`` made with a :class:`~xcf.objectives.ScalarTarget` (``s(x') >= t`` or
``s(x') <= t`` for a model output ``s``) is judged, per sample, by

* ``validity``: the threshold is reached, recomputed from the model: ``[s(x') >= t]`` (or ``<=``);
* ``value_start`` / ``value``: the model's scalar ``s`` at the input and at the counterfactual;
* ``knn_target_mean``: the regression analogue of k-NN agreement, the mean *true* target value of
  the ``k`` training examples nearest to ``x'`` (Euclidean on flattened inputs),

  ``m_k(x') = (1/k) sum_{j in N_k(x')} y_j``,

  which says what the data (not the audited model) would predict for ``x'``: a counterfactual with
  "two more objects" that lies among training images with two more objects is *supported*; an
  adversarial one keeps the neighbours, and the target mean, of its input;
* ``l1``, ``l2``: the size of ``x' - x``.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from xcf._validation import check_inputs, check_module_mode, preserved
from xcf.result import CounterfactualResult

__all__ = ["knn_target_mean", "regression_metrics"]


def knn_target_mean(
    x_cf: Tensor,
    train_x: Tensor,
    train_values: Tensor,
    k: int = 10,
    *,
    standardize: bool = False,
    batch_size: int = 512,
) -> Tensor:
    """Mean target value of the ``k`` training examples nearest to each row of ``x_cf``.

    Args:
        x_cf: ``(N, ...)`` counterfactuals (or any query points).
        train_x: ``(M, ...)`` training inputs with the same sample shape (flattened for the distance).
        train_values: ``(M,)`` their regression targets (e.g. the true object count).
        k: number of neighbours, ``1 <= k <= M``.
        standardize: measure distances after scaling each feature to zero mean and unit variance on
            ``train_x`` (as :class:`xcf.evaluate.metrics.KNNValidator` does); raw Euclidean by default.
        batch_size: queries per distance computation (memory ``batch_size * M``).

    Returns:
        ``(N,)`` tensor of means, in ``train_values``' floating dtype (float32 for integer targets), on
        ``x_cf``'s device.

    Example:
        >>> train_x = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
        >>> knn_target_mean(torch.tensor([[0.4], [9.0]]), train_x, torch.tensor([0, 1, 2, 10]), k=2)
        tensor([0.5000, 6.0000])
    """
    check_inputs(x_cf, "x_cf", min_dim=2)
    check_inputs(train_x, "train_x", min_dim=2)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    values = torch.as_tensor(train_values)
    if values.ndim != 1 or values.shape[0] != train_x.shape[0]:
        raise ValueError(
            f"train_values has {values.numel()} entries but train_x has {train_x.shape[0]} examples "
            "(one target value per training example)"
        )
    m = train_x.shape[0]
    if k > m:
        raise ValueError(f"k={k} exceeds the {m} training examples")
    q, t = x_cf.detach().flatten(1), train_x.detach().flatten(1).to(x_cf.device)
    if q.shape[1] != t.shape[1]:
        raise ValueError(f"x_cf has {q.shape[1]} features per sample but train_x has {t.shape[1]}")
    dtype = torch.promote_types(q.dtype, t.dtype)
    q, t = q.to(dtype), t.to(dtype)
    if standardize:
        mean, std = t.mean(dim=0), t.std(dim=0, unbiased=False)
        std = torch.where(std > 0, std, torch.ones_like(std))
        q, t = (q - mean) / std, (t - mean) / std
    values = values.to(q.device)
    if not values.is_floating_point():
        values = values.float()
    chunks = []
    for i in range(0, q.shape[0], batch_size):
        d = torch.cdist(q[i:i + batch_size], t)
        idx = d.topk(k, dim=1, largest=False).indices
        chunks.append(values[idx].mean(dim=1))
    return torch.cat(chunks)


def regression_metrics(
    result: CounterfactualResult,
    model: Callable[..., Tensor],
    *,
    select: Optional[Callable[[Tensor], Tensor]] = None,
    train: Optional[tuple[Tensor, Tensor]] = None,
    k: int = 10,
    batch_size: int = 256,
) -> dict[str, Tensor]:
    """Per-sample metrics of a scalar-objective result (see the module docstring).

    The threshold and direction are read from ``result.info`` (recorded by explainers for a
    :class:`~xcf.objectives.ScalarTarget`).

    Args:
        result: the counterfactual result.
        model: the audited model; called in chunks under ``torch.no_grad``, left as found.
        select: ``output -> (N,)`` scalar to judge (default: an ``(N,)`` or ``(N, 1)`` output as is).
            For a sigmoid attribute pass e.g. ``lambda out: out[:, j].sigmoid()``.
        train: ``(train_x, train_values)`` for ``knn_target_mean``.
        k: neighbours for ``knn_target_mean``.
        batch_size: chunk size for model calls.

    Returns:
        ``{name: (N,) float tensor}``: ``success``, ``validity``, ``value_start``, ``value``,
        ``knn_target_mean`` (with ``train``), ``l1``, ``l2``.

    Example:
        >>> from xcf import CounterfactualExplainer, PixelChart
        >>> from xcf.objectives import ScalarTarget
        >>> model = torch.nn.Linear(2, 1)
        >>> res = CounterfactualExplainer(model, PixelChart(None)).counterfactual(
        ...     torch.zeros(3, 2), objective=ScalarTarget(5.0), lr=0.1)
        >>> bool(regression_metrics(res, model)["validity"].all())
        True
    """
    if not isinstance(result, CounterfactualResult):
        raise TypeError(f"result must be a CounterfactualResult, got {type(result).__name__}")
    if "threshold" not in result.info or "direction" not in result.info:
        raise ValueError(
            "result.info has no threshold/direction: regression metrics need a result made with a "
            "ScalarTarget objective"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    def scalar(x: Tensor) -> Tensor:
        outs = []
        for i in range(0, x.shape[0], batch_size):
            out = model(x[i:i + batch_size])
            if select is not None:
                out = select(out)
            elif out.ndim == 2 and out.shape[1] == 1:
                out = out[:, 0]
            if out.ndim != 1:
                raise ValueError(
                    f"the model returns shape {tuple(out.shape)}: pass select=<callable> returning one value per sample"
                )
            outs.append(out)
        return torch.cat(outs)

    x, xc = result.inputs.detach(), result.counterfactual.detach()
    dtype = x.dtype if x.is_floating_point() else torch.float32
    with torch.no_grad(), preserved(model):
        check_module_mode(model, "model")
        start, value = scalar(x).to(dtype), scalar(xc).to(dtype)
    thr = result.info["threshold"].to(device=value.device, dtype=dtype)
    up = result.info["direction"].to(value.device) > 0
    out: dict[str, Tensor] = {
        "success": result.success.to(dtype),
        "validity": torch.where(up, value >= thr, value <= thr).to(dtype),
        "value_start": start,
        "value": value,
    }
    if train is not None:
        out["knn_target_mean"] = knn_target_mean(xc, train[0], train[1], k=k).to(dtype)
    delta = (xc - x).flatten(1).to(dtype)
    out["l1"] = delta.abs().sum(dim=1)
    out["l2"] = delta.pow(2).sum(dim=1).sqrt()
    return out
