"""Fitting a flow by maximum likelihood, and its bits per dimension on any batch."""

from __future__ import annotations

import math
import warnings
from typing import Any, Optional

import torch
from nflows.flows.base import Flow
from torch import Tensor, nn

from xcf._validation import preserved
from xcf.datasets import DIGITS_LEVELS, load_digits  # noqa: F401  (the doctests use load_digits)
from xcf.datasets.augment import random_shift
from xcf.models.flows import Dequantize, glow_flow, realnvp_flow
from xcf.models.kind import ModelKind, epochs_for, seeded, split_budget
from xcf.models.training import TrainContext, fit

__all__ = ["KIND", "bits_per_dim", "build_flow", "check_flow_fit", "flow_recipe", "infer_levels", "train_flow"]


def _find_dequantize(flow: nn.Module) -> Optional[Dequantize]:
    found = [m for m in flow.modules() if isinstance(m, Dequantize)]
    if len(found) > 1:
        raise ValueError(f"the flow contains {len(found)} Dequantize transforms; expected at most one")
    return found[0] if found else None


def _check_flow_data(flow: Any, x: Any) -> None:
    if not (isinstance(flow, nn.Module) and hasattr(flow, "log_prob")):
        raise TypeError(f"flow must be an nflows Flow (an nn.Module with log_prob), got {type(flow).__name__}")
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 2 or x.shape[0] == 0:
        raise ValueError("x must be a non-empty floating-point tensor of shape (N, ...)")


def train_flow(
    flow: Flow,
    x: Tensor,
    epochs: int = 50,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = False,
    clip: float = 10.0,
    weight_decay: float = 0.0,
    max_seconds: Optional[float] = None,
    max_shift: int = 0,
) -> dict[str, Any]:
    """Fit ``flow`` to ``x`` in place by maximum likelihood (AdamW, cosine learning rate, gradient clipping).

    The loop is :func:`xcf.models.training.fit`.

    The flow runs in training mode (fresh dequantisation noise per batch).  Before the first update a
    plain forward pass on up to 512 samples initialises ActNorm layers from data.  Noise and
    shuffling are drawn under ``seed`` (torch's global generator is left as it was).  The flow's mode
    is restored at the end; call ``.eval()`` before using it as a chart.

    Args:
        flow: the flow (trained in place).
        x: training data ``(N, ...)`` in the flow's pixel space.
        epochs: passes over ``x``.
        lr: peak Adam step size, cosine-annealed to 0.
        batch_size: samples per update.
        seed: seed of the noise and the shuffling.
        progress: show a tqdm progress bar.
        clip: gradient-norm clipping threshold.
        weight_decay: AdamW weight decay.
        max_seconds: wall-clock budget: training stops when it is spent, and the cosine schedule
            follows the elapsed time so that a capped run still anneals to ``lr ≈ 0``.
        max_shift: augmentation: every training batch is translated by random integer offsets of up
            to this many pixels (:func:`xcf.datasets.augment.random_shift`; images ``(N, C, H, W)``).

    Returns:
        History: ``"nll"`` (mean ``-flow.log_prob`` per epoch, nats per sample), ``"bits_per_dim"``
        (the same in bits per dimension, when the flow dequantises with :class:`Dequantize`),
        ``"skipped"`` (updates skipped for a non-finite loss), ``"seconds"``, and the loop's
        ``"epochs"``, ``"steps"``, ``"capped"`` and ``"lr"``.

    Example:
        >>> flow = realnvp_flow(hidden=8, blocks_per_scale=1)
        >>> history = train_flow(flow, load_digits("train")[0][:128], epochs=2)
        >>> len(history["nll"])
        2
    """
    _check_flow_data(flow, x)
    if epochs < 1 or batch_size < 1 or lr <= 0 or clip <= 0:
        raise ValueError(f"need epochs >= 1, batch_size >= 1, lr > 0, clip > 0; got {epochs}, {batch_size}, {lr}, {clip}")
    if isinstance(max_shift, bool) or not isinstance(max_shift, int) or max_shift < 0:
        raise ValueError(f"max_shift must be an int >= 0, got {max_shift!r}")
    if max_shift and x.ndim != 4:
        raise ValueError(f"max_shift needs images (N, C, H, W), got x of shape {tuple(x.shape)}")
    dq = _find_dequantize(flow)
    dims = x[0].numel()
    offset = dims * math.log(dq.levels - 1) if dq is not None else None
    n = x.shape[0]

    def init(ctx: TrainContext) -> None:
        with torch.no_grad():  # data-dependent initialisation (ActNorm)
            flow.log_prob(x[torch.randperm(n, generator=ctx.generator)[:512].to(x.device)])

    def step(xb: Tensor, ctx: TrainContext):
        if max_shift:
            xb = random_shift(xb, max_shift, ctx.generator)
        loss = -flow.log_prob(xb).mean()
        if not bool(torch.isfinite(loss)):
            return None  # skipped: no update, the schedule does not advance
        m = xb.shape[0]
        return loss, {"nll": ((loss.detach() * m).double(), m)}

    out = fit(flow, step, x, epochs=epochs, batch_size=batch_size, lr=lr, optimiser="adamw",
              weight_decay=weight_decay, schedule="cosine", clip=clip, max_seconds=max_seconds, seed=int(seed),
              isolate_rng=True, init=init, progress=progress, desc="flow")
    nll = out.pop("nll", [])
    history: dict[str, Any] = {"nll": nll, "bits_per_dim": [], **out}
    if offset is not None:
        history["bits_per_dim"] = [(v + offset) / (dims * math.log(2)) for v in nll]
    return history


