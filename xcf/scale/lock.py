"""An exclusive lock on a store folder: one writing run at a time.

:class:`~xcf.scale.store.ShardStore` takes ``store/.lock`` when it is opened for writing.  The file is
created atomically (``os.open(..., O_CREAT | O_EXCL)``) and holds JSON naming its owner (pid, host, start
time, a random token).  It is deleted by :meth:`StoreLock.release`, which the store calls on ``close()``,
when it is garbage collected and at interpreter exit.  A lock left by a killed run (same host, its pid no
longer alive) is *stale*: the next run takes it over with a warning.  A live lock, or one from another
host (whose pid cannot be checked), makes the second writer fail with a ``StoreError`` naming the owner.
The lock belongs to a process: opening the same store again in the process that holds it shares the lock
(counted; the file goes with the last release).
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

__all__ = ["StoreLock"]

#: the locks this process holds: resolved path -> [token, holders] (our pid with another token: a leftover)
_HELD: dict[str, list] = {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except (OSError, OverflowError, ValueError):
        return False
    return True


class StoreLock:
    """The lock file ``path``; ``error`` builds the exception raised when another writer holds it."""

    def __init__(self, path: str | os.PathLike, error: Callable[[str], Exception] = RuntimeError):
        self.path = Path(path)
        self.key = str(self.path.absolute())
        self.error = error
        self.token: Optional[str] = None

    @property
    def held(self) -> bool:
        return self.token is not None

    def _owner(self) -> Optional[dict[str, Any]]:
        """The lock's JSON, ``None`` when the file is gone; waits briefly for a writer still filling it."""
        for attempt in range(20):
            try:
                text = self.path.read_text()
            except FileNotFoundError:
                return None
            try:
                owner = json.loads(text)
                if isinstance(owner, dict):
                    return owner
            except ValueError:
                pass
            time.sleep(0.05)
        return {"pid": "?", "host": "?", "started": "?", "unreadable": text[:80]}

    def _describe(self, owner: dict[str, Any]) -> str:
        return (f"{self.path.parent} is locked by pid {owner.get('pid')} on host {owner.get('host')} since "
                f"{owner.get('started')}: another run is writing to this store. Wait for it to finish or use "
                f"another output folder; if no such run is alive, delete {self.path}")

    def _stale(self, owner: dict[str, Any]) -> bool:
        pid = owner.get("pid")
        if owner.get("host") != socket.gethostname() or not isinstance(pid, int):
            return False
        if pid == os.getpid():  # our pid, but not a lock of this process: pid reused by a restart
            return owner.get("token") not in {t for t, _ in _HELD.values()}
        return not _alive(pid)

    def acquire(self) -> "StoreLock":
        """Take the lock (taking over a stale one with a warning) or raise ``error``."""
        if self.held:
            return self
        shared = _HELD.get(self.key)
        if shared is not None and self._owner_token() == shared[0]:  # this process holds it already
            shared[1] += 1
            self.token = shared[0]
            return self
        token = uuid.uuid4().hex
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "token": token}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(10):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is None:
                    continue  # released meanwhile: try again
                if not self._stale(owner):
                    raise self.error(self._describe(owner)) from None
                self._take_over(owner)
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(record))
                fh.flush()
                os.fsync(fh.fileno())
            self.token = token
            _HELD[self.key] = [token, 1]
            return self
        raise self.error(f"could not take the lock {self.path} (other runs keep taking it)")

    def _take_over(self, owner: dict[str, Any]) -> None:
        # Move the stale file aside under a unique name: of two runs taking over at once only one moves it.
        aside = self.path.with_name(f"{self.path.name}.stale-{uuid.uuid4().hex}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        try:
            moved = json.loads(aside.read_text())
        except (OSError, ValueError):
            moved = None
        if moved is not None and moved != owner:  # we moved a live lock another run just took: put it back
            try:
                os.link(aside, self.path)
            except OSError:
                pass
        else:
            warnings.warn(f"taking over the stale lock {self.path} of pid {owner.get('pid')} on host "
                          f"{owner.get('host')} (since {owner.get('started')}): that process is no longer "
                          "running (killed?)", RuntimeWarning, stacklevel=4)
        aside.unlink(missing_ok=True)

    def _owner_token(self) -> Optional[str]:
        try:
            owner = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return owner.get("token") if isinstance(owner, dict) else None

    def release(self) -> None:
        """Give the lock up; the file is deleted by the last holder in this process (idempotent)."""
        token, self.token = self.token, None
        if token is None:
            return
        shared = _HELD.get(self.key)
        if shared is not None and shared[0] == token:
            shared[1] -= 1
            if shared[1] > 0:
                return
            del _HELD[self.key]
        if self._owner_token() == token:
            self.path.unlink(missing_ok=True)
