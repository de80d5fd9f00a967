"""Tests of xcf.validate: validators against scikit-learn, metrics on hand-made results, the table."""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.exceptions import NotFittedError
from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors
from sklearn.pipeline import make_pipeline
from sklearn.svm import SVC
from torch import nn

from xcf.evaluate.metrics import (
    METRIC_COLUMNS,
    MetricsTable,
    compare,
    counterfactual_metrics,
)
from xcf.evaluate.validators import KNNValidator, SVMValidator, nearest_distance
from xcf.models import bits_per_dim
from xcf.result import CounterfactualResult

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(d.target)
    return x[:1200], y[:1200], x[1200:1400], y[1200:1400]


@pytest.fixture(scope="module")
def svm(digits):
    return SVMValidator().fit(digits[0], digits[1])


@pytest.fixture(scope="module")
def knn(digits):
    return KNNValidator(k=10).fit(digits[0], digits[1])


def make_result(inputs, counterfactual, target, success=None, wall_time=1.0, recon=None):
    n = inputs.shape[0]
    return CounterfactualResult(
        inputs=inputs,
        counterfactual=counterfactual,
        latent=counterfactual.clone(),
        latent_start=inputs.clone(),
        reconstruction=inputs.clone(),
        reconstruction_error=torch.zeros(n) if recon is None else recon,
        target=torch.as_tensor(target, dtype=torch.long).reshape(-1).expand(n).clone(),
        success=torch.ones(n, dtype=torch.bool) if success is None else success,
        steps=torch.zeros(n, dtype=torch.long),
        score=torch.ones(n),
        start_score=torch.zeros(n),
        trace=torch.zeros(n, 2),
        wall_time=wall_time,
        method="test",
    )


# ------------------------------------------------------------------------------------- validators
def test_svm_matches_sklearn(digits, svm):
    xtr, ytr, xte, yte = digits
    ref = make_pipeline(SVC(C=10.0, gamma="scale", random_state=0))  # raw pixels, the default
    ref.fit(xtr.flatten(1).double().numpy(), ytr.numpy())
    expected = ref.predict(xte.flatten(1).double().numpy())
    pred = svm.predict(xte)
    assert pred.dtype == torch.long
    assert np.array_equal(pred.numpy(), expected)
    assert float((pred == yte).float().mean()) > 0.9
    transfer = svm.transfer(xte, yte)
    assert transfer.dtype == torch.bool
    assert torch.equal(transfer, torch.as_tensor(expected == yte.numpy()))


def test_svm_unstandardised_and_kernel(digits):
    xtr, ytr, xte, _ = digits
    v = SVMValidator(kernel="linear", C=1.0, standardize=False).fit(xtr, ytr)
    ref = SVC(kernel="linear", C=1.0, random_state=0).fit(xtr.flatten(1).double().numpy(), ytr.numpy())
    assert np.array_equal(v.predict(xte).numpy(), ref.predict(xte.flatten(1).double().numpy()))


def test_knn_agreement_matches_sklearn(digits, knn):
    xtr, ytr, xte, yte = digits
    nn_ref = NearestNeighbors(n_neighbors=10).fit(xtr.flatten(1).double().numpy())  # raw pixels, the default
    idx = nn_ref.kneighbors(xte.flatten(1).double().numpy(), return_distance=False)
    expected = (ytr.numpy()[idx] == yte.numpy()[:, None]).mean(axis=1)
    agreement = knn.agreement(xte, yte)
    assert agreement.dtype == torch.float32
    assert np.allclose(agreement.numpy(), expected)
    # Majority vote equals scikit-learn's KNeighborsClassifier (uniform weights) up to ties.
    clf = KNeighborsClassifier(10).fit(xtr.flatten(1).numpy(), ytr.numpy())
    same = (knn.predict(xte).numpy() == clf.predict(xte.flatten(1).numpy())).mean()
    assert same > 0.97
    # A training point's own label dominates its neighbourhood.
    assert float(knn.agreement(xtr[:50], ytr[:50]).mean()) > 0.8


def test_knn_agreement_known_values():
    train = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    knn = KNNValidator(k=3, standardize=False).fit(train, labels)
    assert knn.agreement(torch.tensor([[0.5], [10.5]]), torch.tensor([0, 0])).tolist() == pytest.approx([2 / 3, 0.0])
    assert knn.agreement(torch.tensor([[0.5], [10.5]]), 1).tolist() == pytest.approx([1 / 3, 1.0])
    d, i = knn.kneighbors(torch.tensor([[0.4]]))
    assert i.tolist() == [[0, 1, 2]]
    assert d[0].tolist() == pytest.approx([0.4, 0.6, 1.6])


