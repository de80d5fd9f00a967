r"""One training loop for every model xcf trains: :func:`fit`.

A model's trainer says only what one mini-batch does (a *step function*); :func:`fit` owns the rest:

* **randomness**: a ``torch.Generator`` seeded with ``seed`` draws the shuffling (one permutation
  per epoch) and is handed to the step function for its own draws (latents, noise, augmentation);
  with ``isolate_rng=True`` torch's global generator (dropout, ``rand_like``) is seeded with ``seed``
  inside the run and left as it was afterwards;
* **batching**: consecutive slices of the permutation, the last one short or dropped (``drop_last``);
* **optimisers**: Adam or AdamW over the trainable (``requires_grad``) parameters, one optimiser per
  named module group, optional gradient-norm clipping;
* **schedule**: ``"constant"`` or ``"cosine"``, ``lr_k = lr_0 · ½ (1 + cos(π k / K))`` for update ``k``
  of ``K = epochs · batches per epoch``;
* **time cap**: with ``max_seconds = T`` the run stops before the first batch that starts at or after
  ``T`` seconds, and the cosine schedule follows the larger of the two fractions of the run done,
  ``lr = lr_0 · ½ (1 + cos(π min(1, max(t / T, k / K))))``, so a capped run still anneals to
  ``lr ≈ 0``;
* **modes**: every module is in training mode during the run, its own mode is restored afterwards
  (also when the step function raises), and no parameter gradient is left behind;
* **history**: per-epoch weighted means of the statistics the step function reports, plus
  ``epochs``, ``steps``, ``skipped``, ``capped``, ``lr`` and ``seconds``;
* a tqdm progress bar over epochs.

Without ``max_seconds`` the loop reproduces the earlier per-model loops exactly (same draws in the
same order, same optimiser and schedule arithmetic), so trained reference models are unchanged.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

__all__ = ["fit", "TrainContext", "StepFn"]

_OPTIMISERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
_SCHEDULES = ("cosine", "constant")

Stat = Union[Tensor, tuple[Tensor, float]]
StepOutput = Union[Optional[Tensor], tuple[Optional[Tensor], Mapping[str, Stat]]]


@dataclass
class TrainContext:
    """What a step function sees besides its batch.

    Attributes:
        generator: the run's seeded ``torch.Generator`` (draw latents, noise and augmentation from it).
        optimisers: ``{name: optimiser}``; one entry ``"main"`` unless :func:`fit` got named modules.
        clip: the gradient-norm clipping threshold (``None``: no clipping).
        epoch: the current epoch (from 0).
        step: updates made so far (batches in which at least one optimiser stepped).
    """

    generator: torch.Generator
    optimisers: dict[str, torch.optim.Optimizer]
    clip: Optional[float] = None
    epoch: int = 0
    step: int = 0
    _params: dict[str, list[nn.Parameter]] = field(default_factory=dict, repr=False)
    _updated: bool = field(default=False, repr=False)

    def update(self, loss: Tensor, name: Optional[str] = None) -> None:
        """One optimiser step on ``loss``: ``zero_grad``, ``backward``, optional clipping, ``step``.

        Args:
            loss: a scalar tensor to minimise.
            name: which optimiser (required when there are several).
        """
        if name is None:
            if len(self.optimisers) != 1:
                raise ValueError(f"name the optimiser to update, one of {sorted(self.optimisers)}")
            name = next(iter(self.optimisers))
        if name not in self.optimisers:
            raise ValueError(f"no optimiser named {name!r}; have {sorted(self.optimisers)}")
        optimiser = self.optimisers[name]
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip is not None:
            torch.nn.utils.clip_grad_norm_(self._params[name], self.clip)
        optimiser.step()
        self._updated = True


StepFn = Callable[[Any, TrainContext], StepOutput]
"""``step(batch, ctx) -> loss`` or ``(loss, stats)``.

