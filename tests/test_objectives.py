"""Scalar objectives (regression outputs, sigmoid attributes, callables) on every chart.

Known answers: for a linear score ``s(x) = w·x + b`` the gradient is constant, so a sign step and an
Adam step (bias-corrected, ``m̂ / sqrt(v̂) = g / |g|``) both move every coordinate by ``lr`` and raise
``s`` by ``lr * ||w||_1`` per step.  From ``x0`` the search must stop after exactly
``ceil((threshold - s(x0)) / (lr * ||w||_1))`` steps (or the mirror image when decreasing).
"""

import math
import warnings

import pytest
import torch
from nflows.distributions import StandardNormal
from nflows.flows import Flow
from nflows.nn.nets import ResidualNet
from nflows.transforms import (
    AffineCouplingTransform,
    CompositeTransform,
    ReversePermutation,
)
from torch import nn

from xcf import (
    CounterfactualExplainer,
    DiffeomorphicCounterfactual,
    FlowChart,
    PixelChart,
    search,
)
from xcf.charts.base import Chart
from xcf.charts.generator import GeneratorChart
from xcf.evaluate.regression import knn_target_mean, regression_metrics
from xcf.objectives import ClassTarget, ScalarTarget

torch.set_num_threads(1)


class Linear(nn.Module):
    """``out = x.flatten(1) @ W.T + b`` with ``W`` of shape ``(outputs, D)``."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor | None = None, squeeze: bool = False):
        super().__init__()
        w = w if w.ndim == 2 else w.unsqueeze(0)
        self.w = nn.Parameter(w.clone())
        self.b = nn.Parameter(torch.zeros(w.shape[0]) if b is None else b.clone())
        self.squeeze = squeeze

    def forward(self, x):
        out = x.flatten(1) @ self.w.T + self.b
        return out[:, 0] if self.squeeze else out


def closed_form_steps(gap: torch.Tensor, lr: float, w: torch.Tensor) -> torch.Tensor:
    """Steps for a linear score to cover ``gap`` at ``lr * ||w||_1`` per step."""
    return torch.ceil(gap / (lr * w.abs().sum())).long()


W = torch.tensor([1.0, -2.0, 0.5, 0.25])


# ------------------------------------------------------------------------------ known answers
@pytest.mark.parametrize("squeeze", [False, True])
def test_maximise_linear_regressor_adam_closed_form(squeeze):
    model = Linear(W, torch.tensor([0.3]), squeeze=squeeze).eval()
    x = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.2, -0.1, 0.4, 0.0]])
    thr, lr = 2.0, 0.01
    res = CounterfactualExplainer(model, PixelChart(None)).counterfactual(
        x, objective=ScalarTarget(thr, "increase"), lr=lr, steps=500)
    s0 = model(x).reshape(-1).detach()
    expected = closed_form_steps(thr - s0, lr, W)
    assert res.success.all()
    assert torch.equal(res.steps, expected)
    # every coordinate moved by lr * sign(w) per step (Adam's first moments on a constant gradient)
    assert torch.allclose(res.counterfactual, x + expected[:, None] * lr * W.sign(), atol=1e-4)
    # the score is the regressor's output at the returned counterfactual, and it passed the threshold
    assert torch.allclose(res.score, model(res.counterfactual).reshape(-1).detach(), atol=1e-6)
    assert (res.score >= thr).all() and torch.allclose(res.start_score, s0)
    # one step earlier it had not: the first crossing is kept
    before = model(res.counterfactual - lr * W.sign()).reshape(-1)
    assert (before < thr).all()
    assert res.trace.shape == (2, 501) and torch.isnan(res.trace[0, expected[0] + 1:]).all()


def test_minimise_linear_regressor_sign_closed_form():
    model = Linear(W).eval()
    x0 = torch.tensor([[1.0, -1.0, 2.0, 0.5]])
    thr, lr = -1.3, 0.05
    out = search(model, lambda p: p, x0, ScalarTarget(thr, "decrease"), steps=200, lr=lr, update="sign")
    s0 = float(model(x0).detach())
    expected = math.ceil((s0 - thr) / (lr * float(W.abs().sum())))
    assert out["success"].item() and out["steps"].item() == expected
    assert torch.allclose(out["counterfactual"], x0 - expected * lr * W.sign(), atol=1e-5)
    assert out["score"].item() <= thr


def test_direction_is_respected_and_budget_failures_reported():
    model = Linear(W).eval()
    x = torch.zeros(1, 4)
    lr = 0.01
    up = search(model, lambda p: p, x, ScalarTarget(1.0, "increase"), steps=10, lr=lr)
    assert not up["success"].item() and up["steps"].item() == 10
    # ten Adam steps up: the score rose by 10 * lr * ||w||_1 and was reported, not dropped
    assert up["score"].item() == pytest.approx(10 * lr * float(W.abs().sum()), rel=1e-4)
    down = search(model, lambda p: p, x, ScalarTarget(-1.0, "decrease"), steps=10, lr=lr)
    assert down["score"].item() == pytest.approx(-10 * lr * float(W.abs().sum()), rel=1e-4)


def test_sigmoid_attribute_reaches_probability():
    # three attribute logits; push attribute 1 to p >= 0.99
    w = torch.stack([W, torch.tensor([0.5, 0.5, -1.0, 2.0]), -W])
    model = Linear(w).eval()
    x0 = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    lr = 0.05
    obj = ScalarTarget(0.99, "increase", select=1, transform="sigmoid")
    out = search(model, lambda p: p, x0, obj, steps=500, lr=lr, update="sign")
    gap = math.log(0.99 / 0.01) - float(model(x0)[0, 1].detach())
    assert out["success"].item()
    assert out["steps"].item() == math.ceil(gap / (lr * float(w[1].abs().sum())))
    assert 0.99 <= out["score"].item() < 1.0  # the score is the probability, not the logit
    # via an explainer with Adam, and decreasing to p <= 0.01
    explainer = CounterfactualExplainer(model, PixelChart(None))
    res = explainer.counterfactual(x0, objective=ScalarTarget(0.01, "decrease", select=1, transform="sigmoid"), lr=lr)
    assert res.success.item() and torch.sigmoid(model(res.counterfactual)[0, 1]).item() <= 0.01
    tr = res.trace[0, : res.steps.item() + 1]
    assert ((tr > 0) & (tr < 1)).all() and tr[0] > tr[-1]


def test_sigmoid_loss_does_not_vanish_far_from_threshold():
    obj = ScalarTarget(0.99, "increase", transform="sigmoid")
    v = torch.tensor([-30.0], requires_grad=True)
    loss, score, _ = obj(v, torch.arange(1))
    (g,) = torch.autograd.grad(loss.sum(), v)
    assert score.item() < 1e-12 and g.item() == pytest.approx(-1.0, abs=1e-6)


def test_callable_select_margin():
    w = torch.stack([W, -W])
    model = Linear(w).eval()
    x0 = torch.zeros(1, 4)
    lr = 0.02
    obj = ScalarTarget(1.6, "increase", select=lambda out: out[:, 0] - out[:, 1])
    out = search(model, lambda p: p, x0, obj, steps=300, lr=lr, update="sign")
    # d(margin)/dx = 2w: each sign step adds lr * ||2w||_1
    assert out["steps"].item() == math.ceil(1.6 / (lr * 2 * float(W.abs().sum())))
    margin = model(out["counterfactual"])[0]
    assert (margin[0] - margin[1]).item() == pytest.approx(out["score"].item(), abs=1e-5)


def test_per_sample_thresholds_and_batched_equals_per_example():
    model = Linear(W).eval()
    torch.manual_seed(0)
    x = torch.rand(5, 4)
    thr = torch.tensor([2.0, 2.5, 1.8, 3.0, 2.2])  # all above max s(x) = 1.75 on [0, 1]^4
    lr = 0.01
    explainer = CounterfactualExplainer(model, PixelChart(None))
    batch = explainer.counterfactual(x, objective=ScalarTarget(thr, "increase"), lr=lr, steps=1000)
    s0 = model(x).reshape(-1).detach()
    assert torch.equal(batch.steps, closed_form_steps(thr - s0, lr, W))
    assert batch.steps.unique().numel() >= 3
    assert torch.equal(batch.info["threshold"], thr.double())
    assert torch.equal(batch.info["direction"], torch.ones(5, dtype=torch.int8))
    for i in range(5):
        one = explainer.counterfactual(x[i:i + 1], objective=ScalarTarget(float(thr[i]), "increase"), lr=lr, steps=1000)
        assert one.steps.item() == batch.steps[i].item()
        assert torch.allclose(one.counterfactual[0], batch.counterfactual[i], atol=1e-6)
    # indexing a result keeps the per-sample threshold aligned
    assert torch.equal(batch[[3, 1]].info["threshold"], thr[[3, 1]].double())


def test_attribute_accepts_objective_as_target_or_keyword():
    model = Linear(W).eval()
    x = torch.rand(3, 4)
    explainer = CounterfactualExplainer(model, PixelChart(None))
    obj = ScalarTarget(2.0, "increase")
    a = explainer.attribute(x, target=obj, lr=0.01)
    b = explainer.attribute((x,), objective=obj, lr=0.01)
    assert isinstance(b, tuple) and torch.equal(a, b[0])
    assert (model(x + a).reshape(-1) >= 2.0).all()
    with pytest.raises(ValueError, match="either target .* or objective"):
        explainer.counterfactual(x, target=1, objective=obj)
    with pytest.raises(ValueError, match="both as target and as objective"):
        explainer.counterfactual(x, target=obj, objective=obj)


def test_under_no_grad_and_user_module_untouched():
    model = Linear(W).train()
    x = torch.rand(2, 4)
    with torch.no_grad():
        res = CounterfactualExplainer(model, PixelChart(None)).counterfactual(x, objective=ScalarTarget(3.0), lr=0.01)
    assert res.success.all()
    assert model.training and model.w.grad is None and model.w.requires_grad


def test_class_target_result_has_no_scalar_info():
    model = Linear(torch.stack([W, -W])).eval()
    res = CounterfactualExplainer(model, PixelChart(None)).counterfactual(torch.zeros(1, 4), 1, steps=50, lr=0.1)
    assert "threshold" not in res.info and res.target.item() == 1


# ------------------------------------------------------------------------------ every chart
def vector_flow(dim: int = 4, seed: int = 0) -> Flow:
    torch.manual_seed(seed)
    mask = torch.arange(dim) % 2
    layers = []
    for _ in range(3):
        layers += [AffineCouplingTransform(mask, lambda i, o: ResidualNet(i, o, hidden_features=16, num_blocks=1)),
                   ReversePermutation(dim)]
    return Flow(CompositeTransform(layers), StandardNormal([dim])).eval()


@pytest.mark.parametrize("direction,thr", [("increase", 2.5), ("decrease", -2.5)])
def test_flow_chart(direction, thr):
    model = Linear(W).eval()
    flow = vector_flow()
    torch.manual_seed(1)
    x = torch.rand(4, 4)
    explainer = DiffeomorphicCounterfactual(model, flow)
    res = explainer.counterfactual(x, objective=ScalarTarget(thr, direction), steps=400)
    assert res.success.all(), res.score
    value = model(res.counterfactual).reshape(-1).detach()
    assert torch.allclose(value, res.score, atol=1e-4)
    assert ((value >= thr) if direction == "increase" else (value <= thr)).all()
    decoded, _ = flow._transform.inverse(res.latent)
    assert torch.allclose(decoded, res.counterfactual, atol=1e-5)
    assert res.method == "diffeomorphic" and torch.equal(res.target, torch.full((4,), -1))
    # also through the chart with a generic explainer, and with a sigmoid attribute
    sig = CounterfactualExplainer(model, FlowChart(flow)).counterfactual(
        x, objective=ScalarTarget(0.99 if direction == "increase" else 0.01, direction, transform="sigmoid"), steps=400)
    assert sig.success.all()


class TinyGenerator(nn.Module):
    """``g(z) = tanh(A z + c)`` from 3 latent dims to 4 inputs."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.lin = nn.Linear(3, 4)

    def forward(self, z):
        return torch.tanh(self.lin(z))


