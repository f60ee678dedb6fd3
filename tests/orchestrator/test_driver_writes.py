"""The driver's background writer (``orchestrator.driver.background_writes``) and the pruning ASHA that
uses it: FIFO order, backpressure, errors at flush, and a prune callback that returns at
once while its row reaches storage by the flush."""

from __future__ import annotations

import random
import threading
import time
from types import SimpleNamespace

import pytest

from orchestrator.driver.background_writes import DriverWriteError, DriverWrites
from orchestrator.driver.search import Dim
from orchestrator.driver.sweep import SweepConfig
from orchestrator.driver.tuner import pruning_asha as _pruning_asha
from orchestrator.storage import ResultStore


def test_tasks_run_in_the_order_they_were_submitted():
    done: list[int] = []
    writes = DriverWrites(maxsize=4)
    rng = random.Random(0)

    def task(i: int) -> None:
        time.sleep(rng.uniform(0, 0.002))
        done.append(i)

    for i in range(200):
        writes.submit(f"task {i}", task, i)
    writes.flush()
    assert done == list(range(200))
    writes.close()


def test_a_full_queue_blocks_the_submitter_instead_of_dropping():
    gate = threading.Event()
    done: list[int] = []
    writes = DriverWrites(maxsize=2)
    submitted: list[int] = []

    def submitter() -> None:
        writes.submit("blocker", gate.wait)  # taken by the worker at once, then waits
        for i in range(5):
            writes.submit(f"task {i}", done.append, i)
            submitted.append(i)

    t = threading.Thread(target=submitter, daemon=True)
    t.start()
    try:
        deadline = time.time() + 5
        while len(submitted) < 2 and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        # One task running (the blocker), two queued: the third submit waits for room.
        assert submitted == [0, 1] and t.is_alive() and done == []
    finally:
        gate.set()
    t.join(5)
    assert not t.is_alive() and submitted == [0, 1, 2, 3, 4]
    writes.flush()
    assert done == [0, 1, 2, 3, 4]
    writes.close()


def test_an_error_surfaces_at_flush_and_later_tasks_still_run():
    done: list[str] = []
    writes = DriverWrites()

    def boom() -> None:
        raise OSError("bucket unreachable")

    writes.submit("first", done.append, "a")
    writes.submit("pruned row of trial x", boom)
    writes.submit("third", done.append, "c")
    with pytest.raises(DriverWriteError, match=r"pruned row of trial x: OSError: bucket unreachable") as exc:
        writes.flush()
    assert done == ["a", "c"]
    assert [w for w, _ in exc.value.failures] == ["pruned row of trial x"]
    assert isinstance(exc.value.__cause__, OSError)
    writes.flush()  # reported once, then forgotten
    writes.submit("again", boom)
    with pytest.raises(DriverWriteError):
        writes.close()  # close flushes, so it reports too
    with pytest.raises(RuntimeError, match="after close"):
        writes.submit("late", done.append, "d")
    writes.close()  # idempotent


def test_a_writer_pickles_as_a_fresh_one_for_tunes_saved_state(tmp_path):
    from ray import cloudpickle  # what Tune pickles its scheduler with, in the tuner's state

    writes = DriverWrites(maxsize=3, name="w")
    writes.submit("slow", time.sleep, 0.2)
    copy = cloudpickle.loads(cloudpickle.dumps(writes))
    assert copy.pending == 0 and copy.name == "w" and copy._queue.maxsize == 3
    cloudpickle.dumps(_asha(ResultStore(str(tmp_path)), writes))  # the scheduler holding it
    writes.close()
    copy.close()


def test_flush_waits_for_the_work_queued_before_it():
    done: list[str] = []
    writes = DriverWrites()
    writes.submit("slow", lambda: (time.sleep(0.3), done.append("slow")))
    t0 = time.perf_counter()
    writes.flush()
    assert done == ["slow"] and time.perf_counter() - t0 >= 0.25
    writes.flush()  # nothing queued: returns at once
    writes.submit("slower", time.sleep, 1.0)
    with pytest.raises(TimeoutError):
        writes.flush(timeout=0.05)
    writes.close()


DELAY = 0.3  # seconds per storage write of the slow store


class SlowStore(ResultStore):
    """A store whose every write takes DELAY seconds (an object store far away)."""

    def put(self, path: str, data: bytes) -> None:
        time.sleep(DELAY)
        super().put(path, data)


class BrokenStore(ResultStore):
    def put(self, path: str, data: bytes) -> None:
        raise OSError("bucket unreachable")


