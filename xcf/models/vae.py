"""A small convolutional variational autoencoder (Kingma & Welling 2014) for images in ``[0, 1]``.

The encoder ``q(z | x) = N(μ(x), diag σ²(x))`` has two stride-2 convolutions and returns
``(μ, log σ²)``; the decoder ``x̂ = dec(z)`` mirrors the DCGAN generator (linear layer, two
transposed convolutions, sigmoid).  Training maximises the evidence lower bound, i.e. minimises
per image

    L(x) = BCE(dec(z), x) + β · KL(q(z | x) || N(0, I)),   z = μ + σ ⊙ ε,  ε ~ N(0, I),

with ``BCE`` summed over pixels and ``KL = ½ Σ (μ² + σ² - log σ² - 1)``.

The decoder is the generator of approximate counterfactuals (``xcf.ApproximateCounterfactual(f,
vae.decoder, (d,), encoder=vae.encode)``); ``xcf.models.reference("digits-vae")`` is the reference model of the
digits default (shipped weights).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xcf._validation import check_image_size
from xcf.models.gan import nested
from xcf.models.kind import ModelKind, epochs_for, seeded, split_budget, square_side
from xcf.models.training import TrainContext, fit

__all__ = ["KIND", "VAE", "build_vae", "negative_elbo", "train_vae", "vae_loss", "vae_recipe"]

class _Decoder(nn.Module):
    """``z -> x``: linear layer to ``(2w, s/4, s/4)``, two ``ConvTranspose2d(4, 2, 1)``, sigmoid."""

    def __init__(self, latent_dim: int, image_size: int, channels: int, width: int):
        super().__init__()
        s = image_size // 4
        self.latent_dim = latent_dim
        self._base = (2 * width, s, s)
        self.project = nn.Sequential(nn.Linear(latent_dim, 2 * width * s * s), nn.ReLU())
        self.net = nn.Sequential(
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1),
            nn.ReLU(),
            nn.ConvTranspose2d(width, channels, 4, 2, 1),
            nn.Sigmoid(),
        )

    def forward(self, z: Tensor) -> Tensor:
        if z.ndim < 2 or z[0].numel() != self.latent_dim:
            raise ValueError(f"the decoder takes latents of shape (N, {self.latent_dim}), got {tuple(z.shape)}")
        return self.net(self.project(z.flatten(1)).view((z.shape[0],) + self._base))


class VAE(nn.Module):
    """Convolutional VAE: ``encode(x) -> (μ, log σ²)``, ``decoder(z) -> x̂`` in ``[0, 1]``.

    Args:
        latent_dim: dimension ``d`` of ``z``.
        image_size: height and width, a multiple of 4 (8 for the digits, 28 for MNIST, 32, ...).
        channels: image channels.
        width: base number of feature maps.

    ``forward(x)`` is the deterministic reconstruction ``decoder(μ(x))``.

    Example:
        >>> vae = VAE(8, image_size=8)
        >>> mu, logvar = vae.encode(torch.rand(3, 1, 8, 8))
        >>> vae.decoder(mu).shape
        torch.Size([3, 1, 8, 8])
    """

    def __init__(self, latent_dim: int, image_size: int = 8, channels: int = 1, width: int = 32):
        super().__init__()
        check_image_size(image_size)
        if latent_dim < 1 or channels < 1 or width < 1:
            raise ValueError(
                f"latent_dim, channels and width must be >= 1, got {latent_dim}, {channels}, {width}"
            )
        self.latent_dim = int(latent_dim)
        self.image_size = int(image_size)
        self.channels = int(channels)
        s = image_size // 4
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, width, 4, 2, 1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 4, 2, 1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(2 * width * s * s, 2 * latent_dim),
        )
        self.decoder = _Decoder(self.latent_dim, self.image_size, self.channels, width)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(μ(x), log σ²(x))``, each ``(N, latent_dim)``."""
        expected = (self.channels, self.image_size, self.image_size)
        if tuple(x.shape[1:]) != expected:
            raise ValueError(f"the VAE encodes images of shape (N, {', '.join(map(str, expected))}), "
                             f"got {tuple(x.shape)}")
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encode(x)[0])


def vae_loss(vae: VAE, x: Tensor, eps: Tensor, beta: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """Per-batch means of ``(loss, reconstruction term, KL term)`` for noise ``eps``."""
    mu, logvar = vae.encode(x)
    z = mu + (0.5 * logvar).exp() * eps
    x_hat = vae.decoder(z)
    rec = F.binary_cross_entropy(x_hat, x, reduction="none").flatten(1).sum(1).mean()
    kl = 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).sum(1).mean()
    return rec + beta * kl, rec, kl


