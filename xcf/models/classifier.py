"""A small reference classifier for the digits (and MNIST-sized) images, its training and accuracy.

:class:`DigitsCNN` computes logits ``f(x) = W h(x) + b`` where the penultimate activations
``h(x) = features(x)`` come from two convolution blocks (3x3 convolutions with ReLU, each followed by
2x2 max pooling) and a fully connected layer.  It has no BatchNorm, so in any mode each sample's
output depends on that sample alone.

:func:`train_classifier` minimises the mean cross-entropy ``-log softmax(f(x))[y]`` with AdamW over
shuffled mini-batches (the one loop :func:`xcf.models.training.fit`); the reference classifier
trained on the digits is :func:`xcf.models.zoo.digits_classifier`.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xcf._validation import check_image_size
from xcf.datasets import load_digits  # noqa: F401  (the doctests use it)
from xcf.models.training import TrainContext, fit

__all__ = ["DigitsCNN", "train_classifier", "accuracy"]


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


_MOVED_TO_ZOO = frozenset({"DIGITS_CLASSIFIER_CONFIG", "build_digits_classifier", "digits_classifier"})


def __getattr__(name: str) -> Any:
    """The reference-model names that moved to :mod:`xcf.models.zoo`, still reachable from here
    (imported late: the zoo imports this module, never the reverse)."""
    if name in _MOVED_TO_ZOO:
        from xcf.models import zoo

        return getattr(zoo, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
