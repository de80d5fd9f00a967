"""xcf.evaluate.geometry: batched Jacobians against autograd, tangent spaces with known answers, bad input."""

import math

import pytest
import torch
from nflows.distributions import StandardNormal
from nflows.flows import Flow
from nflows.nn.nets import ResidualNet
from nflows.transforms import (
    CompositeTransform,
    MaskedAffineAutoregressiveTransform,
    PiecewiseRationalQuadraticCouplingTransform,
    ReversePermutation,
)
from torch import nn

from xcf import FlowChart
from xcf.evaluate.geometry import jacobian, jvp, metric_vector_product, vjp
from xcf.evaluate.manifold import manifold_dimension, on_manifold_fraction, tangent_space


def reference_jacobian(decode, z):
    """One torch.autograd.functional.jacobian call per sample, flattened to (N, dim_x, dim_z)."""
    rows = []
    for i in range(z.shape[0]):
        J = torch.autograd.functional.jacobian(lambda q: decode(q.unsqueeze(0))[0], z[i])
        rows.append(J.reshape(-1, z[i].numel()))
    return torch.stack(rows)


def random_mlp(d_in, d_out, seed, out_shape=None):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(d_in, 16), nn.Tanh(), nn.Linear(16, 16), nn.Softplus(),
                        nn.Linear(16, d_out)).double().eval()
    if out_shape is None:
        return net
    return lambda z: net(z).reshape((z.shape[0],) + out_shape)


def vector_flow(kind: str, dim: int = 4, seed: int = 0) -> Flow:
    torch.manual_seed(seed)
    layers = []
    for i in range(2):
        if kind == "maf":
            layers.append(MaskedAffineAutoregressiveTransform(dim, 8))
        else:
            layers.append(PiecewiseRationalQuadraticCouplingTransform(
                torch.arange(dim) % 2 == i % 2, lambda c, o: ResidualNet(c, o, 8, num_blocks=1),
                num_bins=4, tails="linear", tail_bound=3.0))
        layers.append(ReversePermutation(dim))
    flow = Flow(CompositeTransform(layers), StandardNormal([dim])).double()
    # random outputs of the zero-initialised last layers, so that the flow is not the identity
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return flow.eval()


