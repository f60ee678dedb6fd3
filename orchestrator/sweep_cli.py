"""The command line shared by the sweep scripts in ``sweeps/``: flags, defaults, messages.

A script supplies a :class:`SweepSpec` (what to search, for which objective, with which
fixed settings) and calls :func:`main`; everything else (flags, validation, the local or
cluster Ray, results location, the resume hint) is here.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jiio_core import JIIOConfig
from orchestrator.data import DATASETS
from orchestrator.sweep import Dim, SweepConfig, SweepExistsError, resume_command, run_sweep
from orchestrator.tasks import TASKS

__all__ = ["SweepSpec", "main", "paper_jiio", "task_objective"]


@dataclass(frozen=True)
class SweepSpec:
    """What a sweep script defines: its search space, objective(s) and fixed settings."""

    description: str
    space: Callable[[str], dict[str, Dim]]  # task -> searched dims
    fixed: Callable[[argparse.Namespace], dict[str, Any]]  # parsed args -> fixed TaskConfig values
    objective: Callable[[str], tuple[tuple[str, ...], tuple[str, ...]]]  # task -> (metrics, modes)
    enqueue: Callable[[argparse.Namespace, dict[str, Dim]], list[dict[str, Any]]] = lambda a, s: []
    scheduler: str = "asha"
    kind: str = "train"
    default_name: str = "sweep"
    add_arguments: Callable[[argparse.ArgumentParser], None] = lambda p: None
    # Runs in the driver before the sweep (e.g. trains the fixed model); returns SweepConfig overrides.
    prepare: Callable[[argparse.Namespace, dict[str, Any], dict[str, Any], str], dict[str, Any]] = (
        lambda args, fixed, data, name: {}
    )


def paper_jiio(task: str, dataset: str) -> JIIOConfig:
    """The paper code's JIIO settings (DESIGN.md section 4) for a task and dataset."""
    if task == "adversarial":
        return JIIOConfig.paper("cifar_adversarial" if dataset == "cifar10" else "mnist_adversarial")
    return JIIOConfig.paper("celeba_generative")


def task_objective(task: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The metric a training sweep maximises: robust accuracy, held-out PSNR, median PSNR."""
    return {"adversarial": ("robust_acc",), "generative": ("test_psnr",)}.get(task, ("test_psnr_median",)), (
        "max",
    )


def _parser(spec: SweepSpec) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=spec.description)
    p.add_argument("--task", choices=TASKS, default="adversarial")
    p.add_argument("--dataset", choices=DATASETS, default="digits")
    p.add_argument("--data-root", default=None, help="directory of mnist/cifar10/celeba files")
    p.add_argument("--trials", type=int, default=6, help="total trials of the sweep (default 6)")
    p.add_argument("--storage", default="results", help="results root: a directory, s3://... or gs://...")
    p.add_argument("--name", default=None, help="sweep name (default: <script>-<task>-<dataset>)")
    p.add_argument("--resume", action="store_true", help="continue (or, with a larger --trials, extend) it")
    p.add_argument(
        "--gpus-per-trial",
        type=float,
        default=None,
        help="GPUs per trial; fractions share a GPU (default: 0.25 if the cluster has GPUs, else 0)",
    )
    p.add_argument(
        "--cpus-per-trial", type=float, default=1.0, help="CPUs per trial (per worker if data parallel)"
    )
    p.add_argument(
        "--workers-per-trial",
        type=int,
        default=1,
        help="data-parallel Ray Train workers per trial (default: one per GPU when --gpus-per-trial >= 2)",
    )
    p.add_argument(
        "--max-concurrent", type=int, default=None, help="default: what the cluster's resources allow"
    )
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--model-size", choices=("tiny", "paper"), default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--address", default=None, help="Ray address (default: a running cluster, else a local one)"
    )
    p.add_argument("--no-reuse-actors", action="store_true", help="start a fresh actor for every trial")
    p.add_argument(
        "--no-early-stop", action="store_true", help="run every trial to its end (no ASHA pruning)"
    )
    p.add_argument("--smoke", action="store_true", help="a seconds-long sweep that exercises everything")
    return p


def main(spec: SweepSpec, argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser(spec)
    spec.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.trials < 1:
        parser.error("--trials must be >= 1")
    if args.dataset != "digits" and not args.data_root:
        parser.error(f"--dataset {args.dataset} needs --data-root DIR (digits ships with scikit-learn)")
    gpus = args.gpus_per_trial
    if gpus is None:
        gpus = 0.25 if _cluster_gpus(args.address) > 0 else 0.0
    if gpus < 0 or (gpus > 1 and gpus != int(gpus)):
        parser.error("--gpus-per-trial must be >= 0, and whole above 1")
    workers = args.workers_per_trial
    if workers < 1:
        parser.error("--workers-per-trial must be >= 1")
    if gpus >= 2 and workers == 1:
        workers = int(gpus)  # whole GPUs above one: one data-parallel worker per GPU
    space = spec.space(args.task)
    metrics, modes = spec.objective(args.task)
    name = args.name or f"{spec.default_name}-{args.task}-{args.dataset}"
    data = {"dataset": args.dataset, "data_root": args.data_root, "seed": args.seed}
    script = os.path.relpath(sys.argv[0]) if sys.argv and sys.argv[0].endswith(".py") else "sweeps/alpha.py"
    try:
        fixed = spec.fixed(args)
        overrides = spec.prepare(args, fixed, data, name)
        cfg = SweepConfig(
            name=name,
            space=space,
            metrics=metrics,
            modes=modes,
            fixed=fixed,
            data=data,
            storage=args.storage,
            trials=args.trials,
            enqueue=tuple(spec.enqueue(args, space)),
            seed=args.seed,
            resume=args.resume,
            cpus_per_trial=args.cpus_per_trial,
            gpus_per_trial=gpus,
            workers_per_trial=workers,
            max_concurrent=args.max_concurrent,
            scheduler="fifo" if args.no_early_stop else spec.scheduler,
            kind=spec.kind,
            reuse_actors=not args.no_reuse_actors,
            address=args.address,
            resume_command=resume_command([script, *argv]),
            **overrides,
        )
        outcome = run_sweep(cfg)
    except (SweepExistsError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # storage that cannot be created, read or written
        print(f"error: storage {args.storage!r}: {exc}", file=sys.stderr)
        return 2
    where = os.path.abspath(args.storage) if "://" not in args.storage else args.storage
    print(
        f"\n{outcome.finished}/{outcome.requested} trials finished. Parquet results: {where} "
        f"(trials/, steps/, traces/ under sweep={name})"
    )
    print(f"Analyse: jiio analyze {args.storage} --name {name}")
    return 1 if outcome.interrupted else 0


def _cluster_gpus(address: str | None) -> float:
    import ray

    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False)
    return float(ray.cluster_resources().get("GPU", 0))
