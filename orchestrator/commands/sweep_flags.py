"""The flags of the sweep scripts (``sweeps/*.py``) and their checks, before anything runs.

Why its own module: :mod:`orchestrator.commands.sweep` runs a sweep from the flags; this
module defines them (:func:`build_parser`), resolves the cluster's settings into them
(:func:`apply_cluster_settings`) and refuses bad combinations with one line, exit code 2.
Nothing heavy is imported here (no torch, no Ray), so ``--help`` and a bad flag answer at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from orchestrator.driver.cluster_settings import ClusterSettings, ClusterSettingsError
from orchestrator.driver.space import Dim

if TYPE_CHECKING:
    pass


__all__ = [
    "DATASETS",
    "TASKS",
    "Parser",
    "SweepSpec",
    "apply_cluster_settings",
    "build_parser",
    "in_job_working_dir",
    "number",
    "refuse_existing",
    "target_trials",
    "trial_limits",
    "validate",
]

# Flags are read before anything heavy is imported: no torch, no Ray, no jiio_core until the
# arguments are valid (``--help`` and a bad flag answer at once). These equal
# orchestrator.tasks.TASKS and orchestrator.data.DATASETS (tested).
TASKS = ("adversarial", "generative", "inpainting", "denoising")
DATASETS = ("digits", "mnist", "cifar10", "celeba")


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


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: what is wrong and what to do, exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {message} (see --help)\n")


def number(kind: type, low: float, strict: bool = False, whole_above: float | None = None):
    """An argparse type: a finite ``kind`` (int or float) >= low (> low if strict)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(  # noqa: B904 (argparse shows this message alone)
                f"must be {'an integer' if kind is int else 'a number'}, got {text!r}"
            )
        if not math.isfinite(value) or (value <= low if strict else value < low):
            rel = ">" if strict else ">="
            what = "an integer" if kind is int else "a finite number"
            raise argparse.ArgumentTypeError(f"must be {what} {rel} {low:g}, got {text!r}")
        if whole_above is not None and value > whole_above and value != int(value):
            raise argparse.ArgumentTypeError(f"must be a whole number above {whole_above:g}, got {text!r}")
        return value

    return parse


def build_parser(spec: SweepSpec) -> argparse.ArgumentParser:
    p = Parser(description=spec.description)
    p.add_argument("--task", choices=TASKS, default="adversarial")
    p.add_argument("--dataset", choices=DATASETS, default="digits")
    p.add_argument("--data-root", default=None, help="directory of mnist/cifar10/celeba files")
    p.add_argument(
        "--trials",
        type=number(int, 1),
        default=None,
        help="total trials of the sweep (default 6; with --resume: the sweep's own)",
    )
    p.add_argument(
        "--storage",
        default=None,
        help="results root: a directory, s3://... or gs://... (default: the cluster's metadata.jiio.storage, "
        "else 'results')",
    )
    p.add_argument("--name", default=None, help="sweep name (default: <script>-<task>-<dataset>)")
    p.add_argument("--resume", action="store_true", help="continue (or, with a larger --trials, extend) it")
    p.add_argument(
        "--gpus-per-trial",
        type=number(float, 0, whole_above=1),
        default=None,
        help="GPUs per trial; fractions share a GPU (default: 0.25 if the cluster has GPUs, else 0)",
    )
    p.add_argument(
        "--cpus-per-trial",
        type=number(float, 0, strict=True),
        default=1.0,
        help="CPUs per trial (per worker if data parallel)",
    )
    p.add_argument(
        "--workers-per-trial",
        type=number(int, 1),
        default=1,
        help="data-parallel Ray Train workers per trial (default: one per GPU when --gpus-per-trial >= 2)",
    )
    p.add_argument(
        "--max-concurrent",
        type=number(int, 1),
        default=None,
        help="default: what the cluster's resources allow",
    )
    p.add_argument("--epochs", type=number(int, 1), default=None)
    p.add_argument("--model-size", choices=("tiny", "paper"), default=None)
    p.add_argument("--seed", type=number(int, 0), default=0)
    p.add_argument(
        "--seeds",
        type=number(int, 1),
        default=1,
        help="training seeds per configuration, the same for every configuration (--seed, --seed+1, ...); "
        "--trials counts configurations (default 1: intervals then cover evaluation noise only)",
    )
    p.add_argument(
        "--address", default=None, help="Ray address (default: a running cluster, else a local one)"
    )
    p.add_argument("--no-reuse-actors", action="store_true", help="start a fresh actor for every trial")
    p.add_argument(
        "--no-early-stop", action="store_true", help="run every trial to its end (no ASHA pruning)"
    )
    p.add_argument("--smoke", action="store_true", help="a seconds-long sweep that exercises everything")
    p.add_argument(
        "--log",
        action="append",
        choices=("mlflow", "tensorboard", "wandb"),
        default=[],
        help="also log every trial to MLflow / TensorBoard / W&B (repeatable; offline, under --storage)",
    )
    p.add_argument("--mlflow-uri", default=None, help="MLflow tracking URI (default: <storage>/mlflow.db)")
    p.add_argument(
        "--verbose", action="store_true", help="Ray Tune's progress tables instead of the live summary"
    )
    return p