class LatentChart(Chart):
    """A generator chart: encode by least-squares inversion (a few Adam steps), decode with ``g``."""

    name = "generator"
    lr = 5e-2
    steps = 500

    def __init__(self, generator):
        self.generator = generator

    def encode(self, x):
        z = torch.zeros(x.shape[0], 3, requires_grad=True)
        opt = torch.optim.Adam([z], lr=0.1)
        with torch.enable_grad():
            for _ in range(200):
                opt.zero_grad()
                (self.generator(z) - x).pow(2).sum().backward(inputs=[z])
                opt.step()
        return z.detach()

    def decode(self, p):
        return self.generator(p)

    def modules(self):
        return [self.generator]


def generator_chart(gen):
    return GeneratorChart(gen, latent_shape=3, restarts=4)


@pytest.mark.parametrize("make_chart", [generator_chart, LatentChart])
def test_generator_chart(make_chart):
    gen = TinyGenerator().eval()
    model = Linear(W).eval()
    with torch.no_grad():
        x = gen(torch.randn(3, 3, generator=torch.Generator().manual_seed(0)))
    explainer = CounterfactualExplainer(model, make_chart(gen))
    start = model(x).reshape(-1).detach()
    thr = start + 0.5
    res = explainer.counterfactual(x, objective=ScalarTarget(thr, "increase"), steps=500)
    assert res.success.all()
    value = model(res.counterfactual).reshape(-1).detach()
    assert (value >= thr - 1e-6).all() and torch.allclose(value, res.score, atol=1e-5)
    assert torch.allclose(res.counterfactual, gen(res.latent).detach(), atol=1e-5)


