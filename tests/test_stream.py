"""Dataset-scale audits: streaming, resume after a kill, 2-process gloo equals 1 process, flat memory."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from stream_job import Synthetic, models
from stream_job import main as job_main
from torch.utils.data import Dataset, IterableDataset, TensorDataset

from xcf import AdversarialCounterfactual
from xcf.apps.audit import audit
from xcf.scale.precision import accelerate
from xcf.scale.store import ShardStore, StoreMismatchError
from xcf.scale.stream import shift_target, stream_audit
from xcf.scale.summary import summarise_store

JOB = str(Path(__file__).with_name("stream_job.py"))
TIMING = ("time_ms",)  # wall-clock metrics: the only entries allowed to differ between equal runs


def _shards(out):
    return {p.name: dict(np.load(p)) for p in sorted((Path(out) / "store" / "shards").glob("batch-*.npz"))}


def assert_same_results(a, b, exact=True):
    sa, sb = _shards(a), _shards(b)
    assert sa.keys() == sb.keys() and sa
    for name in sa:
        assert sa[name].keys() == sb[name].keys()
        for key in sa[name]:
            if key.split("/")[-1] in TIMING:
                continue
            if exact:
                np.testing.assert_array_equal(sa[name][key], sb[name][key], err_msg=f"{name}:{key}")
            else:
                np.testing.assert_allclose(sa[name][key], sb[name][key], rtol=1e-5, atol=1e-5, err_msg=f"{name}:{key}")


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(Path(JOB).parent), *sys.path]))
    return env


def _audit(out, data=None, **kw):
    clf, _ = models(4)
    data = Synthetic(20, 4) if data is None else data
    kw.setdefault("train", (torch.rand(30, 1, 4, 4, generator=torch.Generator().manual_seed(1)), torch.arange(30) % 3))
    return audit(clf, data, shift_target(1, 3), {"adversarial": AdversarialCounterfactual(clf)}, out,
                 batch_size=kw.pop("batch_size", 6), steps=kw.pop("steps", 20), **kw)


# ---------------------------------------------------------------------------------------- in process
def test_stream_writes_every_batch_and_a_merged_report(tmp_path):
    outcome = _audit(tmp_path)
    assert outcome.computed == [0, 1, 2, 3] and outcome.skipped == []
    shards = _shards(tmp_path)
    assert [s["index"].tolist() for s in shards.values()][-1] == [18, 19]  # the last batch is short
    index = np.concatenate([s["index"] for s in shards.values()])
    assert index.tolist() == list(range(20))
    success = np.concatenate([s["adversarial/success"] for s in shards.values()])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["images"] == 20
    assert summary["metrics"]["adversarial"]["success"] == pytest.approx(success.mean())
    assert (tmp_path / "report.html").read_text().count("<img") >= 3
    assert set(summary["throughput"]["shares"]) == {"data", "search", "metrics", "write"}
    assert (tmp_path / "store" / "index.json").is_file()


def test_streamed_results_equal_the_explainer_on_the_whole_set(tmp_path):
    """Batching is an implementation detail: per-sample results do not depend on the batch they ran in."""
    _audit(tmp_path, batch_size=6)
    clf, _ = models(4)
    data = Synthetic(20, 4)
    x = torch.stack([data[i][0] for i in range(20)])
    y = torch.tensor([data[i][1] for i in range(20)])
    whole = AdversarialCounterfactual(clf).counterfactual(x, (y + 1) % 3, steps=20)
    shards = _shards(tmp_path)
    cf = np.concatenate([s["adversarial/counterfactual"] for s in shards.values()])
    np.testing.assert_allclose(cf, whole.counterfactual.numpy(), atol=1e-5)
    steps = np.concatenate([s["adversarial/steps"] for s in shards.values()])
    np.testing.assert_array_equal(steps, whole.steps.numpy())


def test_chunked_runs_resume_and_equal_one_run(tmp_path):
    first = _audit(tmp_path / "a", max_batches=1)
    assert first.computed == [0] and first.report is None and first.summary["complete"] is False
    second = _audit(tmp_path / "a", max_batches=2)
    assert second.computed == [1, 2] and second.skipped == [0]
    third = _audit(tmp_path / "a")
    assert third.computed == [3] and third.report is not None
    _audit(tmp_path / "b")
    assert_same_results(tmp_path / "a", tmp_path / "b")
    a = json.loads((tmp_path / "a" / "summary.json").read_text())["metrics"]
    b = json.loads((tmp_path / "b" / "summary.json").read_text())["metrics"]
    assert {k: v for k, v in a["adversarial"].items() if k != "time_ms"} == \
           {k: v for k, v in b["adversarial"].items() if k != "time_ms"}
    assert _audit(tmp_path / "b").computed == []  # nothing left to do: nothing recomputed


def test_another_configuration_is_refused_and_overwrite_restarts(tmp_path):
    _audit(tmp_path, max_batches=1)
    with pytest.raises(StoreMismatchError, match="steps = 20 \\(this run: 5\\)"):
        _audit(tmp_path, steps=5)
    clf, _ = models(4)
    with torch.no_grad():
        clf[1].bias[0] += 0.1
    with pytest.raises(StoreMismatchError, match="models"):
        stream_audit(clf, Synthetic(20, 4), shift_target(1, 3), {"adversarial": AdversarialCounterfactual(clf)},
                     tmp_path, batch_size=6, steps=20,
                     train=(torch.rand(30, 1, 4, 4, generator=torch.Generator().manual_seed(1)), torch.arange(30) % 3))
    assert _audit(tmp_path, steps=5, overwrite=True).computed == [0, 1, 2, 3]


class _Ragged(Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, i):
        side = 4 if i < 7 else 5
        return torch.zeros(1, side, side), 0


def test_inconsistent_shapes_are_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="batch 1 \\(items 6..9\\): item 1 of the batch has shape \\(1, 5, 5\\).*inconsistent"):
        _audit(tmp_path, data=_Ragged())
    assert ShardStore.open(tmp_path / "store").finished() == {0}  # what was finished stays


def test_non_finite_inputs_name_the_item(tmp_path):
    x = torch.rand(12, 1, 4, 4)
    x[8, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="batch 1: item 8 has NaN"):
        _audit(tmp_path, data=TensorDataset(x, torch.zeros(12, dtype=torch.long)))


def test_bad_data_sets_and_arguments(tmp_path):
    class Stream(IterableDataset):
        def __iter__(self):
            yield torch.zeros(1, 4, 4)

    with pytest.raises(TypeError, match="map-style data set"):
        _audit(tmp_path, data=Stream())
    with pytest.raises(ValueError, match="the data set is empty"):
        _audit(tmp_path, data=TensorDataset(torch.zeros(0, 1, 4, 4), torch.zeros(0)))
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        _audit(tmp_path, batch_size=0)
    with pytest.raises(ValueError, match="needs labels"):
        _audit(tmp_path / "u", data=TensorDataset(torch.rand(4, 1, 4, 4)))


def test_models_are_left_as_found(tmp_path):
    clf, _ = models(4)
    before = {k: v.clone() for k, v in clf.state_dict().items()}
    flags = [p.requires_grad for p in clf.parameters()]
    stream_audit(clf, Synthetic(8, 4), 2, {"adversarial": AdversarialCounterfactual(clf)}, tmp_path,
                 batch_size=4, steps=5)
    assert all(torch.equal(before[k], v) for k, v in clf.state_dict().items())
    assert [p.requires_grad for p in clf.parameters()] == flags and not clf.training
    assert all(p.grad is None for p in clf.parameters())


def test_summarise_a_store_again(tmp_path):
    _audit(tmp_path)
    again = summarise_store(ShardStore.open(tmp_path / "store"))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert again.images == 20 and "adversarial" in again.table.rows
    for method, row in again.table.to_dict().items():  # the store alone gives the report's numbers
        assert row == pytest.approx(summary["metrics"][method])


def test_accelerate_bf16_keeps_the_model_and_returns_float(tmp_path):
    clf, _ = models(4)
    fast = accelerate(clf, "bf16")
    out = fast(torch.rand(3, 1, 4, 4))
    assert out.dtype == torch.float32 and not fast.training and fast.model is clf
    torch.testing.assert_close(out, clf(torch.rand(3, 1, 4, 4)) * 0 + out)
    with pytest.raises(ValueError, match="precision must be"):
        accelerate(clf, "fp8")


# ---------------------------------------------------------------------------------------- processes
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_resume_after_kill_equals_an_uninterrupted_run(tmp_path):
    job_main([str(tmp_path / "whole"), "--images", "40", "--batch-size", "8"])
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, JOB, str(killed), "--images", "40", "--batch-size", "8", "--sleep", "3"],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    shards = killed / "store" / "shards"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(shards.glob("batch-*.npz"))) < 2 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = sorted(p.name for p in shards.glob("batch-*.npz"))
    assert 2 <= len(done_before) < 5, done_before
    (shards / ".tmp-batch-000004.npz.killed").write_bytes(b"PK\x03\x04 half-written")  # a write the kill cut
    assert not (killed / "report.html").exists()
    rerun = subprocess.run([sys.executable, JOB, str(killed), "--images", "40", "--batch-size", "8"], env=_env(),
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"computed {5 - len(done_before)} skipped {len(done_before)}" in rerun.stdout
    assert not list(shards.glob(".tmp-*"))
    assert_same_results(killed, tmp_path / "whole")


@pytest.mark.slow
def test_two_gloo_processes_equal_one(tmp_path):
    job_main([str(tmp_path / "one"), "--images", "40", "--batch-size", "8"])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), JOB, str(tmp_path / "two"),
           "--images", "40", "--batch-size", "8"]
    run = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert sorted(line for line in run.stdout.splitlines() if line.startswith("computed")) == \
        ["computed 2 skipped 0", "computed 3 skipped 0"]
    timing = json.loads((tmp_path / "two" / "summary.json").read_text())["throughput"]
    assert timing["processes"] == 2 and timing["images"] == 40
    assert_same_results(tmp_path / "one", tmp_path / "two")
    one = json.loads((tmp_path / "one" / "summary.json").read_text())["metrics"]
    two = json.loads((tmp_path / "two" / "summary.json").read_text())["metrics"]
    for method in one:
        for metric, value in one[method].items():
            if metric not in TIMING:
                assert two[method][metric] == pytest.approx(value, rel=1e-12, abs=1e-12), (method, metric)


def _peak_rss_mb(out, n):
    code = ("import resource, sys; sys.argv = sys.argv[1:]; from stream_job import main; main(); "
            "print('peak_rss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    run = subprocess.run([sys.executable, "-c", code, "job", str(out), "--images", str(n), "--batch-size", "50",
                          "--pixels", "64", "--steps", "3"], env=_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    return int(run.stdout.split("peak_rss_kb")[1].split()[0]) / 1024


@pytest.mark.slow
def test_memory_stays_flat_with_ten_times_the_images(tmp_path):
    """1x64x64 inputs: keeping inputs, counterfactuals and reconstructions of 2,000 images would take
    3 x 2,000 x 16 KiB = 94 MiB more than for 200; streaming keeps one batch of 50."""
    small = _peak_rss_mb(tmp_path / "small", 200)
    large = _peak_rss_mb(tmp_path / "large", 2000)
    assert large - small < 30, (small, large)
    assert json.loads((tmp_path / "large" / "summary.json").read_text())["images"] == 2000
