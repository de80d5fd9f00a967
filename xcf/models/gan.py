"""A DCGAN-style generator and discriminator for small images, and how to train them.

The generator ``G: z -> x`` maps a standard normal latent ``z ~ N(0, I_d)`` through a linear layer
and two stride-2 transposed convolutions to an image; a final sigmoid keeps pixels in ``[0, 1]``.
The discriminator ``D: x -> logit`` mirrors it with two stride-2 convolutions (no normalisation,
so it is also a valid WGAN-GP critic).

Two losses are offered (``s = D(x)`` is a logit, ``σ`` the logistic function):

* ``"ns"`` (non-saturating, Goodfellow et al. 2014): ``D`` minimises
  ``-log σ(D(x)) - log(1 - σ(D(G(z))))`` and ``G`` *maximises* ``log σ(D(G(z)))``, i.e. minimises
  ``softplus(-D(G(z)))``, which keeps its gradient alive when ``D`` wins.
* ``"wgan-gp"`` (Gulrajani et al. 2017): the critic minimises
  ``D(G(z)) - D(x) + λ (||∇D(x̂)||₂ - 1)²`` at random interpolates ``x̂`` of real and fake
  samples, ``G`` minimises ``-D(G(z))``; the critic takes ``n_critic`` steps per generator step.

``xcf.models.reference("digits-gan")`` is the reference generator of the digits default (shipped weights).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xcf._validation import check_image_size
from xcf.models.encoder import LatentEncoder, encoder_epochs, train_encoder
from xcf.models.kind import ModelKind, epochs_for, seeded, split_budget, square_side
from xcf.models.training import TrainContext, fit

__all__ = ["DCGANGenerator", "DCGANDiscriminator", "KIND", "build_gan", "gan_recipe", "train_gan"]

class DCGANGenerator(nn.Module):
    """``z -> x``: linear layer to a ``(4w, s/4, s/4)`` map, two ``ConvTranspose2d(4, 2, 1)`` + sigmoid.

    BatchNorm follows the linear layer and the first transposed convolution (train it in training
    mode; use it in eval mode, as :func:`train_gan` leaves it).

    Args:
        latent_dim: dimension ``d`` of ``z``.
        image_size: height and width, a multiple of 4 (8 for the digits, 28 for MNIST, 32, ...).
        channels: image channels.
        width: base number of feature maps.
        encoder_width: if given, the generator carries ``encoder``, a :class:`~xcf.models.encoder.LatentEncoder`
            of that width (``x -> z``) that :func:`fit_gan` trains after the generator; approximate counterfactuals
            start their inversion from it.  ``None``: no encoder (``encoder`` is ``None``).

    Inputs ``(N, d)`` or ``(N, d, 1, 1)``; outputs ``(N, channels, image_size, image_size)`` in ``[0, 1]``.

    Example:
        >>> G = DCGANGenerator(16, image_size=8).eval()
        >>> G(torch.randn(5, 16)).shape
        torch.Size([5, 1, 8, 8])
    """

    def __init__(self, latent_dim: int, image_size: int = 8, channels: int = 1, width: int = 32,
                 encoder_width: Optional[int] = None):
        super().__init__()
        if latent_dim < 1 or channels < 1 or width < 1:
            raise ValueError(
                f"latent_dim, channels and width must be >= 1, got {latent_dim}, {channels}, {width}"
            )
        self.latent_dim = int(latent_dim)
        self.image_size = check_image_size(image_size)
        self.channels = int(channels)
        s = self.image_size // 4
        self._base = (4 * width, s, s)
        self.project = nn.Sequential(
            nn.Linear(latent_dim, 4 * width * s * s, bias=False),
            nn.BatchNorm1d(4 * width * s * s),
            nn.ReLU(),
        )
        self.net = nn.Sequential(
            nn.ConvTranspose2d(4 * width, 2 * width, 4, 2, 1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.ConvTranspose2d(2 * width, channels, 4, 2, 1),
            nn.Sigmoid(),
        )
        # built after the generator's layers, so that their initialisation does not depend on it
        self.encoder: Optional[LatentEncoder] = (
            None if encoder_width is None else LatentEncoder(self.latent_dim, self.image_size, self.channels,
                                                             int(encoder_width)))

    def forward(self, z: Tensor) -> Tensor:
        if z.ndim < 2 or z[0].numel() != self.latent_dim:
            raise ValueError(
                f"the generator takes latents of shape (N, {self.latent_dim}) or (N, {self.latent_dim}, 1, 1), "
                f"got {tuple(z.shape)}"
            )
        h = self.project(z.flatten(1))
        return self.net(h.view((z.shape[0],) + self._base))


class DCGANDiscriminator(nn.Module):
    """``x -> logit``: two ``Conv2d(4, 2, 1)`` with LeakyReLU(0.2), then a linear layer.

    No normalisation layers, so it serves both as the ``"ns"`` discriminator and the ``"wgan-gp"``
    critic (whose gradient penalty is per sample).

    Args:
        image_size: height and width, a multiple of 4.
        channels: image channels.
        width: base number of feature maps.

    Example:
        >>> DCGANDiscriminator(8)(torch.rand(3, 1, 8, 8)).shape
        torch.Size([3])
    """

    def __init__(self, image_size: int = 8, channels: int = 1, width: int = 32):
        super().__init__()
        self.image_size = check_image_size(image_size)
        self.channels = int(channels)
        s = self.image_size // 4
        self.net = nn.Sequential(
            nn.Conv2d(channels, 2 * width, 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 4 * width, 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Flatten(),
            nn.Linear(4 * width * s * s, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        expected = (self.channels, self.image_size, self.image_size)
        if tuple(x.shape[1:]) != expected:
            raise ValueError(f"the discriminator takes images of shape (N, {', '.join(map(str, expected))}), "
                             f"got {tuple(x.shape)}")
        return self.net(x).squeeze(1)


def _gradient_penalty(D: nn.Module, real: Tensor, fake: Tensor, gen: torch.Generator) -> Tensor:
    """``mean((||∇D(x̂)||₂ - 1)²)`` at ``x̂ = a·real + (1 - a)·fake``, ``a ~ U(0, 1)`` per sample."""
    a = torch.rand((real.shape[0],) + (1,) * (real.ndim - 1), generator=gen, device=real.device, dtype=real.dtype)
    mix = (a * real + (1 - a) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(D(mix).sum(), mix, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()


def _rounded(value: float, dtype: torch.dtype) -> float:
    """``value`` rounded to ``dtype``'s precision."""
    return float(torch.tensor(value, dtype=torch.float64).to(dtype))