# ------------------------------------------------------------------------------ bad input
def test_output_index_that_does_not_exist():
    model = Linear(torch.stack([W, W, W])).eval()
    explainer = CounterfactualExplainer(model, PixelChart(None))
    with pytest.raises(ValueError, match="output index 5 does not exist.*shape \\(2, 3\\)"):
        explainer.counterfactual(torch.zeros(2, 4), objective=ScalarTarget(1.0, select=5))
    with pytest.raises(ValueError, match="pass select=<output index>"):
        explainer.counterfactual(torch.zeros(2, 4), objective=ScalarTarget(1.0))
    # negative indices count from the end, like Python
    res = explainer.counterfactual(torch.zeros(2, 4), objective=ScalarTarget(0.1, select=-1), lr=0.01)
    assert res.success.all()


@pytest.mark.parametrize("fn,got", [(lambda out: out, "\\(2, 3\\)"), (lambda out: out.sum(), "\\(\\)"),
                                    (lambda out: out[:1, 0], "\\(1,\\)"), (lambda out: 3.0, "float")])
def test_callable_returning_the_wrong_shape(fn, got):
    model = Linear(torch.stack([W, W, W])).eval()
    with pytest.raises(ValueError, match=f"select callable must return shape \\(2,\\), got {got}"):
        CounterfactualExplainer(model, PixelChart(None)).counterfactual(
            torch.zeros(2, 4), objective=ScalarTarget(1.0, select=fn))


