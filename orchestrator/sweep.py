"""Run a sweep: Ray Tune ``Tuner`` + ``OptunaSearch`` (seeded TPE), ASHA, Parquet, resume.

The Parquet store (``orchestrator.results``) is the source of truth, not Tune's experiment
state. Each invocation is one fresh Tune experiment that runs only what is missing:

- finished trials (a ``trials`` row: completed, diverged, pruned or error) are kept and
  fed to the searcher as already-evaluated points, so it continues from what it learned;
- started-but-unfinished trials (their records under ``pending/``) are enqueued first,
  with their exact parameters and ``trial_id``, so they reload their own checkpoint and
  continue; errored trials get another round (``ERROR_ROUNDS``) unless they failed the
  same way twice;
- new trials fill up to the requested total, so a sweep ends with exactly ``trials``
  rows however often it was interrupted, and ``--resume --trials M`` extends it.

Trial identity holds by construction (``orchestrator.search.UniqueTrials``): no started
point is proposed again, no two live trials share an id. One driver per sweep
(``orchestrator.lock``); a resume with other settings than the sweep was started with is
refused. ASHA's prune decisions are written when taken, by a background writer
(``orchestrator.driver_writes``: Tune's event loop never waits on storage), flushed before
the driver reads the store.

This avoids Tune's restore pitfalls (OptunaSearch KeyError with ``restart_errored``,
checkpoints deleted under a hard kill, partial ResultGrids after SIGINT, an iteration
reported twice): none of them can duplicate or lose a Parquet row, whose files are keyed.
"""

from __future__ import annotations

import dataclasses
import math
import re
import shlex
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from orchestrator.driver_writes import DriverWriteError, DriverWrites
from orchestrator.space import Dim
from orchestrator.storage import ResultStore, SweepLock, check_shared, layout, remove_marker
from orchestrator.sweep_state import (
    FINISHED,
    check_resume,
    driver_row,
    finish_compaction,
    missing_seeds,
    plan_run,
    quarantine_incomplete,
    record_pareto,
    sync_records,
    write_meta,
)
from orchestrator.trial_meta import SweepMeta, make_trial_id

__all__ = [
    "Dim",
    "SweepConfig",
    "SweepExistsError",
    "SweepOutcome",
    "quiet_ray",
    "reopen_best_pruned",
    "run_sweep",
    "trial_epochs",
]

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


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
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
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
    as ``trainable.run_trial`` does), so a setting left to ``TaskConfig``'s default counts as
    that default. A searched ``epochs`` gives its largest value.

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
                f"no GPU in the cluster yet: assuming it autoscales; up to {cfg.runs} trials at once "
                "(set --max-concurrent to bound it)"
            )
            return cfg.runs
        slots = math.floor(res.get("GPU", 0) / cfg.gpus_per_trial)
    return max(1, slots)


def run_sweep(cfg: SweepConfig) -> SweepOutcome:
    """Run (or continue) the sweep ``cfg``, holding its driver lock; returns its outcome."""
    store = ResultStore(cfg.storage)
    with SweepLock(store, cfg.name, stale_s=cfg.lock_stale_s) as lock:
        return _run_locked(dataclasses.replace(cfg, extra={**cfg.extra, "driver_token": lock.token}), store)


