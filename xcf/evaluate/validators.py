"""Validation of counterfactuals: independent validators and the metrics of an audit.

A counterfactual ``x'`` of an input ``x`` toward class ``k`` is judged by models that are
independent of the audited classifier ``f`` (Dombrowski et al.), fitted on the flattened training data
``(x_i, y_i)`` in raw pixel units (the paper's setting; standardising the features cost MNIST's SVM and
k-NN about 4 points of test accuracy, so it is an option, ``standardize=True``, not the default):

* **SVM transfer** -- an RBF support-vector machine ``s`` assigns the target: ``s(x') = k``.
  An adversarial example exploits ``f``'s particular weaknesses and rarely fools ``s`` too.
* **k-NN agreement** -- the share of the ``k`` nearest training examples of ``x'`` (Euclidean) that
  carry label ``k``: ``(1/k) sum_{j in N_k(x')} [y_j = k]``.  A counterfactual near real examples of
  the target class is *supported* by the data.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from sklearn.exceptions import NotFittedError
from sklearn.neighbors import NearestNeighbors
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from torch import Tensor

__all__ = ["KNNValidator", "SVMValidator", "nearest_distance"]


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
        # the fitted sample shape, or the same features flattened; never another layout (e.g. transposed)
        if flat.shape[1] != self.n_features_in_ or tuple(shape) not in (tuple(self.feature_shape_),
                                                                        (self.n_features_in_,)):
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

    ``SVC(kernel, C, gamma)`` on flattened inputs (``StandardScaler`` first with ``standardize=True``).
    A counterfactual *transfers* when the SVM also assigns it the target class.

    Args:
        kernel: SVC kernel (default ``"rbf"``).
        C: regularisation strength of the SVC.
        gamma: kernel coefficient (``"scale"``, ``"auto"`` or a float).
        standardize: standardise features before the SVC (default ``False``: raw pixels).
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
        standardize: bool = False,
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

    ``agreement(x', k) = (1/k) sum_{j in N_k(x')} [y_j = k]`` with neighbours ``N_k`` in the flattened
    input space (Euclidean :class:`sklearn.neighbors.NearestNeighbors`, after a ``StandardScaler`` with
    ``standardize=True``).

    Args:
        k: number of neighbours (default 10).
        standardize: standardise features first (default ``False``: raw pixels).
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
        standardize: bool = False,
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
