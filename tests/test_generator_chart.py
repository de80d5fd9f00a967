"""Generator inversion (batched restarts, encoder starts, early stop) and the generator chart."""

import pytest
import torch
from torch import nn

from xcf.charts.generator import GeneratorChart, InversionResult, invert
from xcf.models.gan import DCGANGenerator

torch.set_num_threads(1)


def smooth_generator(d: int = 3, seed: int = 0) -> nn.Module:
    """A user's small MLP generator z (d) -> 1x4x4 image in (0, 1)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(d, 32), nn.Tanh(), nn.Linear(32, 16), nn.Sigmoid(), nn.Unflatten(1, (1, 4, 4))
    ).eval()


class Periodic(nn.Module):
    """x = σ(A sin(3z) + B z): a rugged inversion landscape with many local minima."""

    def __init__(self, d: int = 2, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("A", torch.randn(16, d, generator=g) * 2)
        self.register_buffer("B", torch.randn(16, d, generator=g))

    def forward(self, z):
        return torch.sigmoid(torch.sin(3 * z) @ self.A.T + z @ self.B.T).reshape(-1, 1, 4, 4)


class LogitLinear(nn.Module):
    """x = σ(W z + b) with W of full column rank: the exact inverse is a least-squares solve."""

    def __init__(self, d: int = 4, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(torch.randn(16, d, generator=g))
        self.b = nn.Parameter(torch.randn(16, generator=g) * 0.1)

    def forward(self, z):
        return torch.sigmoid(z @ self.W.T + self.b).reshape(-1, 1, 4, 4)

    def exact_encoder(self, x):
        logits = torch.logit(x.flatten(1)) - self.b
        return torch.linalg.lstsq(self.W, logits.T).solution.T


def own_images(G, n, d, seed=1, scale=1.0):
    dtype = next(iter(G.parameters()), torch.empty(0)).dtype
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype) * scale
    with torch.no_grad():
        return G(z), z


def test_recovers_images_the_generator_made():
    G = smooth_generator()
    x, _ = own_images(G, 12, 3)
    res = invert(G, x, (3,), restarts=4, steps=600, tol=1e-3)
    assert isinstance(res, InversionResult)
    assert res.z.shape == (12, 3) and res.error.shape == (12,) and res.restart_errors.shape == (12, 4)
    # small compared with how much the generator's images differ from each other
    spread = (x - x.mean(0)).pow(2).mean().sqrt()
    assert res.error.max() <= 1e-3 < spread / 50
    with torch.no_grad():
        assert torch.allclose(G(res.z), res.reconstruction, atol=1e-6)
    # early stop: every sample stopped before the budget
    assert (res.steps < 600).all()


def dcgan(d: int = 4, seed: int = 0) -> nn.Module:
    """An untrained DCGAN generator whose BatchNorm statistics come from one pass over prior samples."""
    torch.manual_seed(seed)
    G = DCGANGenerator(d, image_size=8, width=4)
    for m in G.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None
    with torch.no_grad():
        G(torch.randn(256, d))
    return G.eval()


def test_recovers_dcgan_latents():
    G = dcgan()
    x, _ = own_images(G, 6, 4)
    res = invert(G, x, 4, restarts=2, steps=800, tol=2e-3)
    spread = (x - x.mean(0)).pow(2).mean().sqrt()
    assert res.error.max() <= 2e-3 < spread / 20
    assert res.reconstruction.shape == x.shape


def test_restarts_never_worse_and_improve_worst_case():
    G = Periodic()
    x, _ = own_images(G, 30, 2, scale=1.5)
    one = invert(G, x, 2, restarts=1, steps=200, tol=1e-3, seed=0)
    many = invert(G, x, 2, restarts=8, steps=200, tol=1e-3, seed=0)
    # restart 0 of the 8 is the single restart; it runs the same trajectory unless a sibling
    # reached tol first (then all of that sample's restarts stop, with the best at most tol)
    unsolved = many.error > 1e-3
    assert unsolved.any() and (~unsolved).any()
    assert torch.allclose(many.restart_errors[unsolved, 0], one.error[unsolved], atol=1e-6)
    assert (many.error <= torch.maximum(one.error, torch.tensor(1e-3)) + 1e-6).all()
    assert many.error.max() < one.error.max()
    assert many.error.mean() < 0.5 * one.error.mean()


def test_batched_equals_per_example():
    # float64, so that the batch's different summation order stays far below the tolerance
    G = smooth_generator().double()
    x, _ = own_images(G, 5, 3)
    noise = 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=x.dtype)
    x[3:] = (x[3:] + noise[3:]).clamp(0, 1)  # samples 3, 4 lie off the generator's range
    batch = invert(G, x, (3,), restarts=3, steps=150, tol=0.01)
    assert 0 < batch.steps.min() < 150 and batch.steps.max() == 150  # some stop early, some do not
    for i in range(5):
        one = invert(G, x[i:i + 1], (3,), restarts=3, steps=150, tol=0.01)
        assert torch.allclose(one.z[0], batch.z[i], atol=1e-8)
        assert torch.allclose(one.error[0], batch.error[i], atol=1e-10)
        assert one.restart[0] == batch.restart[i] and one.steps[0] == batch.steps[i]


def test_deterministic_under_seed():
    G = Periodic()
    x, _ = own_images(G, 8, 2, scale=1.5)
    a = invert(G, x, 2, restarts=3, steps=50, seed=5)
    b = invert(G, x, 2, restarts=3, steps=50, seed=5)
    c = invert(G, x, 2, restarts=3, steps=50, seed=6)
    assert torch.equal(a.z, b.z) and torch.equal(a.steps, b.steps)
    assert not torch.equal(a.restart_errors, c.restart_errors)


def test_encoder_start():
    G = LogitLinear()
    x, _ = own_images(G, 7, 4)
    res = invert(G, x, 4, encoder=G.exact_encoder, restarts=3, steps=300, tol=1e-4)
    # the encoder's start is exact: restart 0 wins at once
    assert (res.steps == 0).all() and (res.restart == 0).all()
    assert res.error.max() <= 1e-4
    # an encoder returning (mu, logvar), like a VAE's, uses mu
    res2 = invert(G, x, 4, encoder=lambda t: (G.exact_encoder(t), torch.zeros(7, 4)), restarts=2, steps=300, tol=1e-4)
    assert torch.allclose(res2.z, res.z)
    # without the encoder the same budget does worse or equal
    blind = invert(G, x, 4, restarts=3, steps=300, tol=1e-4)
    assert (blind.steps > 0).all()


def test_encoder_start_improves_a_rugged_inversion():
    G = Periodic()
    x, z = own_images(G, 20, 2, scale=1.5)
    noisy_encoder = lambda t: z + 0.05  # noqa: E731 - a rough amortised estimate
    with_enc = invert(G, x, 2, encoder=noisy_encoder, restarts=1, steps=200, tol=1e-3)
    without = invert(G, x, 2, restarts=1, steps=200, tol=1e-3)
    assert with_enc.error.mean() < without.error.mean()
    assert with_enc.error.max() <= 1e-3


def test_float64_and_latent_shapes():
    G = smooth_generator().double()
    x, _ = own_images(G, 3, 3)
    x = x.double()
    res = invert(G, x, [3], restarts=2, steps=20)
    assert res.z.dtype == torch.float64 and res.error.dtype == torch.float64
    # a generator taking (N, d, 1, 1) latents
    G4 = dcgan()
    y, _ = own_images(G4, 2, 4)
    assert invert(G4, y, (4, 1, 1), restarts=2, steps=5).z.shape == (2, 4, 1, 1)


def test_bad_input():
    G = smooth_generator()
    x, _ = own_images(G, 2, 3)
    with pytest.raises(ValueError, match="restarts"):
        invert(G, x, 3, restarts=0)
    with pytest.raises(ValueError, match="latent_shape"):
        invert(G, x, (3, 0))
    with pytest.raises(ValueError, match="encoder returned shape"):
        invert(G, x, 3, encoder=lambda t: torch.zeros(2, 5))
    with pytest.raises(ValueError, match="encoder produced NaN"):
        invert(G, x, 3, encoder=lambda t: torch.full((2, 3), float("nan")))
    with pytest.raises(ValueError, match="generator makes samples of shape"):
        invert(G, torch.rand(2, 1, 5, 5), 3, steps=3)
    with pytest.raises(ValueError, match="inputs contain NaN"):
        invert(G, x.masked_fill(x > 0.5, float("nan")), 3)
    with pytest.raises(ValueError, match="generator produced NaN or Inf values at the inversion's starting"):
        invert(lambda z: G(z) / 0 * 0, x, 3)


# -- the chart ------------------------------------------------------------------------------------

def test_chart_encode_decode_and_flag():
    G = smooth_generator()
    x, _ = own_images(G, 4, 3)
    x[0] = 1.0 - x[0]  # not in the generator's range
    chart = GeneratorChart(G, 3, restarts=4, inversion_steps=300, recon_threshold=0.05)
    chart.check(x)
    coords = chart.start(x)
    z = coords.start
    assert z.shape == (4, 3) and torch.equal(z, chart.encode(x))  # no state between calls: same answer
    with torch.no_grad():
        error = (chart.decode(z) - x).flatten(1).pow(2).mean(1).sqrt()
    with pytest.warns(UserWarning, match="1 of 4 inputs are poorly reconstructed"):
        info = chart.check_reconstruction(error)
    assert info["poor_reconstruction"].tolist() == [True, False, False, False]
    assert torch.equal(coords.info["inversion_steps"], chart.invert(x).steps)
    assert chart.name == "generator" and chart.modules() == [G]


def test_chart_check_errors():
    G = smooth_generator()
    x = torch.rand(2, 1, 4, 4)
    with pytest.raises(ValueError, match="latent_shape \\(5,\\) does not fit the generator"):
        GeneratorChart(G, 5).check(x)
    with pytest.raises(ValueError, match="generator makes samples of shape \\(1, 4, 4\\).*\\(1, 8, 8\\)"):
        GeneratorChart(G, 3).check(torch.rand(2, 1, 8, 8))

    class NaNGen(nn.Module):
        def forward(self, z):
            return torch.full((z.shape[0], 1, 4, 4), float("nan"))

    with pytest.raises(ValueError, match="generator produced NaN"):
        GeneratorChart(NaNGen(), 3).check(x)
    with pytest.raises(ValueError, match="recon_threshold"):
        GeneratorChart(G, 3, recon_threshold=0)
    with pytest.raises(TypeError, match="generator must be a callable"):
        GeneratorChart("G", 3)
