"""An on-disk store of audit results: one ``.npz`` shard per batch, a manifest, an index.

A dataset-scale audit (:func:`xcf.scale.stream.stream_audit`) writes what it finds batch by batch, so that
memory does not grow with the data set and a killed run loses nothing it finished.  The layout is plain
files a user can open with numpy alone::

    store/
      manifest.json            format, xcf version, the run's configuration and its fingerprint
      shards/batch-000000.npz  one file per global batch (arrays below)
      shards/batch-000001.npz
      checksums/batch-000000.sha256  the shard's sha256 (``sha256sum`` format): the record that it is finished
      .lock                    while a run writes: its pid, host and start time (see :mod:`xcf.scale.lock`)
      index.json               written when every batch is done: rows, first index and sha256 per shard

A shard holds ``index`` (positions in the data set), ``input``, ``target``, ``label`` (``-1`` where the
data set has none) and, for each method ``m`` (its slug, see the manifest's ``methods``),
``m/counterfactual``, ``m/reconstruction``, ``m/latent``, ``m/success``, ``m/steps``, ``m/score``, and
one ``m/<metric>`` per column of :func:`xcf.evaluate.metrics.counterfactual_metrics`.  ``timing/<phase>`` holds
the seconds the batch spent per phase (not part of the results).  Two records let a shard vouch for
itself: ``_batch`` (its batch number) and ``_config_hash`` (sha256 of the manifest's configuration)::

    z = np.load("xcf-audit/store/shards/batch-000000.npz")
    z["diffeomorphic/success"].mean(), z["diffeomorphic/counterfactual"].shape

**Finished means renamed and verified.**  A shard is serialised in memory and its sha256 written
(atomically) to ``checksums/batch-NNNNNN.sha256``; then the shard is written to a temporary name in the
same folder, flushed, ``fsync``-ed and renamed into place with :func:`os.replace` (atomic on POSIX and
Windows).  Leftovers of a killed write (temporary names, a checksum without its shard) are never read and
are removed when the store is opened again; so is a shard without its checksum (not finished).  A shard
counts as finished only when its file hashes to its recorded sha256, it is a readable ``.npz`` whose every
array is intact, it holds the batch its name says and the store's configuration hash.  A shard failing
any of these is never reused nor silently recomputed: :class:`StoreError` names the file and the fault.

**One configuration per store.**  The manifest records the xcf version, the store format and a
configuration (methods, step budget, seed, batch size, data set size and sample shape, target rule, a
hash of every model's parameters...).  Opening a store with a different one raises
:class:`StoreMismatchError` naming the differing keys; results of different runs are never mixed.

**One writer at a time.**  Opening a store for writing takes ``store/.lock`` (:class:`~xcf.scale.lock.StoreLock`),
before anything is checked or cleared; a second writer gets :class:`StoreError` naming the owner.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import weakref
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import numpy as np

from xcf._io import TMP_PREFIX, atomic_write
from xcf._version import __version__
from xcf.scale.integrity import READ_ERRORS, config_hash, npz_fault, sha256_file
from xcf.scale.lock import StoreLock

__all__ = ["FORMAT", "ShardStore", "StoreError", "StoreMismatchError", "StoreWriteError"]

#: version of the store layout; a store of another format is refused (2: checksums, batch and config records)
FORMAT = 2

_SHARD = re.compile(r"^batch-(\d{6,})\.npz$")
_SUM = re.compile(r"^batch-(\d{6,})\.sha256$")
#: the arrays a shard carries about itself (slugs never start with "_")
_RECORDS = ("_batch", "_config_hash")


class StoreError(RuntimeError):
    """A store that cannot be used as asked (unreadable, corrupt, incomplete, locked)."""


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
        overwrite: delete an existing store's shards and manifest first instead of resuming (after
            taking the lock: never under another live writer).  Only files this class writes are deleted.
        create: create the store when ``root`` holds none (else raise :class:`StoreError`).
        clean_partial: delete leftovers of killed writes on opening.  Pass ``False`` when other
            processes may be writing to the store at the same time.
        lock: take the store's exclusive lock ``root/.lock`` (released by :meth:`close`, on garbage
            collection and at exit).  Pass ``False`` only for the other processes of the run that holds
            it (the non-zero ranks of a ``torch.distributed`` run).

    Example:
        >>> import pathlib, tempfile
        >>> with ShardStore(pathlib.Path(tempfile.mkdtemp()) / "store", {"steps": 100}, num_batches=3) as store:
        ...     _ = store.write(0, {"index": np.arange(8)})
        ...     store.finished(), store.missing()
        ({0}, [1, 2])
    """

    def __init__(self, root: str | os.PathLike, config: Mapping[str, Any], num_batches: int,
                 overwrite: bool = False, create: bool = True, clean_partial: bool = True, lock: bool = True):
        if num_batches < 0:
            raise ValueError(f"num_batches must be >= 0, got {num_batches}")
        self._paths(Path(root))
        self.num_batches = int(num_batches)
        self.config = _plain(dict(config))
        self.config_hash = config_hash(self.config)
        self.manifest = {"format": FORMAT, "xcf_version": __version__, "num_batches": self.num_batches,
                         "config": self.config, "config_hash": self.config_hash}
        if lock and (create or self.manifest_path.exists()):
            self._lock = StoreLock(self.root / ".lock", StoreError).acquire()  # before anything is cleared
            self._finalizer = weakref.finalize(self, self._lock.release)
        try:
            self._init(overwrite, create, clean_partial)
        except BaseException:
            self.close()
            raise

    def _paths(self, root: Path) -> None:
        self.root = root
        self.shards = root / "shards"
        self.checksums = root / "checksums"
        self.manifest_path = root / "manifest.json"
        self.index_path = root / "index.json"
        self._lock: Optional[StoreLock] = None
        self._finalizer: Optional[weakref.finalize] = None

    def _init(self, overwrite: bool, create: bool, clean_partial: bool) -> None:
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

    def close(self) -> None:
        """Release the lock (if this store holds it); reading stays possible.  Idempotent."""
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> "ShardStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def locked(self) -> bool:
        """Whether this object holds the store's lock."""
        return self._lock is not None and self._lock.held

    # ----------------------------------------------------------------------------- opening, checking
    @classmethod
    def open(cls, root: str | os.PathLike) -> "ShardStore":
        """An existing store, read-only use (its own manifest is the configuration; no lock)."""
        path = Path(root) / "manifest.json"
        try:
            manifest = json.loads(path.read_text())
        except FileNotFoundError:
            raise StoreError(f"{root} is not an xcf store (no manifest.json)") from None
        except (OSError, ValueError) as e:
            raise StoreError(f"cannot read {path}: {e}") from e
        store = cls.__new__(cls)
        store._paths(Path(root))
        store.manifest = manifest
        store.config = manifest.get("config", {})
        store.config_hash = config_hash(store.config)
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

    def checksum_path(self, batch: int) -> Path:
        return self.checksums / f"batch-{batch:06d}.sha256"

    def _final(self, folder: Path, pattern: re.Pattern) -> dict[int, Path]:
        if not folder.is_dir():
            return {}
        return {int(m.group(1)): p for p in folder.iterdir() if (m := pattern.match(p.name))}

    def _final_shards(self) -> dict[int, Path]:
        return self._final(self.shards, _SHARD)

    def remove_partial(self) -> int:
        """Delete leftovers of interrupted writes: temporary files, checksums without their shard and
        shards without their checksum (a write cut between the two); returns how many."""
        n = 0
        for folder in (self.shards, self.checksums):
            if folder.is_dir():
                for p in folder.iterdir():
                    if p.name.startswith(TMP_PREFIX):
                        p.unlink(missing_ok=True)
                        n += 1
        shards, sums = self._final_shards(), self._final(self.checksums, _SUM)
        for p in [p for b, p in shards.items() if b not in sums] + [p for b, p in sums.items() if b not in shards]:
            p.unlink(missing_ok=True)
            n += 1
        return n

    def _recorded(self, batch: int) -> Optional[str]:
        """The sha256 recorded when ``batch`` was written, ``None`` when there is no record (unfinished)."""
        path = self.checksum_path(batch)
        try:
            digest = path.read_text().split()[0] if path.stat().st_size else ""
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as e:
            raise self._fault(batch, [f"has an unreadable checksum record {path.name} ({e})"]) from e
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise self._fault(batch, [f"has a malformed checksum record checksums/{path.name}"])
        return digest

    def _fault(self, batch: int, faults: list[str]) -> StoreError:
        return StoreError(
            f"{self.shard_path(batch)} " + "; ".join(faults) + ". This shard is neither reused nor silently "
            f"recomputed: delete that file to recompute batch {batch}, or pass overwrite to start the store afresh")

    def _record_faults(self, batch: int, z: Any) -> list[str]:
        if not all(k in z.files for k in _RECORDS):
            return ["has no batch and configuration records (not written by this store format)"]
        faults = []
        held = int(z["_batch"])
        if held != batch:
            faults.append(f"holds batch {held} (copied or renamed from another batch?)")
        if str(z["_config_hash"]) != self.config_hash:
            faults.append(f"was written under another configuration (config hash {str(z['_config_hash'])[:12]}..., "
                          f"this store's {self.config_hash[:12]}...)")
        return faults

    def _verify(self, batch: int, path: Path) -> bool:
        """``True`` if finished and intact, ``False`` if unfinished (no checksum); raises if it is faulty."""
        recorded = self._recorded(batch)
        if recorded is None:
            return False
        faults = []
        broken = npz_fault(path)
        if broken is not None:
            faults.append(f"is not a readable .npz archive ({broken})")
        else:
            try:
                with np.load(path, allow_pickle=False) as z:
                    faults += self._record_faults(batch, z)
            except READ_ERRORS as e:
                faults.append(f"is not a readable .npz archive ({type(e).__name__}: {e})")
        try:
            if sha256_file(path) != recorded:
                faults.append("has a checksum that does not match the one recorded when it was written "
                              "(edited or corrupted)")
        except OSError as e:
            faults.append(f"cannot be read ({e})")
        if faults:
            raise self._fault(batch, faults)
        return True

    def finished(self) -> set[int]:
        """Batches whose shard is finished and verified (checksum, readable arrays, batch and configuration).

        A shard without its checksum record is unfinished (a write cut by a kill).  A faulty one raises
        :class:`StoreError` naming the file and the fault."""
        done = set()
        for batch, path in sorted(self._final_shards().items()):
            if batch >= self.num_batches:
                raise StoreError(f"{path} is batch {batch} but the run has {self.num_batches} batches")
            if self._verify(batch, path):
                done.add(batch)
        return done

    def write(self, batch: int, arrays: Mapping[str, np.ndarray]) -> Path:
        """Write batch ``batch`` atomically, checksum first.  Raises :class:`StoreWriteError` on any OS error."""
        if not 0 <= batch < self.num_batches:
            raise ValueError(f"batch {batch} outside [0, {self.num_batches})")
        if any(k.startswith("_") for k in arrays):
            raise ValueError(f"array names starting with '_' are the store's own: {[k for k in arrays if k[:1] == '_']}")
        path, record = self.shard_path(batch), self.checksum_path(batch)
        try:
            buf = io.BytesIO()
            np.savez(buf, **arrays, _batch=np.int64(batch), _config_hash=np.array(self.config_hash))
            data = buf.getvalue()
            del buf
            path.unlink(missing_ok=True)  # a rewrite cut half-way must read as unfinished, never as edited
            record.unlink(missing_ok=True)
            digest = hashlib.sha256(data).hexdigest()
            atomic_write(record, lambda fh: fh.write(f"{digest}  {path.name}\n".encode()))
            atomic_write(path, lambda fh: fh.write(data))
        except OSError as e:
            what = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
            done = len(self._final_shards())
            raise StoreWriteError(
                e.errno, f"could not write {path.name} to {self.shards}: {what}. The {done} finished shards are "
                "intact and the partial file was removed; fix the cause and run the same command again to resume"
            ) from e
        return path

    def read(self, batch: int) -> dict[str, np.ndarray]:
        """The arrays of batch ``batch`` (verified, loaded into memory; without the ``_`` records)."""
        path = self.shard_path(batch)
        if not path.exists() or not self._verify(batch, path):
            raise StoreError(f"batch {batch} is not finished ({path} or its checksum record is missing)")
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files if k not in _RECORDS}
        except READ_ERRORS as e:
            raise self._fault(batch, [f"is not a readable .npz archive ({type(e).__name__}: {e})"]) from e

    def iter_batches(self) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """``(batch, arrays)`` in batch order, one shard in memory at a time (each verified as read)."""
        sums = self._final(self.checksums, _SUM)
        for batch in sorted(b for b in self._final_shards() if b in sums):
            yield batch, self.read(batch)

    def missing(self) -> list[int]:
        done = self.finished()
        return [b for b in range(self.num_batches) if b not in done]

    def write_index(self) -> Path:
        """``index.json``: per shard its rows, first data-set index and sha256 (every batch must be done)."""
        missing = self.missing()  # verifies every shard
        if missing:
            raise StoreError(f"{len(missing)} batches are not finished (first: {missing[:5]}); cannot index")
        entries = []
        for batch in range(self.num_batches):
            path = self.shard_path(batch)
            with np.load(path, allow_pickle=False) as z:
                index = z["index"]
            entries.append({"batch": batch, "file": f"shards/{path.name}", "rows": int(index.shape[0]),
                            "first_index": int(index[0]) if index.size else None,
                            "sha256": self._recorded(batch)})
        payload = {"format": FORMAT, "rows": sum(e["rows"] for e in entries), "shards": entries}
        atomic_write(self.index_path, lambda fh: fh.write(json.dumps(payload, indent=1).encode()))
        return self.index_path

    def clear(self) -> None:
        """Delete the files a store writes (shards, checksums, temporaries, manifest, index), nothing else
        (not the lock)."""
        for folder, pattern in ((self.shards, _SHARD), (self.checksums, _SUM)):
            if folder.is_dir():
                for p in folder.iterdir():
                    if pattern.match(p.name) or p.name.startswith(TMP_PREFIX):
                        p.unlink()
        for p in (self.manifest_path, self.index_path, *self.root.glob("timing-rank*.json")):
            p.unlink(missing_ok=True)

    def __repr__(self) -> str:
        return f"ShardStore({str(self.root)!r}, batches={self.num_batches})"
