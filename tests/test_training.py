"""The one training loop, :func:`xcf.models.training.fit`, on tiny models with known answers."""

import math
import time

import pytest
import torch
from torch import nn

from xcf.models.training import fit


def _data(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3
    return x, y


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.2), nn.Linear(8, 1))


def _mse_step(model):
    def step(batch, ctx):
        xb, yb = batch
        loss = (model(xb) - yb).pow(2).mean()
        return loss, {"mse": (loss.detach() * len(xb), len(xb)), "batches": torch.ones(())}
    return step


def test_fit_is_deterministic_under_a_seed_and_learns():
    x, y = _data()
    runs = []
    for seed in (0, 0, 1):
        model = _model()
        history = fit(model, _mse_step(model), (x, y), epochs=20, batch_size=10, lr=1e-2, seed=seed,
                      isolate_rng=True)
        runs.append(([p.detach().clone() for p in model.parameters()], history))
    (w0, h0), (w1, h1), (w2, h2) = runs
    assert all(torch.equal(a, b) for a, b in zip(w0, w1)) and h0["mse"] == h1["mse"]
    assert not all(torch.equal(a, b) for a, b in zip(w0, w2))  # another seed, other shuffles and dropout
    assert h0["mse"][-1] < 0.5 * h0["mse"][0]
    # 48 samples in batches of 10: 5 batches per epoch, the short last one kept
    assert h0["epochs"] == 20 and h0["steps"] == 100 and h0["skipped"] == 0 and not h0["capped"]
    assert h0["batches"] == [1.0] * 20 and len(h0["lr"]) == 20  # a stat without weights: the mean per batch
    assert h0["final_lr"] == pytest.approx(0.0, abs=1e-12)  # the cosine schedule ends at 0


def test_fit_leaves_the_global_rng_alone_with_isolate_rng():
    x, y = _data()
    model = _model()
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    fit(model, _mse_step(model), (x, y), epochs=2, batch_size=16, lr=1e-2, isolate_rng=True)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_drop_last_and_constant_schedule():
    x, y = _data(n=50)
    model = _model()
    seen = []

    def step(batch, ctx):
        seen.append(len(batch[0]))
        return _mse_step(model)(batch, ctx)

    history = fit(model, step, (x, y), epochs=2, batch_size=16, lr=1e-2, schedule="constant", drop_last=True,
                  optimiser="adam")
    assert seen == [16, 16, 16] * 2 and history["steps"] == 6
    assert history["lr"] == [1e-2, 1e-2] and history["final_lr"] == 1e-2


def test_max_seconds_stops_early_and_anneals_to_zero():
    x, y = _data()
    model = _model()
    lrs = []

    def step(batch, ctx):
        lrs.append(ctx.optimisers["main"].param_groups[0]["lr"])
        time.sleep(0.01)
        return _mse_step(model)(batch, ctx)

    history = fit(model, step, (x, y), epochs=10_000, batch_size=16, lr=0.1, max_seconds=0.5)
    assert history["capped"] and 5 <= history["steps"] < 3 * 10_000
    assert history["epochs"] < 10_000 and len(history["mse"]) == history["epochs"]
    assert history["seconds"] < 2.0
    # the schedule followed the clock: it starts at lr and ends at about 0
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[-1] < 0.1 * 0.02 and history["lr"][-1] == lrs[-1]
    assert history["final_lr"] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b - 1e-12 for a, b in zip(lrs, lrs[1:]))  # monotone decay


def test_max_seconds_larger_than_the_run_changes_nothing_but_the_flag():
    x, y = _data()
    model = _model()
    history = fit(model, _mse_step(model), (x, y), epochs=3, batch_size=16, lr=1e-2, max_seconds=600.0)
    assert not history["capped"] and history["epochs"] == 3 and history["steps"] == 9
    assert history["final_lr"] == pytest.approx(0.0, abs=1e-12)  # the step fraction reached 1


@pytest.mark.parametrize("mode", [True, False])
def test_modes_are_restored_also_when_the_step_raises(mode):
    x, y = _data()
    model = _model()
    model.train(mode)
    model[1].train(not mode)  # a mixed user setting, restored per submodule
    seen = []

    def step(batch, ctx):
        seen.append(model.training and model[1].training)
        loss = (model(batch[0]) - batch[1]).pow(2).mean()
        if ctx.step == 2:
            raise RuntimeError("boom")
        return loss

    with pytest.raises(RuntimeError, match="boom"):
        fit(model, step, (x, y), epochs=3, batch_size=8, lr=1e-2)
    assert all(seen)  # training mode during the run
    assert model.training is mode and model[1].training is (not mode) and model[0].training is mode
    assert all(p.grad is None for p in model.parameters())  # no gradients left behind


def test_frozen_parameters_do_not_change():
    x, y = _data()
    model = _model()
    model[0].weight.requires_grad_(False)
    frozen = model[0].weight.detach().clone()
    other = model[2].weight.detach().clone()
    fit(model, _mse_step(model), (x, y), epochs=3, batch_size=8, lr=1e-1, weight_decay=0.1)
    assert torch.equal(model[0].weight, frozen)
    assert not torch.equal(model[2].weight, other)


