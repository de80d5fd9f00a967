import math

import pytest
import torch
from nflows.distributions.base import Distribution
from nflows.flows.base import Flow
from nflows.transforms.base import CompositeTransform
from torch.nn import functional as F

import xcf.models.flows as flows
from xcf.datasets import DIGITS_LEVELS, load_digits
from xcf.models.flows import Dequantize, Logit, glow_flow, realnvp_flow
from xcf.models.io import load_state, save_model
from xcf.models.flow_training import bits_per_dim, build_flow, flow_recipe, train_flow

L = DIGITS_LEVELS
pytestmark = pytest.mark.filterwarnings("ignore:.*triangular_solve.*:UserWarning")


def _tiny(kind, shape=(1, 8, 8), seed=0, scales=2):
    torch.manual_seed(seed)
    if kind == "realnvp":
        flow = realnvp_flow(shape, hidden=8, blocks_per_scale=1, scales=scales)
    else:
        flow = glow_flow(shape, hidden=8, steps_per_scale=2, scales=scales)
    # couplings start as the identity (zero last layer): perturb every parameter so the tests see
    # a generic flow, and initialise ActNorm with a plain forward pass on data
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.05 * torch.randn_like(p))
        flow.train()
        flow.log_prob(torch.randint(0, L, (64,) + tuple(shape)) / (L - 1))
    return flow.eval()


@pytest.fixture(scope="module")
def digits():
    return load_digits("test")[0][:64]


@pytest.mark.parametrize("kind", ["realnvp", "glow"])
def test_eval_mode_is_an_exact_chart(kind, digits):
    flow = _tiny(kind)
    with torch.no_grad():
        z = flow.transform_to_noise(digits)
    assert z.shape == (64, 64)
    assert not torch.allclose(z, flows.Logit()(flows.Dequantize(L).eval()(digits)[0])[0].flatten(1))
    with torch.no_grad():
        x, _ = flow._transform.inverse(z)
    assert x.shape == digits.shape
    rms = (x - digits).pow(2).flatten(1).mean(1).sqrt()
    assert float(rms.max()) < 1e-4
    # and the other way round, from base samples
    z2 = torch.randn(16, 64)
    assert torch.allclose(flow.transform_to_noise(flow._transform.inverse(z2)[0]), z2, atol=1e-4)


@pytest.mark.parametrize("kind", ["realnvp", "glow"])
def test_logdet_matches_brute_force_jacobian(kind):
    flow = _tiny(kind, shape=(1, 4, 4)).double()
    x = torch.randint(0, L, (2, 1, 4, 4)).double() / (L - 1)
    _, logdet = flow._transform(x)
    for i in range(2):
        jac = torch.autograd.functional.jacobian(
            lambda v: flow.transform_to_noise(v.reshape(1, 1, 4, 4)).reshape(-1), x[i].reshape(-1)
        )
        assert jac.shape == (16, 16)
        assert float(torch.linalg.slogdet(jac)[1]) == pytest.approx(float(logdet[i].detach()), abs=1e-8)
    # the inverse's log-det is the negative at the image point
    z = flow.transform_to_noise(x)
    _, inv_logdet = flow._transform.inverse(z)
    assert torch.allclose(inv_logdet, -logdet, atol=1e-8)


def test_batched_equals_per_sample(digits):
    flow = _tiny("glow")
    batched = flow.log_prob(digits[:6])
    single = torch.cat([flow.log_prob(digits[i : i + 1]) for i in range(6)])
    assert torch.allclose(batched, single, atol=1e-4)


def test_dequantize_train_versus_eval():
    dq = Dequantize(L)
    k = torch.randint(0, L, (200, 1, 8, 8))
    x = k / (L - 1)
    t_train, logdet = dq.train()(x)
    # training: uniform noise inside the integer's cell [k/L, (k+1)/L)
    assert torch.equal(torch.floor(t_train * L).long(), k)
    assert float((t_train * L - k).std()) == pytest.approx(1 / math.sqrt(12), rel=0.05)
    assert not torch.equal(dq(x)[0], t_train)
    assert torch.allclose(logdet, torch.full((200,), 64 * math.log((L - 1) / L)))
    # eval: the cell centre, deterministic and exactly invertible
    dq.eval()
    t_eval, _ = dq(x)
    assert torch.equal(t_eval, dq(x)[0])
    assert torch.allclose(t_eval, (k + 0.5) / L)
    x_back, inv_logdet = dq.inverse(t_eval)
    assert torch.allclose(x_back, x, atol=1e-6)
    assert torch.allclose(inv_logdet, -logdet)
    with pytest.raises(ValueError, match="levels"):
        Dequantize(1)


def test_flow_train_mode_is_noisy_eval_mode_is_not(digits):
    flow = _tiny("realnvp")
    assert torch.equal(flow.log_prob(digits), flow.log_prob(digits))
    flow.train()
    assert not torch.equal(flow.log_prob(digits), flow.log_prob(digits))


def test_logit_inverse_and_logdet():
    logit = Logit(0.05)
    t = torch.rand(4, 6).double()
    y, logdet = logit(t)
    back, inv_logdet = logit.inverse(y)
    assert torch.allclose(back, t) and torch.allclose(inv_logdet, -logdet)
    for i in range(4):
        jac = torch.autograd.functional.jacobian(lambda v: logit(v[None])[0][0], t[i])
        assert float(torch.linalg.slogdet(jac)[1]) == pytest.approx(float(logdet[i]))
    with pytest.raises(ValueError, match="alpha"):
        Logit(0.5)


