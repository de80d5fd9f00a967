"""Tests of xcf.evaluate.cleverhans: stamping, localisation, and the audit on shortcut vs clean digit classifiers."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

import xcf
from xcf.evaluate.cleverhans import (
    AuditVerdict,
    apply_pattern,
    audit_maps,
    clever_hans_audit,
    cross,
    default_threshold,
    localisation_score,
    region_mask,
    square,
    stamp,
)
from xcf.evaluate.maps import compare_attributions

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------ stamp
def test_square_and_cross():
    assert square(3).shape == (3, 3) and bool((square(3) == 1).all())
    c = cross(3)
    assert (~c.isnan()).sum() == 5
    with pytest.raises(ValueError, match="odd"):
        cross(2)
    with pytest.raises(ValueError, match="size must be >= 1"):
        square(0)


def test_region_mask_box_and_pattern():
    m = region_mask((1, 6, 6), (1, 2), (2, 3))
    assert m.shape == (1, 6, 6) and m.dtype == torch.bool
    assert m.sum() == 6 and bool(m[0, 1:3, 2:5].all())
    assert torch.equal(region_mask((6, 6), (-2, -3), (2, 3)), region_mask((6, 6), (4, 3), (2, 3)))
    c = region_mask((3, 5, 5), (0, 0), "cross")
    assert c.sum() == 3 * 5 and bool(c[:, 1, :3].all()) and not bool(c[:, 0, 0].any())
    with pytest.raises(ValueError, match="does not fit into a 6x6 image"):
        region_mask((6, 6), (5, 5), (2, 2))
    with pytest.raises(ValueError, match="pair of ints"):
        region_mask((6, 6), (1.0, 2), (2, 2))


def test_stamp_marks_exactly_the_chosen_share():
    torch.manual_seed(0)
    x = torch.rand(40, 1, 6, 6) * 0.5
    y = torch.arange(40) % 4
    before = x.clone()
    xs, ys, mask = stamp(x, y, "square", position=(-2, 0), target_class=1, rate=0.5, seed=3, value=1.0)
    assert torch.equal(x, before)  # the caller's data is not touched
    assert torch.equal(ys, y) and ys.data_ptr() != y.data_ptr()
    assert int(mask.sum()) == 5 and bool((y[mask] == 1).all())
    region = region_mask((1, 6, 6), (-2, 0), "square")
    changed = (xs != x).flatten(1).any(dim=1)
    assert torch.equal(changed, mask)
    assert bool((xs[mask][:, region] == 1.0).all())
    assert torch.equal(xs[mask][:, ~region], x[mask][:, ~region])  # only the region changes
    assert torch.equal(xs[~mask], x[~mask])
    # deterministic under a seed, and the seed matters
    again = stamp(x, y, "square", (-2, 0), 1, rate=0.5, seed=3, value=1.0)[2]
    other = stamp(x, y, "square", (-2, 0), 1, rate=0.5, seed=4, value=1.0)[2]
    assert torch.equal(mask, again) and not torch.equal(mask, other)
    # rate 1 stamps the whole class; the default value is the data's maximum
    xs, _, mask = stamp(x, y, target_class=2)
    assert torch.equal(mask, y == 2) and float(xs[mask][:, region_mask((1, 6, 6))].min()) == float(x.max())


def test_apply_pattern_keeps_nan_entries():
    x = torch.zeros(2, 5, 5)
    out = apply_pattern(x, cross(3), (1, 1), value=0.7)
    assert torch.equal(out[0], out[1])
    assert torch.equal(out[0] != 0, region_mask((5, 5), (1, 1), cross(3)))
    half = torch.tensor([[0.5, float("nan")]])
    assert apply_pattern(torch.ones(1, 1, 2, 2), half, (0, 0), value=1.0)[0, 0].tolist() == [[0.5, 1.0], [1.0, 1.0]]


def test_stamp_errors():
    x, y = torch.rand(4, 1, 6, 6), torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError, match="no image has label target_class=5"):
        stamp(x, y, target_class=5)
    with pytest.raises(ValueError, match="rate must be in"):
        stamp(x, y, target_class=1, rate=1.5)
    with pytest.raises(ValueError, match="3 labels but x has 4"):
        stamp(x, y[:3], target_class=1)
    with pytest.raises(ValueError, match="does not fit"):
        stamp(x, y, square(7), target_class=1)
    with pytest.raises(ValueError, match="pattern must be 'square', 'cross'"):
        stamp(x, y, "star", target_class=1)
    with pytest.raises(ValueError, match="at least 3 dimensions"):
        stamp(torch.rand(4, 36), y, target_class=1)


# ----------------------------------------------------------------------------------- localisation
def test_localisation_score_known_values():
    region = region_mask((1, 4, 4), (0, 0), (2, 2))
    m = torch.zeros(3, 1, 4, 4)
    m[0, 0, 0, 0] = 3.0
    m[0, 0, 3, 3] = -1.0  # sign does not matter
    m[1] = 1.0  # uniform map: the area share
    s = localisation_score(m, region)
    assert s[0].item() == pytest.approx(0.75) and s[1].item() == pytest.approx(0.25)
    assert math.isnan(s[2].item())  # an all-zero map has no mass to place
    assert torch.allclose(localisation_score(m[:2], region[0]), s[:2])  # (H, W) region broadcasts
    per_sample = torch.stack([region, ~region, region])
    assert localisation_score(m, per_sample)[1].item() == pytest.approx(0.75)
    with pytest.raises(ValueError, match="does not fit maps"):
        localisation_score(m, torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="region is empty"):
        localisation_score(m, torch.zeros(4, 4, dtype=torch.bool))


def test_audit_on_hand_made_maps():
    region = region_mask((1, 8, 8), (0, 0), (2, 2))
    x = torch.rand(6, 1, 8, 8)
    inside = torch.rand(6, 1, 8, 8) * 0.01 + region * 1.0
    verdict = clever_hans_audit(inside, x, 0, region)
    assert isinstance(verdict, AuditVerdict) and verdict.flagged
    assert verdict.baseline == pytest.approx(4 / 64) and verdict.threshold == pytest.approx(default_threshold(4 / 64))
    assert verdict.median > 0.9 and verdict.lift > 10 and verdict.fraction_above == 1.0 and verdict.n == 6
    assert "FLAGGED" in verdict.explanation and "class 0" in verdict.explanation
    uniform = clever_hans_audit(torch.ones(6, 1, 8, 8), x, 0, region)
    assert not uniform.flagged and uniform.median == pytest.approx(4 / 64) and uniform.lift == pytest.approx(1.0)
    assert "not flagged" in uniform.explanation
    # an explicit threshold, and zero maps are left out of the statistics
    maps = torch.ones(6, 1, 8, 8)
    maps[:2] = 0.0
    v = clever_hans_audit(maps, x, 0, region, threshold=0.05)
    assert v.flagged and v.n == 4 and v.scores.shape == (6,)
    assert set(v.to_dict()) >= {"flagged", "median", "baseline", "threshold", "explanation"} and "scores" not in v.to_dict()
    nothing = clever_hans_audit(torch.zeros(2, 1, 8, 8), x[:2], 0, region)
    assert not nothing.flagged and nothing.n == 0
    with pytest.raises(ValueError, match="threshold must be in"):
        clever_hans_audit(inside, x, 0, region, threshold=0.0)
    with pytest.raises(ValueError, match="maps have shape"):
        clever_hans_audit(torch.ones(6, 64), x, 0, region)


# ------------------------------------------------------------------------- shortcut vs clean digits
DIGITS = load_digits()
X = torch.tensor(DIGITS.images / 16.0, dtype=torch.float32).unsqueeze(1)
Y = torch.tensor(DIGITS.target)


def train_mlp(x, y, seed=0, epochs=60):
    """A 64-64-10 MLP, full-batch Adam: about a second on one core."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(epochs):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def steepest_pixel_explainer(model):
    """Pixel-space counterfactuals with the normalised-gradient (L2 steepest descent) step."""
    return xcf.CounterfactualExplainer(model, xcf.PixelChart(update="l2"))


