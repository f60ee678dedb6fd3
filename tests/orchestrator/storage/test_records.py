"""Trial records (``pending/``): written, read back, marked finished, never lost; records of
earlier versions read as running trials, unreadable ones are quarantined. Runs on a local
directory and on S3 (``conftest.py``)."""

from __future__ import annotations

import json

from orchestrator.storage import ResultStore


def test_a_record_is_kept_after_its_trial_finished(root):
    store = ResultStore(root)
    store.write_pending("s", "a", {"alpha_x": 0.1})
    store.write_record(
        "s", "b", {"params": {"alpha_x": 0.2}, "trial_id": "b", "state": "running", "attempts": 2}
    )
    assert store.pending("s") == {"a": {"alpha_x": 0.1}, "b": {"alpha_x": 0.2}}
    store.mark_finished("s", "a")
    assert store.pending("s") == {"b": {"alpha_x": 0.2}}
    assert store.record("s", "a")["state"] == "finished" and set(store.records("s")) == {"a", "b"}
    assert store.record("s", "b")["attempts"] == 2
    store.mark_finished("s", "missing")  # no record: nothing to mark
    assert store.record("s", "missing") is None


def test_an_earlier_versions_record_and_a_torn_one(root):
    store = ResultStore(root)
    store.put(store.record_path("s", "old"), json.dumps({"alpha_x": 0.3}).encode())
    store.put(store.record_path("s", "torn"), b'{"params": ')
    store.put(store.record_path("s", "list"), b"[1, 2]")
    assert store.records("s") == {"old": {"params": {"alpha_x": 0.3}, "trial_id": "old", "state": "running"}}
    assert store.keys("pending", "s") == ["old"]  # the unreadable ones moved to corrupt/
    assert (
        len([p for p in store.list_files(f"{store.base}/corrupt", recursive=True) if p.endswith(".why.json")])
        == 2
    )