def test_validators_accept_flat_features_and_numpy(digits, svm):
    xtr, ytr, xte, _ = digits
    flat = xte.flatten(1)
    assert torch.equal(svm.predict(flat), svm.predict(xte))
    assert torch.equal(svm.predict(xte.numpy()), svm.predict(xte))


def test_validators_leave_data_untouched(digits):
    xtr, ytr, _, _ = digits
    before = xtr.clone()
    SVMValidator(max_samples=300).fit(xtr, ytr)
    assert torch.equal(xtr, before)


def test_max_samples_subsamples(digits):
    xtr, ytr, _, _ = digits
    knn = KNNValidator(k=5, max_samples=200, random_state=1).fit(xtr, ytr)
    assert knn.train_x_.shape == (200, 64)
    again = KNNValidator(k=5, max_samples=200, random_state=1).fit(xtr, ytr)
    assert np.array_equal(knn.train_y_, again.train_y_)


@pytest.mark.parametrize("cls", [SVMValidator, KNNValidator])
def test_not_fitted(cls):
    v = cls()
    with pytest.raises(NotFittedError, match="not fitted yet"):
        v.predict(torch.zeros(2, 64))
    with pytest.raises(ValueError, match="fit\\(train_x, train_y\\)"):
        v.predict(torch.zeros(2, 64))


def test_shape_mismatch(svm, knn):
    with pytest.raises(ValueError, match=r"sample shape \(1, 7, 7\).*fitted on sample shape \(1, 8, 8\)"):
        svm.transfer(torch.zeros(2, 1, 7, 7), 0)
    with pytest.raises(ValueError, match="49 features"):
        knn.agreement(torch.zeros(2, 49), 0)


def test_targets_outside_classes(svm, knn):
    with pytest.raises(ValueError, match=r"target \[10\] is not among the classes"):
        svm.transfer(torch.zeros(2, 1, 8, 8), torch.tensor([1, 10]))
    with pytest.raises(ValueError, match=r"target \[-1\]"):
        knn.agreement(torch.zeros(2, 1, 8, 8), -1)
    with pytest.raises(ValueError, match="integer class indices"):
        svm.transfer(torch.zeros(2, 1, 8, 8), torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="3 entries but there are 2"):
        knn.agreement(torch.zeros(2, 1, 8, 8), [1, 2, 3])


def test_fit_errors():
    with pytest.raises(ValueError, match="single class"):
        SVMValidator().fit(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="3 entries but there are 4"):
        KNNValidator(k=1).fit(torch.zeros(4, 3), torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="NaN or Inf"):
        SVMValidator().fit(torch.full((4, 3), float("nan")), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="only 4 training samples"):
        KNNValidator(k=10).fit(torch.rand(4, 3), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match=r"class indices >= 0, got \[-1\]"):
        SVMValidator().fit(torch.rand(4, 3), torch.tensor([0, 1, -1, 1]))
    with pytest.raises(ValueError, match="one label per sample"):
        SVMValidator().fit(torch.rand(4, 3), 1)
    with pytest.raises(ValueError, match="k must be a positive int"):
        KNNValidator(k=0)
    with pytest.raises(ValueError, match="C must be > 0"):
        SVMValidator(C=0)
    with pytest.raises(TypeError, match="torch.Tensor or numpy array"):
        SVMValidator().fit([[0.0, 1.0]], [0])


# ---------------------------------------------------------------------------------------- realism
def test_nearest_distance_brute_force(digits):
    xtr, ytr, xte, yte = digits
    target = (yte[:20] + 3) % 10
    d = nearest_distance(xte[:20], xtr, ytr, target, chunk_size=97)
    for i in range(20):
        pool = xtr[ytr == target[i]].flatten(1)
        assert float(d[i]) == pytest.approx(float((pool - xte[i].flatten()).norm(dim=1).min()), rel=1e-5)


def test_nearest_distance_errors():
    with pytest.raises(ValueError, match=r"target \[5\] does not occur in train_y"):
        nearest_distance(torch.zeros(1, 2), torch.zeros(3, 2), torch.tensor([0, 1, 1]), 5)
    with pytest.raises(ValueError, match="2 features per sample.*has 3"):
        nearest_distance(torch.zeros(1, 2), torch.zeros(3, 3), torch.tensor([0, 1, 1]), 1)


