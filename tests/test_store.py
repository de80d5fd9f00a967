"""The shard store: atomic shards, resume bookkeeping, refusing foreign stores, disk-full errors."""

import errno
import hashlib
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import xcf.scale.store
from xcf._io import fingerprint_modules, slug
from xcf.scale.store import ShardStore, StoreError, StoreMismatchError, StoreWriteError


def _arrays(b, rows=4):
    return {"index": np.arange(b * rows, (b + 1) * rows), "m/success": np.ones(rows, dtype=bool)}


def test_round_trip_is_plain_numpy(tmp_path):
    store = ShardStore(tmp_path / "s", {"steps": 10}, num_batches=3)
    store.write(1, _arrays(1))
    assert store.finished() == {1} and store.missing() == [0, 2]
    with np.load(tmp_path / "s" / "shards" / "batch-000001.npz") as z:  # numpy alone opens it
        assert z["index"].tolist() == [4, 5, 6, 7] and z["m/success"].all()
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["config"] == {"steps": 10} and manifest["num_batches"] == 3


def test_reopening_with_the_same_config_resumes(tmp_path):
    ShardStore(tmp_path, {"steps": 10, "shape": (1, 2)}, 2).write(0, _arrays(0))
    again = ShardStore(tmp_path, {"steps": 10, "shape": (1, 2)}, 2)  # the tuple comes back as a list: same
    assert again.finished() == {0}


def test_partial_writes_are_never_finished_and_are_removed(tmp_path):
    store = ShardStore(tmp_path, {}, 4)
    store.write(0, _arrays(0))
    leftover = store.shards / ".tmp-batch-000001.npz.abc123"  # what a killed write leaves behind
    leftover.write_bytes(b"PK\x03\x04 half a zip")
    assert store.finished() == {0}
    ShardStore(tmp_path, {}, 4)
    assert not leftover.exists()


def test_an_interrupted_write_leaves_no_file(tmp_path, monkeypatch):
    store = ShardStore(tmp_path, {}, 2)

    def dies_half_way(fh, **arrays):
        fh.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(xcf.scale.store.np, "savez", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        store.write(1, _arrays(1))
    assert list(store.shards.iterdir()) == [] and store.finished() == set()


def test_disk_full_is_a_clear_error_and_keeps_finished_shards(tmp_path, monkeypatch):
    store = ShardStore(tmp_path, {}, 3)
    store.write(0, _arrays(0))

    def full(fh, **arrays):
        fh.write(b"PK")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(xcf.scale.store.np, "savez", full)
    with pytest.raises(StoreWriteError, match="the disk is full.*1 finished shards are intact.*resume") as info:
        store.write(1, _arrays(1))
    assert info.value.errno == errno.ENOSPC
    assert sorted(p.name for p in store.shards.iterdir()) == ["batch-000000.npz"]


def test_a_corrupt_finished_shard_is_reported_not_trusted(tmp_path):
    store = ShardStore(tmp_path, {}, 2)
    store.write(0, _arrays(0))
    path = store.shard_path(0)
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(StoreError, match="batch-000000.npz is not a readable .npz"):
        store.finished()


@pytest.mark.parametrize("change, message", [
    (lambda m: m["config"].update(steps=99), "steps = 99 \\(this run: 10\\)"),
    (lambda m: m.update(xcf_version="0.0.1"), "xcf version '0.0.1'"),
    (lambda m: m.update(format=0), "store format 0"),
    (lambda m: m.update(num_batches=7), "num_batches 7"),
])
def test_another_configuration_or_version_is_refused(tmp_path, change, message):
    ShardStore(tmp_path, {"steps": 10}, 2).write(0, _arrays(0))
    path = tmp_path / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(StoreMismatchError, match="refusing to mix results.*" + message):
        ShardStore(tmp_path, {"steps": 10}, 2)


def test_overwrite_deletes_only_store_files(tmp_path):
    ShardStore(tmp_path, {"steps": 10}, 2).write(0, _arrays(0))
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "shards" / "mine.csv").write_text("mine")
    store = ShardStore(tmp_path, {"steps": 20}, 2, overwrite=True)
    assert store.finished() == set()
    assert (tmp_path / "notes.txt").exists() and (tmp_path / "shards" / "mine.csv").exists()


def test_shards_without_a_manifest_are_refused(tmp_path):
    (tmp_path / "shards").mkdir()
    np.savez(tmp_path / "shards" / "batch-000000.npz", index=np.arange(2))
    with pytest.raises(StoreError, match="no manifest.json"):
        ShardStore(tmp_path, {}, 2)
    with pytest.raises(StoreError, match="not an xcf store"):
        ShardStore.open(tmp_path / "elsewhere")


def test_index_lists_every_shard_with_its_hash(tmp_path):
    store = ShardStore(tmp_path, {}, 2)
    store.write(0, _arrays(0))
    with pytest.raises(StoreError, match="1 batches are not finished"):
        store.write_index()
    store.write(1, _arrays(1, rows=4))
    index = json.loads(store.write_index().read_text())
    assert index["rows"] == 8 and [e["first_index"] for e in index["shards"]] == [0, 4]
    assert index["shards"][1]["sha256"] == hashlib.sha256(store.shard_path(1).read_bytes()).hexdigest()
    assert ShardStore.open(tmp_path).num_batches == 2