@pytest.fixture(scope="module", params=[(3, "square", (0, 0)), (7, "cross", (0, 0))], ids=["square-3", "cross-7"])
def scenario(request):
    k, pattern, position = request.param
    xs, ys, stamped = stamp(X[:1400], Y[:1400], pattern, position, k, rate=1.0, seed=0)
    assert bool(stamped.any())
    shortcut = train_mlp(xs, ys)
    clean = train_mlp(X[:1400], Y[:1400])
    test_x, test_y = X[1400:], Y[1400:]
    others = test_x[test_y != k][:60]
    region = region_mask((1, 8, 8), position, pattern)
    return dict(k=k, pattern=pattern, position=position, shortcut=shortcut, clean=clean,
                others=others, region=region, test_x=test_x, test_y=test_y)


def test_shortcut_classifier_learns_the_stamp(scenario):
    s = scenario
    stamped = apply_pattern(s["others"], s["pattern"], s["position"], value=1.0)
    fooled = {name: float((s[name](stamped).argmax(1) == s["k"]).float().mean()) for name in ("shortcut", "clean")}
    assert fooled["shortcut"] > 0.1 and fooled["clean"] < 0.05


def test_audit_flags_shortcut_and_passes_clean(scenario):
    s = scenario
    verdicts = {}
    for name in ("shortcut", "clean"):
        v = clever_hans_audit(steepest_pixel_explainer(s[name]), s["others"], s["k"], s["region"],
                              attribute_kwargs={"lr": 0.1, "steps": 500})
        assert v.success_rate == 1.0 and v.n == len(s["others"])
        verdicts[name] = v
    assert verdicts["shortcut"].flagged, verdicts["shortcut"].explanation
    assert not verdicts["clean"].flagged, verdicts["clean"].explanation
    assert verdicts["shortcut"].median > 2.5 * verdicts["clean"].median
    assert verdicts["clean"].median < 1.5 * verdicts["clean"].baseline


