"""AdversarialCounterfactual: free pixel-space ascent and PGD in L-inf / L2 balls."""

import math

import pytest
import torch
import torch.nn.functional as F
from captum.robust import PGD
from tiny_models import two_class_linear
from torch import nn

from xcf import CounterfactualExplainer, PixelChart
from xcf.explain.adversarial import AdversarialCounterfactual, BallChart


def mlp(seed: int = 0, d_in: int = 16, classes: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(d_in, 12), nn.Tanh(), nn.Linear(12, classes))
    with torch.no_grad():
        net[1].weight.mul_(3.0)  # steep enough that every class is reachable in a small ball
        net[3].weight.mul_(4.0)
    return net.double().eval()


# -- agreement with captum ------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")
@pytest.mark.parametrize("seed,radius,step", [(0, 0.1, 0.02), (1, 0.3, 0.05)])
def test_linf_pgd_matches_captum(seed, radius, step):
    net = mlp(seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(6, 1, 4, 4, generator=g, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 3, 1, 2])
    n_steps = 15
    loss = lambda out, t: F.cross_entropy(out, t, reduction="none")  # noqa: E731
    ref = PGD(net, loss, lower_bound=0.0, upper_bound=1.0).perturb(
        x, radius, step, n_steps, target, targeted=True, random_start=False, norm="Linf"
    )
    pgd = AdversarialCounterfactual(net, norm="linf", radius=radius, random_start=False)
    # confidence=1.0: no sample stops early, as in captum
    res = pgd.counterfactual(x, target, confidence=1.0, steps=n_steps, lr=step)
    assert (res.steps == n_steps).all()
    assert torch.allclose(res.counterfactual, ref, atol=1e-12, rtol=0)
    # the test exercises both projections: some values sit on the ball's surface, some on a bound
    on_ball = (res.counterfactual - x).abs() >= radius - 1e-12
    on_bound = (res.counterfactual == 0) | (res.counterfactual == 1)
    assert on_ball.any() and on_bound.any()


