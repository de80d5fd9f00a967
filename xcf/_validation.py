"""Input validation and the guarantees xcf gives about a user's modules.

Every public entry point checks its inputs here, so that errors read the same everywhere, and wraps
the work in :func:`preserved`, which restores what torch lets a computation change on a module.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterator, Optional

import numpy as np
import torch
from torch import Tensor, nn

from xcf._typing import TargetType

__all__ = ["as_target_tensor", "check_int", "check_model_output", "check_number", "check_output_kind", "check_same_dtype_device", "check_inputs", "check_module_mode", "format_inputs", "modules_of", "preserved"]

_BATCHNORM = (nn.modules.batchnorm._BatchNorm,)
_DROPOUT = (nn.modules.dropout._DropoutNd,)


def format_inputs(inputs: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, bool]:
    """Accept Captum's tensor-or-tuple ``inputs``; return the tensor and whether a tuple came in."""
    if isinstance(inputs, tuple):
        if len(inputs) != 1:
            raise ValueError(
                f"xcf explains models with one input tensor; got a tuple of {len(inputs)} tensors"
            )
        return inputs[0], True
    return inputs, False


def check_inputs(x: Any, name: str = "inputs", min_dim: int = 2) -> Tensor:
    """Check that ``x`` is a finite, floating-point ``(N, ...)`` tensor with ``N >= 1``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.ndim < min_dim:
        raise ValueError(
            f"{name} must have a batch dimension and at least {min_dim} dimensions "
            f"(N, ...), got shape {tuple(x.shape)}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)})")
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = (~finite).flatten(1).any(dim=1).nonzero().flatten().tolist()
        kind = "NaN" if bool(torch.isnan(x).any()) else "Inf"
        raise ValueError(f"{name} contain {kind} values (samples {bad[:10]}{'...' if len(bad) > 10 else ''})")
    return x


def modules_of(obj: Any) -> list[nn.Module]:
    """The ``nn.Module`` s reachable from ``obj``: itself, or a bound method's owner."""
    if isinstance(obj, nn.Module):
        return [obj]
    owner = getattr(obj, "__self__", None)
    if isinstance(owner, nn.Module):
        return [owner]
    return []


def check_module_mode(obj: Any, role: str, *, forbid_training: bool = False) -> None:
    """Refuse modules whose training mode would make the search wrong or mutate them.

    A module in training mode with BatchNorm normalises with batch statistics (so samples are not
    independent) and updates its running buffers.  With ``forbid_training`` any training-mode module
    is refused (flows: dequantisation noise and data-dependent ActNorm initialisation).
    """
    for module in modules_of(obj):
        if forbid_training and module.training:
            raise ValueError(
                f"the {role} is in training mode; call .eval() on it first (in training mode it "
                "dequantises with noise, initialises ActNorm from data and updates BatchNorm buffers)"
            )
        for sub in module.modules():
            if isinstance(sub, _BATCHNORM) and sub.training:
                raise ValueError(
                    f"the {role} is in training mode and contains BatchNorm ({type(sub).__name__}): "
                    "batch statistics would couple the samples and its running buffers would change; "
                    "call .eval() on it first"
                )
            if isinstance(sub, _DROPOUT) and sub.training and sub.p > 0:
                raise ValueError(
                    f"the {role} is in training mode and contains {type(sub).__name__}(p={sub.p:g}): every call "
                    "would draw a new random mask, so success would be judged on a random model; call .eval() "
                    "on it first"
                )


@contextlib.contextmanager
def preserved(*objs: Any) -> Iterator[None]:
    """Restore training flags, ``requires_grad`` and ``.grad`` of every parameter of ``objs``.

    xcf never calls ``backward`` on a user's parameters (it differentiates with
    ``torch.autograd.grad`` with respect to its own tensors), so nothing should change; this is the
    safety net that makes the guarantee unconditional.
    """
    modules = [m for o in objs for m in modules_of(o)]
    flags = [(sub, sub.training) for m in modules for sub in m.modules()]
    params = [(p, p.requires_grad, p.grad) for m in modules for p in m.parameters()]
    try:
        yield
    finally:
        for sub, training in flags:
            sub.training = training
        for p, requires_grad, grad in params:
            p.requires_grad_(requires_grad)
            p.grad = grad


def as_target_tensor(target: TargetType | None, n: int, device: torch.device) -> Tensor:
    """Turn Captum-style ``target`` (int, list or tensor) into a ``(n,)`` long tensor.

    Raises:
        ValueError: if ``target`` is missing, not integral, or its length is neither 1 nor ``n``.
    """
    if target is None:
        raise ValueError(
            "target is required: the class each counterfactual should reach "
            "(an int, a list of ints or a tensor of class indices)"
        )
    if isinstance(target, bool):
        raise ValueError(f"target must be a class index, got the bool {target!r}")
    if isinstance(target, (int, np.integer)):
        return torch.full((n,), int(target), dtype=torch.long, device=device)
    if isinstance(target, np.ndarray):
        target = torch.from_numpy(target)
    if isinstance(target, Tensor):
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise ValueError(f"target must hold integer class indices, got dtype {target.dtype}")
        t = target.to(device=device, dtype=torch.long).reshape(-1)
    else:
        if not isinstance(target, (list, tuple)):
            raise TypeError("target must be a class index (int), a list of ints or a tensor of class indices; got "
                            f"{type(target).__name__} {target!r}")
        items = list(target)
        if not all(isinstance(i, (int, np.integer)) and not isinstance(i, (bool, np.bool_)) for i in items):
            raise ValueError(f"target must hold integer class indices, got {items!r}")
        t = torch.tensor([int(i) for i in items], dtype=torch.long, device=device)
    if t.numel() == 1:
        return t.expand(n).clone()
    if t.numel() != n:
        raise ValueError(f"target has {t.numel()} entries but the batch has {n} inputs")
    return t


