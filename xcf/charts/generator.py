"""A generator's latent space: an approximate chart, encoded by inversion (:func:`xcf.charts.inversion.invert`)."""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from xcf._validation import modules_of
from xcf.charts.base import Chart, Coordinates
from xcf.charts.inversion import InversionResult, LatentShape, _latent_shape, invert

__all__ = ["GeneratorChart"]


class GeneratorChart(Chart):
    """The latent space of a generator ``g: z -> x``; encode = :func:`invert`, decode = ``g(z)``.

    Args:
        generator: the user's GAN generator or VAE decoder (eval mode if it has BatchNorm).
        latent_shape: the shape of one latent.
        encoder: optional ``x -> z`` (or ``(mu, logvar)``) to start the inversion from.
        restarts: inversion starts per sample (default: 1 with an encoder, whose estimate is the start, else 8
            random draws).
        recon_threshold: RMS reconstruction error above which a sample is flagged as poorly
            reconstructed (``info["poor_reconstruction"]``) and a warning is emitted.  The default
            0.15 (inputs in ``[0, 1]``) is about the RMS distance from a digits test image to the
            nearest training image of a *different* class (min 0.154, 10th percentile 0.196): a
            reconstruction that far off may show another digit.
        inversion_steps, inversion_lr, inversion_tol, seed: passed to :func:`invert` (``steps``,
            ``lr``, ``tol``, ``seed``).
        tol: deprecated name of ``inversion_tol``.
        lr: the L2 step size of the ascent in the latent (``None``: ``sqrt(d / 8)`` for ``d`` latent dimensions,
            2.0 for MNIST's 32).
        confidence: the default stopping confidence (``None``: 0.99).

    The ascent takes normalised gradient steps (``update = "l2"``), which keep the direction of the latent
    gradient (an ``x``-step along ``J Jᵀ ∇ₓ``, as in a flow), and every iterate is projected into the ball of
    radius ``max(||z0||, sqrt(d) + 3/sqrt(2))`` around the origin: no farther out than the start or the shell
    where the prior ``N(0, I)`` puts its mass, so the generator is never asked for latents it was not trained on.

    :meth:`start` runs the inversion and returns, with the start, the inversion's steps per sample
    (``info["inversion_steps"]``); nothing is kept between calls.
    """

    name = "generator"
    # Chosen on real MNIST (docs/approximate.md: 200 test digits toward (y + 3) mod 10, shipped GAN and VAE,
    # validators on raw pixels): Adam with step 2e-2 (the earlier default, tuned on the 8x8 digits) stops
    # near the decision boundary with SVM transfer 0.52 / 0.37 (GAN / VAE) at confidence 0.99; L2 steps of
    # 2.0 with the ball projection reach 0.93 / 0.91 at confidence 0.999999 (10-NN agreement 0.82 / 0.66).
    lr = 2.0
    lr_per_sqrt_dim = 1.0 / math.sqrt(8.0)
    steps = 1000
    update = "l2"

    def __init__(
        self,
        generator: Callable[[Tensor], Tensor],
        latent_shape: LatentShape,
        encoder: Optional[Callable[[Tensor], Any]] = None,
        restarts: Optional[int] = None,
        recon_threshold: float = 0.15,
        inversion_steps: int = 300,
        inversion_lr: float = 5e-2,
        inversion_tol: float = 1e-3,
        seed: int = 0,
        *,
        tol: Optional[float] = None,
        lr: Optional[float] = None,
        confidence: Optional[float] = None,
    ):
        if tol is not None:
            warnings.warn("GeneratorChart(tol=...) is renamed inversion_tol and will be removed in xcf 0.3",
                          DeprecationWarning, stacklevel=2)
            inversion_tol = tol
        if not callable(generator):
            raise TypeError(f"generator must be a callable z -> x (e.g. an nn.Module), got {type(generator).__name__}")
        if encoder is not None and not callable(encoder):
            raise TypeError(f"encoder must be a callable x -> z, got {type(encoder).__name__}")
        if restarts is None:
            restarts = 1 if encoder is not None else 8
        if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
            raise ValueError(f"restarts must be an int >= 1, got {restarts!r}")
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0):
            raise ValueError(f"lr must be a number > 0, got {lr!r}")
        if confidence is not None and (isinstance(confidence, bool) or not isinstance(confidence, (int, float))
                                       or not 0.0 < confidence < 1.0):
            raise ValueError(f"confidence must be a number in (0, 1), got {confidence!r}")
        if not recon_threshold > 0:
            raise ValueError(f"recon_threshold must be > 0, got {recon_threshold}")
        if inversion_steps < 0 or not inversion_lr > 0 or not inversion_tol >= 0:
            raise ValueError(
                f"need inversion_steps >= 0, inversion_lr > 0 and inversion_tol >= 0, got {inversion_steps}, "
                f"{inversion_lr}, {inversion_tol}"
            )
        self.generator = generator
        self.latent_shape = _latent_shape(latent_shape)
        self.encoder = encoder
        self.restarts = restarts
        self.recon_threshold = float(recon_threshold)
        self.inversion_steps = int(inversion_steps)
        self.inversion_lr = float(inversion_lr)
        self.inversion_tol = float(inversion_tol)
        self.seed = int(seed)
        self._lr = None if lr is None else float(lr)
        if confidence is not None:
            self.confidence = float(confidence)

    def step_size(self, start: Tensor) -> float:
        """The L2 step: the constructor's ``lr``, else ``sqrt(d / 8)`` for ``d`` latent dimensions."""
        return self._lr if self._lr is not None else self.lr_per_sqrt_dim * math.sqrt(math.prod(self.latent_shape))

    def check(self, x: Tensor) -> None:
        """Probe the generator with two latents: it must accept ``latent_shape``, give finite samples of ``x``'s shape."""
        gen = torch.Generator(device=x.device).manual_seed(self.seed)
        probe = torch.cat([
            torch.zeros((1,) + self.latent_shape, device=x.device, dtype=x.dtype),
            torch.randn((1,) + self.latent_shape, generator=gen, device=x.device, dtype=x.dtype),
        ])
        try:
            with torch.no_grad():
                out = self.generator(probe)
        except Exception as e:  # noqa: BLE001 - re-raised with the likely cause named
            raise ValueError(
                f"latent_shape {self.latent_shape} does not fit the generator: calling it on latents of shape "
                f"{tuple(probe.shape)} failed with {type(e).__name__}: {e}"
            ) from e
        if not isinstance(out, Tensor):
            raise TypeError(f"the generator must return a tensor, got {type(out).__name__}")
        if out.shape[0] != probe.shape[0]:
            raise ValueError(
                f"latent_shape {self.latent_shape} does not fit the generator: {probe.shape[0]} latents of that "
                f"shape gave {out.shape[0]} samples"
            )
        if out.shape[1:] != x.shape[1:]:
            raise ValueError(
                f"the generator makes samples of shape {tuple(out.shape[1:])} but the classifier's inputs have "
                f"shape {tuple(x.shape[1:])}"
            )
        if not bool(torch.isfinite(out).all()):
            raise ValueError("the generator produced NaN or Inf values (probed at z = 0 and a random z)")
        # A generator of another range (a tanh GAN in [-1, 1] for images in [0, 1], or the reverse) inverts to
        # nonsense.  One batch does not show the data's range, so judge by the conventional ranges: inputs in
        # [0, 1] need samples inside [-0.25, 1.25]; inputs with values below -0.25 need samples that go negative.
        lo, hi = float(x.min()), float(x.max())
        g_lo, g_hi = float(out.min()), float(out.max())
        mismatch = (lo >= 0.0 and hi <= 1.0 and (g_lo < -0.25 or g_hi > 1.25)) or (lo < -0.25 and g_lo >= 0.0)
        if mismatch:
            raise ValueError(
                f"the generator makes samples in [{g_lo:.3g}, {g_hi:.3g}] but the inputs lie in [{lo:.3g}, {hi:.3g}]: "
                "map one range onto the other first (e.g. (g(z) + 1) / 2 for a tanh generator and images in [0, 1])"
            )

    def invert(self, x: Tensor, *, progress: bool = False) -> InversionResult:
        """:func:`invert` ``x`` with this chart's settings."""
        return invert(self.generator, x, self.latent_shape, encoder=self.encoder, restarts=self.restarts,
                      steps=self.inversion_steps, lr=self.inversion_lr, tol=self.inversion_tol, seed=self.seed,
                      progress=progress)

    def encode(self, x: Tensor) -> Tensor:
        return self.invert(x).z

    def start(self, x: Tensor, *, progress: bool = False) -> Coordinates:
        inversion = self.invert(x, progress=progress)
        z0 = inversion.z.detach()
        d = math.prod(self.latent_shape)
        radius = z0.flatten(1).norm(dim=1).clamp_min(math.sqrt(d) + 3.0 / math.sqrt(2.0))

        def project(p: Tensor, index: Tensor) -> Tensor:
            norm = p.flatten(1).norm(dim=1).clamp_min(torch.finfo(p.dtype).tiny)
            scale = (radius[index] / norm).clamp(max=1.0)
            return p * scale.view((-1,) + (1,) * (p.ndim - 1))

        return Coordinates(z0, self.decode, project, info={"inversion_steps": inversion.steps})

    def decode(self, p: Tensor) -> Tensor:
        return self.generator(p)

    def modules(self) -> list[Any]:
        return modules_of(self.generator) + (modules_of(self.encoder) if self.encoder is not None else [])

    def check_reconstruction(self, error: Tensor) -> dict[str, Tensor]:
        """Flag samples with RMS error above ``recon_threshold``; warn how many and why it matters."""
        poor = error > self.recon_threshold
        count = int(poor.sum())
        if count:
            warnings.warn(
                f"{count} of {error.shape[0]} inputs are poorly reconstructed by the generator (RMS error "
                f"> recon_threshold={self.recon_threshold:g}, worst {float(error.max()):.3g}): their "
                "counterfactuals explain the reconstruction g(z0), not the input; see "
                "result.info['poor_reconstruction']",
                UserWarning,
                stacklevel=2,
            )
        return {"poor_reconstruction": poor}
