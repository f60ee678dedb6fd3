"""Opt-in experiment trackers for a running sweep: ``--log mlflow|tensorboard|wandb``.

One Ray Tune callback on the driver (:class:`TrackerCallback`) turns Tune's events into
tracker runs: one run per trial (named by its ``trial_id``, the same id as in the Parquet
rows, so a resumed trial continues its run), grouped by sweep; the trial's parameters when
it starts, its metrics at the end of every epoch (step = epoch), and at its end the
objective(s), ``eval_n`` and its status (``completed``, ``diverged``, ``pruned`` by ASHA,
``error``). The Parquet rows stay the record; trackers are a view of them.

Where it goes (offline by default):

* MLflow: experiment = the sweep's name, in ``--mlflow-uri`` or ``$MLFLOW_TRACKING_URI``,
  else a SQLite store at ``<storage>/mlflow.db`` (``./mlflow.db`` for object storage):
  ``mlflow ui --backend-store-uri sqlite:///<storage>/mlflow.db``; ``--mlflow-uri
  file:./mlruns`` for MLflow's file store (MLflow 3 keeps it only on request);
* TensorBoard: one directory per trial, ``<storage>/tensorboard/<sweep>/<trial_id>``
  (``./tensorboard/...`` for object storage): ``tensorboard --logdir <storage>/tensorboard``;
* Weights & Biases: project ``$WANDB_PROJECT`` (default ``jiio``), group = the sweep,
  offline (``$WANDB_MODE`` overrides) under ``<storage>/wandb``: ``wandb sync`` uploads it.

Nothing breaks or slows when a package is missing: the tracker is left out with one line
saying what to install. Tune's event loop never waits on a tracker: events go through a
FIFO queue to one background thread, drained when the experiment ends; a tracker that
fails is switched off with one line, and the sweep goes on.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import math
import os
import queue
import re
import sys
import threading
import time
from typing import Any

__all__ = ["TRACKERS", "TrackerCallback", "make_callbacks", "missing"]

TRACKERS = ("mlflow", "tensorboard", "wandb")
_INSTALL = {"mlflow": "mlflow", "tensorboard": "tensorboard", "wandb": "wandb"}
# What Tune adds to every result: not a metric of the trial.
_AUTO = {
    "time_this_iter_s", "time_total_s", "time_since_restore", "timestamp", "training_iteration",
    "iterations_since_restore", "pid", "done", "final", "epoch", "step", "timesteps_total",
    "episodes_total", "timesteps_since_restore", "warmup_time", "should_checkpoint",
}  # fmt: skip


def missing(name: str) -> str | None:
    """One line saying what to install for tracker ``name``, or None when it can run."""
    if name == "tensorboard":
        ok = (
            importlib.util.find_spec("tensorboard") is not None
            or importlib.util.find_spec("tensorboardX") is not None
        )
    else:
        ok = importlib.util.find_spec(name) is not None
    if ok:
        return None
    pkg = _INSTALL[name]
    return (
        f"--log {name}: the {pkg} package is not installed (pip install '{pkg}', or "
        f"pip install -e '.[{name}]'); not logging to {name}"
    )


def _torch_tb() -> bool:
    return (
        importlib.util.find_spec("tensorboard") is not None and importlib.util.find_spec("torch") is not None
    )


def _number(v: Any) -> float | None:
    v = v.item() if hasattr(v, "item") else v
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _param(v: Any) -> Any:
    v = v.item() if hasattr(v, "item") else v
    return v if isinstance(v, (int, float, str, bool)) or v is None else str(v)


class _MLflow:
    def __init__(self, sweep: str, uri: str) -> None:
        from mlflow.tracking import MlflowClient

        self.client, self.sweep, self.runs = MlflowClient(tracking_uri=uri), sweep, {}
        exp = self.client.get_experiment_by_name(sweep)
        self.exp = exp.experiment_id if exp is not None else self.client.create_experiment(sweep)

    def start(self, tid: str, params: dict[str, Any]) -> None:
        found = self.client.search_runs([self.exp], f"tags.`jiio.trial_id` = '{tid}'", max_results=1)
        if found:  # a resumed trial continues its run
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
        else:
            tags = {"jiio.sweep": self.sweep, "jiio.trial_id": tid}
            run_id = self.client.create_run(self.exp, run_name=tid, tags=tags).info.run_id
            from mlflow.entities import Param

            self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
        self.runs[tid] = run_id

    def log(self, tid: str, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self.client.log_batch(self.runs[tid], metrics=[Metric(k, v, ts, step) for k, v in metrics.items()])

    def end(self, tid: str, step: int, final: dict[str, float], status: str) -> None:
        run_id = self.runs.pop(tid)
        if final:
            self.log_to(run_id, step, final)
        self.client.set_tag(run_id, "jiio.status", status)
        state = {"error": "FAILED", "pruned": "KILLED"}.get(status, "FINISHED")
        self.client.set_terminated(run_id, status=state)

    def log_to(self, run_id: str, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(f"final/{k}", v, ts, step) for k, v in metrics.items()])

    def close(self) -> None:
        for tid in list(self.runs):
            self.client.set_terminated(self.runs.pop(tid), status="KILLED")


class _TensorBoard:
    """Event files written with TensorBoard's own writer (no TensorFlow), else tensorboardX."""

    def __init__(self, sweep: str, root: str) -> None:
        self.dir, self.writers = os.path.join(root, sweep), {}
        try:
            from tensorboard.compat.proto.event_pb2 import Event
            from tensorboard.compat.proto.summary_pb2 import Summary
            from tensorboard.summary.writer.event_file_writer import EventFileWriter

            self.tbx = None
            self.Event, self.Summary, self.Writer = Event, Summary, EventFileWriter
        except ImportError:
            from tensorboardX import SummaryWriter

            self.tbx = SummaryWriter

    def _scalars(self, tid: str, step: int, metrics: dict[str, float]) -> None:
        w = self.writers[tid]
        if self.tbx is not None:
            for k, v in metrics.items():
                w.add_scalar(k, v, step)
        else:
            values = [self.Summary.Value(tag=k, simple_value=v) for k, v in metrics.items()]
            w.add_event(self.Event(wall_time=time.time(), step=step, summary=self.Summary(value=values)))
        w.flush()

    def _summary(self, step: int, summary) -> Any:
        return self.Event(wall_time=time.time(), step=step, summary=summary)

    def start(self, tid: str, params: dict[str, Any]) -> None:
        logdir = os.path.join(self.dir, tid)
        table = "| parameter | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in params.items())
        if self.tbx is not None:
            w = self.writers[tid] = self.tbx(logdir)
            w.add_text("params", table, 0)
            return
        w = self.writers[tid] = self.Writer(logdir)
        try:  # the parameters as text and in the HParams tab
            from tensorboard.plugins.hparams.summary_v2 import hparams_pb
            from tensorboard.plugins.text.summary_v2 import text_pb

            w.add_event(self._summary(0, text_pb("params", table)))
            hp = {k: v for k, v in params.items() if isinstance(v, (int, float, str, bool))}
            w.add_event(self._summary(0, hparams_pb(hp, trial_id=tid)))
        except Exception:  # the scalars are what matters
            pass

    def log(self, tid: str, step: int, metrics: dict[str, float]) -> None:
        self._scalars(tid, step, metrics)

    def end(self, tid: str, step: int, final: dict[str, float], status: str) -> None:
        self._scalars(tid, step, {f"final/{k}": v for k, v in final.items()})
        if self.tbx is not None:
            self.writers[tid].add_text("status", status, step)
        else:
            with contextlib.suppress(Exception):
                from tensorboard.plugins.text.summary_v2 import text_pb

                self.writers[tid].add_event(self._summary(step, text_pb("status", status)))
        self.writers.pop(tid).close()

    def close(self) -> None:
        for tid in list(self.writers):
            self.writers.pop(tid).close()


