"""The Ray Tune callback that feeds the trackers, off Tune's event loop.

What: :class:`TrackerCallback` turns Tune's trial events into tracker runs (start, one log
per epoch, end with the objectives and status) through a FIFO queue drained by one
background thread; a trial Tune knows little about (resumed, errored) is completed from its
Parquet rows. Why a thread: Tune calls its callbacks on the event loop that schedules every
trial, so a slow or failing tracker must never block it (see :mod:`orchestrator.trackers`).
"""

from __future__ import annotations

import queue
import sys
import threading
from typing import Any

from orchestrator.trackers.backends import finite_number, param_value

__all__ = ["TrackerCallback"]


# What Tune adds to every result: not a metric of the trial.
_AUTO = {
    "time_this_iter_s", "time_total_s", "time_since_restore", "timestamp", "training_iteration",
    "iterations_since_restore", "pid", "done", "final", "epoch", "step", "timesteps_total",
    "episodes_total", "timesteps_since_restore", "warmup_time", "should_checkpoint",
}  # fmt: skip


def _tune_callback_base():
    try:
        from ray.tune import Callback

        return Callback
    except ImportError:  # only the tests drive it without Ray
        return object


class TrackerCallback(_tune_callback_base()):  # type: ignore[misc]
    """Tune callback logging every trial to ``trackers`` (``{name: backend}``, or ``{name:
    function making it}``, called on the worker thread), off the event loop. ``metrics``:
    the sweep's objectives (logged again at the end as ``final/``)."""

    def __init__(
        self,
        trackers: dict[str, Any],
        metrics: tuple[str, ...],
        searched: tuple[str, ...] = (),
        storage: str | None = None,
        sweep: str | None = None,
    ):
        self._spec, self.metrics, self.searched = dict(trackers), tuple(metrics), tuple(searched)
        self.storage, self.sweep = storage, sweep  # the Parquet rows fill in what Tune was not told
        self._reset()

    def _reset(self) -> None:
        self.trackers: dict[str, Any] = dict(self._spec)  # the worker thread makes the backends
        self._q: queue.Queue = queue.Queue(maxsize=10_000)
        self._open: dict[str, dict[str, Any]] = {}  # trial key -> last epoch, eval_n, final result
        self._thread: threading.Thread | None = None  # started by the first event
        self._closed = False

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its callbacks: no thread, queue or open run
        keep = ("_spec", "metrics", "searched", "storage", "sweep")
        return {k: self.__dict__[k] for k in keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    # --- Tune's events (driver thread: only bookkeeping and a queue put) ------------------
    def _key(self, trial, result: dict | None = None) -> str:
        config = getattr(trial, "config", {}) or {}
        return str((result or {}).get("trial_key") or config.get("trial_id") or trial.trial_id)

    def _params(self, trial) -> dict[str, Any]:
        config = getattr(trial, "config", {}) or {}
        keys = [
            k for k in config if k != "trial_id" and (not self.searched or k in self.searched or k == "seed")
        ]
        return {k: param_value(config[k]) for k in keys}

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._begin(trial)

    def _begin(self, trial, result: dict | None = None) -> str:
        key = self._key(trial, result)
        if key not in self._open:
            self._open[key] = {"step": 0, "final": None, "eval_n": None, "last": {}, "logged": 0}
            self._put("start", key, self._params(trial))
        return key

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        key = self._begin(trial, result)
        state = self._open[key]
        step = int(result.get("epoch") or result.get("training_iteration") or state["step"] + 1)
        state["step"] = step
        if finite_number(result.get("eval_n")) is not None:
            state["eval_n"] = finite_number(result["eval_n"])
        if result.get("final"):
            state["final"] = dict(result)
            return
        metrics = {k: x for k, v in result.items() if k not in _AUTO and (x := finite_number(v)) is not None}
        state["last"] = {m: metrics[m] for m in self.metrics if m in metrics}
        if metrics:
            state["logged"] = max(state["logged"], step)
            self._put("log", key, step, metrics)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._finish(trial, None)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._finish(trial, "error")

    def _finish(self, trial, status: str | None) -> None:
        key = self._key(trial, getattr(trial, "last_result", None))
        state = self._open.pop(key, None)
        if state is None:
            return
        final = state["final"] or {}
        if status is None:  # stopped by ASHA before its last report: pruned
            status = str(final.get("status") or "pruned") if state["final"] else "pruned"
        source = final if state["final"] else state["last"]  # pruned: its value at the last rung
        values = {m: x for m in self.metrics if (x := finite_number(source.get(m))) is not None}
        if status not in ("completed", "pruned"):  # a diverged trial's worst value would flatten plots
            values = {}
        if state["eval_n"] is not None:
            values["eval_n"] = state["eval_n"]
        self._put("end", key, state["step"], values, status, state["logged"])

    def on_experiment_end(self, trials, **info) -> None:
        self.close()

    # --- the worker thread ---------------------------------------------------------------
    def _put(self, *event) -> None:
        if not self._spec or self._closed:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="jiio-trackers", daemon=True)
            self._thread.start()
        self._q.put(event)

    def _work(self) -> None:
        for name, make in list(self.trackers.items()):  # opening a store can take seconds: not on Tune's loop
            if not hasattr(make, "start"):
                try:
                    self.trackers[name] = make()
                except Exception as exc:
                    self.trackers.pop(name, None)
                    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                    print(f"--log {name}: cannot start ({first}); not logging to {name}", file=sys.stderr)
        while True:
            event = self._q.get()
            try:
                if event is None:
                    for name, t in list(self.trackers.items()):
                        self._call(name, t.close)
                    return
                op, *args = event
                if op == "end":
                    args = self._complete(*args)
                for name, t in list(self.trackers.items()):
                    self._call(name, getattr(t, op), *args)
            finally:
                self._q.task_done()

    def _complete(self, key: str, step: int, values: dict, status: str, logged: int) -> tuple:
        """On the worker thread: log the epochs Tune was not told (a trial reports its last
        epoch's metrics only to its Parquet rows) from the trial's eval rows, and take the
        final objective and eval_n from its trials row when there is one."""
        epochs, row = self._stored(key)
        for epoch, metrics in epochs:
            if epoch > logged:
                for name, t in list(self.trackers.items()):
                    self._call(name, t.log, key, epoch, metrics)
                step = max(step, epoch)
        values = dict(values)
        if row.get("status") == status and status in ("completed", "pruned"):
            values.update({m: x for m in self.metrics if (x := finite_number(row.get(m))) is not None})
        if finite_number(row.get("eval_n")) is not None:
            values["eval_n"] = finite_number(row["eval_n"])
        elif epochs and "eval_n" in epochs[-1][1]:
            values.setdefault("eval_n", epochs[-1][1]["eval_n"])
        return key, step, values, status

    def _stored(self, key: str) -> tuple[list[tuple[int, dict[str, float]]], dict[str, Any]]:
        """The trial's eval rows (epoch, numeric metrics) and its trials row, if readable."""
        if not self.storage or not self.sweep:
            return [], {}
        try:
            import pyarrow.parquet as pq

            from orchestrator.storage import ResultStore

            store = ResultStore(self.storage)

            def rows(table: str, prefix: str) -> list[dict[str, Any]]:
                out = []
                for k in store.keys(table, self.sweep):
                    if k == prefix or k.startswith(f"{prefix}-e"):
                        with store.fs.open_input_file(store.table_file(table, self.sweep, k)) as f:
                            out.extend(pq.ParquetFile(f).read().to_pylist())
                return out

            epochs: dict[int, dict[str, float]] = {}
            for r in rows("steps", key):
                if r.get("phase") == "eval" and finite_number(r.get("epoch")) is not None:
                    skip = {"trial_id", "step", "epoch", "epoch_end"}
                    m = {k: x for k, v in r.items() if k not in skip and (x := finite_number(v)) is not None}
                    epochs[int(r["epoch"])] = m
            trial = rows("trials", key)
            return sorted(epochs.items()), (trial[-1] if trial else {})
        except Exception:  # the trackers get what Tune reported
            return [], {}

    def _call(self, name: str, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as exc:  # a tracker never stops the sweep
            self.trackers.pop(name, None)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            print(
                f"--log {name}: {type(exc).__name__}: {first}; no longer logging to {name}", file=sys.stderr
            )

    def flush(self) -> None:
        """Wait until every event so far has reached the trackers."""
        if self._thread is not None:
            self._q.join()

    def close(self, timeout: float = 60.0) -> None:
        """Drain the queue, end runs still open (as killed), stop the thread."""
        self._closed = True
        if self._thread is not None and self._thread.is_alive():
            self._q.put(None)
            self._thread.join(timeout)
