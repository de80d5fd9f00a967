"""A user's model from a file or a factory, without unpickling: :func:`load_model`.

``xcf audit --classifier/--flow/--generator/--judge`` take

* an **xcf model file** (``xcf train`` and :func:`xcf.models.io.save_model` write them: the configuration
  that rebuilds the architecture and a state dict, read with ``torch.load(weights_only=True)``);
* a **TorchScript archive** (``torch.jit.save``) or a **torch.export archive** (``torch.export.save``),
  for a classifier only: a flow's inverse and a generator's latent size are not in such an archive;
* a **factory** ``package.module:function`` (or ``path/to/file.py:function``), imported and called with
  no arguments; it returns the model (built and with its weights loaded, as the user likes).

Whatever cannot be loaded raises ``ValueError`` with one sentence that names the file and what was
expected.  Weights-only loading is never switched off.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from xcf._validation import check_output_kind
from xcf.models.classifier import DigitsCNN  # noqa: F401  (the doctests use it)
from xcf.models.io import FORMAT
from xcf.models.registry import KINDS

__all__ = ["OUTPUTS", "ROLES", "LoadedModel", "as_logits", "load_model", "model_kind", "probe_classifier"]

#: what a model is loaded as, and what each role accepts
ROLES = {
    "classifier": "a classifier (an nn.Module returning logits)",
    "flow": "a normalizing flow (an nflows Flow, or a module with encode(x) and decode(z))",
    "generator": "a generator (a GAN generator with latent_dim, or a VAE with decoder, encode and latent_dim)",
    "judge": "a density model to judge realism (a PixelCNN or a flow)",
}
#: what a classifier can return (``--output`` spells them logits, probs, log-probs)
OUTPUTS = ("logits", "probs", "log_probs")
_FACTORY = re.compile(r"^(?P<module>[A-Za-z_][\w.]*|.+\.py):(?P<name>[A-Za-z_]\w*)$")


@dataclass
class LoadedModel:
    """A model and where it came from.

    Attributes:
        module: the model, in eval mode.
        role: ``"classifier"``, ``"flow"``, ``"generator"`` or ``"judge"``.
        kind: what it is: ``"flow"``, ``"gan"``, ``"vae"``, ``"pixelcnn"`` or ``"classifier"`` (see :func:`model_kind`).
        source: ``"xcf model file"``, ``"TorchScript"``, ``"torch.export"`` or ``"factory"``.
        spec: the file or factory as given.
        metrics: what the file records of its training (test bits/dim, accuracy...).
    """

    module: Any
    role: str
    kind: str
    source: str
    spec: str
    metrics: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        return f"{self.spec} ({self.source}, {self.kind})"


def model_kind(model: Any) -> str:
    """``"flow"``, ``"vae"``, ``"gan"``, ``"pixelcnn"`` or ``"classifier"``: what ``model`` can serve as."""
    if hasattr(model, "transform_to_noise") and hasattr(model, "_transform") or \
            hasattr(model, "encode") and hasattr(model, "decode") and not hasattr(model, "decoder"):
        return "flow"
    if hasattr(model, "decoder") and hasattr(model, "encode") and hasattr(model, "latent_dim"):
        return "vae"
    if hasattr(model, "latent_dim") and callable(model):
        return "gan"
    if hasattr(model, "bits_per_dim") and hasattr(model, "log_prob"):
        return "pixelcnn"
    return "classifier"


#: role -> the kinds that can fill it (from the registry's ``roles``)
_ACCEPTS = {role: tuple(k.name for k in KINDS.values() if role in k.roles) for role in ROLES}


def load_model(spec: str | os.PathLike, role: str) -> LoadedModel:
    """Load ``spec`` (a file or ``module:function``) as a model for ``role`` (see :data:`ROLES`), on the CPU
    (factory models stay where the factory put them), in eval mode.

    Raises:
        ValueError: one sentence naming ``spec`` and what was expected.

    Example:
        >>> import tempfile, pathlib
        >>> from xcf.models.io import save_model
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "cnn.pt"
        >>> _ = save_model(DigitsCNN(width=4), path, {"model": {"width": 4}})
        >>> m = load_model(path, "classifier"); m.kind, m.source, m.module.training
        ('classifier', 'xcf model file', False)
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {sorted(ROLES)}, got {role!r}")
    text = os.fspath(spec)
    path = Path(text).expanduser()
    factory = _FACTORY.match(text)
    if factory and not path.is_file():
        module, source, metrics = _call_factory(text, factory["module"], factory["name"], role), "factory", {}
    elif not path.is_file():
        raise ValueError(f"--{role} {text}: no such file (expected {ROLES[role]} as an xcf model file, "
                         + ("a TorchScript or torch.export archive, " if role == "classifier" else "")
                         + "or a factory package.module:function)")
    else:
        module, source, metrics = _from_file(path, role)
    kind = model_kind(module)
    if kind not in _ACCEPTS[role]:
        raise ValueError(f"--{role} {text}: the {source} gives a {type(module).__name__}, which is a {kind}, not "
                         f"{ROLES[role]}")
    if isinstance(module, nn.Module):
        module.eval()
    return LoadedModel(module, role, kind, source, text, metrics)


