"""An encoder ``E: x -> z`` for a generator ``G: z -> x``: the first estimate of a generator's inversion.

Approximate counterfactuals need ``z0`` with ``G(z0) ≈ x``.  Searched from random draws that costs restarts and
hundreds of Adam steps per image (about a second per MNIST digit on a CPU); an encoder gives a start in one
forward pass, and a short refinement (:func:`xcf.charts.inversion.invert` with ``encoder=E``) does the rest.

:func:`train_encoder` fits ``E`` to a fixed generator with two terms per batch of ``B`` real images ``x``:

    L = mean ||E(G(z)) - z||²  +  w · mean ||G(E(x)) - x||²,      z ~ N(0, I)  (B draws)

The first teaches ``E`` to invert ``G`` where ``G``'s latents are known (its own samples); the second makes
``E(x)`` reconstruct *real* images, which the generator only approximates.  Measured on the shipped MNIST GAN
(200 test digits, ``docs/approximate.md``): the latent term alone starts the refinement at 0.160 RMS, both terms
at 0.131; after 300 refinement steps 0.075 and 0.074, where 8 random restarts of 300 steps reach 0.077 in 13
times the time.  The generator is not changed: its parameters are frozen during training and their
``requires_grad`` restored.

:class:`~xcf.models.gan.DCGANGenerator` carries such an encoder (``encoder_width``) and :func:`xcf.fit_gan` trains
it after the generator; :func:`fit_encoder` trains one for any other generator.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from xcf._validation import check_image_size, modules_of
from xcf.models.kind import check_budget, check_images, epochs_for, seeded
from xcf.models.training import TrainContext, fit

__all__ = ["LatentEncoder", "encoder_epochs", "fit_encoder", "train_encoder"]


class LatentEncoder(nn.Module):
    """``x -> z``: two stride-2 ``Conv2d(4, 2, 1)``, a ``Conv2d(3, 1, 1)`` (LeakyReLU 0.2 after each) and a
    linear layer to ``latent_dim``.

    Args:
        latent_dim: dimension of ``z``.
        image_size: height and width, a multiple of 4.
        channels: image channels.
        width: base number of feature maps.

    Example:
        >>> LatentEncoder(16, image_size=8)(torch.rand(3, 1, 8, 8)).shape
        torch.Size([3, 16])
    """

    def __init__(self, latent_dim: int, image_size: int = 8, channels: int = 1, width: int = 32):
        super().__init__()
        if latent_dim < 1 or channels < 1 or width < 1:
            raise ValueError(f"latent_dim, channels and width must be >= 1, got {latent_dim}, {channels}, {width}")
        self.latent_dim = int(latent_dim)
        self.image_size = check_image_size(image_size)
        self.channels = int(channels)
        s = self.image_size // 4
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 4 * width, 3, 1, 1), nn.LeakyReLU(0.2),
            nn.Flatten(), nn.Linear(4 * width * s * s, latent_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        expected = (self.channels, self.image_size, self.image_size)
        if tuple(x.shape[1:]) != expected:
            raise ValueError(f"the encoder takes images of shape (N, {', '.join(map(str, expected))}), "
                             f"got {tuple(x.shape)}")
        return self.net(x)


def encoder_epochs(n: int) -> int:
    """Epochs that show an encoder about 120,000 real images of a set of ``n`` (at least 5, at most 100)."""
    return epochs_for(n, 120_000, 5, 100)


def _check_generator(generator: Callable[[Tensor], Tensor], latent_dim: int, x: Tensor) -> None:
    training = [type(m).__name__ for m in modules_of(generator) if m.training]
    if training:
        raise ValueError(f"the generator is in training mode ({training[0]}): call .eval() on it first, so that "
                         "its BatchNorm statistics stay fixed while the encoder learns to invert it")
    with torch.no_grad():
        out = generator(torch.zeros(2, latent_dim, device=x.device, dtype=x.dtype))
    if not isinstance(out, Tensor) or out.shape[1:] != x.shape[1:]:
        shape = tuple(out.shape[1:]) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"the generator makes samples of shape {shape}, the images have shape {tuple(x.shape[1:])}")


def train_encoder(
    encoder: nn.Module,
    generator: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 64,
    recon_weight: float = 10.0,
    seed: int = 0,
    max_seconds: Optional[float] = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Train ``encoder`` in place to invert the fixed ``generator`` (see the module docstring); left in eval mode.

    Args:
        encoder: ``x -> z`` with an integer ``latent_dim``.
        generator: ``z -> x`` in eval mode; not changed (its parameters' ``requires_grad`` are restored).
        x: real training images ``(N, C, H, W)`` in the generator's output range.
        epochs: passes over ``x``.
        lr: Adam's step size (cosine-annealed).
        batch_size: real images (and generator draws) per step.
        recon_weight: ``w``, the weight of the reconstruction of real images.
        seed: seed of the draws and the shuffling.
        max_seconds: wall-clock budget.
        progress: a progress bar.

    Returns:
        ``{"latent_loss", "recon_rms", "epochs", "capped", "seconds"}``: the last epoch's mean latent error and
        RMS reconstruction error of the real training batches.
    """
    latent_dim = getattr(encoder, "latent_dim", None)
    if not isinstance(latent_dim, int):
        raise TypeError("the encoder must have an integer attribute latent_dim")
    check_images(x)
    _check_generator(generator, latent_dim, x)
    own = {id(p) for p in encoder.parameters()}  # an encoder may be a submodule of its generator
    params = [p for m in modules_of(generator) for p in m.parameters() if id(p) not in own]
    flags = [p.requires_grad for p in params]
    gen = torch.Generator(device=x.device).manual_seed(int(seed))

    def step(real: Tensor, ctx: TrainContext):
        z = torch.randn(real.shape[0], latent_dim, generator=gen, device=real.device, dtype=real.dtype)
        with torch.no_grad():
            fake = generator(z)
        latent = (encoder(fake) - z).pow(2).mean()
        recon = (generator(encoder(real)) - real).pow(2).mean()
        m = real.shape[0]
        return latent + recon_weight * recon, {"latent_loss": (latent.detach() * m, m),
                                               "recon_mse": (recon.detach() * m, m)}

    try:
        for p in params:
            p.requires_grad_(False)
        out = fit(encoder, step, x, epochs=int(epochs), batch_size=int(batch_size), lr=float(lr), optimiser="adam",
                  schedule="cosine", max_seconds=check_budget(max_seconds), seed=int(seed), generator=gen,
                  progress=progress, desc="encoder")
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        encoder.eval()
    last = lambda key: float(out[key][-1]) if out.get(key) else float("nan")  # noqa: E731
    return {"latent_loss": last("latent_loss"), "recon_rms": last("recon_mse") ** 0.5, "epochs": out["epochs"],
            "capped": bool(out.get("capped", False)), "seconds": out["seconds"]}


