"""The code one trial runs inside its Ray actor: build, (re)load, train or solve, write rows.

A trial is identified by ``trial_id``, a hash of the sweep name and its searched
parameters, so the same trial re-run (Tune retrying it after a node died, or a resumed
sweep re-enqueueing it) finds its own checkpoint and continues, and writes its rows under
the same keys (never twice). It does not use Tune's checkpoints at all: the project's
storage holds them (one file per trial, replaced atomically each epoch), which sidesteps
Tune's restore pitfalls (deleted checkpoints after a hard kill, KeyErrors on restore).

The trial itself writes its Parquet rows (``orchestrator.results``): the steps and traces
of each epoch when the epoch ends, then its one ``trials`` row. It reports to Tune once per
epoch (``epoch`` is the time attribute for ASHA) and once at the end; a diverged run
reports the objective's worst value so the searcher learns to avoid that region.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import platform
import socket
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from orchestrator.data import DataConfig, load_dataset
from orchestrator.results import ResultStore
from orchestrator.tasks import TaskConfig

__all__ = [
    "SweepMeta",
    "derived_metrics",
    "make_trial_id",
    "run_trial",
    "task_trainer",
    "versions",
    "worst_value",
]


@dataclass(frozen=True)
class SweepMeta:
    """What every trial of one sweep shares (passed to the trainable, not searched)."""

    name: str
    storage: str
    searched: tuple[str, ...]
    fixed: dict[str, Any]
    data: dict[str, Any]
    metrics: tuple[str, ...]
    modes: tuple[str, ...]
    kind: str = "train"  # "train": a training run; "solve": inner solves on a fixed checkpoint
    checkpoint: str | None = None  # kind "solve": storage key of the trained model
    extra: dict[str, Any] = field(default_factory=dict)


def make_trial_id(sweep: str, params: dict[str, Any]) -> str:
    """Deterministic id from the sweep name and the searched parameters (12 hex digits).

    Example:
        >>> a = make_trial_id("s", {"alpha_x": 0.5, "alpha_z": 0.8})
        >>> a == make_trial_id("s", {"alpha_z": 0.8, "alpha_x": 0.5}), len(a)
        (True, 12)
    """
    blob = json.dumps({"sweep": sweep, "params": params}, sort_keys=True, default=repr)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def versions() -> dict[str, str]:
    """torch, ray and project git versions, for provenance columns."""
    import ray

    sha = os.environ.get("JIIO_GIT_SHA")
    if sha is None:
        try:
            here = os.path.dirname(os.path.abspath(__file__))
            sha = (
                subprocess.run(
                    ["git", "-C", here, "rev-parse", "--short=12", "HEAD"],
                    capture_output=True,
                    text=True,
                    timeout=5,
                ).stdout.strip()
                or "unknown"
            )
        except (OSError, subprocess.SubprocessError):
            sha = "unknown"
    return {"torch_version": torch.__version__, "ray_version": ray.__version__, "git_sha": sha}


def task_trainer(config: TaskConfig, data: Any):
    """The Trainer subclass for ``config.task``."""
    if config.task == "adversarial":
        from orchestrator.tasks.adversarial import AdversarialTrainer

        return AdversarialTrainer(config, data)
    if config.task == "generative":
        from orchestrator.tasks.generative import GenerativeTrainer

        return GenerativeTrainer(config, data)
    from orchestrator.tasks.inverse import InverseTrainer

    return InverseTrainer(config, data)


def worst_value(mode: str) -> float:
    """The objective value a diverged trial reports: the worst possible, as the searcher sees it."""
    return -1e9 if mode == "max" else 1e9


def _objective(metrics: dict[str, Any], meta: SweepMeta, bad: bool) -> dict[str, float]:
    out = {}
    for name, mode in zip(meta.metrics, meta.modes, strict=True):
        v = metrics.get(name)
        ok = isinstance(v, (int, float)) and math.isfinite(v) and not bad
        out[name] = float(v) if ok else worst_value(mode)
    return out


def run_trial(config: dict[str, Any], meta: SweepMeta) -> None:
    """Ray Tune function trainable: one trial of the sweep ``meta``."""
    from ray import tune

    params = {k: config[k] for k in meta.searched}
    trial_id = make_trial_id(meta.name, params)
    store = ResultStore(meta.storage)
    store.write_pending(meta.name, trial_id, params)
    t0, started_at = time.perf_counter(), time.time()
    gpu = torch.cuda.is_available() and meta.extra.get("gpus_per_trial", 0) > 0
    threads = int(meta.extra.get("cpus_per_trial", 1))
    if threads >= 1:
        torch.set_num_threads(threads)
    base_row = {
        "trial_id": trial_id,
        "task": meta.fixed.get("task"),
        "dataset": meta.data.get("dataset"),
        "seed": meta.fixed.get("seed", 0),
        **params,
    }
    # A trial that raises stays pending with its checkpoint: Tune retries it (max_failures), a
    # resumed sweep re-enqueues it, and the driver records an "error" row once retries are spent.
    task_cfg = TaskConfig.from_flat({**meta.fixed, **params, "device": "cuda" if gpu else "cpu"})
    if meta.kind == "solve":
        from orchestrator.solve_trial import run_solve

        result_metrics, status = run_solve(
            task_cfg, load_dataset(DataConfig(**meta.data)), meta, store, trial_id
        )
    elif meta.extra.get("workers_per_trial", 1) > 1:
        from orchestrator.data_parallel import train_data_parallel

        result_metrics, status = train_data_parallel(task_cfg, meta, store, trial_id)
    else:
        result_metrics, status = _train(
            task_cfg, load_dataset(DataConfig(**meta.data)), meta, store, trial_id
        )
    result_metrics.update(derived_metrics(task_cfg.task, result_metrics))
    full = {k: v for k, v in task_cfg.to_flat().items() if k != "device"}
    _finish(store, meta, trial_id, {**full, **base_row, "started_at": started_at}, status, result_metrics, t0)
    tune.report(  # the last report: ASHA may stop the trial here, after its row is written
        {
            **_objective(result_metrics, meta, status == "diverged"),
            "final": True,
            "status": status,
            "trial_key": trial_id,
            "epoch": int(task_cfg.epochs),
        }
    )


def derived_metrics(task: str, metrics: dict[str, Any]) -> dict[str, float]:
    """Objectives computed from reported metrics: ``robust_acc`` = the worse of PGD and JIIO."""
    out = {}
    if task == "adversarial" and "pgd_acc" in metrics and "jiio_acc" in metrics:
        out["robust_acc"] = min(float(metrics["pgd_acc"]), float(metrics["jiio_acc"]))
    return out


def _finish(store, meta, trial_id, base_row, status, metrics, t0) -> None:
    row = {
        "trial_id": trial_id,
        "status": status,
        **{k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))},
        "wall_s": time.perf_counter() - t0,
        "finished_at": time.time(),
        "device": _device_name(),
        "host": socket.gethostname(),
        "error": None,
        **versions(),
    }
    row.update(base_row)  # the trial's configuration wins over a same-named metric
    store.write("trials", meta.name, trial_id, [row])
    store.delete_checkpoint(meta.name, trial_id)
    store.delete_pending(meta.name, trial_id)


def _device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return platform.processor() or platform.machine() or "cpu"


def _train(task_cfg, data, meta, store, trial_id, rank: int = 0, report=None) -> tuple[dict[str, Any], str]:
    """Train one trial. ``rank`` > 0 (a data-parallel worker other than the first) writes
    nothing; ``report`` sends epoch metrics (default: ``tune.report``)."""
    if report is None:
        from ray.tune import report
    writer = rank == 0
    trainer = task_trainer(task_cfg, data)
    blob = store.load_checkpoint(meta.name, trial_id)
    if blob is not None:
        trainer.load_state_dict(torch.load(io.BytesIO(blob), map_location=trainer.device, weights_only=True))
    steps: list[dict[str, Any]] = []
    traces: list[dict[str, Any]] = []

    def flush(epoch_key: int) -> None:
        key = f"{trial_id}-e{epoch_key:04d}"
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
        if row.get("epoch_end"):
            if writer:
                flush(row["epoch"])
                buf = io.BytesIO()
                torch.save(trainer.state_dict(), buf)
                store.save_checkpoint(meta.name, trial_id, buf.getvalue())
            steps.clear()
            traces.clear()
            metrics = {
                k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            }
            metrics.update(derived_metrics(task_cfg.task, metrics))
            if row["epoch"] < task_cfg.epochs:  # the last epoch is reported once the row is written
                report({**metrics, **_objective(metrics, meta, False), "final": False, "trial_key": trial_id})

    result = trainer.fit(callback)
    if steps and writer:  # the rows of an epoch that ended early (diverged)
        flush(trainer.epoch + 1)
    return {**result.metrics, "steps": result.steps}, result.status