# ---------------------------------------------------------------------------------------- metrics
class Linear2(nn.Module):
    """Two classes: logit_1 - logit_0 = sum(x) - 1."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)
        with torch.no_grad():
            self.lin.weight.copy_(torch.tensor([[0.0] * 4, [1.0] * 4]))
            self.lin.bias.copy_(torch.tensor([0.0, -1.0]))

    def forward(self, x):
        return self.lin(x.flatten(1))


def test_metrics_known_values():
    x = torch.zeros(3, 4)
    xc = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.3, -0.4, 0.0, 0.005], [0.1, 0.1, 0.1, 0.1]])
    # search claims success for all three, but sample 2 (sum 0.4 < 1) is not valid for the classifier
    r = make_result(x, xc, 1, wall_time=0.03, recon=torch.tensor([0.0, 0.1, 0.2]))
    m = counterfactual_metrics(r, Linear2(), sparsity_tol=0.01)
    assert list(m) == [c for c in METRIC_COLUMNS if c in m]
    assert m["success"].tolist() == [1.0, 1.0, 1.0]
    assert m["validity"].tolist() == [1.0, 0.0, 0.0]
    assert m["l1"].tolist() == pytest.approx([2.0, 0.705, 0.4])
    assert m["l2"].tolist() == pytest.approx([2.0, math.sqrt(0.25 + 0.005**2), 0.2])
    assert m["sparsity"].tolist() == pytest.approx([0.25, 0.5, 1.0])
    assert m["reconstruction_error"].tolist() == pytest.approx([0.0, 0.1, 0.2])
    assert m["time_ms"].tolist() == pytest.approx([10.0] * 3)
    assert "svm_transfer" not in m and "realism_bpd" not in m and "realism_nn_l2" not in m


def test_metrics_realism_and_manifold():
    x = torch.zeros(2, 4)
    xc = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 3.0]])
    r = make_result(x, xc, torch.tensor([1, 0]))
    train = (torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]), torch.tensor([1, 0]))
    m = counterfactual_metrics(r, train=train)
    assert m["realism_nn_l2"].tolist() == pytest.approx([0.0, 3.0])
    nll = lambda z: z.pow(2).sum(dim=1) * math.log(2.0)  # noqa: E731  bits = sum x^2
    m = counterfactual_metrics(r, nll_fn=nll, train=train, on_manifold_fn=lambda res: torch.tensor([0.25, 1.0]))
    # the inputs lie in [0, 1], so x' is scored clamped to it: the 3.0 counts as 1.0, and is counted out of range
    assert m["realism_bpd"].tolist() == pytest.approx([2.0 / 4, 1.0 / 4])
    assert m["out_of_range"].tolist() == [0.0, 1.0] and m["out_of_range_pixels"].tolist() == [0.0, 0.25]
    assert "realism_nn_l2" not in m  # a density takes precedence
    assert m["on_manifold"].tolist() == [0.25, 1.0]
    unclamped = counterfactual_metrics(r, nll_fn=nll, bounds=None)
    assert unclamped["realism_bpd"].tolist() == pytest.approx([2.0 / 4, 9.0 / 4]) and "out_of_range" not in unclamped

    class Flow(nn.Module):
        def log_prob(self, z):
            return -nll(z)

    # a flow is scored in true bits per dimension of the discrete data (levels needed without xcf's Dequantize)
    with pytest.raises(ValueError, match="levels is required"):
        counterfactual_metrics(r, flow=Flow())
    expected = bits_per_dim(Flow(), xc.clamp(0, 1), 256, dequantize=False)
    assert torch.allclose(counterfactual_metrics(r, flow=Flow(), levels=256)["realism_bpd"], expected)


def test_metrics_validators_on_digits(digits, svm, knn):
    xtr, ytr, xte, yte = digits
    # "Counterfactuals" that are real test digits of the target class: validators agree.
    other = xte[torch.argsort(yte)][:30]
    r = make_result(xte[:30], other, torch.sort(yte).values[:30])
    m = counterfactual_metrics(r, svm=svm, knn=knn)
    assert float(m["svm_transfer"].mean()) > 0.85
    assert float(m["knn_agreement"].mean()) > 0.8
    # the k-NN's stored training data feeds the realism fallback
    assert torch.allclose(m["realism_nn_l2"], nearest_distance(other, xtr, ytr, r.target), atol=1e-5)
    # The inputs themselves as "counterfactuals" toward (y + 1) % 10 do not transfer.
    r_bad = make_result(xte[:30], xte[:30], (yte[:30] + 1) % 10)
    m_bad = counterfactual_metrics(r_bad, svm=svm, knn=knn)
    assert float(m_bad["svm_transfer"].mean()) < 0.15
    assert float(m_bad["knn_agreement"].mean()) < 0.15


def test_metrics_batched_equals_per_sample(digits, svm, knn):
    _, _, xte, yte = digits
    r = make_result(xte[:10], xte[10:20], (yte[:10] + 2) % 10)
    full = counterfactual_metrics(r, Linear10(), svm=svm, knn=knn, batch_size=3)
    for i in range(10):
        one = counterfactual_metrics(r[i], Linear10(), svm=svm, knn=knn)
        for k, v in one.items():
            if k != "time_ms":
                assert float(v[0]) == pytest.approx(float(full[k][i]), abs=1e-6), k


class Linear10(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(64, 10)

    def forward(self, x):
        return self.lin(x.flatten(1))


def test_metrics_leave_classifier_untouched():
    model = Linear2().train()
    model.lin.weight.requires_grad_(True)
    counterfactual_metrics(make_result(torch.zeros(2, 4), torch.ones(2, 4), 1), model)
    assert model.training and model.lin.weight.grad is None


def test_metrics_errors():
    r = make_result(torch.zeros(2, 4), torch.ones(2, 4), 1)
    with pytest.raises(TypeError, match="CounterfactualResult"):
        counterfactual_metrics({"inputs": 1})
    with pytest.raises(ValueError, match="exceeds the classifier's 2 classes"):
        counterfactual_metrics(make_result(torch.zeros(2, 4), torch.ones(2, 4), 5), Linear2())
    with pytest.raises(ValueError, match="class targets"):
        counterfactual_metrics(make_result(torch.zeros(2, 4), torch.ones(2, 4), -1), Linear2())
    with pytest.raises(ValueError, match="either nll_fn or flow"):
        counterfactual_metrics(r, nll_fn=lambda z: z.sum(1), flow=object())
    with pytest.raises(ValueError, match=r"nll_fn must return one value \(or row\) per sample; got shape \(\)"):
        counterfactual_metrics(r, nll_fn=lambda z: z.sum())
    with pytest.raises(ValueError, match="one value per sample"):
        counterfactual_metrics(r, on_manifold_fn=lambda res: torch.zeros(3))
    with pytest.raises(ValueError, match="tol must be >= 0"):
        counterfactual_metrics(r, sparsity_tol=-1)


# ------------------------------------------------------------------------------------------ table
def test_compare_and_table_formats(tmp_path):
    x = torch.zeros(3, 4)
    good = make_result(x, torch.tensor([[2.0, 0, 0, 0], [1.0, 1.0, 0, 0], [0.5, 0.5, 0.5, 0.5]]), 1, wall_time=0.3)
    bad = make_result(x, torch.full((3, 4), 0.1), 1, wall_time=3.0, success=torch.tensor([True, False, False]))
    table = compare({"good": good, "bad": bad}, Linear2())
    assert isinstance(table, MetricsTable)
    d = table.to_dict()
    assert list(d) == ["good", "bad"]
    assert d["good"]["n"] == 3 and d["good"]["validity"] == 1.0
    assert d["bad"]["validity"] == 0.0 and d["bad"]["success"] == pytest.approx(1 / 3)
    assert d["good"]["l1"] == pytest.approx(2.0)
    assert d["bad"]["time_ms"] == pytest.approx(1000.0)
    md = table.to_markdown()
    lines = md.splitlines()
    assert lines[0] == "| method | n | " + " | ".join(table.columns) + " |"
    assert len(lines) == 4 and lines[1].count("---") == len(table.columns) + 2
    assert "| good | 3 | 1.000 | 1.000 |" in md
    assert "1000 |" in md  # large numbers without spurious decimals
    text = table.to_csv(tmp_path / "m.csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert float(rows[1]["time_ms"]) == pytest.approx(1000.0)
    assert (tmp_path / "m.csv").read_text() == text
    valid_only = compare({"good": good, "bad": bad}, Linear2(), subset="valid").to_dict()
    assert valid_only["good"]["n"] == 3 and valid_only["bad"]["n"] == 0
    assert math.isnan(valid_only["bad"]["l1"])
    assert "| bad | 0 | - |" in compare({"bad": bad}, Linear2(), subset="valid").to_markdown()


def test_table_formatting_of_small_values():
    t = MetricsTable({"a": {"l2": 0.000123, "time_ms": 12.345, "sparsity": 0.5}}, {"a": 5})
    assert t.to_markdown().splitlines()[-1] == "| a | 5 | 1.2e-04 | 0.500 | 12.3 |"


def test_compare_errors():
    with pytest.raises(ValueError, match="results is empty"):
        compare({})
    with pytest.raises(ValueError, match="subset must be"):
        compare({"a": make_result(torch.zeros(1, 4), torch.ones(1, 4), 1)}, subset="some")
