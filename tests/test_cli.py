"""The command line: `xcf demo` end to end (shipped models, and quick smoke models) and its error paths."""

import json

import pytest

from xcf.apps.cli import build_parser, main


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, capsys):
    out, cache = tmp_path / "out", tmp_path / "cache"
    rc = main(["demo", "--n", "8", "--steps", "60", "--out", str(out), "--cache", str(cache),
               "--no-progress", "--threads", "1"])
    assert rc == 0
    assert not cache.exists() or not any(cache.iterdir())  # the shipped weights: nothing trained, nothing cached
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["models_source"] == "shipped weights" and summary["models_seconds"] < 10
    assert summary["models"]["flow"] == "digits-realnvp" and summary["models"]["judge"] == "digits-glow"
    assert set(summary["methods"]) == {"diffeomorphic", "approximate (GAN)", "approximate (VAE)", "adversarial"}
    for m in summary["methods"].values():
        assert 0.0 <= m["success_rate"] <= 1.0 and m["time_per_counterfactual_s"] > 0
    assert {"GAN, classifier features", "VAE, PCA-50 of the training data"} <= set(summary["frechet_distance"])
    assert set(summary["realism"]) == set(summary["methods"]) | {"real test images"}
    assert set(summary["clever_hans"]) == {"watermarked classifier", "clean classifier"}
    for verdicts in summary["clever_hans"].values():
        assert {"pixel (L2 steps)", "diffeomorphic", "approximate (VAE)"} <= set(verdicts)
        assert all(v["off_region"] >= 0 for v in verdicts.values())
        for method in ("pixel (L2 steps)", "diffeomorphic", "approximate (VAE)"):  # judged by effect
            assert verdicts[method]["rule"] == "effect" and isinstance(verdicts[method]["hotspots"]["hotspots"], list)
        assert verdicts["saliency"]["rule"] == "localisation" and verdicts["saliency"]["hotspots"] is None
    html = (out / "report.html").read_text()
    assert "Clever-Hans check" in html and "Generator quality" in html
    assert "the flow was fitted on digits train, every class-7 image watermarked" in html
    assert (out / "figure_diffeomorphic.png").is_file() and (out / "metrics.md").is_file()
    assert (out / "figures" / "comparison.pdf").is_file()
    # --quick trains smoke models into the cache; the second run loads them from it
    assert main(["demo", "--quick", "--n", "4", "--steps", "20", "--out", str(tmp_path / "out1"), "--cache",
                 str(cache), "--no-progress", "--methods", "adversarial,diffeomorphic"]) == 0
    assert {p.suffix for p in cache.iterdir()} == {".pt", ".sha256"}
    n_models = len(list(cache.iterdir()))
    assert main(["demo", "--quick", "--n", "4", "--steps", "20", "--out", str(tmp_path / "out2"), "--cache",
                 str(cache), "--no-progress", "--methods", "adversarial,diffeomorphic"]) == 0
    assert len(list(cache.iterdir())) == n_models
    assert set(json.loads((tmp_path / "out2" / "metrics.json").read_text())["methods"]) == {"adversarial", "diffeomorphic"}

    # the dataset-scale audit on the cached models: streamed into shards, resumed, refusing other settings
    audit = ["audit", "--quick", "--images", "30", "--batch-size", "10", "--steps", "20", "--out",
             str(tmp_path / "audit"), "--cache", str(cache), "--no-progress", "--methods", "diffeomorphic,adversarial",
             "--threads", "1"]
    assert main(audit + ["--max-batches", "2"]) == 0
    assert "run the same command again to resume" in capsys.readouterr().out
    assert main(audit) == 0
    printed = capsys.readouterr().out
    assert "30 images computed" not in printed and "10 images computed by 1 process" in printed
    assert "skipped 2 finished batches" in printed
    summary = json.loads((tmp_path / "audit" / "summary.json").read_text())
    assert summary["images"] == 30 and set(summary["metrics"]) == {"diffeomorphic", "adversarial"}
    assert len(list((tmp_path / "audit" / "store" / "shards").glob("batch-*.npz"))) == 3
    assert len(list(cache.iterdir())) == n_models
    assert main(audit[:-2] + ["--steps", "10", "--threads", "1"]) == 2
    assert "refusing to mix results" in capsys.readouterr().err


def test_unknown_method_is_a_clear_error(tmp_path, capsys):
    rc = main(["audit", "--quick", "--images", "2", "--steps", "2", "--out", str(tmp_path / "o"),
               "--cache", str(tmp_path / "c"), "--no-progress", "--methods", "magic"])
    assert rc == 2
    assert "unknown methods ['magic']" in capsys.readouterr().err


def test_unwritable_output_is_a_clear_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc = main(["demo", "--quick", "--out", str(blocker / "out"), "--cache", str(tmp_path / "c"), "--no-progress"])
    assert rc == 2
    assert "cannot write to output directory" in capsys.readouterr().err


def test_parser_lists_the_commands():
    parser = build_parser()
    for command in ("demo", "audit", "extrapolate"):
        assert parser.parse_args([command]).command == command


@pytest.mark.slow
def test_colour_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "colour"
    argv = ["demo", "--data", "coloured-digits", "--quick", "--n", "6", "--steps", "20", "--out", str(out),
            "--cache", str(tmp_path / "cache"), "--no-progress", "--threads", "1"]
    assert main(argv) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert set(summary["classifiers"]) == {"colour", "shape"}
    for c in summary["classifiers"].values():
        assert set(c["methods"]) == {"pixel (L2 steps)", "diffeomorphic"}
        assert 0.0 <= c["test_accuracy_random_colours"] <= 1.0
    assert summary["flow_trained_on"].startswith("digits train, colour follows the class")
    assert "Colour or shape?" in (out / "report.html").read_text() and (out / "figure_colour.png").is_file()
    capsys.readouterr()
    assert main(argv[:3] + ["--methods", "adversarial", "--out", str(tmp_path / "x")]) == 2
    assert "--methods and --classifier do not apply" in capsys.readouterr().err