# ------------------------------------------------------------------------------------------ files
def _archive_kind(path: Path) -> str:
    if not zipfile.is_zipfile(path):
        return "other"
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    if any(n.endswith("/archive_format") or n.endswith("/models/model.json") for n in names):
        return "export"
    if any("/code/" in n for n in names) and any(n.endswith("/constants.pkl") for n in names):
        return "torchscript"
    return "torch"


def _from_file(path: Path, role: str) -> tuple[Any, str, dict[str, Any]]:
    kind = _archive_kind(path)
    if kind in ("torchscript", "export"):
        name = "TorchScript" if kind == "torchscript" else "torch.export"
        if role != "classifier":
            raise ValueError(f"--{role} {path} is a {name} archive, which xcf takes only as a --classifier: "
                             f"{ROLES[role]} must be an xcf model file (xcf train ...) or a factory package.module:function")
        try:
            if kind == "torchscript":
                with warnings.catch_warnings():  # torch 2.9+ calls TorchScript deprecated; it still loads
                    warnings.simplefilter("ignore", FutureWarning)
                    return torch.jit.load(str(path), map_location="cpu"), name, {}
            return _Exported(torch.export.load(str(path)).module()), name, {}
        except Exception as e:  # noqa: BLE001 - any failure to read the archive means the same to the user
            raise ValueError(f"--{role} {path}: cannot read the {name} archive: {_first_line(e)}") from None
    if kind == "other":
        raise ValueError(f"--{role} {path} is not a torch file (expected an xcf model file written by xcf train"
                         + (", a TorchScript or a torch.export archive" if role == "classifier" else "") + ")")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        reason = _first_line(e)
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            reason = "it holds pickled Python objects (a whole model saved with torch.save), which xcf never unpickles"
        raise ValueError(f"--{role} {path}: {reason}; save the model with torch.jit.save, train it with xcf train, "
                         "or give a factory package.module:function that builds it") from None
    if isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise ValueError(f"--{role} {path} holds a bare state dict ({len(payload)} tensors) without the architecture: "
                         "write a factory package.module:function that builds the model and loads these weights, "
                         "or save it with torch.jit.save(torch.jit.script(model), ...)")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or "state_dict" not in payload:
        raise ValueError(f"--{role} {path} is a torch file but not an xcf model file (format {FORMAT}, written by "
                         "xcf train or xcf.models.io.save_model)")
    return _rebuild(path, payload, role), "xcf model file", dict(payload.get("metrics") or {})


#: architecture class recorded in an xcf model file -> the builder of its configuration (the registry's kinds)
_BUILDERS: dict[str, Callable[[dict[str, Any]], nn.Module]] = {k.architecture: k.build for k in KINDS.values()}


def _rebuild(path: Path, payload: dict[str, Any], role: str) -> nn.Module:
    cls = payload.get("class")
    if cls not in _BUILDERS:
        raise ValueError(f"--{role} {path} holds a {cls}, which xcf cannot rebuild (it rebuilds {sorted(_BUILDERS)}); "
                         "give a factory package.module:function for other architectures")
    try:
        model = _BUILDERS[cls](payload["config"])
        model.load_state_dict(payload["state_dict"])
    except Exception as e:  # noqa: BLE001 - a config or state dict that does not fit
        raise ValueError(f"--{role} {path}: its {cls} configuration and weights do not fit: {_first_line(e)}") from None
    return model


class _Exported(nn.Module):
    """A ``torch.export`` program as a module: its graph's semantics were fixed when exporting, so ``eval()``
    and ``train()`` only set the flag (the exported module itself refuses both)."""

    def __init__(self, program: nn.Module):
        super().__init__()
        self.program = program
        self.train(False)

    def train(self, mode: bool = True) -> "_Exported":
        for m in self.modules():
            m.training = bool(mode)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x)


