"""The metrics of an audit, per counterfactual, and their table per method.

The metrics  :func:`counterfactual_metrics` computes per sample (``delta = x' - x`` with ``D``
entries):

* ``success``: the search reached its objective (``result.success``);
* ``validity``: the audited classifier predicts the target, ``argmax f(x') = k`` (recomputed);
* ``l1 = sum |delta|``, ``l2 = sqrt(sum delta^2)`` (proximity);
* ``sparsity``: share of entries with ``|delta| > sparsity_tol`` (lower is sparser);
* ``out_of_range``: 1 if any entry of ``x'`` lies outside the data range (``bounds``), else 0; its
  mean is the share of counterfactuals that leave the range; ``out_of_range_pixels``: the share of
  entries outside it;
* ``realism_bpd``: ``-log p(x') / (D ln 2)``, bits per dimension under a density model (a flow),
  of ``x'`` clamped to the data range, or
  ``realism_nn_l2``: ``min_{i: y_i = k} ||x' - x_i||_2``, the distance to the nearest training example
  of the target class when no density is given;
* ``on_manifold``: share of ``||delta||^2`` inside a tangent space of the data manifold (from a
  user-supplied callable, e.g. built on :mod:`xcf.evaluate.geometry`);
* ``reconstruction_error``: RMS of ``decode(encode(x)) - x`` (non-zero for approximate charts);
  ``poor_reconstruction``: 1 where the chart flagged it as too large (``result.info["poor_reconstruction"]``, a
  generator's ``recon_threshold``): that counterfactual explains ``g(z0)``, not ``x``; its mean is the share;
* ``time_ms``: wall time per counterfactual, in milliseconds.

:func:`compare` averages them per method into a :class:`MetricsTable`.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Optional

import torch
from torch import Tensor

from xcf._io import format_number
from xcf._validation import check_module_mode, preserved
from xcf.evaluate.validators import (
    KNNValidator,
    SVMValidator,
    nearest_distance,
)
from xcf.models.flow_training import bits_per_dim
from xcf.result import CounterfactualResult

__all__ = ["MetricsTable", "compare", "counterfactual_metrics"]


#: column order of a :class:`MetricsTable` (columns that were not computed are left out)
METRIC_COLUMNS: tuple[str, ...] = (
    "success",
    "validity",
    "svm_transfer",
    "knn_agreement",
    "l1",
    "l2",
    "sparsity",
    "out_of_range",
    "out_of_range_pixels",
    "realism_bpd",
    "realism_nn_l2",
    "on_manifold",
    "reconstruction_error",
    "poor_reconstruction",
    "time_ms",
)

# ------------------------------------------------------------------------------------------ metrics
def _batched(fn: Callable[[Tensor], Tensor], x: Tensor, batch_size: int, role: str) -> Tensor:
    outs = []
    for start in range(0, x.shape[0], batch_size):
        out = fn(x[start:start + batch_size])
        if isinstance(out, tuple):
            out = out[0]
        if not isinstance(out, Tensor):
            raise TypeError(f"the {role} must return a tensor, got {type(out).__name__}")
        expected = min(batch_size, x.shape[0] - start)
        if out.ndim == 0 or out.shape[0] != expected:
            raise ValueError(
                f"the {role} must return one value (or row) per sample; got shape {tuple(out.shape)} "
                f"for {expected} samples"
            )
        outs.append(out.detach())
    return torch.cat(outs)


def counterfactual_metrics(
    result: CounterfactualResult,
    classifier: Optional[Callable[[Tensor], Tensor]] = None,
    *,
    svm: Optional[SVMValidator] = None,
    knn: Optional[KNNValidator] = None,
    nll_fn: Optional[Callable[[Tensor], Tensor]] = None,
    flow: Any = None,
    levels: Optional[int] = None,
    train: Optional[tuple[Any, Any]] = None,
    on_manifold_fn: Optional[Callable[[CounterfactualResult], Tensor]] = None,
    bounds: Optional[tuple[float, float]] | Literal["auto"] = "auto",
    sparsity_tol: float = 1e-2,
    tol: Optional[float] = None,
    batch_size: int = 256,
) -> dict[str, Tensor]:
    """Per-sample metrics of a counterfactual result (see the module docstring for definitions).

    Only the metrics whose ingredients are given are computed: ``validity`` needs ``classifier``,
    ``svm_transfer`` needs ``svm``, ``knn_agreement`` needs ``knn``, ``realism_bpd`` needs ``nll_fn``
    (or ``flow``), ``realism_nn_l2`` needs ``train`` (or a fitted ``knn``, whose training data is
    used) and is computed only when no density is given, ``on_manifold`` needs ``on_manifold_fn``.

    Args:
        result: a :class:`~xcf.result.CounterfactualResult` with class targets.
        classifier: the audited classifier (logits, probabilities or log-probabilities: only the argmax
            is used); called in chunks under ``torch.no_grad``, its modules are left as found.
        svm: a fitted :class:`SVMValidator`.
        knn: a fitted :class:`KNNValidator`.
        nll_fn: ``nll_fn(x) -> (N,)`` negative log-likelihood in nats of each sample under a density
            model; reported as bits per dimension ``nll / (D ln 2)``.
        flow: a normalizing flow scored with :func:`xcf.models.bits_per_dim` (deterministic
            dequantisation; true bits per dimension of the discrete data); pass ``nll_fn`` for other
            density models.
        levels: grey levels for ``flow`` (default: the flow's own; required for a flow without xcf's
            ``Dequantize``).
        train: ``(train_x, train_y)`` for the nearest-neighbour realism fallback.
        on_manifold_fn: ``on_manifold_fn(result) -> (N,)`` share of ``||x' - x||^2`` in the tangent
            space (e.g. ``xcf.evaluate.geometry.on_manifold_fraction`` on the generator's tangent basis).
        bounds: the data range ``(low, high)`` for ``out_of_range``; realism is scored on ``x'`` clamped to
            it.  ``"auto"``: ``(0, 1)`` when every input lies in ``[0, 1]``, else no range; ``None``: none.
        sparsity_tol: an entry counts as changed for ``sparsity`` when ``|x' - x| > sparsity_tol``
            (input units).
        tol: deprecated name of ``sparsity_tol``.
        batch_size: chunk size for model calls.

    Returns:
        ``{name: (N,) float tensor}`` in the order of :data:`METRIC_COLUMNS`.

    Example:
        >>> r = CounterfactualResult(inputs=torch.zeros(1, 4), counterfactual=torch.tensor([[0.5, -0.5, 0, 0]]),
        ...     latent=torch.zeros(1, 4), latent_start=torch.zeros(1, 4), reconstruction=torch.zeros(1, 4),
        ...     reconstruction_error=torch.zeros(1), target=torch.tensor([1]), success=torch.tensor([True]),
        ...     steps=torch.tensor([3]), score=torch.tensor([0.99]), start_score=torch.tensor([0.1]),
        ...     trace=torch.zeros(1, 4), wall_time=0.002)
        >>> m = counterfactual_metrics(r)
        >>> [round(float(m[k]), 4) for k in ("l1", "l2", "sparsity", "time_ms")]
        [1.0, 0.7071, 0.5, 2.0]
    """
    if not isinstance(result, CounterfactualResult):
        raise TypeError(f"result must be a CounterfactualResult, got {type(result).__name__}")
    if tol is not None:
        warnings.warn("counterfactual_metrics(tol=...) is renamed sparsity_tol and will be removed in xcf 0.3",
                      DeprecationWarning, stacklevel=2)
        sparsity_tol = tol
    if not sparsity_tol >= 0:
        raise ValueError(f"sparsity_tol must be >= 0, got {sparsity_tol}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if nll_fn is not None and flow is not None:
        raise ValueError("give either nll_fn or flow, not both")
    if levels is not None and flow is None:
        raise ValueError("levels is used only with flow=")
    x, xc = result.inputs.detach(), result.counterfactual.detach()
    if xc.shape != x.shape:
        raise ValueError(f"counterfactual shape {tuple(xc.shape)} differs from inputs shape {tuple(x.shape)}")
    n = len(result)
    dtype = x.dtype if x.is_floating_point() else torch.float32
    target = result.target
    needs_target = classifier is not None or svm is not None or knn is not None or train is not None
    if needs_target and bool((target < 0).any()):
        raise ValueError("result.target has entries < 0 (a custom objective?): class metrics need class targets")

    out: dict[str, Tensor] = {}
    out["success"] = result.success.to(dtype)
    if classifier is not None:
        with torch.no_grad(), preserved(classifier):
            check_module_mode(classifier, "classifier")
            logits = _batched(classifier, xc, batch_size, "classifier")
        if logits.ndim != 2 or logits.shape[0] != n:
            raise ValueError(f"the classifier must return (N, classes) outputs, got shape {tuple(logits.shape)}")
        if bool((target >= logits.shape[1]).any()):
            raise ValueError(f"result.target exceeds the classifier's {logits.shape[1]} classes")
        out["validity"] = (logits.argmax(dim=1) == target.to(logits.device)).to(dtype)
    if svm is not None:
        out["svm_transfer"] = svm.transfer(xc, target).to(dtype)
    if knn is not None:
        out["knn_agreement"] = knn.agreement(xc, target).to(dtype)
    delta = (xc - x).flatten(1).to(dtype)
    out["l1"] = delta.abs().sum(dim=1)
    out["l2"] = delta.pow(2).sum(dim=1).sqrt()
    out["sparsity"] = (delta.abs() > sparsity_tol).to(dtype).mean(dim=1) if delta.shape[1] else delta.new_zeros(n)
    if bounds == "auto":
        bounds = (0.0, 1.0) if n and float(x.min()) >= 0.0 and float(x.max()) <= 1.0 else None
    scored = xc
    if bounds is not None:
        share = result.out_of_range(bounds).to(device=x.device, dtype=dtype)
        out["out_of_range"] = (share > 0).to(dtype)
        out["out_of_range_pixels"] = share
        scored = xc.clamp(*bounds)
    if flow is not None:
        if not callable(getattr(flow, "log_prob", None)):
            raise TypeError("flow must have a log_prob(x) method; pass nll_fn for other density models")
        out["realism_bpd"] = bits_per_dim(flow, scored, levels, dequantize=False, batch_size=batch_size).to(dtype)
    elif nll_fn is not None:
        with torch.no_grad(), preserved(nll_fn):
            nll = _batched(nll_fn, scored, batch_size, "nll_fn").to(dtype).reshape(-1)
        if nll.shape[0] != n:
            raise ValueError(f"nll_fn must return one value per sample ({n}), got {nll.shape[0]}")
        out["realism_bpd"] = nll / (delta.shape[1] * math.log(2.0))
    else:
        if train is None and knn is not None:
            train = (knn.train_x_, knn.train_y_)
        if train is not None:
            out["realism_nn_l2"] = nearest_distance(xc.to(dtype), train[0], train[1], target)
    if on_manifold_fn is not None:
        frac = on_manifold_fn(result)
        if not isinstance(frac, Tensor) or frac.reshape(-1).shape[0] != n:
            raise ValueError(f"on_manifold_fn must return a tensor with one value per sample ({n})")
        out["on_manifold"] = frac.detach().reshape(-1).to(device=x.device, dtype=dtype)
    out["reconstruction_error"] = result.reconstruction_error.detach().to(dtype).reshape(-1)
    poor = result.info.get("poor_reconstruction")
    if isinstance(poor, Tensor) and poor.reshape(-1).shape[0] == n:
        out["poor_reconstruction"] = poor.detach().reshape(-1).to(device=x.device, dtype=dtype)
    out["time_ms"] = torch.full((n,), 1000.0 * result.time_per_sample, dtype=dtype, device=x.device)
    return {k: out[k] for k in METRIC_COLUMNS if k in out}


# ------------------------------------------------------------------------------------------- table
@dataclass
class MetricsTable:
    """Mean metrics per method: rows are methods, columns are metrics.

    Means are over the finite values; how many values were not finite (a NaN or infinite likelihood,
    say) is kept in :attr:`nonfinite` and shown beside the mean, never averaged away in silence.

    Attributes:
        rows: ``{method: {metric: mean over the finite values}}``.
        counts: ``{method: number of samples}``.
        columns: metric order (union over rows, in :data:`METRIC_COLUMNS` order).
        nonfinite: ``{method: {metric: number of non-finite values}}`` (only entries above 0).

    Example:
        >>> t = MetricsTable({"pixel": {"validity": 1.0, "l2": 0.5}})
        >>> print(t.to_markdown())
        | method | n | validity | l2 |
        |---|---|---|---|
        | pixel | - | 1.000 | 0.500 |
    """

    rows: dict[str, dict[str, float]]
    counts: dict[str, int] = field(default_factory=dict)
    columns: list[str] = field(default_factory=list)
    nonfinite: dict[str, dict[str, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.columns:
            seen = {c for r in self.rows.values() for c in r}
            self.columns = [c for c in METRIC_COLUMNS if c in seen] + sorted(seen - set(METRIC_COLUMNS))

    @classmethod
    def from_metrics(
        cls, metrics: Mapping[str, Mapping[str, Tensor]], *, mask: Optional[Mapping[str, Tensor]] = None
    ) -> "MetricsTable":
        """Average per-sample metrics (``{method: {metric: (N,) tensor}}``), optionally over a mask per method.

        Example:
            >>> t = MetricsTable.from_metrics({"m": {"realism_bpd": torch.tensor([1.0, float("nan"), 3.0])}})
            >>> t["m"]["realism_bpd"], t.nonfinite, t.to_markdown().splitlines()[-1]
            (2.0, {'m': {'realism_bpd': 1}}, '| m | 3 | 2.000 (1 non-finite) |')
        """
        rows, counts, nonfinite = {}, {}, {}
        for name, per_sample in metrics.items():
            sel = None if mask is None else mask[name].bool()
            row, bad = {}, {}
            n = 0
            for metric, values in per_sample.items():
                v = values.detach().double().reshape(-1)
                if sel is not None:
                    v = v[sel.to(v.device)]
                n = max(n, v.numel())
                finite = torch.isfinite(v)
                k = int((~finite).sum())
                if k:
                    bad[metric] = k
                row[metric] = float(v[finite].mean()) if bool(finite.any()) else float("nan")
            rows[name], counts[name] = row, n
            if bad:
                nonfinite[name] = bad
        return cls(rows, counts, nonfinite=nonfinite)

    def __getitem__(self, method: str) -> dict[str, float]:
        return self.rows[method]

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """``{method: {"n": count, metric: mean, ..., "nonfinite": {metric: count}}}`` (JSON-ready; NaN for
        missing; ``"nonfinite"`` only where some value was not finite)."""
        out: dict[str, dict[str, Any]] = {}
        for name, row in self.rows.items():
            d: dict[str, Any] = {"n": self.counts[name]} if name in self.counts else {}
            d.update({c: row.get(c, float("nan")) for c in self.columns})
            if self.nonfinite.get(name):
                d["nonfinite"] = dict(self.nonfinite[name])
            out[name] = d
        return out

    def cell(self, method: str, metric: str, digits: int = 3) -> str:
        """One cell as the markdown table shows it: the mean, and how many values were not finite."""
        text = format_number(self.rows[method].get(metric, float("nan")), digits)
        bad = self.nonfinite.get(method, {}).get(metric, 0)
        return f"{text} ({bad} non-finite)" if bad else text

    def to_markdown(self, digits: int = 3) -> str:
        """A GitHub-flavoured markdown table with numbers rounded for reading."""
        head = ["method", "n"] + self.columns
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name in self.rows:
            cells = [name, format_number(self.counts[name]) if name in self.counts else "-"]
            cells += [self.cell(name, c, digits) for c in self.columns]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def to_csv(self, path: Optional[str] = None) -> str:
        """CSV text with full precision (written to ``path`` too when given)."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["method", "n"] + self.columns)
        for name, row in self.rows.items():
            writer.writerow([name, self.counts.get(name, "")] + [repr(float(row.get(c, float("nan")))) for c in self.columns])
        text = buf.getvalue()
        if path is not None:
            with open(path, "w", newline="") as fh:
                fh.write(text)
        return text

    def __str__(self) -> str:
        return self.to_markdown()


def compare(
    results: Mapping[str, CounterfactualResult],
    classifier: Optional[Callable[[Tensor], Tensor]] = None,
    *,
    subset: Literal["all", "valid"] = "all",
    **kwargs: Any,
) -> MetricsTable:
    """One :class:`MetricsTable` row per method: the mean of :func:`counterfactual_metrics`.

    Args:
        results: ``{method name: result}``; usually the same inputs and targets for every method.
        classifier: the audited classifier (for ``validity``).
        subset: ``"all"`` averages over every sample; ``"valid"`` only over samples the classifier
            (or, without one, the search) judges valid.
        **kwargs: passed to :func:`counterfactual_metrics` (``svm``, ``knn``, ``nll_fn``, ``train``, ...).

    Returns:
        A :class:`MetricsTable`.

    Example:
        >>> clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
        >>> r = xcf.AdversarialCounterfactual(clf).counterfactual(torch.rand(4, 1, 4, 4), target=1, steps=100)
        >>> table = compare({"adversarial": r}, clf)
        >>> table["adversarial"]["success"] == r.success_rate, list(table.rows)
        (True, ['adversarial'])
    """
    if subset not in ("all", "valid"):
        raise ValueError(f"subset must be 'all' or 'valid', got {subset!r}")
    if not results:
        raise ValueError("results is empty: pass {method name: CounterfactualResult}")
    metrics = {name: counterfactual_metrics(r, classifier, **kwargs) for name, r in results.items()}
    mask = None
    if subset == "valid":
        mask = {name: m.get("validity", m["success"]) > 0.5 for name, m in metrics.items()}
    return MetricsTable.from_metrics(metrics, mask=mask)