def _run_locked(cfg: SweepConfig, store: ResultStore) -> SweepOutcome:
    removed = store.clean_tmp()
    if removed:
        print(f"removed {removed} leftover temporary files of an interrupted write", file=sys.stderr)
    quarantine_incomplete(store, cfg.name)
    trials = store.read("trials", cfg.name, on_corrupt="quarantine")
    finish_compaction(store, cfg.name, set(trials["trial_id"]) if len(trials) else set())
    records = sync_records(store, cfg.name, trials, store.records(cfg.name))
    if not cfg.resume and (len(trials) or records):
        raise SweepExistsError(
            f"sweep {cfg.name!r} already has {len(trials)} finished and {len(store.pending(cfg.name))} "
            f"unfinished trials in {cfg.storage}: pass --resume to continue (or extend) it, "
            "or --name to start a new sweep"
        )
    if cfg.resume:
        check_resume(store, cfg)
        if reopen_best_pruned(store, cfg, trials, records):
            trials = store.read("trials", cfg.name)
    plan = plan_run(trials, records, tuple(cfg.space))
    if cfg.seeds > 1:
        plan.missing = missing_seeds(plan, tuple(cfg.space), cfg.seed_list())
    remaining = cfg.runs - len(plan.finished)
    if remaining < 0:
        print(
            f"sweep {cfg.name} already has {len(plan.finished)} finished trials; --trials {cfg.trials}"
            f"{f' (x {cfg.seeds} seeds = {cfg.runs} runs)' if cfg.seeds > 1 else ''} is below that: "
            "nothing to run\n  (pass a larger --trials to extend it)"
        )
        return _outcome(store, cfg, 0, False)
    if remaining == 0:
        print(f"sweep {cfg.name}: all {cfg.runs} trials already finished; nothing to run")
        return _outcome(store, cfg, 0, False)
    resume = plan.resume[:remaining]
    fresh = not len(trials) and not records
    enqueue = [dict(p) for p in cfg.enqueue] if fresh else []
    if cfg.resume:
        retried = f" ({len(plan.retried)} errored, retried)" if plan.retried else ""
        print(
            f"sweep {cfg.name}: {len(plan.finished)} finished, {len(resume)} to continue{retried}, "
            f"{remaining - len(resume)} new (target {cfg.runs})"
        )
    seeds = cfg.seed_list() if cfg.seeds > 1 else (None,)  # a replicated run's id hashes its seed too
    paper_ids = [
        make_trial_id(cfg.name, dict(p) if s is None else {**p, "seed": s})
        for p in cfg.enqueue
        for s in seeds
    ]
    write_meta(store, cfg, paper_ids)
    import ray

    quiet_ray(cfg.verbose)
    if not ray.is_initialized():
        ray.init(address=cfg.address, log_to_driver=False)
    marker = check_shared(cfg.storage, store.base, cfg.name)  # every node must see local storage
    try:
        return _run_tuner(cfg, store, plan, resume, enqueue, remaining, marker)
    finally:
        remove_marker(marker)


def quiet_ray(verbose: bool) -> None:
    """Without ``--verbose``, Ray's own output stays off the console (the live line says it
    all): Tune's experiment box, "View detailed results here" and its TensorBoard hint (the
    new output engine prints them at any verbosity; ``RAY_AIR_NEW_OUTPUT=0`` gives the
    legacy one, silent at ``verbose=0``), Tune's INFO logs, and ``ray.init``'s token-auth
    warning (cluster/README.md, "Security", says what this project sets up)."""
    import logging
    import os

    if verbose:
        return
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)