def _log_prob_shape(flow: nn.Module, x: Tensor) -> tuple[int, ...]:
    """The sample shape ``flow.log_prob`` takes: ``x``'s own, else flattened (a flow on vectors)."""
    errors = []
    for shape in (tuple(x.shape[1:]), (x[0].numel(),)):
        try:
            with torch.no_grad():
                flow.log_prob(x[:1].reshape((1,) + shape))
            return shape
        except Exception as e:  # noqa: BLE001 - both attempts are reported below
            errors.append(f"{shape}: {type(e).__name__}: {e}")
    raise ValueError("the flow's log_prob accepts neither the data's shape nor flattened samples; " + "; ".join(errors))


def infer_levels(x: Tensor) -> int:
    """The number of grey levels ``L`` of data ``x = k / (L - 1)`` in ``[0, 1]``: the smallest ``L <= 256`` that fits.

    Raises ``ValueError`` for data outside ``[0, 1]`` or not on any such grid (pass ``levels`` then).

    Example:
        >>> infer_levels(torch.tensor([0.0, 0.25, 1.0])), infer_levels(torch.arange(256) / 255.0)
        (5, 256)
    """
    values = torch.unique(x.detach().to("cpu", torch.float64))
    if values.numel() == 0 or not bool(torch.isfinite(values).all()):
        raise ValueError("cannot infer grey levels: the data is empty or not finite")
    if float(values[0]) < 0 or float(values[-1]) > 1:
        raise ValueError(f"cannot infer grey levels: the data lies in [{float(values[0]):.4g}, {float(values[-1]):.4g}], "
                         "not [0, 1]")
    for levels in range(2, 257):
        k = values * (levels - 1)
        if bool(((k - k.round()).abs() < 5e-5).all()):  # float32 data: k is off by at most 255 * 6e-8
            return levels
    raise ValueError("cannot infer grey levels: the data is not of the form k / (L - 1) for any L <= 256; "
                     "pass levels explicitly")


def check_flow_fit(flow: Flow, x: Tensor, test_bits_per_dim: float, margin: float = 0.5,
                   levels: Optional[int] = None) -> float:
    """Warn when ``flow`` fits the data ``x`` far worse than its own test split: its counterfactuals on ``x``
    are then not trustworthy (a flow fitted on other data, or a shifted data set).

    Args:
        flow: the flow.
        x: the audited data ``(N, ...)`` in ``[0, 1]`` (up to 1,000 samples are scored).
        test_bits_per_dim: the flow's bits/dim on its own test split.
        margin: warn when the audited data scores more than this many bits/dim worse.
        levels: grey levels (see :func:`bits_per_dim`).

    Returns:
        The mean bits/dim of ``x`` (uniform dequantisation, as ``test_bits_per_dim`` is measured).
    """
    value = float(bits_per_dim(flow, x[:1000], levels).mean())
    if not value <= test_bits_per_dim + margin:
        warnings.warn(f"the flow scores the audited data at {value:.3f} bits/dim, more than {margin:g} worse than "
                      f"its own test split ({test_bits_per_dim:.3f}): it does not model this data, and its "
                      "counterfactuals on it are not trustworthy", UserWarning, stacklevel=2)
    return value


