"""Tests of xcf.maps: difference maps, per-target means, Captum attributions side by side, figures."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from captum.attr import IntegratedGradients, Saliency  # noqa: E402
from torch import nn  # noqa: E402

import xcf  # noqa: E402
from xcf.evaluate.maps import compare_attributions, difference_map, mean_map_per_target
from xcf.report.maps import overlay, plot_map_grid, to_captum_image, to_image
from xcf.result import CounterfactualResult

torch.set_num_threads(1)


def make_result(inputs, counterfactual, target, success=None):
    n = inputs.shape[0]
    return CounterfactualResult(
        inputs=inputs, counterfactual=counterfactual, latent=counterfactual, latent_start=inputs,
        reconstruction=inputs, reconstruction_error=torch.zeros(n), target=torch.as_tensor(target),
        success=torch.ones(n, dtype=torch.bool) if success is None else success,
        steps=torch.zeros(n, dtype=torch.long), score=torch.ones(n), start_score=torch.zeros(n),
        trace=torch.zeros(n, 1), wall_time=0.0,
    )


class LinearImage(nn.Module):
    """logits = W flatten(x): the input gradient of class k is W[k] reshaped."""

    def __init__(self, shape=(1, 4, 4), classes=3):
        super().__init__()
        torch.manual_seed(0)
        self.shape = shape
        self.lin = nn.Linear(int(torch.tensor(shape).prod()), classes, bias=False)

    def forward(self, x):
        return self.lin(x.flatten(1))


def test_difference_map_signed_and_absolute():
    x = torch.rand(3, 1, 4, 4)
    xc = torch.rand(3, 1, 4, 4)
    r = make_result(x, xc, [0, 1, 2])
    assert torch.equal(difference_map(r), xc - x)
    assert torch.equal(difference_map(r, absolute=True), (xc - x).abs())
    with pytest.raises(TypeError, match="CounterfactualResult"):
        difference_map(xc - x)


def test_mean_map_per_target_known_values():
    x = torch.zeros(4, 1, 2, 2)
    xc = torch.stack([torch.full((1, 2, 2), v) for v in (1.0, 3.0, -2.0, 5.0)])
    r = make_result(x, xc, [0, 0, 1, 2], success=torch.tensor([True, True, True, False]))
    maps = mean_map_per_target(r)
    assert sorted(maps) == [0, 1, 2]
    assert torch.equal(maps[0], torch.full((1, 2, 2), 2.0))
    assert torch.equal(maps[1], torch.full((1, 2, 2), -2.0))
    signed_vs_abs = make_result(x[:2], torch.stack([xc[0], -xc[0]]), [0, 0])
    assert torch.equal(mean_map_per_target(signed_vs_abs)[0], torch.zeros(1, 2, 2))
    assert torch.equal(mean_map_per_target(signed_vs_abs, absolute=True)[0], torch.ones(1, 2, 2))
    assert sorted(mean_map_per_target(r, only_valid=True)) == [0, 1]
    with pytest.raises(ValueError, match="class targets"):
        mean_map_per_target(make_result(x, xc, [-1, -1, -1, -1]))


def test_compare_attributions_known_gradients():
    model = LinearImage()
    x = torch.rand(3, 1, 4, 4)
    target = torch.tensor([0, 2, 1])
    ready = torch.randn(3, 1, 4, 4)
    maps = compare_attributions(model, x, target, {"given": ready})
    assert list(maps) == ["given", "saliency", "integrated_gradients"]
    w = model.lin.weight.detach().reshape(3, 1, 4, 4)
    assert torch.equal(maps["given"], ready)
    assert torch.allclose(maps["saliency"], w[target], atol=1e-6)  # signed gradient
    # IG of a linear model with a zero baseline is exactly x * W[k].
    assert torch.allclose(maps["integrated_gradients"], x * w[target], atol=1e-5)
    for m in maps.values():
        assert m.shape == x.shape and not m.requires_grad


def test_compare_attributions_matches_captum_and_keeps_model():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3)).train()
    x = torch.rand(4, 1, 4, 4)
    maps = compare_attributions(model, x, 1, include=("saliency", "integrated_gradients", "input_x_gradient"), ig_steps=16)
    ref_sal = Saliency(model).attribute(x.clone().requires_grad_(), target=1, abs=False)
    ref_ig = IntegratedGradients(model).attribute(x.clone(), target=1, n_steps=16)
    assert torch.allclose(maps["saliency"], ref_sal, atol=1e-6)
    assert torch.allclose(maps["integrated_gradients"], ref_ig, atol=1e-5)
    assert torch.allclose(maps["input_x_gradient"], x * ref_sal, atol=1e-6)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert not x.requires_grad


def test_compare_attributions_with_counterfactual_explainer():
    model = LinearImage().eval()
    x = torch.rand(5, 1, 4, 4) * 0.5
    explainer = xcf.CounterfactualExplainer(model, xcf.PixelChart())
    kwargs = {"steps": 200, "lr": 0.05}
    maps = compare_attributions(model, x, 2, {"counterfactual": explainer}, include=(), explainer_kwargs=kwargs)
    result = explainer.counterfactual(x, target=2, **kwargs)
    assert torch.allclose(maps["counterfactual"], result.difference)
    # batched equals per example
    one = compare_attributions(model, x[3:4], 2, {"counterfactual": explainer}, include=("saliency",), explainer_kwargs=kwargs)
    assert torch.allclose(one["counterfactual"], maps["counterfactual"][3:4], atol=1e-6)
    # a result and a callable are accepted too
    via_result = compare_attributions(model, x, 2, {"cf": result}, include=())
    via_fn = compare_attributions(model, x, 2, {"fn": lambda inp, t: inp * 0 + t.view(-1, 1, 1, 1)}, include=())
    assert torch.equal(via_result["cf"], result.difference)
    assert torch.equal(via_fn["fn"], torch.full_like(x, 2.0))


def test_compare_attributions_errors():
    model = LinearImage()
    x = torch.rand(2, 1, 4, 4)
    with pytest.raises(ValueError, match="unknown attribution method"):
        compare_attributions(model, x, 0, include=("lime",))
    with pytest.raises(ValueError, match="returned maps of shape"):
        compare_attributions(model, x, 0, {"bad": torch.zeros(2, 16)})
    with pytest.raises(TypeError, match="each explainer must be"):
        compare_attributions(model, x, 0, {"bad": 3})
    with pytest.raises(ValueError, match="clashes"):
        compare_attributions(model, x, 0, {"saliency": torch.zeros_like(x)})
    with pytest.raises(ValueError, match="target is required"):
        compare_attributions(model, x, None)
    with pytest.raises(ValueError, match="NaN"):
        compare_attributions(model, x * float("nan"), 0)


def test_image_conversions():
    assert to_image(torch.ones(3, 5, 4) * torch.tensor([0.0, 1.0, 2.0]).view(3, 1, 1)).shape == (5, 4)
    assert float(to_image(torch.ones(3, 5, 4) * torch.tensor([0.0, 1.0, 2.0]).view(3, 1, 1))[0, 0]) == 1.0
    assert to_captum_image(torch.zeros(3, 5, 4)).shape == (5, 4, 3)
    with pytest.raises(ValueError, match="one image"):
        to_image(torch.zeros(2, 1, 5, 4))


def test_overlay_and_grid():
    x = torch.rand(3, 1, 8, 8)
    maps = {"a": torch.randn(3, 1, 8, 8), "b": torch.zeros(3, 1, 8, 8)}
    ax = overlay(x[0], maps["a"][0], colorbar=True, title="t")
    assert ax.get_title() == "t"
    plt.close(ax.figure)
    fig = plot_map_grid(x, maps, titles=["A", "B"], row_labels=["r0", "r1", "r2"], counterfactual=x, scale="column")
    assert len(fig.axes) == 3 * 4
    assert [a.get_title() for a in fig.axes[:4]] == ["input", "counterfactual", "A", "B"]
    plt.close(fig)
    fig = plot_map_grid(x, maps, n=2)
    assert len(fig.axes) == 2 * 3
    plt.close(fig)
    with pytest.raises(ValueError, match="2 titles for 1 maps"):
        plot_map_grid(x, {"a": maps["a"]}, titles=["A", "B"])
    with pytest.raises(ValueError, match="map 'a' has shape"):
        plot_map_grid(x, {"a": torch.zeros(3, 1, 4, 4)})
    with pytest.raises(ValueError, match="input is 8x8 but the map is 4x4"):
        overlay(x[0], torch.zeros(4, 4))