def _run_tuner(
    cfg: SweepConfig, store: ResultStore, plan, resume, enqueue, remaining, marker
) -> SweepOutcome:
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    from orchestrator.search import make_searcher
    from orchestrator.trainable import run_trial  # torch: imported once a sweep runs

    storage_path = cfg.storage if layout.is_uri(cfg.storage) else store.base
    meta = SweepMeta(
        name=cfg.name,
        storage=storage_path,  # trials run in other working directories
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
            "ray_storage": layout.ray_dir(storage_path),
            "storage_marker": marker,
            **cfg.extra,
        },
    )
    writes = DriverWrites(name=f"driver-writes-{cfg.name}")  # storage writes off Tune's event loop
    if cfg.scheduler == "asha":
        # A trial reports its last epoch only after writing its row, so a stop there is harmless.
        scheduler = _pruning_asha(store, cfg, writes)(
            metric=cfg.metrics[0],
            mode=cfg.modes[0],
            time_attr="epoch",
            max_t=trial_epochs(cfg),
            grace_period=1,
            reduction_factor=2,
        )
    else:
        scheduler = FIFOScheduler()
    # A data-parallel trial is a driver only: its Ray Train workers request the resources.
    dp = cfg.workers_per_trial > 1
    resources = {"cpu": 0.01} if dp else {"cpu": cfg.cpus_per_trial, "gpu": cfg.gpus_per_trial}
    trainable = tune.with_resources(tune.with_parameters(run_trial, meta=meta), resources)
    searcher = make_searcher(
        cfg.name,
        cfg.space,
        cfg.metrics,
        cfg.modes,
        cfg.seed,
        plan.finished,
        resume,
        {**plan.started, **{t: p for t, p in plan.resume[remaining:]}},
        enqueue,
        _concurrency(cfg),
        seeds=cfg.seed_list() if cfg.seeds > 1 else (),
        missing=plan.missing,
    )
    console = None
    if not cfg.verbose:
        from orchestrator.console import SweepConsole, best_finished

        console = SweepConsole(
            cfg.name,
            cfg.runs,
            len(plan.finished),
            cfg.metrics[0],
            cfg.modes[0],
            tuple(cfg.space),
            best=best_finished(plan.finished, cfg.metrics[0], cfg.modes[0], tuple(cfg.space)),
        )
    trackers = []
    if cfg.log:  # opt-in; a tracker whose package is missing is left out with one line
        from orchestrator.trackers import make_callbacks

        trackers = make_callbacks(
            cfg.log, cfg.name, storage_path, cfg.metrics, tuple(cfg.space), cfg.mlflow_uri
        )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler, num_samples=remaining, reuse_actors=cfg.reuse_actors
        ),
        run_config=tune.RunConfig(
            name=f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=layout.ray_dir(storage_path),
            verbose=1 if cfg.verbose else 0,
            callbacks=([console] if console is not None else []) + trackers or None,
            failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
        ),
    )
    interrupted = False
    try:
        grid = tuner.fit()
        _drain(writes)  # the pruned rows reach storage before the driver reads it
        _record_failed(store, cfg, grid)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        _drain(writes, close=True)  # Ctrl-C or an error: the decisions taken are written too
        if console is not None:
            console.close()
        for tracker in trackers:  # Ctrl-C: what was logged is flushed, open runs end as killed
            tracker.close()
    if len(cfg.metrics) > 1:
        record_pareto(store, cfg)
    return _outcome(store, cfg, len(resume), interrupted)


def _outcome(store: ResultStore, cfg: SweepConfig, ran: int, interrupted: bool) -> SweepOutcome:
    after = store.read("trials", cfg.name)
    n_done = int(after["status"].isin(FINISHED).sum()) if len(after) else 0
    completed = int((after["status"] == "completed").sum()) if len(after) else 0
    pruned = int((after["status"] == "pruned").sum()) if len(after) else 0
    errors = after[after["status"] == "error"] if len(after) else after
    first = None
    if len(errors):
        row = errors.iloc[0]
        msg = str(row.get("error") or "").strip().splitlines()
        first = f"trial {row['trial_id']}: {msg[-1] if msg else 'unknown error'}"
    interrupted = interrupted or n_done < cfg.runs
    if interrupted:
        print(
            f"\nsweep {cfg.name} stopped with {n_done} of {cfg.runs} trials finished; nothing is lost. "
            f"Resume with:\n  {cfg.resume_command or 'the same command with --resume'}",
            file=sys.stderr,
        )
    return SweepOutcome(
        n_done,
        cfg.runs,
        ran,
        interrupted,
        cfg.storage,
        completed,
        len(errors),
        first,
        pruned,
        trial_epochs(cfg),
    )


def reopen_best_pruned(
    store: ResultStore, cfg: SweepConfig, trials, records: dict[str, dict[str, Any]]
) -> str | None:
    """A sweep none of whose trials completed but some were pruned has no answer: reopen
    the pruned trial with the best objective at its last rung, so that this resume runs it
    to its last epoch (from the start: a pruned trial's checkpoint is gone). Its pruned row
    moves to ``corrupt/`` with the reason (kept, not lost); its record turns ``running``,
    so :func:`plan_run` continues it under the same ``trial_id`` (no trial is added, rows
    are keyed, so none is duplicated). Returns the reopened id, or None.
    """
    if not len(trials) or (trials["status"] == "completed").any():
        return None
    metric, mode = cfg.metrics[0], cfg.modes[0]
    pruned = trials[(trials["status"] == "pruned") & trials["trial_id"].isin(list(records))]
    if not len(pruned) or metric not in pruned:
        return None
    values = pruned[metric].astype(float).fillna(-math.inf if mode == "max" else math.inf)
    best = pruned.loc[values.idxmax() if mode == "max" else values.idxmin()]
    tid = str(best["trial_id"])
    store.quarantine(
        store.table_file("trials", cfg.name, tid),
        "sweep had no completed trial; this pruned trial was reopened by --resume to run to its last epoch",
    )
    record = records[tid]
    record.update(state="running", reopened_from="pruned")
    store.write_record(cfg.name, tid, record)
    print(
        f"sweep {cfg.name}: no trial completed, every finished one was pruned; reopening the best pruned "
        f"trial {tid} ({metric} {float(best[metric]):.4g} at epoch {best.get('epoch')}) to run to its end"
    )
    return tid


