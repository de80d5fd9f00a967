"""A generator's latent space: an approximate chart, encoded by inversion (:func:`xcf.charts.inversion.invert`)."""

from __future__ import annotations

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
        restarts: inversion starts per sample.
        recon_threshold: RMS reconstruction error above which a sample is flagged as poorly
            reconstructed (``info["poor_reconstruction"]``) and a warning is emitted.  The default
            0.15 (inputs in ``[0, 1]``) is about the RMS distance from a digits test image to the
            nearest training image of a *different* class (min 0.154, 10th percentile 0.196): a
            reconstruction that far off may show another digit.
        inversion_steps, inversion_lr, inversion_tol, seed: passed to :func:`invert` (``steps``,
            ``lr``, ``tol``, ``seed``).
        tol: deprecated name of ``inversion_tol``.

    :meth:`start` runs the inversion and returns, with the start, the inversion's steps per sample
    (``info["inversion_steps"]``); nothing is kept between calls.
    """

    name = "generator"
    #: Adam step of the counterfactual ascent in the latent.  Tuned on the digits GAN and VAE (100 test
    #: digits, targets (y+3) mod 10, 1000 steps): 5e-3 reached 88% / 54% (GAN / VAE with encoder),
    #: 1e-2 92% / 84%, 2e-2 96% / 96%, 5e-2 98% / 98%; SVM transfer of the successes fell from
    #: 0.98 to 0.91 (GAN) over that range, so 2e-2 is the compromise.
    lr = 2e-2
    steps = 1000

    def __init__(
        self,
        generator: Callable[[Tensor], Tensor],
        latent_shape: LatentShape,
        encoder: Optional[Callable[[Tensor], Any]] = None,
        restarts: int = 8,
        recon_threshold: float = 0.15,
        inversion_steps: int = 300,
        inversion_lr: float = 5e-2,
        inversion_tol: float = 1e-3,
        seed: int = 0,
        *,
        tol: Optional[float] = None,
    ):
        if tol is not None:
            warnings.warn("GeneratorChart(tol=...) is renamed inversion_tol and will be removed in xcf 0.3",
                          DeprecationWarning, stacklevel=2)
            inversion_tol = tol
        if not callable(generator):
            raise TypeError(f"generator must be a callable z -> x (e.g. an nn.Module), got {type(generator).__name__}")
        if encoder is not None and not callable(encoder):
            raise TypeError(f"encoder must be a callable x -> z, got {type(encoder).__name__}")
        if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
            raise ValueError(f"restarts must be an int >= 1, got {restarts!r}")
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

    def invert(self, x: Tensor, *, progress: bool = False) -> InversionResult:
        """:func:`invert` ``x`` with this chart's settings."""
        return invert(self.generator, x, self.latent_shape, encoder=self.encoder, restarts=self.restarts,
                      steps=self.inversion_steps, lr=self.inversion_lr, tol=self.inversion_tol, seed=self.seed,
                      progress=progress)

    def encode(self, x: Tensor) -> Tensor:
        return self.invert(x).z

    def start(self, x: Tensor, *, progress: bool = False) -> Coordinates:
        inversion = self.invert(x, progress=progress)
        return Coordinates(inversion.z.detach(), self.decode, info={"inversion_steps": inversion.steps})

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
