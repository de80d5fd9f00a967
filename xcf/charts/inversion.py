"""A generator's latent space: an approximate chart, reached by inverting the generator.

A GAN generator or a VAE decoder ``g: z -> x`` is not bijective, so ``g⁻¹(x)`` must be searched:

    z0 = argmin_z  ||g(z) - x||² / D        (D = pixels per sample)

:func:`invert` minimises this with Adam from ``R`` starting points per sample, all ``N·R`` latents in
one batch of the search engine (:func:`xcf.engine.search`, with the reconstruction error as its
objective), and keeps per sample the restart with the smallest error.  A sample stops as soon as one
of its restarts reaches ``RMS <= tol``; the others stop with it, and stopped latents leave the
active set.  Random starts are draws ``z_r ~ N(0, I)`` from a ``torch.Generator`` seeded with
``seed``, the same ``R`` draws for every sample, so a sample's inversion does not depend on the rest
of the batch and restart ``r`` starts from the same point whatever ``R`` is: more restarts only add
candidates (or end the sample early because one of them reached ``tol``).  An encoder (a VAE's ``encode``, or any ``x -> z``) replaces restart 0 with its
estimate.

:class:`GeneratorChart` encodes by inversion and decodes with ``g``; the remaining error
``RMS(g(z0) - x)`` is part of every result, and samples above ``recon_threshold`` are flagged,
because their counterfactual explains the reconstruction ``g(z0)``, not the input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from xcf._typing import LatentShape
from xcf._validation import check_inputs
from xcf.engine import rms, search

__all__ = ["InversionResult", "LatentShape", "invert"]




def _latent_shape(latent_shape: LatentShape) -> tuple[int, ...]:
    shape = (latent_shape,) if isinstance(latent_shape, int) else tuple(latent_shape)
    if not shape or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape):
        raise ValueError(f"latent_shape must be a positive int or a tuple of positive ints, got {latent_shape!r}")
    return shape


@dataclass
class InversionResult:
    """What :func:`invert` found, one row per input.

    Attributes:
        z: ``(N, *latent_shape)`` best latent per sample.
        error: ``(N,)`` RMS of ``g(z) - x`` per sample.
        steps: ``(N,)`` Adam updates made for the sample (its restarts run side by side).
        reconstruction: ``(N, ...)`` ``g(z)``.
        restart: ``(N,)`` index of the winning restart (0 is the encoder's start when there is one).
        restart_errors: ``(N, R)`` final RMS error of every restart.
    """

    z: Tensor
    error: Tensor
    steps: Tensor
    reconstruction: Tensor
    restart: Tensor
    restart_errors: Tensor


class _Reconstruction:
    """Engine objective: loss = MSE to the sample's image, score = RMS, reached once any restart has ``RMS <= tol``.

    Rows are laid out sample-major (row ``i·R + r`` is restart ``r`` of sample ``i``).  The flag is
    shared by a sample's restarts, so all of them stop at the step one of them reaches ``tol``.
    """

    def __init__(self, x: Tensor, restarts: int, tol: float):
        self.x = x
        self.restarts = restarts
        self.tol = tol
        # restarts per sample that have reached tol (index_add_: no host sync in the loop)
        self.hits = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)

    def check(self, output: Tensor) -> None:
        if output.shape[1:] != self.x.shape[1:]:
            raise ValueError(
                f"the generator makes samples of shape {tuple(output.shape[1:])} but the inputs have shape "
                f"{tuple(self.x.shape[1:])}"
            )
        if not bool(torch.isfinite(output).all()):
            raise ValueError("the generator produced NaN or Inf values at the inversion's starting latents")

    def __call__(self, output: Tensor, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        sample = torch.div(index, self.restarts, rounding_mode="floor")
        mse = (output - self.x[sample]).flatten(1).pow(2).mean(dim=1)
        score = mse.detach().sqrt()
        self.hits.index_add_(0, sample, (score <= self.tol).to(self.hits.dtype))
        return mse, score, self.hits[sample] > 0


def _encoder_start(encoder: Callable[[Tensor], Any], x: Tensor, shape: tuple[int, ...]) -> Tensor:
    with torch.no_grad():
        z = encoder(x)
    if isinstance(z, (tuple, list)):  # a VAE encoder's (mu, logvar): start from the mean
        z = z[0]
    if not isinstance(z, Tensor):
        raise TypeError(f"the encoder must return a tensor or a (mu, logvar) tuple, got {type(z).__name__}")
    n = x.shape[0]
    if z.shape[0] != n or z[0].numel() != math.prod(shape):
        raise ValueError(
            f"the encoder returned shape {tuple(z.shape)}, which does not fit {n} latents of shape {shape}"
        )
    if not bool(torch.isfinite(z).all()):
        raise ValueError("the encoder produced NaN or Inf values")
    return z.detach().reshape((n,) + shape).to(dtype=x.dtype)


def invert(
    generator: Callable[[Tensor], Tensor],
    x: Tensor,
    latent_shape: LatentShape,
    encoder: Optional[Callable[[Tensor], Any]] = None,
    restarts: int = 8,
    steps: int = 300,
    lr: float = 5e-2,
    tol: float = 1e-3,
    seed: int = 0,
    progress: bool = False,
) -> InversionResult:
    """Find ``z`` with ``generator(z) ≈ x`` per sample: batched Adam from ``restarts`` starts, best kept.

    The ``N·restarts`` latents run as one batch of :func:`xcf.engine.search`; a sample stops when any
    of its restarts reaches ``RMS <= tol`` (its finished latents leave the batch), else after ``steps``
    updates.  Deterministic for a given ``seed``; a sample's result does not depend on the other
    samples in the batch.  The generator is not modified (gradients are taken w.r.t. ``z`` only);
    it should be in eval mode.

    Args:
        generator: ``z -> x``, taking ``(M, *latent_shape)``.
        x: ``(N, ...)`` images to invert.
        latent_shape: the shape of one latent (``16`` or ``(16,)``, ``(16, 1, 1)``...).
        encoder: optional ``x -> z`` (or ``x -> (mu, logvar)``: ``mu`` is used) whose output replaces
            the first random start.
        restarts: starts per sample ``R >= 1``.
        steps: Adam updates per sample at most.
        lr: Adam step size.
        tol: stop a sample once a restart reaches this RMS error (``0`` never stops early).
        seed: seed of the random starts.
        progress: show a progress bar.

    Returns:
        An :class:`InversionResult`.

    Example:
        >>> G = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh()).eval()
        >>> x = G(torch.randn(5, 2)).detach()                      # images the generator can make
        >>> res = invert(G, x, 2, restarts=4, steps=300)
        >>> bool(res.error.max() < 0.02), tuple(res.z.shape)
        (True, (5, 2))
    """
    check_inputs(x)
    shape = _latent_shape(latent_shape)
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
        raise ValueError(f"restarts must be an int >= 1, got {restarts!r}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    n, r = x.shape[0], restarts
    x = x.detach()
    gen = torch.Generator(device=x.device).manual_seed(int(seed))
    # One draw per restart, in order, so restart k starts at the same point whatever R is.
    draws = [torch.randn(shape, generator=gen, device=x.device, dtype=x.dtype) for _ in range(r)]
    start = torch.stack(draws).unsqueeze(0).repeat((n, 1) + (1,) * len(shape))  # (N, R, *shape)
    if encoder is not None:
        start[:, 0] = _encoder_start(encoder, x, shape)
    objective = _Reconstruction(x, r, float(tol))
    # The engine already does what inversion needs: batched Adam on a per-row loss, per-row early
    # stopping with the finished rows (and their Adam moments) leaving the active set.  The objective
    # makes the stop per *sample*; the best restart is picked below.
    out = search(
        lambda images: images,
        generator,
        start.reshape((n * r,) + shape),
        objective,
        steps=int(steps),
        lr=lr,
        progress=progress,
        description="inversion",
    )
    recon = out["counterfactual"]
    errors = rms(recon, x.repeat_interleave(r, dim=0)).view(n, r)
    ranked = torch.where(torch.isfinite(errors), errors, torch.full_like(errors, math.inf))
    best = ranked.argmin(dim=1)
    rows = torch.arange(n, device=x.device) * r + best
    error = errors[torch.arange(n, device=x.device), best]
    if not bool(torch.isfinite(error).all()):
        bad = (~torch.isfinite(error)).nonzero().flatten().tolist()
        raise ValueError(f"the generator produced NaN or Inf for every restart of samples {bad[:10]}")
    return InversionResult(
        z=out["latent"][rows],
        error=error,
        steps=out["steps"][rows],
        reconstruction=recon[rows],
        restart=best,
        restart_errors=errors,
    )
