"""`xcf train` and `xcf audit` on a user's own files, end to end: PNG class folders and .npz files the tests
write, a TorchScript and a factory classifier, a flow trained by `xcf train`, a kill and a resume."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from PIL import Image

from xcf.apps.cli import main
from xcf.datasets import load_digits
from xcf.models.loading import load_model


def write_pngs(root, x, y):
    for i, (img, k) in enumerate(zip(x, y)):
        d = root / str(int(k))
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img[0].numpy() * 255).round().astype(np.uint8), "L").save(d / f"{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Digits as a user would hand them in: a PNG class folder for training, .npz files for testing."""
    tmp = tmp_path_factory.mktemp("own")
    x, y = load_digits("train")
    xt, yt = load_digits("test")
    u8 = (xt[:60, 0].numpy() * 255).round().astype(np.uint8)
    np.savez(tmp / "test.npz", x=u8, y=yt[:60].numpy(), classes=np.array([f"digit {k}" for k in range(10)]))
    np.savez(tmp / "unlabelled.npz", x=u8[:20])
    np.save(tmp / "targets.npy", np.arange(60) % 10)
    (tmp / "factories.py").write_text(textwrap.dedent(f"""
        import time, torch
        from xcf.models.loading import load_model

        def classifier():
            return load_model({str(tmp / "clf.pt")!r}, "classifier").module

        class Slow(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = classifier()

            def forward(self, x):
                time.sleep(0.004)
                return self.inner(x)

        def slow():
            return Slow().eval()

        def broken():
            raise RuntimeError("no weights here")

        def wide():
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 10)).eval()

        def on_meta():
            return torch.nn.Linear(64, 10, device="meta")
    """))
    return {"dir": tmp, "pngs": write_pngs(tmp / "pngs", x[:400], y[:400]), "test": tmp / "test.npz",
            "unlabelled": tmp / "unlabelled.npz", "targets": tmp / "targets.npy", "factories": tmp / "factories.py"}


@pytest.fixture(scope="module")
def trained(files):
    """`xcf train classifier|flow|vae` with tiny budgets, and the classifier as TorchScript."""
    d = files["dir"]
    common = ["--data", str(files["pngs"]), "--no-progress", "--threads", "1"]
    assert main(["train", "classifier", "--out", str(d / "clf.pt"), "--epochs", "4"] + common) == 0
    assert main(["train", "flow", "--out", str(d / "flow.pt"), "--epochs", "1", "--max-minutes", "2"] + common) == 0
    assert main(["train", "vae", "--out", str(d / "vae.pt"), "--epochs", "2"] + common) == 0
    clf = load_model(d / "clf.pt", "classifier").module
    torch.jit.save(torch.jit.trace(clf, torch.rand(2, 1, 8, 8)), d / "clf.ts")
    return {"clf": d / "clf.pt", "flow": d / "flow.pt", "vae": d / "vae.pt", "ts": d / "clf.ts"}


def test_train_records_its_numbers_in_the_file(files, trained, capsys):
    flow = load_model(trained["flow"], "flow")
    assert flow.metrics["trained_on"] == str(files["pngs"]) and flow.metrics["images"] == 360
    assert flow.metrics["test_images"] == 40 and flow.metrics["test_bits_per_dim"] > 0
    clf = load_model(trained["clf"], "classifier")
    assert 0 <= clf.metrics["test_accuracy"] <= 1 and clf.metrics["classes"] == [str(k) for k in range(10)]
    vae = load_model(trained["vae"], "generator")
    assert vae.kind == "vae" and vae.metrics["frechet_distance_pca"] > 0
    assert vae.metrics["frechet_distance_pca_real_train"] < vae.metrics["frechet_distance_pca"]


def test_audit_of_own_files_with_a_torchscript_classifier(files, trained, tmp_path, capsys):
    out = tmp_path / "audit"
    rc = main(["audit", "--data", str(files["test"]), "--classifier", str(trained["ts"]), "--flow", str(trained["flow"]),
               "--generator", str(trained["vae"]), "--train-data", str(files["pngs"]), "--target", "+1", "--steps", "15", "--confidence", "0.9",
               "--batch-size", "20", "--images", "40", "--out", str(out), "--no-progress", "--threads", "1"])
    assert rc == 0, capsys.readouterr().err
    s = json.loads((out / "summary.json").read_text())
    assert s["images"] == 40 and s["methods"] == ["diffeomorphic", "approximate (VAE)", "adversarial"]
    for method in s["methods"]:
        row = s["metrics"][method]
        assert 0 <= row["success"] <= 1 and 0 <= row["svm_transfer"] <= 1 and 0 <= row["knn_agreement"] <= 1
        assert s["realism"][method]["Fréchet distance to training images (PCA-50)"] > 0
    assert "real audited images (floor)" in s["realism"]
    assert s["config"]["target"] == "(y + 1) mod 10" and s["wall_seconds"] > s["models_seconds"] > 0
    assert "TorchScript" in s["classifier"] and f"trained on {files['pngs']}" in s["flow"]
    assert s["validators fitted on"] == str(files["pngs"])
    assert all("confidence=0.9" in d for d in s["config"]["explainers"].values())
    html = (out / "report.html").read_text()
    assert "digit 3" in html and "test_bits_per_dim" in html and str(trained["flow"]) in html