def fit_encoder(
    generator: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    latent_dim: Optional[int] = None,
    width: int = 32,
    epochs: Optional[int] = None,
    lr: float = 1e-3,
    batch_size: int = 64,
    recon_weight: float = 10.0,
    seed: int = 0,
    max_seconds: Optional[float] = None,
    progress: bool = False,
) -> tuple[LatentEncoder, dict[str, Any]]:
    """A :class:`LatentEncoder` for ``generator`` (any ``z -> x`` in eval mode), trained on real images ``x``.

    Pass it as ``encoder=`` to :class:`~xcf.ApproximateCounterfactual`: the inversion then starts from
    ``E(x)`` (one restart) instead of random draws.

    Args:
        generator: the generator; ``latent_dim`` is read from it unless given.
        x: real training images ``(N, C, H, W)`` in ``[0, 1]``, square with a side that is a multiple of 4.
        latent_dim, width: the encoder's latent size and base width.
        epochs: default :func:`encoder_epochs` of ``N``.
        lr, batch_size, recon_weight, seed, max_seconds, progress: see :func:`train_encoder`.

    Returns:
        ``(encoder in eval mode, metrics)`` (:func:`train_encoder`'s).

    Example:
        >>> from xcf.models import DCGANGenerator
        >>> G = DCGANGenerator(4, image_size=8).eval()
        >>> E, metrics = fit_encoder(G, torch.rand(32, 1, 8, 8), epochs=1)
        >>> E(torch.rand(2, 1, 8, 8)).shape, E.training
        (torch.Size([2, 4]), False)
    """
    c, h, w = check_images(x)
    if h != w:
        raise ValueError(f"the encoder takes square images, got {h}x{w}")
    latent_dim = getattr(generator, "latent_dim", None) if latent_dim is None else latent_dim
    if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
        raise ValueError(f"latent_dim must be a positive int (or an attribute of the generator), got {latent_dim!r}")
    encoder = seeded(int(seed), lambda: LatentEncoder(latent_dim, h, c, width)).to(x.device)
    metrics = train_encoder(encoder, generator, x, epochs=encoder_epochs(x.shape[0]) if epochs is None else epochs,
                            lr=lr, batch_size=batch_size, recon_weight=recon_weight, seed=seed,
                            max_seconds=max_seconds, progress=progress)
    return encoder, metrics
