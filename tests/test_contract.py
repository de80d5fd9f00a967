"""One contract, every explainer: the same test run over the diffeomorphic, approximate and adversarial ones.

Captum's way (``tests/attr/test_targets.py``): batch equals single, a tuple in gives a tuple out, it works
under ``torch.no_grad()`` (as Captum's metrics call it), it leaves the user's modules exactly as found, and
its options are keyword-only with the same names for the same things.
"""

import inspect

import pytest
import torch
from nflows.distributions import StandardNormal
from nflows.flows import Flow
from nflows.nn.nets import ResidualNet
from nflows.transforms import AffineCouplingTransform, CompositeTransform, ReversePermutation
from torch import nn

import xcf


def _classifier():
    """A linear classifier sharp enough that every search can reach a target, at different steps."""
    torch.manual_seed(0)
    clf = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).double().eval()
    with torch.no_grad():
        clf[1].weight.mul_(8.0)
    return clf


def _flow():
    torch.manual_seed(1)
    mask = torch.arange(16) % 2
    layers = []
    for _ in range(2):
        layers += [AffineCouplingTransform(mask, lambda i, o: ResidualNet(i, o, hidden_features=16, num_blocks=1)),
                   ReversePermutation(16)]
    return Flow(CompositeTransform(layers), StandardNormal([16])).double().eval()


def _generator():
    torch.manual_seed(2)
    return nn.Sequential(nn.Linear(3, 16), nn.Sigmoid(), nn.Unflatten(1, (1, 4, 4))).double().eval()


def diffeomorphic(clf):
    return xcf.DiffeomorphicCounterfactual(clf, _flow())


def approximate(clf):
    return xcf.ApproximateCounterfactual(clf, _generator(), (3,), restarts=2, inversion_steps=60)


def adversarial(clf):
    return xcf.AdversarialCounterfactual(clf)


def pgd_l2(clf):
    return xcf.AdversarialCounterfactual(clf, norm="l2", radius=0.8, random_start=False)


def pgd_linf(clf):
    return xcf.AdversarialCounterfactual(clf, norm="linf", radius=0.3, random_start=False)


EXPLAINERS = [diffeomorphic, approximate, adversarial, pgd_l2, pgd_linf]
KW = {"steps": 40}


@pytest.fixture(params=EXPLAINERS, ids=lambda f: f.__name__)
def made(request):
    clf = _classifier()
    return clf, request.param(clf)


def _inputs(n=4):
    return torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 0.8 + 0.1


