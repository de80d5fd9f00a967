"""How realistic a generator is: the Fréchet distance between real and generated samples.

Counterfactuals are only as realistic as the generator they are made with.  With features
``φ(x) ∈ R^d`` and Gaussians ``N(μ_r, Σ_r)``, ``N(μ_g, Σ_g)`` fitted to the features of the real and
the generated samples, the Fréchet (2-Wasserstein) distance between them is (Dowson & Landau 1982;
the FID of Heusel et al. 2017 when ``φ`` is an Inception network)

    FD² = ||μ_r - μ_g||² + Tr(Σ_r + Σ_g - 2 (Σ_r^{1/2} Σ_g Σ_r^{1/2})^{1/2}).

The trace of the matrix square root is computed stably as the sum of the square roots of the
(clamped non-negative) eigenvalues of the symmetric PSD matrix ``Σ_r^{1/2} Σ_g Σ_r^{1/2}``, in float64;
mathematically the value is symmetric in the two sets.  Like FID, the reported value is ``FD²``.

The feature space is the user's: any callable ``x -> (N, d)`` (:func:`pca_features` gives one that no
trained model took part in: the principal components of the training data), or by default the
penultimate layer of the audited classifier (``classifier.features`` if it has one, else the input of its last
``nn.Linear``).  No network is ever downloaded.  The estimate is biased upward for few samples
(compare sets of equal size, and report the real-vs-real floor alongside).
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional

import torch
from torch import Tensor, nn

from xcf._validation import check_inputs, check_module_mode, preserved

__all__ = ["frechet_distance", "gaussian_frechet_distance", "inception_score", "judge_sets", "pca_features",
           "penultimate_features"]


def gaussian_frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """``FD²`` between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)`` (computed in float64).

    Args:
        mu1, mu2: ``(d,)`` means.
        sigma1, sigma2: ``(d, d)`` symmetric positive semi-definite covariances.

    Returns:
        ``||mu1 - mu2||² + Tr(sigma1 + sigma2 - 2 (sigma1^{1/2} sigma2 sigma1^{1/2})^{1/2})``.

    Example:
        >>> I = torch.eye(2)
        >>> round(gaussian_frechet_distance(torch.zeros(2), I, torch.ones(2), 4 * I), 6)
        4.0
    """
    d = mu1.shape[0]
    if mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            f"shape mismatch: means {tuple(mu1.shape)}, {tuple(mu2.shape)}; covariances "
            f"{tuple(sigma1.shape)}, {tuple(sigma2.shape)}"
        )
    mu1, mu2, s1, s2 = (t.detach().to(torch.float64) for t in (mu1, mu2, sigma1, sigma2))
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    w1, v1 = torch.linalg.eigh(s1)
    root1 = (v1 * w1.clamp_min(0).sqrt()) @ v1.T
    m = root1 @ s2 @ root1
    trace_root = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()
    value = (mu1 - mu2).pow(2).sum() + torch.trace(s1) + torch.trace(s2) - 2 * trace_root
    return float(value.clamp_min(0))


def penultimate_features(classifier: nn.Module) -> Callable[[Tensor], Tensor]:
    """A feature map ``x -> (N, d)``: ``classifier.features`` if present, else the input of its last ``nn.Linear``.

    Raises:
        TypeError: if the classifier has neither a ``features`` method nor an ``nn.Linear`` layer.
    """
    features = getattr(classifier, "features", None)
    if callable(features) and not isinstance(features, nn.Sequential | nn.ModuleList | nn.ModuleDict):
        return features
    linears = [m for m in classifier.modules() if isinstance(m, nn.Linear)] if isinstance(classifier, nn.Module) else []
    if not linears:
        raise TypeError(
            f"cannot find a feature layer in {type(classifier).__name__}: give it a features(x) method or an "
            "nn.Linear output layer, or pass features= (any callable x -> (N, d))"
        )
    last = linears[-1]

    def hooked(x: Tensor) -> Tensor:
        captured: list[Tensor] = []
        handle = last.register_forward_hook(lambda module, args, output: captured.append(args[0]))
        try:
            classifier(x)
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError(f"the last nn.Linear of {type(classifier).__name__} was not called in forward")
        return captured[-1]

    return hooked


def pca_features(train: Tensor, dims: int = 50) -> Callable[[Tensor], Tensor]:
    """A feature map independent of every trained model: projection onto the top ``dims`` principal
    components of ``train`` (flattened), for a Fréchet distance no classifier or generator took part in.

    Args:
        train: ``(N, ...)`` reference samples (the training data).
        dims: number of components (at most ``min(N, D)``).

    Returns:
        ``features(x) -> (M, dims)`` on ``x``'s device.

    Example:
        >>> phi = pca_features(torch.randn(100, 1, 4, 4), dims=5)
        >>> phi(torch.randn(3, 1, 4, 4)).shape
        torch.Size([3, 5])
    """
    check_inputs(train, "train", min_dim=2)
    flat = train.detach().flatten(1).double().cpu()
    dims = int(dims)
    if not 1 <= dims <= min(flat.shape):
        raise ValueError(f"dims must be in [1, {min(flat.shape)}] for {flat.shape[0]} samples of "
                         f"{flat.shape[1]} values")
    mean = flat.mean(0)
    _, _, vh = torch.linalg.svd(flat - mean, full_matrices=False)
    basis = vh[:dims].t().contiguous()                                     # (D, dims)
    # SVD signs are arbitrary; fix them so the features are the same on every machine
    basis = basis * torch.sign(basis[basis.abs().argmax(0), torch.arange(dims)])

    def features(x: Tensor) -> Tensor:
        f = (x.detach().flatten(1).double() - mean.to(x.device)) @ basis.to(x.device)
        return f.to(x.dtype if x.is_floating_point() else torch.float32)

    return features


def _features(fn: Callable[[Tensor], Tensor], x: Tensor, batch_size: int, name: str) -> Tensor:
    parts = []
    for i in range(0, x.shape[0], batch_size):
        f = fn(x[i:i + batch_size])
        if not isinstance(f, Tensor):
            raise TypeError(f"features must return a tensor, got {type(f).__name__}")
        if f.ndim < 1 or f.shape[0] != x[i:i + batch_size].shape[0]:
            raise ValueError(f"features must return one row per sample, got shape {tuple(f.shape)}")
        parts.append(f.detach().flatten(1).to(torch.float64))
    out = torch.cat(parts)
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"the features of the {name} samples contain NaN or Inf")
    return out


def frechet_distance(
    real: Tensor,
    fake: Tensor,
    features: Optional[Callable[[Tensor], Tensor]] = None,
    classifier: Optional[nn.Module] = None,
    batch_size: int = 500,
) -> float:
    """Fréchet distance ``FD²`` between Gaussians fitted to the features of ``real`` and ``fake``.

    Args:
        real: ``(N, ...)`` real samples.
        fake: ``(M, ...)`` generated samples, each of the shape of a real one.
        features: any callable ``x -> (N, d)`` (outputs with more dimensions are flattened); takes
            precedence over ``classifier``.
        classifier: used when ``features`` is not given: its penultimate layer (``classifier.features``
            if present, else the input of its last ``nn.Linear``).  It must be in eval mode if it has
            BatchNorm; it is not modified.
        batch_size: samples per feature-extraction call.

    Returns:
        ``FD²`` as a float (0 for identical sets).

    Example:
        >>> x = torch.randn(200, 3)
        >>> round(frechet_distance(x, x + 1.0, features=lambda t: t), 6)   # same covariance: ||shift||²
        3.0
    """
    for name, t in (("real", real), ("fake", fake)):
        check_inputs(t, name, min_dim=2)
        if t.shape[0] < 2:
            raise ValueError(f"{name} needs at least 2 samples to fit a covariance, got {t.shape[0]}")
    if real.shape[1:] != fake.shape[1:]:
        raise ValueError(
            f"real and fake samples differ in shape: {tuple(real.shape[1:])} vs {tuple(fake.shape[1:])}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if features is None:
        if classifier is None:
            raise ValueError("pass features= (a callable x -> (N, d)) or classifier= (its penultimate layer is used)")
        features = penultimate_features(classifier)
        guard = classifier
    else:
        if not callable(features):
            raise TypeError(f"features must be callable x -> (N, d), got {type(features).__name__}")
        guard = features
    with torch.no_grad(), preserved(guard):
        check_module_mode(guard, "feature extractor")
        fr = _features(features, real, batch_size, "real")
        ff = _features(features, fake, batch_size, "fake")
    if fr.shape[1] != ff.shape[1]:
        raise ValueError(f"features of real and fake differ in dimension: {fr.shape[1]} vs {ff.shape[1]}")
    return gaussian_frechet_distance(fr.mean(0), torch.cov(fr.T).reshape(fr.shape[1], -1),
                                     ff.mean(0), torch.cov(ff.T).reshape(ff.shape[1], -1))


def inception_score(
    classifier: Callable[[Tensor], Tensor],
    x: Tensor,
    splits: int = 10,
    *,
    output: str = "logits",
    batch_size: int = 500,
) -> tuple[float, float]:
    r"""Inception Score ``exp(E_x KL(p(y|x) || p(y)))`` of samples ``x`` under ``classifier`` (Salimans et al., 2016).

    High when each sample is confidently one class (sharp ``p(y|x)``) and the classes are balanced over
    the set (broad ``p(y)``): at most the number of classes, 1 for identical predictions.  The samples are
    split in a fixed random order (data sets often come sorted by class).  The
    classifier of the audit serves as the feature model (no download).  Blind spots: it ignores
    realism within a class and rewards adversarial images the classifier is sure about.

    Args:
        classifier: ``x -> (N, K)`` logits (or probabilities with ``output="probs"``), in eval mode.
        x: ``(N, ...)`` samples.
        splits: the set is cut into this many parts; the score is computed per part.
        output: ``"logits"`` or ``"probs"``.
        batch_size: samples per classifier call.

    Returns:
        ``(mean, standard deviation)`` over the splits.

    Example:
        >>> onehot = lambda v: torch.eye(4)[v.flatten(1)[:, 0].long() % 4] * 50   # logits of one sure class
        >>> x = torch.arange(400.).view(400, 1)
        >>> round(inception_score(onehot, x, splits=1)[0], 3), round(inception_score(lambda v: v * 0, x)[0], 3)
        (4.0, 1.0)
    """
    check_inputs(x, "x", min_dim=1)
    if isinstance(splits, bool) or not isinstance(splits, int) or not 1 <= splits <= x.shape[0]:
        raise ValueError(f"splits must be an int in [1, {x.shape[0]}] (the number of samples), got {splits!r}")
    if output not in ("logits", "probs"):
        raise ValueError(f"output must be 'logits' or 'probs', got {output!r}")
    guard = classifier if isinstance(classifier, nn.Module) else None
    with torch.no_grad(), preserved(guard):
        if guard is not None:
            check_module_mode(guard, "classifier")
        out = _features(classifier, x, batch_size, "classifier").double()
    if out.ndim != 2:
        raise ValueError(f"the classifier must return (N, classes), got shape {tuple(out.shape)}")
    log_p = torch.log_softmax(out, 1) if output == "logits" else out.clamp_min(1e-30).log()
    # data sets often come sorted by class, which would make every split one class: split a fixed permutation
    log_p = log_p[torch.randperm(log_p.shape[0], generator=torch.Generator().manual_seed(0))]
    scores = []
    for part in torch.tensor_split(log_p, splits):
        log_marginal = torch.logsumexp(part, 0) - torch.log(torch.tensor(float(part.shape[0]), dtype=part.dtype))
        kl = (part.exp() * (part - log_marginal)).sum(1).mean()
        scores.append(float(kl.exp()))
    t = torch.tensor(scores, dtype=torch.float64)
    return float(t.mean()), float(t.std(unbiased=False)) if len(scores) > 1 else 0.0


def judge_sets(sets: Mapping[str, Tensor], judges: Mapping[str, Callable[[Tensor], float]]) -> dict[str, dict[str, float]]:
    """``{set name: {judge: judge(images)}}``: set-level judges (a Fréchet distance, an Inception Score, a mean
    likelihood) of several image sets, e.g. each method's counterfactuals beside the real test images.

    Example:
        >>> judge_sets({"a": torch.ones(2, 3)}, {"mean": lambda v: float(v.mean())})
        {'a': {'mean': 1.0}}
    """
    return {name: {judge: float(fn(images)) for judge, fn in judges.items()} for name, images in sets.items()} \
        if judges else {}
