"""The reference models, shipped as verified weights: :func:`reference`, :func:`references` and :data:`TABLE`.

Every model the demos and the Clever-Hans scenarios use is an entry of :data:`TABLE`: its kind (a name of
:data:`xcf.models.registry.KINDS`), its data (:func:`xcf.datasets.scenarios.reference_data`), its full
configuration (architecture, training budget, seed) and the CPU threads it was trained with.  The trained weights
ship inside the package as ``weights/<name>.safetensors``; ``weights/manifest.json`` records each file's sha256,
size, test metrics and training time.  :func:`reference` checks the sha256 before anything is read, so a
truncated, edited or foreign file is refused with one line naming it.

``xcf models`` lists the table, ``xcf models verify`` re-measures every recorded test metric, and
``xcf models rebuild`` trains every file again from nothing (``docs/models.md``).  ``reference(name,
retrain=True)`` trains the entry's recipe into the user's cache instead (``~/.cache/xcf``); the shipped file is
never written.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from torch import nn

from xcf.datasets import DIGITS_LEVELS, MNIST_LEVELS
from xcf.datasets.scenarios import describe_data, reference_data
from xcf.models.classifier import classifier_recipe
from xcf.models.flow_training import flow_recipe
from xcf.models.gan import gan_recipe
from xcf.models.io import cached_model, read_weights
from xcf.models.pixelcnn_training import pixelcnn_recipe
from xcf.models.registry import get_kind, smoke_config
from xcf.models.vae import vae_recipe

__all__ = ["WEIGHTS_DIR", "Reference", "TABLE", "reference", "reference_entry", "references"]

#: where the shipped weights and their manifest live (inside the installed package)
WEIGHTS_DIR = Path(__file__).parent / "weights"
_MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Reference:
    """One reference model: what it is, what it was trained on and how, and (once built) what it measured.

    Attributes:
        name: the name :func:`reference` takes (``"mnist-flow"``).
        kind: its model kind (``"flow"``; :data:`xcf.models.registry.KINDS`).
        data: its data set (:data:`xcf.datasets.scenarios.REFERENCE_DATA`); trained on the train split,
            measured on the test split.
        config: the full configuration: architecture, training settings and budget, seed.
        threads: the torch CPU threads it was trained with.
        about: what it is for, in a few words.
        sha256, bytes, metrics, trained: from the manifest (``None`` / empty until ``xcf models rebuild``):
            the file's hash and size, its test metrics, and how the training went (seconds, epochs, versions).
    """

    name: str
    kind: str
    data: str
    config: dict[str, Any]
    threads: int = 1
    about: str = ""
    sha256: Optional[str] = None
    bytes: Optional[int] = None
    metrics: dict[str, Any] = field(default_factory=dict)
    trained: dict[str, Any] = field(default_factory=dict)

    @property
    def file(self) -> Path:
        """The shipped weights file."""
        return WEIGHTS_DIR / f"{self.name}.safetensors"

    @property
    def test_metric(self) -> Optional[str]:
        """The name of the held-out metric of its kind."""
        return get_kind(self.kind).test_metric


def _cfg(recipe: dict[str, Any], *, train: Optional[dict[str, Any]] = None, model: Optional[dict[str, Any]] = None,
         seed: int = 0) -> dict[str, Any]:
    cfg = copy.deepcopy(recipe)
    cfg["model"].update(model or {})
    cfg["train"].update(train or {})
    cfg["seed"] = seed
    return cfg


_DIGITS_CNN = _cfg(classifier_recipe((1, 8, 8), 10, 1347), train={"epochs": 10, "lr": 3e-3})
_DIGITS_REALNVP = {
    "model": {"architecture": "realnvp", "shape": [1, 8, 8], "levels": DIGITS_LEVELS, "hidden": 64,
              "blocks_per_scale": 2, "scales": 2, "alpha": 0.01, "scale_bound": 2.0, "dropout": 0.3},
    "train": {"epochs": 50, "lr": 2e-3, "batch_size": 128}, "seed": 0, "version": 1}
_DIGITS_GLOW = {
    "model": {"architecture": "glow", "shape": [1, 8, 8], "levels": DIGITS_LEVELS, "hidden": 64, "steps_per_scale": 8,
              "scales": 2, "alpha": 0.01, "scale_bound": 2.0, "dropout": 0.2},
    "train": {"epochs": 40, "lr": 2e-3, "batch_size": 128}, "seed": 0, "version": 1}
_DIGITS_VAE = _cfg(vae_recipe((1, 8, 8)), train={"epochs": 100})
_MNIST = (1, 28, 28)
_COLOUR = (3, 28, 28)

#: every reference model, in the order ``xcf models rebuild`` trains them
TABLE: tuple[Reference, ...] = (
    # the digits default (xcf demo)
    Reference("digits-classifier", "classifier", "digits", _DIGITS_CNN, about="the audited classifier"),
    Reference("digits-realnvp", "flow", "digits", _DIGITS_REALNVP, about="the diffeomorphic search's flow"),
    Reference("digits-glow", "flow", "digits", _DIGITS_GLOW, about="a second flow: realism judge, or --flow glow"),
    Reference("digits-gan", "gan", "digits", _cfg(gan_recipe((1, 8, 8)), train={"epochs": 150}),
              about="approximate counterfactuals"),
    Reference("digits-vae", "vae", "digits", _DIGITS_VAE, about="approximate counterfactuals"),
    Reference("digits-pixelcnn", "pixelcnn", "digits",
              _cfg(pixelcnn_recipe((1, 8, 8), 1347, levels=DIGITS_LEVELS)),
              about="independent realism judge"),
    Reference("digits-watermark-classifier", "classifier", "digits-watermark", _DIGITS_CNN,
              about="Clever-Hans: a classifier with a shortcut"),
    Reference("digits-watermark-flow", "flow", "digits-watermark", _DIGITS_REALNVP,
              about="Clever-Hans: the flow of the shortcut's data"),
    Reference("digits-watermark-vae", "vae", "digits-watermark", _DIGITS_VAE,
              about="Clever-Hans: the VAE of the shortcut's data"),
    Reference("digits-colour-classifier", "classifier", "digits-colour", classifier_recipe((3, 8, 8), 10, 1347),
              about="colour scenario: reads colour"),
    Reference("digits-colour-shape-classifier", "classifier", "digits-colour-random",
              classifier_recipe((3, 8, 8), 10, 1347), about="colour scenario: reads shape"),
    Reference("digits-colour-flow", "flow", "digits-colour",
              _cfg(flow_recipe((3, 8, 8), MNIST_LEVELS, 1347), train={"epochs": 100}),
              about="colour scenario: the flow of the colour data"),
    # real MNIST (xcf demo --data mnist)
    Reference("mnist-classifier", "classifier", "mnist", classifier_recipe(_MNIST),
              about="the audited classifier"),
    Reference("mnist-flow", "flow", "mnist", _cfg(flow_recipe(_MNIST), train={"epochs": 220}),
              about="the diffeomorphic search's Glow"),
    Reference("mnist-judge-flow", "flow", "mnist", _cfg(flow_recipe(_MNIST), train={"max_seconds": 600}, seed=1),
              about="independent realism judge (another seed)"),
    Reference("mnist-gan", "gan", "mnist", _cfg(gan_recipe(_MNIST), train={"max_seconds": 600}),
              about="approximate counterfactuals"),
    Reference("mnist-vae", "vae", "mnist", vae_recipe(_MNIST),
              about="approximate counterfactuals"),
    Reference("mnist-pixelcnn", "pixelcnn", "mnist", pixelcnn_recipe(_MNIST),
              about="independent realism judge"),
    Reference("mnist-watermark-classifier", "classifier", "mnist-watermark",
              classifier_recipe(_MNIST), about="Clever-Hans: a shortcut classifier"),
    Reference("mnist-watermark-flow", "flow", "mnist-watermark", _cfg(flow_recipe(_MNIST), train={"epochs": 120}),
              about="Clever-Hans: the flow of the shortcut's data"),
    Reference("mnist-watermark-vae", "vae", "mnist-watermark", vae_recipe(_MNIST),
              about="Clever-Hans: the VAE of the shortcut's data"),
    Reference("mnist-colour-classifier", "classifier", "mnist-colour",
              classifier_recipe(_COLOUR), about="colour scenario: reads colour"),
    Reference("mnist-colour-shape-classifier", "classifier", "mnist-colour-random",
              classifier_recipe(_COLOUR), about="colour scenario: reads shape"),
    Reference("mnist-colour-flow", "flow", "mnist-colour", _cfg(flow_recipe(_COLOUR), train={"epochs": 100}),
              about="colour scenario: the flow of the colour data"),
)


def _manifest() -> dict[str, Any]:
    path = WEIGHTS_DIR / _MANIFEST
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e.msg}): reinstall xcf or run xcf models rebuild") from None


def references() -> list[Reference]:
    """Every reference model, with what its manifest records (sha256, size, test metrics, training).

    Example:
        >>> [r.name for r in references()][:3]
        ['digits-classifier', 'digits-realnvp', 'digits-glow']
    """
    recorded = _manifest()
    out = []
    for entry in TABLE:
        rec = recorded.get(entry.name, {})
        out.append(Reference(entry.name, entry.kind, entry.data, entry.config, entry.threads, entry.about,
                             rec.get("sha256"), rec.get("bytes"), dict(rec.get("metrics", {})),
                             dict(rec.get("trained", {}))))
    return out


def reference_entry(name: str) -> Reference:
    """The :class:`Reference` called ``name``; an unknown name is refused with the list of known ones.

    Example:
        >>> reference_entry("digits-gan").kind
        'gan'
    """
    for entry in references():
        if entry.name == name:
            return entry
    raise ValueError(f"unknown reference model {name!r}; known: {', '.join(r.name for r in TABLE)}")


def reference(
    name: str,
    *,
    retrain: bool = False,
    smoke: bool = False,
    cache_dir: Optional[str | os.PathLike] = None,
    progress: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """The reference model ``name`` in eval mode, with its recorded metrics.

    By default the shipped weights are read after their sha256 is checked against the manifest (nothing is
    trained).  ``retrain=True`` trains the entry's configuration on its data into the cache (``cache_dir``,
    ``$XCF_CACHE`` or ``~/.cache/xcf``) and uses that; the shipped file is never written.  ``smoke=True`` trains
    a tiny model of the same kind and data instead (the kind's smoke budget; numbers meaningless), for tests.

    Args:
        name: a name of :data:`TABLE` (``xcf models`` lists them).
        retrain: train again into the cache instead of loading the shipped weights.
        smoke: a tiny, quickly trained stand-in (cached), for smoke tests of pipelines.
        cache_dir: the cache of retrained models.
        progress: a progress bar while training.

    Returns:
        ``(model, metrics)``: metrics hold the kind's test metric (``test_accuracy``, ``test_bits_per_dim``,
        ``test_loss`` or ``frechet_distance_pca``), ``train_seconds``, ``epochs`` and ``trained_on``.

    Raises:
        ValueError: an unknown name (the known ones are listed), or a shipped file that is missing, truncated,
            edited or of another version (named, with what was expected); nothing is loaded from it.

    Example:
        >>> model, metrics = reference("digits-classifier")
        >>> model.training, metrics["test_accuracy"] > 0.95
        (False, True)
    """
    entry = reference_entry(name)
    kind = get_kind(entry.kind)
    if retrain or smoke:
        config = smoke_config(entry.kind, entry.config) if smoke else entry.config

        def train(model: nn.Module) -> dict[str, Any]:
            x, y = reference_data(entry.data, "train")
            x_test, y_test = reference_data(entry.data, "test")
            metrics = kind.train(model, config, x, y, x_test, y_test, None, progress)
            return {**metrics, "trained_on": describe_data(entry.data)}

        key = {**config, "data": entry.data}
        return cached_model(f"{name}{'-smoke' if smoke else ''}", key, lambda _: kind.build(config), train,
                            directory=cache_dir, retrain=retrain)
    if entry.sha256 is None:
        raise ValueError(f"the reference model {name!r} has no shipped weights ({entry.file} is not in the manifest): "
                         f"run `xcf models rebuild {name}`, or pass retrain=True (xcf demo --retrain)")
    state, meta = read_weights(entry.file, sha256=entry.sha256)
    if meta["kind"] != entry.kind or meta["config"] != entry.config:
        raise ValueError(f"{entry.file} holds a {meta['kind']} of another configuration than xcf's table expects "
                         f"for {name!r} (another version): run `xcf models rebuild {name}`")
    model = kind.build(entry.config)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{entry.file}: its weights do not fit the {entry.kind} of {name!r}: "
                         f"{' '.join(str(e).split())[:200]}") from None
    return model.eval(), {**meta["metrics"], "trained_on": describe_data(entry.data)}
