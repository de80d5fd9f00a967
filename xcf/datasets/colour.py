"""Coloured digits: a colour shortcut planted on purpose (the coloured-MNIST scenario of a Clever-Hans audit).

:func:`colourise` paints grey digits ``(N, 1, H, W)`` in one colour each, ``x_rgb = x * colour`` (black
background), stored on the 8-bit grid ``k / 255`` as a PNG would hold it.  :func:`coloured_digits` picks
the colours: with probability ``follow`` the colour of the digit's class (:data:`PALETTE`), else one of the
ten at random.  In training ``follow`` is high, so colour predicts the class and a classifier can learn it
instead of the shapes; in test ``follow = 0``, so colour says nothing and such a classifier fails.
:func:`load_coloured` gives both splits of the digits or of MNIST.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from xcf._validation import check_inputs

__all__ = ["COLOUR_NAMES", "COLOURED_DATA", "PALETTE", "TRAIN_FOLLOW", "coloured_digits", "colourise", "load_coloured"]

#: the class colours (RGB in [0, 1]): class k is drawn in ``PALETTE[k]`` when the colour follows the class
PALETTE = torch.tensor([
    [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 1.0],
    [0.0, 1.0, 1.0], [1.0, 0.5, 0.0], [0.5, 0.0, 1.0], [0.5, 1.0, 0.0], [0.0, 0.5, 1.0],
])
COLOUR_NAMES = ("red", "green", "blue", "yellow", "magenta", "cyan", "orange", "violet", "lime", "azure")

#: the grey data sets :func:`load_coloured` paints
COLOURED_DATA = ("digits", "mnist")

#: how often a training digit takes its class's colour in the scenario.  At 0.95 a CNN still learns much of
#: the shapes from the conflicting 5% (test accuracy in random colours 0.48 on the digits, 0.68 on MNIST); at
#: 0.99 far less (0.22 on the digits), so colour is the shortcut it mostly relies on
TRAIN_FOLLOW = 0.99


def colourise(x: Tensor, colour: Tensor) -> Tensor:
    """Paint grey images in one colour each: ``x * colour``, rounded to the 8-bit grid ``k / 255``.

    Args:
        x: ``(N, 1, H, W)`` grey images in ``[0, 1]``.
        colour: ``(N,)`` indices into :data:`PALETTE`, or ``(N, 3)`` RGB colours in ``[0, 1]``.

    Returns:
        ``(N, 3, H, W)`` colour images.

    Example:
        >>> colourise(torch.ones(1, 1, 1, 1), torch.tensor([6])).flatten().tolist()    # orange
        [1.0, 0.501960813999176, 0.0]
    """
    check_inputs(x, "x", min_dim=4)
    if x.shape[1] != 1:
        raise ValueError(f"x must be grey images (N, 1, H, W), got {tuple(x.shape)}")
    if not isinstance(colour, Tensor):
        raise TypeError(f"colour must be a tensor, got {type(colour).__name__}")
    if colour.ndim == 1 and not colour.is_floating_point():
        if colour.numel() and not (0 <= int(colour.min()) and int(colour.max()) < len(PALETTE)):
            raise ValueError(f"colour indices must lie in [0, {len(PALETTE) - 1}], got {colour.unique().tolist()}")
        colour = PALETTE.to(x.device)[colour.to(x.device)]
    if colour.shape != (x.shape[0], 3):
        raise ValueError(f"colour must be ({x.shape[0]},) palette indices or ({x.shape[0]}, 3) RGB, got "
                         f"{tuple(colour.shape)}")
    out = x * colour.to(x.device, x.dtype)[:, :, None, None]
    return (out * 255).round() / 255


def coloured_digits(x: Tensor, y: Tensor, follow: float, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Colour each image by its class with probability ``follow``, else by a random palette colour.

    Args:
        x: ``(N, 1, H, W)`` grey images in ``[0, 1]``.
        y: ``(N,)`` labels in ``[0, 10)``.
        follow: probability that an image takes its class's colour (a random one may match it too).
        seed: seed of the choices (a private generator; the global RNG is untouched).

    Returns:
        ``(x_rgb (N, 3, H, W), colour (N,))``: the images and the palette index each was painted with.

    Example:
        >>> x, y = torch.ones(4, 1, 2, 2), torch.tensor([0, 1, 2, 3])
        >>> coloured_digits(x, y, follow=1.0)[1].tolist()
        [0, 1, 2, 3]
    """
    if not 0.0 <= float(follow) <= 1.0:
        raise ValueError(f"follow must be in [0, 1], got {follow}")
    if not isinstance(y, Tensor) or y.is_floating_point() or y.shape != (x.shape[0],):
        raise ValueError(f"y must be an integer tensor of {x.shape[0]} labels")
    if y.numel() and not (0 <= int(y.min()) and int(y.max()) < len(PALETTE)):
        raise ValueError(f"labels must lie in [0, {len(PALETTE) - 1}] (one palette colour each)")
    gen = torch.Generator().manual_seed(int(seed))
    keep = torch.rand(x.shape[0], generator=gen) < float(follow)
    random = torch.randint(0, len(PALETTE), (x.shape[0],), generator=gen)
    colour = torch.where(keep, y.cpu(), random)
    return colourise(x, colour.to(x.device)), colour.to(y.device)


def load_coloured(data: str = "mnist", split: str = "train", follow: Optional[float] = None,
                  seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """The coloured digits or MNIST: ``follow`` defaults to :data:`TRAIN_FOLLOW` for ``"train"`` and 0 (random
    colours) for ``"test"``.

    Returns:
        ``(x (N, 3, H, W), y (N,), colour (N,))``.

    Example:
        >>> x, y, colour = load_coloured("digits", "test")
        >>> tuple(x.shape[1:]), round(float((colour == y).float().mean()), 1)
        ((3, 8, 8), 0.1)
    """
    from xcf.datasets.digits import load_digits
    from xcf.datasets.mnist import load_mnist

    if data not in COLOURED_DATA:
        raise ValueError(f"data must be one of {list(COLOURED_DATA)}, got {data!r}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    x, y = (load_digits if data == "digits" else load_mnist)(split)
    follow = (TRAIN_FOLLOW if split == "train" else 0.0) if follow is None else follow
    xc, colour = coloured_digits(x, y, follow, seed=seed + (0 if split == "train" else 1))
    return xc, y, colour
