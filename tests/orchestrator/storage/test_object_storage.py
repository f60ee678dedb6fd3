"""The store and the driver lock on a real S3 API (moto's server on loopback)."""

from __future__ import annotations

import json
import threading
import time

import pyarrow.fs as pafs
import pytest

from orchestrator.storage import ResultStore, SweepLock, SweepLockedError


def test_rows_records_and_a_corrupt_file_on_object_storage(s3_bucket):
    store = ResultStore(f"{s3_bucket}/res")
    assert not store.local
    store.write("trials", "s", "a", [{"trial_id": "a", "status": "completed", "acc": 0.5}])
    # The same key again: replaced, never a second row.
    store.write("trials", "s", "a", [{"trial_id": "a", "status": "completed", "acc": 0.75}])
    store.write_record("s", "b", {"params": {"alpha_x": 0.1}, "trial_id": "b", "state": "running"})
    assert store.read("trials", "s")[["trial_id", "acc"]].values.tolist() == [["a", 0.75]]
    assert store.pending("s") == {"b": {"alpha_x": 0.1}}
    store.put(store.table_file("trials", "s", "c"), b"PAR1 torn")
    assert len(store.read("trials", "s", on_corrupt="quarantine")) == 1
    moved = store.fs.get_file_info(pafs.FileSelector(f"{store.base}/corrupt", recursive=True))
    names = [i.base_name for i in moved]
    assert any(n.startswith("c.parquet.") and not n.endswith(".json") for n in names)
    assert store.keys("trials", "s") == ["a"]


def test_the_driver_lock_on_object_storage(s3_bucket):
    store = ResultStore(f"{s3_bucket}/res")
    first = SweepLock(store, "s", settle_s=0.2).acquire()
    with pytest.raises(SweepLockedError, match=f"pid {first.pid}"):
        SweepLock(store, "s", settle_s=0.2).acquire()
    first._stop.set()  # the first driver dies without releasing: its heartbeat stops
    path = first.path
    owner = json.loads(store.fs.open_input_stream(path).read())
    owner.update(host="elsewhere", heartbeat=time.time() - 120)  # on another host, 2 min ago
    store.put(path, json.dumps(owner).encode())
    taken = SweepLock(store, "s", settle_s=0.2, stale_s=60).acquire()
    assert json.loads(store.fs.open_input_stream(path).read())["token"] == taken.token
    taken.release()
    assert store.fs.get_file_info(path).type.name == "NotFound"


def test_two_drivers_racing_for_a_stale_lock_on_object_storage_one_wins(s3_bucket):
    store = ResultStore(f"{s3_bucket}/res")
    stale = {"token": "dead", "host": "elsewhere", "pid": 1, "since": 0, "heartbeat": 0}
    won, lost = [], []
    for _ in range(3):
        store.put(store.lock_path("s"), json.dumps(stale).encode())
        won.clear()
        lost.clear()
        barrier = threading.Barrier(2)

        def go(won=won, lost=lost, barrier=barrier):
            lock = SweepLock(store, "s", settle_s=0.5)
            barrier.wait()
            try:
                won.append(lock.acquire())
            except SweepLockedError:
                lost.append(lock)

        threads = [threading.Thread(target=go) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1 and len(lost) == 1
        won[0].release()
