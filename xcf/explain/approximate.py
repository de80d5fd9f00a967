"""Approximate counterfactuals: ascent in the latent space of a GAN generator or a VAE decoder.

A generator ``g: z -> x`` that is not bijective has no exact inverse, so the search starts from an
inversion (Dombrowski et al., section on approximate counterfactuals):

    z0 = argmin_z ||g(z) - x||²   (batched Adam, R restarts, optional encoder; see xcf.charts.generator)
    z* = argmin_z -log softmax(f(g(z)))[k]   from z0, stopping once p_k(g(z)) >= confidence
    x' = g(z*)

As with a flow, an ascent step in ``z`` moves ``x`` along ``J Jᵀ ∇ₓ f_k`` (``J = ∂g/∂z``), i.e.
within the generator's image, so ``x'`` is as realistic as the generator.  Unlike a flow, ``g(z0)``
differs from ``x``: the per-sample error ``RMS(g(z0) - x)`` is ``result.reconstruction_error``, and
samples above ``recon_threshold`` are flagged in ``result.info["poor_reconstruction"]`` (and warned
about), because their explanation describes the reconstruction, not the input.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from torch import Tensor

from xcf._typing import LatentShape, OutputKind
from xcf.charts.generator import GeneratorChart
from xcf.explain.base import CounterfactualExplainer

__all__ = ["ApproximateCounterfactual"]


class ApproximateCounterfactual(CounterfactualExplainer):
    """Counterfactuals by gradient ascent in a generator's latent space, from an inverted start.

    Same interface and result as :class:`~xcf.explain.DiffeomorphicCounterfactual`:
    ``attribute`` returns ``x' - x`` (Captum convention) and ``counterfactual`` the full
    :class:`~xcf.result.CounterfactualResult`, with ``method == "approximate"``,
    ``reconstruction_error`` the RMS inversion error and ``info`` holding ``"poor_reconstruction"``
    (bool per sample) and ``"inversion_steps"``.  Note that ``x' - x`` includes the reconstruction
    error; ``result.counterfactual - result.reconstruction`` is the change the search made.

    Args:
        forward_func: the classifier ``f`` (returns logits unless ``output`` says otherwise).
        generator: the user's generator ``z -> x`` (a GAN generator, a VAE's decoder, any module);
            must be in eval mode if it has BatchNorm.  It is not modified.
        latent_shape: the shape of one latent, e.g. ``(16,)``.
        encoder: optional ``x -> z`` (or ``x -> (mu, logvar)``, e.g. ``vae.encode``, or the ``encoder`` an xcf
            GAN carries) that gives the inversion its first start.
        restarts: inversion starts per sample (default: 1 with an encoder, else 8 random draws).
        recon_threshold: RMS error above which a sample is flagged as poorly reconstructed (see
            :class:`~xcf.charts.generator.GeneratorChart`; 0.15 suits images in ``[0, 1]``).
        output: ``"logits"`` (default), ``"probs"`` or ``"log_probs"``.
        inversion_steps, inversion_lr, inversion_tol: inversion budget, step size and early-stopping
            tolerance (RMS).
        tol: deprecated name of ``inversion_tol``.
        seed: seed of the random inversion starts (results are deterministic given it).
        lr: the L2 step size of the ascent in the latent (default ``sqrt(d / 8)``, see
            :class:`~xcf.charts.generator.GeneratorChart`).
        confidence: the default stopping confidence (default 0.99; ``docs/approximate.md`` uses 0.999999 on MNIST).

    Example:
        >>> clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
        >>> G = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Sigmoid(), torch.nn.Unflatten(1, (1, 4, 4))).eval()
        >>> x = G(torch.randn(4, 3)).detach()                      # images the generator can make
        >>> result = ApproximateCounterfactual(clf, G, (3,), restarts=2).counterfactual(x, target=2)
        >>> result.method, bool(result.reconstruction_error.max() < 0.05), tuple(result.counterfactual.shape)
        ('approximate', True, (4, 1, 4, 4))
    """

    method = "approximate"

    def __init__(
        self,
        forward_func: Callable[..., Tensor],
        generator: Callable[[Tensor], Tensor],
        latent_shape: LatentShape,
        *,
        encoder: Optional[Callable[[Tensor], Any]] = None,
        restarts: Optional[int] = None,
        recon_threshold: float = 0.15,
        output: OutputKind = "logits",
        inversion_steps: int = 300,
        inversion_lr: float = 5e-2,
        inversion_tol: float = 1e-3,
        seed: int = 0,
        tol: Optional[float] = None,
        lr: Optional[float] = None,
        confidence: Optional[float] = None,
    ):
        chart = GeneratorChart(
            generator, latent_shape, encoder=encoder, restarts=restarts, recon_threshold=recon_threshold,
            inversion_steps=inversion_steps, inversion_lr=inversion_lr, inversion_tol=inversion_tol, seed=seed,
            tol=tol, lr=lr, confidence=confidence,
        )
        super().__init__(forward_func, chart, output=output)
        self.generator = generator
        self.encoder = encoder