def train_vae(
    vae: VAE,
    x: Tensor,
    epochs: int = 100,
    lr: float = 1e-3,
    batch_size: int = 64,
    beta: float = 1.0,
    seed: int = 0,
    progress: bool = False,
    max_seconds: Optional[float] = None,
) -> dict[str, Any]:
    """Train ``vae`` in place on images ``x`` in ``[0, 1]`` (negative ELBO with Adam); leaves it in eval mode.

    Shuffling and the reparameterisation noise come from a ``torch.Generator`` seeded with ``seed``.  The
    loop is :func:`xcf.models.training.fit` (Adam, constant learning rate, the short last batch of each
    epoch dropped).

    Args:
        vae: the model.
        x: ``(N, C, H, W)`` training images in ``[0, 1]``.
        epochs: passes over ``x``.
        lr: Adam step size.
        batch_size: images per step.
        beta: weight of the KL term (1 is the ELBO).
        seed: seed of the training randomness.
        progress: show a tqdm bar over epochs.
        max_seconds: wall-clock budget: training stops at the first batch that starts after it.

    Returns:
        ``{"loss": [...], "reconstruction": [...], "kl": [...]}`` (per-epoch means per image, in nats),
        plus the loop's ``"epochs"``, ``"steps"``, ``"capped"`` and ``"seconds"``.

    Example:
        >>> history = train_vae(VAE(4, 8), torch.rand(32, 1, 8, 8), epochs=2)
        >>> len(history["loss"])
        2
    """
    if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[0] < 1:
        raise ValueError(f"x must be a non-empty (N, C, H, W) tensor, got {getattr(x, 'shape', type(x))}")
    if not bool(torch.isfinite(x).all()) or bool((x < 0).any()) or bool((x > 1).any()):
        raise ValueError("x must hold finite pixel values in [0, 1] (the decoder ends in a sigmoid)")
    if epochs < 0 or batch_size < 1 or not lr > 0 or beta < 0:
        raise ValueError(f"need epochs >= 0, batch_size >= 1, lr > 0 and beta >= 0, got "
                         f"{epochs}, {batch_size}, {lr}, {beta}")
    device = x.device
    gen = torch.Generator(device=device).manual_seed(seed)

    def step(xb: Tensor, ctx: TrainContext):
        eps = torch.randn(xb.shape[0], vae.latent_dim, generator=gen, device=device, dtype=x.dtype)
        loss, rec, kl = vae_loss(vae, xb, eps, beta)
        return loss, {"loss": loss, "reconstruction": rec, "kl": kl}

    try:
        out = fit(vae, step, x, epochs=epochs, batch_size=batch_size, lr=lr, optimiser="adam", schedule="constant",
                  drop_last=True, max_seconds=max_seconds, seed=seed, generator=gen, progress=progress, desc="VAE")
    finally:
        vae.eval()
    # per-epoch means in the data's precision (as the losses were computed)
    history: dict[str, Any] = {
        key: [float(torch.tensor(v, dtype=torch.float64).to(x.dtype)) for v in out.pop(key, [])]
        for key in ("loss", "reconstruction", "kl")
    }
    history.update(out)
    return history


# -------------------------------------------------------------------------------------- the VAE kind
_MODEL_KEYS = ("latent_dim", "image_size", "channels", "width")


def vae_recipe(shape: tuple[int, int, int], n: int = 4000) -> dict[str, Any]:
    """The recommended VAE for square images of ``shape``: latent 16 for sides up to 8, else 32; ``beta = 0.25``.

    Example:
        >>> vae_recipe((1, 8, 8))["model"]
        {'latent_dim': 16, 'image_size': 8, 'channels': 1, 'width': 32}
    """
    c, side = square_side(shape, "VAE")
    return {"model": {"latent_dim": 16 if side <= 8 else 32, "image_size": side, "channels": int(c), "width": 32},
            "train": {"epochs": epochs_for(n, 150_000, 10, 200), "lr": 2e-3, "batch_size": 64, "beta": 0.25},
            "seed": 0, "version": 1}


def build_vae(config: dict[str, Any]) -> VAE:
    """The untrained VAE of a configuration (:func:`vae_recipe`'s schema), initialised under its ``"seed"``."""
    config = nested(config, _MODEL_KEYS)
    return seeded(int(config.get("seed", 0)), lambda: VAE(**config["model"]))


def negative_elbo(vae: VAE, x_test: Tensor, beta: float, seed: int) -> float:
    """The mean negative ELBO of ``x_test`` with reparameterisation noise drawn under ``seed`` (deterministic)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        eps = torch.randn(x_test.shape[0], vae.latent_dim, generator=gen).to(x_test.device)
        return float(vae_loss(vae, x_test, eps, beta)[0])


def _measure(vae: nn.Module, cfg: dict[str, Any], x_test: Tensor, y_test: Optional[Tensor]) -> float:
    return negative_elbo(vae, x_test, float(cfg["train"]["beta"]), int(cfg["seed"]) + 1)


def _train(vae: nn.Module, cfg: dict[str, Any], x: Tensor, y: Optional[Tensor], x_test: Optional[Tensor],
           y_test: Optional[Tensor], max_seconds: Optional[float], progress: bool) -> dict[str, Any]:
    settings, budget = split_budget(cfg, max_seconds)
    history = train_vae(vae, x, seed=int(cfg["seed"]), progress=progress, max_seconds=budget, **settings)
    metrics: dict[str, Any] = {"loss": history["loss"][-1], "reconstruction": history["reconstruction"][-1],
                               "kl": history["kl"][-1], "epochs": history["epochs"],
                               "capped": bool(history.get("capped", False)), "train_seconds": history["seconds"]}
    if x_test is not None:
        metrics["test_loss"] = _measure(vae, cfg, x_test, y_test)
    return metrics


KIND = ModelKind(
    name="vae", architecture="VAE", summary="a convolutional VAE (decoder and encoder) for approximate counterfactuals",
    roles=("generator",), recipe=lambda shape, n, levels, n_classes: vae_recipe(shape, n),
    build=build_vae, train=_train, test_metric="test_loss", measure=_measure,
    smoke={"train": {"epochs": 1}},
)
