"""Validation of counterfactuals: independent validators and the metrics of an audit.

A counterfactual ``x'`` of an input ``x`` toward class ``k`` is judged by models that are
independent of the audited classifier ``f`` (Dombrowski et al.), fitted on the flattened, standardised
training data ``(x_i, y_i)``:

* **SVM transfer** -- an RBF support-vector machine ``s`` assigns the target: ``s(x') = k``.
  An adversarial example exploits ``f``'s particular weaknesses and rarely fools ``s`` too.
* **k-NN agreement** -- the share of the ``k`` nearest training examples of ``x'`` (Euclidean, in the
  standardised space) that carry label ``k``: ``(1/k) sum_{j in N_k(x')} [y_j = k]``.  A counterfactual
  near real examples of the target class is *supported* by the data.

and by the metrics :func:`counterfactual_metrics` computes per sample (``delta = x' - x`` with ``D``
entries):

* ``success``: the search reached its objective (``result.success``);
* ``validity``: the audited classifier predicts the target, ``argmax f(x') = k`` (recomputed);
* ``l1 = sum |delta|``, ``l2 = sqrt(sum delta^2)`` (proximity);
* ``sparsity``: share of entries with ``|delta| > tol`` (lower is sparser);
* ``realism_bpd``: ``-log p(x') / (D ln 2)``, bits per dimension under a density model (a flow), or
  ``realism_nn_l2``: ``min_{i: y_i = k} ||x' - x_i||_2``, the distance to the nearest training example
  of the target class when no density is given;
* ``on_manifold``: share of ``||delta||^2`` inside a tangent space of the data manifold (from a
  user-supplied callable, e.g. built on :mod:`xcf.geometry`);
* ``reconstruction_error``: RMS of ``decode(encode(x)) - x`` (non-zero for approximate charts);
* ``time_ms``: wall time per counterfactual, in milliseconds.

:func:`compare` averages them per method into a :class:`MetricsTable`.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Optional

import numpy as np
import torch
from sklearn.exceptions import NotFittedError
from sklearn.neighbors import NearestNeighbors
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from torch import Tensor

from xcf._validation import check_module_mode, preserved
from xcf._io import format_number
from xcf.search import CounterfactualResult

__all__ = [
    "SVMValidator",
    "KNNValidator",
    "nearest_distance",
    "counterfactual_metrics",
    "MetricsTable",
    "compare",
    "METRIC_COLUMNS",
]

#: column order of a :class:`MetricsTable` (columns that were not computed are left out)
METRIC_COLUMNS: tuple[str, ...] = (
    "success",
    "validity",
    "svm_transfer",
    "knn_agreement",
    "l1",
    "l2",
    "sparsity",
    "realism_bpd",
    "realism_nn_l2",
    "on_manifold",
    "reconstruction_error",
    "time_ms",
)


# --------------------------------------------------------------------------------------------- input
def _as_features(x: Any, name: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """Flatten ``(N, ...)`` data to a float ``(N, D)`` numpy array; return it and the sample shape."""
    if isinstance(x, Tensor):
        if not (x.is_floating_point() or x.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)):
            raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
        arr = x.detach().cpu().numpy()
    elif isinstance(x, np.ndarray):
        arr = x
    else:
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if arr.ndim < 2:
        raise ValueError(f"{name} must have shape (N, ...) with at least 2 dimensions, got {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    flat = arr.reshape(arr.shape[0], -1).astype(np.float64, copy=False)
    if not np.isfinite(flat).all():
        raise ValueError(f"{name} contain NaN or Inf values")
    return flat, tuple(arr.shape[1:])


def _as_labels(y: Any, n: int, name: str) -> np.ndarray:
    """Integer labels as a ``(n,)`` numpy array (an int is broadcast)."""
    if isinstance(y, bool):
        raise ValueError(f"{name} must be class indices, got the bool {y!r}")
    if isinstance(y, (int, np.integer)):
        return np.full(n, int(y), dtype=np.int64)
    if isinstance(y, Tensor):
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise ValueError(f"{name} must hold integer class indices, got dtype {y.dtype}")
        arr = y.detach().cpu().numpy()
    else:
        arr = np.asarray(y)
        if arr.dtype.kind not in "iu":
            raise ValueError(f"{name} must hold integer class indices, got {arr.dtype}")
    arr = arr.reshape(-1).astype(np.int64)
    if arr.size == 1 and n != 1:
        arr = np.full(n, int(arr[0]), dtype=np.int64)
    if arr.size != n:
        raise ValueError(f"{name} has {arr.size} entries but there are {n} samples")
    return arr


def _device_of(x: Any) -> torch.device:
    return x.device if isinstance(x, Tensor) else torch.device("cpu")


def _subsample(n: int, max_samples: Optional[int], random_state: int) -> Optional[np.ndarray]:
    if max_samples is None or n <= max_samples:
        return None
    rng = np.random.default_rng(random_state)
    return np.sort(rng.choice(n, size=int(max_samples), replace=False))


class _Validator:
    """Shared fitting state and checks of the validators."""

    _kind = "validator"

    def __init__(self, standardize: bool, max_samples: Optional[int], random_state: int):
        if max_samples is not None and int(max_samples) < 2:
            raise ValueError(f"max_samples must be at least 2 or None, got {max_samples}")
        self.standardize = bool(standardize)
        self.max_samples = max_samples
        self.random_state = int(random_state)

    # fitted attributes: classes_, feature_shape_, n_features_in_
    def _fit_data(self, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        flat, shape = _as_features(x, "training data x")
        if isinstance(y, (int, np.integer)):
            raise ValueError("training labels y must give one label per sample, got a single int")
        labels = _as_labels(y, flat.shape[0], "training labels y")
        if (labels < 0).any():
            raise ValueError(f"training labels must be class indices >= 0, got {sorted(set(labels[labels < 0].tolist()))}")
        index = _subsample(flat.shape[0], self.max_samples, self.random_state)
        if index is not None:
            flat, labels = flat[index], labels[index]
        classes = np.unique(labels)
        if classes.size < 2:
            raise ValueError(f"the training labels contain a single class ({classes.tolist()}); need at least 2")
        self.classes_ = classes
        self.feature_shape_ = shape
        self.n_features_in_ = flat.shape[1]
        return flat, labels

    def _check_fitted(self) -> None:
        if not hasattr(self, "classes_"):
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet; call fit(train_x, train_y) first"
            )

    def _features(self, x: Any, name: str = "x") -> np.ndarray:
        self._check_fitted()
        flat, shape = _as_features(x, name)
        if flat.shape[1] != self.n_features_in_:
            raise ValueError(
                f"{name} has sample shape {shape} ({flat.shape[1]} features) but the {type(self).__name__} "
                f"was fitted on sample shape {self.feature_shape_} ({self.n_features_in_} features)"
            )
        return flat

    def _targets(self, target: Any, n: int) -> np.ndarray:
        t = _as_labels(target, n, "target")
        unknown = np.setdiff1d(np.unique(t), self.classes_)
        if unknown.size:
            raise ValueError(
                f"target {unknown.tolist()} is not among the classes seen in fit ({self.classes_.tolist()})"
            )
        return t

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({params})"

    def _params(self) -> dict[str, Any]:  # pragma: no cover - overridden
        return {}


class SVMValidator(_Validator):
    """A support-vector machine fitted on the training data, independent of the audited classifier.

    ``Pipeline(StandardScaler(), SVC(kernel, C, gamma))`` on flattened inputs.  A counterfactual
    *transfers* when the SVM also assigns it the target class.

    Args:
        kernel: SVC kernel (default ``"rbf"``).
        C: regularisation strength of the SVC.
        gamma: kernel coefficient (``"scale"``, ``"auto"`` or a float).
        standardize: standardise features before the SVC (default ``True``).
        max_samples: fit on at most this many training samples (random subset), ``None`` for all;
            kernel SVMs scale quadratically, so subsample large data sets.
        random_state: seed of the subsample.
        **svc_kwargs: further :class:`sklearn.svm.SVC` arguments.

    Example:
        >>> from sklearn.datasets import load_digits
        >>> d = load_digits()
        >>> x, y = torch.tensor(d.images / 16.0).float().unsqueeze(1), torch.tensor(d.target)
        >>> svm = SVMValidator().fit(x[:1500], y[:1500])
        >>> bool((svm.predict(x[1500:]) == y[1500:]).float().mean() > 0.9)
        True
        >>> svm.transfer(x[:3], y[:3]).tolist()
        [True, True, True]
    """

    _kind = "svm"

    def __init__(
        self,
        kernel: str = "rbf",
        C: float = 10.0,
        gamma: str | float = "scale",
        *,
        standardize: bool = True,
        max_samples: Optional[int] = None,
        random_state: int = 0,
        **svc_kwargs: Any,
    ):
        super().__init__(standardize, max_samples, random_state)
        if not float(C) > 0:
            raise ValueError(f"C must be > 0, got {C}")
        self.kernel = kernel
        self.C = float(C)
        self.gamma = gamma
        self.svc_kwargs = svc_kwargs

    def _params(self) -> dict[str, Any]:
        return {"kernel": self.kernel, "C": self.C, "gamma": self.gamma, "standardize": self.standardize,
                "max_samples": self.max_samples, **self.svc_kwargs}

    def fit(self, x: Any, y: Any) -> "SVMValidator":
        """Fit on training inputs ``x`` (``(N, ...)``) and integer labels ``y`` (``(N,)``); returns self."""
        flat, labels = self._fit_data(x, y)
        svc = SVC(kernel=self.kernel, C=self.C, gamma=self.gamma, random_state=self.random_state, **self.svc_kwargs)
        self.pipeline_: Pipeline = make_pipeline(StandardScaler(), svc) if self.standardize else make_pipeline(svc)
        self.pipeline_.fit(flat, labels)
        return self

    def predict(self, x: Any) -> Tensor:
        """The SVM's class for each sample, a long tensor on ``x``'s device."""
        flat = self._features(x)
        return torch.as_tensor(self.pipeline_.predict(flat), dtype=torch.long, device=_device_of(x))

    def transfer(self, x_cf: Any, target: Any) -> Tensor:
        """Whether the SVM assigns each counterfactual its target: a bool tensor ``(N,)``.

        Args:
            x_cf: counterfactuals ``(N, ...)`` with the training data's sample shape.
            target: per-sample target class (int, sequence or tensor), one of the fitted classes.
        """
        flat = self._features(x_cf, "x_cf")
        t = self._targets(target, flat.shape[0])
        pred = self.pipeline_.predict(flat)
        return torch.as_tensor(pred == t, dtype=torch.bool, device=_device_of(x_cf))


class KNNValidator(_Validator):
    """k nearest training neighbours: does the data around a counterfactual carry the target label?

    ``agreement(x', k) = (1/k) sum_{j in N_k(x')} [y_j = k]`` with neighbours ``N_k`` in the
    standardised, flattened input space (``StandardScaler`` then Euclidean
    :class:`sklearn.neighbors.NearestNeighbors`).

    Args:
        k: number of neighbours (default 10).
        standardize: standardise features first (default ``True``).
        max_samples: keep at most this many training samples (random subset), ``None`` for all.
        random_state: seed of the subsample.
        **nn_kwargs: further :class:`sklearn.neighbors.NearestNeighbors` arguments.

    Example:
        >>> from sklearn.datasets import load_digits
        >>> d = load_digits()
        >>> x, y = torch.tensor(d.images / 16.0).float().unsqueeze(1), torch.tensor(d.target)
        >>> knn = KNNValidator(k=10).fit(x[:1500], y[:1500])
        >>> knn.agreement(x[1500:1503], y[1500:1503]).shape
        torch.Size([3])
    """

    _kind = "knn"

    def __init__(
        self,
        k: int = 10,
        *,
        standardize: bool = True,
        max_samples: Optional[int] = None,
        random_state: int = 0,
        **nn_kwargs: Any,
    ):
        super().__init__(standardize, max_samples, random_state)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        self.k = int(k)
        self.nn_kwargs = nn_kwargs

    def _params(self) -> dict[str, Any]:
        return {"k": self.k, "standardize": self.standardize, "max_samples": self.max_samples, **self.nn_kwargs}

    def fit(self, x: Any, y: Any) -> "KNNValidator":
        """Store the training inputs ``x`` (``(N, ...)``) and labels ``y``; returns self."""
        flat, labels = self._fit_data(x, y)
        if flat.shape[0] < self.k:
            raise ValueError(f"k={self.k} neighbours requested but only {flat.shape[0]} training samples")
        self.scaler_: Optional[StandardScaler] = StandardScaler().fit(flat) if self.standardize else None
        self.nn_ = NearestNeighbors(n_neighbors=self.k, **self.nn_kwargs).fit(self._scale(flat))
        self.train_y_ = labels
        #: the (unscaled, flattened) training data, used by the realism fallback
        self.train_x_ = flat
        return self

    def _scale(self, flat: np.ndarray) -> np.ndarray:
        return flat if self.scaler_ is None else self.scaler_.transform(flat)

    def kneighbors(self, x: Any) -> tuple[Tensor, Tensor]:
        """Distances (standardised space) and indices of the ``k`` nearest training samples, ``(N, k)``."""
        flat = self._features(x)
        dist, idx = self.nn_.kneighbors(self._scale(flat), n_neighbors=self.k)
        dev = _device_of(x)
        return torch.as_tensor(dist, dtype=torch.float32, device=dev), torch.as_tensor(idx, device=dev)

    def neighbour_labels(self, x: Any) -> Tensor:
        """Labels of the ``k`` nearest training samples, a long tensor ``(N, k)``."""
        flat = self._features(x)
        idx = self.nn_.kneighbors(self._scale(flat), n_neighbors=self.k, return_distance=False)
        return torch.as_tensor(self.train_y_[idx], dtype=torch.long, device=_device_of(x))

    def predict(self, x: Any) -> Tensor:
        """Majority label of the ``k`` nearest training samples (ties: the smallest label)."""
        labels = self.neighbour_labels(x)
        counts = torch.zeros(labels.shape[0], int(self.classes_.max()) + 1, device=labels.device)
        counts.scatter_add_(1, labels, torch.ones_like(labels, dtype=counts.dtype))
        return counts.argmax(dim=1)

    def agreement(self, x_cf: Any, target: Any) -> Tensor:
        """Share of the ``k`` nearest training samples labelled with the target, a float tensor ``(N,)``.

        Args:
            x_cf: counterfactuals ``(N, ...)`` with the training data's sample shape.
            target: per-sample target class (int, sequence or tensor), one of the fitted classes.
        """
        flat = self._features(x_cf, "x_cf")
        t = self._targets(target, flat.shape[0])
        idx = self.nn_.kneighbors(self._scale(flat), n_neighbors=self.k, return_distance=False)
        share = (self.train_y_[idx] == t[:, None]).mean(axis=1)
        dtype = x_cf.dtype if isinstance(x_cf, Tensor) and x_cf.is_floating_point() else torch.float32
        return torch.as_tensor(share, dtype=dtype, device=_device_of(x_cf))


# ------------------------------------------------------------------------------------------ realism
def nearest_distance(
    x: Tensor,
    train_x: Any,
    train_y: Any,
    target: Any,
    *,
    chunk_size: int = 4096,
) -> Tensor:
    """Euclidean distance from each ``x[i]`` to the nearest training example of class ``target[i]``.

    ``d_i = min_{j: y_j = target_i} ||x_i - train_x_j||_2`` on flattened inputs (no standardisation:
    in the input's own units).  The realism measure used when no density model is available.

    Args:
        x: ``(N, ...)`` samples (counterfactuals).
        train_x: ``(M, ...)`` training inputs with the same number of features.
        train_y: ``(M,)`` integer labels.
        target: per-sample class (int, sequence or tensor); every target must occur in ``train_y``.
        chunk_size: training examples compared at a time (bounds memory).

    Returns:
        A ``(N,)`` tensor on ``x``'s device and dtype.

    Example:
        >>> train = torch.tensor([[0.0, 0.0], [3.0, 4.0]]); labels = torch.tensor([0, 1])
        >>> nearest_distance(torch.zeros(1, 2), train, labels, 1).tolist()
        [5.0]
    """
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError("x must be a floating-point torch.Tensor")
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"x must have shape (N, ...) with N >= 1, got {tuple(x.shape)}")
    xf = x.detach().reshape(x.shape[0], -1)
    if isinstance(train_x, np.ndarray):
        train_x = torch.from_numpy(train_x)
    if not isinstance(train_x, Tensor):
        raise TypeError(f"train_x must be a tensor or numpy array, got {type(train_x).__name__}")
    if train_x.ndim < 2:
        raise ValueError(f"train_x must have shape (M, ...), got {tuple(train_x.shape)}")
    tf = train_x.detach().reshape(train_x.shape[0], -1).to(device=x.device, dtype=x.dtype)
    if tf.shape[1] != xf.shape[1]:
        raise ValueError(
            f"x has {xf.shape[1]} features per sample (shape {tuple(x.shape[1:])}) but train_x has "
            f"{tf.shape[1]} (shape {tuple(train_x.shape[1:])})"
        )
    ty = torch.as_tensor(_as_labels(train_y, tf.shape[0], "train_y"), device=x.device)
    t = torch.as_tensor(_as_labels(target, xf.shape[0], "target"), device=x.device)
    present = set(torch.unique(ty).tolist())
    missing = sorted(set(torch.unique(t).tolist()) - present)
    if missing:
        raise ValueError(f"target {missing} does not occur in train_y (classes {sorted(present)})")
    out = torch.empty(xf.shape[0], dtype=x.dtype, device=x.device)
    for c in torch.unique(t).tolist():
        rows = (t == c).nonzero().squeeze(1)
        pool = tf[ty == c]
        best = torch.full((rows.numel(),), float("inf"), dtype=x.dtype, device=x.device)
        for start in range(0, pool.shape[0], chunk_size):
            d = torch.cdist(xf[rows], pool[start:start + chunk_size])
            best = torch.minimum(best, d.min(dim=1).values)
        out[rows] = best
    return out


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
    train: Optional[tuple[Any, Any]] = None,
    on_manifold_fn: Optional[Callable[[CounterfactualResult], Tensor]] = None,
    tol: float = 1e-2,
    batch_size: int = 256,
) -> dict[str, Tensor]:
    """Per-sample metrics of a counterfactual result (see the module docstring for definitions).

    Only the metrics whose ingredients are given are computed: ``validity`` needs ``classifier``,
    ``svm_transfer`` needs ``svm``, ``knn_agreement`` needs ``knn``, ``realism_bpd`` needs ``nll_fn``
    (or ``flow``), ``realism_nn_l2`` needs ``train`` (or a fitted ``knn``, whose training data is
    used) and is computed only when no density is given, ``on_manifold`` needs ``on_manifold_fn``.

    Args:
        result: a :class:`~xcf.search.CounterfactualResult` with class targets.
        classifier: the audited classifier (logits, probabilities or log-probabilities: only the argmax
            is used); called in chunks under ``torch.no_grad``, its modules are left as found.
        svm: a fitted :class:`SVMValidator`.
        knn: a fitted :class:`KNNValidator`.
        nll_fn: ``nll_fn(x) -> (N,)`` negative log-likelihood in nats of each sample under a density
            model; reported as bits per dimension ``nll / (D ln 2)``.
        flow: a density model with ``log_prob(x) -> (N,)`` (e.g. an :class:`nflows.flows.Flow`), used as
            ``nll_fn = -flow.log_prob``; pass ``nll_fn`` instead if the flow needs preprocessing.
        train: ``(train_x, train_y)`` for the nearest-neighbour realism fallback.
        on_manifold_fn: ``on_manifold_fn(result) -> (N,)`` share of ``||x' - x||^2`` in the tangent
            space (e.g. ``xcf.geometry.on_manifold_fraction`` on the generator's tangent basis).
        tol: an entry counts as changed for ``sparsity`` when ``|x' - x| > tol`` (input units).
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
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if nll_fn is not None and flow is not None:
        raise ValueError("give either nll_fn or flow, not both")
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
    out["sparsity"] = (delta.abs() > tol).to(dtype).mean(dim=1) if delta.shape[1] else delta.new_zeros(n)
    if flow is not None:
        if not callable(getattr(flow, "log_prob", None)):
            raise TypeError("flow must have a log_prob(x) method; pass nll_fn for other density models")
        nll_fn = lambda z: -flow.log_prob(z)  # noqa: E731
    if nll_fn is not None:
        with torch.no_grad(), preserved(flow if flow is not None else nll_fn):
            nll = _batched(nll_fn, xc, batch_size, "nll_fn").to(dtype).reshape(-1)
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
    out["time_ms"] = torch.full((n,), 1000.0 * result.time_per_sample, dtype=dtype, device=x.device)
    return {k: out[k] for k in METRIC_COLUMNS if k in out}


# ------------------------------------------------------------------------------------------- table
@dataclass
class MetricsTable:
    """Mean metrics per method: rows are methods, columns are metrics.

    Attributes:
        rows: ``{method: {metric: mean over samples}}`` (NaNs ignored in the mean).
        counts: ``{method: number of samples averaged}``.
        columns: metric order (union over rows, in :data:`METRIC_COLUMNS` order).

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

    def __post_init__(self) -> None:
        if not self.columns:
            seen = {c for r in self.rows.values() for c in r}
            self.columns = [c for c in METRIC_COLUMNS if c in seen] + sorted(seen - set(METRIC_COLUMNS))

    @classmethod
    def from_metrics(
        cls, metrics: Mapping[str, Mapping[str, Tensor]], *, mask: Optional[Mapping[str, Tensor]] = None
    ) -> "MetricsTable":
        """Average per-sample metrics (``{method: {metric: (N,) tensor}}``), optionally over a mask."""
        rows, counts = {}, {}
        for name, per_sample in metrics.items():
            sel = None if mask is None else mask[name].bool()
            row = {}
            n = 0
            for metric, values in per_sample.items():
                v = values.detach().double().reshape(-1)
                if sel is not None:
                    v = v[sel.to(v.device)]
                n = max(n, v.numel())
                row[metric] = float(v.nanmean()) if v.numel() else float("nan")
            rows[name], counts[name] = row, n
        return cls(rows, counts)

    def __getitem__(self, method: str) -> dict[str, float]:
        return self.rows[method]

    def to_dict(self) -> dict[str, dict[str, float]]:
        """``{method: {"n": count, metric: mean, ...}}`` (plain floats, JSON-ready; NaN for missing)."""
        out = {}
        for name, row in self.rows.items():
            d: dict[str, float] = {"n": self.counts[name]} if name in self.counts else {}
            d.update({c: row.get(c, float("nan")) for c in self.columns})
            out[name] = d
        return out

    def to_markdown(self, digits: int = 3) -> str:
        """A GitHub-flavoured markdown table with numbers rounded for reading."""
        head = ["method", "n"] + self.columns
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, row in self.rows.items():
            cells = [name, format_number(self.counts[name]) if name in self.counts else "-"]
            cells += [format_number(row.get(c, float("nan")), digits) for c in self.columns]
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
        >>> table = compare({"adversarial": r_pix, "diffeomorphic": r_flow}, clf, svm=svm, knn=knn)  # doctest: +SKIP
        >>> print(table.to_markdown())                                                             # doctest: +SKIP
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