def check_number(value: Any, name: str, *, positive: bool = False) -> float:
    """A finite real number (bools and strings refused, never converted); ``> 0`` with ``positive``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    if not np.isfinite(value) or (positive and not value > 0):
        raise ValueError(f"{name} must be a finite number{' > 0' if positive else ''}, got {value!r}")
    return value


def check_int(value: Any, name: str, minimum: int = 0) -> int:
    """An integer ``>= minimum`` (bools, floats and strings refused, never truncated)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_image_size(image_size: Any) -> int:
    """The side of square images for models with two stride-2 stages: a positive multiple of 4."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 4 or image_size % 4:
        raise ValueError(f"image_size must be a positive multiple of 4 (8, 28, 32, ...), got {image_size!r}")
    return int(image_size)


def check_model_output(output: Any, n: int, role: str = "classifier") -> Tensor:
    """The model's output for a batch of ``n``: a tensor with ``n`` rows and finite values, else a clear error."""
    if isinstance(output, (tuple, list)):
        raise TypeError(f"the {role} must return one tensor, got a {type(output).__name__} of {len(output)} items; "
                        "wrap it so that it returns the logits tensor")
    if isinstance(output, dict):
        raise TypeError(f"the {role} must return one tensor, got a dict with keys {sorted(map(str, output))[:5]}; "
                        "wrap it so that it returns the logits tensor")
    if not isinstance(output, Tensor):
        raise TypeError(f"the {role} must return a tensor, got {type(output).__name__}")
    if output.ndim == 0 or output.shape[0] != n:
        raise ValueError(f"the {role} returned output of shape {tuple(output.shape)} for a batch of {n} inputs; "
                         f"expected {n} rows")
    finite = torch.isfinite(output.detach())
    if not bool(finite.all()):
        bad = (~finite).reshape(n, -1).any(dim=1).nonzero().flatten().tolist()
        raise ValueError(f"the {role} returned NaN or Inf for samples {bad[:10]}{'...' if len(bad) > 10 else ''}")
    return output


def check_output_kind(output: Tensor, kind: str, *, strict: bool = False, option: str = "output",
                      who: str = "the classifier", stacklevel: int = 2) -> None:
    """Tell logits from probabilities: what a classifier returns must fit the kind it is declared to return.

    Probabilities (values in ``[0, 1]``, rows summing to 1) declared as ``"logits"`` give a ``UserWarning`` (the
    Python API: legal, almost certainly a mistake) or, with ``strict``, a ``ValueError`` (the command line);
    declared as ``"log_probs"``, values outside ``[0, 1]`` declared as ``"probs"``, and other positive values
    declared as ``"log_probs"`` a ``ValueError``.  Each message names the declaration to use instead.

    Args:
        output: the classifier's ``(N, classes)`` output.
        kind: the declared kind: ``"logits"``, ``"probs"`` or ``"log_probs"``.
        strict: refuse probabilities declared as logits instead of warning.
        option: how the user declares it: ``"output"`` (``output='probs'``) or ``"--output"`` (``--output probs``).
        who: the model, as the message names it.
        stacklevel: of the warning, as for :func:`warnings.warn` (counted from the caller).
    """
    def declare(k: str) -> str:
        return f"--output {k.replace('_', '-')}" if option == "--output" else f"output={k!r}"

    if output.ndim != 2 or output.numel() == 0 or not output.is_floating_point():
        return
    output = output.detach()
    lo, hi = float(output.min()), float(output.max())
    probabilities = output.shape[1] > 1 and lo >= 0.0 and hi <= 1.0 and \
        bool(torch.allclose(output.sum(dim=1), torch.ones_like(output[:, 0]), atol=1e-3))
    if kind != "probs" and probabilities:
        message = (f"{who}'s outputs look like probabilities (values in [0, 1], rows summing to 1) but "
                   f"{declare(kind)} treats them as {kind.replace('_', '-')}, so no target can reach a high "
                   f"confidence; pass {declare('probs')}")
        if strict or kind == "log_probs":
            raise ValueError(message)
        warnings.warn(message, UserWarning, stacklevel=stacklevel + 1)
    elif kind == "probs" and (lo < -1e-6 or hi > 1.0 + 1e-6):
        raise ValueError(f"{declare('probs')} but {who} returns values in [{lo:.3g}, {hi:.3g}], outside [0, 1]: "
                         f"are they logits? pass {declare('logits')}")
    elif kind == "log_probs" and hi > 1e-6:
        raise ValueError(f"{declare('log_probs')} but {who} returns values up to {hi:.3g} > 0: are they logits? "
                         f"pass {declare('logits')}")


def _first_parameter(obj: Any) -> Optional[Tensor]:
    for module in modules_of(obj):
        for t in module.parameters():  # buffers may differ on purpose (nflows keeps a float64 constant)
            if t.is_floating_point():
                return t
    return None


def check_same_dtype_device(x: Tensor, models: dict[str, Any]) -> None:
    """Inputs and every model's parameters must share dtype and device; name the mismatch otherwise."""
    for role, obj in models.items():
        p = _first_parameter(obj)
        if p is None:
            continue
        if p.device != x.device:
            raise ValueError(f"the inputs are on {x.device} but the {role}'s parameters are on {p.device}: "
                             f"move one of them (x.to({str(p.device)!r}) or model.to({str(x.device)!r}))")
        if p.dtype != x.dtype:
            raise ValueError(f"the inputs are {str(x.dtype).replace('torch.', '')} but the {role}'s parameters are "
                             f"{str(p.dtype).replace('torch.', '')}: convert one of them (e.g. x.to({p.dtype}) or "
                             f"model.to({x.dtype}))")
