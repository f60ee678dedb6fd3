"""The training loop every task shares: :class:`Trainer`, what a step returns, what a run returns.

A task is a :class:`Trainer` subclass that implements ``train_step`` (one optimiser step on
a batch, returning its metrics and whether the inner solve diverged) and ``evaluate``.
The loop here owns epochs, the cosine learning-rate decay, the divergence rule, wall time
and reporting; the orchestrator turns the reports into Ray Tune reports and Parquet rows,
and checkpoints through ``state_dict`` / ``load_state_dict``. Nothing here imports Ray.

Divergence rule: a step whose inner solve diverged for more than half the batch, or whose
loss is not finite, is reported with ``diverged_step=True`` and makes no parameter update;
``diverged_patience`` such steps in a row end the run with status ``"diverged"``.

Evaluation contract (what ``evaluate`` returns, what the eval step rows and a trial's final
metrics hold): the metrics, plus ``eval_n`` (int, the number of held-out samples they were
computed on; a metric computed on another count would carry its own ``<metric>_n``), plus,
for every mean metric that is not a proportion (PSNR, losses), ``<metric>_samples``: its
per-sample values (a list of floats whose mean is the metric), so the analysis can
bootstrap an interval; a proportion (an accuracy, a diverged fraction) times ``eval_n`` is
the count of samples. Lists reach the eval rows of the ``steps`` table (list<double>
columns); the Tune reports and the ``trials`` row keep numbers only, so they get
``eval_n`` but not the lists.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from orchestrator.data import DatasetSplits, make_loader
from orchestrator.tasks.data_parallel_step import AveragedStepOptimizer, broadcast_parameters, world_size
from orchestrator.tasks.task_config import TaskConfig

__all__ = ["Callback", "StepOutcome", "TaskResult", "Trainer"]

Callback = Callable[[dict[str, Any]], None]


@dataclass
class StepOutcome:
    """What ``train_step`` returns: metrics of the step and whether its solve diverged."""

    metrics: dict[str, float]
    diverged: bool = False
    trace: dict[str, list[float]] | None = None


@dataclass
class TaskResult:
    """What :meth:`Trainer.fit` returns: how the run ended, its last metrics, steps and time."""

    status: str  # "completed" | "diverged"
    metrics: dict[str, Any]  # numbers, plus the last evaluation's ``<metric>_samples`` lists
    steps: int
    wall_s: float


class Trainer(ABC):
    """Base of the tasks: owns the loop; subclasses build modules and implement the steps."""

    def __init__(self, config: TaskConfig, data: DatasetSplits) -> None:
        self.config, self.data = config, data
        self.device = torch.device(config.device)
        torch.manual_seed(config.seed)
        self.modules: dict[str, nn.Module] = self.build()
        for m in self.modules.values():
            m.to(self.device)
        params = [p for m in self.modules.values() for p in m.parameters()]
        self.optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
        self.world = world_size()
        if self.world > 1:  # data parallel: same start everywhere, one averaged step per batch
            broadcast_parameters(params)
        steps_per_epoch = math.ceil(len(data.train) / config.batch_size)
        if config.max_steps_per_epoch is not None:
            steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
        self.steps_per_epoch = steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=max(1, config.epochs * steps_per_epoch)
        )
        if self.world > 1:  # tasks call optimizer.step(); the real, averaged step comes after the batch
            self.optimizer = AveragedStepOptimizer(self.optimizer, self.world, self.device)
        self.epoch = 0
        self.global_step = 0
        self.last_metrics: dict[str, Any] = {}  # of the last evaluate(): a resumed, finished run has them

    # --- for subclasses -------------------------------------------------------------
    @abstractmethod
    def build(self) -> dict[str, nn.Module]:
        """The task's modules by name (moved to the device and optimised by the base)."""

    @abstractmethod
    def train_step(self, x: Tensor, y: Tensor) -> StepOutcome:
        """One optimiser step on a batch (the base counts steps and decays the rate)."""

    @abstractmethod
    def evaluate(self) -> dict[str, Any]:
        """Held-out metrics at the end of an epoch (modules in eval mode), with ``eval_n`` and
        ``<metric>_samples`` as the module docstring says."""

    # --- shared ---------------------------------------------------------------------
    def eval_batches(self, split: str = "test"):
        """The first ``eval_batches`` batches of a split (all of it when ``None``), in a fixed
        order, on the device: ``min(eval_batches * batch_size, len(split))`` samples."""
        loader = make_loader(getattr(self.data, split), self.config.batch_size, shuffle=False)
        for i, (x, y) in enumerate(loader):
            if self.config.eval_batches is not None and i >= self.config.eval_batches:
                break
            yield x.to(self.device), y.to(self.device)

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue identically (modules, optimiser, scheduler,
        position, the last evaluation) and the flat config, for the checkpoint."""
        return {
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "last_metrics": dict(self.last_metrics),
            "config": self.config.to_flat(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (the config is the caller's to check)."""
        for k, m in self.modules.items():
            m.load_state_dict(state["modules"][k])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.global_step = int(state["epoch"]), int(state["global_step"])
        self.last_metrics = dict(state.get("last_metrics", {}))

    def fit(self, callback: Callback | None = None) -> TaskResult:
        """Train from ``self.epoch`` to ``config.epochs``, reporting every step and epoch."""
        cfg, report = self.config, callback or (lambda r: None)
        t_start, bad_run, metrics = time.perf_counter(), 0, dict(self.last_metrics)
        while self.epoch < cfg.epochs:
            loader = make_loader(
                self.data.train, cfg.batch_size, shuffle=True, seed=cfg.seed * 1000 + self.epoch
            )
            for i, (x, y) in enumerate(loader):
                if i >= self.steps_per_epoch:
                    break
                for m in self.modules.values():
                    m.train()
                out = self.train_step(x.to(self.device), y.to(self.device))
                if self.world > 1:
                    out.diverged = self.optimizer.all_reduce_step(out.diverged)
                bad_run = bad_run + 1 if out.diverged else 0
                self.global_step += 1
                self.scheduler.step()
                row = {
                    "step": self.global_step,
                    "epoch": self.epoch,
                    "phase": "train",
                    "diverged_step": out.diverged,
                    "lr": self.scheduler.get_last_lr()[0],
                    **out.metrics,
                }
                if out.trace is not None:
                    row["trace"] = out.trace
                report(row)
                if bad_run >= cfg.diverged_patience:
                    return TaskResult(
                        "diverged",
                        {**metrics, **out.metrics},
                        self.global_step,
                        time.perf_counter() - t_start,
                    )
            self.epoch += 1
            for m in self.modules.values():
                m.eval()
            metrics = self.last_metrics = self.evaluate()
            report(
                {"step": self.global_step, "epoch": self.epoch, "phase": "eval", "epoch_end": True, **metrics}
            )
        return TaskResult("completed", metrics, self.global_step, time.perf_counter() - t_start)

    def want_trace(self) -> bool:
        """Whether the coming step records its solve's trace (every ``trace_every`` steps)."""
        return self.config.trace_every > 0 and (self.global_step + 1) % self.config.trace_every == 0
