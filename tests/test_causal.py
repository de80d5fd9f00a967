"""Tests of xcf.evaluate.causal: pasting a counterfactual's change region by region, controls, verdicts, colour."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xcf.evaluate.causal import (
    Verification,
    candidate_regions,
    colour_effect,
    control_regions,
    paste,
    paste_curve,
    recolour_reshape,
    remove,
    verify_hotspots,
    verify_region,
)

torch.set_num_threads(1)


def _corner_classifier(size: int = 8) -> nn.Module:
    """Two classes on 1 x size x size images: class 1's logit reads the top-left 2x2 corner only (a shortcut),
    class 0's a fixed offset."""
    clf = nn.Sequential(nn.Flatten(), nn.Linear(size * size, 2)).eval()
    with torch.no_grad():
        w = torch.zeros(2, 1, size, size)
        w[1, 0, :2, :2] = 3.0
        clf[1].weight.copy_(w.flatten(1))
        clf[1].bias.copy_(torch.tensor([4.0, 0.0]))
    return clf


def _stroke_classifier(size: int = 8) -> nn.Module:
    """Class 1 reads the mean of the whole image: no small region does much on its own."""
    clf = nn.Sequential(nn.Flatten(), nn.Linear(size * size, 2)).eval()
    with torch.no_grad():
        clf[1].weight.copy_(torch.stack([torch.zeros(size * size), torch.full((size * size,), 12.0 / (size * size))]))
        clf[1].bias.copy_(torch.tensor([4.0, 0.0]))
    return clf


