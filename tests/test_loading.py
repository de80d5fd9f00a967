"""A user's models from files and factories: xcf model files, TorchScript, torch.export, module:function."""

import sys
import textwrap

import pytest
import torch
from torch import nn

import xcf
from xcf.models.classifier import DigitsCNN
from xcf.models.io import save_model
from xcf.models.loading import load_model, model_kind, probe_classifier
from xcf.models.flow_training import build_flow, flow_recipe
from xcf.models.gan import build_gan, gan_recipe
from xcf.models.pixelcnn_training import build_pixelcnn, pixelcnn_recipe
from xcf.models.vae import build_vae, vae_recipe


def tiny_cnn():
    torch.manual_seed(0)
    return DigitsCNN(width=4).eval()


X = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def test_xcf_files_of_every_kind_rebuild_the_same_model(tmp_path):
    flow_cfg = flow_recipe((1, 8, 8), levels=17, n=50)
    flow_cfg["model"].update(hidden=8, steps_per_scale=1)
    cases = {
        "classifier": (tiny_cnn(), {"model": {"width": 4}}, "classifier", lambda m: m(X)),
        "flow": (build_flow(flow_cfg).eval(), flow_cfg, "flow", lambda m: m.log_prob(X)),
        "gan": (build_gan(gan_recipe((1, 8, 8))).eval(), gan_recipe((1, 8, 8)), "generator",
                lambda m: m(torch.ones(2, m.latent_dim))),
        "vae": (build_vae(vae_recipe((1, 8, 8))).eval(), vae_recipe((1, 8, 8)), "generator",
                lambda m: m.decoder(torch.ones(2, m.latent_dim))),
        "pixelcnn": (build_pixelcnn(pixelcnn_recipe((1, 8, 8), n=10)).eval(), pixelcnn_recipe((1, 8, 8), n=10),
                     "judge", lambda m: m.bits_per_dim(X)),
    }
    for kind, (model, cfg, role, run) in cases.items():
        path = save_model(model, tmp_path / f"{kind}.pt", cfg, {"test_bits_per_dim": 1.5, "trained_on": "somewhere"})
        loaded = load_model(path, role)
        assert loaded.kind == kind and loaded.source == "xcf model file" and not loaded.module.training, kind
        assert loaded.metrics["trained_on"] == "somewhere"
        with torch.no_grad():
            torch.testing.assert_close(run(loaded.module), run(model), msg=kind)


def test_files_of_xcf_0_2_still_load(tmp_path):
    """xcf 0.2 wrote flat GAN and VAE configurations and the flow architecture as ``config["kind"]``."""
    flat_gan = {"latent_dim": 16, "image_size": 8, "channels": 1, "width": 16, "loss": "ns", "epochs": 3, "lr": 5e-4,
                "batch_size": 64, "ema": 0.999, "seed": 0, "version": 1}
    flat_vae = {"latent_dim": 16, "image_size": 8, "channels": 1, "width": 32, "epochs": 3, "lr": 2e-3,
                "batch_size": 64, "beta": 0.25, "seed": 0, "version": 1}
    old_flow = flow_recipe((1, 8, 8), levels=17, n=50)
    old_flow["kind"] = old_flow["model"].pop("architecture")
    old_flow["model"].update(hidden=8, steps_per_scale=1)
    for name, model, cfg, role in (("gan", build_gan(flat_gan), flat_gan, "generator"),  # 0.2 GANs had no encoder
                                   ("vae", build_vae(vae_recipe((1, 8, 8))), flat_vae, "generator"),
                                   ("flow", build_flow({**old_flow, "model": {**old_flow["model"], "architecture": "glow"}}),
                                    old_flow, "flow")):
        path = save_model(model.eval(), tmp_path / f"{name}.pt", cfg)
        loaded = load_model(path, role).module
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values())), name