def test_named_modules_get_one_optimiser_each_and_skipped_batches_are_counted():
    x, y = _data()
    a, b = nn.Linear(3, 1), nn.Linear(3, 1)
    b_before = b.weight.detach().clone()

    def step(batch, ctx):
        xb, yb = batch
        assert set(ctx.optimisers) == {"a", "b"}
        if ctx.epoch == 1:
            return None  # skip: no update, the schedule does not advance
        ctx.update((a(xb) - yb).pow(2).mean(), "a")
        return None, {"loss": torch.ones(())}

    history = fit({"a": a, "b": b}, step, (x, y), epochs=2, batch_size=16, lr=1e-2)
    assert history["steps"] == 3 and history["skipped"] == 3
    assert history["loss"][0] == 1.0 and math.isnan(history["loss"][1])
    assert torch.equal(b.weight, b_before)
    with pytest.raises(ValueError, match="name the optimiser"):
        fit({"a": a, "b": b}, lambda batch, ctx: (a(batch[0]) - batch[1]).pow(2).mean(), (x, y),
            epochs=1, batch_size=16, lr=1e-2)


@pytest.mark.parametrize("kwargs, match", [
    ({"epochs": -1}, "epochs must be an int >= 0, got -1"),
    ({"epochs": 2.5}, "epochs must be an int >= 0, got 2.5"),
    ({"batch_size": 0}, "batch_size must be an int >= 1, got 0"),
    ({"lr": 0.0}, "lr must be a finite number > 0, got 0.0"),
    ({"lr": float("nan")}, "lr must be a finite number > 0, got nan"),
    ({"max_seconds": -1.0}, "max_seconds must be a finite number > 0 or None, got -1.0"),
    ({"clip": 0}, "clip must be a finite number > 0 or None, got 0"),
    ({"schedule": "linear"}, "schedule must be one of .*, got 'linear'"),
    ({"optimiser": "sgd"}, "optimiser must be one of .*, got 'sgd'"),
    ({"weight_decay": -0.1}, "weight_decay must be a number >= 0, got -0.1"),
    ({"betas": (0.9, 1.5)}, r"betas must be two numbers in \[0, 1\), got \(0.9, 1.5\)"),
    ({"seed": "0"}, "seed must be an int, got '0'"),
])
def test_bad_arguments_raise_clear_errors(kwargs, match):
    x, y = _data()
    model = _model()
    args = {"epochs": 1, "batch_size": 8, "lr": 1e-2, **kwargs}
    with pytest.raises(ValueError, match=match):
        fit(model, _mse_step(model), (x, y), **args)


def test_bad_modules_and_data_raise_clear_errors():
    x, y = _data()
    model = _model()
    step = _mse_step(model)
    with pytest.raises(ValueError, match="modules must be"):
        fit("model", step, (x, y), epochs=1, batch_size=8, lr=1e-2)
    with pytest.raises(ValueError, match="same, non-zero number of samples"):
        fit(model, step, (x, y[:5]), epochs=1, batch_size=8, lr=1e-2)
    with pytest.raises(ValueError, match="data must be a tensor"):
        fit(model, step, [1, 2], epochs=1, batch_size=8, lr=1e-2)
    with pytest.raises(ValueError, match="step must be callable"):
        fit(model, None, (x, y), epochs=1, batch_size=8, lr=1e-2)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        fit(model, step, (x, y), epochs=1, batch_size=8, lr=1e-2)


def test_the_trainers_honour_max_seconds():
    from xcf.models import VAE, DCGANDiscriminator, DCGANGenerator, DigitsCNN, train_classifier, train_gan, train_vae

    x = torch.rand(64, 1, 8, 8)
    y = torch.randint(0, 10, (64,))
    h = train_classifier(DigitsCNN(width=2), x, y, epochs=100_000, batch_size=8, max_seconds=0.3)
    assert h["capped"] and h["epochs"] < 100_000 and h["final_lr"] == pytest.approx(0.0, abs=1e-12)
    h = train_gan(DCGANGenerator(4, 8, width=4), DCGANDiscriminator(8, width=4), x, epochs=100_000, max_seconds=0.3)
    assert h["capped"] and h["epochs"] == len(h["d_loss"]) < 100_000
    h = train_vae(VAE(4, 8, width=4), x, epochs=100_000, max_seconds=0.3)
    assert h["capped"] and h["epochs"] == len(h["loss"]) < 100_000


def test_models_package_has_no_lazy_shims_or_zoo():
    """The import cycle through lazy ``__getattr__`` shims is gone: every models module stands on its own."""
    import importlib
    import pkgutil

    import xcf.models

    for info in pkgutil.iter_modules(xcf.models.__path__):
        module = importlib.import_module(f"xcf.models.{info.name}")
        assert not hasattr(module, "__getattr__"), info.name
    for gone in ("xcf.models.zoo", "xcf.models.recipes", "xcf.models.shortcuts", "xcf._compat", "xcf.cli"):
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(gone)
