"""The tracker backends: one class per tracker with ``start``, ``log``, ``end``, ``close``.

What: :class:`MLflowBackend`, :class:`TensorBoardBackend`, :class:`WandBBackend` each map a
trial's run (start with its parameters, a metric dict per epoch, the end with its final
values and status) onto their tracker's API, and :func:`finite_number` /
:func:`param_value` turn Tune's values into what trackers accept. Why apart from the Tune
callback (:mod:`~orchestrator.trackers.callback`): the backends import their tracker
package only when made, on the callback's worker thread, and know nothing of Tune.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import re
import time
from typing import Any

__all__ = [
    "MLflowBackend",
    "TensorBoardBackend",
    "WandBBackend",
    "finite_number",
    "param_value",
    "torch_tensorboard",
]


def torch_tensorboard() -> bool:
    """Whether torch's own SummaryWriter can run (tensorboard and torch installed)."""
    return (
        importlib.util.find_spec("tensorboard") is not None and importlib.util.find_spec("torch") is not None
    )


def finite_number(v: Any) -> float | None:
    """``v`` as a float when it is a finite number (numpy scalars too), else None: what a
    tracker can log as a metric."""
    v = v.item() if hasattr(v, "item") else v
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def param_value(v: Any) -> Any:
    """``v`` as a tracker parameter: a plain scalar or None as is, anything else as its text."""
    v = v.item() if hasattr(v, "item") else v
    return v if isinstance(v, (int, float, str, bool)) or v is None else str(v)


class MLflowBackend:
    """MLflow: one run per trial in the sweep's experiment."""

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


class TensorBoardBackend:
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


class WandBBackend:
    """Weights & Biases: one run per trial, grouped by sweep, offline by default."""

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