def apply_cluster_settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> ClusterSettings:
    """Fill storage, GPUs per trial, model size and data root: flag, else the cluster's
    setting, else the built-in default; print which was used."""
    try:
        cluster = ClusterSettings.load()
        chosen = {
            key: cluster.resolve(key, getattr(args, key), default)
            for key, default in (
                ("storage", "results"),
                ("gpus_per_trial", None),
                ("model_size", "tiny"),
                ("data_root", None),
            )
        }
    except ClusterSettingsError as exc:
        parser.error(str(exc))
    for key, (value, _) in chosen.items():
        setattr(args, key, value)
    if cluster.launcher and "://" not in args.storage and chosen["storage"][1] == "default":
        parser.error(
            f"--storage defaults to the local directory {args.storage!r}, which every node of this cluster "
            "has its own copy of: set metadata.jiio.storage in the cluster config (e.g. s3://BUCKET/jiio) "
            "or pass --storage s3://BUCKET/PREFIX, or a directory on a shared mount (NFS)"
        )
    shown = ", ".join(
        f"{k}={v!r} ({src})" for k, (v, src) in chosen.items() if v is not None or k != "data_root"
    )
    args._cluster = cluster
    args._settings_line = f"settings: {shown}"
    return cluster


def trial_limits(args: argparse.Namespace, fixed: dict[str, Any]) -> dict[str, Any]:
    """The script's fixed settings under the cluster's ``metadata.jiio.trial_limits`` (upper
    bounds on the TaskConfig fields of those names, TaskConfig's default where the script
    sets none; a flag of the same name, such as ``--epochs``, wins), noted in the settings line."""
    limits = args._cluster.values.get("trial_limits")
    if not limits:
        return fixed
    from orchestrator.tasks import TaskConfig

    defaults = {f.name: f.default for f in dataclasses.fields(TaskConfig) if f.name in limits}
    flags = {k: getattr(args, k, None) for k in limits}
    fixed, applied = args._cluster.limit(fixed, defaults, flags)
    won = [f"--{k.replace('_', '-')}" for k in limits if k not in applied]
    note = f"; {', '.join(won)} given: the flag wins" if won else ""
    args._settings_line += f", trial_limits={applied!r} (cluster {args._cluster.path}{note})"
    return fixed


def validate(parser: argparse.ArgumentParser, args: argparse.Namespace, name: str) -> None:
    """Checks that need more than one flag, or the filesystem; all before Ray starts."""
    from orchestrator.driver.sweep import SWEEP_NAME

    if not SWEEP_NAME.fullmatch(name):
        parser.error(
            f"--name must be letters, digits, '.', '_' or '-' (not starting with '.' or '-'), got {name!r}"
        )
    if args.dataset != "digits" and not args.data_root:
        parser.error(f"--dataset {args.dataset} needs --data-root DIR (digits ships with scikit-learn)")
    on_cluster = args._cluster.path is not None  # the data lives on the workers, not necessarily here
    root = None if args.data_root is None else os.path.expanduser(args.data_root)
    if root is not None and not on_cluster and "://" not in root and not os.path.isdir(root):
        parser.error(
            f"--data-root {args.data_root!r} is not a directory: pass the directory that holds the dataset"
        )
    if "://" not in args.storage and os.path.exists(args.storage) and not os.path.isdir(args.storage):
        parser.error(
            f"--storage {args.storage!r} is a file: pass a directory (created if missing) or s3://..."
        )
    if (
        "://" not in args.storage
        and not os.path.isabs(os.path.expanduser(args.storage))
        and in_job_working_dir()
    ):
        parser.error(
            f"--storage {args.storage!r} is relative, and this Ray job runs in Ray's temporary copy of its "
            f"working_dir ({os.getcwd()}), which Ray deletes: pass --storage s3://BUCKET/PREFIX, or an "
            "absolute directory that every node mounts"
        )


def target_trials(args: argparse.Namespace, name: str) -> int:
    """``--trials`` as given; else, on ``--resume``, the sweep's own target (its stored
    ``meta``: configurations, as ``--trials`` counts them); else the default, 6."""
    if args.trials is not None:
        return args.trials
    if args.resume:
        from orchestrator.storage import ResultStore

        try:
            stored = (ResultStore(args.storage).meta(name) or {}).get("trials")
        except (OSError, ValueError):
            stored = None
        if isinstance(stored, int) and not isinstance(stored, bool) and stored >= 1:
            return stored
    return 6


def refuse_existing(parser: argparse.ArgumentParser, args: argparse.Namespace, name: str) -> None:
    """A sweep that already has results, started again without ``--resume``: refused here,
    before Ray starts (the driver checks again under its lock)."""
    from orchestrator.storage import ResultStore

    if (
        "://" not in args.storage
        and not os.path.isdir(os.path.join(args.storage, "trials"))
        and not (os.path.isdir(os.path.join(args.storage, "pending")))
    ):
        return  # nothing there yet: nothing to read (and nothing created)
    try:
        store = ResultStore(args.storage)
        done, pending = len(store.keys("trials", name)), len(store.pending(name))
    except (OSError, ValueError):
        return  # the driver reports storage it cannot read
    if done or pending:
        parser.exit(
            2,
            f"error: sweep {name!r} already has {done} finished and {pending} unfinished trials in "
            f"{args.storage}: pass --resume to continue (or extend) it, or --name to start a new sweep\n",
        )


def in_job_working_dir() -> bool:
    """Whether this is the entrypoint of a Ray job submitted with a ``working_dir`` (the job
    supervisor passes the job's runtime env in ``RAY_JOB_CONFIG_JSON_ENV_VAR``)."""
    import json

    try:
        job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    except ValueError:
        return False
    return bool(isinstance(job, dict) and (job.get("runtime_env") or {}).get("working_dir"))