def test_threshold_already_satisfied_is_immediate_success_with_warning():
    model = Linear(W, torch.tensor([1.0])).eval()
    x = torch.tensor([[0.0, 0.0, 0.0, 0.0], [-1.0, 1.0, 0.0, 0.0]])  # scores 1.0 and -2.0
    explainer = CounterfactualExplainer(model, PixelChart(None))
    with pytest.warns(UserWarning, match="1 of 2 samples already satisfy the objective.*samples \\[0\\]"):
        res = explainer.counterfactual(x, objective=ScalarTarget(0.5, "increase"), lr=0.01)
    assert res.success.all() and res.steps[0].item() == 0 and res.steps[1].item() > 0
    assert torch.equal(res.counterfactual[0], x[0])
    with pytest.warns(UserWarning, match="2 of 2 samples .*score <= threshold"):
        res = explainer.counterfactual(x, objective=ScalarTarget(5.0, "decrease"))
    assert res.success.all() and (res.steps == 0).all() and torch.equal(res.counterfactual, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        explainer.counterfactual(x, objective=ScalarTarget(3.0, "increase"), lr=0.01)


@pytest.mark.parametrize("kwargs,match", [
    (dict(threshold=1.0, direction="up"), "direction must be"),
    (dict(threshold=1.0, transform="softmax"), "transform must be"),
    (dict(threshold=float("nan")), "threshold must be finite"),
    (dict(threshold=1.5, transform="sigmoid"), "must lie in \\(0, 1\\)"),
    (dict(threshold=1.0, select=True), "select must be"),
    (dict(threshold=1.0, select="count"), "select must be"),
])
def test_bad_objective_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ScalarTarget(**kwargs)


def test_threshold_length_must_match_batch():
    model = Linear(W).eval()
    with pytest.raises(ValueError, match="threshold has 3 entries but the batch has 2 inputs"):
        CounterfactualExplainer(model, PixelChart(None)).counterfactual(
            torch.zeros(2, 4), objective=ScalarTarget(torch.tensor([1.0, 2.0, 3.0])))


# ------------------------------------------------------------------------------ regression metrics
def test_knn_target_mean_known_answer():
    train_x = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0]])
    values = torch.tensor([0.0, 1.0, 2.0, 10.0, 11.0])
    out = knn_target_mean(torch.tensor([[0.9], [10.6]]), train_x, values, k=2)
    assert torch.allclose(out, torch.tensor([0.5, 10.5]))
    # batched equals per example, chunking does not matter, images are flattened
    x = torch.rand(7, 1, 3, 3)
    tx, tv = torch.rand(20, 1, 3, 3), torch.rand(20)
    full = knn_target_mean(x, tx, tv, k=3)
    assert torch.allclose(full, knn_target_mean(x, tx, tv, k=3, batch_size=2))
    assert torch.allclose(full[4:5], knn_target_mean(x[4:5], tx, tv, k=3))
    brute = tv[torch.cdist(x.flatten(1), tx.flatten(1)).argsort(dim=1)[:, :3]].mean(dim=1)
    assert torch.allclose(full, brute)