def _cfg() -> SweepConfig:
    return SweepConfig(
        name="s",
        space={"alpha_x": Dim("loguniform", 0.05, 2.0)},
        metrics=("robust_acc",),
        modes=("max",),
        fixed={"task": "adversarial", "epochs": 4},
        data={"dataset": "digits"},
    )


def _started(store: ResultStore, n: int) -> list[SimpleNamespace]:
    """n trials as a worker leaves them after epoch 1: record, checkpoint, epoch files."""
    prov = {"torch_version": "t", "ray_version": "r", "git_sha": "g", "device": "cpu", "host": "h"}
    trials = []
    for i in range(n):
        tid = f"t{i}"
        params = {"alpha_x": 0.1 * (i + 1)}
        store.write_record("s", tid, {"params": params, "trial_id": tid, "state": "running", **prov})
        store.save_checkpoint("s", tid, b"weights")
        store.write("steps", "s", f"{tid}-e0001", [{"trial_id": tid, "step": 1, "phase": "train"}])
        trials.append(SimpleNamespace(trial_id=f"tune_{i}", config={**params, "trial_id": tid}))
    return trials


def _asha(store: ResultStore, writes: DriverWrites | None):
    cfg = _cfg()
    return _pruning_asha(store, cfg, writes)(
        metric="robust_acc", mode="max", time_attr="epoch", max_t=4, grace_period=1, reduction_factor=2
    )


def test_the_prune_callback_returns_at_once_and_the_row_is_on_storage_after_flush(tmp_path):
    from ray.tune.schedulers import TrialScheduler

    trials = _started(ResultStore(str(tmp_path)), 3)
    store = SlowStore(str(tmp_path))
    writes = DriverWrites()
    asha = _asha(store, writes)
    actions, took = [], []
    for i, trial in enumerate(trials):  # falling accuracy: the first continues, the others are stopped
        asha.on_trial_add(None, trial)
        t0 = time.perf_counter()
        actions.append(asha.on_trial_result(None, trial, {"epoch": 1, "robust_acc": 0.9 - 0.1 * i}))
        took.append(time.perf_counter() - t0)
    assert actions == [TrialScheduler.CONTINUE, TrialScheduler.STOP, TrialScheduler.STOP]
    # A synchronous prune takes 3 writes (row, record, compacted steps): 3 * DELAY per call.
    assert max(took) < DELAY, took
    writes.flush()
    rows = store.read("trials", "s").set_index("trial_id")
    assert sorted(rows.index) == ["t1", "t2"] and set(rows["status"]) == {"pruned"}
    assert rows.loc["t2", "robust_acc"] == pytest.approx(0.7) and rows.loc["t2", "host"] == "h"
    for tid in ("t1", "t2"):
        assert store.record("s", tid)["state"] == "finished"
    assert store.keys("checkpoints", "s") == ["t0"]  # the pruned trials' checkpoints are gone
    assert store.keys("steps", "s") == ["t0-e0001", "t1", "t2"]  # theirs compacted
    assert store.pending("s") == {"t0": {"alpha_x": 0.1}}
    writes.close()


def test_a_prune_that_cannot_be_written_is_reported_at_flush_and_the_trial_stays_pending(tmp_path):
    from ray.tune.schedulers import TrialScheduler

    trials = _started(ResultStore(str(tmp_path)), 2)
    writes = DriverWrites()
    asha = _asha(BrokenStore(str(tmp_path)), writes)
    for i, trial in enumerate(trials):
        asha.on_trial_add(None, trial)
        action = asha.on_trial_result(None, trial, {"epoch": 1, "robust_acc": 0.9 - 0.1 * i})
    assert action == TrialScheduler.STOP
    with pytest.raises(DriverWriteError, match="pruned row of trial t1: OSError"):
        writes.close()
    store = ResultStore(str(tmp_path))
    assert not store.keys("trials", "s")  # no row: the record and checkpoint are as the trial left them
    assert set(store.pending("s")) == {"t0", "t1"} and store.keys("checkpoints", "s") == ["t0", "t1"]


def test_the_driver_prints_a_failed_write_and_goes_on(capsys):
    from orchestrator.driver.tuner import drain as _drain

    writes = DriverWrites()
    writes.submit("pruned row of trial t7", BrokenStore.put, None, "p", b"")
    _drain(writes)  # after fit(): reported, not raised
    _drain(writes, close=True)  # the finally path: nothing left to report
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "warning: pruned row of trial t7 failed (OSError: bucket unreachable); --resume takes it up" in err
