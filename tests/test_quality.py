"""Fréchet distance: known values, symmetry, feature extraction from a classifier, bad input."""

import pytest
import torch
from torch import nn

from xcf.evaluate.quality import (
    frechet_distance,
    gaussian_frechet_distance,
    penultimate_features,
)

torch.set_num_threads(1)


def identity(t):
    return t.flatten(1)


def sample(n=400, d=5, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_zero_for_identical_sets():
    x = sample()
    assert frechet_distance(x, x, features=identity) == pytest.approx(0.0, abs=1e-9)


def test_shift_gives_squared_norm():
    x = sample()
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0], dtype=torch.float64)
    # same samples shifted: equal covariances, so FD² = ||shift||²
    assert frechet_distance(x, x + shift, features=identity) == pytest.approx(float(shift.pow(2).sum()), rel=1e-9)


def test_scaling_gives_known_value():
    # fake = a·real: FD² = (1 - a)² (||μ||² + Tr Σ), with the sample mean and covariance of real
    x = sample(d=4) + 0.3
    a = 2.5
    mu, cov = x.mean(0), torch.cov(x.T)
    expected = (1 - a) ** 2 * float(mu.pow(2).sum() + torch.trace(cov))
    assert frechet_distance(x, a * x, features=identity) == pytest.approx(expected, rel=1e-8)


def test_gaussians_in_closed_form():
    # diagonal covariances: FD² = ||μ1 - μ2||² + Σ (σ1 - σ2)²
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    s1, s2 = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 1.0, 9.0])
    expected = float((mu1 - mu2).pow(2).sum() + (s1.sqrt() - s2.sqrt()).pow(2).sum())
    assert gaussian_frechet_distance(mu1, torch.diag(s1), mu2, torch.diag(s2)) == pytest.approx(expected, rel=1e-10)
    # a rotated (non-diagonal) pair, and a singular covariance
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    r1, r2 = q @ torch.diag(s1.double()) @ q.T, q @ torch.diag(s2.double()) @ q.T
    assert gaussian_frechet_distance(mu1, r1, mu2, r2) == pytest.approx(expected, rel=1e-9)
    sing = torch.diag(torch.tensor([1.0, 0.0, 0.0]))
    assert gaussian_frechet_distance(mu1, sing, mu1, sing) == pytest.approx(0.0, abs=1e-9)


def test_large_samples_approach_the_population_value():
    n = 20000
    real = sample(n, 3, seed=2)
    fake = sample(n, 3, seed=3) * torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64) + 1.0
    expected = 3.0 + (2.0 - 1.0) ** 2  # ||shift||² + (σ differences)²
    assert frechet_distance(real, fake, features=identity) == pytest.approx(expected, abs=0.15)


def test_symmetric():
    a, b = sample(300, 6, seed=4), sample(250, 6, seed=5) * 1.7 - 0.4
    assert frechet_distance(a, b, features=identity) == pytest.approx(frechet_distance(b, a, features=identity), rel=1e-8)


class WithFeatures(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(16, 6), nn.ReLU())
        self.head = nn.Linear(6, 3)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.features(x))


def test_classifier_features_and_hook_agree():
    clf = WithFeatures().eval()
    plain = nn.Sequential(clf.body, clf.head).eval()  # no features(): the hook on the last Linear's input
    real = torch.rand(60, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    fake = torch.rand(50, 1, 4, 4, generator=torch.Generator().manual_seed(1)) ** 2
    via_method = frechet_distance(real, fake, classifier=clf, batch_size=7)
    via_hook = frechet_distance(real, fake, classifier=plain, batch_size=16)
    explicit = frechet_distance(real, fake, features=clf.body)
    assert via_method == pytest.approx(explicit, rel=1e-6) and via_hook == pytest.approx(explicit, rel=1e-6)
    assert via_method > 0
    with torch.no_grad():
        assert torch.equal(penultimate_features(plain)(real), clf.body(real))
    # the hook is removed again and the classifier is untouched
    assert not plain[1]._forward_hooks and all(p.grad is None for p in plain.parameters())


def test_bad_input():
    x = sample(10, 3)
    with pytest.raises(ValueError, match="differ in shape"):
        frechet_distance(x, sample(10, 4), features=identity)
    with pytest.raises(ValueError, match="at least 2 samples"):
        frechet_distance(x, x[:1], features=identity)
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(x, x.masked_fill(x > 1, float("nan")), features=identity)
    with pytest.raises(ValueError, match="pass features"):
        frechet_distance(x, x)
    with pytest.raises(TypeError, match="cannot find a feature layer"):
        frechet_distance(x, x, classifier=nn.Sequential(nn.ReLU()))
    with pytest.raises(ValueError, match="features of the fake samples contain NaN"):
        frechet_distance(x.abs() + 1, -x.abs() - 1, features=lambda t: t.log())
    with pytest.raises(ValueError, match="one row per sample"):
        frechet_distance(x, x, features=lambda t: t.sum())
    bn = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).train()
    with pytest.raises(ValueError, match="BatchNorm"):
        frechet_distance(x.float(), x.float(), classifier=bn)


# ----------------------------------------------------------------------------------- Inception Score
def test_inception_score_of_sure_balanced_predictions_is_the_number_of_classes():
    from xcf.evaluate.quality import inception_score

    for k in (2, 5, 10):
        x = torch.arange(20 * k, dtype=torch.float32).view(-1, 1)
        probs = lambda v, k=k: torch.eye(k)[v[:, 0].long() % k]  # noqa: E731  one sure class per sample
        mean, std = inception_score(probs, x, splits=1, output="probs")
        assert mean == pytest.approx(k, rel=1e-6) and std == 0.0
        # a set sorted by class is split in a fixed random order, so every split still sees every class
        ordered = torch.arange(20 * k, dtype=torch.float32).view(-1, 1) // 20
        mean, std = inception_score(lambda v, k=k: torch.eye(k)[v[:, 0].long()], ordered, splits=2, output="probs")
        assert mean == pytest.approx(k, rel=0.1)
    same = lambda v: torch.tensor([[2.0, -1.0, 0.5]]).expand(v.shape[0], 3)  # noqa: E731
    assert inception_score(same, torch.zeros(30, 2), splits=3) == pytest.approx((1.0, 0.0))


def test_inception_score_is_between_one_and_k_and_batch_size_free():
    from xcf.evaluate.quality import inception_score

    torch.manual_seed(0)
    clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4)).eval()
    x = torch.randn(200, 1, 4, 4)
    mean, std = inception_score(clf, x, splits=5)
    assert 1.0 <= mean <= 4.0 and std >= 0
    assert inception_score(clf, x, splits=5, batch_size=7) == pytest.approx((mean, std))


def test_inception_score_names_bad_arguments():
    from xcf.evaluate.quality import inception_score

    clf = torch.nn.Linear(3, 2).eval()
    with pytest.raises(ValueError, match="splits must be an int in \\[1, 4\\]"):
        inception_score(clf, torch.zeros(4, 3), splits=5)
    with pytest.raises(ValueError, match="output must be"):
        inception_score(clf, torch.zeros(4, 3), splits=1, output="scores")
    with pytest.raises(ValueError, match="NaN"):
        inception_score(clf, torch.full((4, 3), float("nan")), splits=1)
    bn = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2)).train()
    with pytest.raises(ValueError, match="training mode"):
        inception_score(bn, torch.zeros(4, 3), splits=1)