class _WandB:
    def __init__(self, sweep: str, root: str) -> None:
        import wandb

        self.wandb, self.sweep, self.dir, self.runs = wandb, sweep, root, {}
        os.makedirs(root, exist_ok=True)

    def start(self, tid: str, params: dict[str, Any]) -> None:
        kw = dict(
            project=os.environ.get("WANDB_PROJECT", "jiio"),
            group=self.sweep,
            name=tid,
            id=re.sub(r"[^A-Za-z0-9_-]", "-", f"{self.sweep}-{tid}")[-64:],
            resume="allow",
            config=params,
            dir=self.dir,
            mode=os.environ.get("WANDB_MODE", "offline"),
        )
        try:  # several trials run at once: one run object each (wandb >= 0.19)
            self.runs[tid] = self.wandb.init(**kw, reinit="create_new")
        except (TypeError, ValueError):
            self.runs[tid] = self.wandb.init(**kw, reinit=True)

    def log(self, tid: str, step: int, metrics: dict[str, float]) -> None:
        self.runs[tid].log({**metrics, "epoch": step})

    def end(self, tid: str, step: int, final: dict[str, float], status: str) -> None:
        run = self.runs.pop(tid)
        run.summary.update({**{f"final/{k}": v for k, v in final.items()}, "status": status})
        run.finish(exit_code=1 if status == "error" else 0)

    def close(self) -> None:
        for tid in list(self.runs):
            self.runs.pop(tid).finish(exit_code=1)


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
        return {k: _param(config[k]) for k in keys}

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
        if _number(result.get("eval_n")) is not None:
            state["eval_n"] = _number(result["eval_n"])
        if result.get("final"):
            state["final"] = dict(result)
            return
        metrics = {k: x for k, v in result.items() if k not in _AUTO and (x := _number(v)) is not None}
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
        values = {m: x for m in self.metrics if (x := _number(source.get(m))) is not None}
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
            values.update({m: x for m in self.metrics if (x := _number(row.get(m))) is not None})
        if _number(row.get("eval_n")) is not None:
            values["eval_n"] = _number(row["eval_n"])
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
                        with store.fs.open_input_file(f"{store._dir(table, self.sweep)}/{k}.parquet") as f:
                            out.extend(pq.ParquetFile(f).read().to_pylist())
                return out

            epochs: dict[int, dict[str, float]] = {}
            for r in rows("steps", key):
                if r.get("phase") == "eval" and _number(r.get("epoch")) is not None:
                    skip = {"trial_id", "step", "epoch", "epoch_end"}
                    m = {k: x for k, v in r.items() if k not in skip and (x := _number(v)) is not None}
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