def test_audit_with_a_factory_and_other_targets(files, trained, tmp_path, capsys):
    factory = f"{files['factories']}:classifier"
    out = tmp_path / "runner-up"
    assert main(["audit", "--data", str(files["unlabelled"]), "--classifier", factory, "--steps", "10",
                 "--out", str(out), "--no-progress"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["methods"] == ["adversarial"] and s["images"] == 20 and not s["labelled"]
    assert s["config"]["target"] == "runner-up class of the classifier"
    assert "svm_transfer" not in s["metrics"]["adversarial"] and s["validators fitted on"].startswith("none")
    for target, expected in ((str(files["targets"]), "per-item classes"), ("7", "class 7")):
        out = tmp_path / f"t{expected[:5]}"
        assert main(["audit", "--data", str(files["test"]), "--classifier", factory, "--target", target,
                     "--steps", "5", "--out", str(out), "--no-progress"]) == 0
        assert json.loads((out / "summary.json").read_text())["config"]["target"].startswith(expected)


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1")


@pytest.mark.slow
def test_audit_killed_and_resumed_equals_an_uninterrupted_run(files, trained, tmp_path):
    def cmd(out):
        return [sys.executable, "-m", "xcf", "audit", "--data", str(files["test"]), "--classifier",
                f"{files['factories']}:slow", "--flow", str(trained["flow"]), "--train-data", str(files["pngs"]),
                "--batch-size", "10", "--steps", "25", "--out", str(out), "--no-progress", "--threads", "1"]

    whole = subprocess.run(cmd(tmp_path / "whole"), env=_env(), capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr
    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd(killed), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shards = killed / "store" / "shards"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(shards.glob("batch-*.npz"))) < 2 and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(shards.glob("batch-*.npz")))
    assert 2 <= done < 6 and not (killed / "report.html").exists()
    rerun = subprocess.run(cmd(killed), env=_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert f"skipped {done} finished batches" in rerun.stdout
    a = json.loads((tmp_path / "whole" / "summary.json").read_text())["metrics"]
    b = json.loads((killed / "summary.json").read_text())["metrics"]
    for method, row in a.items():
        for metric, value in row.items():
            if metric != "time_ms":
                assert b[method][metric] == pytest.approx(value, rel=1e-9, abs=1e-12), (method, metric)


def test_audit_fits_generative_models_on_the_training_data(files, trained, tmp_path):
    """--fit: the flow and the VAE are fitted on --train-data for this audit, said in the report, and reused."""
    out = tmp_path / "fit"
    argv = ["audit", "--data", str(files["test"]), "--classifier", str(trained["clf"]), "--train-data",
            str(files["pngs"]), "--fit", "flow,vae", "--fit-minutes", "0.05", "--images", "6", "--steps", "5",
            "--out", str(out), "--no-progress", "--threads", "1"]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["metrics"]) == {"diffeomorphic", "approximate (VAE)", "adversarial"}
    html = (out / "report.html").read_text()
    assert html.count(f"trained on {files['pngs']}") == 3  # the classifier (xcf train), the flow and the VAE
    fitted = {p.name: p.stat().st_mtime_ns for p in (out / "fitted").iterdir()}
    assert set(fitted) == {"flow.pt", "vae.pt"}
    assert load_model(out / "fitted" / "flow.pt", "flow").metrics["trained_on"] == str(files["pngs"])
    assert main(argv) == 0  # a rerun reuses the fitted models (and the finished store)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "fitted").iterdir()} == fitted


# ------------------------------------------------------------------------------------------- errors
def bad_inputs(files, trained, tmp):
    (tmp / "empty" / "cat").mkdir(parents=True)
    mixed = write_pngs(tmp / "mixed", *load_digits("test"))
    Image.fromarray(np.zeros((9, 9), np.uint8), "L").save(mixed / "0" / "big.png")
    np.savez(tmp / "nox.npz", images=np.zeros((3, 8, 8), np.uint8))
    np.savez(tmp / "big.npz", x=np.zeros((4, 16, 16), np.uint8), y=np.zeros(4, np.int64))
    np.savez(tmp / "rect.npz", x=np.zeros((40, 8, 12), np.uint8), y=np.arange(40) % 2)
    np.save(tmp / "short.npy", np.zeros(3, np.int64))
    f, t, clf = str(files["factories"]), str(files["test"]), str(trained["clf"])
    audit = ["audit", "--no-progress", "--steps", "2"]
    return [
        (audit + ["--data", str(tmp / "empty"), "--classifier", clf], "holds no images"),
        (audit + ["--data", str(mixed), "--classifier", clf], "images of 2 sizes"),
        (audit + ["--data", str(tmp / "nox.npz"), "--classifier", clf], "but no 'x'"),
        (audit + ["--data", t, "--classifier", clf, "--flow", str(trained["ts"])], "takes only as a --classifier"),
        (audit + ["--data", t, "--classifier", f + ":broken"], "the factory raised RuntimeError: no weights here"),
        (audit + ["--data", t, "--classifier", f + ":missing"], "has no function 'missing'"),
        (audit + ["--data", t, "--classifier", clf, "--generator", f + ":classifier"], "not a generator"),
        (audit + ["--data", str(tmp / "big.npz"), "--classifier", clf], "does not take the data's images of shape"),
        (audit + ["--data", str(tmp / "big.npz"), "--classifier", str(trained["ts"])], "does not take the data's"),
        (audit + ["--data", t, "--classifier", clf, "--flow", str(trained["flow"]), "--channels", "3"], "does not take"),
        (audit + ["--data", str(tmp / "big.npz"), "--classifier", f + ":wide", "--flow", str(trained["flow"])],
         "--flow " + str(trained["flow"]) + " does not take the data's images of shape (1, 16, 16)"),
        (audit + ["--data", t, "--classifier", f + ":on_meta"], "returned a model on meta, but the audit runs on cpu"),
        (audit + ["--data", str(files["unlabelled"]), "--classifier", clf, "--target", "+1"], "has none"),
        (audit + ["--data", t, "--classifier", clf, "--target", "12"], "out of range for a classifier of 10 classes"),
        (audit + ["--data", t, "--classifier", clf, "--target", str(tmp / "short.npy")], "must hold 60 integer classes"),
        (audit + ["--data", t, "--classifier", clf, "--target", "sideways"], "is none of +K"),
        (audit + ["--data", t, "--classifier", clf, "--methods", "diffeomorphic"], "needs --flow"),
        (audit + ["--data", t], "--classifier is required"),
        (audit + ["--data", t, "--classifier", clf, "--train-data", str(tmp / "big.npz")], "must hold labelled images"),
        (audit + ["--data", t, "--classifier", clf, "--fit", "flow"], "give --train-data"),
        (audit + ["--data", t, "--classifier", clf, "--fit", "flow", "--flow", str(trained["flow"]),
                  "--train-data", str(files["pngs"])], "both name the flow"),
        (audit + ["--data", t, "--classifier", clf, "--fit", "gan,vae", "--train-data", str(files["pngs"])],
         "the audit takes one generator"),
        (audit + ["--data", t, "--classifier", clf, "--fit", "vae", "--generator", str(trained["vae"]),
                  "--train-data", str(files["pngs"])], "both name the generator"),
        (audit + ["--data", t, "--classifier", clf, "--fit", "flow,magic"], "--fit takes a comma-separated subset"),
        (["demo", "--classifier", f + ":wide", "--cache", str(tmp / "cache"), "--out", str(tmp / "out")],
         "(the digits demo) does not take the data's images of shape (2, 1, 8, 8)"),
        (["train", "classifier", "--data", str(files["unlabelled"]), "--out", str(tmp / "m.pt")], "needs labels"),
        (["train", "gan", "--data", str(tmp / "rect.npz"), "--out", str(tmp / "m.pt")], "takes square images"),
        (["train", "flow", "--data", t, "--out", str(tmp)], "is a folder; give the model file"),
        (["train", "flow", "--data", str(tmp / "nox.npz"), "--out", str(tmp / "m.pt")], "but no 'x'"),
    ]


def test_bad_input_is_one_line_exit_2_and_nothing_written(files, trained, tmp_path, capsys):
    for argv, message in bad_inputs(files, trained, tmp_path):
        out = tmp_path / "out"
        argv = argv + (["--out", str(out)] if argv[0] == "audit" else [])
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)
        assert "Traceback" not in err[0] and "weights_only" not in err[0]
        assert not out.exists() and not (tmp_path / "m.pt").exists() and not (tmp_path / "cache").exists(), argv
