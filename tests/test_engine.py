"""The search engine and the explainer contract, on tiny models with known answers."""

import math

import pytest
import torch
from tiny_models import two_class_linear
from torch import nn

import xcf
from xcf import ClassTarget, CounterfactualExplainer, PixelChart, search
from xcf.charts.base import Chart


def reachable_net(seed: int) -> nn.Module:
    """A small net whose every class is reachable: a one-hot-dominated linear read-out of x."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(6, 4))
    with torch.no_grad():
        net[0].weight.mul_(0.3).add_(torch.eye(4, 6) * 2.0)
    return net.eval()


def test_sign_steps_match_closed_form():
    # From x = 0 each sign step adds lr * ||w||_1 to the logit; stop at logit >= logit(0.99).
    w = torch.tensor([1.0, -2.0, 0.5])
    model = two_class_linear(w)
    lr = 0.1
    out = search(model, lambda p: p, torch.zeros(1, 3), ClassTarget(torch.tensor([1]), 0.99),
                 steps=100, lr=lr, update="sign")
    expected = math.ceil(math.log(0.99 / 0.01) / (lr * w.abs().sum().item()))
    assert out["success"].item()
    assert out["steps"].item() == expected
    assert torch.allclose(out["counterfactual"], expected * lr * w.sign().unsqueeze(0))


def test_adam_matches_torch_optim_adam():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).eval()
    x0 = torch.randn(1, 5)
    target = torch.tensor([2])
    steps, lr = 7, 0.05
    out = search(model, lambda p: p, x0, ClassTarget(target, confidence=1.0), steps=steps, lr=lr)
    p = x0.clone().requires_grad_(True)
    opt = torch.optim.Adam([p], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(p), target, reduction="sum").backward()
        opt.step()
    assert not out["success"].item()  # confidence 1.0 is never reached in float32 here
    assert torch.allclose(out["latent"], p.detach(), atol=1e-6)


def test_early_stop_keeps_first_crossing():
    model = reachable_net(1)
    x = torch.rand(8, 6)
    target = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    res = CounterfactualExplainer(model, PixelChart(bounds=None)).counterfactual(
        x, target, confidence=0.9, steps=400, lr=0.05)
    assert res.success.all()
    for i in range(len(x)):
        t = int(res.steps[i])
        trace = res.trace[i]
        assert trace[t] >= 0.9
        assert (trace[:t] < 0.9).all()
        assert torch.isnan(trace[t + 1:]).all()
    # the classifier judges exactly the returned tensor
    prob = torch.softmax(model(res.counterfactual), 1).gather(1, target[:, None]).squeeze(1)
    assert torch.allclose(prob, res.target_prob, atol=1e-6)


def test_failures_are_reported_not_dropped():
    # In [0, 1]^3 the best logit is w·1 = 1 < logit(0.99): the target is unreachable.
    model = two_class_linear(torch.tensor([0.5, 0.25, 0.25]))
    x = torch.full((3, 3), 0.5)
    res = CounterfactualExplainer(model, PixelChart((0.0, 1.0))).counterfactual(x, 1, steps=50, lr=0.1)
    assert len(res) == 3
    assert not res.success.any()
    assert (res.steps == 50).all()
    assert (res.counterfactual <= 1).all() and (res.counterfactual >= 0).all()
    assert torch.allclose(res.counterfactual, torch.ones(3, 3))  # it did reach the corner
    assert res.success_rate == 0.0


def test_already_satisfied_stops_at_zero_steps():
    model = two_class_linear(torch.tensor([1.0, 1.0]))
    x = torch.tensor([[5.0, 5.0]])
    res = CounterfactualExplainer(model, PixelChart(None)).counterfactual(x, 1)
    assert res.success.item() and res.steps.item() == 0
    assert torch.equal(res.counterfactual, x)


def test_deterministic():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 4)).eval()
    x = torch.rand(5, 6)
    explainer = CounterfactualExplainer(model, PixelChart())
    a = explainer.counterfactual(x, 1, steps=200)
    b = explainer.counterfactual(x, 1, steps=200)
    assert torch.equal(a.counterfactual, b.counterfactual) and torch.equal(a.steps, b.steps)


def test_float64_and_additional_forward_args():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3).double()

        def forward(self, x, scale, bias):
            return self.lin(x) * scale[:, None] + bias

    torch.manual_seed(4)
    model = Scaled().eval()
    x = torch.rand(4, 4, dtype=torch.float64)
    scale = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    explainer = CounterfactualExplainer(model, PixelChart(None))
    res = explainer.counterfactual(x, 2, additional_forward_args=(scale, 0.5), steps=300, lr=0.1)
    assert res.counterfactual.dtype == torch.float64
    one = explainer.counterfactual(x[2:3], 2, additional_forward_args=(scale[2:3], 0.5), steps=300, lr=0.1)
    assert torch.allclose(one.counterfactual[0], res.counterfactual[2])


def test_non_finite_score_stops_as_failure_at_last_finite_iterate():
    class Fragile(nn.Module):
        def forward(self, x):
            s = x.sum(1)
            s = torch.where(s > 2.0, torch.full_like(s, float("nan")), s)
            return torch.stack([torch.zeros_like(s), s], 1)

    res = CounterfactualExplainer(Fragile(), PixelChart(None)).counterfactual(
        torch.zeros(2, 2), 1, steps=100, lr=0.3)
    assert not res.success.any()
    assert torch.isfinite(res.counterfactual).all()
    assert (res.counterfactual.sum(1) <= 2.0).all()


def test_user_modules_untouched():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    model[0].weight.requires_grad_(False)
    model.eval()
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.rand(3, 4)
    x_copy = x.clone()
    CounterfactualExplainer(model, PixelChart()).counterfactual(x, 0, steps=20)
    assert all(p.grad is None for p in model.parameters())
    assert not model[0].weight.requires_grad and model[0].bias.requires_grad
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert not model.training
    assert torch.equal(x, x_copy)


def test_noise_tunnel_wraps_explainer():
    from captum.attr import NoiseTunnel

    torch.manual_seed(7)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    x = torch.rand(2, 1, 4, 4)
    nt = NoiseTunnel(CounterfactualExplainer(model, PixelChart(None)))
    out = nt.attribute(x, nt_type="smoothgrad", nt_samples=3, stdevs=0.05, target=[0, 1], steps=20)
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize(
    "inputs, target, match",
    [
        (torch.rand(4), 0, "dimensions"),
        (torch.full((2, 4), float("nan")), 0, "NaN"),
        (torch.full((2, 4), float("inf")), 0, "Inf"),
        (torch.rand(2, 4).long(), 0, "floating-point"),
        (torch.rand(0, 4), 0, "empty"),
        (torch.rand(2, 4), 3, r"out of range.*3 classes"),
        (torch.rand(2, 4), -1, "out of range"),
        (torch.rand(2, 4), [0, 1, 2], "3 entries but the batch has 2"),
        (torch.rand(2, 4), None, "target is required"),
        (torch.rand(2, 4), torch.tensor([0.5, 1.0]), "integer class indices"),
    ],
)
def test_bad_input_errors(inputs, target, match):
    model = nn.Linear(4, 3).eval()
    with pytest.raises((ValueError, TypeError), match=match):
        CounterfactualExplainer(model, PixelChart()).counterfactual(inputs, target, steps=3)


def test_training_mode_batchnorm_refused_and_mode_kept():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    model.train()
    buffers = model[1].running_mean.clone()
    with pytest.raises(ValueError, match="training mode and contains BatchNorm"):
        CounterfactualExplainer(model, PixelChart()).counterfactual(torch.rand(2, 4), 0, steps=3)
    assert model.training and torch.equal(buffers, model[1].running_mean)


def test_classifier_output_must_be_2d():
    model = nn.Sequential(nn.Linear(4, 3), nn.Flatten(0)).eval()
    with pytest.raises(ValueError, match=r"\(batch, classes\)"):
        CounterfactualExplainer(model, PixelChart()).counterfactual(torch.rand(2, 4), 0, steps=3)


def test_output_kinds_agree():
    torch.manual_seed(8)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).eval()
    x = torch.rand(3, 4)
    kw = dict(steps=100, lr=0.05)
    logits = CounterfactualExplainer(net, PixelChart()).counterfactual(x, 2, **kw)
    probs = CounterfactualExplainer(lambda v: torch.softmax(net(v), 1), PixelChart(), output="probs").counterfactual(x, 2, **kw)
    logp = CounterfactualExplainer(lambda v: torch.log_softmax(net(v), 1), PixelChart(), output="log_probs").counterfactual(x, 2, **kw)
    assert torch.allclose(logits.counterfactual, probs.counterfactual, atol=1e-4)
    assert torch.allclose(logits.counterfactual, logp.counterfactual, atol=1e-5)
    with pytest.raises(ValueError, match="output must be"):
        CounterfactualExplainer(net, PixelChart(), output="scores")


def test_chart_decoding_to_wrong_shape_is_refused():
    class Squash(Chart):
        name = "broken"

        def encode(self, x):
            return x.flatten(1)

        def decode(self, p):
            return p

    with pytest.raises(ValueError, match="decodes to shape"):
        CounterfactualExplainer(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).eval(), Squash()).counterfactual(
            torch.rand(2, 1, 2, 2), 0, steps=2)


def test_result_indexing_and_summary():
    model = two_class_linear(torch.tensor([1.0, 1.0]))
    res = CounterfactualExplainer(model, PixelChart(None)).counterfactual(
        torch.tensor([[5.0, 5.0], [0.0, 0.0]]), 1, steps=200, lr=0.1)
    first = res[0]
    assert len(first) == 1 and first.success.item()
    assert len(res[res.success]) == int(res.success.sum())
    s = res.summary()
    assert s["n"] == 2 and s["success_rate"] == 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_device_follows_inputs():
    model = nn.Linear(4, 3).cuda().eval()
    res = CounterfactualExplainer(model, PixelChart()).counterfactual(torch.rand(3, 4, device="cuda"), 1, steps=20)
    assert res.counterfactual.is_cuda and res.steps.is_cuda


def test_public_api_exports():
    for name in xcf.__all__:
        assert hasattr(xcf, name)
