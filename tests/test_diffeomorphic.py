"""DiffeomorphicCounterfactual on user-built flows (nflows and encode/decode objects)."""

import pytest
import torch
from nflows.distributions import StandardNormal
from nflows.flows import Flow
from nflows.nn.nets import ResidualNet
from nflows.transforms import (
    AffineCouplingTransform,
    CompositeTransform,
    ReversePermutation,
)
from torch import nn

from xcf import DiffeomorphicCounterfactual


def vector_flow(dim: int = 16, seed: int = 0) -> Flow:
    """A user's own RealNVP on flattened vectors, randomly initialised (an exact bijection all the same)."""
    torch.manual_seed(seed)
    mask = torch.arange(dim) % 2

    def net(i, o):
        return ResidualNet(i, o, hidden_features=32, num_blocks=1)

    layers = []
    for _ in range(3):
        layers += [AffineCouplingTransform(mask, net), ReversePermutation(dim)]
    flow = Flow(CompositeTransform(layers), StandardNormal([dim]))
    return flow.eval()


def image_classifier(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()


def test_user_vector_flow_on_images():
    flow, clf = vector_flow(), image_classifier()
    x = torch.rand(5, 1, 4, 4)
    explainer = DiffeomorphicCounterfactual(clf, flow)
    res = explainer.counterfactual(x, target=[0, 1, 2, 0, 1], steps=300)
    assert res.counterfactual.shape == x.shape
    assert res.latent.shape == (5, 16)
    assert res.reconstruction_error.max() < 1e-4
    assert res.success.all(), res.steps
    # the returned latent decodes to the returned counterfactual
    decoded, _ = flow._transform.inverse(res.latent)
    assert torch.allclose(decoded.reshape(x.shape), res.counterfactual, atol=1e-5)
    diff = explainer.attribute(x, target=1, steps=50)
    assert diff.shape == x.shape


def test_encode_decode_object_and_batch_consistency():
    class Affine:
        """x = 2 z + 1: a trivially exact chart."""

        def encode(self, x):
            return (x - 1) / 2

        def decode(self, z):
            return 2 * z + 1

    clf = image_classifier(1)
    x = torch.rand(4, 1, 4, 4)
    explainer = DiffeomorphicCounterfactual(clf, Affine())
    batch = explainer.counterfactual(x, target=2, steps=200)
    one = explainer.counterfactual(x[1:2], target=2, steps=200)
    assert torch.allclose(one.counterfactual[0], batch.counterfactual[1], atol=1e-6)
    assert one.steps.item() == batch.steps[1].item()


def test_flow_that_does_not_reconstruct_is_refused():
    class Lossy:
        def encode(self, x):
            return x * 0.5

        def decode(self, z):
            return z  # not the inverse

    with pytest.raises(ValueError, match="does not reconstruct its input"):
        DiffeomorphicCounterfactual(image_classifier(), Lossy()).counterfactual(torch.rand(2, 1, 4, 4), 0)


def test_flow_in_training_mode_is_refused_and_left_as_is():
    flow = vector_flow().train()
    with pytest.raises(ValueError, match="training mode"):
        DiffeomorphicCounterfactual(image_classifier(), flow).counterfactual(torch.rand(2, 1, 4, 4), 0)
    assert flow.training


def test_flow_shape_mismatch():
    with pytest.raises(ValueError, match="the flow models samples of 16 values .* inputs have 25 values"):
        DiffeomorphicCounterfactual(image_classifier(), vector_flow(dim=16)).counterfactual(
            torch.rand(2, 1, 5, 5), 0)


def test_not_a_flow():
    with pytest.raises(TypeError, match="nflows.flows.Flow or have encode"):
        DiffeomorphicCounterfactual(image_classifier(), object())


def test_flow_parameters_untouched():
    flow, clf = vector_flow(), image_classifier()
    before = {k: v.clone() for k, v in flow.state_dict().items()}
    DiffeomorphicCounterfactual(clf, flow).counterfactual(torch.rand(3, 1, 4, 4), 1, steps=20)
    assert all(p.grad is None for p in flow.parameters())
    assert all(torch.equal(before[k], v) for k, v in flow.state_dict().items())
    assert not flow.training
