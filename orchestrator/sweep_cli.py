"""The command line shared by the sweep scripts in ``sweeps/``: flags, defaults, messages.

A script supplies a :class:`SweepSpec` (what to search, for which objective, with which
fixed settings) and calls :func:`main`; everything else (flags, validation, the local or
cluster Ray, results location, the resume hint) is here.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from orchestrator.cluster_settings import ClusterSettings, ClusterSettingsError
from orchestrator.space import Dim

if TYPE_CHECKING:
    from jiio_core import JIIOConfig
    from orchestrator.sweep import SweepConfig, SweepOutcome

# Flags are read before anything heavy is imported: no torch, no Ray, no jiio_core until the
# arguments are valid (``--help`` and a bad flag answer at once). These equal
# orchestrator.tasks.TASKS and orchestrator.data.DATASETS (tested).
TASKS = ("adversarial", "generative", "inpainting", "denoising")
DATASETS = ("digits", "mnist", "cifar10", "celeba")


def run_sweep(cfg: SweepConfig) -> SweepOutcome:
    """:func:`orchestrator.sweep.run_sweep`, imported when a sweep runs."""
    from orchestrator.sweep import run_sweep as run

    return run(cfg)


__all__ = ["SweepSpec", "configure", "main", "paper_jiio", "task_objective"]


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
    from jiio_core import JIIOConfig

    if task == "adversarial":
        return JIIOConfig.paper("cifar_adversarial" if dataset == "cifar10" else "mnist_adversarial")
    return JIIOConfig.paper("celeba_generative")


def task_objective(task: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The metric a training sweep maximises: robust accuracy, held-out PSNR, median PSNR."""
    return {"adversarial": ("robust_acc",), "generative": ("test_psnr",)}.get(task, ("test_psnr_median",)), (
        "max",
    )


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: what is wrong and what to do, exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {message} (see --help)\n")


def _number(kind: type, low: float, strict: bool = False, whole_above: float | None = None):
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


def _parser(spec: SweepSpec) -> argparse.ArgumentParser:
    p = _Parser(description=spec.description)
    p.add_argument("--task", choices=TASKS, default="adversarial")
    p.add_argument("--dataset", choices=DATASETS, default="digits")
    p.add_argument("--data-root", default=None, help="directory of mnist/cifar10/celeba files")
    p.add_argument(
        "--trials",
        type=_number(int, 1),
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
        type=_number(float, 0, whole_above=1),
        default=None,
        help="GPUs per trial; fractions share a GPU (default: 0.25 if the cluster has GPUs, else 0)",
    )
    p.add_argument(
        "--cpus-per-trial",
        type=_number(float, 0, strict=True),
        default=1.0,
        help="CPUs per trial (per worker if data parallel)",
    )
    p.add_argument(
        "--workers-per-trial",
        type=_number(int, 1),
        default=1,
        help="data-parallel Ray Train workers per trial (default: one per GPU when --gpus-per-trial >= 2)",
    )
    p.add_argument(
        "--max-concurrent",
        type=_number(int, 1),
        default=None,
        help="default: what the cluster's resources allow",
    )
    p.add_argument("--epochs", type=_number(int, 1), default=None)
    p.add_argument("--model-size", choices=("tiny", "paper"), default=None)
    p.add_argument("--seed", type=_number(int, 0), default=0)
    p.add_argument(
        "--seeds",
        type=_number(int, 1),
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


def _settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> ClusterSettings:
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


def _trial_limits(args: argparse.Namespace, fixed: dict[str, Any]) -> dict[str, Any]:
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


def _validate(parser: argparse.ArgumentParser, args: argparse.Namespace, name: str) -> None:
    """Checks that need more than one flag, or the filesystem; all before Ray starts."""
    from orchestrator.sweep import _NAME

    if not _NAME.fullmatch(name):
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
        and _in_job_working_dir()
    ):
        parser.error(
            f"--storage {args.storage!r} is relative, and this Ray job runs in Ray's temporary copy of its "
            f"working_dir ({os.getcwd()}), which Ray deletes: pass --storage s3://BUCKET/PREFIX, or an "
            "absolute directory that every node mounts"
        )


def _target_trials(args: argparse.Namespace, name: str) -> int:
    """``--trials`` as given; else, on ``--resume``, the sweep's own target (its stored
    ``meta``: configurations, as ``--trials`` counts them); else the default, 6."""
    if args.trials is not None:
        return args.trials
    if args.resume:
        from orchestrator.results import ResultStore

        try:
            stored = (ResultStore(args.storage).meta(name) or {}).get("trials")
        except (OSError, ValueError):
            stored = None
        if isinstance(stored, int) and not isinstance(stored, bool) and stored >= 1:
            return stored
    return 6


def _refuse_existing(parser: argparse.ArgumentParser, args: argparse.Namespace, name: str) -> None:
    """A sweep that already has results, started again without ``--resume``: refused here,
    before Ray starts (the driver checks again under its lock)."""
    from orchestrator.results import ResultStore

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