def _recalibrate_batchnorm(
    G: nn.Module, latent_dim: int, gen: torch.Generator, dtype: torch.dtype, device: torch.device,
    batches: int = 20, batch_size: int = 256,
) -> None:
    """Re-estimate BatchNorm running statistics of ``G`` as plain averages over prior samples."""
    norms = [m for m in G.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    G.train()
    try:
        with torch.no_grad():
            for _ in range(batches):
                G(torch.randn(batch_size, latent_dim, generator=gen, device=device, dtype=dtype))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        G.eval()


def train_gan(
    G: nn.Module,
    D: nn.Module,
    x: Tensor,
    loss: str = "ns",
    epochs: int = 100,
    lr: float = 2e-4,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = False,
    n_critic: Optional[int] = None,
    gp_weight: float = 10.0,
    betas: Optional[tuple[float, float]] = None,
    ema: Optional[float] = None,
    max_seconds: Optional[float] = None,
) -> dict[str, Any]:
    """Train ``G`` and ``D`` in place on images ``x``; both are left in eval mode.

    Latents, shuffling and interpolation weights come from a ``torch.Generator`` seeded with
    ``seed`` (model initialisation is the caller's business), so a run is reproducible.  The loop is
    :func:`xcf.models.training.fit` with one Adam optimiser per network, a constant learning rate and
    the short last batch of each epoch dropped.

    Args:
        G: generator ``z -> x``; must have an integer attribute ``latent_dim``.
        D: discriminator / critic ``x -> (N,)`` logits.
        x: ``(N, C, H, W)`` training images in the generator's output range.
        loss: ``"ns"`` (non-saturating) or ``"wgan-gp"``.
        epochs: passes over ``x`` (counted in discriminator batches).
        lr: Adam step size of both networks.
        batch_size: images per step.
        seed: seed of the training randomness.
        progress: show a tqdm bar over epochs.
        n_critic: discriminator steps per generator step (default 1 for ``"ns"``, 5 for ``"wgan-gp"``).
        gp_weight: ``λ`` of the gradient penalty (``"wgan-gp"`` only).
        betas: Adam's betas (default ``(0.5, 0.999)`` for ``"ns"``, ``(0.0, 0.9)`` for ``"wgan-gp"``).
        ema: if given (e.g. ``0.999``), ``G`` ends with an exponential moving average of its weights
            over the generator steps (``θ̄ ← ema·θ̄ + (1 - ema)·θ``), which smooths the oscillation
            of adversarial training; its BatchNorm statistics are then re-estimated on prior samples.
        max_seconds: wall-clock budget: training stops at the first batch that starts after it.

    Returns:
        ``{"d_loss": [...], "g_loss": [...]}`` (per-epoch means; for ``"wgan-gp"`` ``d_loss``
        includes the penalty and ``"wasserstein"`` holds the critic's estimate ``E D(x) - E D(G(z))``),
        plus ``"epochs"``, ``"steps"`` (generator updates), ``"updates"`` (batches with an update),
        ``"capped"`` and ``"seconds"``.

    Example:
        >>> G, D = DCGANGenerator(8, 8), DCGANDiscriminator(8)
        >>> history = train_gan(G, D, torch.rand(64, 1, 8, 8), epochs=2)
        >>> len(history["d_loss"])
        2
    """
    if loss not in ("ns", "wgan-gp"):
        raise ValueError(f"loss must be 'ns' or 'wgan-gp', got {loss!r}")
    if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[0] < 2:
        raise ValueError(f"x must be a (N, C, H, W) tensor with N >= 2, got {getattr(x, 'shape', type(x))}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or Inf values")
    if epochs < 0 or batch_size < 1 or not lr > 0:
        raise ValueError(f"need epochs >= 0, batch_size >= 1 and lr > 0, got {epochs}, {batch_size}, {lr}")
    latent_dim = getattr(G, "latent_dim", None)
    if not isinstance(latent_dim, int):
        raise TypeError("G must have an integer attribute latent_dim (the size of z)")
    n_critic = (1 if loss == "ns" else 5) if n_critic is None else int(n_critic)
    if n_critic < 1:
        raise ValueError(f"n_critic must be >= 1, got {n_critic}")
    if ema is not None and not 0.0 <= ema < 1.0:
        raise ValueError(f"ema must be in [0, 1), got {ema}")
    betas = ((0.5, 0.999) if loss == "ns" else (0.0, 0.9)) if betas is None else betas
    device = x.device
    gen = torch.Generator(device=device).manual_seed(seed)
    params = [p for p in G.parameters() if p.requires_grad]
    averaged = [p.detach().clone() for p in params] if ema is not None else None
    state = {"k": 0, "g_steps": 0}  # discriminator steps since the last generator step; generator updates

    def step(real: Tensor, ctx: TrainContext):
        z = torch.randn(real.shape[0], latent_dim, generator=gen, device=device, dtype=x.dtype)
        with torch.no_grad():
            fake = G(z)
        d_out = D(torch.cat([real, fake]))  # one pass: D has no batch coupling
        d_real, d_fake = d_out[: real.shape[0]], d_out[real.shape[0]:]
        stats: dict[str, Tensor] = {}
        if loss == "ns":
            d_loss = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
        else:
            w = d_real.mean() - d_fake.mean()
            d_loss = -w + gp_weight * _gradient_penalty(D, real, fake, gen)
            stats["wasserstein"] = w
        ctx.update(d_loss, "discriminator")
        stats["d_loss"] = d_loss
        state["k"] += 1
        if state["k"] < n_critic:
            return None, stats
        state["k"] = 0
        z = torch.randn(real.shape[0], latent_dim, generator=gen, device=device, dtype=x.dtype)
        out = D(G(z))
        g_loss = F.softplus(-out).mean() if loss == "ns" else -out.mean()
        ctx.update(g_loss, "generator")
        if averaged is not None:
            torch._foreach_lerp_(averaged, [p.detach() for p in params], 1.0 - ema)
        stats["g_loss"] = g_loss
        state["g_steps"] += 1
        return None, stats

    try:
        out = fit({"discriminator": D, "generator": G}, step, x, epochs=epochs, batch_size=batch_size, lr=lr,
                  optimiser="adam", betas=tuple(betas), schedule="constant", drop_last=True,
                  max_seconds=max_seconds, seed=seed, generator=gen, progress=progress, desc=f"GAN ({loss})")
    finally:
        G.eval()
        D.eval()
    g_steps = state["g_steps"]
    if averaged is not None and g_steps:
        with torch.no_grad():
            for p, a in zip(params, averaged):
                p.copy_(a)
        _recalibrate_batchnorm(G, latent_dim, gen, x.dtype, device)
    keys = ("d_loss", "g_loss", "wasserstein") if loss == "wgan-gp" else ("d_loss", "g_loss")
    # per-epoch means in the data's precision (as the losses were computed)
    history: dict[str, Any] = {k: [_rounded(v, x.dtype) for v in out.pop(k, [math.nan] * out["epochs"])] for k in keys}
    history.update(out)
    history["steps"] = g_steps
    history["updates"] = out["steps"]
    history["seconds"] = out["seconds"]
    return history


# -------------------------------------------------------------------------------------- the GAN kind
_MODEL_KEYS = ("latent_dim", "image_size", "channels", "width", "encoder_width")
#: the training settings of the generator's encoder, trained after the generator (:func:`train_encoder`)
_ENCODER_KEYS = {"encoder_epochs": "epochs", "encoder_lr": "lr", "encoder_recon_weight": "recon_weight"}


def gan_recipe(shape: tuple[int, int, int], n: int = 4000) -> dict[str, Any]:
    """The recommended DCGAN for square images of ``shape``: latent 16 for sides up to 8, else 32, with an
    encoder (:class:`~xcf.models.encoder.LatentEncoder`, width 32) trained after the generator.

    Example:
        >>> gan_recipe((1, 28, 28))["model"]
        {'latent_dim': 32, 'image_size': 28, 'channels': 1, 'width': 32, 'encoder_width': 32}
    """
    c, side = square_side(shape, "GAN")
    return {"model": {"latent_dim": 16 if side <= 8 else 32, "image_size": side, "channels": int(c),
                      "width": 16 if side <= 8 else 32, "encoder_width": 32},
            "train": {"loss": "ns", "epochs": epochs_for(n, 250_000, 10, 300), "lr": 5e-4, "batch_size": 64,
                      "ema": 0.999, "encoder_epochs": encoder_epochs(n), "encoder_lr": 1e-3,
                      "encoder_recon_weight": 10.0},
            "seed": 0, "version": 1}


def nested(config: dict[str, Any], model_keys: tuple[str, ...]) -> dict[str, Any]:
    """A configuration in the one schema; the flat GAN and VAE configurations of xcf 0.2 files are split
    into ``"model"`` and ``"train"``."""
    if "model" in config:
        return config
    flat = {k: v for k, v in config.items() if k not in ("seed", "version", "data", "trained_on")}
    return {"model": {k: flat[k] for k in model_keys if k in flat},
            "train": {k: v for k, v in flat.items() if k not in model_keys and k != "max_seconds"},
            "seed": int(config.get("seed", 0)), "version": int(config.get("version", 1))}


def build_gan(config: dict[str, Any]) -> DCGANGenerator:
    """The untrained generator of a configuration (:func:`gan_recipe`'s schema), initialised under its ``"seed"``."""
    config = nested(config, _MODEL_KEYS)
    return seeded(int(config.get("seed", 0)), lambda: DCGANGenerator(**config["model"]))


def _train(G: nn.Module, cfg: dict[str, Any], x: Tensor, y: Optional[Tensor], x_test: Optional[Tensor],
           y_test: Optional[Tensor], max_seconds: Optional[float], progress: bool) -> dict[str, Any]:
    model = cfg["model"]
    D = seeded(int(cfg["seed"]) + 1, lambda: DCGANDiscriminator(model["image_size"], model["channels"], model["width"]))
    settings, budget = split_budget(cfg, max_seconds)
    encoder = {_ENCODER_KEYS[k]: settings.pop(k) for k in list(settings) if k in _ENCODER_KEYS}
    history = train_gan(G, D.to(x.device), x, seed=int(cfg["seed"]), progress=progress, max_seconds=budget, **settings)
    metrics = {"d_loss": history["d_loss"][-1], "g_loss": history["g_loss"][-1], "epochs": history["epochs"],
               "capped": bool(history.get("capped", False)), "train_seconds": history["seconds"]}
    if getattr(G, "encoder", None) is not None:
        metrics.update(train_generator_encoder(G, x, x_test, seed=int(cfg["seed"]), progress=progress,
                                               **{"epochs": encoder_epochs(x.shape[0]), **encoder}))
    return metrics


def train_generator_encoder(G: DCGANGenerator, x: Tensor, x_test: Optional[Tensor] = None, *, epochs: int,
                            lr: float = 1e-3, recon_weight: float = 10.0, seed: int = 0,
                            progress: bool = False) -> dict[str, Any]:
    """Train ``G.encoder`` to invert the trained ``G`` (:func:`~xcf.models.encoder.train_encoder`, seeded with
    ``seed + 2``); with ``x_test``, record the RMS error of ``G(E(x_test))``, the inversion's starting error."""
    if G.encoder is None:
        raise ValueError("this generator has no encoder (built without encoder_width)")
    G.eval()
    out = train_encoder(G.encoder, G, x, epochs=epochs, lr=lr, recon_weight=recon_weight, seed=seed + 2,
                        progress=progress)
    metrics = {"encoder_recon_rms": out["recon_rms"], "encoder_seconds": out["seconds"]}
    if x_test is not None:
        with torch.no_grad():
            metrics["encoder_test_rms"] = float((G(G.encoder(x_test)) - x_test).flatten(1).pow(2).mean(1).sqrt().mean())
    return metrics


KIND = ModelKind(
    name="gan", architecture="DCGANGenerator", summary="a DCGAN generator for approximate counterfactuals",
    roles=("generator",), recipe=lambda shape, n, levels, n_classes: gan_recipe(shape, n),
    build=build_gan, train=_train, test_metric="frechet_distance_pca",
    smoke={"train": {"epochs": 1, "encoder_epochs": 1}},
)