# -- feasibility ----------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("random_start", [True, False])
def test_pgd_stays_in_ball_and_bounds(norm, random_start):
    net = mlp(2)
    x = torch.rand(8, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    r = 0.15 if norm == "linf" else 0.6
    pgd = AdversarialCounterfactual(net, norm=norm, radius=r, random_start=random_start)
    res = pgd.counterfactual(x, target=torch.arange(8) % 4, confidence=0.999, steps=60)
    for p in (res.latent_start, res.counterfactual):
        d = (p - x).flatten(1)
        size = d.abs().max(dim=1).values if norm == "linf" else d.norm(dim=1)
        assert (size <= r * (1 + 1e-9)).all()
        assert p.min() >= 0 and p.max() <= 1
    if random_start:
        assert not torch.equal(res.latent_start, x)
    else:
        assert torch.equal(res.latent_start, x)


def test_l2_random_start_is_uniform_in_the_ball_for_any_batch_size():
    # image-shaped samples with N == W: captum's L2 random start broadcasts its radii over the last axis
    r = 0.5
    for n in (1, 4, 4000):
        chart = BallChart("l2", r, bounds=None, seed=n)
        x = torch.zeros(n, 1, 4, 4, dtype=torch.float64)
        delta = (chart.encode(x) - x).flatten(1)
        norms = delta.norm(dim=1)
        assert (norms <= r * (1 + 1e-12)).all()
        # each sample is one radius times a unit direction: a uniform point of the 16-d ball
        if n == 4000:
            u = (norms / r) ** 16  # ~ U(0, 1) for a uniform point of the ball
            assert abs(float(u.mean()) - 0.5) < 0.03
            assert abs(float((u < 0.25).double().mean()) - 0.25) < 0.03
            direction = delta / norms.unsqueeze(1)
            assert float(direction.mean(0).abs().max()) < 0.05  # no preferred direction


def test_linf_random_start_is_uniform_in_the_cube_and_seeded():
    r = 0.2
    x = torch.full((2000, 3), 0.5, dtype=torch.float64)
    a = BallChart("linf", r, seed=7).encode(x) - x
    assert a.abs().max() <= r
    assert abs(float((a.abs() / r).mean()) - 0.5) < 0.02
    assert torch.equal(BallChart("linf", r, seed=7).encode(x) - x, a)  # same seed, same start
    assert not torch.equal(BallChart("linf", r, seed=8).encode(x) - x, a)


def test_random_start_is_clamped_to_bounds():
    x = torch.zeros(50, 4, dtype=torch.float64)
    p = BallChart("linf", 0.3, bounds=(0.0, 1.0)).encode(x)
    assert p.min() >= 0 and p.max() <= 0.3


# -- consistency ----------------------------------------------------------------------------------
def test_free_mode_is_the_pixel_chart_search():
    net = mlp(6)
    x = torch.rand(4, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    adv = AdversarialCounterfactual(net).counterfactual(x, target=2, steps=50)
    ref = CounterfactualExplainer(net, PixelChart((0.0, 1.0))).counterfactual(x, target=2, steps=50)
    assert adv.method == "adversarial"
    assert torch.equal(adv.counterfactual, ref.counterfactual)
    assert torch.equal(adv.steps, ref.steps)


# -- known answers --------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_flips_linear_model_exactly_when_the_ball_reaches_the_boundary(norm):
    # p(1) >= 0.9  <=>  w·x' >= log 9; the cheapest change is r·sign(w) (L-inf) or r·w/||w|| (L2),
    # so the smallest radius that flips x is (log 9 - w·x) / ||w||_1 or / ||w||_2.
    w = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    model = two_class_linear(w)
    x = torch.tensor([[0.3, 0.8, -0.4, -0.6], [1.0, 1.0, 1.0, -1.0]], dtype=torch.float64)
    need = math.log(9) - x @ w
    dual = w.abs().sum() if norm == "linf" else w.norm()
    r_star = need / dual
    best = w.sign() if norm == "linf" else w / w.norm()
    for i in range(2):
        xi = x[i : i + 1]
        for factor, flips in ((1.05, True), (0.95, False)):
            r = float(r_star[i] * factor)
            for random_start in (False, True):
                pgd = AdversarialCounterfactual(model, bounds=None, norm=norm, radius=r, random_start=random_start)
                res = pgd.counterfactual(xi, target=1, confidence=0.9, steps=400)
                assert bool(res.success[0]) is flips
                if not flips and not random_start:
                    # a failure ends at the best point of the ball
                    assert torch.allclose(res.counterfactual, xi + r * best, atol=1e-9)


def test_free_mode_flips_a_linear_model():
    model = two_class_linear(torch.tensor([1.0, -1.0, 2.0]))
    x = torch.full((3, 3), 0.5)
    res = AdversarialCounterfactual(model, bounds=(0.0, 1.0)).counterfactual(x, target=1, confidence=0.9)
    assert res.success.all()
    assert res.target_prob.min() >= 0.9


# -- contract -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(radius=0.1), ValueError, "without a norm"),
        (dict(norm="linf"), ValueError, "needs a radius"),
        (dict(norm="l1", radius=0.1), ValueError, "norm must be"),
        (dict(norm="l2", radius=0.0), ValueError, "radius must be"),
        (dict(norm="l2", radius=float("nan")), ValueError, "radius must be"),
        (dict(norm="l2", radius="0.1"), TypeError, "radius must be a number"),
        (dict(bounds=(1.0, 0.0)), ValueError, "low < high"),
        (dict(bounds=3), TypeError, "bounds must be"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        AdversarialCounterfactual(mlp(), **kwargs)


def test_inputs_outside_bounds_are_refused():
    pgd = AdversarialCounterfactual(mlp().float(), norm="linf", radius=0.1)
    with pytest.raises(ValueError, match="outside bounds"):
        pgd.counterfactual(torch.rand(2, 1, 4, 4) + 1.5, target=0)


def test_ball_chart_keeps_no_state_between_calls():
    """Each call's projection is centred on its own inputs, whatever other calls came after it."""
    chart = BallChart("linf", 0.1, bounds=None, random_start=False)
    a, b = torch.zeros(2, 3), torch.ones(3, 3)
    coords_a = chart.start(a)
    chart.start(b)
    far = torch.full((1, 3), 5.0)
    assert torch.equal(coords_a.project(far, torch.tensor([1])), torch.full((1, 3), 0.1))
