import math

import pytest
import torch
import torch.nn.functional as F

from xcf.models.pixelcnn import GatedPixelCNN
from xcf.models.pixelcnn_training import build_pixelcnn, pixelcnn_recipe
from xcf.models.registry import fit_pixelcnn

torch.set_num_threads(1)


def _tiny(shape=(1, 6, 6), hidden=8, layers=2, levels=256, seed=0):
    cfg = {"model": {"shape": list(shape), "hidden": hidden, "head": hidden, "layers": layers, "kernel": 3,
                     "first_kernel": 3, "levels": levels}, "train": {"epochs": 1, "lr": 1e-3, "batch_size": 8},
           "seed": seed}
    model = build_pixelcnn(cfg)
    # a generic network: perturb every parameter (the masked kernel entries stay zero through the mask)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def _order(c, i, j, shape):
    """Position of sub-pixel (channel c, row i, column j) in raster-then-channel order."""
    channels, _, width = shape
    return (i * width + j) * channels + c


@pytest.mark.parametrize("shape, hidden", [((1, 6, 6), 8), ((3, 5, 5), 12)])
def test_causality_by_gradients(shape, hidden):
    torch.manual_seed(0)
    model = _tiny(shape, hidden=hidden)
    channels, height, width = shape
    x = torch.rand(16, *shape, requires_grad=True)  # logits of sample n depend on sample n only
    logits = model(x)
    assert logits.shape == (16, 256, *shape)
    positions = torch.tensor([[[_order(c, i, j, shape) for j in range(width)] for i in range(height)]
                              for c in range(channels)])  # (C, H, W)
    checked = [(c, 0, 0) for c in range(channels)] + [(c, 0, 1) for c in range(channels)]
    checked += [(0, 1, 0), (0, 2, 0), (channels - 1, 1, 0), (0, 0, width - 1), (0, 1, width - 1),
                (channels - 1, height - 1, width - 1), (channels // 2, 2, 2)]
    for c, i, j in checked:
        (grad,) = torch.autograd.grad(logits[:, :, c, i, j].sum(), x, retain_graph=True)
        depends = grad.abs().sum(0) > 0  # (C, H, W)
        me = _order(c, i, j, shape)
        later = positions >= me
        assert not bool(depends[later].any()), f"sub-pixel {(c, i, j)} sees itself or a later sub-pixel"
        if me > 0:
            assert bool(depends[~later].any()), f"sub-pixel {(c, i, j)} sees none of the earlier sub-pixels"
        else:
            assert not bool(depends.any())
    # no blind spot: the last pixel sees the pixel up-right of it and the previous channels of itself
    (grad,) = torch.autograd.grad(logits[:, :, channels - 1, 2, 2].sum(), x, retain_graph=True)
    assert bool(grad[:, :, 1, 3].abs().sum() > 0)
    assert bool(grad[:, :, 0, 4].abs().sum() > 0)  # the upper-right region a plain PixelCNN cannot see
    assert bool(grad[:, :, 2, 1].abs().sum() > 0)
    if channels > 1:
        assert bool(grad[:, : channels - 1, 2, 2].abs().sum() > 0)


def test_log_prob_matches_brute_force():
    model = _tiny((2, 3, 3), hidden=4, levels=5)
    k = torch.randint(0, 5, (3, 2, 3, 3))
    x = k / 4.0
    with torch.no_grad():
        logits = model(x)
        expected = torch.zeros(3)
        for n in range(3):
            for c in range(2):
                for i in range(3):
                    for j in range(3):
                        expected[n] += torch.log_softmax(logits[n, :, c, i, j], 0)[k[n, c, i, j]]
        got = model.log_prob(x)
    assert torch.allclose(got, expected, atol=1e-5)
    # off-grid values are scored as the image they round to
    assert torch.allclose(model.log_prob((x + 0.1 / 4).clamp(0, 1)), got, atol=1e-5)
    bpd = model.bits_per_dim(x)
    assert torch.allclose(bpd, -expected / (18 * math.log(2)), atol=1e-5)


def test_constant_images_are_learnt():
    x = torch.full((64, 1, 6, 6), round(0.5 * 255) / 255)
    cfg = pixelcnn_recipe((1, 6, 6), n=64)
    cfg["model"].update(hidden=8, head=8, layers=1, kernel=3, first_kernel=3)
    cfg["train"].update(epochs=60, lr=1e-2, batch_size=32)
    model, metrics = fit_pixelcnn(x, x_test=x[:8], config=cfg, max_seconds=20)
    assert not model.training
    assert metrics["train_bits_per_dim"] < 0.2 and metrics["test_bits_per_dim"] < 0.2
    assert metrics["history"]["bits_per_dim"][0] > metrics["train_bits_per_dim"]
    assert set(metrics) >= {"train_bits_per_dim", "test_bits_per_dim", "train_seconds", "epochs", "capped", "config"}
    assert metrics["config"]["seed"] == 0 and metrics["config"]["train"]["epochs"] == 60
    assert metrics["config"]["model"]["shape"] == [1, 6, 6]
    assert all(p.grad is None for p in model.parameters())


def test_batch_equals_single():
    model = _tiny((1, 5, 5), hidden=8)
    x = torch.randint(0, 256, (7, 1, 5, 5)) / 255.0
    batch = model.bits_per_dim(x, batch_size=3)
    single = torch.cat([model.bits_per_dim(x[i:i + 1]) for i in range(7)])
    assert batch.shape == (7,)
    assert torch.allclose(batch, single, atol=1e-5)
    assert torch.allclose(batch, model.bits_per_dim(x), atol=1e-5)
    assert model.bits_per_dim(x.double()).dtype == torch.float64


def test_build_is_deterministic_and_keeps_global_rng():
    cfg = pixelcnn_recipe((1, 8, 8), n=100, seed=3)
    state = torch.random.get_rng_state()
    a, b = build_pixelcnn(cfg), build_pixelcnn(cfg)
    assert torch.equal(state, torch.random.get_rng_state())
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    c = build_pixelcnn({**cfg, "seed": 4})
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))
    assert a.config() == cfg["model"]


