"""One Ray Tune experiment of a sweep: the trials still missing, run by ``tune.Tuner``.

Why its own module: :mod:`orchestrator.driver.sweep` decides what to run (from the store);
this module runs it: the searcher and scheduler (ASHA that writes its prune decisions
through the driver's background writer, :mod:`orchestrator.driver.background_writes`),
the trial resources and concurrency, the console and trackers, and the rows of trials that
failed past their retries. It returns how many trials it resumed and whether it was
interrupted; the caller reads the outcome from the store.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

from orchestrator.driver.background_writes import DriverWriteError, DriverWrites
from orchestrator.driver.config import SweepConfig, trial_epochs
from orchestrator.driver.state import (
    driver_row,
    record_pareto,
)
from orchestrator.storage import ResultStore, layout
from orchestrator.trial.meta import SweepMeta

__all__ = ["drain", "pruning_asha", "quiet_ray", "record_failed", "run_params", "run_tuner"]


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


def run_tuner(
    cfg: SweepConfig, store: ResultStore, plan, resume, enqueue, remaining, marker
) -> tuple[int, bool]:
    """Run the Tune experiment; how many trials it resumed, and whether it was interrupted."""
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    from orchestrator.driver.search import make_searcher
    from orchestrator.trial.trainable import run_trial  # torch: imported once a sweep runs

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
        scheduler = pruning_asha(store, cfg, writes)(
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
        from orchestrator.driver.console import SweepConsole, best_finished

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
        drain(writes)  # the pruned rows reach storage before the driver reads it
        record_failed(store, cfg, grid)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        drain(writes, close=True)  # Ctrl-C or an error: the decisions taken are written too
        if console is not None:
            console.close()
        for tracker in trackers:  # Ctrl-C: what was logged is flushed, open runs end as killed
            tracker.close()
    if len(cfg.metrics) > 1:
        record_pareto(store, cfg)
    return len(resume), interrupted


def pruning_asha(store: ResultStore, cfg: SweepConfig, writes: DriverWrites | None = None):
    """ASHA that writes a trial's ``pruned`` row when it decides to stop it (a killed driver
    does not forget it); a trial stopped by Ctrl-C stays pending and continues on resume.

    The row is written by ``writes``, the driver's background writer, so Tune's event loop
    (every trial's reports) never waits on storage; ``run_tuner`` flushes it before it
    reads the store. A decision killed before it reached storage leaves the trial
    ``running`` with its checkpoint: ``--resume`` continues it (``orchestrator.driver.background_writes``
    says why nothing is lost or duplicated). ``writes=None`` writes in the callback itself
    (the synchronous behaviour, measured by ``benchmarks/driver_writes.py``).
    """
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    from orchestrator.trial.trainable import trial_id_of

    searched = tuple(cfg.space)

    class PruningASHA(ASHAScheduler):
        def on_trial_result(self, tune_controller, trial, result):
            action = super().on_trial_result(tune_controller, trial, result)
            if action == TrialScheduler.STOP and not result.get("final"):
                tid = trial_id_of(trial.config, cfg.name, searched)
                params = run_params(trial.config, searched)
                args = (store, cfg, tid, params, "pruned", dict(result), None)  # a copy: Tune reuses result
                if writes is None:
                    driver_row(*args)
                else:
                    writes.submit(f"pruned row of trial {tid}", driver_row, *args)
            return action

    return PruningASHA


def drain(writes: DriverWrites, close: bool = False) -> None:
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


def record_failed(store: ResultStore, cfg: SweepConfig, grid) -> None:
    """Trials that failed past their retries, or finished without their own row, get a row
    from here; trials stopped by an interruption stay pending, to continue on resume."""
    from orchestrator.trial.trainable import trial_id_of

    rows = store.read("trials", cfg.name)
    status = dict(zip(rows["trial_id"], rows["status"], strict=True)) if len(rows) else {}
    for result in grid:
        if "trial_id" not in (result.config or {}) and not all(k in (result.config or {}) for k in cfg.space):
            continue
        tid = trial_id_of(result.config, cfg.name, tuple(cfg.space))
        params = run_params(result.config, tuple(cfg.space))
        last = result.metrics or {}
        if status.get(tid, "error") != "error":
            continue  # the trial wrote its own row: it stays as it is
        if result.error is not None:
            driver_row(store, cfg, tid, params, "error", last, str(result.error))
        elif tid not in status and last.get("final"):  # it finished, but its own row is missing
            driver_row(store, cfg, tid, params, str(last.get("status", "completed")), last, None)


def run_params(config: dict[str, Any], searched: tuple[str, ...]) -> dict[str, Any]:
    """A run's parameters from its Tune config: the searched ones, and the seed of a
    replicated sweep's run (the driver's rows then carry the seed the run trained with)."""
    params = {k: config[k] for k in searched if k in config}
    if "seed" in config and "seed" not in params:
        params["seed"] = int(config["seed"])
    return params
