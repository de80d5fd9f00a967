"""Knowledge extrapolation: edit a generator by principal knowledge descent (Feng et al., ICML 2022).

Given a generator ``G_θ: z -> x`` (``z ~ N(0, I)``) and a differentiable posterior ``P_l(x) ∈ [0, 1]``
of a piece of knowledge ``l`` (a classifier's softmax entry, an attribute detector, ...), minimise

    H(θ) = E_z[ log(1 − P_l(G_θ(z))) ]

over the generator's parameters.  ``log(1 − P_l)`` falls as ``P_l`` rises, so descending ``H``
**raises** ``P_l``: the edited generator produces *more* of knowledge ``l`` (moustaches on faces that
never had them, every digit drawn toward class ``k``).  The update is the truncated sign step

    θ ← θ − ε · Tr(∇_θ H, λ),    Tr(g, λ)_i = sign(g_i) if |g_i| > λ else 0,

for ``K`` steps, each on a fresh batch of latent codes: entries whose gradient is at most ``λ`` in
magnitude do not move, the others move by exactly ``ε`` against the sign of their gradient.  Only the
few parameters that carry ``l`` move, so the generator's other knowledge is kept.  Instead of ``λ``
one may give ``keep_fraction = q``: at every step ``λ`` is set from the gradient's magnitudes over all
parameters so that exactly the ``⌈q·n⌉`` largest entries move.  ``method="plain"`` is the baseline,
gradient descent on every parameter, ``θ ← θ − ε · ∇_θ H``.

What the edit did is measured on a fixed set of evaluation codes ``z_1..z_m`` (the same before and
after): the descent ``Δ = H(θ_0) − H(θ_K)`` (positive when ``l`` grew), the change of other
knowledge ``δ = mean |f_r(G_θK(z)) − f_r(G_θ0(z))|`` for a feature map ``f_r`` the user names (another
classifier's outputs, penultimate features, or the pixels themselves by default), and ``Δ/δ``: how
much of ``l`` was bought per unit of change elsewhere.  At equal ``Δ``, a smaller ``δ`` is better.

The user's generator is never modified: the edit happens on a deep copy, whose gradients are taken
with :func:`torch.autograd.grad`.  The copy samples in **eval mode**: with BatchNorm in training mode
the samples of a batch would be normalised with each other's statistics (the objective would depend
on the batch, and ``Δ``/``δ`` on how the evaluation codes are chunked), every forward pass would
overwrite the running buffers (an edit outside ``θ`` that the update does not control), and the
generator a user samples from is the eval-mode one.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from xcf._validation import check_int, check_module_mode, check_number, preserved

__all__ = ["ExtrapolationHistory", "KnowledgeExtrapolation"]

#: ``1 − P_l`` is floored here before the logarithm, so a saturated posterior (``P_l = 1`` in float32)
#: gives ``log(1e-6) ≈ −13.8`` per sample instead of ``−inf`` (and no gradient: that sample is done).
FLOOR = 1e-6

_METHODS = ("truncated", "plain")


@dataclass
class ExtrapolationHistory:
    """What :meth:`KnowledgeExtrapolation.run` did, step by step and in total.

    Attributes:
        method: ``"truncated"`` (principal knowledge descent) or ``"plain"`` (gradient descent).
        epsilon: the step size ``ε``.
        steps: the number of updates ``K``.
        objective: ``H`` on each step's training batch, before that step's update (length ``K``).
        moved: share of the generator's parameter entries that moved at each step.
        lam: the threshold ``λ`` used at each step (for ``keep_fraction``, the smallest gradient
            magnitude that moved); NaN for ``"plain"``.
        changed: share of parameter entries that differ between ``θ_0`` and ``θ_K``.
        objective_before: ``H(θ_0)`` on the evaluation codes.
        objective_after: ``H(θ_K)`` on the evaluation codes.
        Delta: ``Δ = objective_before − objective_after`` (positive: knowledge ``l`` grew).
        delta: ``δ``, the mean absolute change of the features ``f_r`` on the evaluation codes.
        ratio: ``Δ / δ`` (``inf`` if ``δ = 0 < Δ``, NaN if both are 0).
        posterior_before: mean ``P_l`` on the evaluation codes before the edit.
        posterior_after: mean ``P_l`` on the evaluation codes after the edit.
        latents: the evaluation codes ``z_1..z_m`` (sample both generators at them to compare).
        seconds: wall time of the whole run.
    """

    method: str
    epsilon: float
    steps: int
    objective: list[float]
    moved: list[float]
    lam: list[float]
    changed: float
    objective_before: float
    objective_after: float
    Delta: float
    delta: float
    ratio: float
    posterior_before: float
    posterior_after: float
    latents: Tensor
    seconds: float

    def summary(self) -> dict[str, Any]:
        """The scalar results as a plain dict (for JSON or a table)."""
        keys = ("method", "epsilon", "steps", "changed", "objective_before", "objective_after",
                "Delta", "delta", "ratio", "posterior_before", "posterior_after", "seconds")
        out = {k: getattr(self, k) for k in keys}
        out["mean_moved"] = sum(self.moved) / len(self.moved) if self.moved else 0.0
        return out


def _latent_shape(generator: nn.Module, latent_shape: Any) -> tuple[int, ...]:
    if latent_shape is None:
        latent_shape = getattr(generator, "latent_dim", None)
        if latent_shape is None:
            raise ValueError("latent_shape is required: the generator has no attribute latent_dim")
    if isinstance(latent_shape, int) and not isinstance(latent_shape, bool):
        latent_shape = (latent_shape,)
    try:
        shape = tuple(int(s) for s in latent_shape)
    except TypeError:
        raise TypeError(f"latent_shape must be an int or a sequence of ints, got {latent_shape!r}") from None
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"latent_shape must hold positive sizes, got {latent_shape!r}")
    return shape


def _posterior(posterior: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``P_l(x)`` as an ``(N,)`` tensor; refuse other outputs."""
    p = posterior(x)
    if not isinstance(p, Tensor):
        raise TypeError(f"the posterior must return a tensor, got {type(p).__name__}")
    if p.ndim == 0 or p.shape[0] != x.shape[0] or p.numel() != x.shape[0]:
        raise ValueError(
            f"the posterior must return one probability per sample, shape ({x.shape[0]},) or "
            f"({x.shape[0]}, 1); got {tuple(p.shape)}"
        )
    return p.reshape(x.shape[0])