def test_recipe():
    cfg = pixelcnn_recipe((1, 28, 28), n=4000)
    assert cfg["train"]["batch_size"] == 64 and 1e-3 <= cfg["train"]["lr"] <= 3e-3
    assert cfg["train"]["epochs"] * 4000 == pytest.approx(200_000, rel=0.05)
    assert pixelcnn_recipe((3, 32, 32))["model"]["hidden"] % 3 == 0
    GatedPixelCNN(**pixelcnn_recipe((3, 8, 8))["model"])


def test_training_mode_restored_and_no_gradients():
    model = _tiny((1, 4, 4), hidden=4).train()
    x = torch.rand(5, 1, 4, 4)
    model.bits_per_dim(x)
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    model.bits_per_dim(x)
    assert not any(m.training for m in model.modules())


@pytest.mark.parametrize("bad, match", [
    (torch.rand(2, 1, 5, 5), r"shape \(N, 1, 4, 4\), got \(2, 1, 5, 5\)"),
    (torch.rand(2, 4, 4), r"shape \(N, 1, 4, 4\), got \(2, 4, 4\)"),
    (torch.full((2, 1, 4, 4), float("nan")), "NaN"),
    (torch.full((2, 1, 4, 4), 1.5), r"\[0, 1\].*clamp counterfactuals"),
    (torch.full((2, 1, 4, 4), -0.1), r"\[0, 1\].*clamp counterfactuals"),
    (torch.zeros(2, 1, 4, 4, dtype=torch.long), "floating-point"),
])
def test_bad_inputs(bad, match):
    model = _tiny((1, 4, 4), hidden=4)
    with pytest.raises(ValueError, match=match):
        model.bits_per_dim(bad)
    with pytest.raises(ValueError, match=match):
        model.log_prob(bad)


@pytest.mark.parametrize("kwargs, match", [
    ({"shape": (1, 4)}, "shape"),
    ({"shape": (0, 4, 4)}, "shape"),
    ({"hidden": 0}, "hidden"),
    ({"shape": (3, 4, 4), "hidden": 2}, "hidden"),
    ({"layers": -1}, "layers"),
    ({"kernel": 4}, "kernel"),
    ({"kernel": 1}, "kernel"),
    ({"first_kernel": 2}, "first_kernel"),
    ({"head": 0}, "head"),
    ({"levels": 1}, "levels"),
    ({"levels": 2.5}, "levels"),
])
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GatedPixelCNN(**{"shape": (1, 4, 4), **kwargs})


def test_bad_fit_arguments():
    x = torch.rand(4, 1, 4, 4)
    with pytest.raises(ValueError, match="x lies in"):
        fit_pixelcnn(x * 2)
    with pytest.raises(ValueError, match="x_test has images"):
        fit_pixelcnn(x, x_test=torch.rand(2, 1, 5, 5))
    with pytest.raises(ValueError, match="max_seconds"):
        fit_pixelcnn(x, max_seconds=0)
    cfg = pixelcnn_recipe((1, 5, 5))
    with pytest.raises(ValueError, match="shape"):
        fit_pixelcnn(x, config=cfg)
    with pytest.raises(ValueError, match="unknown keys"):
        build_pixelcnn({**cfg, "model": {**cfg["model"], "width": 3}})
    with pytest.raises(ValueError, match="batch_size"):
        _tiny((1, 4, 4), hidden=4).bits_per_dim(x, batch_size=0)


def test_logits_sum_to_one_and_dtype():
    model = _tiny((1, 3, 3), hidden=4, levels=3)
    x = torch.randint(0, 3, (2, 1, 3, 3)) / 2.0
    with torch.no_grad():
        p = F.softmax(model(x), dim=1)
    assert torch.allclose(p.sum(1), torch.ones(2, 1, 3, 3))
