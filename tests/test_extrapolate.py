"""Tests of xcf.extrapolate: principal knowledge descent on toy generators with known gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from xcf.extrapolate import FLOOR, ExtrapolationHistory, KnowledgeExtrapolation

torch.set_num_threads(1)


class Split(nn.Module):
    """``G(z) = [a·z1 + b, c·z2]``: ``a, b`` carry the first coordinate, ``c`` the second."""

    latent_dim = 2

    def __init__(self) -> None:
        super().__init__()
        self.ab = nn.Parameter(torch.tensor([1.0, 0.0]))
        self.c = nn.Parameter(torch.tensor([1.0]))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.ab[0] * z[:, 0] + self.ab[1], self.c[0] * z[:, 1]], dim=1)


def first(x: torch.Tensor) -> torch.Tensor:
    """``P_l = σ(x1)``: knowledge ``l`` lives in the first coordinate only."""
    return torch.sigmoid(x[:, 0])


def weakly_coupled(x: torch.Tensor) -> torch.Tensor:
    """``P_l = σ(x1 + 0.01·x2)``: the second coordinate carries a little of ``l``."""
    return torch.sigmoid(x[:, 0] + 0.01 * x[:, 1])


def small_generator(seed: int = 0, batchnorm: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(3, 16)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(16))
    layers += [nn.ReLU(), nn.Linear(16, 5), nn.Sigmoid()]
    G = nn.Sequential(*layers)
    G.latent_dim = 3
    return G


def flat(G: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in G.parameters()])


def gradient(G: nn.Module, posterior, z: torch.Tensor) -> torch.Tensor:
    """``∇_θ E[log(1 − P_l(G(z)))]`` computed independently of the module under test."""
    G = G.eval()
    params = list(G.parameters())
    H = torch.log((1 - posterior(G(z))).clamp_min(FLOOR)).mean()
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(H, params)])


def first_batch(seed: int, batch_size: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The first training batch when evaluation codes are given (so none are drawn before it)."""
    return torch.randn((batch_size,) + shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------- the update
def test_only_the_parameters_that_carry_l_move():
    G = Split()
    edited, history = KnowledgeExtrapolation(G, first, epsilon=0.05, steps=10).run()
    assert edited.c.item() == 1.0                          # zero gradient: never moves
    assert (edited.ab.detach() != G.ab.detach()).all()     # a and b move
    assert history.changed == pytest.approx(2 / 3)
    assert history.moved == pytest.approx([2 / 3] * 10)
    assert history.Delta > 0 and history.posterior_after > history.posterior_before
    # sign steps: every moving entry moved by exactly ε per step
    assert (edited.ab.detach() - G.ab.detach()).abs().max().item() <= 10 * 0.05 + 1e-6


def test_threshold_separates_weak_from_strong_gradients_where_plain_moves_everything():
    G = Split()
    z = first_batch(0, 256, (2,))
    g = gradient(Split(), weakly_coupled, z).abs()
    lam = 0.02
    assert g[2] < lam < g[:2].min()                        # the toy is what we think it is
    fixed = torch.randn(64, 2)
    edited, history = KnowledgeExtrapolation(
        G, weakly_coupled, lam=lam, epsilon=0.01, steps=5, batch_size=256, eval_latents=fixed
    ).run()
    assert edited.c.item() == 1.0 and history.moved == pytest.approx([2 / 3] * 5)
    plain, plain_history = KnowledgeExtrapolation(
        G, weakly_coupled, method="plain", epsilon=0.5, steps=5, batch_size=256, eval_latents=fixed
    ).run()
    assert plain.c.item() != 1.0 and plain_history.moved == pytest.approx([1.0] * 5)
    assert math.isnan(plain_history.lam[0])


def test_one_truncated_step_matches_the_formula():
    G = small_generator()
    z = first_batch(3, 32, (3,))
    g = gradient(small_generator(), first, z)
    lam = float(g.abs().median())
    edited, history = KnowledgeExtrapolation(
        G, first, lam=lam, epsilon=1e-2, steps=1, batch_size=32, seed=3, eval_latents=torch.randn(8, 3)
    ).run()
    expected = flat(G) - 1e-2 * torch.sign(g) * (g.abs() > lam)
    torch.testing.assert_close(flat(edited), expected)
    assert history.moved[0] == pytest.approx(float((g.abs() > lam).float().mean()))
    assert history.lam[0] == pytest.approx(lam)


def test_one_plain_step_matches_the_formula():
    G = small_generator()
    z = first_batch(3, 32, (3,))
    g = gradient(small_generator(), first, z)
    edited, _ = KnowledgeExtrapolation(
        G, first, method="plain", epsilon=0.3, steps=1, batch_size=32, seed=3, eval_latents=torch.randn(8, 3)
    ).run()
    torch.testing.assert_close(flat(edited), flat(G) - 0.3 * g)


@pytest.mark.parametrize("q", [0.05, 0.3, 1.0])
def test_keep_fraction_moves_exactly_the_top_fraction(q):
    G = small_generator()
    n = flat(G).numel()
    z = first_batch(1, 32, (3,))
    g = gradient(small_generator(), first, z)
    k = math.ceil(q * n)
    top = torch.zeros(n, dtype=torch.bool)
    top[g.abs().topk(k).indices] = True
    lam = float(g.abs()[top].min())
    top &= g != 0                                          # entries without a gradient cannot move
    edited, history = KnowledgeExtrapolation(
        G, first, keep_fraction=q, epsilon=1e-2, steps=4, batch_size=32, seed=1, eval_latents=torch.randn(8, 3)
    ).run()
    assert history.moved[0] == pytest.approx(float(top.sum()) / n)
    assert history.lam[0] == pytest.approx(lam)
    assert max(history.moved) <= k / n
    # after the first step exactly the top-k entries moved: check with a one-step run
    one, _ = KnowledgeExtrapolation(
        G, first, keep_fraction=q, epsilon=1e-2, steps=1, batch_size=32, seed=1, eval_latents=torch.randn(8, 3)
    ).run()
    assert torch.equal(flat(one) != flat(G), top)


def test_lambda_above_every_gradient_moves_nothing():
    G = small_generator()
    edited, history = KnowledgeExtrapolation(G, first, lam=1e6, epsilon=0.1, steps=5).run()
    assert torch.equal(flat(edited), flat(G))
    assert history.moved == [0.0] * 5 and history.changed == 0.0
    assert history.Delta == 0.0 and history.delta == 0.0 and math.isnan(history.ratio)


# ------------------------------------------------------------------------------- measuring the edit
def test_delta_and_change_are_measured_on_the_evaluation_codes():
    G = small_generator()
    z = torch.randn(40, 3)
    features = lambda x: x[:, 1:] * 2.0                     # noqa: E731  other knowledge
    edited, h = KnowledgeExtrapolation(G, first, keep_fraction=0.2, epsilon=0.05, steps=10,
                                       features=features, eval_latents=z).run()
    with torch.no_grad():
        before, after = G.eval()(z), edited(z)
        H0 = torch.log(1 - first(before)).mean()
        H1 = torch.log(1 - first(after)).mean()
    assert torch.equal(h.latents, z)
    assert h.objective_before == pytest.approx(float(H0), rel=1e-5)
    assert h.Delta == pytest.approx(float(H0 - H1), rel=1e-4)
    assert h.delta == pytest.approx(float((features(after) - features(before)).abs().mean()), rel=1e-5)
    assert h.ratio == pytest.approx(h.Delta / h.delta)
    assert h.Delta > 0
    assert len(h.objective) == len(h.moved) == len(h.lam) == 10
    summary = h.summary()
    assert summary["Delta"] == h.Delta and summary["mean_moved"] == pytest.approx(0.2, abs=0.01)


def test_default_features_are_the_images():
    G = small_generator()
    z = torch.randn(16, 3)
    edited, h = KnowledgeExtrapolation(G, first, epsilon=0.02, steps=3, eval_latents=z).run()
    with torch.no_grad():
        assert h.delta == pytest.approx(float((edited(z) - G(z)).abs().mean()), rel=1e-5)


def test_evaluation_is_in_eval_mode_so_chunking_does_not_matter():
    G = small_generator(batchnorm=True)
    with torch.no_grad():                                   # give BatchNorm non-trivial statistics
        G.train()(torch.randn(256, 3) * 3 + 1)
    z = torch.randn(30, 3)
    common = dict(lam=1e6, steps=1, eval_latents=z)
    _, h1 = KnowledgeExtrapolation(G, first, batch_size=1, **common).run()
    _, h7 = KnowledgeExtrapolation(G, first, batch_size=7, **common).run()
    assert h1.posterior_before == pytest.approx(h7.posterior_before, rel=1e-6)
    with torch.no_grad():
        expected = first(G.eval()(z)).mean()
    assert h1.posterior_before == pytest.approx(float(expected), rel=1e-6)


# --------------------------------------------------------------------------------- user's modules
def test_user_generator_is_untouched():
    G = small_generator(batchnorm=True).train()
    G[0].weight.requires_grad_(False)
    G[3].weight.grad = torch.ones_like(G[3].weight)
    state = {k: v.clone() for k, v in G.state_dict().items()}
    grads = [p.grad for p in G.parameters()]
    flags = [p.requires_grad for p in G.parameters()]
    classifier = nn.Sequential(nn.Linear(5, 1), nn.Sigmoid())
    edited, history = KnowledgeExtrapolation(
        G, lambda x: classifier(x)[:, 0], epsilon=0.05, steps=5, features=classifier
    ).run()
    for k, v in G.state_dict().items():                     # parameters and BatchNorm buffers
        assert torch.equal(v, state[k]), k
    assert [p.grad for p in G.parameters()] == grads        # same objects (None or the user's tensor)
    assert [p.requires_grad for p in G.parameters()] == flags
    assert G.training and all(m.training for m in G.modules())
    assert all(p.grad is None for p in classifier.parameters())
    # the edit happened on a copy, returned in eval mode with the user's requires_grad flags
    assert edited is not G and not edited.training
    assert [p.requires_grad for p in edited.parameters()] == flags
    assert all(p.grad is None for p in edited.parameters())
    assert not torch.equal(flat(edited), flat(G)) and history.changed > 0
    # frozen parameters are edited too (the copy is edited as a whole)
    assert not torch.equal(edited[0].weight, G[0].weight)


def test_determinism_under_a_seed():
    G = small_generator()
    kwargs = dict(keep_fraction=0.1, epsilon=0.02, steps=8, batch_size=16)
    a, ha = KnowledgeExtrapolation(G, first, seed=5, **kwargs).run()
    b, hb = KnowledgeExtrapolation(G, first, seed=5, **kwargs).run()
    c, hc = KnowledgeExtrapolation(G, first, seed=6, **kwargs).run()
    assert torch.equal(flat(a), flat(b)) and ha.objective == hb.objective and ha.Delta == hb.Delta
    assert torch.equal(ha.latents, hb.latents)
    assert not torch.equal(flat(a), flat(c)) and not torch.equal(ha.latents, hc.latents)


def test_runs_under_no_grad():
    with torch.no_grad():
        _, h = KnowledgeExtrapolation(small_generator(), first, epsilon=0.02, steps=3).run()
    assert h.Delta > 0


# -------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(keep_fraction=0.0), ValueError, r"keep_fraction must lie in \(0, 1\]"),
        (dict(keep_fraction=1.5), ValueError, r"keep_fraction must lie in \(0, 1\]"),
        (dict(lam=-0.1), ValueError, "lam must be >= 0"),
        (dict(epsilon=0.0), ValueError, "epsilon must be > 0"),
        (dict(epsilon=-1.0), ValueError, "epsilon must be > 0"),
        (dict(epsilon=float("nan")), ValueError, "epsilon must be a finite number"),
        (dict(epsilon="1"), TypeError, "epsilon must be a finite number"),
        (dict(lam=0.1, keep_fraction=0.5), ValueError, "not both"),
        (dict(method="plain", keep_fraction=0.5), ValueError, "truncated' only"),
        (dict(method="adam"), ValueError, "method must be one of"),
        (dict(steps=0), ValueError, "steps must be an int >= 1"),
        (dict(batch_size=0), ValueError, "batch_size must be an int >= 1"),
        (dict(features="f"), TypeError, "features must be callable"),
        (dict(eval_latents=torch.randn(4, 2)), ValueError, r"eval_latents must have shape \(m, 3\)"),
    ],
)
def test_bad_settings(kwargs, error, match):
    with pytest.raises(error, match=match):
        KnowledgeExtrapolation(small_generator(), first, **kwargs)