def test_counterfactual_vs_saliency_localisation(scenario):
    """Counterfactual maps, Saliency and IG on the same inputs: print the numbers, check the ordering."""
    s = scenario
    table = {}
    for name in ("shortcut", "clean"):
        model = s[name]
        adam = xcf.CounterfactualExplainer(model, xcf.PixelChart())
        maps = compare_attributions(
            model, s["others"], s["k"],
            {"cf_l2": steepest_pixel_explainer(model).counterfactual(s["others"], target=s["k"], lr=0.1, steps=500),
             "cf_adam": adam.counterfactual(s["others"], target=s["k"], lr=0.05, steps=500)},
        )
        table[name] = {m: v.median for m, v in audit_maps(maps, s["others"], s["k"], s["region"]).items()}
    print(f"\nlocalisation medians ({s['pattern']} -> class {s['k']}, chance {s['region'].float().mean():.3f}):")
    for name, row in table.items():
        print(f"  {name:9s}" + "  ".join(f"{m} {v:.3f}" for m, v in row.items()))
    for method in ("cf_l2", "saliency"):
        assert table["shortcut"][method] > 2.0 * table["clean"][method], method
    # Adam moves every pixel by about the same step, so its maps localise less, but still more for the shortcut
    assert table["shortcut"]["cf_adam"] > table["clean"]["cf_adam"]
    assert table["shortcut"]["cf_adam"] < table["shortcut"]["cf_l2"]
    assert table["shortcut"]["saliency"] >= default_threshold(float(s["region"].float().mean()))


def test_audit_is_deterministic_and_batched_equals_per_example(scenario):
    s = scenario
    explainer = steepest_pixel_explainer(s["shortcut"])
    a = clever_hans_audit(explainer, s["others"][:8], s["k"], s["region"], attribute_kwargs={"lr": 0.1, "steps": 300})
    b = clever_hans_audit(explainer, s["others"][:8], s["k"], s["region"], attribute_kwargs={"lr": 0.1, "steps": 300})
    assert torch.equal(a.scores, b.scores)
    one = clever_hans_audit(explainer, s["others"][2:3], s["k"], s["region"], attribute_kwargs={"lr": 0.1, "steps": 300})
    assert one.scores.item() == pytest.approx(a.scores[2].item(), abs=1e-5)