def _counterfactuals(n: int = 24, size: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs with an object in the middle, and counterfactuals that redraw the object and paint the corner."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size, size, generator=g) * 0.05
    x[:, :, 3:7, 2:6] += 0.2  # the object
    xc = x.clone()
    xc[:, :, 3:7, 2:6] += 0.5 + 0.2 * torch.rand(n, 1, 4, 4, generator=g)  # "strokes": large change
    xc[:, :, :2, :2] = 0.9  # the corner
    return x, xc.clamp(0, 1)


def _box(top, left, bottom, right, size=8):
    r = torch.zeros(size, size, dtype=torch.bool)
    r[top:bottom, left:right] = True
    return r


# ------------------------------------------------------------------------------------------ paste / remove
def test_paste_and_remove_swap_the_change_inside_the_region():
    x, xc = _counterfactuals(3)
    r = _box(0, 0, 2, 2)
    p, q = paste(x, xc, r), remove(x, xc, r)
    assert torch.equal(p[:, :, :2, :2], xc[:, :, :2, :2]) and torch.equal(p[:, :, 2:], x[:, :, 2:])
    assert torch.equal(q[:, :, :2, :2], x[:, :, :2, :2]) and torch.equal(q[:, :, 2:], xc[:, :, 2:])
    assert torch.allclose(p + q, x + xc)  # what is pasted is what is removed
    assert torch.equal(paste(x, xc, r[None]), p)  # a mask of one sample's shape


def test_control_regions_are_the_same_shape_elsewhere_where_the_change_is_largest():
    r = torch.zeros(6, 6, dtype=torch.bool)
    r[0, 0] = r[0, 1] = r[1, 0] = True  # an L
    change = torch.zeros(6, 6)
    change[4:6, 4:6] = 1.0
    c = control_regions(r, change, count=3)
    assert c.shape == (3, 6, 6)
    assert all(int(m.sum()) == 3 and not bool((m & r).any()) for m in c)
    assert c[0].nonzero().tolist() == [[4, 4], [4, 5], [5, 4]]  # the L moved onto the change
    with pytest.raises(ValueError, match="no room"):
        control_regions(_box(0, 0, 5, 5, 6), change)


def test_candidate_regions_cut_the_mean_change_and_keep_small_ones():
    m = torch.zeros(1, 8, 8)
    m[0, :2, :2] = 1.0
    m[0, 4:8, 2:8] = 0.5  # 24 pixels: 37% of the image
    boxes = [tuple(int(v) for v in r.nonzero().min(0).values.tolist() + (r.nonzero().max(0).values + 1).tolist())
             for r in candidate_regions(m, max_area=0.1)]
    assert boxes == [(0, 0, 2, 2)]
    assert len(candidate_regions(m, max_area=0.5)) == 2
    assert candidate_regions(torch.zeros(1, 8, 8)) == []


# ------------------------------------------------------------------------------------------ verify_region
def test_a_shortcut_region_is_verified_and_a_stroke_region_is_not():
    x, xc = _counterfactuals()
    shortcut = verify_region(_corner_classifier(), x, xc, 1, _box(0, 0, 2, 2))
    assert shortcut.verified and shortcut.flip_rate == 1.0 and shortcut.sufficiency > 0.9
    assert shortcut.control < 0.2 and shortcut.interval[0] > 0.5 and shortcut.lift_low > 5
    assert "VERIFIED" in shortcut.explanation
    # the same region for a classifier that reads the whole image: as much as any other change of its size
    clean = verify_region(_stroke_classifier(), x, xc, 1, _box(0, 0, 2, 2))
    assert not clean.verified and clean.lift < 1.5
    # a stroke piece for that classifier: it does something, about as much as other stroke pieces
    piece = verify_region(_stroke_classifier(), x, xc, 1, _box(3, 2, 5, 4))
    assert piece.sufficiency > 0.05 and not piece.verified


def test_verification_is_deterministic_and_batch_size_free():
    x, xc = _counterfactuals()
    a = verify_region(_corner_classifier(), x, xc, 1, _box(0, 0, 2, 2), Verification(seed=3))
    b = verify_region(_corner_classifier(), x, xc, 1, _box(0, 0, 2, 2), Verification(seed=3, batch_size=7))
    assert a.interval == b.interval and a.lift_low == b.lift_low
    assert a.effect == pytest.approx(b.effect) and a.flip_rate == b.flip_rate


def test_inputs_whose_counterfactual_gained_nothing_are_left_out():
    x, xc = _counterfactuals(10)
    xc[:4] = x[:4]  # no change: no gain to share
    e = verify_region(_corner_classifier(), x, xc, 1, _box(0, 0, 2, 2))
    assert e.n == 6
    with pytest.raises(ValueError, match="no counterfactual raised"):
        verify_region(_corner_classifier(), x, x.clone(), 1, _box(0, 0, 2, 2))


def test_verify_region_leaves_the_classifier_and_inputs_alone():
    x, xc = _counterfactuals(6)
    clf = _corner_classifier()
    before = [p.detach().clone() for p in clf.parameters()]
    x0, xc0 = x.clone(), xc.clone()
    verify_region(clf, x, xc, 1, _box(0, 0, 2, 2))
    assert all(torch.equal(a, b) for a, b in zip(before, clf.parameters())) and not clf.training
    assert torch.equal(x, x0) and torch.equal(xc, xc0)
    assert all(p.grad is None for p in clf.parameters())


@pytest.mark.parametrize("region, match", [
    (torch.zeros(7, 7, dtype=torch.bool), "does not fit images"),
    (torch.zeros(8, 8, dtype=torch.bool), "is empty"),
    (torch.ones(8, 8, dtype=torch.bool), "whole image"),
    ([[1, 0]], "bool tensor"),
])
def test_bad_regions_are_named(region, match):
    x, xc = _counterfactuals(4)
    with pytest.raises((ValueError, TypeError), match=match):
        verify_region(_corner_classifier(), x, xc, 1, region)


def test_bad_batches_and_options_are_named():
    x, xc = _counterfactuals(4)
    clf = _corner_classifier()
    with pytest.raises(ValueError, match="one counterfactual per input"):
        verify_region(clf, x, xc[:3], 1, _box(0, 0, 2, 2))
    bad = xc.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        verify_region(clf, x, bad, 1, _box(0, 0, 2, 2))
    with pytest.raises(ValueError, match="out of range"):
        verify_region(clf, x, xc, 5, _box(0, 0, 2, 2))
    with pytest.raises(ValueError, match="level"):
        Verification(level=1.5)
    with pytest.raises(ValueError, match="min_lift"):
        Verification(min_lift=0.5)
    with pytest.raises(TypeError, match="controls must be an int"):
        Verification(controls=2.5)
    with pytest.raises(TypeError, match="must be a Verification"):
        verify_region(clf, x, xc, 1, _box(0, 0, 2, 2), {"level": 0.9})
    bn = nn.Sequential(nn.Flatten(), nn.Linear(64, 2), nn.BatchNorm1d(2))  # in training mode
    with pytest.raises(ValueError, match="training mode"):
        verify_region(bn, x, xc, 1, _box(0, 0, 2, 2))


# ------------------------------------------------------------------------------------------ hotspots
def test_verify_hotspots_finds_the_shortcut_without_being_told_and_nothing_for_the_clean_classifier():
    x, xc = _counterfactuals(30)
    found = verify_hotspots(_corner_classifier(), x, xc, 1)
    assert list(found) == [1]
    scan = found[1]
    assert scan.candidates >= 1 and scan.n == 30
    assert [h.box for h in scan.hotspots] == [(0, 0, 2, 2)] and scan.hotspots[0].source == "mean map"
    assert scan.hotspots[0].shortcut and scan.hotspots[0].off_object == 1.0
    clean = verify_hotspots(_stroke_classifier(), x, xc, 1)[1]
    assert clean.hotspots == [] and clean.best is not None and not clean.best.verified


def test_verify_hotspots_passes_on_errors_it_does_not_expect():
    x, xc = _counterfactuals(10)
    with pytest.raises(ValueError, match="out of range"):  # not taken for "nothing to verify toward this class"
        verify_hotspots(_corner_classifier(), x, xc, 5)


def test_verify_hotspots_per_class_and_with_named_regions():
    x, xc = _counterfactuals(30)
    t = torch.tensor([1, 0] * 15)
    xc[t == 0] = x[t == 0]  # nothing changed toward class 0
    found = verify_hotspots(_corner_classifier(), x, xc, t, regions=[_box(0, 0, 2, 2)])
    assert sorted(found) == [0, 1] and found[0].hotspots == [] and found[0].n == 0
    named = [h for h in found[1].hotspots if h.source == "named"] or [found[1].hotspots[0]]
    assert named[0].box == (0, 0, 2, 2)
    assert found[1].to_dict()["hotspots"][0]["box"] == [0, 0, 2, 2]


# ------------------------------------------------------------------------------------------ colour
def _colour_data(n=40):
    """Red or green strokes: the colour classifier reads green-vs-red, the shape classifier the stroke's row."""
    g = torch.Generator().manual_seed(0)
    grey = torch.zeros(n, 1, 6, 6)
    rows = torch.randint(0, 2, (n,), generator=g)
    for i, r in enumerate(rows.tolist()):
        grey[i, 0, 1 + 3 * r, 1:5] = 1.0
    red, green = torch.tensor([1.0, 0, 0]), torch.tensor([0, 1.0, 0])
    colour = torch.randint(0, 2, (n,), generator=g)
    rgb = grey * torch.stack([red, green])[colour][:, :, None, None]
    return grey, rows, colour, rgb, torch.stack([red, green])


class _Reads(nn.Module):
    def __init__(self, what):
        super().__init__()
        self.what = what

    def forward(self, v):
        if self.what == "colour":  # class 1: more green than red
            s = v[:, 1].sum((1, 2)) - v[:, 0].sum((1, 2))
        else:  # class 1: the stroke in the lower half
            b = v.amax(1)
            s = b[:, 3:].sum((1, 2)) - b[:, :3].sum((1, 2))
        return torch.stack([-s, s], 1) * 2.0


def test_colour_effect_tells_colour_from_shape():
    grey, rows, colour, x, palette = _colour_data()
    for what in ("colour", "shape"):
        clf = _Reads(what).eval()
        label = colour if what == "colour" else rows
        t = 1 - label  # every input toward the other class
        # counterfactuals that both recolour the stroke and move it: each classifier can use its own part
        moved = torch.zeros_like(grey)
        for i, r in enumerate(rows.tolist()):
            moved[i, 0, 1 + 3 * (1 - r), 1:5] = 1.0
        xc = moved * palette[1 - colour][:, :, None, None]
        e = colour_effect(clf, x, xc, t)
        assert e.n == 40
        if what == "colour":
            assert e.reads_colour and e.colour_flip == 1.0 and e.colour_control < 0.5
        else:
            assert not e.reads_colour and e.reads_shape and e.shape_flip == 1.0
        assert e.reads in ("colour", "shape", "colour and shape")


def test_recolour_and_reshape_keep_one_part_each():
    red, green = torch.zeros(1, 3, 1, 3), torch.zeros(1, 3, 1, 3)
    red[0, 0, 0, 0] = 0.5
    green[0, 1, 0, 1:] = 1.0
    rec, res = recolour_reshape(red, green)
    # the red dot keeps its brightness and takes the green image's colour; the green bar is drawn in red
    assert rec[0, :, 0, 0].tolist() == [0.0, 0.5, 0.0]
    assert res[0, :, 0, 1:].tolist() == [[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]


def test_colour_checks_refuse_grey_images_and_a_single_target():
    x, xc = _counterfactuals(4)
    with pytest.raises(ValueError, match="RGB"):
        colour_effect(_corner_classifier(), x, xc, 1)
    _, _, colour, rgb, _ = _colour_data(8)
    with pytest.raises(ValueError, match="two classes"):
        colour_effect(_Reads("colour").eval(), rgb, rgb.flip(1), 1)


# ------------------------------------------------------------------------------------------ curve
def test_paste_curve_rises_from_nothing_to_the_counterfactual():
    x, xc = _counterfactuals(10)
    c = paste_curve(_corner_classifier(), x, xc, 1, fractions=[0.0, 0.5, 1.0])
    assert c["gain_share"][0] == pytest.approx(0.0) and c["gain_share"][-1] == pytest.approx(1.0)
    assert 0 < c["area"] <= 1.5
    with pytest.raises(ValueError, match="fractions"):
        paste_curve(_corner_classifier(), x, xc, 1, fractions=[1.5])


# ------------------------------------------------------------------------------------------ shipped scenarios
@pytest.mark.slow
def test_shipped_mnist_watermark_is_verified_for_the_shortcut_classifier_only():
    """The shipped MNIST scenario (4x4 mark at the top left of every training 7): diffeomorphic counterfactuals of
    the shortcut classifier paint a faint mark (about 2% of |x' - x|), yet pasting it alone does several times what
    the same shape does elsewhere; the clean classifier's counterfactuals, and the VAE's, verify nothing."""
    from xcf.apps.methods import clever_hans_explainers
    from xcf.datasets import balanced_order, load_mnist
    from xcf.models import reference

    x, y = load_mnist("test")
    order = balanced_order(y)
    x, y = x[order], y[order]
    others = x[y != 7][:40]  # as the MNIST demo
    mark = _box(0, 0, 4, 4, 28)
    gen = {"flow": reference("mnist-watermark-flow")[0], "vae": reference("mnist-watermark-vae")[0]}
    for name, relies in (("mnist-watermark-classifier", True), ("mnist-classifier", False)):
        clf = reference(name)[0]
        for method, explainer in clever_hans_explainers(clf, **gen).items():
            if method == "pixel (L2 steps)":
                continue
            r = explainer.counterfactual(others, 7)
            e = verify_region(clf, others, r.counterfactual, 7, mark)
            scan = verify_hotspots(clf, others, r.counterfactual, 7)[7]
            assert e.verified == relies, (name, method, e.explanation)
            if relies:
                top = scan.hotspots[0].box
                assert top[0] == 0 and top[1] == 0 and top[2] <= 5 and top[3] <= 6, (method, top)
            else:
                assert scan.hotspots == [], (name, method, [h.explanation for h in scan.hotspots])


@pytest.mark.slow
def test_shipped_coloured_mnist_colour_classifier_reads_colour_and_the_shape_classifier_does_not():
    from xcf.apps.methods import clever_hans_explainers
    from xcf.datasets import balanced_order
    from xcf.datasets.colour import load_coloured
    from xcf.models import reference

    x, y, _ = load_coloured("mnist", "test")
    order = balanced_order(y)
    x, y = x[order][:60], y[order][:60]
    t = (y + 3) % 10
    flow = reference("mnist-colour-flow")[0]
    reads = {}
    for name in ("mnist-colour-classifier", "mnist-colour-shape-classifier"):
        clf = reference(name)[0]
        r = clever_hans_explainers(clf, flow=flow)["diffeomorphic"].counterfactual(x, t)
        reads[name] = colour_effect(clf, x, r.counterfactual, t)
    assert reads["mnist-colour-classifier"].reads_colour, reads["mnist-colour-classifier"].explanation
    shape = reads["mnist-colour-shape-classifier"]
    assert not shape.reads_colour and shape.reads_shape, shape.explanation


def test_without_cues_only_candidates_off_the_objects_are_tested():
    x, xc = _counterfactuals(30, size=12)
    full = verify_hotspots(_corner_classifier(12), x, xc, 1, max_area=0.2)[1]
    fast = verify_hotspots(_corner_classifier(12), x, xc, 1, max_area=0.2, cues=False)[1]
    assert fast.candidates < full.candidates
    assert [h.box for h in fast.hotspots] == [h.box for h in full.hotspots] == [(0, 0, 2, 2)]
    assert fast.cues == []


def test_reference_images_mark_objects_and_are_checked():
    x, xc = _counterfactuals(30)
    ref = torch.zeros(5, 1, 8, 8)
    ref[:, :, :2, :2] = 1.0  # the class's own objects cover the corner: the corner is a cue, not a hotspot
    scan = verify_hotspots(_corner_classifier(), x, xc, 1, reference=ref)[1]
    assert scan.hotspots == [] and [c.box for c in scan.cues] == [(0, 0, 2, 2)]
    with pytest.raises(ValueError, match="reference images have shape"):
        verify_hotspots(_corner_classifier(), x, xc, 1, reference=torch.zeros(5, 1, 4, 4))
