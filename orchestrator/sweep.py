"""Run a sweep: Ray Tune ``Tuner`` + ``OptunaSearch`` (seeded TPE), ASHA, Parquet, resume.

The Parquet store (``orchestrator.results``) is the source of truth, not Tune's experiment
state. Each invocation is one fresh Tune experiment that runs only what is missing:

- finished trials (a ``trials`` row: completed, diverged, pruned or error) are kept and
  fed to the searcher as already-evaluated points, so it continues from what it learned;
- started-but-unfinished trials (``pending``) are enqueued first, with their exact
  parameters: same ``trial_id``, so they reload their own checkpoint and continue;
- new trials fill up to the requested total, so a sweep ends with exactly ``trials``
  rows however often it was interrupted, and ``--resume --trials M`` extends it.

This avoids Tune's restore pitfalls (OptunaSearch KeyError with ``restart_errored``,
checkpoints deleted under a hard kill, partial ResultGrids after SIGINT, an iteration
reported twice): none of them can duplicate or lose a Parquet row, whose files are keyed.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from orchestrator.results import ResultStore
from orchestrator.trainable import SweepMeta, make_trial_id, run_trial, worst_value

__all__ = ["Dim", "SweepConfig", "SweepExistsError", "SweepOutcome", "run_sweep"]

FINISHED = ("completed", "diverged", "pruned", "error")


@dataclass(frozen=True)
class Dim:
    """One searched hyperparameter: ``loguniform``/``uniform`` (low, high), ``int`` (low, high,
    inclusive), or ``choice`` (choices)."""

    kind: str
    low: float = 0.0
    high: float = 0.0
    choices: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ("loguniform", "uniform", "int", "choice"):
            raise ValueError(f"Dim kind must be loguniform, uniform, int or choice, got {self.kind!r}")
        if self.kind == "choice" and not self.choices:
            raise ValueError("Dim kind 'choice' needs choices")
        bad_range = not (self.low < self.high) or (self.kind == "loguniform" and self.low <= 0)
        if self.kind != "choice" and bad_range:
            raise ValueError(f"Dim {self.kind} needs 0 < low < high (low > 0 for loguniform), got {self}")

    def tune(self):
        from ray import tune

        if self.kind == "loguniform":
            return tune.loguniform(self.low, self.high)
        if self.kind == "uniform":
            return tune.uniform(self.low, self.high)
        if self.kind == "int":
            return tune.randint(int(self.low), int(self.high) + 1)
        return tune.choice(list(self.choices))


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
    reuse_actors: bool = True
    kind: str = "train"
    checkpoint: str | None = None
    address: str | None = None
    resume_command: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"name must be a non-empty name without '/', got {self.name!r}")
        if not self.space:
            raise ValueError("space must search at least one hyperparameter")
        if len(self.metrics) != len(self.modes) or not self.metrics:
            raise ValueError("metrics and modes must be non-empty and of the same length")
        if any(m not in ("min", "max") for m in self.modes):
            raise ValueError(f"modes must be 'min' or 'max', got {self.modes}")
        if not isinstance(self.trials, int) or self.trials < 1:
            raise ValueError(f"trials must be an integer >= 1, got {self.trials!r}")
        if self.cpus_per_trial <= 0 or self.gpus_per_trial < 0:
            raise ValueError("cpus_per_trial must be > 0 and gpus_per_trial >= 0")
        if self.gpus_per_trial > 1 and self.gpus_per_trial != int(self.gpus_per_trial):
            raise ValueError(f"gpus_per_trial above 1 must be a whole number, got {self.gpus_per_trial}")
        if not isinstance(self.workers_per_trial, int) or self.workers_per_trial < 1:
            raise ValueError(f"workers_per_trial must be an integer >= 1, got {self.workers_per_trial!r}")
        if self.workers_per_trial > 1 and self.kind != "train":
            raise ValueError("workers_per_trial > 1 (data-parallel trials) is for training sweeps only")
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


def _concurrency(cfg: SweepConfig) -> int:
    """Trials at once: what the cluster's resources hold now, or, when it holds no GPU yet
    while trials ask for one (an autoscaling cluster starting from its head), every trial,
    so that the queued trials make the autoscaler add GPU nodes."""
    import ray

    if cfg.max_concurrent is not None:
        return max(1, cfg.max_concurrent)
    res = ray.cluster_resources()
    slots = math.floor(res.get("CPU", 0) / (cfg.cpus_per_trial * cfg.workers_per_trial))
    if cfg.gpus_per_trial > 0:
        if res.get("GPU", 0) < cfg.gpus_per_trial:
            print(
                f"no GPU in the cluster yet: assuming it autoscales; up to {cfg.trials} trials at once "
                "(set --max-concurrent to bound it)"
            )
            return cfg.trials
        slots = math.floor(res.get("GPU", 0) / cfg.gpus_per_trial)
    return max(1, slots)


def _searcher(cfg: SweepConfig, finished, enqueue: list[dict[str, Any]]):
    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    multi = len(cfg.metrics) > 1
    sampler = optuna.samplers.TPESampler(seed=cfg.seed + len(finished))
    searcher = OptunaSearch(
        space={k: d.tune() for k, d in cfg.space.items()},
        metric=list(cfg.metrics) if multi else cfg.metrics[0],
        mode=list(cfg.modes) if multi else cfg.modes[0],
        sampler=sampler,
        points_to_evaluate=enqueue or None,
    )
    worst = [worst_value(m) for m in cfg.modes]
    for _, row in finished.iterrows():
        params = {k: _native(row[k]) for k in cfg.space if k in row}
        if len(params) != len(cfg.space) or row["status"] == "error":
            continue
        values = worst if row["status"] == "diverged" else [row.get(m) for m in cfg.metrics]
        if any(v is None or not math.isfinite(float(v)) for v in values):
            continue
        try:
            if multi:  # OptunaSearch.add_evaluated_point takes one value; add the trial directly
                searcher._ot_study.add_trial(
                    optuna.trial.create_trial(
                        state=optuna.trial.TrialState.COMPLETE,
                        values=[float(v) for v in values],
                        params=params,
                        distributions=searcher._space,
                    )
                )
            else:
                searcher.add_evaluated_point(params, float(values[0]))
        except ValueError as exc:  # e.g. a point outside a search space changed since
            print(f"not telling the searcher about trial {row['trial_id']}: {exc}", file=sys.stderr)
    return ConcurrencyLimiter(searcher, max_concurrent=_concurrency(cfg))


def _native(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def run_sweep(cfg: SweepConfig) -> SweepOutcome:
    """Run (or continue) the sweep ``cfg``; returns how many trials are finished."""
    import ray
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    store = ResultStore(cfg.storage)
    trials = store.read("trials", cfg.name)
    pending = store.pending(cfg.name)
    if not cfg.resume and (len(trials) or pending):
        raise SweepExistsError(
            f"sweep {cfg.name!r} already has {len(trials)} finished and {len(pending)} unfinished trials in "
            f"{cfg.storage}: pass --resume to continue (or extend) it, or --name to start a new sweep"
        )
    finished = trials[trials["status"].isin(FINISHED)] if len(trials) else trials
    done_ids = set(finished["trial_id"]) if len(finished) else set()
    unfinished = [p for tid, p in pending.items() if tid not in done_ids]
    remaining = cfg.trials - len(finished)
    if remaining <= 0:
        print(f"sweep {cfg.name}: {len(finished)} of {cfg.trials} trials already finished; nothing to run")
        return SweepOutcome(len(finished), cfg.trials, 0, False, cfg.storage)
    enqueue = unfinished[:remaining]
    if not len(finished) and not pending:
        enqueue += [dict(p) for p in cfg.enqueue]
    if cfg.resume:
        print(
            f"sweep {cfg.name}: {len(finished)} finished, {len(enqueue)} to continue, "
            f"{remaining - len(enqueue)} new (target {cfg.trials})"
        )
    _write_meta(store, cfg)
    if not ray.is_initialized():
        ray.init(address=cfg.address, log_to_driver=False)
    storage_path = cfg.storage if "://" in cfg.storage else store.base
    meta = SweepMeta(
        name=cfg.name,
        storage=cfg.storage if "://" in cfg.storage else store.base,  # trials run in other directories
        searched=tuple(cfg.space),
        fixed=cfg.fixed,
        data=cfg.data,
        metrics=cfg.metrics,
        modes=cfg.modes,
        kind=cfg.kind,
        checkpoint=cfg.checkpoint,
        extra={
            "gpus_per_trial": cfg.gpus_per_trial,
            "cpus_per_trial": cfg.cpus_per_trial,
            "workers_per_trial": cfg.workers_per_trial,
            "ray_storage": f"{storage_path}/ray",
            **cfg.extra,
        },
    )
    if cfg.scheduler == "asha":
        # A trial reports its last epoch only after writing its row, so a stop there is harmless.
        scheduler = _pruning_asha(cfg.name, tuple(cfg.space))(
            metric=cfg.metrics[0],
            mode=cfg.modes[0],
            time_attr="epoch",
            max_t=max(1, int(cfg.fixed.get("epochs", 1))),
            grace_period=1,
            reduction_factor=2,
        )
    else:
        scheduler = FIFOScheduler()
    # A data-parallel trial is a driver only: its Ray Train workers request the resources.
    dp = cfg.workers_per_trial > 1
    resources = {"cpu": 0.01} if dp else {"cpu": cfg.cpus_per_trial, "gpu": cfg.gpus_per_trial}
    trainable = tune.with_resources(tune.with_parameters(run_trial, meta=meta), resources)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=_searcher(cfg, finished, enqueue),
            scheduler=scheduler,
            num_samples=remaining,
            reuse_actors=cfg.reuse_actors,
        ),
        run_config=tune.RunConfig(
            name=f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=f"{storage_path}/ray",
            verbose=1,
            failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
        ),
    )
    interrupted = False
    try:
        grid = tuner.fit()
        _record_stopped(store, cfg, grid, getattr(scheduler, "pruned", set()))
    except KeyboardInterrupt:
        interrupted = True
    if len(cfg.metrics) > 1:
        _record_pareto(store, cfg)
    after = store.read("trials", cfg.name)
    n_done = int(after["status"].isin(FINISHED).sum()) if len(after) else 0
    interrupted = interrupted or n_done < cfg.trials
    if interrupted:
        print(
            f"\nsweep {cfg.name} stopped with {n_done} of {cfg.trials} trials finished; nothing is lost. "
            f"Resume with:\n  {cfg.resume_command or 'the same command with --resume'}",
            file=sys.stderr,
        )
    return SweepOutcome(n_done, cfg.trials, len(enqueue), interrupted, cfg.storage)


def _pruning_asha(sweep: str, searched: tuple[str, ...]):
    """ASHA that remembers which trials it stopped, so only those are recorded as pruned
    (a trial stopped by Ctrl-C stays pending and continues on resume)."""
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    class PruningASHA(ASHAScheduler):
        def __init__(self, **kw: Any) -> None:
            super().__init__(**kw)
            self.pruned: set[str] = set()

        def on_trial_result(self, tune_controller, trial, result):
            action = super().on_trial_result(tune_controller, trial, result)
            if action == TrialScheduler.STOP and not result.get("final"):
                self.pruned.add(make_trial_id(sweep, {k: trial.config[k] for k in searched}))
            return action

    return PruningASHA


def _record_stopped(store: ResultStore, cfg: SweepConfig, grid, pruned: set[str]) -> None:
    """Trials ASHA stopped or that failed past their retries get a row from here; trials
    stopped by an interruption stay pending, to continue on resume."""
    have = set(store.read("trials", cfg.name)["trial_id"])
    for result in grid:
        params = {k: result.config[k] for k in cfg.space if k in result.config}
        tid = make_trial_id(cfg.name, params)
        if tid in have:
            continue
        last = result.metrics or {}
        if result.error is not None:
            status = "error"
        elif last.get("final"):  # it finished, but its own row is missing: keep what it reported
            status = str(last.get("status", "completed"))
        elif tid in pruned:
            status = "pruned"
        else:
            continue  # interrupted: its pending record and checkpoint let a resume continue it
        row = {
            "trial_id": tid,
            "status": status,
            **cfg.fixed,
            **params,
            "task": cfg.fixed.get("task"),
            "dataset": cfg.data.get("dataset"),
            **{m: last.get(m) for m in cfg.metrics},
            "epoch": last.get("epoch"),
            "error": None if result.error is None else str(result.error)[-2000:],
        }
        store.write("trials", cfg.name, tid, [row])
        store.delete_pending(cfg.name, tid)
        store.delete_checkpoint(cfg.name, tid)


def _write_meta(store: ResultStore, cfg: SweepConfig) -> None:
    """``meta/sweep=NAME/sweep.json``: objectives, space, fixed settings, the paper trial's id."""
    paper = [make_trial_id(cfg.name, dict(p)) for p in cfg.enqueue]
    meta = {
        "name": cfg.name,
        "metrics": list(cfg.metrics),
        "modes": list(cfg.modes),
        "trials": cfg.trials,
        "space": {
            k: {"kind": d.kind, "low": d.low, "high": d.high, "choices": list(d.choices)}
            for k, d in cfg.space.items()
        },
        "fixed": cfg.fixed,
        "data": cfg.data,
        "kind": cfg.kind,
        "paper_trial_ids": paper,
    }
    store.put(
        f"{store.base}/meta/sweep={cfg.name}/sweep.json", json.dumps(meta, indent=1, default=repr).encode()
    )


def _record_pareto(store: ResultStore, cfg: SweepConfig) -> None:
    """Write the non-dominated finished trials of a multi-objective sweep to ``pareto/``."""
    from orchestrator.solve_trial import pareto_front

    trials = store.read("trials", cfg.name)
    if not len(trials):
        return
    ok = trials[trials["status"] == "completed"].dropna(subset=list(cfg.metrics))
    sign = [1.0 if m == "min" else -1.0 for m in cfg.modes]
    points = [
        tuple(s * float(r[m]) for s, m in zip(sign, cfg.metrics, strict=True)) for _, r in ok.iterrows()
    ]
    front = ok[pareto_front(points)] if points else ok
    cols = ["trial_id", *cfg.metrics, *cfg.space]
    store.write("pareto", cfg.name, "front", [{c: _native(r[c]) for c in cols} for _, r in front.iterrows()])


def resume_command(argv: list[str]) -> str:
    """The command line that resumes this one: the same arguments plus ``--resume``."""
    args = [a for a in argv if a != "--resume"]
    return shlex.join([sys.executable, *args, "--resume"])
