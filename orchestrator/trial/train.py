"""Train one trial: (re)load its checkpoint, train, write its step and trace rows per epoch.

The rows of an epoch are written when the epoch ends, together with the trial's
checkpoint (one file per trial, replaced atomically), so a crash loses at most the epoch
in progress, which the next attempt recomputes from the checkpoint and writes under the
same keys. A checkpoint that cannot be read (truncated, corrupt) is moved aside with a
message and the trial starts over: it never blocks a resume.

Used by :func:`orchestrator.trial.trainable.run_trial` (one process) and
:mod:`orchestrator.trial.data_parallel` (every rank; only rank 0 writes). It imports neither of them.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from typing import Any

import torch

from orchestrator.storage import ResultStore, assert_driver, layout
from orchestrator.tasks import TaskConfig
from orchestrator.tasks.registry import make_trainer
from orchestrator.trial.meta import SweepMeta, derived_metrics, objective_values

__all__ = ["train"]


def _restore(trainer, store: ResultStore, meta: SweepMeta, trial_id: str) -> None:
    blob = store.load_checkpoint(meta.name, trial_id)
    if blob is None:
        return
    try:
        state = torch.load(io.BytesIO(blob), map_location=trainer.device, weights_only=True)
        trainer.load_state_dict(state)
    except Exception as exc:  # any unreadable checkpoint: start over rather than fail the trial
        where = store.quarantine(store.checkpoint_path(meta.name, trial_id), f"unreadable checkpoint: {exc}")
        print(
            f"trial {trial_id}: checkpoint unreadable ({exc}); moved to {where}, starting over",
            file=sys.stderr,
        )


def train(
    task_cfg: TaskConfig,
    data: Any,
    meta: SweepMeta,
    store: ResultStore,
    trial_id: str,
    rank: int = 0,
    report: Callable[[dict[str, Any]], None] | None = None,
    on_checkpoint: Callable[[int], None] | None = None,
) -> tuple[dict[str, Any], str]:
    """Train one trial; returns its final metrics and status.

    ``rank`` > 0 (a data-parallel worker other than the first) writes nothing; ``report``
    sends epoch metrics (default: ``ray.tune.report``); ``on_checkpoint(epoch)`` runs after
    each epoch's rows and checkpoint are written (the trial's record keeps its time there).
    """
    if report is None:
        from ray.tune import report
    writer = rank == 0
    trainer = make_trainer(task_cfg, data)
    _restore(trainer, store, meta, trial_id)
    steps: list[dict[str, Any]] = []
    traces: list[dict[str, Any]] = []

    def flush(epoch_key: int) -> None:
        key = layout.epoch_key(trial_id, epoch_key)
        store.write("steps", meta.name, key, steps)
        store.write("traces", meta.name, key, traces)
        steps.clear()
        traces.clear()

    def callback(row: dict[str, Any]) -> None:
        row = dict(row)
        trace = row.pop("trace", None)
        steps.append({"trial_id": trial_id, **row})
        if trace is not None:
            n = len(next(iter(trace.values())))
            traces.extend(
                {
                    "trial_id": trial_id,
                    "step": row["step"],
                    "iteration": i + 1,
                    **{k: v[i] for k, v in trace.items()},
                }
                for i in range(n)
            )
        if not row.get("epoch_end"):
            return
        steps[-1].update(derived_metrics(task_cfg.task, steps[-1]))  # robust_acc on the eval row too
        if writer:
            assert_driver(store, meta.name, meta.extra.get("driver_token"))  # not an orphan of a dead driver
            flush(row["epoch"])
            buf = io.BytesIO()
            torch.save(trainer.state_dict(), buf)
            store.save_checkpoint(meta.name, trial_id, buf.getvalue())
            if on_checkpoint is not None:
                on_checkpoint(int(row["epoch"]))
        steps.clear()
        traces.clear()
        metrics = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        metrics.update(derived_metrics(task_cfg.task, metrics))
        if row["epoch"] < task_cfg.epochs:  # the last epoch is reported once the row is written
            objective = objective_values(metrics, meta.metrics, meta.modes, bad=False)
            report({**metrics, **objective, "final": False, "trial_key": trial_id})

    result = trainer.fit(callback)
    if steps and writer:  # the rows of an epoch that ended early (diverged)
        assert_driver(store, meta.name, meta.extra.get("driver_token"))
        flush(trainer.epoch + 1)
    return {**result.metrics, "steps": result.steps}, result.status