def _check_range(p: Tensor) -> None:
    lo, hi = float(p.min()), float(p.max())
    if not (0.0 <= lo and hi <= 1.0):  # also catches NaN
        raise ValueError(
            f"the posterior returned values outside [0, 1] (min {lo:.4g}, max {hi:.4g}): it must return "
            "the probability P_l(x) (apply softmax or sigmoid to logits)"
        )


def _objective(p: Tensor) -> Tensor:
    """Per-sample ``log(1 − p)`` with ``1 − p`` floored at :data:`FLOOR`."""
    return torch.log((1 - p).clamp_min(FLOOR))


class KnowledgeExtrapolation:
    """Edit a copy of a generator so that it produces more of knowledge ``l`` and little else changes.

    Minimises ``H(θ) = E_z[log(1 − P_l(G_θ(z)))]`` with the truncated sign update
    ``θ ← θ − ε · Tr(∇_θ H, λ)`` (``method="truncated"``; entries with ``|g_i| <= λ`` stay, the rest move
    by ``ε`` against their gradient's sign) or with plain gradient descent ``θ ← θ − ε · ∇_θ H``
    (``method="plain"``, the baseline).  Descending ``H`` *raises* ``P_l``.  See the module docstring
    for the maths and for ``Δ``, ``δ`` and ``Δ/δ``.

    Args:
        generator: ``z -> x``; it is deep-copied and never modified.  The copy samples in eval mode.
        posterior: differentiable ``x -> P_l(x)``, one probability in ``[0, 1]`` per sample (e.g.
            ``lambda x: classifier(x).softmax(1)[:, k]``).
        latent_shape: shape of one latent code (default: ``(generator.latent_dim,)``); codes are
            drawn from ``N(0, I)``.
        features: ``x -> f_r(x)``, the other knowledge ``δ`` is measured on (another classifier's
            outputs, penultimate features...); default: the generated images themselves.
        method: ``"truncated"`` or ``"plain"``.
        epsilon: the step size ``ε > 0`` (for ``"truncated"`` the change of every moving entry per
            step; for ``"plain"`` the learning rate).
        lam: the threshold ``λ >= 0`` (``"truncated"`` only; default 0: every entry with a non-zero
            gradient moves, i.e. sign descent).
        keep_fraction: ``q ∈ (0, 1]``, instead of ``lam``: at every step exactly the ``⌈q·n⌉`` entries
            of largest gradient magnitude (over all ``n`` parameter entries) may move.
        steps: the number of updates ``K``.
        batch_size: latent codes per step (and per chunk when evaluating).
        eval_latents: the evaluation codes ``Δ`` and ``δ`` are measured on, ``(m, *latent_shape)``;
            default ``eval_size`` codes drawn with ``seed``.
        eval_size: the number of evaluation codes drawn when ``eval_latents`` is not given.
        seed: seed of the evaluation and training codes (a run is reproducible).
        progress: show a tqdm bar over the steps.

    Example:
        >>> G = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Sigmoid())
        >>> posterior = lambda x: x[:, 0]                        # "the first pixel is bright"
        >>> edit = KnowledgeExtrapolation(G, posterior, 4, keep_fraction=0.1, epsilon=0.05, steps=20)
        >>> G_new, history = edit.run()
        >>> history.Delta > 0
        True
    """

    def __init__(
        self,
        generator: nn.Module,
        posterior: Callable[[Tensor], Tensor],
        latent_shape: Optional[int | Sequence[int]] = None,
        *,
        features: Optional[Callable[[Tensor], Tensor]] = None,
        method: str = "truncated",
        epsilon: float = 1e-3,
        lam: Optional[float] = None,
        keep_fraction: Optional[float] = None,
        steps: int = 100,
        batch_size: int = 64,
        eval_latents: Optional[Tensor] = None,
        eval_size: int = 256,
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        if not isinstance(generator, nn.Module):
            raise TypeError(f"generator must be a torch.nn.Module, got {type(generator).__name__}")
        if not any(True for _ in generator.parameters()):
            raise ValueError("the generator has no parameters to edit")
        if not callable(posterior):
            raise TypeError(f"posterior must be callable, got {type(posterior).__name__}")
        if features is not None and not callable(features):
            raise TypeError(f"features must be callable or None, got {type(features).__name__}")
        if method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
        epsilon = check_number(epsilon, "epsilon")
        if epsilon <= 0:
            raise ValueError(f"epsilon must be > 0, got {epsilon}")
        if lam is not None:
            lam = check_number(lam, "lam")
            if lam < 0:
                raise ValueError(f"lam must be >= 0, got {lam}")
        if keep_fraction is not None:
            keep_fraction = check_number(keep_fraction, "keep_fraction")
            if not 0 < keep_fraction <= 1:
                raise ValueError(f"keep_fraction must lie in (0, 1], got {keep_fraction}")
        if lam is not None and keep_fraction is not None:
            raise ValueError("give lam or keep_fraction, not both (keep_fraction sets lam at every step)")
        if method == "plain" and (lam is not None or keep_fraction is not None):
            raise ValueError("lam and keep_fraction apply to method='truncated' only; 'plain' moves every parameter")
        self.latent_shape = _latent_shape(generator, latent_shape)
        if eval_latents is not None:
            if not isinstance(eval_latents, Tensor) or not eval_latents.is_floating_point():
                raise TypeError("eval_latents must be a floating-point tensor")
            if tuple(eval_latents.shape[1:]) != self.latent_shape or eval_latents.shape[0] == 0:
                raise ValueError(
                    f"eval_latents must have shape (m, {', '.join(map(str, self.latent_shape))}) with m >= 1, "
                    f"got {tuple(eval_latents.shape)}"
                )
        check_module_mode(posterior, "posterior")
        if features is not None:
            check_module_mode(features, "feature map")
        self.generator = generator
        self.posterior = posterior
        self.features = features
        self.method = method
        self.epsilon = epsilon
        self.lam = lam
        self.keep_fraction = keep_fraction
        self.steps = check_int(steps, "steps", 1)
        self.batch_size = check_int(batch_size, "batch_size", 1)
        self.eval_size = check_int(eval_size, "eval_size", 1)
        self.eval_latents = eval_latents
        self.seed = int(seed)
        self.progress = bool(progress)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def _evaluate(self, G: nn.Module, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-code posterior, objective, and features on ``z``, in chunks of ``batch_size``."""
        ps, fs = [], []
        for i in range(0, z.shape[0], self.batch_size):
            x = G(z[i:i + self.batch_size])
            p = _posterior(self.posterior, x)
            _check_range(p)
            ps.append(p)
            f = x if self.features is None else self.features(x)
            if not isinstance(f, Tensor):
                raise TypeError(f"the feature map must return a tensor, got {type(f).__name__}")
            fs.append(f.reshape(x.shape[0], -1))
        p = torch.cat(ps)
        return p, _objective(p), torch.cat(fs)

    # ------------------------------------------------------------------ the update
    def _direction(self, flat: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The update direction for the flat gradient, the moved mask's count and ``λ``."""
        if self.method == "plain":
            return flat, (flat != 0).sum(), flat.new_tensor(float("nan"))
        magnitude = flat.abs()
        if self.keep_fraction is not None:
            k = min(flat.numel(), math.ceil(self.keep_fraction * flat.numel()))
            values, index = torch.topk(magnitude, k, sorted=False)
            mask = torch.zeros_like(flat, dtype=torch.bool).index_fill_(0, index, True)
            mask &= magnitude > 0
            lam = values.min()
        else:
            lam = flat.new_tensor(self.lam or 0.0)
            mask = magnitude > lam
        return torch.sign(flat) * mask, mask.sum(), lam

    def run(self) -> tuple[nn.Module, ExtrapolationHistory]:
        """Edit a copy of the generator; return it (in eval mode) and the :class:`ExtrapolationHistory`.

        Raises:
            TypeError / ValueError: the posterior does not return a tensor, is not differentiable with
                respect to the generated images, or returns values outside ``[0, 1]``.
        """
        t0 = time.perf_counter()
        with preserved(self.generator, self.posterior, self.features):
            G = copy.deepcopy(self.generator).eval()
            params = list(G.parameters())
            flags = [p.requires_grad for p in params]
            for p in params:
                p.requires_grad_(True)
                p.grad = None
            start = [p.detach().clone() for p in params]
            device, dtype = params[0].device, params[0].dtype
            n = sum(p.numel() for p in params)
            gen = torch.Generator(device=device).manual_seed(self.seed)
            z_eval = self.eval_latents
            if z_eval is None:
                z_eval = torch.randn((self.eval_size,) + self.latent_shape, generator=gen, device=device, dtype=dtype)
            z_eval = z_eval.to(device=device, dtype=dtype)
            p0, h0, f0 = self._evaluate(G, z_eval)

            objective, moved, lams = [], [], []
            lo = torch.ones((), device=device, dtype=dtype)
            hi = torch.zeros((), device=device, dtype=dtype)
            for t in tqdm(range(self.steps), desc=f"extrapolation ({self.method})", disable=not self.progress,
                          leave=False):
                z = torch.randn((self.batch_size,) + self.latent_shape, generator=gen, device=device, dtype=dtype)
                with torch.enable_grad():
                    x = G(z)
                    p = _posterior(self.posterior, x)
                    if t == 0:
                        self._check_differentiable(p, x)
                    H = _objective(p).mean()
                    grads = torch.autograd.grad(H, params, allow_unused=True)
                lo, hi = torch.minimum(lo, p.detach().min()), torch.maximum(hi, p.detach().max())
                flat = torch.cat([
                    (g if g is not None else torch.zeros_like(q)).reshape(-1) for g, q in zip(grads, params)
                ])
                direction, count, lam = self._direction(flat)
                with torch.no_grad():
                    offset = 0
                    for q in params:
                        q.sub_(self.epsilon * direction[offset:offset + q.numel()].view_as(q))
                        offset += q.numel()
                objective.append(H.detach())
                moved.append(count)
                lams.append(lam)
            if not (0 <= float(lo) and float(hi) <= 1):
                raise ValueError(
                    f"the posterior returned values outside [0, 1] during the edit (min {float(lo):.4g}, "
                    f"max {float(hi):.4g}): it must return the probability P_l(x)"
                )
            p1, h1, f1 = self._evaluate(G, z_eval)
            with torch.no_grad():
                changed = sum(int((q != s).sum()) for q, s in zip(params, start)) / n
            for q, flag in zip(params, flags):
                q.requires_grad_(flag)
                q.grad = None
        Delta = float(h0.mean() - h1.mean())
        delta = float((f1 - f0).abs().mean())
        if delta > 0:
            ratio = Delta / delta
        else:
            ratio = math.nan if Delta == 0 else math.copysign(math.inf, Delta)
        history = ExtrapolationHistory(
            method=self.method,
            epsilon=self.epsilon,
            steps=self.steps,
            objective=torch.stack(objective).tolist(),
            moved=(torch.stack(moved).to(torch.float64) / n).tolist(),
            lam=torch.stack(lams).tolist(),
            changed=changed,
            objective_before=float(h0.mean()),
            objective_after=float(h1.mean()),
            Delta=Delta,
            delta=delta,
            ratio=ratio,
            posterior_before=float(p0.mean()),
            posterior_after=float(p1.mean()),
            latents=z_eval.detach(),
            seconds=time.perf_counter() - t0,
        )
        return G, history

    @staticmethod
    def _check_differentiable(p: Tensor, x: Tensor) -> None:
        hint = ("the posterior must be differentiable in the generated images (no .detach(), .item(), "
                "numpy or torch.no_grad() inside it)")
        if not p.requires_grad:
            raise ValueError(f"the posterior returned a tensor that does not require grad: {hint}")
        (gx,) = torch.autograd.grad(p.sum(), x, retain_graph=True, allow_unused=True)
        if gx is None:
            raise ValueError(f"the posterior's output has no gradient path to the generated images: {hint}")