def _pruning_asha(store: ResultStore, cfg: SweepConfig, writes: DriverWrites | None = None):
    """ASHA that writes a trial's ``pruned`` row when it decides to stop it (a killed driver
    does not forget it); a trial stopped by Ctrl-C stays pending and continues on resume.

    The row is written by ``writes``, the driver's background writer, so Tune's event loop
    (every trial's reports) never waits on storage; ``_run_tuner`` flushes it before it
    reads the store. A decision killed before it reached storage leaves the trial
    ``running`` with its checkpoint: ``--resume`` continues it (``orchestrator.driver_writes``
    says why nothing is lost or duplicated). ``writes=None`` writes in the callback itself
    (the synchronous behaviour, measured by ``benchmarks/driver_writes.py``).
    """
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    from orchestrator.trainable import trial_id_of

    searched = tuple(cfg.space)

    class PruningASHA(ASHAScheduler):
        def on_trial_result(self, tune_controller, trial, result):
            action = super().on_trial_result(tune_controller, trial, result)
            if action == TrialScheduler.STOP and not result.get("final"):
                tid = trial_id_of(trial.config, cfg.name, searched)
                params = _run_params(trial.config, searched)
                args = (store, cfg, tid, params, "pruned", dict(result), None)  # a copy: Tune reuses result
                if writes is None:
                    driver_row(*args)
                else:
                    writes.submit(f"pruned row of trial {tid}", driver_row, *args)
            return action

    return PruningASHA


def _drain(writes: DriverWrites, close: bool = False) -> None:
    """Wait for the driver's background writes (``close``: and stop its thread). A write that
    failed is reported here, not raised: its trial has no row (or one the next start
    completes), so the sweep ends "stopped ... resume with" and ``--resume`` takes it up."""
    try:
        writes.close() if close else writes.flush()
    except DriverWriteError as exc:
        for what, err in exc.failures:
            print(
                f"warning: {what} failed ({type(err).__name__}: {err}); --resume takes it up", file=sys.stderr
            )


def _record_failed(store: ResultStore, cfg: SweepConfig, grid) -> None:
    """Trials that failed past their retries, or finished without their own row, get a row
    from here; trials stopped by an interruption stay pending, to continue on resume."""
    from orchestrator.trainable import trial_id_of

    rows = store.read("trials", cfg.name)
    status = dict(zip(rows["trial_id"], rows["status"], strict=True)) if len(rows) else {}
    for result in grid:
        if "trial_id" not in (result.config or {}) and not all(k in (result.config or {}) for k in cfg.space):
            continue
        tid = trial_id_of(result.config, cfg.name, tuple(cfg.space))
        params = _run_params(result.config, tuple(cfg.space))
        last = result.metrics or {}
        if status.get(tid, "error") != "error":
            continue  # the trial wrote its own row: it stays as it is
        if result.error is not None:
            driver_row(store, cfg, tid, params, "error", last, str(result.error))
        elif tid not in status and last.get("final"):  # it finished, but its own row is missing
            driver_row(store, cfg, tid, params, str(last.get("status", "completed")), last, None)


def _run_params(config: dict[str, Any], searched: tuple[str, ...]) -> dict[str, Any]:
    """A run's parameters from its Tune config: the searched ones, and the seed of a
    replicated sweep's run (the driver's rows then carry the seed the run trained with)."""
    params = {k: config[k] for k in searched if k in config}
    if "seed" in config and "seed" not in params:
        params["seed"] = int(config["seed"])
    return params


def resume_command(argv: list[str]) -> str:
    """The command line that resumes this one: the same arguments plus ``--resume``."""
    args = [a for a in argv if a != "--resume"]
    return shlex.join([sys.executable, *args, "--resume"])
