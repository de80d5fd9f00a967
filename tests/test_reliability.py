"""Bad input, one table: every case ends in the named kind of error (or warning) with a keyword of its message.

Through the Python API (tiny models) and the command line (in process; the CLI must answer with one line
on stderr and exit status 2 before anything heavy runs).
"""

import warnings

import numpy as np
import pytest
import torch
from nflows.distributions import StandardNormal
from nflows.flows import Flow
from nflows.nn.nets import ResidualNet
from nflows.transforms import AffineCouplingTransform, CompositeTransform, ReversePermutation
from torch import nn

import xcf
from xcf.apps.cli import main
from xcf.evaluate import KNNValidator, SVMValidator
from xcf.models.flows import realnvp_flow
from xcf.models.io import save_model


def clf(out=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, out)).eval()


def flow():
    torch.manual_seed(1)
    mask = torch.arange(16) % 2
    net = lambda i, o: ResidualNet(i, o, hidden_features=8, num_blocks=1)  # noqa: E731
    return Flow(CompositeTransform([AffineCouplingTransform(mask, net), ReversePermutation(16)]),
                StandardNormal([16])).eval()


def gen():
    torch.manual_seed(2)
    return nn.Sequential(nn.Linear(3, 16), nn.Sigmoid(), nn.Unflatten(1, (1, 4, 4))).eval()


X = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1


class Wrap(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.inner, self.fn = clf(), fn

    def forward(self, x):
        return self.fn(self.inner(x), x)


def adv(model=None, **kw):
    return xcf.AdversarialCounterfactual(model if model is not None else clf(), **kw)


def cf(explainer=None, x=X, target=1, **kw):
    return (explainer or adv()).counterfactual(x, target=target, **kw)


class NoInverse(Flow):
    def __init__(self):
        super().__init__(ReversePermutation(16), StandardNormal([16]))

    def _sample(self, *a, **k):
        raise NotImplementedError


def _no_inverse_flow():
    f = NoInverse().float().eval()
    f._transform.inverse = lambda z, context=None: (_ for _ in ()).throw(NotImplementedError())
    return f


def _dropout_clf():
    m = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(16, 3))
    return m.train()


def _bn_clf():
    return nn.Sequential(nn.Flatten(), nn.BatchNorm1d(16), nn.Linear(16, 3)).train()


def _fitted(cls):
    return cls().fit(torch.rand(30, 1, 4, 4), torch.arange(30) % 3)


