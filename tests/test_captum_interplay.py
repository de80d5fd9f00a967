"""Captum's metrics and visualisation work on xcf explainers and maps."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from captum.attr import NoiseTunnel  # noqa: E402
from captum.attr import visualization as viz  # noqa: E402
from captum.metrics import infidelity, sensitivity_max  # noqa: E402
from torch import nn  # noqa: E402

import xcf  # noqa: E402
from xcf.report.maps import to_captum_image

torch.set_num_threads(1)


class OneVsZero(nn.Module):
    """Two classes on 1x4x4 images: logit_0 = 0, logit_1 = w . x + b.

    The gradient of log p_1 is (1 - p_1) w, so every steepest-descent (L2) pixel step moves x by
    ``lr * w / ||w||``: the counterfactual map is exactly a multiple of ``w``.
    """

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(16, generator=g))
        self.b = nn.Parameter(torch.tensor(-2.0))

    def forward(self, x):
        z = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(z), z], dim=1)


def l2_explainer(model, bounds=None):
    return xcf.CounterfactualExplainer(model, xcf.PixelChart(bounds=bounds, update="l2"))


@pytest.fixture()
def setup():
    torch.manual_seed(0)
    model = OneVsZero().eval()
    x = torch.rand(6, 1, 4, 4) * 0.6 + 0.2
    return model, x


def test_explainer_runs_under_no_grad_with_tuples(setup):
    model, x = setup
    explainer = l2_explainer(model)
    with torch.no_grad():
        out = explainer.attribute((x,), target=1, steps=100, lr=0.05)
    assert isinstance(out, tuple) and out[0].shape == x.shape
    w = model.w.detach().view(1, 1, 4, 4)
    cos = torch.nn.functional.cosine_similarity(out[0].flatten(1), w.flatten(1).expand(6, -1), dim=1)
    assert torch.allclose(cos, torch.ones(6), atol=1e-4)  # the map is a multiple of w, as derived


def test_sensitivity_max_on_counterfactual_explainer(setup):
    model, x = setup
    explainer = l2_explainer(model)
    torch.manual_seed(1)
    sens = sensitivity_max(explainer.attribute, x, target=1, perturb_radius=0.01, n_perturb_samples=4,
                           steps=200, lr=0.05)
    assert sens.shape == (6,) and bool(torch.isfinite(sens).all()) and bool((sens >= 0).all())
    # The map is n(x) * lr * w/||w|| with n(x) the step count, so a perturbation can only change it by
    # whole steps: the relative change is a multiple of 1 / n(x).
    steps = explainer.counterfactual(x, target=1, steps=200, lr=0.05).steps.float()
    ratio = sens * steps
    assert torch.allclose(ratio, ratio.round(), atol=1e-3)
    assert bool((ratio.round() <= 2).all())
    # A NoiseTunnel around the explainer is accepted as well (captum unwraps log_usage methods).
    nt = NoiseTunnel(explainer)
    smooth = nt.attribute(x, target=1, nt_type="smoothgrad", nt_samples=3, stdevs=0.01, steps=200, lr=0.05)
    assert smooth.shape == x.shape


def test_infidelity_of_counterfactual_map_beats_a_random_map(setup):
    model, x = setup
    explainer = l2_explainer(model)
    cf_map = explainer.attribute(x, target=1, steps=200, lr=0.05)

    def perturb(inputs):
        noise = torch.randn_like(inputs) * 0.05
        return noise, inputs - noise

    torch.manual_seed(2)
    infid_cf = infidelity(model, perturb, x, cf_map, target=1, n_perturb_samples=16, normalize=True)
    torch.manual_seed(2)
    random_map = torch.randn_like(x)
    infid_rand = infidelity(model, perturb, x, random_map, target=1, n_perturb_samples=16, normalize=True)
    assert infid_cf.shape == (6,) and bool(torch.isfinite(infid_cf).all())
    # f_1 is linear with gradient w and the map is proportional to w: after Captum's optimal rescaling
    # the infidelity vanishes; a random map cannot explain the output changes.
    assert float(infid_cf.max()) < 1e-6
    assert float(infid_rand.min()) > 1e-3


def test_pixel_counterfactual_adam_metrics_are_finite():
    """The default (Adam, clamped) pixel explainer on a tiny CNN also passes through Captum's metrics."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)).eval()
    x = torch.rand(4, 1, 4, 4) * 0.8 + 0.1
    explainer = xcf.CounterfactualExplainer(model, xcf.PixelChart())
    kwargs = dict(steps=50, lr=0.05, confidence=0.9)

    def perturb_in_range(inputs, perturb_radius=0.01):
        return (inputs + torch.empty_like(inputs).uniform_(-perturb_radius, perturb_radius)).clamp(0, 1)

    sens = sensitivity_max(explainer.attribute, x, perturb_func=perturb_in_range, target=2,
                           n_perturb_samples=3, **kwargs)
    attr = explainer.attribute(x, target=2, **kwargs)
    infid = infidelity(model, lambda inp: (torch.full_like(inp, 0.01), inp - 0.01), x, attr, target=2,
                       n_perturb_samples=2)
    assert sens.shape == infid.shape == (4,)
    assert bool(torch.isfinite(sens).all()) and bool(torch.isfinite(infid).all())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("method", ["heat_map", "blended_heat_map", "masked_image", "alpha_scaling"])
def test_visualize_image_attr_accepts_xcf_maps(setup, method):
    model, x = setup
    result = l2_explainer(model, bounds=(0.0, 1.0)).counterfactual(x, target=1, steps=100, lr=0.05)
    attr = to_captum_image(result.difference[0])
    image = to_captum_image(x[0])
    assert attr.shape == image.shape == (4, 4, 1)
    sign = "all" if method in ("heat_map", "blended_heat_map") else "absolute_value"
    if method == "alpha_scaling":  # Captum appends an alpha channel to the image: it must be RGB
        image = to_captum_image(x[0], rgb=True)
        assert image.shape == (4, 4, 3) and np.array_equal(image[..., 0], image[..., 2])
    fig, ax = viz.visualize_image_attr(attr, image, method=method, sign=sign, use_pyplot=False)
    assert fig is not None and ax is not None
    plt.close(fig)
    # the multi-panel helper too
    fig, axes = viz.visualize_image_attr_multiple(attr, to_captum_image(x[0]), ["original_image", "heat_map"], ["all", "all"],
                                                  use_pyplot=False)
    assert len(np.atleast_1d(axes)) == 2
    plt.close(fig)
