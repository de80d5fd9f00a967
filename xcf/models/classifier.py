"""A small reference classifier for the digits (and MNIST-sized) images, its training and accuracy.

:class:`DigitsCNN` computes logits ``f(x) = W h(x) + b`` where the penultimate activations
``h(x) = features(x)`` come from two convolution blocks (3x3 convolutions with ReLU, each followed by
2x2 max pooling) and a fully connected layer.  It has no BatchNorm, so in any mode each sample's
output depends on that sample alone.

:func:`train_classifier` minimises the mean cross-entropy ``-log softmax(f(x))[y]`` with Adam over
shuffled mini-batches; :func:`digits_classifier` trains (or loads from the model cache) the reference
classifier on the digits training split.
"""

from __future__ import annotations

import os
import time
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from xcf.datasets import load_digits
from xcf.models.io import cached_model, merged

__all__ = ["DigitsCNN", "train_classifier", "accuracy", "build_digits_classifier", "digits_classifier"]


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
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 4 or image_size % 4:
            raise ValueError(f"image_size must be a positive multiple of 4, got {image_size!r}")
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
) -> dict[str, list[float]]:
    """Train ``model`` (returning logits) in place with Adam on the cross-entropy.

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

    Returns:
        History: ``{"loss": [mean training loss per epoch], "accuracy": [training accuracy per epoch]}``.

    Example:
        >>> x, y = load_digits("train")
        >>> model = DigitsCNN()
        >>> history = train_classifier(model, x, y, epochs=1)
        >>> len(history["loss"])
        1
    """
    _check_xy(model, x, y)
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"epochs and batch_size must be >= 1 and lr > 0, got {epochs}, {batch_size}, {lr}")
    generator = torch.Generator().manual_seed(int(seed))
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    n = x.shape[0]
    n_batches = (n + batch_size - 1) // batch_size
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=epochs * n_batches)
    history: dict[str, list[float]] = {"loss": [], "accuracy": []}
    was_training = model.training
    model.train()
    try:
        for _ in tqdm(range(epochs), desc="classifier", disable=not progress):
            order = torch.randperm(n, generator=generator).to(x.device)
            total = torch.zeros((), device=x.device)
            correct = torch.zeros((), device=x.device)
            for i in range(n_batches):
                idx = order[i * batch_size : (i + 1) * batch_size]
                logits = model(x[idx])
                loss = F.cross_entropy(logits, y[idx])
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                scheduler.step()
                total += loss.detach() * idx.numel()
                correct += (logits.detach().argmax(1) == y[idx]).sum()
            history["loss"].append(float(total) / n)
            history["accuracy"].append(float(correct) / n)
    finally:
        model.train(was_training)
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


DIGITS_CLASSIFIER_CONFIG: dict[str, Any] = {
    "model": {"in_channels": 1, "n_classes": 10, "image_size": 8, "width": 32},
    "train": {"epochs": 10, "lr": 3e-3, "batch_size": 64, "weight_decay": 1e-4},
    "data": {"seed": 0, "test_size": 0.25},
    "seed": 0,
    "version": 1,
}


def build_digits_classifier(config: dict[str, Any]) -> DigitsCNN:
    """An untrained :class:`DigitsCNN` from a configuration like :data:`DIGITS_CLASSIFIER_CONFIG`, seeded
    by its ``"seed"`` (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config["seed"])
        return DigitsCNN(**config["model"])


def digits_classifier(
    cache_dir: Optional[str | os.PathLike] = None,
    retrain: bool = False,
    progress: bool = False,
    overrides: Optional[dict[str, Any]] = None,
) -> tuple[DigitsCNN, dict[str, Any]]:
    """The reference digits classifier: a :class:`DigitsCNN` trained on ``load_digits("train")``.

    Trained once (a few seconds on one CPU thread) and cached with :func:`xcf.models.io.cached_model`.

    Args:
        cache_dir: the model cache (default ``$XCF_CACHE`` or ``~/.cache/xcf``).
        retrain: train again even if a cached model exists.
        progress: show a progress bar while training.
        overrides: settings that replace those of the reference configuration (e.g. shorter
            training for a smoke test); they are part of the cache key.

    Returns:
        ``(model in eval mode, metrics)`` with ``test_accuracy``, ``train_accuracy`` and ``train_seconds``.

    Example:
        >>> model, metrics = digits_classifier()                 # doctest: +SKIP
        >>> metrics["test_accuracy"] > 0.95                      # doctest: +SKIP
        True
    """
    config = merged(DIGITS_CLASSIFIER_CONFIG, overrides)

    def train(model: nn.Module) -> dict[str, Any]:
        x, y = load_digits("train", **config["data"])
        x_test, y_test = load_digits("test", **config["data"])
        start = time.perf_counter()
        history = train_classifier(model, x, y, seed=config["seed"], progress=progress, **config["train"])
        seconds = time.perf_counter() - start
        return {
            "test_accuracy": accuracy(model, x_test, y_test),
            "train_accuracy": accuracy(model, x, y),
            "train_seconds": seconds,
            "final_loss": history["loss"][-1],
        }

    return cached_model("digits-classifier", config, build_digits_classifier, train, directory=cache_dir,
                        retrain=retrain)