class _StandardLogistic(Distribution):
    """The logit of a uniform variable: so Flow(Logit(0), this) is uniform on (0, 1)^D."""

    def __init__(self, dims):
        super().__init__()
        self.dims = dims

    def _log_prob(self, inputs, context):
        return (F.logsigmoid(inputs) + F.logsigmoid(-inputs)).flatten(1).sum(1)


@pytest.mark.parametrize("dequantize", [True, False])
@pytest.mark.parametrize("inside", [True, False])
def test_bits_per_dim_of_a_uniform_model_is_log2_levels(dequantize, inside, digits):
    transforms = ([Dequantize(L)] if inside else []) + [Logit(0.0)]
    flow = Flow(CompositeTransform(transforms), _StandardLogistic(64)).eval()
    bpd = bits_per_dim(flow, digits, levels=L, dequantize=dequantize)
    assert bpd.shape == (64,)
    assert torch.allclose(bpd, torch.full_like(bpd, math.log2(L)), atol=1e-4)


def test_bits_per_dim_definition_seeds_and_modes(digits):
    flow = _tiny("realnvp").train()
    center = bits_per_dim(flow, digits, dequantize=False)
    assert flow.training  # mode restored
    flow.eval()
    expected = (-flow.log_prob(digits) + 64 * math.log(L - 1)) / (64 * math.log(2))
    assert torch.allclose(center, expected.detach(), atol=1e-4)
    noisy = bits_per_dim(flow, digits, seed=1)
    assert torch.equal(noisy, bits_per_dim(flow, digits, seed=1))
    assert not torch.equal(noisy, bits_per_dim(flow, digits, seed=2))
    averaged = bits_per_dim(flow, digits, seed=1, n_samples=3)
    assert not torch.equal(noisy, averaged)
    # batching does not change the answer
    assert torch.allclose(bits_per_dim(flow, digits, seed=0, batch_size=7)[:7], bits_per_dim(flow, digits[:7], seed=0))
    with pytest.raises(ValueError, match="levels"):
        bits_per_dim(flow, digits, levels=256)
    with pytest.raises(ValueError, match="n_samples"):
        bits_per_dim(flow, digits, n_samples=0)


@pytest.mark.parametrize("kind", ["realnvp", "glow"])
def test_save_and_load_round_trip_exactly(kind, digits, tmp_path):
    flow = _tiny(kind, seed=0)
    save_model(flow, tmp_path / "flow.pt", {"kind": kind})
    other = _tiny(kind, seed=1)  # different weights and (Glow) permutations
    assert not torch.equal(other.transform_to_noise(digits), flow.transform_to_noise(digits))
    other.load_state_dict(load_state(tmp_path / "flow.pt")["state_dict"])
    assert torch.equal(other.transform_to_noise(digits), flow.transform_to_noise(digits))


@pytest.mark.parametrize("kind", ["realnvp", "glow"])
def test_short_training_lowers_nll(kind):
    x = load_digits("train")[0][:256]
    torch.manual_seed(0)
    flow = realnvp_flow(hidden=8, blocks_per_scale=1) if kind == "realnvp" else glow_flow(hidden=8, steps_per_scale=1)
    history = train_flow(flow, x, epochs=3, lr=3e-3, batch_size=32, seed=0)
    assert flow.training  # mode restored (built in training mode)
    assert history["skipped"] == 0 and len(history["nll"]) == 3
    assert history["nll"][-1] < history["nll"][0] - 5
    assert history["bits_per_dim"][-1] < history["bits_per_dim"][0]
    bpd = (history["nll"][0] + 64 * math.log(L - 1)) / (64 * math.log(2))
    assert history["bits_per_dim"][0] == pytest.approx(bpd)
    if kind == "glow":
        assert all(bool(m.initialized) for m in flow.modules() if hasattr(m, "initialized"))


def test_training_is_deterministic_under_a_seed():
    x = load_digits("train")[0][:64]
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        flow = glow_flow(hidden=4, steps_per_scale=1)
        train_flow(flow, x, epochs=1, batch_size=32, seed=5)
        states.append(flow.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_jvp_through_the_chart(digits):
    """torch.func's forward mode works through decode (for the geometry module)."""
    flow = _tiny("glow")
    z = flow.transform_to_noise(digits[:4])
    v = torch.randn_like(z)
    _, tangent = torch.func.jvp(lambda p: flow._transform.inverse(p)[0], (z,), (v,))
    eps = 1e-3
    finite = (flow._transform.inverse(z + eps * v)[0] - flow._transform.inverse(z - eps * v)[0]) / (2 * eps)
    assert torch.allclose(tangent, finite, atol=1e-2)


def test_builder_errors():
    with pytest.raises(ValueError, match="divisible"):
        realnvp_flow((1, 8, 8), scales=4)
    with pytest.raises(ValueError, match="shape"):
        glow_flow((8, 8))
    with pytest.raises(ValueError, match="hidden"):
        realnvp_flow(hidden=0)
    with pytest.raises(ValueError, match="dropout"):
        glow_flow(dropout=1.0)
    cfg = flow_recipe((1, 8, 8))
    cfg["model"]["architecture"] = "maf"
    with pytest.raises(ValueError, match="unknown flow architecture 'maf'"):
        build_flow(cfg)