API = {
    # inputs
    "inputs not a tensor": (lambda: cf(x=np.zeros((3, 1, 4, 4))), TypeError, "must be a torch.Tensor"),
    "integer inputs": (lambda: cf(x=torch.zeros(3, 1, 4, 4, dtype=torch.long)), ValueError, "floating-point"),
    "no batch dimension": (lambda: cf(x=torch.rand(16)), ValueError, "batch dimension"),
    "empty batch": (lambda: cf(x=torch.rand(0, 1, 4, 4)), ValueError, "empty batch"),
    "NaN input": (lambda: cf(x=torch.full((2, 1, 4, 4), float("nan"))), ValueError, "NaN"),
    "Inf input": (lambda: cf(x=torch.full((2, 1, 4, 4), float("inf"))), ValueError, "Inf"),
    "tuple of two inputs": (lambda: adv().attribute((X, X), target=1), ValueError, "one input tensor"),
    "float64 inputs, float32 model": (lambda: cf(x=X.double()), ValueError, "float64 but the classifier"),
    "float16 inputs": (lambda: cf(x=X.half()), ValueError, "float16 but the classifier"),
    "bfloat16 inputs": (lambda: cf(x=X.bfloat16()), ValueError, "bfloat16 but the classifier"),
    "[0, 255] inputs, pixel bounds": (lambda: cf(x=X * 255), ValueError, "outside bounds"),
    "[0, 255] inputs, xcf flow": (lambda: cf(xcf.DiffeomorphicCounterfactual(
        clf(), realnvp_flow((1, 4, 4), levels=256, hidden=4, blocks_per_scale=1, scales=1).eval()), x=X * 255),
        ValueError, "dequantises images in"),
    "wrong shape for the flow": (lambda: cf(xcf.DiffeomorphicCounterfactual(nn.Sequential(
        nn.Flatten(), nn.Linear(25, 3)).eval(), flow()), x=torch.rand(2, 1, 5, 5)), ValueError, "flow"),
    # targets
    "target missing": (lambda: cf(target=None), ValueError, "target is required"),
    "target out of range": (lambda: cf(target=7), ValueError, "out of range"),
    "negative target": (lambda: cf(target=-1), ValueError, "out of range"),
    "float target": (lambda: cf(target=1.5), TypeError, "target must be a class index"),
    "float tensor target": (lambda: cf(target=torch.tensor([1.0, 0.0, 1.0])), ValueError, "integer class"),
    "bool target": (lambda: cf(target=True), ValueError, "bool"),
    "target of wrong length": (lambda: cf(target=[0, 1]), ValueError, "2 entries but the batch has 3"),
    "target list of floats": (lambda: cf(target=[0.0, 1.0, 2.0]), ValueError, "integer class"),
    "target out of range refused before inversion": (lambda: cf(xcf.ApproximateCounterfactual(
        clf(), gen(), 3, inversion_steps=10**6), target=9), ValueError, "out of range"),
    # search options
    "steps float": (lambda: cf(steps=2.7), TypeError, "steps must be an int"),
    "steps string": (lambda: cf(steps="5"), TypeError, "steps must be an int"),
    "steps negative": (lambda: cf(steps=-1), ValueError, "steps must be an int >= 0"),
    "steps bool": (lambda: cf(steps=True), TypeError, "steps must be an int"),
    "steps huge": (lambda: cf(steps=10**12), ValueError, "too large"),
    "lr zero": (lambda: cf(lr=0.0), ValueError, "lr must be a finite number > 0"),
    "lr negative": (lambda: cf(lr=-0.1), ValueError, "lr must be"),
    "lr inf": (lambda: cf(lr=float("inf")), ValueError, "lr must be a finite number"),
    "lr nan": (lambda: cf(lr=float("nan")), ValueError, "lr must be a finite number"),
    "lr string": (lambda: cf(lr="0.1"), TypeError, "lr must be a finite number"),
    "confidence bool": (lambda: cf(confidence=True), TypeError, "confidence must be a finite number"),
    "confidence zero": (lambda: cf(confidence=0.0), ValueError, r"confidence must be in \(0, 1\]"),
    "confidence above one": (lambda: cf(confidence=1.5), ValueError, "confidence must be in"),
    "unknown update rule": (lambda: cf(update="newton"), ValueError, "update must be"),
    "objective and target": (lambda: cf(objective=xcf.ScalarTarget(1.0)), ValueError, "not both"),
    # the classifier
    "classifier returns a tuple": (lambda: cf(adv(Wrap(lambda y, x: (y, y)))), TypeError, "tuple of 2 items"),
    "classifier returns a dict": (lambda: cf(adv(Wrap(lambda y, x: {"logits": y}))), TypeError, "dict"),
    "classifier returns N+1 rows": (lambda: cf(adv(Wrap(lambda y, x: torch.cat([y, y[:1]])))), ValueError,
                                    "for a batch of 3"),
    "classifier returns 1-D": (lambda: cf(adv(Wrap(lambda y, x: y.flatten()))), ValueError, r"\(batch, classes\)"),
    "classifier returns NaN": (lambda: cf(adv(Wrap(lambda y, x: y * float("nan")))), ValueError, "NaN or Inf"),
    "logits declared as probs": (lambda: cf(adv(Wrap(lambda y, x: y * 10), output="probs")), ValueError, "outside"),
    "logits declared as log_probs": (lambda: cf(adv(Wrap(lambda y, x: y.abs() + 1), output="log_probs")),
                                     ValueError, "output='log_probs'"),
    "unknown output kind": (lambda: adv(output="scores"), ValueError, "output must be"),
    "BatchNorm classifier in train mode": (lambda: cf(adv(_bn_clf())), ValueError, "BatchNorm"),
    "Dropout classifier in train mode": (lambda: cf(adv(_dropout_clf())), ValueError, "Dropout"),
    "classifier on another device": (lambda: cf(adv(clf().to("meta"))), ValueError, "parameters are on meta"),
    # explainers and charts
    "not a flow": (lambda: xcf.DiffeomorphicCounterfactual(clf(), object()), TypeError, "nflows"),
    "flow in train mode": (lambda: cf(xcf.DiffeomorphicCounterfactual(clf(), flow().train())), ValueError,
                           "training mode"),
    "flow without an inverse": (lambda: cf(xcf.DiffeomorphicCounterfactual(clf(), _no_inverse_flow())),
                                ValueError, "inverse is not implemented"),
    "max_recon_error zero": (lambda: xcf.DiffeomorphicCounterfactual(clf(), flow(), max_recon_error=0),
                             ValueError, "max_recon_error must be > 0"),
    "options positional": (lambda: xcf.DiffeomorphicCounterfactual(clf(), flow(), "probs"), TypeError,
                           "positional"),
    "generator not callable": (lambda: xcf.ApproximateCounterfactual(clf(), 3, 3), TypeError, "callable"),
    "latent shape wrong": (lambda: cf(xcf.ApproximateCounterfactual(clf(), gen(), 5)), ValueError,
                           "does not fit the generator"),
    "latent shape zero": (lambda: xcf.ApproximateCounterfactual(clf(), gen(), 0), ValueError, "latent_shape"),
    "restarts zero": (lambda: xcf.ApproximateCounterfactual(clf(), gen(), 3, restarts=0), ValueError, "restarts"),
    "radius without norm": (lambda: adv(radius=0.1), ValueError, "without a norm"),
    "norm without radius": (lambda: adv(norm="linf"), ValueError, "needs a radius"),
    "bounds reversed": (lambda: adv(bounds=(1.0, 0.0)), ValueError, "low < high"),
    "pixel chart bad update": (lambda: xcf.PixelChart(update="momentum"), ValueError, "update must be"),
    # validators
    "validator queried with transposed images": (lambda: _fitted(SVMValidator).predict(torch.rand(2, 4, 4, 1)),
                                                 ValueError, "shape"),
    "validator fitted on NaN": (lambda: SVMValidator().fit(torch.full((4, 2), float("nan")), torch.arange(4) % 2),
                                ValueError, "NaN|finite"),
    "validator labels of wrong length": (lambda: KNNValidator().fit(torch.rand(5, 2), torch.arange(4)),
                                         ValueError, "labels|samples|length"),
}