def test_torchscript_and_export_classifiers_match_and_explain(tmp_path):
    model = tiny_cnn()
    torch.jit.save(torch.jit.trace(model, X), tmp_path / "clf.ts")
    program = torch.export.export(model, (X,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, tmp_path / "clf.pt2")
    for name, source in (("clf.ts", "TorchScript"), ("clf.pt2", "torch.export")):
        loaded = load_model(tmp_path / name, "classifier")
        assert loaded.source == source and loaded.kind == "classifier"
        clf = loaded.module
        with torch.no_grad():
            torch.testing.assert_close(clf(X), model(X))
        assert probe_classifier(clf, X[:2]) == 10
        result = xcf.AdversarialCounterfactual(clf).counterfactual(X[:3], torch.tensor([1, 2, 3]), steps=5)
        assert result.counterfactual.shape == (3, 1, 8, 8) and not clf.training
        assert all(p.grad is None for p in clf.parameters())
    with pytest.raises(ValueError, match="is a TorchScript archive, which xcf takes only as a --classifier"):
        load_model(tmp_path / "clf.ts", "flow")
    with pytest.raises(ValueError, match="is a torch.export archive, which xcf takes only as a --classifier"):
        load_model(tmp_path / "clf.pt2", "generator")


@pytest.fixture()
def factories(tmp_path, monkeypatch):
    (tmp_path / "userpkg").mkdir()
    (tmp_path / "userpkg" / "__init__.py").write_text("")
    (tmp_path / "userpkg" / "models.py").write_text(textwrap.dedent("""
        import torch
        from xcf.models.classifier import DigitsCNN

        def classifier():
            torch.manual_seed(0)
            return DigitsCNN(width=4).eval()

        def broken():
            raise RuntimeError("weights file missing")

        def number():
            return 3

        def meta():
            return torch.nn.Linear(64, 10, device="meta")
    """))
    (tmp_path / "script.py").write_text("import torch\ndef make():\n    return torch.nn.Sequential(torch.nn.Flatten(), "
                                        "torch.nn.Linear(64, 3))\n")
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    sys.modules.pop("userpkg.models", None)
    sys.modules.pop("userpkg", None)


def test_factories_from_a_package_and_from_a_file(factories):
    loaded = load_model("userpkg.models:classifier", "classifier")
    assert loaded.source == "factory" and not loaded.module.training
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(X), tiny_cnn()(X))
    other = load_model(str(factories / "script.py") + ":make", "classifier")
    assert probe_classifier(other.module, X[:2]) == 3
    assert str(factories) not in sys.path  # the working folder is on the path only while importing


@pytest.mark.parametrize("spec, role, message", [
    ("userpkg.models:broken", "classifier", "the factory raised RuntimeError: weights file missing"),
    ("userpkg.models:number", "classifier", "the factory returned a int"),
    ("userpkg.models:missing", "classifier", "has no function 'missing'"),
    ("nosuchpkg.models:make", "classifier", "cannot import nosuchpkg.models: ModuleNotFoundError"),
    ("userpkg.models:classifier", "flow", "which is a classifier, not a normalizing flow"),
    ("userpkg.models:classifier", "generator", "not a generator"),
    ("nofile.py:make", "classifier", "no such file nofile.py"),
])
def test_factory_errors_are_one_sentence(factories, spec, role, message):
    with pytest.raises(ValueError, match=message) as info:
        load_model(spec, role)
    assert spec in str(info.value) and "\n" not in str(info.value)


def test_files_that_are_not_models(tmp_path):
    model = tiny_cnn()
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    torch.save(model, tmp_path / "whole.pt")  # pickles the class
    (tmp_path / "junk.pt").write_bytes(b"\x00\x01 not torch")
    torch.save({"weights": [1, 2]}, tmp_path / "dict.pt")
    save_model(nn.Linear(2, 2), tmp_path / "linear.pt", {})
    cases = {
        "sd.pt": "holds a bare state dict \\(\\d+ tensors\\) without the architecture: write a factory",
        "whole.pt": "pickled Python objects",
        "junk.pt": "is not a torch file",
        "dict.pt": "is a torch file but not an xcf model file",
        "linear.pt": "holds a Linear, which xcf cannot rebuild",
        "missing.pt": "no such file",
    }
    for name, message in cases.items():
        with pytest.raises(ValueError, match=message) as info:
            load_model(tmp_path / name, "classifier")
        assert "weights_only" not in str(info.value) and name in str(info.value)


def test_model_kind_and_probe_errors():
    assert model_kind(tiny_cnn()) == "classifier"
    assert model_kind(build_gan(gan_recipe((1, 8, 8)))) == "gan"
    assert model_kind(build_vae(vae_recipe((1, 8, 8)))) == "vae"
    with pytest.raises(ValueError, match="does not take the data's images of shape \\(2, 1, 16, 16\\)"):
        probe_classifier(tiny_cnn(), torch.rand(2, 1, 16, 16))
    with pytest.raises(ValueError, match="must return logits of shape \\(N, classes\\)"):
        probe_classifier(nn.Flatten(0), X[:2])
    with pytest.raises(ValueError, match="NaN or infinite logits"):
        probe_classifier(lambda x: torch.full((x.shape[0], 3), float("nan")), X[:2])
    with pytest.raises(ValueError, match="role must be one of"):
        load_model("x.pt", "critic")