def test_bad_modules():
    with pytest.raises(TypeError, match="generator must be a torch.nn.Module"):
        KnowledgeExtrapolation(lambda z: z, first, 3)
    with pytest.raises(ValueError, match="latent_shape is required"):
        KnowledgeExtrapolation(nn.Sequential(nn.Linear(3, 5)), first)
    with pytest.raises(ValueError, match="no parameters"):
        KnowledgeExtrapolation(nn.Sigmoid(), first, 3)
    with pytest.raises(TypeError, match="posterior must be callable"):
        KnowledgeExtrapolation(small_generator(), 0.5)
    bn = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)).train()
    with pytest.raises(ValueError, match="posterior is in training mode"):
        KnowledgeExtrapolation(small_generator(), bn)


def test_posterior_without_gradient_is_refused():
    G = small_generator()
    with pytest.raises(ValueError, match="does not require grad"):
        KnowledgeExtrapolation(G, lambda x: first(x).detach(), steps=1).run()
    head = nn.Linear(5, 1)                                  # requires grad, but through its own weights only
    with pytest.raises(ValueError, match="no gradient path to the generated images"):
        KnowledgeExtrapolation(G, lambda x: torch.sigmoid(head(x.detach()))[:, 0], steps=1).run()
    assert head.weight.grad is None and torch.equal(flat(G), flat(small_generator()))