@pytest.mark.parametrize("case", sorted(API), ids=lambda c: c.replace(" ", "-"))
def test_api_bad_input(case):
    fn, error, match = API[case]
    with pytest.raises(error, match=match):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn()


def test_probabilities_passed_as_logits_warn():
    probs = adv(Wrap(lambda y, x: y.softmax(1)))
    with pytest.warns(UserWarning, match="look like probabilities.*output='probs'"):
        cf(probs, steps=3)


def test_numpy_targets_are_accepted():
    a = cf(target=np.int64(1), steps=20)
    b = cf(target=np.array([1, 1, 1]), steps=20)
    c = cf(target=1, steps=20)
    assert torch.equal(a.counterfactual, c.counterfactual) and torch.equal(b.counterfactual, c.counterfactual)


def test_models_are_left_as_found_when_a_call_raises():
    model = _dropout_clf()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError):
        cf(adv(model))
    assert model.training and all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------------------------------------- CLI
def _bad_files(tmp_path):
    files = {}
    good = tmp_path / "good.pt"
    save_model(nn.Linear(2, 2), good, {"in_features": 2})
    files["truncated"] = tmp_path / "truncated.pt"
    files["truncated"].write_bytes(good.read_bytes()[:100])
    files["random"] = tmp_path / "random.pt"
    files["random"].write_bytes(np.random.default_rng(0).bytes(512))
    files["empty"] = tmp_path / "empty.pt"
    files["empty"].write_bytes(b"")
    files["pickle"] = tmp_path / "pickle.pt"
    torch.save({"format": 1, "code": np.random.default_rng(0)}, files["pickle"])  # an object beyond tensors
    files["foreign"] = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, files["foreign"])
    files["wrong class"] = good
    return files