# -- Jacobians ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "z_shape,x_shape",
    [((4,), (1, 3, 3)), ((5,), (5,)), ((6,), (2,)), ((1, 2, 2), (3, 2))],
    ids=["gan-tall", "square", "wide", "image-codes"],
)
@pytest.mark.parametrize("mode", ["auto", "forward", "reverse"])
@pytest.mark.parametrize("chunk_size", [None, 1, 3])
def test_jacobian_matches_autograd_on_random_mlps(z_shape, x_shape, mode, chunk_size):
    d_in, d_out = math.prod(z_shape), math.prod(x_shape)
    decode = random_mlp(d_in, d_out, seed=d_in + d_out, out_shape=x_shape)
    z = torch.randn((5,) + z_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    J = jacobian(decode, z, chunk_size=chunk_size, mode=mode)
    assert J.shape == (5, d_out, d_in) and J.dtype == z.dtype
    assert torch.allclose(J, reference_jacobian(decode, z), atol=1e-12)


@pytest.mark.parametrize("kind", ["maf", "spline-coupling"])
def test_jacobian_matches_autograd_on_nflows_flows(kind):
    flow = vector_flow(kind)
    z = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    chart = FlowChart(flow, event_shape=(4,))
    ref = reference_jacobian(chart.decode, z)
    assert not torch.allclose(ref, torch.eye(4, dtype=ref.dtype).expand_as(ref), atol=1e-3)
    for decode in (chart.decode, flow._transform.inverse):  # the chart, and the raw (x, logdet) inverse
        for mode in ("forward", "reverse"):
            assert torch.allclose(jacobian(decode, z, chunk_size=3, mode=mode), ref, atol=1e-10)
    # a flow's Jacobian determinant is the exp of its log-det
    _, logdet = flow._transform.inverse(z)
    assert torch.allclose(torch.linalg.slogdet(ref).logabsdet, logdet, atol=1e-8)


def test_batched_equals_per_example():
    decode = random_mlp(3, 7, seed=3)
    z = torch.randn(6, 3, dtype=torch.float64)
    J = jacobian(decode, z)
    ts = tangent_space(decode, z, k=2)
    for i in range(6):
        assert torch.allclose(jacobian(decode, z[i : i + 1])[0], J[i], atol=1e-13)
        one = tangent_space(decode, z[i : i + 1], k=2)
        assert torch.allclose(one.singular_values[0], ts.singular_values[i], atol=1e-12)
        # singular vectors are defined up to sign
        assert torch.allclose((one.basis[0] * ts.basis[i]).sum(0).abs(), torch.ones(2, dtype=z.dtype), atol=1e-10)


def test_works_under_no_grad_and_leaves_the_decoder_untouched():
    net = random_mlp(3, 5, seed=4)
    net.train()
    z = torch.randn(2, 3, dtype=torch.float64)
    with torch.no_grad():
        J = jacobian(net, z, mode="reverse")
        J2 = jacobian(net, z, mode="forward")
    assert torch.allclose(J, J2, atol=1e-12) and not J.requires_grad
    assert net.training and all(p.grad is None for p in net.parameters())


# -- products -------------------------------------------------------------------------------------
def test_jvp_vjp_and_metric_vector_product_agree_with_the_jacobian():
    decode = random_mlp(4, 6, seed=5, out_shape=(2, 3))
    g = torch.Generator().manual_seed(5)
    z = torch.randn(3, 4, dtype=torch.float64, generator=g)
    v = torch.randn(3, 4, dtype=torch.float64, generator=g)
    u = torch.randn(3, 2, 3, dtype=torch.float64, generator=g)
    J = jacobian(decode, z)
    assert torch.allclose(jvp(decode, z, v).flatten(1), torch.einsum("nxz,nz->nx", J, v), atol=1e-12)
    assert torch.allclose(vjp(decode, z, u), torch.einsum("nxz,nx->nz", J, u.flatten(1)), atol=1e-12)
    metric = torch.einsum("nxz,nyz->nxy", J, J)
    expected = torch.einsum("nxy,ny->nx", metric, u.flatten(1)).reshape(u.shape)
    assert torch.allclose(metric_vector_product(decode, z, u), expected, atol=1e-12)


class _ReverseOnly(torch.autograd.Function):
    """sin(x) with a backward but no jvp: no forward-mode derivative."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x.sin()

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * x.cos()


class _OldStyle(torch.autograd.Function):
    """A legacy Function (forward takes ctx): torch.func cannot transform it at all."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.sin()

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * x.cos()


def test_op_without_forward_mode_falls_back_to_reverse_mode():
    A = torch.randn(5, 3, dtype=torch.float64)

    def decode(z):
        return _ReverseOnly.apply(z @ A.T)

    z = torch.randn(4, 3, dtype=torch.float64)
    ref = reference_jacobian(decode, z)
    assert torch.allclose(jacobian(decode, z), ref, atol=1e-12)  # auto: forward fails, reverse works
    with pytest.raises(RuntimeError, match="forward mode failed.*jvp"):
        jacobian(decode, z, mode="forward")
    v = torch.randn(4, 3, dtype=torch.float64)
    assert torch.allclose(jvp(decode, z, v), torch.einsum("nxz,nz->nx", ref, v), atol=1e-10)


def test_op_torch_func_cannot_transform_gives_a_clear_error():
    with pytest.raises(RuntimeError, match="could not compute the Jacobian.*forward mode failed.*reverse mode failed"):
        jacobian(lambda z: _OldStyle.apply(z), torch.randn(2, 3))


# -- the theory: linear generators and a tube around a curve --------------------------------------
@pytest.mark.parametrize("rank", [1, 3])
def test_linear_generator_tangent_space_is_the_column_space(rank):
    g = torch.Generator().manual_seed(rank)
    B = torch.randn(12, rank, dtype=torch.float64, generator=g)
    C = torch.randn(rank, 5, dtype=torch.float64, generator=g)
    A = B @ C  # x = A z: dim z = 5, rank `rank`
    z = torch.randn(7, 5, dtype=torch.float64, generator=g)
    ts = tangent_space(lambda q: q @ A.T, z, k=rank)
    assert torch.allclose(jacobian(lambda q: q @ A.T, z), A.expand(7, 12, 5), atol=1e-13)
    assert (manifold_dimension(ts.singular_values) == rank).all()
    # principal angles between span(U_k) and col(A): all cosines 1
    Q = torch.linalg.qr(B).Q
    cosines = torch.linalg.svdvals(Q.T @ ts.basis)
    assert torch.allclose(cosines, torch.ones_like(cosines), atol=1e-10)
    # a change inside col(A) is fully on the manifold; one orthogonal to it not at all
    inside = (torch.randn(7, rank, dtype=torch.float64, generator=g) @ B.T)
    outside = torch.randn(7, 12, dtype=torch.float64, generator=g)
    outside = outside - outside @ Q @ Q.T
    assert torch.allclose(on_manifold_fraction(inside, ts.basis), torch.ones(7, dtype=torch.float64))
    assert on_manifold_fraction(outside, ts.basis).abs().max() < 1e-12
    assert torch.allclose(on_manifold_fraction(inside, A[:, :rank], orthonormalize=True),
                          torch.ones(7, dtype=torch.float64))


def test_full_rank_generator_has_full_dimension():
    A = torch.randn(10, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ts = tangent_space(lambda q: q @ A.T, torch.randn(3, 4, dtype=torch.float64))
    assert ts.basis.shape == (3, 10, 4)
    assert (manifold_dimension(ts.singular_values) == 4).all()


def test_tube_around_a_curve_is_one_dimensional_with_the_curve_tangent():
    # A "flow" (dim z = dim x = 3) onto a thin tube around a helix: x = h(z1) + s (z2 n1 + z3 n2).
    s = 1e-2

    def decode(z):
        t = z[:, 0]
        h = torch.stack([torch.cos(t), torch.sin(t), t / math.pi], dim=1)
        n1 = torch.stack([torch.cos(t), torch.sin(t), torch.zeros_like(t)], dim=1)
        n2 = torch.stack([-torch.sin(t) / math.pi, torch.cos(t) / math.pi, -torch.ones_like(t)], dim=1)
        n2 = n2 / n2.norm(dim=1, keepdim=True)
        return h + s * (z[:, 1:2] * n1 + z[:, 2:3] * n2)

    z = torch.cat([torch.rand(20, 1) * 6, torch.zeros(20, 2)], dim=1).double()
    ts = tangent_space(decode, z, k=1)
    assert (manifold_dimension(ts.singular_values) == 1).all()
    t = z[:, 0]
    tangent = torch.stack([-torch.sin(t), torch.cos(t), torch.full_like(t, 1 / math.pi)], dim=1)
    tangent = tangent / tangent.norm(dim=1, keepdim=True)
    assert torch.allclose(on_manifold_fraction(tangent, ts.basis), torch.ones(20, dtype=torch.float64))


# -- manifold_dimension and on_manifold_fraction --------------------------------------------------
def test_manifold_dimension_rule():
    s = torch.tensor([[5.0, 4.0, 1e-3, 1e-4], [1.0, 0.9, 0.8, 0.7], [3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0],
                      [1.0, 1e-3, 2.0, 1e-5]])
    assert manifold_dimension(s).tolist() == [2, 4, 1, 0, 2]  # unsorted rows are sorted
    assert manifold_dimension(torch.tensor([1.0, 0.5])).item() == 2
    assert manifold_dimension(torch.tensor([1.0, 0.5]), min_ratio=1.5).item() == 1
    assert manifold_dimension(torch.tensor([[2.0]])).tolist() == [1]


def test_on_manifold_fraction_known_values():
    basis = torch.eye(3)[:, :2]
    delta = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 2.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    frac = on_manifold_fraction(delta, basis)
    assert torch.allclose(frac[:3], torch.tensor([1.0, 0.0, 2 / 3]))
    assert torch.isnan(frac[3])
    per_sample = basis.expand(4, 3, 2)
    assert torch.allclose(on_manifold_fraction(delta.reshape(4, 1, 3), per_sample)[:3], frac[:3])


# -- bad input ------------------------------------------------------------------------------------
def test_bad_input_errors():
    decode = random_mlp(3, 4, seed=0)
    z = torch.randn(2, 3, dtype=torch.float64)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="chunk_size must be >= 1"):
            jacobian(decode, z, chunk_size=bad)
    with pytest.raises(TypeError, match="chunk_size must be an int"):
        jacobian(decode, z, chunk_size=1.5)
    with pytest.raises(ValueError, match="mode must be"):
        jacobian(decode, z, mode="both")
    with pytest.raises(ValueError, match="v must have the shape of z"):
        jvp(decode, z, torch.randn(2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"u must have the shape of decode\(z\)"):
        vjp(decode, z, torch.randn(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="v must have the shape of decode"):
        metric_vector_product(decode, z, torch.randn(3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="keep the batch dimension"):
        jacobian(lambda q: q.sum(0), z)
    with pytest.raises(TypeError, match="must return a tensor"):
        jacobian(lambda q: q.tolist(), z)
    with pytest.raises(ValueError, match="z must have a batch dimension"):
        jacobian(decode, torch.randn(3))
    with pytest.raises(ValueError, match="NaN"):
        jacobian(decode, torch.full((1, 3), float("nan")))
    with pytest.raises(ValueError, match="k must be in 1..3"):
        tangent_space(decode, z, k=4)
    with pytest.raises(ValueError, match="min_ratio"):
        manifold_dimension(torch.ones(2, 2), min_ratio=1.0)
    with pytest.raises(ValueError, match="non-negative"):
        manifold_dimension(torch.tensor([[1.0, -1.0]]))
    with pytest.raises(ValueError, match="basis must have shape"):
        on_manifold_fraction(torch.randn(2, 3), torch.randn(2, 4, 1))
    with pytest.raises(ValueError, match="orthonormalize=True"):
        on_manifold_fraction(torch.randn(2, 3), 2 * torch.eye(3)[:, :1])


def test_batchnorm_decoder_in_training_mode_is_refused_and_not_mutated():
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 5)).train()
    before = net[1].running_mean.clone()
    z = torch.randn(4, 3)
    for fn in (lambda: jacobian(net, z), lambda: jvp(net.forward, z, z), lambda: tangent_space(net, z)):
        with pytest.raises(ValueError, match="BatchNorm"):
            fn()
    assert torch.equal(net[1].running_mean, before)
    net.eval()
    assert jacobian(net, z).shape == (4, 5, 3)


def test_flow_with_stateful_normalisation_in_training_mode_is_refused():
    from nflows.transforms import ActNorm, BatchNorm

    for layer in (ActNorm(3), BatchNorm(3)):
        flow = Flow(CompositeTransform([layer, ReversePermutation(3)]), StandardNormal([3])).train()
        chart = FlowChart(flow, event_shape=(3,))
        with pytest.raises(ValueError, match=f"training mode and contains {type(layer).__name__}"):
            jacobian(chart.decode, torch.randn(4, 3))
        state = {k: v.clone() for k, v in flow.state_dict().items()}
        flow.eval()
        assert jacobian(chart.decode, torch.randn(4, 3)).shape == (4, 3, 3)
        assert all(torch.equal(v, flow.state_dict()[k]) for k, v in state.items())
