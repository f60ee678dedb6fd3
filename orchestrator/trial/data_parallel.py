"""Data-parallel trials: one trial trained by several Ray Train workers (``TorchTrainer``).

A sweep run with ``--workers-per-trial N`` (or ``--gpus-per-trial N`` for N >= 2 whole GPUs)
gives every trial N workers, each with its shard of the training set (rank r takes samples
r, r + N, ...). The Trainer averages the gradients of the ranks after every batch and
takes one step everywhere (``orchestrator.tasks.trainer.Trainer``), so the effective batch
is N x ``batch_size``. Rank 0 writes the Parquet rows and checkpoints exactly as a
single-worker trial does, so resume and node loss behave the same; every rank reports
each epoch to Ray Train, and ``TuneReportCallback`` forwards rank 0's report to Tune, so
ASHA sees data-parallel trials like the others.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import torch
from torch.utils.data import Subset

from orchestrator.data import DataConfig, load_dataset
from orchestrator.storage import ResultStore, layout
from orchestrator.tasks import TaskConfig

__all__ = ["train_data_parallel"]


def _worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    from orchestrator.trial.train import train

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    meta, trial_id = config["meta"], config["trial_id"]
    torch.set_num_threads(max(1, int(meta.extra.get("cpus_per_trial", 1))))
    device = ray.train.torch.get_device() if config["use_gpu"] else torch.device("cpu")
    task_cfg = TaskConfig.from_flat({**config["task"], "device": str(device)})
    data = load_dataset(DataConfig(**meta.data))
    n = len(data.train) // world * world  # equal shards: every rank takes the same number of steps
    data = dataclasses.replace(data, train=Subset(data.train, list(range(rank, n, world))))
    store = ResultStore(meta.storage)
    metrics, status = train(task_cfg, data, meta, store, trial_id, rank=rank, report=ray.train.report)
    if rank == 0:
        store.put(
            _result_path(store, meta.name, trial_id),
            json.dumps({"metrics": metrics, "status": status}).encode(),
        )


def _result_path(store: ResultStore, sweep: str, trial_id: str) -> str:
    return layout.dp_result_file(store.base, sweep, trial_id)


def train_data_parallel(
    task_cfg: TaskConfig, meta, store: ResultStore, trial_id: str
) -> tuple[dict[str, Any], str]:
    """Run the trial on ``workers_per_trial`` Ray Train workers; rank 0's metrics and status."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    workers = int(meta.extra["workers_per_trial"])
    gpus = float(meta.extra.get("gpus_per_trial", 0))
    per_worker = {"CPU": float(meta.extra.get("cpus_per_trial", 1))}
    if gpus > 0:
        per_worker["GPU"] = gpus / workers
    trainer = TorchTrainer(
        _worker,
        train_loop_config={
            "meta": meta,
            "task": task_cfg.to_flat(),
            "trial_id": trial_id,
            "use_gpu": gpus > 0,
        },
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus > 0, resources_per_worker=per_worker),
        run_config=RunConfig(
            name=f"{meta.name}-{trial_id}",
            storage_path=meta.extra["ray_storage"],
            callbacks=[TuneReportCallback()],
        ),
    )
    trainer.fit()
    path = _result_path(store, meta.name, trial_id)
    result = json.loads(store.get(path).decode())
    store.delete(path)
    return result["metrics"], result["status"]