def test_batch_out_of_range(tmp_path):
    with pytest.raises(ValueError, match="batch 2 outside"):
        ShardStore(tmp_path, {}, 2).write(2, _arrays(2))


def test_fingerprint_follows_the_weights():
    torch.manual_seed(0)
    a = nn.Linear(3, 2)
    b = nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    assert fingerprint_modules(a) == fingerprint_modules(b) == fingerprint_modules(b.forward)
    with torch.no_grad():
        b.bias[0] += 1e-6
    assert fingerprint_modules(a) != fingerprint_modules(b)
    bn = nn.BatchNorm1d(2)  # 0-dim buffer (num_batches_tracked)
    assert len(fingerprint_modules(bn)) == 16


def test_slug():
    assert slug("approximate (GAN)") == "approximate-gan"
    with pytest.raises(ValueError, match="no letters or digits"):
        slug("()")


# ------------------------------------------------------------------------------- verified shards
def _finished_store(tmp_path, config=None, batches=3):
    store = ShardStore(tmp_path, {"steps": 10} if config is None else config, batches)
    for b in range(batches):
        store.write(b, _arrays(b))
    return store


def test_a_shard_copied_over_another_batch_is_refused(tmp_path):
    store = _finished_store(tmp_path)
    store.shard_path(1).write_bytes(store.shard_path(2).read_bytes())  # cp batch-000002.npz batch-000001.npz
    with pytest.raises(StoreError, match="batch-000001.npz holds batch 2.*delete that file"):
        store.finished()
    with pytest.raises(StoreError, match="batch-000001.npz holds batch 2"):
        ShardStore(tmp_path, {"steps": 10}, 3).missing()  # a rerun of the same command refuses too
    store.checksum_path(1).write_bytes(store.checksum_path(2).read_bytes())  # the checksum copied too
    with pytest.raises(StoreError, match="batch-000001.npz holds batch 2"):
        store.finished()
    with pytest.raises(StoreError, match="batch-000001.npz holds batch 2"):
        list(store.iter_batches())


def test_a_flipped_byte_is_refused_naming_the_checksum(tmp_path):
    store = _finished_store(tmp_path)
    path = store.shard_path(1)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="batch-000001.npz .*checksum that does not match the one recorded"):
        store.finished()
    with pytest.raises(StoreError, match="batch-000001.npz .*checksum"):
        store.read(1)
    assert store.read(0)["index"].tolist() == [0, 1, 2, 3]  # the others stay readable


def test_an_edit_that_keeps_the_npz_valid_is_refused(tmp_path):
    store = _finished_store(tmp_path)
    np.savez(store.shard_path(1), index=np.arange(4, 8), **{"m/success": np.zeros(4, dtype=bool)},
             _batch=np.int64(1), _config_hash=np.array(store.config_hash))
    with pytest.raises(StoreError, match="batch-000001.npz has a checksum that does not match"):
        store.finished()


def test_zeroed_bytes_are_refused_when_resuming_not_at_report_time(tmp_path):
    store = _finished_store(tmp_path)
    path = store.shard_path(2)
    data = bytearray(path.read_bytes())
    start = data.index(b"\x93NUMPY") + 128  # inside the first array's data
    data[start:start + 8] = bytes(8)
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="batch-000002.npz .*checksum"):
        ShardStore(tmp_path, {"steps": 10}, 3).finished()
    with pytest.raises(StoreError, match="batch-000002.npz"):  # the report's reader names the file too
        list(ShardStore.open(tmp_path).iter_batches())


def test_an_unreadable_shard_with_a_matching_checksum_is_refused(tmp_path):
    store = _finished_store(tmp_path)
    path = store.shard_path(0)
    data = path.read_bytes()[:-30]  # truncated, and its record says so: written broken
    path.write_bytes(data)
    store.checksum_path(0).write_text(hashlib.sha256(data).hexdigest() + "  batch-000000.npz\n")
    with pytest.raises(StoreError, match="batch-000000.npz is not a readable .npz archive") as info:
        store.finished()
    assert "checksum" not in str(info.value)


def test_a_shard_of_another_configuration_is_refused(tmp_path):
    other = _finished_store(tmp_path / "other", {"steps": 99})
    store = _finished_store(tmp_path / "mine")
    store.shard_path(1).write_bytes(other.shard_path(1).read_bytes())  # the shard and its checksum copied in
    store.checksum_path(1).write_bytes(other.checksum_path(1).read_bytes())
    with pytest.raises(StoreError, match="batch-000001.npz was written under another configuration"):
        store.finished()


def test_a_shard_without_its_checksum_is_unfinished_and_recomputed(tmp_path):
    store = _finished_store(tmp_path)
    store.checksum_path(1).unlink()  # a kill between the checksum and the shard cannot do this; a copy can
    assert store.finished() == {0, 2}
    del store
    again = ShardStore(tmp_path, {"steps": 10}, 3)  # opening removes it
    assert not again.shard_path(1).exists() and again.missing() == [1]
    again.write(1, _arrays(1))
    assert again.finished() == {0, 1, 2} and again.read(1)["index"].tolist() == [4, 5, 6, 7]


