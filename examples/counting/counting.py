r"""Counting: counterfactuals for a regression model ("what would this image look like with more objects?").

An example built on xcf's public API only (run it with ``python examples/counting/run.py``; import it
by putting ``examples/counting`` on ``sys.path``).

A synthetic data set the code makes itself, a small counting regressor, a flow on the images, and
counterfactuals toward more and fewer objects, in a flow's base space and in pixel space.

**Data** (:func:`make_counting_data`).  A ``size x size`` grey image with ``c`` objects, ``c`` drawn
uniformly from ``0..max_count``: each object is a Gaussian blob

    b(u) = a exp(-||u - m||² / (2 σ²)),   a ~ U(0.55, 1),  σ ~ U(0.7, 1.2),

with centres ``m`` at least ``min_distance`` pixels apart and 2 pixels from the border, plus a faint
background ``U(0, background)`` per pixel; the image is ``clip(blobs + background, 0, 1)`` quantised
to ``levels`` grey levels ``k / (levels - 1)`` (the flow's :class:`~xcf.models.flows.Dequantize`
expects that).  With these settings each blob has exactly one
connected component above 0.3 and two blobs never merge, so :func:`count_blobs` is an exact,
model-free *oracle* of the count on the data (tested), and an independent judge of counterfactuals.

**Regressor** (:class:`CountingCNN`): three 3x3 convolutions (the last two with stride 2) and two
linear layers to one number per image, trained with the mean squared error to the count
(:func:`train_regressor`), with random gain and additive noise so that it counts objects, not light.

**Counterfactuals** (:func:`run_counting_example`).  For a test image with true count ``c`` and the
regressor ``f``: *more* is ``f(x') >= c + 1.5`` (the rounded count is at least ``c + 2``) for
``c <= max_count - 2``; *fewer* is ``f(x') <= c - 1.5`` for ``c >= 2``
(:class:`~xcf.objectives.ScalarTarget` with per-sample thresholds), searched by
:class:`~xcf.explain.diffeomorphic.DiffeomorphicCounterfactual` (ascent in the base space of a
RealNVP trained on the images) and in pixel space (the identity chart, clamped to ``[0, 1]``).
Each is judged by the regressor (success, count before and after), by the data
(:func:`xcf.knn_target_mean`: the mean true count of the 10 nearest training images)
and by the oracle :func:`count_blobs`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor, nn

from xcf import (
    CounterfactualExplainer,
    CounterfactualResult,
    DiffeomorphicCounterfactual,
    PixelChart,
    ScalarTarget,
    knn_target_mean,
)
from xcf.models import TrainContext, cached_model, fit, realnvp_flow, train_flow

__all__ = [
    "make_counting_data",
    "count_blobs",
    "CountingCNN",
    "train_regressor",
    "counting_models",
    "CountingRun",
    "run_counting_example",
    "counting_figure",
    "COUNTING_CONFIGS",
]


# ------------------------------------------------------------------------------------------- data
def make_counting_data(
    n: int,
    size: int = 16,
    max_count: int = 5,
    levels: int = 16,
    min_distance: float = 5.0,
    background: float = 0.05,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """``n`` images with a known number of Gaussian blobs (see the module docstring).

    Args:
        n: number of images.
        size: height and width (at least 8).
        max_count: counts are uniform on ``0..max_count``.
        levels: grey levels of the quantised images (``x = k / (levels - 1)``).
        min_distance: smallest distance between two blob centres, in pixels.
        background: largest value of the uniform background noise (0: a black background).
        seed: seed of a NumPy generator; the same seed gives the same images.

    Returns:
        ``(x, counts)``: float32 ``(n, 1, size, size)`` images in ``[0, 1]`` and int64 ``(n,)`` counts.

    Example:
        >>> x, c = make_counting_data(4, seed=1)
        >>> x.shape, c.dtype
        (torch.Size([4, 1, 16, 16]), torch.int64)
        >>> bool((count_blobs(x) == c).all())
        True
    """
    for name, value, low in (("n", n, 1), ("size", size, 8), ("max_count", max_count, 0), ("levels", levels, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if not min_distance > 0:
        raise ValueError(f"min_distance must be > 0, got {min_distance}")
    if not 0 <= background < 0.3:
        raise ValueError(f"background must be in [0, 0.3) (below the objects), got {background}")
    rng = np.random.default_rng(seed)
    lo, hi = 2.0, size - 3.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    images = np.zeros((n, size, size))
    counts = rng.integers(0, max_count + 1, size=n)
    for i, c in enumerate(counts):
        centres: list[np.ndarray] = []
        for _ in range(100):  # random sequential placement, restarted when it gets stuck
            centres = []
            for _ in range(100 * c):
                m = rng.uniform(lo, hi, size=2)
                if all(np.hypot(*(m - o)) >= min_distance for o in centres):
                    centres.append(m)
                    if len(centres) == c:
                        break
            if len(centres) == c:
                break
        if len(centres) < c:
            raise ValueError(
                f"cannot place {c} blobs at least {min_distance} pixels apart in a {size}x{size} image; "
                "lower max_count or min_distance"
            )
        for m in centres:
            a, s = rng.uniform(0.55, 1.0), rng.uniform(0.7, 1.2)
            images[i] += a * np.exp(-((yy - m[0]) ** 2 + (xx - m[1]) ** 2) / (2 * s * s))
    images += rng.uniform(0.0, background, size=images.shape) if background > 0 else 0.0
    images = np.round(np.clip(images, 0.0, 1.0) * (levels - 1)) / (levels - 1)
    x = torch.from_numpy(images).float().unsqueeze(1)
    return x, torch.from_numpy(counts).long()


def count_blobs(x: Tensor, level: float = 0.3) -> Tensor:
    """The oracle count: connected components (4-neighbourhood) of ``x > level`` per image.

    Exact on :func:`make_counting_data` images; on a counterfactual it counts the objects a person
    would see, independently of the regressor.

    Args:
        x: ``(N, 1, H, W)`` or ``(N, H, W)`` images.
        level: the brightness above which a pixel belongs to an object.

    Returns:
        ``(N,)`` int64 counts on ``x``'s device.
    """
    if not isinstance(x, Tensor) or x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[1] != 1):
        raise ValueError(f"x must be (N, 1, H, W) or (N, H, W) grey images, got {getattr(x, 'shape', type(x))}")
    arr = (x.detach().reshape(x.shape[0], x.shape[-2], x.shape[-1]) > level).cpu().numpy()
    counts = [ndimage.label(a)[1] for a in arr]
    return torch.tensor(counts, dtype=torch.long, device=x.device)


# -------------------------------------------------------------------------------------- regressor
class CountingCNN(nn.Module):
    """A counting regressor: ``f(x) = w · h(x) + b``, one number per image (shape ``(N,)``).

    ``h``: ``conv3x3(1 -> width) -> ReLU -> conv3x3 stride 2 (-> 2 width) -> ReLU -> conv3x3 stride 2
    (-> 2 width) -> ReLU -> flatten -> linear (-> 64) -> ReLU``.  No BatchNorm: samples are independent.

    Args:
        size: height and width of the inputs (divisible by 4).
        width: channels of the first convolution.

    Example:
        >>> CountingCNN()(torch.zeros(3, 1, 16, 16)).shape
        torch.Size([3])
    """

    def __init__(self, size: int = 16, width: int = 16):
        super().__init__()
        if isinstance(size, bool) or not isinstance(size, int) or size < 4 or size % 4:
            raise ValueError(f"size must be a positive multiple of 4, got {size!r}")
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be an int >= 1, got {width!r}")
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(2 * width * (size // 4) ** 2, 64), nn.ReLU(),
        )
        self.head = nn.Linear(64, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))[:, 0]


def train_regressor(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    epochs: int = 20,
    lr: float = 2e-3,
    batch_size: int = 64,
    gain: Optional[tuple[float, float]] = None,
    noise: float = 0.0,
    seed: int = 0,
    progress: bool = False,
    max_seconds: Optional[float] = None,
) -> dict[str, Any]:
    """Fit ``model`` in place by the mean squared error to ``y`` (AdamW, cosine-annealed ``lr``).

    The loop is :func:`xcf.models.training.fit`; the augmentation draws from its seeded generator.

    Optional augmentation, drawn per image: ``x <- clip(g x + a u, 0, 1)`` with gain ``g ~ U(gain)``,
    amplitude ``a ~ U(0, noise)`` and per-pixel ``u ~ U(0, 1)``; the target is unchanged.  It
    teaches a counting model that light is not objects: without it the cheapest way to raise its
    count is to brighten what is there.

    Args:
        model: a regressor returning ``(N,)``.
        x: inputs ``(N, ...)`` in ``[0, 1]``.
        y: targets ``(N,)`` (any numeric dtype; compared as float).
        epochs, lr, batch_size: the schedule.
        gain: ``(low, high)`` of the random gain, or ``None`` for none.
        noise: largest amplitude of the additive noise (0: none).
        seed: seed of the shuffling and the augmentation (model initialisation is the caller's).
        progress: show a tqdm bar.
        max_seconds: wall-clock budget (the cosine schedule then follows the elapsed time).

    Returns:
        ``{"mse": [mean training loss per epoch]}`` plus the loop's ``epochs``, ``steps``, ``capped``,
        ``lr`` and ``seconds``; the model's mode is restored.

    Example:
        >>> x, c = make_counting_data(64, seed=1)
        >>> history = train_regressor(CountingCNN(width=4), x, c, epochs=1)
        >>> len(history["mse"])
        1
    """
    if not isinstance(x, Tensor) or not isinstance(y, Tensor) or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError("x and y must be tensors with the same, non-zero number of samples")
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"need epochs >= 1, batch_size >= 1 and lr > 0, got {epochs}, {batch_size}, {lr}")
    if gain is not None and not 0 < gain[0] <= gain[1]:
        raise ValueError(f"gain must be (low, high) with 0 < low <= high, got {gain}")
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    y = y.to(device=x.device, dtype=x.dtype)
    generator = torch.Generator().manual_seed(int(seed))

    def augment(xb: Tensor) -> Tensor:
        shape = (xb.shape[0],) + (1,) * (xb.ndim - 1)
        if gain is not None:
            g = torch.empty(shape, dtype=xb.dtype).uniform_(gain[0], gain[1], generator=generator)
            xb = xb * g.to(xb.device)
        if noise > 0:
            a = torch.empty(shape, dtype=xb.dtype).uniform_(0.0, noise, generator=generator)
            u = torch.rand(xb.shape, dtype=xb.dtype, generator=generator)
            xb = xb + (a * u).to(xb.device)
        return xb.clamp(0.0, 1.0) if gain is not None or noise > 0 else xb

    def step(batch: tuple[Tensor, Tensor], ctx: TrainContext):
        xb, yb = batch
        loss = F.mse_loss(model(augment(xb)), yb)
        return loss, {"mse": (loss.detach() * yb.numel(), yb.numel())}

    out = fit(model, step, (x, y), epochs=epochs, batch_size=batch_size, lr=lr, optimiser="adamw", weight_decay=1e-4,
              schedule="cosine", max_seconds=max_seconds, seed=int(seed), generator=generator, progress=progress,
              desc="regressor")
    return out


# ------------------------------------------------------------------------------------ the models
#: The example's settings: ``"full"`` (a few minutes on one CPU thread) and ``"quick"`` (a test).
COUNTING_CONFIGS: dict[str, dict[str, Any]] = {
    "full": {
        "data": {"n_train": 6000, "n_test": 1000, "size": 16, "max_count": 5, "levels": 16, "background": 0.05,
                 "seed": 0},
        "regressor": {"width": 16, "epochs": 10, "lr": 2e-3, "batch_size": 64, "gain": [0.7, 1.6], "noise": 0.15},
        "flow": {"hidden": 32, "blocks_per_scale": 2, "scales": 2, "alpha": 0.05,
                 "epochs": 8, "lr": 1e-3, "batch_size": 64},
        "explain": {"n": 40, "flow_steps": 500, "pixel_steps": 1000, "k": 10},
        "seed": 0,
        "version": 1,
    },
    "quick": {
        "data": {"n_train": 1000, "n_test": 100, "size": 16, "max_count": 5, "levels": 16, "background": 0.05,
                 "seed": 0},
        "regressor": {"width": 8, "epochs": 10, "lr": 3e-3, "batch_size": 64, "gain": [0.7, 1.6], "noise": 0.15},
        "flow": {"hidden": 8, "blocks_per_scale": 1, "scales": 2, "alpha": 0.05,
                 "epochs": 2, "lr": 1e-3, "batch_size": 64},
        "explain": {"n": 6, "flow_steps": 100, "pixel_steps": 200, "k": 5},
        "seed": 0,
        "version": 1,
    },
}


def _data(config: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    d = config["data"]
    common = dict(size=d["size"], max_count=d["max_count"], levels=d["levels"], background=d.get("background", 0.05))
    x_train, c_train = make_counting_data(d["n_train"], seed=d["seed"], **common)
    x_test, c_test = make_counting_data(d["n_test"], seed=d["seed"] + 1, **common)
    return x_train, c_train, x_test, c_test


def counting_models(
    setting: str | dict[str, Any] = "full",
    cache_dir: Optional[str | os.PathLike] = None,
    retrain: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """The data, the counting regressor and the RealNVP of the example, trained once and cached.

    Args:
        setting: ``"full"``, ``"quick"`` or a config dict like :data:`COUNTING_CONFIGS` entries.
        cache_dir: the model cache (default ``$XCF_CACHE`` or ``~/.cache/xcf``).
        retrain: train again even if cached models exist.
        progress: show progress bars.

    Returns:
        A dict with ``config``, ``x_train``, ``c_train``, ``x_test``, ``c_test``, ``regressor``
        and ``flow`` (both in eval mode) and their training ``metrics``.
    """
    if isinstance(setting, str) and setting not in COUNTING_CONFIGS:
        raise ValueError(f"setting must be one of {sorted(COUNTING_CONFIGS)} or a config dict, got {setting!r}")
    config = COUNTING_CONFIGS[setting] if isinstance(setting, str) else setting
    x_train, c_train, x_test, c_test = _data(config)
    d, r, f = config["data"], config["regressor"], config["flow"]
    reg_config = {"data": d, "regressor": r, "seed": config["seed"], "version": config["version"]}
    flow_config = {"data": d, "flow": f, "seed": config["seed"], "version": config["version"]}

    def build_regressor(cfg: dict[str, Any]) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg["seed"])
            return CountingCNN(size=cfg["data"]["size"], width=cfg["regressor"]["width"])

    def fit_regressor(model: nn.Module) -> dict[str, Any]:
        t0 = time.perf_counter()
        gain = tuple(r["gain"]) if r.get("gain") is not None else None
        history = train_regressor(model, x_train, c_train, epochs=r["epochs"], lr=r["lr"], batch_size=r["batch_size"],
                                  gain=gain, noise=r.get("noise", 0.0), seed=config["seed"], progress=progress)
        model.eval()
        with torch.no_grad():
            test_mse = float(F.mse_loss(model(x_test), c_test.float()))
            test_acc = float((model(x_test).round() == c_test).float().mean())
        return {"train_mse": history["mse"][-1], "test_mse": test_mse, "test_rounded_accuracy": test_acc,
                "train_seconds": time.perf_counter() - t0}

    def build_flow(cfg: dict[str, Any]) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg["seed"])
            size = cfg["data"]["size"]
            return realnvp_flow(shape=(1, size, size), levels=cfg["data"]["levels"], hidden=cfg["flow"]["hidden"],
                                blocks_per_scale=cfg["flow"]["blocks_per_scale"], scales=cfg["flow"]["scales"],
                                alpha=cfg["flow"]["alpha"])

    def fit_flow(flow: nn.Module) -> dict[str, Any]:
        history = train_flow(flow, x_train, epochs=f["epochs"], lr=f["lr"], batch_size=f["batch_size"],
                             seed=config["seed"], progress=progress)
        return {"train_bits_per_dim": history["bits_per_dim"][-1], "train_seconds": history["seconds"]}

    regressor, reg_metrics = cached_model("counting-regressor", reg_config, build_regressor, fit_regressor,
                                          directory=cache_dir, retrain=retrain)
    flow, flow_metrics = cached_model("counting-flow", flow_config, build_flow, fit_flow,
                                      directory=cache_dir, retrain=retrain)
    return {
        "config": config, "x_train": x_train, "c_train": c_train, "x_test": x_test, "c_test": c_test,
        "regressor": regressor, "flow": flow, "metrics": {"regressor": reg_metrics, "flow": flow_metrics},
    }


# ----------------------------------------------------------------------------------- the example
@dataclass
class CountingRun:
    """Results of :func:`run_counting_example`.

    Attributes:
        results: ``{(method, direction): CounterfactualResult}`` with method ``"flow"`` or ``"pixel"``
            and direction ``"more"`` or ``"fewer"``.
        true_count: ``{direction: (n,) true counts of the explained images}``.
        table: one row per (method, direction): ``n``, ``success_rate``, ``count_before`` and
            ``count_after`` (the regressor's mean), ``knn_count`` (mean true count of the ``k``
            nearest training images of ``x'``), ``oracle_before`` / ``oracle_after``
            (:func:`count_blobs`), ``oracle_success`` (the oracle count moved by at least 2 the
            asked way), ``l2`` (mean ``||x' - x||``), ``median_steps``, ``ms_per_sample``.
        metrics: the models' training metrics.
    """

    results: dict[tuple[str, str], CounterfactualResult]
    true_count: dict[str, Tensor]
    table: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)

    def format_table(self) -> str:
        """The table as aligned text."""
        cols = ["method", "direction", "n", "success_rate", "count_before", "count_after", "knn_count",
                "oracle_before", "oracle_after", "oracle_success", "l2", "median_steps", "ms_per_sample"]
        rows = [[f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols] for r in self.table]
        widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
        lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths))]
        lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in rows]
        return "\n".join(lines)


def run_counting_example(
    setting: str | dict[str, Any] = "full",
    cache_dir: Optional[str | os.PathLike] = None,
    retrain: bool = False,
    progress: bool = False,
    models: Optional[dict[str, Any]] = None,
) -> CountingRun:
    """Counterfactuals toward more and fewer objects, in a flow's base space and in pixel space.

    Explains the first ``n`` test images whose true count allows the change (``c <= max_count - 2``
    for *more*, ``c >= 2`` for *fewer*) with thresholds ``c + 1.5`` and ``c - 1.5`` on the regressor.

    Args:
        setting: ``"full"`` or ``"quick"`` (see :data:`COUNTING_CONFIGS`) or a config dict.
        cache_dir, retrain, progress: see :func:`counting_models`.
        models: the output of :func:`counting_models`, to reuse trained models.

    Returns:
        A :class:`CountingRun`.
    """
    m = models if models is not None else counting_models(setting, cache_dir, retrain, progress)
    config, regressor, flow = m["config"], m["regressor"], m["flow"]
    e, max_count = config["explain"], config["data"]["max_count"]
    x_test, c_test, x_train, c_train = m["x_test"], m["c_test"], m["x_train"], m["c_train"]
    explainers = {
        "flow": (DiffeomorphicCounterfactual(regressor, flow), e["flow_steps"]),
        "pixel": (CounterfactualExplainer(regressor, PixelChart((0.0, 1.0))), e["pixel_steps"]),
    }
    run = CountingRun(results={}, true_count={}, metrics=m["metrics"])
    for direction, sign, eligible in (("more", 1.0, c_test <= max_count - 2), ("fewer", -1.0, c_test >= 2)):
        idx = eligible.nonzero().flatten()[: e["n"]]
        x, c = x_test[idx], c_test[idx]
        run.true_count[direction] = c
        objective = ScalarTarget(c.float() + sign * 1.5, "increase" if sign > 0 else "decrease")
        for method, (explainer, steps) in explainers.items():
            res = explainer.counterfactual(x, objective=objective, steps=steps, progress=progress)
            run.results[(method, direction)] = res
            with torch.no_grad():
                before, after = regressor(x), regressor(res.counterfactual)
            oracle_before, oracle_after = count_blobs(x), count_blobs(res.counterfactual)
            moved = (oracle_after - oracle_before) * int(sign)
            ok = res.success
            run.table.append({
                "method": method, "direction": direction, "n": len(res),
                "success_rate": res.success_rate,
                "count_before": float(before.mean()), "count_after": float(after.mean()),
                "knn_count": float(knn_target_mean(res.counterfactual, x_train, c_train, k=e["k"]).mean()),
                "oracle_before": float(oracle_before.float().mean()),
                "oracle_after": float(oracle_after.float().mean()),
                "oracle_success": float((moved >= 2).float().mean()),
                "l2": float(res.difference.flatten(1).norm(dim=1).mean()),
                "median_steps": float(res.steps[ok].float().median()) if bool(ok.any()) else float("nan"),
                "ms_per_sample": 1000.0 * res.time_per_sample,
            })
    return run


def _pick_rows(true: Tensor, n_rows: int) -> list[int]:
    """Up to ``n_rows`` indices: the first example of each distinct true count, then the next ones in order."""
    first: dict[int, int] = {}
    for i, c in enumerate(true.tolist()):
        first.setdefault(c, i)
    rows = sorted(first.values())[:n_rows]
    rows += [i for i in range(len(true)) if i not in rows][: n_rows - len(rows)]
    return sorted(rows, key=lambda i: (int(true[i]), i))


def counting_figure(run: CountingRun, regressor: nn.Module, n_rows: int = 4):
    """For each direction, ``n_rows`` examples: input, flow and pixel counterfactuals, their differences.

    Rows show distinct true counts where possible.  Titles give the true count ``c``, the
    regressor's count ``f`` and the oracle count ``o`` (:func:`count_blobs`); both difference maps
    of a row share one colour scale (red brighter, blue darker).

    Args:
        run: the output of :func:`run_counting_example`.
        regressor: the counting model.
        n_rows: examples per direction.

    Returns:
        A matplotlib figure.
    """
    import matplotlib.pyplot as plt

    directions = [d for d in ("more", "fewer") if ("flow", d) in run.results]
    cols = ["input", "flow x'", "pixel x'", "flow x' - x", "pixel x' - x"]
    picks = {d: _pick_rows(run.true_count[d], n_rows) for d in directions}
    total = sum(len(p) for p in picks.values())
    fig, axes = plt.subplots(total, len(cols), figsize=(1.6 * len(cols), 1.6 * total + 0.4), squeeze=False)
    r = 0
    for direction in directions:
        flow_res, pixel_res = run.results[("flow", direction)], run.results[("pixel", direction)]
        idx = torch.tensor(picks[direction], dtype=torch.long)
        x, xf, xp = flow_res.inputs[idx], flow_res.counterfactual[idx], pixel_res.counterfactual[idx]
        with torch.no_grad():
            f_in, f_flow, f_pix = regressor(x), regressor(xf), regressor(xp)
        o_in, o_flow, o_pix = count_blobs(x), count_blobs(xf), count_blobs(xp)
        for j in range(len(idx)):
            i = int(idx[j])
            row = axes[r]
            diffs = [xf[j] - x[j], xp[j] - x[j]]
            lim = max(float(d.abs().max()) for d in diffs) or 1.0
            images = [x[j], xf[j], xp[j], *diffs]
            titles = [
                f"{direction}: c={int(run.true_count[direction][i])}\nf={float(f_in[j]):.2f} o={int(o_in[j])}",
                f"{'ok' if flow_res.success[i] else 'FAIL'}: f={float(f_flow[j]):.2f}\no={int(o_flow[j])}",
                f"{'ok' if pixel_res.success[i] else 'FAIL'}: f={float(f_pix[j]):.2f}\no={int(o_pix[j])}",
                f"|max| {float(diffs[0].abs().max()):.2f}",
                f"|max| {float(diffs[1].abs().max()):.2f}",
            ]
            for k, (ax, img, title) in enumerate(zip(row, images, titles)):
                img = img.detach().cpu()[0].numpy()
                if k < 3:
                    ax.imshow(img.clip(0, 1), cmap="gray", vmin=0, vmax=1)
                else:
                    ax.imshow(img, cmap="bwr", vmin=-lim, vmax=lim)
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(title, fontsize=7)
            r += 1
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (1.6 * total + 0.4)))
    for k, name in enumerate(cols):
        box = axes[0, k].get_position()
        fig.text((box.x0 + box.x1) / 2, 1 - 0.12 / (1.6 * total + 0.4), name, ha="center", va="top",
                 fontsize=8, weight="bold")
    return fig