def _local_root(storage: str) -> str:
    return os.path.abspath(storage) if "://" not in storage or storage.startswith("file://") else os.getcwd()


def make_callbacks(
    names: list[str] | tuple[str, ...],
    sweep: str,
    storage: str,
    metrics: tuple[str, ...],
    searched: tuple[str, ...] = (),
    mlflow_uri: str | None = None,
) -> list[TrackerCallback]:
    """The Tune callbacks for ``--log NAMES`` (an empty list when none can run); prints
    one line per tracker: where it logs, or what to install."""
    trackers: dict[str, Any] = {}
    root = _local_root(storage.removeprefix("file://"))
    for name in dict.fromkeys(names):
        why = missing(name)
        if why:
            print(why, file=sys.stderr)
            continue
        if name == "mlflow":
            uri = mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root}/mlflow.db"
            if uri.startswith("file:") or "://" not in uri:  # asked for by name: MLflow 3 wants an opt-in
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            trackers[name] = functools.partial(_MLflow, sweep, uri)
            where = f"MLflow experiment {sweep!r} in {uri} (mlflow ui --backend-store-uri {uri})"
        elif name == "tensorboard":
            trackers[name] = functools.partial(_TensorBoard, sweep, os.path.join(root, "tensorboard"))
            where = (
                f"TensorBoard, one run per trial: tensorboard --logdir {os.path.join(root, 'tensorboard')}"
            )
        else:
            trackers[name] = functools.partial(_WandB, sweep, os.path.join(root, "wandb"))
            mode = os.environ.get("WANDB_MODE", "offline")
            where = f"W&B group {sweep!r} ({mode}, {os.path.join(root, 'wandb')}; wandb sync uploads it)"
        print(f"--log {name}: {where}")
    if not trackers:
        return []
    return [TrackerCallback(trackers, metrics, searched, storage, sweep)]
