"""The generator's encoder (xcf.models.encoder) and the latent search that starts from it (GeneratorChart)."""

import math

import pytest
import torch
from torch import nn

from xcf import ApproximateCounterfactual
from xcf.charts.generator import GeneratorChart
from xcf.charts.inversion import invert
from xcf.models import DCGANGenerator, reference
from xcf.models.encoder import LatentEncoder, fit_encoder, train_encoder
from xcf.models.gan import build_gan, gan_recipe

torch.set_num_threads(1)


def generator(d: int = 4, seed: int = 0) -> nn.Module:
    """A user's small generator z (d) -> 1x8x8 image in (0, 1)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 64), nn.Tanh(), nn.Linear(64, 64), nn.Sigmoid(), nn.Unflatten(1, (1, 8, 8))).eval()


def samples(G, n, d, seed=1):
    with torch.no_grad():
        return G(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)))


def rms(a, b):
    return (a - b).flatten(1).pow(2).mean(1).sqrt()


def test_encoder_learns_to_invert_and_beats_the_prior_mean():
    G = generator()
    x, x_test = samples(G, 256, 4), samples(G, 64, 4, seed=2)
    E, metrics = fit_encoder(G, x, latent_dim=4, epochs=60, seed=0)
    with torch.no_grad():
        encoded = rms(G(E(x_test)), x_test).mean()
        at_zero = rms(G(torch.zeros(64, 4)), x_test).mean()
    assert float(encoded) < 0.5 * float(at_zero)
    assert metrics["epochs"] == 60 and math.isfinite(metrics["recon_rms"])
    assert not E.training


def test_generator_is_left_as_found_and_training_is_deterministic():
    G = generator()
    G[0].weight.requires_grad_(False)  # the user's own choice, restored as it was
    before = {k: v.clone() for k, v in G.state_dict().items()}
    flags = [p.requires_grad for p in G.parameters()]
    x = samples(G, 64, 4)
    E1, _ = fit_encoder(G, x, latent_dim=4, epochs=2, seed=3)
    E2, _ = fit_encoder(G, x, latent_dim=4, epochs=2, seed=3)
    assert all(torch.equal(before[k], v) for k, v in G.state_dict().items())
    assert [p.requires_grad for p in G.parameters()] == flags
    assert all(p.grad is None for p in G.parameters())
    assert all(torch.equal(a, b) for a, b in zip(E1.state_dict().values(), E2.state_dict().values()))


def test_bad_generators_and_images_are_refused():
    G = DCGANGenerator(4, image_size=8).train()
    x = torch.rand(16, 1, 8, 8)
    with pytest.raises(ValueError, match="training mode"):
        fit_encoder(G, x, epochs=1)
    with pytest.raises(ValueError, match="samples of shape \\(1, 8, 8\\), the images have shape \\(1, 12, 12\\)"):
        fit_encoder(G.eval(), torch.rand(16, 1, 12, 12), epochs=1)
    with pytest.raises(ValueError, match="NaN"):
        fit_encoder(G.eval(), torch.full((4, 1, 8, 8), float("nan")), epochs=1)
    with pytest.raises(ValueError, match="latent_dim"):
        fit_encoder(generator(), x, epochs=1)  # a plain Sequential does not say its latent size
    with pytest.raises(TypeError, match="latent_dim"):
        train_encoder(nn.Linear(64, 4), G.eval(), x, epochs=1)


def test_gan_encoder_does_not_change_the_generators_initialisation():
    config = gan_recipe((1, 8, 8))
    with_encoder = build_gan(config)
    config["model"].pop("encoder_width")
    without = build_gan(config)
    assert without.encoder is None and isinstance(with_encoder.encoder, LatentEncoder)
    own = {k: v for k, v in with_encoder.state_dict().items() if not k.startswith("encoder.")}
    assert own.keys() == without.state_dict().keys()
    assert all(torch.equal(v, without.state_dict()[k]) for k, v in own.items())


def test_shipped_gan_encoder_starts_close_and_the_refined_inversion_matches_random_restarts():
    from xcf.datasets import load_digits

    G, metrics = reference("digits-gan")
    x, _ = load_digits("test")
    x = x[:40]
    with torch.no_grad():
        start = rms(G(G.encoder(x)), x)
    assert float(start.mean()) == pytest.approx(metrics["encoder_test_rms"], abs=0.03)  # recorded on the test split
    encoded = invert(G, x, G.latent_dim, encoder=G.encoder, restarts=1, steps=300)
    random = invert(G, x, G.latent_dim, restarts=8, steps=300)
    assert float(encoded.error.mean()) <= float(random.error.mean()) + 0.01


def test_chart_defaults_one_restart_with_an_encoder_and_an_l2_step_that_grows_with_the_latent():
    G = generator(d=8)
    assert GeneratorChart(G, 8).restarts == 8
    assert GeneratorChart(G, 8, encoder=lambda v: torch.zeros(v.shape[0], 8)).restarts == 1
    chart = GeneratorChart(G, 8)
    assert chart.update == "l2"
    assert chart.step_size(torch.zeros(1, 8)) == pytest.approx(1.0)  # sqrt(8 / 8)
    assert GeneratorChart(G, 32).step_size(torch.zeros(1, 32)) == pytest.approx(2.0)
    assert GeneratorChart(G, 8, lr=0.3).step_size(torch.zeros(1, 8)) == 0.3
    assert GeneratorChart(G, 8, confidence=0.999).confidence == 0.999
    for bad in (0, -1.0, True, "1"):
        with pytest.raises(ValueError, match="lr"):
            GeneratorChart(G, 8, lr=bad)
    for bad in (0.0, 1.0, 2, True):
        with pytest.raises(ValueError, match="confidence"):
            GeneratorChart(G, 8, confidence=bad)


def test_search_stays_inside_the_prior_ball_or_the_starts_radius():
    d = 4
    G = generator(d)
    clf = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval()
    torch.manual_seed(0)
    x = samples(G, 6, d)
    explainer = ApproximateCounterfactual(clf, G, (d,), restarts=2, inversion_steps=100, lr=5.0)
    result = explainer.counterfactual(x, target=2, steps=50, confidence=0.999999)
    radius = result.latent_start.norm(dim=1).clamp_min(math.sqrt(d) + 3 / math.sqrt(2))
    assert bool((result.latent.norm(dim=1) <= radius * (1 + 1e-5)).all())
    # with huge steps the ball binds: some latent ends on its surface
    assert bool(((result.latent.norm(dim=1) - radius).abs() < 1e-4 * radius).any())


def test_encoder_output_that_does_not_fit_the_latent_is_refused_before_any_inversion():
    G = generator()
    clf = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval()
    explainer = ApproximateCounterfactual(clf, G, (4,), encoder=lambda v: torch.zeros(v.shape[0], 5))
    with pytest.raises(ValueError, match="encoder returned shape \\(2, 5\\), which does not fit 2 latents of shape \\(4,\\)"):
        explainer.counterfactual(samples(G, 2, 4), target=1)


def test_generator_of_another_range_is_refused_before_any_inversion():
    d = 4
    G = nn.Sequential(nn.Linear(d, 64), nn.Tanh(), nn.Unflatten(1, (1, 8, 8))).eval()  # samples in [-1, 1]
    clf = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval()
    x = torch.rand(3, 1, 8, 8)
    with pytest.raises(ValueError, match="the generator makes samples in \\[-.*but the inputs lie in \\[0"):
        ApproximateCounterfactual(clf, G, (d,)).counterfactual(x, target=1)
    rescaled = nn.Sequential(G, nn.Sigmoid())  # mapped into the images' range: accepted
    ApproximateCounterfactual(clf, rescaled.eval(), (d,), inversion_steps=5).counterfactual(x, target=1, steps=2)
