"""The model-kind registry and the shipped reference weights: verified on load, re-measured, rebuilt."""

import json
import shutil

import pytest
import torch

import xcf
from xcf.apps.cli import main
from xcf.apps.fitting import FITTABLE
from xcf.apps.models import table_rows, verify
from xcf.datasets.scenarios import REFERENCE_DATA, reference_data
from xcf.models import shipped as ref_module
from xcf.models.io import read_weights, save_weights, sha256_of
from xcf.models.loading import load_model
from xcf.models.shipped import TABLE, reference, reference_entry, references
from xcf.models.registry import KINDS, config_shape, fit_model, get_kind, smoke_config


# ------------------------------------------------------------------------------------------- registry
def test_every_kind_declares_recipe_build_train_and_measure_that_fit_together(tmp_path):
    """One loop over the registry: recipe -> build -> smoke training -> file -> the same model back."""
    from xcf.models.io import save_model

    x, y = reference_data("digits", "train")
    x_test, y_test = reference_data("digits", "test")
    roles = {"classifier": "classifier", "flow": "flow", "gan": "generator", "vae": "generator", "pixelcnn": "judge"}
    assert set(KINDS) == set(roles)
    for name, kind in KINDS.items():
        cfg = smoke_config(name, kind.recipe((1, 8, 8), 200, 17, 10))
        assert set(cfg) == {"model", "train", "seed", "version"}, name  # one schema for every kind
        assert config_shape(cfg) == (1, 8, 8), name
        model, metrics = fit_model(name, x[:200], y[:200], x_test=x_test[:50], y_test=y_test[:50], config=cfg)
        assert not model.training and metrics["config"]["model"] == cfg["model"], name
        if kind.measure is not None:
            assert metrics[kind.test_metric] == pytest.approx(kind.measure(model, cfg, x_test[:50], y_test[:50])), name
        path = save_model(model, tmp_path / f"{name}.pt", cfg)
        loaded = load_model(path, roles[name])
        assert loaded.kind == name
        assert all(torch.equal(a, b) for a, b in zip(loaded.module.state_dict().values(), model.state_dict().values()))


def test_fit_model_is_deterministic_and_the_fit_functions_are_the_same_call():
    x, y = reference_data("digits", "train")
    cfg = smoke_config("classifier", get_kind("classifier").recipe((1, 8, 8), 300, 17, 10))
    a, _ = fit_model("classifier", x[:300], y[:300], config=cfg)
    b, _ = xcf.models.fit_classifier(x[:300], y[:300], config=cfg)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_registry_errors_name_the_problem():
    x, y = reference_data("digits", "train")
    with pytest.raises(ValueError, match="unknown model kind 'maf'; known: \\['classifier', 'flow', 'gan', 'vae', 'pixelcnn'\\]"):
        fit_model("maf", x)
    with pytest.raises(ValueError, match="a classifier trains on labelled images: pass y"):
        fit_model("classifier", x)
    with pytest.raises(ValueError, match="y must be a long tensor"):
        fit_model("classifier", x, y.float())
    with pytest.raises(ValueError, match="takes images of shape \\(1, 28, 28\\), the data has \\(1, 8, 8\\)"):
        fit_model("vae", x, config=get_kind("vae").recipe((1, 28, 28), 10, 256, 10))


def test_the_command_line_and_audit_read_the_registry():
    from xcf.apps.cli import build_parser

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    kind_action = next(a for a in train._actions if a.dest == "kind")
    assert tuple(kind_action.choices) == tuple(KINDS)
    assert FITTABLE == ("flow", "gan", "vae")


# ------------------------------------------------------------------------------------ shipped weights
def test_the_table_is_whole_small_and_every_file_verifies():
    """Every entry ships, its sha256 holds, and its recorded test metric is what the file measures now."""
    entries = references()
    assert [e.name for e in entries] == [e.name for e in TABLE] and len({e.name for e in TABLE}) == len(TABLE)
    assert all(e.data in REFERENCE_DATA and e.kind in KINDS for e in entries)
    missing = [e.name for e in entries if e.sha256 is None]
    assert not missing, f"not shipped: {missing}"
    assert all(sha256_of(e.file) == e.sha256 and e.file.stat().st_size == e.bytes for e in entries)
    assert sum(e.bytes for e in entries) <= 30e6
    rows = verify()
    bad = [r for r in rows if not r["ok"]]
    assert not bad, bad


def test_reference_loads_the_shipped_model_with_its_numbers():
    model, metrics = reference("digits-classifier")
    x, y = reference_data("digits", "test")
    assert not model.training and metrics["trained_on"] == "digits train"
    assert (model(x).argmax(1) == y).float().mean().item() == pytest.approx(metrics["test_accuracy"])
    assert xcf.reference is reference and reference_entry("mnist-flow").kind == "flow"
    rows = {r["name"]: r for r in table_rows()}
    assert rows["mnist-flow"]["metric"] == "test_bits_per_dim" and rows["mnist-flow"]["value"] < 1.6


