"""DCGAN generator / discriminator, train_gan (non-saturating and WGAN-GP) and the cached digits GAN."""

import copy

import pytest
import torch
import torch.nn.functional as F

from xcf.models.gan import DCGANDiscriminator, DCGANGenerator, train_gan

torch.set_num_threads(1)


def bars(n: int = 64, seed: int = 0) -> torch.Tensor:
    """Toy data: 8x8 images of a vertical or a horizontal bar, with a little noise, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, 8, 8)
    x[: n // 2, :, :, 3:5] = 1.0
    x[n // 2:, :, 3:5, :] = 1.0
    return (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)


def models(d: int = 4, width: int = 8, seed: int = 0, size: int = 8):
    torch.manual_seed(seed)
    return DCGANGenerator(d, size, width=width), DCGANDiscriminator(size, width=width)


@pytest.mark.parametrize("size", [8, 28])
def test_shapes_and_range(size):
    G, D = models(size=size)
    G.eval()
    z = torch.randn(5, 4)
    x = G(z)
    assert x.shape == (5, 1, size, size) and x.min() >= 0 and x.max() <= 1
    assert torch.allclose(G(z.view(5, 4, 1, 1)), x)
    assert D(x).shape == (5,)
    rgb = DCGANGenerator(3, size, channels=3, width=4).eval()
    assert rgb(torch.randn(2, 3)).shape == (2, 3, size, size)


def test_bad_arguments():
    with pytest.raises(ValueError, match="image_size must be a positive multiple of 4"):
        DCGANGenerator(4, 18)
    with pytest.raises(ValueError, match="latent_dim"):
        DCGANGenerator(0, 8)
    G, D = models()
    with pytest.raises(ValueError, match="latents of shape \\(N, 4\\)"):
        G(torch.randn(2, 5))
    with pytest.raises(ValueError, match="images of shape \\(N, 1, 8, 8\\)"):
        D(torch.rand(2, 1, 28, 28))
    with pytest.raises(ValueError, match="loss must be"):
        train_gan(G, D, bars(), loss="hinge")
    with pytest.raises(ValueError, match="NaN"):
        train_gan(G, D, bars().masked_fill(bars() > 0.9, float("nan")))


def d_loss_ns(D, real, fake):
    with torch.no_grad():
        return float(F.softplus(-D(real)).mean() + F.softplus(D(fake)).mean())


def g_loss_ns(G, D, z):
    with torch.no_grad():
        return float(F.softplus(-D(G(z))).mean())


def test_ns_one_step_moves_both_losses_the_right_way():
    G, D = models()
    G0, D0 = copy.deepcopy(G).eval(), copy.deepcopy(D).eval()
    x = bars(64)
    history = train_gan(G, D, x, loss="ns", epochs=1, lr=1e-3, batch_size=64, seed=0)
    assert history["steps"] == 1 and history["epochs"] == 1
    z = torch.randn(512, 4, generator=torch.Generator().manual_seed(9))
    fake0 = G0(z).detach()
    # the D step lowered D's loss against the old generator...
    assert d_loss_ns(D, x, fake0) < d_loss_ns(D0, x, fake0)
    # ...and the G step (taken against the new D) lowered G's loss, i.e. raised log D(G(z))
    assert g_loss_ns(G, D, z) < g_loss_ns(G0, D, z)
    assert not G.training and not D.training


def test_wgan_gp_critic_and_generator_move_the_right_way():
    G, D = models()
    G0, D0 = copy.deepcopy(G).eval(), copy.deepcopy(D).eval()
    x = bars(64)
    history = train_gan(G, D, x, loss="wgan-gp", epochs=5, lr=1e-3, batch_size=64, n_critic=5)
    assert history["steps"] == 1 and len(history["wasserstein"]) == 5
    z = torch.randn(512, 4, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        fake0 = G0(z)
        w_before = float(D0(x).mean() - D0(fake0).mean())
        w_after = float(D(x).mean() - D(fake0).mean())
        assert w_after > w_before  # the critic separates real from (old) fake better
        assert float(-D(G(z)).mean()) < float(-D(G0(z)).mean())


def test_samples_approach_the_data():
    G, D = models(d=2)
    x = bars(128)
    templates = torch.stack([x[:64].mean(0), x[64:].mean(0)]).flatten(1)

    def distance():
        with torch.no_grad():
            s = G.eval()(torch.randn(256, 2, generator=torch.Generator().manual_seed(3))).flatten(1)
        return float(torch.cdist(s, templates).min(dim=1).values.mean() / 8)  # RMS per pixel

    before = distance()
    history = train_gan(G, D, x, epochs=60, lr=2e-3, batch_size=32, seed=1)
    after = distance()
    assert after < 0.3 * before, (before, after)
    assert all(torch.isfinite(torch.tensor(history["d_loss"] + history["g_loss"])))


def test_deterministic_under_seed():
    runs = []
    for _ in range(2):
        G, D = models()
        h = train_gan(G, D, bars(64), epochs=2, batch_size=32, seed=5)
        runs.append((h["d_loss"], G.state_dict()))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])


def test_ema_averages_generator_weights():
    G1, D1 = models()
    G2, D2 = models()
    train_gan(G1, D1, bars(64), epochs=3, batch_size=32, seed=2)
    train_gan(G2, D2, bars(64), epochs=3, batch_size=32, seed=2, ema=0.0)  # average of the last step only
    params1, params2 = dict(G1.named_parameters()), dict(G2.named_parameters())
    assert all(torch.allclose(params1[k], params2[k]) for k in params1)
    # BatchNorm statistics were re-estimated on prior samples (so they differ from the training ones)
    bn1, bn2 = G1.project[1], G2.project[1]
    assert not torch.allclose(bn1.running_mean, bn2.running_mean)
    assert not G2.training and bn2.momentum == 0.1
    G3, D3 = models()
    train_gan(G3, D3, bars(64), epochs=3, batch_size=32, seed=2, ema=0.9)
    assert not torch.allclose(G3.net[0].weight, G1.net[0].weight)
    with pytest.raises(ValueError, match="ema"):
        train_gan(G3, D3, bars(64), epochs=1, ema=1.0)
