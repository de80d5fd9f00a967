"""ApproximateCounterfactual: the explainer contract on user-built generators and classifiers."""

import warnings

import pytest
import torch
from torch import nn

from xcf.explain.approximate import ApproximateCounterfactual
from xcf.explain.base import CounterfactualExplainer
from xcf.result import CounterfactualResult

torch.set_num_threads(1)


def generator(d: int = 3, seed: int = 0) -> nn.Module:
    """A user's MLP generator z (d) -> 1x4x4 image in (0, 1), with dropout to check the mode is kept."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(d, 32), nn.Tanh(), nn.Dropout(0.0), nn.Linear(32, 16), nn.Sigmoid(), nn.Unflatten(1, (1, 4, 4))
    ).eval()


def classifier(seed: int = 0) -> nn.Module:
    """A linear classifier with logits large enough that every class is reachable."""
    torch.manual_seed(seed)
    f = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    with torch.no_grad():
        f[1].weight.mul_(30)
    return f


class LogitLinear(nn.Module):
    """A user's generator x = σ(W z + b) (1x4x4 images from 3-d latents)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(torch.randn(16, 3, generator=g))
        self.b = nn.Parameter(0.1 * torch.randn(16, generator=g))

    def forward(self, z):
        return torch.sigmoid(z @ self.W.T + self.b).reshape(-1, 1, 4, 4)


class LatentReader(nn.Module):
    """A classifier with a known answer on the generator's range: f(g(z)) = C z."""

    def __init__(self, G: LogitLinear, seed: int = 0):
        super().__init__()
        C = 3 * torch.randn(3, 3, generator=torch.Generator().manual_seed(seed + 1), dtype=G.W.dtype)
        self.register_buffer("P", (C @ torch.linalg.pinv(G.W.detach())))
        self.register_buffer("b", G.b.detach().clone())
        self.C = C

    def forward(self, x):
        return (torch.logit(x.flatten(1), eps=1e-6) - self.b) @ self.P.T


def data(G, n=6, seed=1):
    dtype = next(iter(G.parameters())).dtype
    z = torch.randn(n, 3, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    with torch.no_grad():
        return G(z)


def test_result_contract():
    G = LogitLinear().eval()
    f = LatentReader(G).eval()
    x = data(G)
    explainer = ApproximateCounterfactual(f, G, (3,), restarts=4, inversion_steps=300)
    assert isinstance(explainer, CounterfactualExplainer)
    res = explainer.counterfactual(x, target=[0, 1, 2, 0, 1, 2], confidence=0.6, steps=500, lr=5e-2)
    assert isinstance(res, CounterfactualResult) and res.method == "approximate"
    assert res.counterfactual.shape == x.shape and res.latent.shape == (6, 3)
    assert res.reconstruction_error.shape == (6,) and res.reconstruction_error.max() < 2e-3
    assert res.info["poor_reconstruction"].dtype == torch.bool and not res.info["poor_reconstruction"].any()
    assert res.info["inversion_steps"].shape == (6,)
    with torch.no_grad():
        # the returned latent decodes to the returned counterfactual, which the classifier judged
        assert torch.allclose(G(res.latent), res.counterfactual, atol=1e-6)
        p = f(res.counterfactual).softmax(1).gather(1, res.target[:, None]).squeeze(1)
        assert torch.allclose(G(res.latent_start), res.reconstruction, atol=1e-6)
    assert torch.allclose(p[res.success], res.score[res.success], atol=1e-5)
    assert (p[res.success] >= 0.6).all()
    # every class is reachable in this generator's range: all succeed, and the known answer holds
    assert res.success.all(), res.steps
    with torch.no_grad():
        logits = res.latent @ f.C.T
    assert (logits.softmax(1).gather(1, res.target[:, None]).squeeze(1) >= 0.6 - 1e-4).all()


def test_encoder_path_with_vae_style_tuple():
    G, f = generator(), classifier()
    x = data(G, 4)
    z_true = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))

    class Encoder(nn.Module):  # a (mu, logvar) encoder that happens to know the answer
        def forward(self, t):
            return z_true.clone(), torch.zeros_like(z_true)

    enc = Encoder()
    res = ApproximateCounterfactual(f, G, 3, encoder=enc, restarts=2).counterfactual(x, target=0, steps=5)
    assert (res.info["inversion_steps"] == 0).all()
    assert torch.allclose(res.latent_start, z_true)


def test_poor_reconstruction_is_flagged_and_warned():
    G, f = generator(), classifier()
    x = data(G, 4)
    x[1] = 1 - x[1]
    x[3] = torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(0))
    explainer = ApproximateCounterfactual(f, G, 3, restarts=3, recon_threshold=0.05, inversion_steps=200)
    with pytest.warns(UserWarning, match="2 of 4 inputs are poorly reconstructed"):
        res = explainer.counterfactual(x, target=0, steps=10)
    assert res.info["poor_reconstruction"].tolist() == [False, True, False, True]
    assert torch.equal(res.info["poor_reconstruction"], res.reconstruction_error > 0.05)
    # selecting samples keeps the flag aligned
    assert res[1].info["poor_reconstruction"].tolist() == [True]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ApproximateCounterfactual(f, G, 3, restarts=3, inversion_steps=200).counterfactual(x[[0, 2]], target=0, steps=5)


def test_user_generator_is_not_modified():
    G, f = generator(), classifier()
    G.train()  # dropout-style module in training mode (no BatchNorm): allowed, and left as it was
    G[0].weight.requires_grad_(False)
    sentinel = torch.full_like(G[3].weight, 7.0)
    G[3].weight.grad = sentinel
    before = {k: v.clone() for k, v in G.state_dict().items()}
    x = data(generator(), 3)
    ApproximateCounterfactual(f, G, 3, restarts=2, inversion_steps=50).counterfactual(x, target=1, steps=20)
    assert G.training and all(m.training for m in G.modules())
    assert all(torch.equal(before[k], v) for k, v in G.state_dict().items())
    assert G[0].weight.requires_grad is False and G[0].weight.grad is None
    assert G[3].weight.requires_grad is True and G[3].weight.grad is sentinel
    assert all(p.grad is None for p in f.parameters())


def test_bad_input():
    G, f = generator(), classifier()
    x = data(G, 2)
    with pytest.raises(ValueError, match="latent_shape \\(4,\\) does not fit the generator"):
        ApproximateCounterfactual(f, G, 4).counterfactual(x, target=0)
    with pytest.raises(ValueError, match="generator makes samples of shape"):
        ApproximateCounterfactual(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval(), G, 3).counterfactual(
            torch.rand(2, 1, 8, 8), target=0
        )

    class NaNGen(nn.Module):
        def forward(self, z):
            return torch.full((z.shape[0], 1, 4, 4), float("nan"))

    with pytest.raises(ValueError, match="generator produced NaN"):
        ApproximateCounterfactual(f, NaNGen(), 3).counterfactual(x, target=0)
    bn = nn.Sequential(nn.Linear(3, 16), nn.BatchNorm1d(16), nn.Sigmoid(), nn.Unflatten(1, (1, 4, 4))).train()
    with pytest.raises(ValueError, match="BatchNorm"):
        ApproximateCounterfactual(f, bn, 3).counterfactual(x, target=0)
    with pytest.raises(ValueError, match="target"):
        ApproximateCounterfactual(f, G, 3).counterfactual(x, target=5)
    with pytest.raises(ValueError, match="restarts"):
        ApproximateCounterfactual(f, G, 3, restarts=0)