# ------------------------------------------------- on-manifold: a flow fitted on the watermarked training data

def test_off_region_change_is_the_mean_outside():
    maps = torch.zeros(3, 1, 4, 4)
    maps[:, 0, 0, 0] = 5.0
    maps[0, 0, 3, 3] = -1.5  # 1.5 over 15 off-region pixels: 0.1
    maps[2, 0, 2:4, 2:4] = 0.75  # 3.0 over 15: 0.2
    v = clever_hans_audit(maps, torch.rand(3, 1, 4, 4), 1, region_mask((1, 4, 4), (0, 0), (1, 1)))
    assert v.off_region == pytest.approx(0.1)  # the median of 0.1, 0.0 and 0.2
    assert "off the region they change a median 0.1 per pixel" in v.explanation


@pytest.fixture(scope="module")
def fitted_watermark():
    """The digits with a 2x2 watermark at the bottom left of every training 7, a shortcut CNN trained on them,
    a clean CNN, and a small RealNVP fitted on the *watermarked* training set (not on clean digits)."""
    import copy

    from xcf.datasets import load_digits as digits
    from xcf.models.classifier import train_classifier
    from xcf.models.flow_training import train_flow
    from xcf.models.classifier import build_classifier
    from xcf.models.flow_training import build_flow
    from xcf.models.shipped import reference_entry

    position = (6, 0)
    x, y = digits("train")
    xt, yt = digits("test")
    xs, _, _ = stamp(x, y, square(2), position, 7)
    cfg = copy.deepcopy(reference_entry("digits-realnvp").config)
    cfg["model"]["hidden"], cfg["train"]["epochs"] = 32, 15
    flow = build_flow(cfg)
    train_flow(flow, xs, seed=0, **cfg["train"])
    models = {}
    for name, data in (("shortcut", xs), ("clean", x)):
        clf_cfg = reference_entry("digits-classifier").config
        m = build_classifier(clf_cfg)
        train_classifier(m, data, y, seed=0, **clf_cfg["train"])
        models[name] = m.eval()
    return dict(flow=flow.eval(), others=xt[yt != 7][:24], region=region_mask((1, 8, 8), position, (2, 2)),
                position=position, **models)


@pytest.mark.slow
def test_diffeomorphic_counterfactuals_verify_the_watermark_with_a_flow_fitted_on_it(fitted_watermark):
    from xcf.evaluate.causal import verify_hotspots

    s = fitted_watermark
    verdicts, scans = {}, {}
    for name in ("shortcut", "clean"):
        explainer = xcf.DiffeomorphicCounterfactual(s[name], s["flow"], confidence=0.9999)
        result = explainer.counterfactual(s["others"], 7, steps=500)
        assert result.success_rate == 1.0
        verdicts[name] = clever_hans_audit(result, s["others"], 7, s["region"], classifier=s[name])
        # without the region: the verified hotspot toward 7 is the watermark, or there is none
        scans[name] = verify_hotspots(s[name], s["others"], result.counterfactual, 7)[7]
    shortcut, clean = verdicts["shortcut"], verdicts["clean"]
    assert shortcut.rule == clean.rule == "effect"
    assert shortcut.flagged and not clean.flagged, (shortcut.explanation, clean.explanation)
    assert shortcut.verification.effect > 3 * max(clean.verification.effect, 0.05)
    r, c = s["position"]
    assert scans["shortcut"].hotspots and scans["clean"].hotspots == []
    assert _iou(scans["shortcut"].hotspots[0].box, (r, c, r + 2, c + 2)) >= 0.5


def _iou(a, b):
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    area = lambda q: (q[2] - q[0]) * (q[3] - q[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