``batch`` is a tensor (one data tensor) or a tuple (several).  A returned ``loss`` is minimised by
``ctx.update(loss)``; return ``None`` instead when the step made its own updates with
``ctx.update(..., name)`` (several optimisers), or to skip the batch (no update: it is counted in
``history["skipped"]`` and the schedule does not advance).  ``stats`` maps names to a tensor
(weight 1) or ``(tensor, weight)``; ``history[name]`` holds ``sum(tensor) / sum(weight)`` per epoch,
the sum taken in the tensor's dtype on its device (``nan`` for an epoch that did not report it).
"""


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def _check_positive(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0{' or None' if allow_none else ''}, got {value!r}")


def _module_groups(modules: Any) -> dict[str, list[nn.Module]]:
    if isinstance(modules, nn.Module):
        return {"main": [modules]}
    if isinstance(modules, Mapping):
        groups = {str(k): [m] for k, m in modules.items()}
    elif isinstance(modules, (list, tuple)):
        groups = {"main": list(modules)}
    else:
        raise ValueError(f"modules must be an nn.Module, a sequence or a dict of them, got {type(modules).__name__}")
    if not groups or not all(groups.values()):
        raise ValueError("modules must not be empty")
    for group in groups.values():
        for m in group:
            if not isinstance(m, nn.Module):
                raise ValueError(f"modules must be torch.nn.Module instances, got {type(m).__name__}")
    return groups


def _check_data(data: Any) -> tuple[tuple[Tensor, ...], bool]:
    single = isinstance(data, Tensor)
    tensors = (data,) if single else tuple(data) if isinstance(data, (list, tuple)) else None
    if not tensors or not all(isinstance(t, Tensor) for t in tensors):
        raise ValueError(f"data must be a tensor or a non-empty tuple of tensors, got {type(data).__name__}")
    n = tensors[0].shape[0] if tensors[0].ndim else 0
    if n == 0 or any(t.ndim == 0 or t.shape[0] != n for t in tensors):
        raise ValueError(f"data tensors must hold the same, non-zero number of samples, got "
                         f"{[tuple(t.shape) for t in tensors]}")
    return tensors, single


def fit(
    modules: nn.Module | Sequence[nn.Module] | Mapping[str, nn.Module],
    step: StepFn,
    data: Tensor | Sequence[Tensor],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    optimiser: str = "adamw",
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    schedule: str = "cosine",
    clip: Optional[float] = None,
    drop_last: bool = False,
    max_seconds: Optional[float] = None,
    seed: int = 0,
    generator: Optional[torch.Generator] = None,
    isolate_rng: bool = False,
    init: Optional[Callable[[TrainContext], None]] = None,
    progress: bool = False,
    desc: str = "train",
) -> dict[str, Any]:
    r"""Train ``modules`` in place by calling ``step`` on shuffled mini-batches of ``data``.

    Args:
        modules: a module, a sequence of modules (one optimiser over all their trainable parameters)
            or ``{name: module}`` (one optimiser per module; the step function then calls
            ``ctx.update(loss, name)`` itself).
        step: ``step(batch, ctx) -> loss | (loss, stats) | None``, see :data:`StepFn`.
        data: a tensor ``(N, ...)`` or a tuple of tensors with the same ``N``; the batch is a tensor or
            a tuple of the same length.
        epochs: passes over the data (``0``: no training).
        batch_size: samples per batch (with ``drop_last`` at most ``N``).
        lr: peak learning rate of every optimiser.
        optimiser: ``"adamw"`` (decoupled weight decay) or ``"adam"`` (L2 weight decay).
        weight_decay: the optimisers' weight decay.
        betas: Adam's betas.
        schedule: ``"cosine"`` (annealed to 0 over the run) or ``"constant"``.
        clip: gradient-norm clipping threshold per optimiser, or ``None``.
        drop_last: drop the short last batch of each epoch (else it is used).
        max_seconds: wall-clock budget; see the module docstring (the cosine schedule then follows
            the elapsed fraction of the budget, so a capped run still ends at ``lr ≈ 0``).  At least
            one update is always made.
        seed: seed of ``generator`` (when it is not given) and, with ``isolate_rng``, of torch's global
            generator.
        generator: the run's generator (default ``torch.Generator().manual_seed(seed)`` on the CPU);
            the shuffling is drawn on its device and moved to the data's.
        isolate_rng: seed torch's global generator with ``seed`` for the run and restore its state
            afterwards (for models that draw from it: dropout, dequantisation noise).
        init: called once with the context, in training mode, before the first epoch (e.g. a
            data-dependent initialisation).
        progress: show a tqdm progress bar over epochs.
        desc: the progress bar's label.

    Returns:
        History: ``{stat: [per-epoch mean]}`` for the step function's statistics, plus ``"epochs"``
        (epochs begun; the last may be partial when capped), ``"steps"`` (updates), ``"skipped"``
        (batches without an update), ``"capped"`` (stopped by ``max_seconds``), ``"lr"`` (the
        learning rate of the last update of each epoch, first optimiser), ``"final_lr"`` (the
        schedule's learning rate at the end) and ``"seconds"``.

    Raises:
        ValueError: for a bad argument, naming it and the value.

    Example:
        >>> model = nn.Linear(3, 1)
        >>> x, y = torch.randn(40, 3), torch.randn(40, 1)
        >>> def step(batch, ctx):
        ...     xb, yb = batch
        ...     loss = (model(xb) - yb).pow(2).mean()
        ...     return loss, {"mse": loss.detach()}
        >>> history = fit(model, step, (x, y), epochs=2, batch_size=16, lr=1e-2)
        >>> len(history["mse"]), history["steps"], history["capped"]
        (2, 6, False)
    """
    groups = _module_groups(modules)
    tensors, single = _check_data(data)
    if not callable(step):
        raise ValueError(f"step must be callable, got {type(step).__name__}")
    _check_int("epochs", epochs, 0)
    _check_int("batch_size", batch_size, 1)
    _check_positive("lr", lr)
    _check_positive("clip", clip, allow_none=True)
    _check_positive("max_seconds", max_seconds, allow_none=True)
    if optimiser not in _OPTIMISERS:
        raise ValueError(f"optimiser must be one of {sorted(_OPTIMISERS)}, got {optimiser!r}")
    if schedule not in _SCHEDULES:
        raise ValueError(f"schedule must be one of {list(_SCHEDULES)}, got {schedule!r}")
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or not weight_decay >= 0:
        raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2 and all(0 <= b < 1 for b in betas)):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")

    params = {name: [p for m in group for p in m.parameters() if p.requires_grad] for name, group in groups.items()}
    for name, ps in params.items():
        if not ps:
            raise ValueError(f"modules {name!r} have no trainable parameters (all requires_grad=False)")
    cls = _OPTIMISERS[optimiser]
    optimisers = {name: cls(ps, lr=lr, betas=tuple(betas), weight_decay=weight_decay) for name, ps in params.items()}
    n = tensors[0].shape[0]
    device = tensors[0].device
    if drop_last:
        batch_size = min(batch_size, n)
        starts = list(range(0, n - batch_size + 1, batch_size))
    else:
        starts = list(range(0, n, batch_size))
    total_steps = epochs * len(starts)
    capped_schedule = schedule == "cosine" and max_seconds is not None
    schedulers = []
    if schedule == "cosine" and not capped_schedule:
        schedulers = [torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=max(total_steps, 1)) for o in optimisers.values()]
    first = next(iter(optimisers.values()))

    def set_fraction(fraction: float) -> None:
        factor = 0.5 * (1.0 + math.cos(math.pi * min(1.0, fraction)))
        for o in optimisers.values():
            for g in o.param_groups:
                g["lr"] = lr * factor

    modules_all = [m for group in groups.values() for m in group]
    modes = [(m, [sub.training for sub in m.modules()]) for m in modules_all]
    history: dict[str, Any] = {}
    stat_names: list[str] = []
    result = {"epochs": 0, "steps": 0, "skipped": 0, "capped": False, "lr": []}
    start = time.perf_counter()
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    rng = torch.random.fork_rng(devices=rng_devices, enabled=isolate_rng)
    try:
        with rng:
            if isolate_rng:
                torch.manual_seed(seed)
            gen = generator if generator is not None else torch.Generator().manual_seed(seed)
            ctx = TrainContext(gen, optimisers, None if clip is None else float(clip), _params=params)
            for m in modules_all:
                m.train()
            if init is not None:
                init(ctx)
            for epoch in tqdm(range(epochs), desc=desc, disable=not progress):
                ctx.epoch = epoch
                order = torch.randperm(n, generator=gen, device=gen.device).to(device)
                sums: dict[str, Tensor] = {}
                weights: dict[str, float] = {}
                began = False
                for i in starts:
                    elapsed = time.perf_counter() - start
                    if max_seconds is not None and ctx.step > 0 and elapsed >= max_seconds:
                        result["capped"] = True
                        break
                    if capped_schedule:
                        set_fraction(max(elapsed / max_seconds, ctx.step / max(total_steps, 1)))
                    began = True
                    idx = order[i:i + batch_size]
                    batch = tensors[0][idx] if single else tuple(t[idx] for t in tensors)
                    ctx._updated = False
                    out = step(batch, ctx)
                    loss, stats = out if isinstance(out, tuple) else (out, {})
                    if loss is not None:
                        ctx.update(loss)
                    if ctx._updated:
                        ctx.step += 1
                        batch_lr = first.param_groups[0]["lr"]
                        with warnings.catch_warnings():  # an optimiser of a group that made no update yet
                            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
                            for s in schedulers:
                                s.step()
                    else:
                        result["skipped"] += 1
                    for key, value in stats.items():
                        value, weight = value if isinstance(value, tuple) else (value, 1)
                        value = value.detach()
                        if key in sums:
                            sums[key] = sums[key] + value
                            weights[key] += weight
                        else:
                            sums[key], weights[key] = value, weight
                if began:
                    result["epochs"] += 1
                    result["lr"].append(batch_lr if ctx.step else lr)
                    for key in sums:
                        if key not in stat_names:
                            stat_names.append(key)
                            history[key] = [math.nan] * (result["epochs"] - 1)
                    for key in stat_names:
                        history[key].append(float(sums[key]) / weights[key] if key in sums else math.nan)
                if result["capped"]:
                    break
            result["steps"] = ctx.step
            if capped_schedule:
                set_fraction(max((time.perf_counter() - start) / max_seconds, ctx.step / max(total_steps, 1)))
    finally:
        for o in optimisers.values():
            o.zero_grad(set_to_none=True)
        for m, flags in modes:
            for sub, flag in zip(m.modules(), flags):
                sub.training = flag
    history.update(result)
    history["final_lr"] = first.param_groups[0]["lr"]
    history["seconds"] = time.perf_counter() - start
    return history