def _in_job_working_dir() -> bool:
    """Whether this is the entrypoint of a Ray job submitted with a ``working_dir`` (the job
    supervisor passes the job's runtime env in ``RAY_JOB_CONFIG_JSON_ENV_VAR``)."""
    import json

    try:
        job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    except ValueError:
        return False
    return bool(isinstance(job, dict) and (job.get("runtime_env") or {}).get("working_dir"))


def configure(spec: SweepSpec, argv: list[str]) -> tuple[argparse.Namespace, SweepConfig]:
    """The parsed flags and the :class:`SweepConfig` that ``main`` runs for ``argv`` (before
    the script's ``prepare``): every default resolved (flag, cluster setting, built-in), every
    check done; a bad flag exits with code 2 and one line. Starts Ray only to count the
    cluster's GPUs when ``--gpus-per-trial`` is neither given nor set by the cluster."""
    parser = _parser(spec)
    spec.add_arguments(parser)
    args = parser.parse_args(argv)
    from orchestrator.sweep import SweepConfig
    from orchestrator.tasks import TaskConfig

    name = args.name or f"{spec.default_name}-{args.task}-{args.dataset}"
    _settings(parser, args)
    _validate(parser, args, name)
    args.trials = _target_trials(args, name)
    space = spec.space(args.task)
    metrics, modes = spec.objective(args.task)
    data = {"dataset": args.dataset, "data_root": args.data_root, "seed": args.seed}
    script = os.path.relpath(sys.argv[0]) if sys.argv and sys.argv[0].endswith(".py") else "sweeps/alpha.py"
    try:  # every fixed setting, with the first point of the space, must make a valid trial
        fixed = _trial_limits(args, spec.fixed(args))
        enqueue = tuple(spec.enqueue(args, space))
        for point in enqueue or (
            {k: d.low if d.kind != "choice" else d.choices[0] for k, d in space.items()},
        ):
            TaskConfig.from_flat({**fixed, **point})
    except ValueError as exc:
        parser.error(str(exc))
    if not args.resume:
        _refuse_existing(parser, args, name)  # before _cluster_gpus starts Ray
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
    from orchestrator.lock import SweepLockedError
    from orchestrator.sweep import SweepExistsError

    _say(args._settings_line)
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
    _say(
        f"\n{outcome.finished}/{max(outcome.requested, outcome.finished)} trials finished "
        f"({outcome.completed} completed). "
        "Parquet results: "
        f"{where} (trials/, steps/, traces/ under sweep={name})"
    )
    if outcome.completed and not outcome.interrupted:
        _analysis(args.storage, name)
    from orchestrator.hints import jiio

    _say(f"Analyse again (plots, --sql, --compare): {jiio()} analyze {args.storage} --name {name}")
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


def _say(text: str) -> None:
    """Print ``text`` on stdout within the console's width (see ``report.console_width``)."""
    from orchestrator.analysis.text_layout import console_width, wrap_lines

    print("\n".join(wrap_lines(text.split("\n"), console_width())), flush=True)


def _analysis(storage: str, name: str) -> None:
    """The sweep's summary (best configurations with intervals, the paper's, importance) and
    the path of its HTML report, as ``jiio analyze`` prints them. A failure here never
    changes the sweep's outcome: its results are written."""
    from orchestrator.analysis import AnalyzeError
    from orchestrator.analysis import run as analyze

    print()
    if "://" not in storage:  # the report goes beside the results: <storage>/analysis/<sweep>/
        try:
            analyze(storage, name, None, as_json=False, plots=True, report=True)
        except (AnalyzeError, OSError, ValueError) as exc:
            print(f"(no analysis: {exc})")
        return
    # Object storage: drawn in a temporary directory, then put beside the results in the
    # bucket (nothing is left on the driver's disk), and the printed paths are the bucket's.
    import contextlib
    import io
    import tempfile

    from orchestrator.results import ResultStore

    with tempfile.TemporaryDirectory() as tmp:
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                analyze(storage, name, tmp, as_json=False, plots=True, report=True)
        except (AnalyzeError, OSError, ValueError) as exc:
            print(out.getvalue() + f"(no analysis: {exc})")
            return
        store = ResultStore(storage)
        target = f"{storage.rstrip('/')}/analysis/{name}"
        for entry in sorted(os.listdir(tmp)):
            with open(os.path.join(tmp, entry), "rb") as f:
                store.put(f"{store.base}/analysis/{name}/{entry}", f.read())
        print(out.getvalue().replace(tmp, target), end="")


def _resume_hint(args: argparse.Namespace, script: str, argv: list[str]) -> str:
    """The command that resumes this sweep: ``ray submit`` on a launcher's cluster."""
    if args._cluster.launcher:
        rest = shlex.join([a for a in argv if a != "--resume"] + ["--resume"])
        return f"ray submit CLUSTER_CONFIG sweeps/{os.path.basename(script)} -- {rest}  (from your machine)"
    from orchestrator.sweep import resume_command

    return resume_command([script, *argv])


def _cluster_gpus(address: str | None, verbose: bool = False) -> float:
    import ray

    from orchestrator.sweep import quiet_ray

    quiet_ray(verbose)
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False)
    return float(ray.cluster_resources().get("GPU", 0))