def bits_per_dim(
    flow: Flow,
    x: Tensor,
    levels: Optional[int] = None,
    dequantize: bool = True,
    n_samples: int = 1,
    seed: int = 0,
    batch_size: int = 1024,
) -> Tensor:
    r"""Bits per dimension of each sample of ``L``-level data ``x`` under ``flow`` (no gradients).

    ``bpd = (-log p_t(t) + D log L) / (D ln 2)`` where ``t`` is the dequantised variable in
    ``(0, 1)^D``, ``t = (x (L - 1) + u) / L``, and ``p_t`` the flow's density of ``t``:

    * ``dequantize=True``: ``u ~ U(0, 1)`` per pixel (drawn under ``seed``), averaged over
      ``n_samples`` draws: the standard variational bound on the discrete code length.
    * ``dequantize=False``: ``u = 1/2``, the deterministic eval-mode mapping.  This is how xcf scores
      counterfactuals, which need not lie on the pixel grid, beside real images.

    For a flow built here (a :class:`Dequantize` inside), ``log p_t(t) = flow.log_prob(x) -
    D log((L - 1) / L)`` with the flow in eval mode and its :class:`Dequantize` switched to noise for
    ``dequantize=True``; ``L`` is the flow's own.  For a flow without one (a user's flow), the flow is
    taken to model ``t`` directly, ``log p_t(t) = flow.log_prob(t)``, and ``levels`` must be given.
    A flow on flat vectors gets flattened samples.  The flow's modes are restored.  A sample whose
    log-density is not finite gets ``nan`` or ``inf``, never a silent substitute.

    Args:
        flow: the flow.
        x: data ``(N, ...)`` in ``[0, 1]`` (``x = k / (L - 1)``).
        levels: ``L``; default (and only accepted value) for xcf's flows: the flow's :class:`Dequantize`
            levels; required for other flows.
        dequantize: uniform noise (``True``) or the cell centre (``False``).
        n_samples: noise draws averaged (only with ``dequantize=True``).
        seed: seed of the noise (torch's global generator is left as it was).
        batch_size: samples per forward pass.

    Returns:
        ``(N,)`` bits per dimension, on ``x``'s device and dtype.

    Example:
        >>> flow = realnvp_flow(hidden=8, blocks_per_scale=1).eval()
        >>> bits_per_dim(flow, load_digits("test")[0][:5], dequantize=False).shape
        torch.Size([5])
    """
    _check_flow_data(flow, x)
    if levels is not None and (isinstance(levels, bool) or not isinstance(levels, int) or levels < 2):
        raise ValueError(f"levels must be an int >= 2, got {levels!r}")
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be an int >= 1, got {n_samples!r}")
    dq = _find_dequantize(flow)
    if dq is not None and levels is not None and dq.levels != levels:
        raise ValueError(f"levels={levels} contradicts the flow, which dequantises {dq.levels} levels "
                         "(leave levels out to use the flow's own)")
    if dq is None and levels is None:
        raise ValueError("levels is required for a flow without xcf's Dequantize: the number of grey levels "
                         "of the data (256 for 8-bit images)")
    L = dq.levels if dq is not None else levels
    dims = x[0].numel()
    total = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    with preserved(flow), torch.no_grad(), torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        flow.eval()
        shape = _log_prob_shape(flow, x)
        if dq is not None and dequantize:
            dq.train()
        for _ in range(n_samples if dequantize else 1):
            for i in range(0, x.shape[0], batch_size):
                xb = x[i : i + batch_size]
                xb = xb.reshape((xb.shape[0],) + shape)
                if dq is not None:
                    log_pt = flow.log_prob(xb) - dims * math.log((L - 1) / L)
                else:
                    u = torch.rand_like(xb) if dequantize else 0.5
                    log_pt = flow.log_prob((xb * (L - 1) + u) / L)
                total[i : i + batch_size] += -log_pt.to(torch.float64)
    nll = total / (n_samples if dequantize else 1)
    return ((nll + dims * math.log(L)) / (dims * math.log(2))).to(x.dtype)


# ------------------------------------------------------------------------------------- the flow kind
def _flow_scales(h: int, w: int) -> int:
    scales = 0
    while scales < 3 and h % 2 ** (scales + 1) == 0 and w % 2 ** (scales + 1) == 0 \
            and min(h, w) // 2 ** (scales + 1) >= 2:
        scales += 1
    return scales