@pytest.mark.parametrize("kwargs,match", [
    (dict(k=0), "k must be"), (dict(k=30), "k=30 exceeds the 20 training examples"),
])
def test_knn_target_mean_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        knn_target_mean(torch.rand(2, 4), torch.rand(20, 4), torch.rand(20), **kwargs)


def test_knn_target_mean_shape_errors():
    with pytest.raises(ValueError, match="train_values has 19 entries but train_x has 20"):
        knn_target_mean(torch.rand(2, 4), torch.rand(20, 4), torch.rand(19))
    with pytest.raises(ValueError, match="features"):
        knn_target_mean(torch.rand(2, 5), torch.rand(20, 4), torch.rand(20))


def test_regression_metrics():
    model = Linear(W).eval()
    x = torch.rand(3, 4)
    res = CounterfactualExplainer(model, PixelChart(None)).counterfactual(x, objective=ScalarTarget(2.0), lr=0.01)
    tx = torch.rand(30, 4)
    tv = model(tx).reshape(-1).detach()
    m = regression_metrics(res, model, train=(tx, tv), k=5)
    assert torch.allclose(m["value_start"], model(x).reshape(-1).detach())
    assert torch.allclose(m["value"], res.score, atol=1e-6)
    assert torch.equal(m["validity"], (m["value"] >= 2.0).float())
    assert torch.allclose(m["knn_target_mean"], knn_target_mean(res.counterfactual, tx, tv, k=5))
    assert torch.allclose(m["l2"], res.difference.flatten(1).norm(dim=1))
    with pytest.raises(ValueError, match="threshold"):
        regression_metrics(CounterfactualExplainer(model, PixelChart(None)).counterfactual(
            x, objective=ClassTarget(torch.zeros(3, dtype=torch.long))), model)
