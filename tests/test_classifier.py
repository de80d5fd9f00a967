import pytest
import torch
from torch import nn

from xcf.datasets import load_digits
from xcf.models.classifier import DigitsCNN, accuracy, train_classifier


@pytest.mark.parametrize("size", [8, 28])
def test_shapes_and_features(size):
    torch.manual_seed(0)
    model = DigitsCNN(image_size=size, width=4, n_classes=7)
    x = torch.rand(3, 1, size, size)
    h = model.features(x)
    assert h.shape == (3, 16)
    logits = model(x)
    assert logits.shape == (3, 7)
    assert torch.equal(logits, model.head(h))


def test_batched_equals_per_sample():
    torch.manual_seed(0)
    model = DigitsCNN(width=4).train()  # no BatchNorm: samples stay independent even in training mode
    x = torch.rand(5, 1, 8, 8)
    single = torch.cat([model(x[i : i + 1]) for i in range(5)])
    assert torch.allclose(model(x), single, atol=1e-6)


def test_bad_construction_and_inputs():
    with pytest.raises(ValueError, match="image_size"):
        DigitsCNN(image_size=10)
    with pytest.raises(ValueError, match="width"):
        DigitsCNN(width=0)
    with pytest.raises(ValueError, match=r"\(N, 1, 8, 8\)"):
        DigitsCNN()(torch.zeros(2, 1, 28, 28))


def test_short_training_lowers_loss_and_is_deterministic():
    x, y = load_digits("train")
    x, y = x[:256], y[:256]
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        model = DigitsCNN(width=8).eval()
        history = train_classifier(model, x, y, epochs=8, lr=1e-2, batch_size=32, seed=1)
        assert not model.training  # mode restored
        assert history["loss"][-1] < 0.5 * history["loss"][0]
        models.append(model)
    for p, q in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(p, q)


class _Oracle(nn.Module):
    """Predicts the class stored in the first pixel: a known answer for ``accuracy``."""

    def forward(self, x):
        return nn.functional.one_hot(x[:, 0, 0, 0].long(), 10).float()


def test_accuracy_known_answer_and_mode():
    y = torch.tensor([0, 1, 2, 3])
    x = torch.zeros(4, 1, 8, 8)
    x[:, 0, 0, 0] = torch.tensor([0.0, 1.0, 5.0, 3.0])  # third is wrong
    model = _Oracle().train()
    assert accuracy(model, x, y) == 0.75
    assert model.training


def test_input_checks():
    model = DigitsCNN(width=4)
    x = torch.rand(4, 1, 8, 8)
    with pytest.raises(TypeError, match="long"):
        train_classifier(model, x, torch.zeros(4), epochs=1)
    with pytest.raises(ValueError, match="same"):
        accuracy(model, x, torch.zeros(3, dtype=torch.long))
