"""One driver per sweep: a lock file under the storage root, on a local disk or an object store.

``locks/sweep=NAME/driver.json`` names its owner (host, pid, since) and a heartbeat that
the owner refreshes every ``heartbeat_s`` seconds. A second driver on the same sweep is
refused with a message naming the first. A lock whose owner died is taken over: at once
when the owner ran on this host and its pid is gone, else once its heartbeat is older than
``stale_s``.

Taking the lock: on a local filesystem the file is created with ``O_EXCL`` (a stale lock
is replaced by an atomic rename); on object stores, which have no create-if-absent here,
the driver writes its token, waits, and reads it back: of two racing drivers the one whose
token is not there gives up.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from typing import Any

from orchestrator.storage.store import ResultStore

__all__ = ["OrphanedTrialError", "SweepLock", "SweepLockedError", "assert_driver"]


class SweepLockedError(RuntimeError):
    """Another live driver is running this sweep."""


class OrphanedTrialError(RuntimeError):
    """A trial whose driver is gone: another driver holds the sweep now, so it must not write."""


def assert_driver(store: ResultStore, sweep: str, token: str | None) -> None:
    """Fencing for trials: raise :class:`OrphanedTrialError` unless the sweep's lock still
    holds ``token`` (the driver that started this trial). A trial of a SIGKILLed driver
    lives on for seconds (Ray's workers outlast it); checked before each of its writes, this
    keeps it from writing over the trial the next driver resumed under the same id."""
    if not token:
        return
    path = store.lock_path(sweep)
    try:
        owner = json.loads(store.get(path).decode()).get("token")
    except (OSError, ValueError):
        owner = None
    if owner != token:
        raise OrphanedTrialError(
            f"the driver that started this trial of sweep {sweep!r} is gone (its lock is "
            f"{'held by another driver' if owner else 'released'}): stopping without writing"
        )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SweepLock:
    """Context manager holding the sweep's driver lock.

    Example:
        >>> import tempfile
        >>> store = ResultStore(tempfile.mkdtemp())
        >>> with SweepLock(store, "demo"):
        ...     try:
        ...         SweepLock(store, "demo").acquire()
        ...     except SweepLockedError as exc:
        ...         print(str(exc).split(":")[0])
        sweep 'demo' is being run by another driver
    """

    def __init__(
        self,
        store: ResultStore,
        sweep: str,
        heartbeat_s: float = 10.0,
        stale_s: float = 60.0,
        settle_s: float = 1.0,
    ) -> None:
        self.store, self.sweep = store, sweep
        self.path = store.lock_path(sweep)
        self.heartbeat_s, self.stale_s, self.settle_s = heartbeat_s, stale_s, settle_s
        self.token = uuid.uuid4().hex
        self.host, self.pid, self.since = socket.gethostname(), os.getpid(), time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> bytes:
        return json.dumps(
            {
                "token": self.token,
                "host": self.host,
                "pid": self.pid,
                "since": self.since,
                "heartbeat": time.time(),
            }
        ).encode()

    def _read(self) -> dict[str, Any] | None:
        if not self.store.is_file(self.path):
            return None
        try:
            return json.loads(self.store.get(self.path).decode())
        except (ValueError, OSError):
            return {}  # torn or unreadable: treated as stale

    def _stale(self, owner: dict[str, Any]) -> bool:
        if not owner:
            return True
        same_host = owner.get("host") == self.host and isinstance(owner.get("pid"), int)
        if same_host and not _pid_alive(owner["pid"]):
            return True
        return time.time() - float(owner.get("heartbeat", 0)) > self.stale_s

    def _refuse(self, owner: dict[str, Any]) -> SweepLockedError:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(owner.get("since", 0))))
        age = time.time() - float(owner.get("heartbeat", 0))
        return SweepLockedError(
            f"sweep {self.sweep!r} is being run by another driver: host {owner.get('host')}, "
            f"pid {owner.get('pid')}, since {since} (heartbeat {age:.0f} s ago); wait for it to end, "
            "or use --name for another sweep "
            f"(a lock whose driver died is taken over after {self.stale_s:.0f} s)"
        )

    def acquire(self) -> SweepLock:
        owner = self._read()
        if owner is not None and not self._stale(owner):
            raise self._refuse(owner)
        if self.store.local and owner is None:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return self.acquire()  # another driver created it in between: judge it
            with os.fdopen(fd, "wb") as f:
                f.write(self._body())
                f.flush()
                os.fsync(f.fileno())
        else:
            self.store.put(self.path, self._body())
            time.sleep(self.settle_s)  # let a racing driver's write land, then see who won
            now = self._read() or {}
            if now.get("token") != self.token:
                raise self._refuse(now)
        self._thread = threading.Thread(target=self._beat, name=f"sweep-lock-{self.sweep}", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                owner = self._read() or {}
                if owner.get("token") != self.token:
                    return  # taken over (we were presumed dead): stop refreshing someone else's lock
                self.store.put(self.path, self._body())
            except OSError:
                pass  # a storage hiccup: the next beat tries again

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            owner = self._read()
            if owner is not None and owner.get("token") == self.token:
                self.store.delete(self.path)
        except OSError:
            pass

    def __enter__(self) -> SweepLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
