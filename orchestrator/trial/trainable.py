"""The Ray Tune entry point of one trial: its identity, its attempt record, its final row.

A trial is identified by ``trial_id``, assigned once by the driver
(:mod:`orchestrator.driver.sweep`) and carried in the trial's config, so the same trial
re-run (Tune retrying it after a node died, or a resumed sweep re-enqueueing it) finds its
own checkpoint and continues, and writes its rows under the same keys (never twice). The
project's storage, not Tune's, holds the checkpoints, which sidesteps Tune's restore
pitfalls.

Every attempt updates the trial's record (``pending/sweep=NAME/<trial_id>.json``: its
parameters, attempt count, accumulated wall time, earlier errors, host and device), so
``wall_s`` and ``attempts`` add up over attempts and the driver can write pruned and
error rows with the same provenance as completed ones.

What runs inside is owned elsewhere: training by :mod:`orchestrator.trial.train`, inner
solves on a fixed model by :mod:`orchestrator.trial.solve`, data-parallel training by
:mod:`orchestrator.trial.data_parallel`; none imports this.
"""

from __future__ import annotations

import json
import time
from typing import Any

import torch

from orchestrator.data import DataConfig, load_dataset
from orchestrator.storage import ResultStore, assert_driver, assert_marker
from orchestrator.tasks import TaskConfig
from orchestrator.trial.meta import (
    SweepMeta,
    derived_metrics,
    make_trial_id,
    objective_values,
    placement,
    provenance,
    versions,
    worst_value,
)

__all__ = [
    "SweepMeta",
    "derived_metrics",
    "make_trial_id",
    "run_trial",
    "trial_id_of",
    "versions",
    "worst_value",
]


def trial_id_of(config: dict[str, Any], sweep: str, searched: tuple[str, ...]) -> str:
    """The trial's id: the one the driver assigned (``config["trial_id"]``), else the hash of
    its searched parameters (configs of sweeps started by earlier versions)."""
    tid = config.get("trial_id")
    return str(tid) if tid else make_trial_id(sweep, {k: config[k] for k in searched})


def run_trial(config: dict[str, Any], meta: SweepMeta) -> None:
    """Ray Tune function trainable: one trial of the sweep ``meta``."""
    from ray import tune

    params = {k: config[k] for k in meta.searched}
    if "seed" in config and "seed" not in params:  # one seed of a replicated sweep's configuration
        params["seed"] = int(config["seed"])
    trial_id = trial_id_of(config, meta.name, meta.searched)
    assert_marker(meta.storage, meta.extra.get("storage_marker"))  # a node that cannot see the results
    store = ResultStore(meta.storage)
    t0, started_at = time.perf_counter(), time.time()
    gpu = torch.cuda.is_available() and meta.extra.get("gpus_per_trial", 0) > 0
    workers = int(meta.extra.get("workers_per_trial", 1))
    where = (  # a data-parallel trial is a driver: its Ray Train workers hold the resources
        placement(
            gpu,
            float(meta.extra.get("cpus_per_trial", 1)) * workers,
            float(meta.extra.get("gpus_per_trial", 0)),
        )
        if workers > 1
        else placement(gpu)
    )
    record = store.record(meta.name, trial_id) or {}
    before = float(record.get("wall_s") or 0.0)  # time of earlier attempts, up to their last checkpoint
    record.update(
        params=params,
        trial_id=trial_id,
        state="running",
        attempts=int(record.get("attempts") or 0) + 1,
        first_started_at=record.get("first_started_at", started_at),
        started_at=started_at,
        **provenance(gpu),
        **where,
    )
    record.setdefault("wall_s", before)
    assert_driver(store, meta.name, meta.extra.get("driver_token"))
    store.write_record(meta.name, trial_id, record)

    def on_checkpoint(epoch: int) -> None:
        record.update(wall_s=before + time.perf_counter() - t0, epoch=epoch)
        store.write_record(meta.name, trial_id, record)

    threads = int(meta.extra.get("cpus_per_trial", 1))
    if threads >= 1:
        torch.set_num_threads(threads)
    # A trial that raises keeps its record and checkpoint: Tune retries it (max_failures), a
    # resumed sweep re-enqueues it, and the driver records an "error" row once retries are spent.
    task_cfg = TaskConfig.from_flat({**meta.fixed, **params, "device": "cuda" if gpu else "cpu"})
    if meta.kind == "solve":
        from orchestrator.trial.solve import run_solve

        metrics, status = run_solve(task_cfg, load_dataset(DataConfig(**meta.data)), meta, store, trial_id)
    elif meta.extra.get("workers_per_trial", 1) > 1:
        from orchestrator.trial.data_parallel import train_data_parallel

        metrics, status = train_data_parallel(task_cfg, meta, store, trial_id)
    else:
        from orchestrator.trial.train import train

        data = load_dataset(DataConfig(**meta.data))
        metrics, status = train(task_cfg, data, meta, store, trial_id, on_checkpoint=on_checkpoint)
    metrics.update(derived_metrics(task_cfg.task, metrics))
    wall = before + time.perf_counter() - t0
    full = {k: v for k, v in task_cfg.to_flat().items() if k != "device"}
    row = {
        **{k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))},
        **full,
        "trial_id": trial_id,
        "status": status,
        "task": meta.fixed.get("task"),
        "dataset": meta.data.get("dataset"),
        "seed": task_cfg.seed,
        **params,  # the trial's configuration wins over a same-named metric
        "wall_s": wall,
        "attempts": record["attempts"],
        "started_at": record["first_started_at"],
        "finished_at": time.time(),
        "error": None,
        "error_history": json.dumps(record.get("errors", [])) if record.get("errors") else None,
        **provenance(gpu),
        **where,
    }
    assert_driver(store, meta.name, meta.extra.get("driver_token"))  # an orphan writes no row
    store.write("trials", meta.name, trial_id, [row])
    store.delete_checkpoint(meta.name, trial_id)
    for table in ("steps", "traces"):  # one file per trial from now on (a crash here: the driver redoes it)
        store.compact(table, meta.name, trial_id)
    record.update(state="finished", status=status, wall_s=wall)
    store.write_record(meta.name, trial_id, record)
    tune.report(  # the last report: ASHA may stop the trial here, after its row is written
        {
            **objective_values(metrics, meta.metrics, meta.modes, status == "diverged"),
            "final": True,
            "status": status,
            "trial_key": trial_id,
            "epoch": int(task_cfg.epochs),
        }
    )
