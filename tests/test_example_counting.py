"""The counting example (``examples/counting``): seeded data with an exact oracle, the regressor's
training on the one loop, and a quick end-to-end run.  The example lives outside the package; its
folder is put on ``sys.path`` here."""

import sys
import warnings
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "counting"))

from counting import (  # noqa: E402
    CountingCNN,
    count_blobs,
    counting_figure,
    counting_models,
    make_counting_data,
    run_counting_example,
    train_regressor,
)


def test_counting_data_is_seeded_and_the_oracle_is_exact():
    x, c = make_counting_data(300, seed=3)
    x2, c2 = make_counting_data(300, seed=3)
    assert torch.equal(x, x2) and torch.equal(c, c2)
    assert not torch.equal(make_counting_data(300, seed=4)[0], x)
    assert x.shape == (300, 1, 16, 16) and x.min() >= 0 and x.max() <= 1
    assert torch.allclose(x * 15, (x * 15).round(), atol=1e-5)  # 16 grey levels
    assert set(c.tolist()) == set(range(6))
    assert torch.equal(count_blobs(x), c)
    with pytest.raises(ValueError, match="cannot place [0-9]+ blobs"):
        make_counting_data(3, size=8, max_count=9, seed=0)
    with pytest.raises(ValueError, match="grey images"):
        count_blobs(torch.rand(2, 3, 8, 8))


def test_counting_regressor_shape_and_training_reduces_loss():
    x, c = make_counting_data(128, seed=0)
    torch.manual_seed(0)
    model = CountingCNN(width=4)
    assert model(x[:3]).shape == (3,)
    history = train_regressor(model, x, c, epochs=3, gain=(0.7, 1.6), noise=0.15)
    assert history["mse"][-1] < history["mse"][0] and model.training
    assert history["epochs"] == 3 and history["steps"] == 3 * 2 and not history["capped"]
    with pytest.raises(ValueError, match="gain"):
        train_regressor(model, x, c, gain=(2.0, 1.0))


@pytest.mark.slow
def test_counting_example_quick_end_to_end(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a quick regressor may already satisfy some objectives
        models = counting_models("quick", cache_dir=tmp_path)
        run = run_counting_example("quick", models=models)
    assert list(tmp_path.glob("counting-regressor-*.pt")) and list(tmp_path.glob("counting-flow-*.pt"))
    assert {(r["method"], r["direction"]) for r in run.table} == {
        ("flow", "more"), ("pixel", "more"), ("flow", "fewer"), ("pixel", "fewer")}
    reg = models["regressor"]
    for (method, direction), res in run.results.items():
        c = run.true_count[direction].float()
        thr = c + 1.5 if direction == "more" else c - 1.5
        assert torch.equal(res.info["threshold"], thr.double())
        with torch.no_grad():
            value = reg(res.counterfactual)
        # the regressor judged exactly the returned images: successes are past their threshold
        assert torch.allclose(value, res.score, atol=1e-4)
        ok = res.success
        assert ((value >= thr) if direction == "more" else (value <= thr))[ok].all()
        row = next(r for r in run.table if (r["method"], r["direction"]) == (method, direction))
        assert row["success_rate"] == pytest.approx(res.success_rate)
        assert row["oracle_after"] == pytest.approx(count_blobs(res.counterfactual).float().mean().item())
        if method == "pixel":
            assert res.counterfactual.min() >= 0 and res.counterfactual.max() <= 1
    assert "success_rate" in run.format_table()
    fig = counting_figure(run, reg, n_rows=2)
    assert len(fig.axes) == 4 * 5