CLI = [
    (["demo", "--threads", "-1"], "--threads: must be >= 0"),
    (["demo", "--n", "0"], "--n: must be >= 1"),
    (["demo", "--steps", "-1"], "--steps: must be >= 0"),
    (["demo", "--steps", "ten"], "expected an integer"),
    (["demo", "--methods", ","], "no method chosen"),
    (["demo", "--methods", "magic"], "unknown methods"),
    (["demo", "--flow", "maf"], "invalid choice"),
    (["audit", "--images", "0"], "--images: must be >= 1"),
    (["audit", "--images", "-5"], "--images: must be >= 1"),
    (["audit", "--batch-size", "0"], "--batch-size: must be >= 1"),
    (["audit", "--workers", "-2"], "--workers: must be >= 0"),
    (["audit", "--max-batches", "0"], "--max-batches: must be >= 1"),
    (["audit", "--data", "imagenet"], "neither a built-in set"),
    (["audit", "--device", "tpu"], "invalid choice"),
    (["audit", "--precision", "fp8"], "invalid choice"),
    (["extrapolate", "--steps", "0"], "--steps: must be >= 1"),
    (["extrapolate", "--knowledge", "-1"], "--knowledge: must be >= 0"),
    (["frobnicate"], "invalid choice"),
]


@pytest.mark.parametrize("argv, keyword", CLI, ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_cli_bad_option_is_one_line(argv, keyword, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and keyword in err[0], err


def test_cli_out_or_cache_that_is_a_file(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for flag in ("--out", "--cache"):
        assert main(["demo", flag, str(blocker)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "exists and is not a folder" in err[0]


@pytest.mark.parametrize("kind", ["truncated", "random", "empty", "pickle", "foreign", "wrong class", "missing"])
def test_cli_unreadable_classifier_is_one_line_before_any_training(kind, tmp_path, capsys):
    files = _bad_files(tmp_path)
    path = files.get(kind, tmp_path / "missing.pt")
    cache = tmp_path / "cache"
    assert main(["audit", "--classifier", str(path), "--out", str(tmp_path / "o"), "--cache", str(cache),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path.name) in err[0], err
    assert "weights_only" not in err[0] and "Traceback" not in err[0]
    assert not cache.exists() or not any(cache.iterdir())  # nothing was trained first


def test_cli_debug_shows_the_traceback(tmp_path, capsys):
    assert main(["audit", "--classifier", str(tmp_path / "missing.pt"), "--debug", "--out", str(tmp_path / "o"),
                 "--cache", str(tmp_path / "c")]) == 2
    assert "Traceback" in capsys.readouterr().err



def test_cli_config_that_does_not_fit_the_weights_is_one_line(tmp_path, capsys):
    from xcf.models.classifier import DigitsCNN

    path = tmp_path / "mismatch.pt"
    save_model(DigitsCNN(width=8), path, {"model": {"width": 32}})  # the config says 32 channels, weights hold 8
    assert main(["audit", "--classifier", str(path), "--out", str(tmp_path / "o"), "--cache",
                 str(tmp_path / "c"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "size mismatch" in err[0], err


def test_class_names_with_dollars_render(tmp_path):
    from xcf.report.figures import comparison_grid, mean_map_figure, save_figure

    r = cf(steps=20, target=[0, 1, 2])
    names = ["$cash", "50% $off", "a_$b$"]
    paths = save_figure(comparison_grid({"m": r}, clf(), n=3, class_names=names), tmp_path / "grid")
    paths += save_figure(mean_map_figure({"m": {0: r.difference[0]}}, names), tmp_path / "maps")
    assert all(p.stat().st_size > 0 for p in paths)


def test_figures_whose_names_differ_after_a_dot_do_not_overwrite(tmp_path):
    from matplotlib.figure import Figure

    from xcf.report.html import Report

    report = Report("t")
    for name in ("run.v1", "run.v2"):
        report.figure(name, Figure(figsize=(1, 1)))
    report.write(tmp_path)
    assert sorted(p.name for p in (tmp_path / "figures").glob("*.png")) == ["run-v1.png", "run-v2.png"]
