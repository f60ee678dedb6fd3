"""The command line shared by the sweep scripts in ``sweeps/``: flags, defaults, messages.

A script supplies a :class:`SweepSpec` (what to search, for which objective, with which
fixed settings) and calls :func:`main`; everything else (the local or cluster Ray, results
location, the resume hint) is here; the flags and their checks are in
:mod:`orchestrator.commands.sweep_flags`, the closing analysis in
:mod:`orchestrator.commands.sweep_analysis`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestrator.driver.sweep import SweepConfig, SweepOutcome

from orchestrator.commands.sweep_analysis import closing_analysis, say
from orchestrator.commands.sweep_flags import (
    DATASETS,
    TASKS,
    SweepSpec,
    apply_cluster_settings,
    build_parser,
    refuse_existing,
    target_trials,
    trial_limits,
    validate,
)


def run_sweep(cfg: SweepConfig) -> SweepOutcome:
    """:func:`orchestrator.driver.sweep.run_sweep`, imported when a sweep runs."""
    from orchestrator.driver.sweep import run_sweep as run

    return run(cfg)


__all__ = [
    "DATASETS",
    "TASKS",
    "SweepSpec",
    "apply_cluster_settings",
    "build_parser",
    "configure",
    "main",
    "run_sweep",
    "task_objective",
]


def task_objective(task: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The metric a training sweep maximises: robust accuracy, held-out PSNR, median PSNR."""
    return {"adversarial": ("robust_acc",), "generative": ("test_psnr",)}.get(task, ("test_psnr_median",)), (
        "max",
    )


def configure(spec: SweepSpec, argv: list[str]) -> tuple[argparse.Namespace, SweepConfig]:
    """The parsed flags and the :class:`SweepConfig` that ``main`` runs for ``argv`` (before
    the script's ``prepare``): every default resolved (flag, cluster setting, built-in), every
    check done; a bad flag exits with code 2 and one line. Starts Ray only to count the
    cluster's GPUs when ``--gpus-per-trial`` is neither given nor set by the cluster."""
    parser = build_parser(spec)
    spec.add_arguments(parser)
    args = parser.parse_args(argv)
    from orchestrator.driver.sweep import SweepConfig
    from orchestrator.tasks import TaskConfig

    name = args.name or f"{spec.default_name}-{args.task}-{args.dataset}"
    apply_cluster_settings(parser, args)
    validate(parser, args, name)
    args.trials = target_trials(args, name)
    space = spec.space(args.task)
    metrics, modes = spec.objective(args.task)
    data = {"dataset": args.dataset, "data_root": args.data_root, "seed": args.seed}
    script = os.path.relpath(sys.argv[0]) if sys.argv and sys.argv[0].endswith(".py") else "sweeps/alpha.py"
    try:  # every fixed setting, with the first point of the space, must make a valid trial
        fixed = trial_limits(args, spec.fixed(args))
        enqueue = tuple(spec.enqueue(args, space))
        for point in enqueue or (
            {k: d.low if d.kind != "choice" else d.choices[0] for k, d in space.items()},
        ):
            TaskConfig.from_flat({**fixed, **point})
    except ValueError as exc:
        parser.error(str(exc))
    if not args.resume:
        refuse_existing(parser, args, name)  # before _cluster_gpus starts Ray
    gpus = args.gpus_per_trial
    if gpus is None:
        gpus = 0.25 if _cluster_gpus(args.address, args.verbose) > 0 else 0.0
        args._settings_line = args._settings_line.replace(
            "gpus_per_trial=None (default)",
            f"gpus_per_trial={gpus!r} (default: {'' if gpus else 'no '}GPU in Ray)",
        )
    workers = args.workers_per_trial
    if gpus >= 2 and workers == 1:
        workers = int(gpus)  # whole GPUs above one: one data-parallel worker per GPU
    args._script = script
    try:
        return args, SweepConfig(
            name=name,
            space=space,
            metrics=metrics,
            modes=modes,
            fixed=fixed,
            data=data,
            storage=args.storage,
            trials=args.trials,
            enqueue=enqueue,
            seed=args.seed,
            resume=args.resume,
            seeds=args.seeds,
            cpus_per_trial=args.cpus_per_trial,
            gpus_per_trial=gpus,
            workers_per_trial=workers,
            max_concurrent=args.max_concurrent,
            # Replicated sweeps run every seed to its end: ASHA stops runs one by one, which would
            # leave configurations with means over different, chosen-by-luck subsets of seeds.
            scheduler="fifo" if args.no_early_stop or args.seeds > 1 else spec.scheduler,
            kind=spec.kind,
            reuse_actors=not args.no_reuse_actors,
            address=args.address,
            verbose=args.verbose,
            resume_command=_resume_hint(args, script, argv),
            log=tuple(args.log),
            mlflow_uri=args.mlflow_uri,
        )
    except ValueError as exc:
        parser.error(str(exc))


