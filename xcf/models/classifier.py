"""A small reference classifier for the digits (and MNIST-sized) images, its training and accuracy.

:class:`DigitsCNN` computes logits ``f(x) = W h(x) + b`` where the penultimate activations
``h(x) = features(x)`` come from two convolution blocks (3x3 convolutions with ReLU, each followed by
2x2 max pooling) and a fully connected layer.  It has no BatchNorm, so in any mode each sample's
output depends on that sample alone.

:func:`train_classifier` minimises the mean cross-entropy ``-log softmax(f(x))[y]`` with AdamW over
shuffled mini-batches (the one loop :func:`xcf.models.training.fit`); the reference classifier
trained on the digits is ``xcf.models.reference("digits-classifier")``.
"""

from __future__ import annotations

import time
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xcf._validation import check_image_size
from xcf.datasets import load_digits  # noqa: F401  (the doctests use it)
from xcf.models.kind import ModelKind, epochs_for, seeded, split_budget, square_side
from xcf.models.training import TrainContext, fit

__all__ = ["DigitsCNN", "KIND", "accuracy", "build_classifier", "classifier_recipe", "train_classifier"]


class DigitsCNN(nn.Module):
    """Convolutional classifier for small square images, returning logits.

    ``features``: ``[conv3x3 -> ReLU] x 2 -> maxpool2 -> conv3x3 -> ReLU -> maxpool2 -> flatten ->
    linear -> ReLU`` (``4 * width`` units); ``head``: linear to ``n_classes`` logits.

    Args:
        in_channels: channels of the input images.
        n_classes: number of classes.
        image_size: height and width of the inputs (divisible by 4: 8 for digits, 28 for MNIST).
        width: channels of the first convolutions (the second block has ``2 * width``).

    Example:
        >>> model = DigitsCNN()
        >>> model(torch.zeros(5, 1, 8, 8)).shape
        torch.Size([5, 10])
        >>> model.features(torch.zeros(5, 1, 8, 8)).shape
        torch.Size([5, 128])
    """

    def __init__(self, in_channels: int = 1, n_classes: int = 10, image_size: int = 8, width: int = 32):
        super().__init__()
        for name, value, low in (("in_channels", in_channels, 1), ("n_classes", n_classes, 2), ("width", width, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        check_image_size(image_size)
        self.in_channels = in_channels
        self.n_classes = n_classes
        self.image_size = image_size
        self.width = width
        self.n_features = 4 * width
        side = image_size // 4
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * width * side * side, self.n_features),
            nn.ReLU(),
        )
        self.head = nn.Linear(self.n_features, n_classes)

    def _check(self, x: Tensor) -> None:
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"DigitsCNN expects inputs of shape (N, {', '.join(map(str, expected))}), got {tuple(x.shape)}")

    def features(self, x: Tensor) -> Tensor:
        """The penultimate activations ``h(x)``, shape ``(N, 4 * width)``."""
        self._check(x)
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``head(features(x))``, shape ``(N, n_classes)``."""
        return self.head(self.features(x))


def _check_xy(model: Any, x: Any, y: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {type(x).__name__}")
    if not isinstance(y, Tensor) or y.dtype != torch.long or y.ndim != 1:
        raise TypeError("y must be a 1-d long tensor of class indices")
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"x and y must hold the same, non-zero number of samples, got {x.shape[0]} and {y.shape[0]}")


def train_classifier(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    epochs: int = 30,
    lr: float = 2e-3,
    batch_size: int = 64,
    weight_decay: float = 1e-4,
    seed: int = 0,
    progress: bool = False,
    max_seconds: Optional[float] = None,
) -> dict[str, Any]:
    """Train ``model`` (returning logits) in place with AdamW on the cross-entropy (:func:`~xcf.models.training.fit`).

    The shuffling is drawn from a generator seeded with ``seed``; the model's mode is restored at the
    end.  Model initialisation is the caller's (seed torch before building the model).

    Args:
        model: the classifier; it is trained in place.
        x: inputs ``(N, ...)`` on the model's device.
        y: long class indices ``(N,)``.
        epochs: passes over the data.
        lr: Adam step size (cosine-annealed to 0 over the run).
        batch_size: samples per update.
        weight_decay: AdamW weight decay.
        seed: seed of the shuffling.
        progress: show a tqdm progress bar.
        max_seconds: wall-clock budget; the cosine schedule then follows the elapsed time, so a
            capped run still anneals.

    Returns:
        History: ``{"loss": [mean training loss per epoch], "accuracy": [training accuracy per epoch]}``
        plus the loop's ``epochs``, ``steps``, ``capped``, ``lr`` and ``seconds``.

    Example:
        >>> x, y = load_digits("train")
        >>> model = DigitsCNN(width=8)
        >>> history = train_classifier(model, x[:256], y[:256], epochs=1)
        >>> len(history["loss"])
        1
    """
    _check_xy(model, x, y)
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"epochs and batch_size must be >= 1 and lr > 0, got {epochs}, {batch_size}, {lr}")

    def step(batch: tuple[Tensor, Tensor], ctx: TrainContext):
        xb, yb = batch
        logits = model(xb)
        loss = F.cross_entropy(logits, yb)
        n = yb.numel()
        return loss, {"loss": (loss.detach() * n, n), "accuracy": ((logits.detach().argmax(1) == yb).sum(), n)}

    history = fit(model, step, (x, y), epochs=epochs, batch_size=batch_size, lr=lr, optimiser="adamw",
                  weight_decay=weight_decay, schedule="cosine", max_seconds=max_seconds, seed=int(seed),
                  progress=progress, desc="classifier")
    return history


def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1024) -> float:
    """Fraction of samples whose arg-max output is ``y`` (evaluated in eval mode, without gradients).

    The model's mode is restored afterwards.

    Example:
        >>> model = DigitsCNN()
        >>> 0.0 <= accuracy(model, *load_digits("test")) <= 1.0
        True
    """
    _check_xy(model, x, y)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            correct = sum(
                int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
                for i in range(0, x.shape[0], batch_size)
            )
    finally:
        model.train(was_training)
    return correct / x.shape[0]


# ------------------------------------------------------------------------------- the classifier kind
def classifier_recipe(shape: tuple[int, int, int], n_classes: int = 10, n: int = 4000) -> dict[str, Any]:
    """The recommended CNN (:class:`DigitsCNN`) for square images of ``shape`` (side a multiple of 4).

    Example:
        >>> classifier_recipe((1, 28, 28))["model"]
        {'in_channels': 1, 'n_classes': 10, 'image_size': 28, 'width': 32}
    """
    c, side = square_side(shape, "classifier")
    return {
        "model": {"in_channels": int(c), "n_classes": int(n_classes), "image_size": side, "width": 32},
        "train": {"epochs": epochs_for(n, 60_000, 10, 100), "lr": 2e-3, "batch_size": 64, "weight_decay": 1e-4},
        "seed": 0,
        "version": 1,
    }


def build_classifier(config: dict[str, Any]) -> DigitsCNN:
    """The untrained :class:`DigitsCNN` of a configuration, initialised under its ``"seed"``."""
    return seeded(int(config.get("seed", 0)), lambda: DigitsCNN(**config.get("model", config)))


def _train(model: nn.Module, cfg: dict[str, Any], x: Tensor, y: Optional[Tensor], x_test: Optional[Tensor],
           y_test: Optional[Tensor], max_seconds: Optional[float], progress: bool) -> dict[str, Any]:
    if y is None:
        raise ValueError("a classifier trains on labelled images: y is missing")
    settings, budget = split_budget(cfg, max_seconds)
    start = time.perf_counter()
    history = train_classifier(model, x, y, seed=int(cfg["seed"]), progress=progress, max_seconds=budget, **settings)
    metrics: dict[str, Any] = {"train_seconds": time.perf_counter() - start, "epochs": int(history["epochs"]),
                               "capped": bool(history["capped"]), "train_accuracy": accuracy(model, x, y)}
    if x_test is not None and y_test is not None:
        metrics["test_accuracy"] = accuracy(model, x_test, y_test)
    return metrics


def _measure(model: nn.Module, cfg: dict[str, Any], x_test: Tensor, y_test: Optional[Tensor]) -> float:
    if y_test is None:
        raise ValueError("the test accuracy needs labels")
    return accuracy(model, x_test, y_test)


KIND = ModelKind(
    name="classifier", architecture="DigitsCNN", summary="a CNN (DigitsCNN) for square images",
    roles=("classifier",), recipe=lambda shape, n, levels, n_classes: classifier_recipe(shape, n_classes, n),
    build=build_classifier, train=_train, test_metric="test_accuracy", measure=_measure, higher_is_better=True, labels=True,
    smoke={"model": {"width": 8}, "train": {"epochs": 1}},
)
