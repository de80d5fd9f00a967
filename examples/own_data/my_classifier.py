"""A classifier written and trained the way a user would, in plain PyTorch, then handed to xcf as a
TorchScript archive (``torch.jit.save``) or through the factory :func:`load` (``my_classifier.py:load``).

Usage: ``python examples/own_data/my_classifier.py DATA_DIR OUT.ts [EPOCHS]`` trains on the ImageFolder
``DATA_DIR`` (28x28 greyscale) and writes the TorchScript archive and ``OUT.state.pt`` (its weights).
"""

import sys
import time
from pathlib import Path

import torch
from torch import nn

from xcf.datasets.files import open_images


class UserCNN(nn.Module):
    """LeNet-like: two 5x5 convolutions with max pooling, two linear layers, dropout, logits out."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 20, 5), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(20, 50, 5), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(800, 256), nn.ReLU(), nn.Dropout(0.3), nn.Linear(256, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def load(path: str = "own-data/user_cnn.state.pt") -> nn.Module:
    """The factory for ``--classifier my_classifier.py:load``: build the architecture, load the weights."""
    model = UserCNN()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def main(data: str, out: str, epochs: int = 4) -> None:
    x, y = open_images(data).tensors()
    torch.manual_seed(0)
    model = UserCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(x.shape[0]).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            acc = (model(x).argmax(1) == y).float().mean().item()
        print(f"epoch {epoch + 1}: training accuracy {acc:.3f} ({time.perf_counter() - start:.0f} s)")
    torch.save(model.state_dict(), Path(out).with_suffix(".state.pt"))
    torch.jit.save(torch.jit.trace(model, x[:2]), out)
    print(f"wrote {out} (TorchScript) and {Path(out).with_suffix('.state.pt')} (weights for the factory load())")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 4)
