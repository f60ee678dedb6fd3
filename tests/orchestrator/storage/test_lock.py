"""One driver per sweep: refusal naming the owner, takeover of a dead owner's lock.

Tests that take ``root`` run on a local directory and on S3 (``conftest.py``); the others
need a local process or local timing."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.storage import ResultStore, SweepLock, SweepLockedError

ROOT = Path(__file__).resolve().parents[3]


def _plant(store: ResultStore, sweep: str, **owner) -> None:
    body = {
        "token": "other",
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": time.time(),
        "heartbeat": time.time(),
        **owner,
    }
    store.put(store.lock_path(sweep), json.dumps(body).encode())


def test_a_second_driver_is_refused_with_the_first_ones_host_pid_and_start(tmp_path):
    store = ResultStore(str(tmp_path))
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from orchestrator.storage import ResultStore;"
            "from orchestrator.storage import SweepLock;"
            f"l = SweepLock(ResultStore({str(tmp_path)!r}), 's').acquire();"
            "print('held', flush=True); time.sleep(60)",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SweepLockedError) as exc:
            SweepLock(store, "s").acquire()
        msg = str(exc.value)
        assert (
            f"pid {holder.pid}" in msg and socket.gethostname() in msg and "since" in msg and "--name" in msg
        )
        assert "\n" not in msg
    finally:
        holder.kill()
        holder.wait()
    # Its owner is dead (SIGKILL leaves the file): taken over at once on the same host.
    assert (tmp_path / "locks" / "sweep=s" / "driver.json").exists()
    with SweepLock(store, "s"):
        pass
    assert not (tmp_path / "locks" / "sweep=s" / "driver.json").exists()


def test_a_lock_of_another_host_is_respected_until_its_heartbeat_is_stale(root):
    store = ResultStore(root)
    _plant(store, "s", host="elsewhere", pid=1)
    with pytest.raises(SweepLockedError, match="host elsewhere, pid 1"):
        SweepLock(store, "s", stale_s=30).acquire()
    _plant(store, "s", host="elsewhere", pid=1, heartbeat=time.time() - 31)
    lock = SweepLock(store, "s", stale_s=30).acquire()
    owner = json.loads(store.get(store.lock_path("s")))
    assert owner["token"] == lock.token and owner["pid"] == os.getpid()
    lock.release()


def test_the_heartbeat_keeps_a_long_run_locked_and_stops_after_a_takeover(tmp_path):
    store = ResultStore(str(tmp_path))
    lock = SweepLock(store, "s", heartbeat_s=0.5, stale_s=5).acquire()
    path = tmp_path / "locks" / "sweep=s" / "driver.json"
    first = json.loads(path.read_text())["heartbeat"]
    t0 = time.time()
    while json.loads(path.read_text())["heartbeat"] == first:  # wait for a refresh
        assert time.time() - t0 < 10, "the heartbeat was never refreshed"
        time.sleep(0.02)
    # Just after a beat (the next is 0.5 s away): presumed dead and taken over. (A takeover
    # racing the owner's own beat within milliseconds is not excluded on object stores.)
    _plant(store, "s", host="elsewhere", token="thief")
    time.sleep(1.2)  # two more beats
    assert json.loads(path.read_text())["token"] == "thief"  # not overwritten by the old owner
    lock.release()
    assert path.exists()  # release leaves someone else's lock alone


def test_a_torn_lock_file_is_taken_over(root):
    store = ResultStore(root)
    store.put(store.lock_path("s"), b'{"tok')
    with SweepLock(store, "s"):
        assert json.loads(store.get(store.lock_path("s")))["pid"] == os.getpid()


def test_a_trial_of_a_driver_that_lost_its_lock_must_not_write(root):
    from orchestrator.storage import OrphanedTrialError, assert_driver

    store = ResultStore(root)
    lock = SweepLock(store, "s").acquire()
    assert_driver(store, "s", lock.token)  # its own driver holds the sweep: fine
    assert_driver(store, "s", None)  # trials of sweeps started by earlier versions: no fencing
    _plant(store, "s", token="next-driver")  # the driver died and the next one took over
    with pytest.raises(OrphanedTrialError, match="held by another driver"):
        assert_driver(store, "s", lock.token)
    store.delete(store.lock_path("s"))
    with pytest.raises(OrphanedTrialError, match="released"):
        assert_driver(store, "s", lock.token)
    lock.release()
