"""An on-disk store of audit results: one ``.npz`` shard per batch, a manifest, an index.

A dataset-scale audit (:func:`xcf.scale.stream.stream_audit`) writes what it finds batch by batch, so that
memory does not grow with the data set and a killed run loses nothing it finished.  The layout is plain
files a user can open with numpy alone::

    store/
      manifest.json            format, xcf version, the run's configuration and its fingerprint
      shards/batch-000000.npz  one file per global batch (arrays below)
      shards/batch-000001.npz
      index.json               written when every batch is done: rows, first index and sha256 per shard

A shard holds ``index`` (positions in the data set), ``input``, ``target``, ``label`` (``-1`` where the
data set has none) and, for each method ``m`` (its slug, see the manifest's ``methods``),
``m/counterfactual``, ``m/reconstruction``, ``m/latent``, ``m/success``, ``m/steps``, ``m/score``, and
one ``m/<metric>`` per column of :func:`xcf.evaluate.metrics.counterfactual_metrics`.  ``timing/<phase>`` holds
the seconds the batch spent per phase (not part of the results)::

    z = np.load("xcf-audit/store/shards/batch-000000.npz")
    z["diffeomorphic/success"].mean(), z["diffeomorphic/counterfactual"].shape

**Finished means renamed.**  A shard is written to a temporary name in the same folder, flushed and
``fsync``-ed, then renamed into place with :func:`os.replace` (atomic on POSIX and Windows).  A file with
the final name is therefore complete; leftovers of a killed write keep their temporary name, are never
read, and are removed when the store is opened again.

**One configuration per store.**  The manifest records the xcf version, the store format and a
configuration (methods, step budget, seed, batch size, data set size and sample shape, target rule, a
hash of every model's parameters...).  Opening a store with a different one raises
:class:`StoreMismatchError` naming the differing keys; results of different runs are never mixed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import zipfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from xcf._io import (
    TMP_PREFIX,
    atomic_write,
)
from xcf._version import __version__

__all__ = [
    "FORMAT",
    "ShardStore",
    "StoreError",
    "StoreMismatchError",
    "StoreWriteError",
]

#: version of the store layout; a store of another format is refused
FORMAT = 1

_SHARD = re.compile(r"^batch-(\d{6,})\.npz$")


class StoreError(RuntimeError):
    """A store that cannot be used as asked (unreadable, corrupt, incomplete)."""


class StoreMismatchError(StoreError):
    """The store was written by another xcf version, store format or configuration."""


class StoreWriteError(OSError):
    """Writing a shard failed (disk full, permissions...); finished shards are intact."""


def _plain(value: Any) -> Any:
    """JSON round-trip: what the manifest will read back (tuples become lists...)."""
    return json.loads(json.dumps(value, default=str))


class ShardStore:
    """The on-disk results of one audit configuration (see the module docstring for the layout).

    Args:
        root: the store folder (created).
        config: plain values that determine the results (JSON-serialisable).  Opening an existing
            store with a different ``config``, xcf version or format raises :class:`StoreMismatchError`.
        num_batches: number of global batches of the run (part of the configuration).
        overwrite: delete an existing store's shards and manifest first instead of resuming.
            Only files this class writes are deleted.
        create: create the store when ``root`` holds none (else raise :class:`StoreError`).
        clean_partial: delete leftovers of killed writes on opening.  Pass ``False`` when other
            processes may be writing to the store at the same time.

    Example:
        >>> import pathlib, tempfile
        >>> store = ShardStore(pathlib.Path(tempfile.mkdtemp()) / "store", {"steps": 100}, num_batches=3)
        >>> _ = store.write(0, {"index": np.arange(8)})
        >>> store.finished(), store.missing()
        ({0}, [1, 2])
    """

    def __init__(self, root: str | os.PathLike, config: Mapping[str, Any], num_batches: int,
                 overwrite: bool = False, create: bool = True, clean_partial: bool = True):
        if num_batches < 0:
            raise ValueError(f"num_batches must be >= 0, got {num_batches}")
        self.root = Path(root)
        self.shards = self.root / "shards"
        self.manifest_path = self.root / "manifest.json"
        self.index_path = self.root / "index.json"
        self.num_batches = int(num_batches)
        self.config = _plain(dict(config))
        self.manifest = {"format": FORMAT, "xcf_version": __version__, "num_batches": self.num_batches,
                         "config": self.config}
        if overwrite:
            self.clear()
        if self.manifest_path.exists():
            self._check_manifest()
        elif create:
            self.shards.mkdir(parents=True, exist_ok=True)
            stray = self._final_shards()
            if stray:
                raise StoreError(f"{self.shards} holds {len(stray)} shards but no manifest.json: not a store "
                                 "this run can trust; choose another output folder or pass overwrite")
            atomic_write(self.manifest_path, lambda fh: fh.write(json.dumps(self.manifest, indent=2).encode()))
        else:
            raise StoreError(f"{self.root} is not an xcf store (no manifest.json)")
        if clean_partial:
            self.remove_partial()

    # ----------------------------------------------------------------------------- opening, checking
    @classmethod
    def open(cls, root: str | os.PathLike) -> "ShardStore":
        """An existing store, read-only use (its own manifest is the configuration)."""
        path = Path(root) / "manifest.json"
        try:
            manifest = json.loads(path.read_text())
        except FileNotFoundError:
            raise StoreError(f"{root} is not an xcf store (no manifest.json)") from None
        except (OSError, ValueError) as e:
            raise StoreError(f"cannot read {path}: {e}") from e
        store = cls.__new__(cls)
        store.root = Path(root)
        store.shards = store.root / "shards"
        store.manifest_path, store.index_path = path, store.root / "index.json"
        store.manifest = manifest
        store.config = manifest.get("config", {})
        store.num_batches = int(manifest.get("num_batches", 0))
        if manifest.get("format") != FORMAT:
            raise StoreMismatchError(f"{root} has store format {manifest.get('format')!r}; this xcf reads format {FORMAT}")
        return store

    def _check_manifest(self) -> None:
        try:
            old = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError) as e:
            raise StoreError(f"cannot read {self.manifest_path}: {e}; remove the folder or choose another") from e
        why = []
        if old.get("format") != FORMAT:
            why.append(f"store format {old.get('format')!r} (this xcf writes {FORMAT})")
        if old.get("xcf_version") != self.manifest["xcf_version"]:
            why.append(f"xcf version {old.get('xcf_version')!r} (this is {self.manifest['xcf_version']!r})")
        if old.get("num_batches") != self.num_batches:
            why.append(f"num_batches {old.get('num_batches')!r} (this run: {self.num_batches})")
        old_cfg = old.get("config", {})
        for key in sorted(set(old_cfg) | set(self.config)):
            if old_cfg.get(key, "<absent>") != self.config.get(key, "<absent>"):
                why.append(f"{key} = {old_cfg.get(key, '<absent>')!r} (this run: {self.config.get(key, '<absent>')!r})")
        if why:
            raise StoreMismatchError(
                f"the store at {self.root} was written by another configuration, refusing to mix results: "
                + "; ".join(why) + ". Use another output folder, or overwrite to start afresh.")

    # ----------------------------------------------------------------------------------- the shards
    def shard_path(self, batch: int) -> Path:
        return self.shards / f"batch-{batch:06d}.npz"

    def _final_shards(self) -> dict[int, Path]:
        if not self.shards.is_dir():
            return {}
        out = {}
        for p in self.shards.iterdir():
            m = _SHARD.match(p.name)
            if m:
                out[int(m.group(1))] = p
        return out

    def remove_partial(self) -> int:
        """Delete leftovers of interrupted writes (temporary names only); returns how many."""
        n = 0
        if self.shards.is_dir():
            for p in self.shards.iterdir():
                if p.name.startswith(TMP_PREFIX):
                    p.unlink(missing_ok=True)
                    n += 1
        return n

    def finished(self) -> set[int]:
        """Batches whose shard is complete (renamed into place and readable as a zip archive)."""
        done = set()
        for batch, path in self._final_shards().items():
            if batch >= self.num_batches:
                raise StoreError(f"{path} is batch {batch} but the run has {self.num_batches} batches")
            if not zipfile.is_zipfile(path):
                raise StoreError(f"{path} is not a readable .npz archive (corrupted after it was finished?); "
                                 "delete it and run again to recompute that batch")
            done.add(batch)
        return done

    def write(self, batch: int, arrays: Mapping[str, np.ndarray]) -> Path:
        """Write batch ``batch`` atomically.  Raises :class:`StoreWriteError` on any OS error."""
        if not 0 <= batch < self.num_batches:
            raise ValueError(f"batch {batch} outside [0, {self.num_batches})")
        path = self.shard_path(batch)
        try:
            atomic_write(path, lambda fh: np.savez(fh, **arrays))
        except OSError as e:
            what = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
            done = len(self._final_shards())
            raise StoreWriteError(
                e.errno, f"could not write {path.name} to {self.shards}: {what}. The {done} finished shards are "
                "intact and the partial file was removed; fix the cause and run the same command again to resume"
            ) from e
        return path

    def read(self, batch: int) -> dict[str, np.ndarray]:
        """The arrays of batch ``batch`` (loaded into memory)."""
        path = self.shard_path(batch)
        if not path.exists():
            raise StoreError(f"batch {batch} is not finished ({path} is missing)")
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def iter_batches(self) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """``(batch, arrays)`` in batch order, one shard in memory at a time."""
        for batch in sorted(self._final_shards()):
            yield batch, self.read(batch)

    def missing(self) -> list[int]:
        done = self.finished()
        return [b for b in range(self.num_batches) if b not in done]

    def write_index(self) -> Path:
        """``index.json``: per shard its rows, first data-set index and sha256 (every batch must be done)."""
        missing = self.missing()
        if missing:
            raise StoreError(f"{len(missing)} batches are not finished (first: {missing[:5]}); cannot index")
        entries = []
        for batch in range(self.num_batches):
            path = self.shard_path(batch)
            with np.load(path, allow_pickle=False) as z:
                index = z["index"]
            entries.append({"batch": batch, "file": f"shards/{path.name}", "rows": int(index.shape[0]),
                            "first_index": int(index[0]) if index.size else None,
                            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
        payload = {"format": FORMAT, "rows": sum(e["rows"] for e in entries), "shards": entries}
        atomic_write(self.index_path, lambda fh: fh.write(json.dumps(payload, indent=1).encode()))
        return self.index_path

    def clear(self) -> None:
        """Delete the files a store writes (shards, temporaries, manifest, index), nothing else."""
        if self.shards.is_dir():
            for p in self.shards.iterdir():
                if _SHARD.match(p.name) or p.name.startswith(TMP_PREFIX):
                    p.unlink()
        for p in (self.manifest_path, self.index_path, *self.root.glob("timing-rank*.json")):
            p.unlink(missing_ok=True)

    def __repr__(self) -> str:
        return f"ShardStore({str(self.root)!r}, batches={self.num_batches})"
