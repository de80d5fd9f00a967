"""A small convolutional variational autoencoder (Kingma & Welling 2014) for images in ``[0, 1]``.

The encoder ``q(z | x) = N(μ(x), diag σ²(x))`` has two stride-2 convolutions and returns
``(μ, log σ²)``; the decoder ``x̂ = dec(z)`` mirrors the DCGAN generator (linear layer, two
transposed convolutions, sigmoid).  Training maximises the evidence lower bound, i.e. minimises
per image

    L(x) = BCE(dec(z), x) + β · KL(q(z | x) || N(0, I)),   z = μ + σ ⊙ ε,  ε ~ N(0, I),

with ``BCE`` summed over pixels and ``KL = ½ Σ (μ² + σ² - log σ² - 1)``.

The decoder is the generator of approximate counterfactuals (``xcf.ApproximateCounterfactual(f,
vae.decoder, (d,), encoder=vae.encode)``); :func:`digits_vae` trains the reference model of the
digits default (about half a minute on one CPU thread) and caches it.
"""

from __future__ import annotations

import time
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

__all__ = ["VAE", "train_vae", "vae_loss", "digits_vae"]

_SIZES = (8, 28)


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
        image_size: 8 (the digits default) or 28.
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
        if image_size not in _SIZES:
            raise ValueError(f"image_size must be one of {_SIZES}, got {image_size!r}")
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

    Shuffling and the reparameterisation noise come from a ``torch.Generator`` seeded with ``seed``.

    Args:
        vae: the model.
        x: ``(N, C, H, W)`` training images in ``[0, 1]``.
        epochs: passes over ``x``.
        lr: Adam step size.
        batch_size: images per step.
        beta: weight of the KL term (1 is the ELBO).
        seed: seed of the training randomness.
        progress: show a tqdm bar over epochs.
        max_seconds: stop after the epoch during which this much time has passed.

    Returns:
        ``{"loss": [...], "reconstruction": [...], "kl": [...]}`` (per-epoch means per image, in nats),
        plus ``"epochs"`` and ``"seconds"``.

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
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    n = x.shape[0]
    batch_size = min(batch_size, n)
    history: dict[str, Any] = {"loss": [], "reconstruction": [], "kl": []}
    t0 = time.perf_counter()
    vae.train()
    try:
        for _ in tqdm(range(epochs), desc="VAE", disable=not progress, leave=False):
            order = torch.randperm(n, generator=gen, device=device)
            sums = torch.zeros(3, dtype=x.dtype, device=device)
            count = 0
            for i in range(0, n - batch_size + 1, batch_size):
                xb = x[order[i:i + batch_size]]
                eps = torch.randn(xb.shape[0], vae.latent_dim, generator=gen, device=device, dtype=x.dtype)
                loss, rec, kl = vae_loss(vae, xb, eps, beta)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sums += torch.stack([loss, rec, kl]).detach()
                count += 1
            means = (sums / max(count, 1)).tolist()
            for key, value in zip(("loss", "reconstruction", "kl"), means):
                history[key].append(value)
            if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
                break
    finally:
        opt.zero_grad(set_to_none=True)
        vae.eval()
    history["epochs"] = len(history["loss"])
    history["seconds"] = time.perf_counter() - t0
    return history


#: settings of the reference digits VAE (part of the cache key)
DIGITS_VAE_CONFIG: dict[str, Any] = {
    "latent_dim": 16,
    "image_size": 8,
    "channels": 1,
    "width": 32,
    "epochs": 100,
    "lr": 2e-3,
    "batch_size": 64,
    "beta": 0.25,
    "seed": 0,
    "data": "digits-train",
}


def _build_vae(config: dict[str, Any]) -> VAE:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config["seed"])
        return VAE(config["latent_dim"], config["image_size"], config["channels"], config["width"])


def digits_vae(
    cache_dir: Optional[str] = None,
    retrain: bool = False,
    progress: bool = False,
    overrides: Optional[dict[str, Any]] = None,
) -> tuple[VAE, dict[str, Any]]:
    """The reference VAE of the digits default (8x8, ``z ∈ R^16``), trained once and cached.

    Trained on the training split of :func:`xcf.datasets.load_digits` with ``β = 0.25`` (sharper
    reconstructions than ``β = 1`` at an equal Fréchet distance of its samples; about 25 s on one CPU
    thread) and cached with :func:`xcf.models.io.cached_model`.

    Args:
        cache_dir: the model cache (default ``$XCF_CACHE`` or ``~/.cache/xcf``).
        retrain: ignore a cached file.
        progress: show a progress bar while training.
        overrides: settings that replace those of the reference configuration (e.g.
            ``{"epochs": 2}`` for a smoke test); they are part of the cache key.

    Returns:
        ``(vae in eval mode, metrics)``; use ``vae.decoder`` as the generator and ``vae.encode`` as
        the encoder.  Metrics hold the final training loss terms, the test negative ELBO, epochs and seconds.

    Example:
        >>> vae, metrics = digits_vae()                                  # doctest: +SKIP
        >>> explainer = ApproximateCounterfactual(f, vae.decoder, (vae.latent_dim,), encoder=vae.encode)  # doctest: +SKIP
    """
    from xcf.datasets import load_digits
    from xcf.models.io import cached_model, merged

    config = merged(DIGITS_VAE_CONFIG, overrides)

    def train(vae: nn.Module) -> dict[str, Any]:
        x, _ = load_digits("train")
        history = train_vae(
            vae, x, epochs=config["epochs"], lr=config["lr"], batch_size=config["batch_size"],
            beta=config["beta"], seed=config["seed"], progress=progress,
        )
        x_test, _ = load_digits("test")
        gen = torch.Generator().manual_seed(config["seed"] + 1)
        with torch.no_grad():
            eps = torch.randn(x_test.shape[0], vae.latent_dim, generator=gen)
            test_loss = float(vae_loss(vae, x_test, eps, config["beta"])[0])
        return {
            "loss": history["loss"][-1],
            "reconstruction": history["reconstruction"][-1],
            "kl": history["kl"][-1],
            "test_loss": test_loss,
            "epochs": history["epochs"],
            "train_seconds": history["seconds"],
        }

    model, metrics = cached_model("digits-vae", config, _build_vae, train, cache_dir, retrain)
    return model, metrics
