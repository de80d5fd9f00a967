"""The shard store: atomic shards, resume bookkeeping, refusing foreign stores, disk-full errors."""

import errno
import hashlib
import json

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
