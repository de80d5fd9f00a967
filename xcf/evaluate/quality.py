"""How realistic a generator is: the Fréchet distance between real and generated samples.

Counterfactuals are only as realistic as the generator they are made with.  With features
``φ(x) ∈ R^d`` and Gaussians ``N(μ_r, Σ_r)``, ``N(μ_g, Σ_g)`` fitted to the features of the real and
the generated samples, the Fréchet (2-Wasserstein) distance between them is (Dowson & Landau 1982;
the FID of Heusel et al. 2017 when ``φ`` is an Inception network)

    FD² = ||μ_r - μ_g||² + Tr(Σ_r + Σ_g - 2 (Σ_r^{1/2} Σ_g Σ_r^{1/2})^{1/2}).

The trace of the matrix square root is computed stably as the sum of the square roots of the
(clamped non-negative) eigenvalues of the symmetric PSD matrix ``Σ_r^{1/2} Σ_g Σ_r^{1/2}``, in float64;
mathematically the value is symmetric in the two sets.  Like FID, the reported value is ``FD²``.

The feature space is the user's: any callable ``x -> (N, d)``, or by default the penultimate layer
of the audited classifier (``classifier.features`` if it has one, else the input of its last
``nn.Linear``).  No network is ever downloaded.  The estimate is biased upward for few samples
(compare sets of equal size, and report the real-vs-real floor alongside).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn

from xcf._validation import check_inputs, check_module_mode, preserved

__all__ = ["frechet_distance", "gaussian_frechet_distance", "penultimate_features"]


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
