"""The HTML report and the audit entry point, on tiny models (fast)."""

import json
import os

import pytest
import torch
from torch import nn

from xcf import PixelChart
from xcf.apps.audit import CleverHansCheck, audit
from xcf.evaluate.cleverhans import region_mask
from xcf.explain.base import CounterfactualExplainer
from xcf.report.html import Report


def tiny_setup(seed=0):
    torch.manual_seed(seed)
    x_train = torch.rand(60, 1, 4, 4)
    y_train = torch.arange(60) % 3
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    return model, x_train, y_train


def test_audit_writes_every_section(tmp_path):
    model, x_train, y_train = tiny_setup()
    x = torch.rand(6, 1, 4, 4)
    explainers = {"pixel adam": CounterfactualExplainer(model, PixelChart(None)),
                  "pixel l2": CounterfactualExplainer(model, PixelChart(None, update="l2"))}
    check = CleverHansCheck("tiny", model, {"cf": explainers["pixel l2"]}, x, 1, region_mask((1, 4, 4), (0, 0), (2, 2)),
                            fitted_on={"flow": "the tiny training set"})
    outcome = audit(model, x, 1, explainers, tmp_path / "out", train=(x_train, y_train), steps=50,
                    quality={"generator": 1.5}, clever_hans=[check], summary={"model": "linear"})
    html = outcome.report.read_text()
    for section in ("Data and models", "Generator quality", "Counterfactuals side by side", "Metrics",
                    "Mean difference maps", "Clever-Hans check"):
        assert section in html
    assert html.count("data:image/png;base64,") >= 4
    out = tmp_path / "out"
    for name in ("comparison", "grid-pixel-adam", "mean-maps", "clever-hans-tiny"):
        assert (out / "figures" / f"{name}.png").is_file() and (out / "figures" / f"{name}.pdf").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["metrics"]) == {"pixel adam", "pixel l2"}
    assert "saliency" in summary["clever_hans"]["tiny"]
    cf = summary["clever_hans"]["tiny"]["cf"]
    assert {"off_region", "hotspots", "verification"} <= set(cf) and cf["rule"] == "effect"
    assert summary["clever_hans"]["tiny"]["saliency"]["rule"] == "localisation"  # no counterfactual to paste
    assert {"sufficiency", "control", "interval", "verified"} <= set(cf["verification"])
    assert "tiny: the flow was fitted on the tiny training set" in html and "sufficiency" in html
    assert set(summary["hotspots"]) == {"pixel adam", "pixel l2"}
    assert {"hotspots", "best", "candidates"} <= set(summary["hotspots"]["pixel l2"]["1"])
    assert (out / "metrics.csv").read_text().startswith("method")
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]


def test_unwritable_output_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(PermissionError, match="cannot write to output directory"):
        Report("x").section("a").write(blocker / "sub")


def test_report_is_never_half_written(tmp_path, monkeypatch):
    r = Report("t").section("s").text("hello")
    r.write(tmp_path)
    before = (tmp_path / "report.html").read_text()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        Report("t2").section("other").write(tmp_path)
    assert (tmp_path / "report.html").read_text() == before
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_report_escapes_text(tmp_path):
    html = Report("<b>").section("<i>").text("a < b").table([{"k": "<script>"}]).render()
    assert "<script>" not in html and "&lt;script&gt;" in html
