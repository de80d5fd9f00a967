"""``xcf audit --target``: the text of the option turned into a target rule, or one line saying why not."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from xcf.datasets.files import ImageData
from xcf.scale.batches import RunnerUp, TargetRule, shift_target

__all__ = ["parse_target"]


def parse_target(text: Optional[str], data: ImageData, n_classes: int, classifier: Any) -> TargetRule:
    """The target rule of ``--target``.

    ``+K`` (or ``shift:K``): ``(y + K) mod C`` (needs labels); ``K``: class ``K`` for every image;
    ``runner-up``: the classifier's second most likely class; a ``.npy``, ``.txt`` or ``.csv`` file: one class
    per image.  ``None``: ``+3`` for labelled data, ``runner-up`` otherwise.
    """
    if text is None:
        text = "+3" if data.labelled else "runner-up"
    text = text.strip()
    if text == "runner-up":
        return RunnerUp(classifier)
    shift = text[1:] if text.startswith("+") else text[6:] if text.startswith("shift:") else None
    if shift is not None:
        if not shift.lstrip("-").isdigit():
            raise ValueError(f"--target {text}: a shift is +K with an integer K, e.g. +1")
        if not data.labelled:
            raise ValueError(f"--target {text} shifts the labels, but {data.source} has none: use --target runner-up, "
                             "a class, or a per-image file")
        return shift_target(int(shift), n_classes)
    if text.lstrip("-").isdigit():
        k = int(text)
        if not 0 <= k < n_classes:
            raise ValueError(f"--target {k} is out of range for a classifier of {n_classes} classes")
        return k
    path = Path(text).expanduser()
    if not path.is_file():
        raise ValueError(f"--target {text!r} is none of +K, a class index, runner-up, or an existing per-image file")
    try:
        values = np.load(path, allow_pickle=False) if path.suffix == ".npy" else \
            np.loadtxt(path, delimiter="," if path.suffix == ".csv" else None, dtype=np.float64, ndmin=1)
    except (ValueError, OSError) as e:
        raise ValueError(f"--target {path}: cannot read one class per image: {' '.join(str(e).split())}") from None
    values = np.asarray(values).reshape(-1)
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        bad = np.flatnonzero(~np.isfinite(values))
        raise ValueError(f"--target {path} holds {'NaN' if np.isnan(values[bad[0]]) else 'infinite values'} (at "
                         f"position {int(bad[0])}{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}): it must hold "
                         f"{len(data)} integer classes, one per image")
    if values.dtype.kind not in "iufb":
        raise ValueError(f"--target {path} holds {values.dtype} values; it must hold {len(data)} integer classes, one "
                         "per image")
    if values.shape[0] != len(data) or not np.all(np.mod(values, 1) == 0):
        raise ValueError(f"--target {path} must hold {len(data)} integer classes (one per image), got "
                         f"{values.shape[0]} values{'' if np.all(np.mod(values, 1) == 0) else ' with fractions'}")
    t = torch.as_tensor(values.astype(np.int64))
    if int(t.min()) < 0 or int(t.max()) >= n_classes:
        raise ValueError(f"--target {path} has classes in [{int(t.min())}, {int(t.max())}]; the classifier has "
                         f"{n_classes}")
    return t