def main(spec: SweepSpec, argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, cfg = configure(spec, argv)
    from orchestrator.driver.sweep import SweepExistsError
    from orchestrator.storage import SweepLockedError

    say(args._settings_line)
    name, fixed, data, script = cfg.name, cfg.fixed, cfg.data, args._script
    try:
        cfg = dataclasses.replace(cfg, **spec.prepare(args, fixed, data, name))
        outcome = run_sweep(cfg)
    except (SweepExistsError, SweepLockedError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # storage that cannot be created, read or written
        print(f"error: storage {args.storage!r}: {exc}", file=sys.stderr)
        return 2
    where = os.path.abspath(args.storage) if "://" not in args.storage else args.storage
    say(
        f"\n{outcome.finished}/{max(outcome.requested, outcome.finished)} trials finished "
        f"({outcome.completed} completed). "
        "Parquet results: "
        f"{where} (trials/, steps/, traces/ under sweep={name})"
    )
    if outcome.completed and not outcome.interrupted:
        closing_analysis(args.storage, name)
    from orchestrator.driver.hints import jiio

    say(f"Analyse again (plots, --sql, --compare): {jiio()} analyze {args.storage} --name {name}")
    if outcome.errors:
        print(
            f"{outcome.errors} trial(s) ended in error; first: {outcome.first_error}. "
            "--resume retries them unless they failed the same way twice",
            file=sys.stderr,
        )
    if outcome.errors and not outcome.completed:
        print(
            f"error: no trial of sweep {name} completed; fix the error above, then --resume", file=sys.stderr
        )
        return 1
    if not outcome.completed and outcome.pruned and not outcome.interrupted:
        print(
            f"error: no trial of sweep {name} completed: {outcome.pruned} of {outcome.finished} were pruned "
            f"by ASHA before their last epoch ({outcome.epochs}), so there is no best configuration and no "
            f"analysis. Run the best pruned trial to its end with:\n  {_resume_hint(args, script, argv)}\n"
            "(or start a new sweep with more --trials, or --no-early-stop)",
            file=sys.stderr,
        )
        return 1
    return 1 if outcome.interrupted else 0


def _resume_hint(args: argparse.Namespace, script: str, argv: list[str]) -> str:
    """The command that resumes this sweep: ``ray submit`` on a launcher's cluster."""
    if args._cluster.launcher:
        rest = shlex.join([a for a in argv if a != "--resume"] + ["--resume"])
        return f"ray submit CLUSTER_CONFIG sweeps/{os.path.basename(script)} -- {rest}  (from your machine)"
    from orchestrator.driver.sweep import resume_command

    return resume_command([script, *argv])


def _cluster_gpus(address: str | None, verbose: bool = False) -> float:
    import ray

    from orchestrator.driver.sweep import quiet_ray

    quiet_ray(verbose)
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False)
    return float(ray.cluster_resources().get("GPU", 0))
