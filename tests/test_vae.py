"""The convolutional VAE, train_vae and the cached digits VAE."""

import pytest
import torch

from xcf.models.vae import VAE, train_vae, vae_loss

torch.set_num_threads(1)


def blobs(n: int = 64, size: int = 8, seed: int = 0) -> torch.Tensor:
    """Toy data in [0, 1]: a bright square at one of four positions, plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, size, size)
    h = size // 2
    for i in range(n):
        r, c = divmod(i % 4, 2)
        x[i, :, r * h:(r + 1) * h, c * h:(c + 1) * h] = 1.0
    return (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)


def model(d: int = 4, size: int = 8, seed: int = 0) -> VAE:
    torch.manual_seed(seed)
    return VAE(d, size, width=8)


@pytest.mark.parametrize("size", [8, 28])
def test_shapes(size):
    vae = model(size=size).eval()
    x = blobs(5, size)
    mu, logvar = vae.encode(x)
    assert mu.shape == logvar.shape == (5, 4)
    out = vae.decoder(mu)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert torch.allclose(vae(x), out)


def test_bad_arguments():
    with pytest.raises(ValueError, match="image_size must be a positive multiple of 4"):
        VAE(4, 10)
    vae = model()
    with pytest.raises(ValueError, match="encodes images of shape \\(N, 1, 8, 8\\)"):
        vae.encode(torch.rand(2, 1, 28, 28))
    with pytest.raises(ValueError, match="latents of shape \\(N, 4\\)"):
        vae.decoder(torch.randn(2, 3))
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        train_vae(vae, blobs() * 2)


def test_elbo_terms():
    vae = model().eval()
    x = blobs(16)
    eps = torch.zeros(16, 4)
    loss, rec, kl = vae_loss(vae, x, eps, beta=0.5)
    mu, logvar = vae.encode(x)
    expected_kl = 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).sum(1).mean()
    assert torch.allclose(kl, expected_kl) and kl >= 0
    assert torch.allclose(loss, rec + 0.5 * kl)


def test_training_lowers_the_loss_and_the_reconstruction_error():
    vae = model()
    x = blobs(128)
    with torch.no_grad():
        before = float((vae.eval()(x) - x).pow(2).mean().sqrt())
    history = train_vae(vae, x, epochs=30, lr=5e-3, batch_size=32, seed=0)
    with torch.no_grad():
        after = float((vae(x) - x).pow(2).mean().sqrt())
    assert not vae.training and history["epochs"] == 30
    assert history["loss"][-1] < 0.6 * history["loss"][0]
    assert history["reconstruction"][-1] < history["reconstruction"][0]
    assert after < 0.5 * before, (before, after)


def test_deterministic_under_seed():
    a, b = model(), model()
    ha = train_vae(a, blobs(64), epochs=2, seed=3)
    hb = train_vae(b, blobs(64), epochs=2, seed=3)
    assert ha["loss"] == hb["loss"]
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
