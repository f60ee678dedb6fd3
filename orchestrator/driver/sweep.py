"""Run a sweep: Ray Tune ``Tuner`` + ``OptunaSearch`` (seeded TPE), ASHA, Parquet, resume.

The Parquet store (``orchestrator.storage``) is the source of truth, not Tune's experiment
state. Each invocation is one fresh Tune experiment that runs only what is missing:

- finished trials (a ``trials`` row: completed, diverged, pruned or error) are kept and
  fed to the searcher as already-evaluated points, so it continues from what it learned;
- started-but-unfinished trials (their records under ``pending/``) are enqueued first,
  with their exact parameters and ``trial_id``, so they reload their own checkpoint and
  continue; errored trials get another round (``ERROR_ROUNDS``) unless they failed the
  same way twice;
- new trials fill up to the requested total, so a sweep ends with exactly ``trials``
  rows however often it was interrupted, and ``--resume --trials M`` extends it.

Trial identity holds by construction (``orchestrator.driver.search.UniqueTrials``): no started
point is proposed again, no two live trials share an id. One driver per sweep
(``orchestrator.storage.lock``); a resume with other settings than the sweep was started with is
refused. ASHA's prune decisions are written when taken, by a background writer
(``orchestrator.driver.background_writes``: Tune's event loop never waits on storage), flushed before
the driver reads the store.

This avoids Tune's restore pitfalls (OptunaSearch KeyError with ``restart_errored``,
checkpoints deleted under a hard kill, partial ResultGrids after SIGINT, an iteration
reported twice): none of them can duplicate or lose a Parquet row, whose files are keyed.
"""

from __future__ import annotations

import dataclasses
import math
import shlex
import sys
from typing import Any

from orchestrator.driver.config import SWEEP_NAME, SweepConfig, SweepExistsError, SweepOutcome, trial_epochs
from orchestrator.driver.space import Dim
from orchestrator.driver.state import (
    FINISHED,
    check_resume,
    finish_compaction,
    missing_seeds,
    plan_run,
    quarantine_incomplete,
    sync_records,
    write_meta,
)
from orchestrator.driver.tuner import quiet_ray, run_tuner
from orchestrator.storage import ResultStore, SweepLock, check_shared, remove_marker
from orchestrator.trial.meta import make_trial_id

__all__ = [
    "SWEEP_NAME",
    "Dim",
    "SweepConfig",
    "SweepExistsError",
    "SweepOutcome",
    "quiet_ray",
    "reopen_best_pruned",
    "resume_command",
    "run_sweep",
    "trial_epochs",
]


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
        ran, interrupted = run_tuner(cfg, store, plan, resume, enqueue, remaining, marker)
        return _outcome(store, cfg, ran, interrupted)
    finally:
        remove_marker(marker)


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


def resume_command(argv: list[str]) -> str:
    """The command line that resumes this one: the same arguments plus ``--resume``."""
    args = [a for a in argv if a != "--resume"]
    return shlex.join([sys.executable, *args, "--resume"])