def flow_recipe(shape: tuple[int, int, int], levels: int = 256, n: int = 4000) -> dict[str, Any]:
    """The recommended flow for images of ``shape`` with ``levels`` grey levels, trained on ``n`` images.

    A Glow (:func:`xcf.models.flows.glow_flow`) with as many scales as halving allows (at most 3, the
    last at least 2x2 pixels): 2 for 28x28, 3 for 32x32.  ``config["model"]["architecture"]`` names the
    builder (``"glow"`` or ``"realnvp"``); the other model settings are its arguments.

    Example:
        >>> flow_recipe((1, 28, 28))["model"]["scales"], flow_recipe((3, 32, 32))["model"]["scales"]
        (2, 3)
    """
    if not (isinstance(shape, (tuple, list)) and len(shape) == 3 and all(isinstance(s, int) and s > 0 for s in shape)):
        raise ValueError(f"shape must be (channels, height, width) of positive ints, got {shape!r}")
    c, h, w = shape
    scales = _flow_scales(h, w)
    if scales == 0:
        raise ValueError(f"a multi-scale flow halves height and width: {h}x{w} images need even sides of at least 4 "
                         "pixels (crop or pad them)")
    return {
        "model": {"architecture": "glow", "shape": [c, h, w], "levels": int(levels), "hidden": 64,
                  "steps_per_scale": 8, "scales": scales, "alpha": 0.01, "scale_bound": 2.0, "dropout": 0.0},
        "train": {"epochs": epochs_for(n, 400_000, 20, 500), "lr": 1e-3, "batch_size": 64, "max_shift": 1},
        "seed": 0,
        "version": 1,
    }


_BUILDERS = {"glow": glow_flow, "realnvp": realnvp_flow}


def build_flow(config: dict[str, Any]) -> Flow:
    """The untrained flow of a configuration (:func:`flow_recipe`'s schema), initialised under its ``"seed"``.

    ``config["model"]["architecture"]`` picks :func:`~xcf.models.flows.glow_flow` or
    :func:`~xcf.models.flows.realnvp_flow`.  A file of xcf 0.2 that names it in ``config["kind"]`` still builds.
    """
    model = dict(config["model"])
    architecture = model.pop("architecture", config.get("kind", "glow"))
    if architecture not in _BUILDERS:
        raise ValueError(f"unknown flow architecture {architecture!r}; known: {sorted(_BUILDERS)}")
    model["shape"] = tuple(model["shape"])
    return seeded(int(config.get("seed", 0)), lambda: _BUILDERS[architecture](**model))


def _flow_metrics(flow: Flow, x: Tensor, x_test: Optional[Tensor]) -> dict[str, Any]:
    out = {"train_bits_per_dim": float(bits_per_dim(flow, x[:1000]).mean())}
    if x_test is not None:
        out["test_bits_per_dim"] = _measure(flow, {}, x_test, None)
        out["test_bits_per_dim_center"] = float(bits_per_dim(flow, x_test, dequantize=False).mean())
    return out


def _measure(flow: nn.Module, cfg: dict[str, Any], x_test: Tensor, y_test: Optional[Tensor]) -> float:
    """Test bits/dim: uniform dequantisation, 2 draws under seed 0 (deterministic)."""
    return float(bits_per_dim(flow, x_test, n_samples=2).mean())


def _train(flow: nn.Module, cfg: dict[str, Any], x: Tensor, y: Optional[Tensor], x_test: Optional[Tensor],
           y_test: Optional[Tensor], max_seconds: Optional[float], progress: bool) -> dict[str, Any]:
    settings, budget = split_budget(cfg, max_seconds)
    history = train_flow(flow, x, seed=int(cfg["seed"]), progress=progress, max_seconds=budget, **settings)
    flow.eval()
    return {**_flow_metrics(flow, x, x_test), "train_seconds": history["seconds"], "epochs": history["epochs"],
            "capped": history["capped"]}


KIND = ModelKind(
    name="flow", architecture="Flow", summary="Glow for diffeomorphic counterfactuals (dequantisation and logit inside)",
    roles=("flow", "judge"), recipe=lambda shape, n, levels, n_classes: flow_recipe(shape, levels, n),
    build=build_flow, train=_train, test_metric="test_bits_per_dim", measure=_measure, levels=True,
    smoke={"model": {"hidden": 8, "steps_per_scale": 1}, "train": {"epochs": 1}},
)
