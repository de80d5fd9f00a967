"""Hotspots without a known region: a planted patch is found wherever it is, and a clean map gives none."""

import pytest
import torch

from xcf.evaluate.hotspots import find_hotspots


def strokes(n, size=16, seed=0):
    """Change maps that differ from input to input, on the object (the centre), as a clean classifier's do."""
    g = torch.Generator().manual_seed(seed)
    d = torch.zeros(n, 1, size, size)
    c = size // 4
    d[:, :, c:size - c, c:size - c] = 0.3 * torch.randn(n, 1, size - 2 * c, size - 2 * c, generator=g)
    return d


def reference(n=20, size=16):
    x = torch.zeros(n, 1, size, size)
    c = size // 4
    x[:, :, c:size - c, c:size - c] = 0.8
    return x


@pytest.mark.parametrize("position", [(0, 0), (0, 12), (12, 1), (12, 12), (1, 7)])
@pytest.mark.parametrize("side", [2, 3, 4])
def test_a_planted_patch_is_found_at_any_position(position, side):
    d = strokes(30)
    r, c = position
    d[:, :, r:r + side, c:c + side] += 0.6  # every counterfactual toward the class paints the patch
    spots = find_hotspots(d, torch.full((30,), 7), reference())[7]
    assert len(spots) >= 1
    best = spots[0]
    assert best.box == (r, c, r + side, c + side), best.box
    assert best.share > 0.3 and best.off_object > 0.7 and best.concentration > 5
    assert best.crop.shape == (1, side, side) and bool(best.mask[r, c])


def test_clean_maps_give_no_hotspot():
    spots = find_hotspots(strokes(30), torch.full((30,), 3), reference())
    assert spots == {3: []}


def test_classes_are_judged_apart_and_ranked_by_share():
    d = strokes(40)
    target = torch.arange(40) % 2
    d[target == 1, :, 0:2, 0:2] += 0.8
    d[target == 1, :, 14:16, 14:16] += 0.4
    spots = find_hotspots(d, target, reference(), min_share=0.1)
    assert spots[0] == [] and [s.box for s in spots[1]] == [(0, 0, 2, 2), (14, 14, 16, 16)]
    assert spots[1][0].share > spots[1][1].share
    assert [s.box for s in find_hotspots(d, target, reference(), min_share=0.1, top=1)[1]] == [(0, 0, 2, 2)]


def test_a_patch_on_the_object_or_too_large_is_not_a_hotspot():
    d = strokes(30)
    d[:, :, 6:9, 6:9] += 1.0  # on the object's pixels
    assert find_hotspots(d, torch.full((30,), 1), reference())[1] == []
    assert find_hotspots(d, torch.full((30,), 1))[1] != []  # without a reference every region counts
    big = strokes(30)
    big[:, :, 0:6, 0:6] += 1.0  # 36 of 256 pixels: over max_area = 0.1
    assert find_hotspots(big, torch.full((30,), 1), reference())[1] == []


def test_bad_arguments():
    d = strokes(4)
    with pytest.raises(ValueError, match="target holds 3 classes for 4 maps"):
        find_hotspots(d, torch.zeros(3))
    with pytest.raises(ValueError, match="min_share must lie in"):
        find_hotspots(d, torch.zeros(4), min_share=0)
    with pytest.raises(ValueError, match="reference images have shape"):
        find_hotspots(d, torch.zeros(4), torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="at least 4 dimensions"):
        find_hotspots(d[:, 0], torch.zeros(4))