@pytest.fixture()
def copied_weights(tmp_path, monkeypatch):
    """The shipped folder copied, so that its files can be damaged."""
    folder = tmp_path / "weights"
    shutil.copytree(ref_module.WEIGHTS_DIR, folder)
    monkeypatch.setattr(ref_module, "WEIGHTS_DIR", folder)
    return folder


def test_a_damaged_file_is_refused_with_its_name_and_nothing_is_loaded(copied_weights):
    path = copied_weights / "digits-gan.safetensors"
    data = bytearray(path.read_bytes())
    path.write_bytes(bytes(data[: len(data) // 2]))  # truncated
    with pytest.raises(ValueError, match=f"{path}.*sha256 .* expected .*truncated, edited or of another version"):
        reference("digits-gan")
    data[-1] ^= 0xFF  # one weight edited, length kept
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="digits-gan.safetensors is not the file xcf recorded"):
        reference("digits-gan")


def test_a_file_of_another_version_is_refused(copied_weights):
    manifest = json.loads((copied_weights / "manifest.json").read_text())
    state, meta = read_weights(copied_weights / "digits-vae.safetensors")
    model = get_kind("vae").build(reference_entry("digits-vae").config)
    model.load_state_dict(state)
    old = {**meta["config"], "version": 0}
    manifest["digits-vae"]["sha256"] = save_weights(model, copied_weights / "digits-vae.safetensors", "vae", old)
    (copied_weights / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="another configuration than xcf's table expects for 'digits-vae'"):
        reference("digits-vae")
    (copied_weights / "digits-vae.safetensors").write_bytes(b"not safetensors at all")
    manifest["digits-vae"]["sha256"] = sha256_of(copied_weights / "digits-vae.safetensors")
    (copied_weights / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="is not a readable safetensors file"):
        reference("digits-vae")
    del manifest["digits-vae"]
    (copied_weights / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="has no shipped weights.*xcf models rebuild digits-vae"):
        reference("digits-vae")


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ValueError, match="unknown reference model 'mnist-glow'; known: digits-classifier, "):
        reference("mnist-glow")
    assert main(["models", "verify", "nope"]) == 2


def test_retrain_goes_to_the_cache_and_never_touches_the_shipped_file(tmp_path):
    shipped = reference_entry("digits-classifier")
    before = sha256_of(shipped.file)
    model, metrics = reference("digits-classifier", smoke=True, cache_dir=tmp_path)
    assert model.width == 8 and len(list(tmp_path.glob("digits-classifier-smoke-*.pt"))) == 1
    again, metrics2 = reference("digits-classifier", smoke=True, cache_dir=tmp_path)  # loaded, not retrained
    assert metrics2 == metrics and all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters()))
    assert sha256_of(shipped.file) == before
    cached = next(tmp_path.glob("digits-classifier-smoke-*.pt"))
    cached.write_bytes(cached.read_bytes()[:-10])  # a truncated cache file is refused, not loaded half
    with pytest.raises(ValueError, match=f"the cached model {cached} is not the file xcf wrote .*truncated or edited"):
        reference("digits-classifier", smoke=True, cache_dir=tmp_path)
    again, _ = reference("digits-classifier", smoke=True, retrain=True, cache_dir=tmp_path)  # retrain overwrites it
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters()))


# ---------------------------------------------------------------------------------- xcf models command
def test_rebuild_reproduces_the_shipped_weights(tmp_path, capsys):
    """The documented rebuild command trains the same tensors (digits classifier and VAE: fixed epochs, 1 thread)."""
    assert main(["models", "rebuild", "digits-classifier", "digits-vae", "--out", str(tmp_path), "--no-progress"]) == 0
    for name in ("digits-classifier", "digits-vae"):
        new, meta = read_weights(tmp_path / f"{name}.safetensors")
        old, _ = read_weights(reference_entry(name).file)
        assert set(new) == set(old) and all(torch.equal(new[k], old[k]) for k in new), name
        assert meta["config"] == reference_entry(name).config
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert list(manifest) == ["digits-classifier", "digits-vae"] and manifest["digits-vae"]["trained"]["threads"] == 1
    assert "wrote" in capsys.readouterr().out


def test_models_command_lists_and_verifies(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert all(e.name in out for e in TABLE) and "test_bits_per_dim" in out and "MB" in out
    assert main(["models", "verify", "digits-classifier", "digits-gan"]) == 0
    assert "ok" in capsys.readouterr().out
    assert main(["models", "--json", "list", "mnist-flow"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["name"] == "mnist-flow"
    assert main(["models", "rebuild", "digits-gan"]) == 2
    assert "rebuild needs --out" in capsys.readouterr().err
