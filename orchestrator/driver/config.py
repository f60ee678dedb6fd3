"""What a sweep is asked to do (:class:`SweepConfig`) and what it did (:class:`SweepOutcome`).

Why its own module: the command line (:mod:`orchestrator.commands.sweep`), the driver
(:mod:`orchestrator.driver.sweep`, :mod:`orchestrator.driver.tuner`) and ``jiio confirm``
all build or read these; they import nothing heavy (no Ray, no torch).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from orchestrator.driver.space import Dim

__all__ = ["SWEEP_NAME", "SweepConfig", "SweepExistsError", "SweepOutcome", "trial_epochs"]

# A sweep's name: it names directories of the storage layout (``sweep=NAME``) and Tune runs.
SWEEP_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class SweepExistsError(RuntimeError):
    """A sweep of that name already has results and ``resume`` was not asked for."""


@dataclass(frozen=True)
class SweepConfig:
    """Everything a sweep needs; see ``sweeps/alpha.py`` for the command line that fills it."""

    name: str
    space: dict[str, Dim]
    metrics: tuple[str, ...]
    modes: tuple[str, ...]
    fixed: dict[str, Any]
    data: dict[str, Any]
    storage: str = "results"
    trials: int = 8
    enqueue: tuple[dict[str, Any], ...] = ()
    seed: int = 0
    resume: bool = False
    cpus_per_trial: float = 1.0  # per worker when workers_per_trial > 1
    gpus_per_trial: float = 0.0  # in all: a data-parallel trial spreads them over its workers
    workers_per_trial: int = 1
    max_concurrent: int | None = None
    scheduler: str = "asha"
    max_failures: int = 2
    lock_stale_s: float = 60.0
    verbose: bool = False  # Tune's own progress tables instead of the compact console
    reuse_actors: bool = True
    kind: str = "train"
    checkpoint: str | None = None
    address: str | None = None
    resume_command: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    seeds: int = 1  # training seeds per configuration (replicates; the same seeds for every one)
    log: tuple[str, ...] = ()  # trackers: mlflow, tensorboard, wandb (orchestrator/trackers.py)
    mlflow_uri: str | None = None

    @property
    def runs(self) -> int:
        """Trials to finish: one per (configuration, seed)."""
        return self.trials * self.seeds

    def seed_list(self) -> tuple[int, ...]:
        """The training seeds every configuration runs with: ``seeds`` consecutive ones from
        the sweep's training seed (``fixed["seed"]``, else ``seed``)."""
        base = int(self.fixed.get("seed", self.seed) or 0)
        return tuple(base + i for i in range(self.seeds))

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not SWEEP_NAME.fullmatch(self.name):
            raise ValueError(
                "name must be letters, digits, '.', '_', '-' (not starting with '.' or '-'), "
                f"got {self.name!r}"
            )
        if not self.space:
            raise ValueError("space must search at least one hyperparameter")
        if len(self.metrics) != len(self.modes) or not self.metrics:
            raise ValueError("metrics and modes must be non-empty and of the same length")
        if any(m not in ("min", "max") for m in self.modes):
            raise ValueError(f"modes must be 'min' or 'max', got {self.modes}")
        if not isinstance(self.trials, int) or self.trials < 1:
            raise ValueError(f"trials must be an integer >= 1, got {self.trials!r}")
        if not (_finite(self.cpus_per_trial) and self.cpus_per_trial > 0):
            raise ValueError(f"cpus_per_trial must be a finite number > 0, got {self.cpus_per_trial!r}")
        if not (_finite(self.gpus_per_trial) and self.gpus_per_trial >= 0):
            raise ValueError(f"gpus_per_trial must be a finite number >= 0, got {self.gpus_per_trial!r}")
        if self.max_concurrent is not None and (
            not isinstance(self.max_concurrent, int) or self.max_concurrent < 1
        ):
            raise ValueError(f"max_concurrent must be an integer >= 1, got {self.max_concurrent!r}")
        if self.gpus_per_trial > 1 and self.gpus_per_trial != int(self.gpus_per_trial):
            raise ValueError(f"gpus_per_trial above 1 must be a whole number, got {self.gpus_per_trial}")
        if not isinstance(self.workers_per_trial, int) or self.workers_per_trial < 1:
            raise ValueError(f"workers_per_trial must be an integer >= 1, got {self.workers_per_trial!r}")
        if self.workers_per_trial > 1 and self.kind != "train":
            raise ValueError("workers_per_trial > 1 (data-parallel trials) is for training sweeps only")
        if not isinstance(self.seeds, int) or isinstance(self.seeds, bool) or self.seeds < 1:
            raise ValueError(f"seeds must be an integer >= 1, got {self.seeds!r}")
        if self.seeds > 1 and self.kind != "train":
            raise ValueError("seeds > 1 is for training sweeps (a solve sweep evaluates one trained model)")
        if self.seeds > 1 and "seed" in self.space:
            raise ValueError(
                "seeds > 1 replicates every configuration over training seeds: 'seed' cannot also be searched"
            )
        if self.scheduler not in ("asha", "fifo"):
            raise ValueError(f"scheduler must be 'asha' or 'fifo', got {self.scheduler!r}")
        if self.scheduler == "asha" and len(self.metrics) > 1:
            raise ValueError("ASHA needs a single metric; use scheduler='fifo' for multi-objective sweeps")


@dataclass
class SweepOutcome:
    finished: int
    requested: int
    ran: int
    interrupted: bool
    storage: str
    completed: int = 0
    errors: int = 0
    first_error: str | None = None
    pruned: int = 0
    epochs: int = 1  # what every trial trains (ASHA's max_t)


def trial_epochs(cfg: SweepConfig) -> int:
    """The epochs a trial of ``cfg`` trains, hence ASHA's ``max_t``: from the configuration a
    trial resolves (``TaskConfig.from_flat`` of the fixed settings and a point of the space,
    as ``orchestrator.trial.trainable.run_trial`` does), so a setting left to
    ``TaskConfig``'s default counts as that default. A searched ``epochs`` gives its largest value.

    Example:
        >>> cfg = SweepConfig("s", {"alpha_x": Dim("loguniform", 0.1, 1.0)}, ("robust_acc",), ("max",),
        ...                   fixed={"task": "adversarial"}, data={})
        >>> trial_epochs(cfg)  # TaskConfig's default: no ``epochs`` among the fixed settings
        2
    """
    from orchestrator.tasks import TaskConfig

    if "epochs" in cfg.space:
        d = cfg.space["epochs"]
        return int(max(d.choices) if d.kind == "choice" else d.high)
    point = dict(cfg.enqueue[0]) if cfg.enqueue else {}
    for k, d in cfg.space.items():
        point.setdefault(k, d.choices[0] if d.kind == "choice" else d.low)
    return int(TaskConfig.from_flat({**cfg.fixed, **point}).epochs)