def test_posterior_outside_unit_interval_is_refused():
    G = small_generator()
    with pytest.raises(ValueError, match=r"outside \[0, 1\].*softmax or sigmoid"):
        KnowledgeExtrapolation(G, lambda x: 4 * x[:, 0] - 2, steps=1).run()   # logits
    # valid at the start, pushed above 1 by the edit
    with pytest.raises(ValueError, match=r"outside \[0, 1\] during the edit"):
        KnowledgeExtrapolation(G, lambda x: 1.5 * x[:, 0], epsilon=0.2, steps=40).run()


def test_posterior_output_shape_and_type():
    G = small_generator()
    with pytest.raises(ValueError, match="one probability per sample"):
        KnowledgeExtrapolation(G, lambda x: x[:, :2], steps=1).run()
    with pytest.raises(TypeError, match="must return a tensor"):
        KnowledgeExtrapolation(G, lambda x: 0.5, steps=1).run()
    _, h = KnowledgeExtrapolation(G, lambda x: x[:, :1], epsilon=0.01, steps=2).run()   # (N, 1) is fine
    assert isinstance(h, ExtrapolationHistory)


# ---------------------------------------------------------------------------------------- a GAN
def test_delta_positive_on_a_briefly_trained_gan():
    from xcf.datasets import load_digits
    from xcf.models.gan import DCGANDiscriminator, DCGANGenerator, train_gan

    x, _ = load_digits("train")
    torch.manual_seed(0)
    G, D = DCGANGenerator(8, image_size=8, width=8), DCGANDiscriminator(8, width=8)
    train_gan(G, D, x[:256], epochs=3, batch_size=64)
    torch.manual_seed(1)
    detector = nn.Sequential(nn.Flatten(), nn.Linear(64, 1), nn.Sigmoid())   # "some pattern of ink"
    posterior = lambda images: detector(images)[:, 0]                        # noqa: E731
    edited, h = KnowledgeExtrapolation(G, posterior, keep_fraction=0.05, epsilon=5e-3, steps=20,
                                       batch_size=32, eval_size=64).run()
    assert h.Delta > 0 and h.posterior_after > h.posterior_before
    assert max(h.moved) <= 0.05 + 1e-3