def test_a_checksum_without_its_shard_is_removed(tmp_path):
    store = _finished_store(tmp_path)
    store.shard_path(2).unlink()  # a kill after the checksum, before the shard's rename
    assert store.finished() == {0, 1}
    ShardStore(tmp_path, {"steps": 10}, 3)
    assert not store.checksum_path(2).exists()


def test_shards_carry_their_records_and_read_returns_only_the_results(tmp_path):
    store = _finished_store(tmp_path)
    with np.load(store.shard_path(2)) as z:
        assert int(z["_batch"]) == 2 and str(z["_config_hash"]) == store.config_hash
    assert set(store.read(2)) == {"index", "m/success"}
    assert store.checksum_path(2).read_text().split() == [
        hashlib.sha256(store.shard_path(2).read_bytes()).hexdigest(), "batch-000002.npz"]
    with pytest.raises(ValueError, match="the store's own"):
        store.write(0, {"_batch": np.int64(1)})


# ------------------------------------------------------------------------------------------ lock
def _dead_pid():
    pid = 999_999
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid -= 1


def test_a_second_writer_is_refused_while_the_first_holds_the_lock(tmp_path):
    first = ShardStore(tmp_path, {"steps": 10}, 2)
    assert first.locked and json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    code = ("import sys; from xcf.scale.store import ShardStore, StoreError\n"
            "try:\n    ShardStore(sys.argv[1], {'steps': 10}, 2, overwrite=True)\n"
            "except StoreError as e:\n    print(e); sys.exit(3)\n")
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert run.returncode == 3, run.stdout + run.stderr
    assert f"is locked by pid {os.getpid()} on host {socket.gethostname()} since" in run.stdout
    assert (tmp_path / "manifest.json").exists()  # overwrite did not clear under a live writer
    first.close()
    assert not (tmp_path / ".lock").exists() and not first.locked


def test_a_lock_of_another_live_process_is_refused(tmp_path):
    (tmp_path / ".lock").write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(),
                                                "started": "2024-01-01T00:00:00", "token": "x"}))
    with pytest.raises(StoreError, match=f"locked by pid {os.getppid()} on host .* since 2024-01-01"):
        ShardStore(tmp_path, {}, 2, overwrite=True)
    assert (tmp_path / ".lock").exists() and not (tmp_path / "manifest.json").exists()
    (tmp_path / ".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "t", "token": "y"}))
    with pytest.raises(StoreError, match="locked by pid 1 on host elsewhere"):  # cannot check: never stale
        ShardStore(tmp_path, {}, 2)


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path):
    pid = _dead_pid()
    (tmp_path / ".lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname(),
                                                "started": "2024-01-01T00:00:00", "token": "old"}))
    with pytest.warns(RuntimeWarning, match=f"stale lock .* of pid {pid}"):
        store = ShardStore(tmp_path, {}, 2)
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    store.close()
    assert not (tmp_path / ".lock").exists()


def test_other_ranks_join_without_the_lock(tmp_path):
    with ShardStore(tmp_path, {"steps": 10}, 4) as rank0:
        rank1 = ShardStore(tmp_path, {"steps": 10}, 4, create=False, clean_partial=False, lock=False)
        assert rank0.locked and not rank1.locked
        rank0.write(0, _arrays(0))
        rank1.write(1, _arrays(1))
        assert rank1.finished() == rank0.finished() == {0, 1}
        rank1.close()
        assert (tmp_path / ".lock").exists()  # rank 1 does not release rank 0's lock
    assert not (tmp_path / ".lock").exists()


def test_the_lock_is_released_when_the_store_is_dropped(tmp_path):
    ShardStore(tmp_path, {}, 2).write(0, _arrays(0))
    assert not (tmp_path / ".lock").exists()


def test_stream_audit_releases_the_lock_when_it_returns_and_when_it_raises(tmp_path):
    from xcf import AdversarialCounterfactual
    from xcf.scale.stream import stream_audit

    clf = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()
    data = torch.utils.data.TensorDataset(torch.rand(4, 1, 2, 2), torch.zeros(4, dtype=torch.long))
    outcome = stream_audit(clf, data, 1, {"adversarial": AdversarialCounterfactual(clf)}, tmp_path / "ok",
                           batch_size=2, steps=3)
    assert outcome.computed == [0, 1] and not (tmp_path / "ok" / "store" / ".lock").exists()

    def broken(x):
        raise RuntimeError("classifier down")

    with pytest.raises(RuntimeError, match="classifier down"):
        stream_audit(broken, data, 1, {"adversarial": AdversarialCounterfactual(broken)}, tmp_path / "bad",
                     batch_size=2, steps=3)
    assert (tmp_path / "bad" / "store" / "manifest.json").exists()
    assert not (tmp_path / "bad" / "store" / ".lock").exists()