# -------------------------------------------------------------------------------------- factories
def _call_factory(spec: str, module_name: str, name: str, role: str) -> Any:
    try:
        if module_name.endswith(".py"):
            file = Path(module_name).expanduser()
            if not file.is_file():
                raise ValueError(f"--{role} {spec}: no such file {file}")
            loader = importlib.util.spec_from_file_location(f"_xcf_factory_{file.stem}", file)
            module = importlib.util.module_from_spec(loader)  # type: ignore[arg-type]
            loader.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            sys.path.insert(0, os.getcwd())  # the user's own package, next to where xcf runs
            try:
                module = importlib.import_module(module_name)
            finally:
                sys.path.remove(os.getcwd())
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's module failed to import
        raise ValueError(f"--{role} {spec}: cannot import {module_name}: {type(e).__name__}: {_first_line(e)}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"--{role} {spec}: {module_name} has no function {name!r}")
    try:
        model = fn()
    except Exception as e:  # noqa: BLE001 - the user's factory failed
        raise ValueError(f"--{role} {spec}: the factory raised {type(e).__name__}: {_first_line(e)}") from None
    if not callable(model) or isinstance(model, type):
        raise ValueError(f"--{role} {spec}: the factory returned a {type(model).__name__}, expected {ROLES[role]}")
    return model


def _first_line(e: BaseException) -> str:
    raw = str(e).strip()
    if "Traceback of TorchScript" in raw:  # the interpreter's own traceback, then the error on the last line
        raw = raw.splitlines()[-1]
    text = " ".join(raw.split())
    return (text[:300] + "...") if len(text) > 300 else (text or type(e).__name__)


def probe_classifier(classifier: Any, x: torch.Tensor, what: str = "the classifier", *,
                     output: str = "logits") -> int:
    """Run ``classifier`` on two sample images ``x`` and return its number of classes, or say in one sentence
    why it does not take them (wrong input shape, wrong output, non-finite values, outputs of another kind than
    ``output`` declares: probabilities declared as logits are refused here, naming ``--output probs``).

    Args:
        classifier: the model as loaded (before :func:`as_logits`).
        x: two of the data's images.
        what: the model as the message names it (``--classifier FILE``).
        output: what it is declared to return, one of :data:`OUTPUTS`.

    Returns:
        The number of classes.
    """
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {list(OUTPUTS)}, got {output!r}")
    try:
        with torch.no_grad():
            logits = classifier(x)
    except Exception as e:  # noqa: BLE001 - any failure on the user's model means the same
        reason = _first_line(e)
        reason = reason if reason.startswith(type(e).__name__) else f"{type(e).__name__}: {reason}"
        raise ValueError(f"{what} does not take the data's images of shape {tuple(x.shape)}: {reason} (check the "
                         "image size, and --channels for greyscale vs RGB)") from None
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != x.shape[0] or logits.shape[1] < 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"{what} must return logits of shape (N, classes) with at least 2 classes; for "
                         f"{x.shape[0]} images it returned {shape}")
    if not bool(torch.isfinite(logits).all()):
        raise ValueError(f"{what} returns NaN or infinite logits on the data's first images")
    check_output_kind(logits.float(), output, strict=True, option="--output", who=what)
    return int(logits.shape[1])


class _LogOfProbabilities(nn.Module):
    """A classifier that returns probabilities, seen as one that returns log-probabilities (valid logits)."""

    def __init__(self, classifier: Any):
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.classifier(x)
        return p.clamp_min(torch.finfo(p.dtype).tiny).log()


def as_logits(classifier: Any, output: str) -> Any:
    """``classifier`` as xcf sees every classifier: returning logits.  Log-probabilities are valid logits as they
    are (``log_softmax`` leaves them unchanged); probabilities are wrapped to return ``log(p)`` (clamped at the
    smallest positive float, so that a zero stays finite).

    Args:
        classifier: the model.
        output: what it returns, one of :data:`OUTPUTS`.

    Returns:
        ``classifier`` itself for ``"logits"`` and ``"log_probs"``, else a module wrapping it (in its training
        mode).

    Example:
        >>> m = as_logits(nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Softmax(1)), "probs")
        >>> torch.allclose(m(torch.rand(2, 4)).exp().sum(1), torch.ones(2))
        True
    """
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {list(OUTPUTS)}, got {output!r}")
    if output != "probs":
        return classifier
    wrapped = _LogOfProbabilities(classifier)
    return wrapped.train(classifier.training) if isinstance(classifier, nn.Module) else wrapped