def test_batch_equals_single(made):
    _, explainer = made
    x, target = _inputs(6), torch.tensor([0, 1, 2, 1, 0, 2])
    batch = explainer.counterfactual(x, target=target, confidence=0.6, steps=300)
    assert batch.success.any() and batch.steps.unique().numel() > 1  # samples stop at different steps
    for i in range(len(x)):
        one = explainer.counterfactual(x[i:i + 1], target=target[i:i + 1], confidence=0.6, steps=300)
        torch.testing.assert_close(one.counterfactual, batch.counterfactual[i:i + 1], rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(one.reconstruction_error, batch.reconstruction_error[i:i + 1], rtol=1e-9, atol=1e-10)
        assert int(one.steps) == int(batch.steps[i]) and bool(one.success) == bool(batch.success[i])


def test_tuple_in_tuple_out_and_tensor_in_tensor_out(made):
    _, explainer = made
    x = _inputs(2)
    out = explainer.attribute((x,), target=1, **KW)
    assert isinstance(out, tuple) and len(out) == 1 and out[0].shape == x.shape and out[0].dtype == x.dtype
    plain = explainer.attribute(x, target=1, **KW)
    assert isinstance(plain, torch.Tensor)
    torch.testing.assert_close(plain, out[0])


def test_works_under_no_grad(made):
    _, explainer = made
    x = _inputs(2)
    free = explainer.counterfactual(x, target=2, **KW)
    with torch.no_grad():
        under = explainer.counterfactual(x, target=2, **KW)
        assert not torch.is_grad_enabled()  # the caller's mode is restored after the call
    torch.testing.assert_close(under.counterfactual, free.counterfactual)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train-mode-no-batchnorm"])
def test_user_modules_are_left_as_found(made, training):
    clf, explainer = made
    clf.train(training)
    clf[1].bias.requires_grad_(False)  # a partly frozen model stays partly frozen
    modules = [clf, *[m for m in explainer.chart.modules() if isinstance(m, nn.Module)]]
    state = [{k: v.clone() for k, v in m.state_dict().items()} for m in modules]
    flags = [[p.requires_grad for p in m.parameters()] for m in modules]
    explainer.counterfactual(_inputs(3), target=0, **KW)
    for m, before, req in zip(modules, state, flags):
        assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
        assert [p.requires_grad for p in m.parameters()] == req
        assert all(p.grad is None for p in m.parameters())
    assert clf.training == training and not clf[1].bias.requires_grad


def test_update_is_a_per_call_option_and_the_chart_is_unchanged(made):
    _, explainer = made
    before = (explainer.chart.update, explainer.chart.lr, explainer.chart.steps)
    x = _inputs(2)
    l2 = explainer.counterfactual(x, target=1, update="l2", lr=0.01, steps=3, confidence=0.999)
    sign = explainer.counterfactual(x, target=1, update="sign", lr=0.01, steps=3, confidence=0.999)
    assert (explainer.chart.update, explainer.chart.lr, explainer.chart.steps) == before
    assert (l2.steps == 3).all() and (sign.steps == 3).all()
    # three sign steps move every coordinate by exactly 0.03 (unless clamped); L2 steps do not
    assert not torch.allclose(l2.latent, sign.latent)
    with pytest.raises(ValueError, match="update must be"):
        explainer.counterfactual(x, target=1, update="newton", **KW)


def test_options_are_keyword_only_with_shared_names(made):
    _, explainer = made
    params = inspect.signature(type(explainer).__init__).parameters
    positional = [n for n, p in params.items() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    assert positional[:2] == ["self", "forward_func"]
    assert set(positional[2:]) <= {"flow", "generator", "latent_shape"}  # the models, nothing else
    assert params["output"].kind == params["output"].KEYWORD_ONLY and params["output"].default == "logits"
    call = inspect.signature(explainer.counterfactual).parameters
    for name in ("confidence", "steps", "lr", "update", "objective", "progress", "additional_forward_args"):
        assert call[name].kind == call[name].KEYWORD_ONLY, name


def test_chart_declares_its_eval_requirement():
    """A flow chart refuses a training-mode flow whoever builds the explainer (it used to be the explainer's flag)."""
    clf, flow = _classifier(), _flow().train()
    for explainer in (xcf.DiffeomorphicCounterfactual(clf, flow), xcf.CounterfactualExplainer(clf, xcf.FlowChart(flow))):
        with pytest.raises(ValueError, match="training mode"):
            explainer.counterfactual(_inputs(2), target=1, steps=5)
    assert flow.training
    assert xcf.FlowChart.needs_eval and not xcf.PixelChart.needs_eval and not xcf.GeneratorChart.needs_eval


@pytest.mark.parametrize("make", [
    lambda: xcf.FlowChart(_flow(), recon_tol=1e-3),
    lambda: xcf.GeneratorChart(_generator(), 3, tol=1e-3),
    lambda: xcf.DiffeomorphicCounterfactual(_classifier(), _flow(), recon_tol=1e-3),
    lambda: xcf.ApproximateCounterfactual(_classifier(), _generator(), 3, tol=1e-3),
], ids=["FlowChart", "GeneratorChart", "Diffeomorphic", "Approximate"])
def test_renamed_options_still_work_with_a_deprecation_warning(make):
    with pytest.warns(DeprecationWarning, match="renamed"):
        made = make()
    chart = getattr(made, "chart", made)
    assert getattr(chart, "max_recon_error", None) == 1e-3 or getattr(chart, "inversion_tol", None) == 1e-3
