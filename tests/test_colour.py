"""Colour shortcuts: the coloured digits, and the colour share that tells a repainted digit from a redrawn one."""

import pytest
import torch

from xcf.datasets.colour import PALETTE, coloured_digits, colourise, load_coloured
from xcf.evaluate.colour import colour_audit, colour_share


def digit(colour, strokes=((2, 2), (2, 3), (3, 3), (4, 3))):
    x = torch.zeros(3, 6, 6)
    for r, c in strokes:
        x[:, r, c] = torch.as_tensor(colour)
    return x


RED, GREEN, YELLOW = PALETTE[0], PALETTE[1], PALETTE[3]


def test_repainting_is_colour_and_redrawing_is_shape():
    x = digit(RED)[None]
    assert colour_share(x, digit(GREEN)[None]).tolist() == [1.0]           # red to green: hue only
    assert colour_share(x, digit(RED, [(2, 2), (3, 3), (4, 4), (5, 5)])[None]).item() == pytest.approx(0.0, abs=1e-6)
    assert colour_share(x, 0.5 * x).item() == pytest.approx(0.0, abs=1e-6)  # fainter, same colour
    # red to yellow (a green channel added): mostly hue, partly brightness
    assert 0.6 < colour_share(x, digit(YELLOW)[None]).item() < 0.9


def test_a_new_stroke_in_another_colour_on_black_counts_as_shape():
    x = digit(RED)[None]
    xc = x.clone()
    xc[0, :, 0, 0] = GREEN
    assert colour_share(x, xc).item() == pytest.approx(0.0, abs=1e-6)


def test_batch_equals_single_and_no_change_is_nan():
    g = torch.Generator().manual_seed(0)
    x, xc = torch.rand(5, 3, 4, 4, generator=g), torch.rand(5, 3, 4, 4, generator=g)
    batch = colour_share(x, xc)
    single = torch.cat([colour_share(x[i:i + 1], xc[i:i + 1]) for i in range(5)])
    torch.testing.assert_close(batch, single)
    assert bool(((batch >= 0) & (batch <= 1)).all())
    assert colour_share(x[:1], x[:1]).isnan().all()


def test_colour_audit_scores_successful_counterfactuals():
    x = torch.stack([digit(RED), digit(RED)])
    v = colour_audit((x, torch.stack([digit(GREEN), digit(RED, [(1, 1)])])))
    assert v.n == 2 and v.q25 < 0.5 < v.q75
    assert colour_audit((x, torch.stack([digit(GREEN)] * 2))).colour_driven
    assert not colour_audit((x, 0.2 * x)).colour_driven
    assert colour_audit((x, x)).n == 0


def test_colour_errors():
    x = torch.rand(2, 3, 4, 4)
    with pytest.raises(ValueError, match="RGB images"):
        colour_share(x[:, :1], x[:, :1])
    with pytest.raises(ValueError, match="counterfactual"):
        colour_share(x, x[:1])
    with pytest.raises(ValueError, match="threshold"):
        colour_audit((x, x), threshold=1.0)
    with pytest.raises(TypeError, match="CounterfactualResult or a pair"):
        colour_audit(x)


def test_colourise_and_coloured_digits():
    x = torch.rand(40, 1, 4, 4)
    y = torch.arange(40) % 10
    xc, colour = coloured_digits(x, y, follow=1.0)
    assert torch.equal(colour, y) and xc.shape == (40, 3, 4, 4)
    torch.testing.assert_close(xc, colourise(x, y))
    assert torch.equal((xc * 255).round(), xc * 255)                       # on the 8-bit grid
    _, again = coloured_digits(x, y, follow=0.0, seed=3)
    assert torch.equal(again, coloured_digits(x, y, follow=0.0, seed=3)[1])  # seeded
    assert (again == y).float().mean() < 0.5
    with pytest.raises(ValueError, match="follow"):
        coloured_digits(x, y, follow=1.5)
    with pytest.raises(ValueError, match="grey images"):
        colourise(xc, y)
    with pytest.raises(ValueError, match="colour indices"):
        colourise(x, torch.full((40,), 10))


def test_load_coloured_splits():
    x, y, colour = load_coloured("digits", "train")
    assert x.shape[1:] == (3, 8, 8) and 0.9 < float((colour == y).float().mean()) <= 1.0
    xt, yt, ct = load_coloured("digits", "test")
    assert float((ct == yt).float().mean()) < 0.25
    with pytest.raises(ValueError, match="data must be one of"):
        load_coloured("cifar")


@pytest.fixture(scope="module")
def colour_and_shape_classifiers():
    """CNNs on coloured 8x8 digits: one where the colour always follows the class, one in random colours."""
    from xcf.models.registry import fit_classifier

    x_colour, y, _ = load_coloured("digits", "train", follow=1.0)
    x_random, _, _ = load_coloured("digits", "train", follow=0.0)
    torch.set_num_threads(1)
    colour, _ = fit_classifier(x_colour, y, max_seconds=20)
    shape, _ = fit_classifier(x_random, y, max_seconds=20)
    return colour, shape


def test_colour_share_tells_a_colour_shortcut_from_a_shape_classifier(colour_and_shape_classifiers):
    import xcf
    from xcf.datasets import balanced_order

    xt, yt, _ = load_coloured("digits", "test")
    order = balanced_order(yt)[:30]
    x, target = xt[order], (yt[order] + 3) % 10
    verdicts = {}
    for name, clf in zip(("colour", "shape"), colour_and_shape_classifiers):
        explainer = xcf.CounterfactualExplainer(clf, xcf.PixelChart(update="l2", lr=0.05))
        result = explainer.counterfactual(x, target, steps=500)
        assert result.success_rate > 0.9
        verdicts[name] = colour_audit(result)
    assert verdicts["colour"].colour_driven and not verdicts["shape"].colour_driven
    assert verdicts["colour"].colour > 3 * verdicts["shape"].colour