# ------------------------------------------------------------------------------- the digits report
def test_plain_step_is_matched_to_a_target_descent():
    from xcf.apps.extrapolate import match_plain_step

    G, z = small_generator(), torch.randn(64, 3)
    _, target = KnowledgeExtrapolation(G, first, keep_fraction=0.05, epsilon=0.02, steps=10, eval_latents=z).run()
    _, h, tried = match_plain_step(G, first, target.Delta, steps=10, eval_latents=z, tolerance=0.01)
    assert h.method == "plain" and abs(h.Delta - target.Delta) <= 0.01 * target.Delta
    assert (h.epsilon, h.Delta) in tried
    with pytest.raises(ValueError, match="target must be > 0"):
        match_plain_step(G, first, 0.0)


@pytest.mark.slow
def test_digits_demo_end_to_end(tmp_path):
    from xcf.apps.extrapolate import run_extrapolation_demo

    summary = run_extrapolation_demo(tmp_path / "out", tmp_path / "cache", knowledge=1, steps=10, quick=True)
    for name in ("extrapolation.png", "extrapolation.json", "extrapolation.md"):
        assert (tmp_path / "out" / name).is_file()
    t, p = summary["truncated"], summary["plain"]
    assert t["Delta"] > 0 and t["posterior_after"] > t["posterior_before"]
    assert abs(p["Delta"] - t["Delta"]) <= 0.1 * t["Delta"]               # compared at (about) equal Δ
    assert t["ratio"] == pytest.approx(t["Delta"] / t["delta"]) and t["changed"] < p["changed"]
    with pytest.raises(ValueError, match="digit class"):
        run_extrapolation_demo(tmp_path / "out", tmp_path / "cache", knowledge=10)
