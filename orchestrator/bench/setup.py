"""What every ``jiio bench`` run sets up (:mod:`orchestrator.bench`): the error type, the flags
both benchmarks take, progress, device and environment, data, checkpoint loading, model
building and the held-out batches. The benchmarks under ``benchmarks/`` reuse the last two
so that they measure on the very batches ``jiio bench`` does. Timing is in
:mod:`orchestrator.bench.timing`, ``--jiio-config`` in :mod:`orchestrator.bench.variants`,
the statistics in :mod:`orchestrator.bench.measure`."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from jiio_core import SOLVERS, ClassifierHead, DEQConfig, ImageHead, MDEQCell, MDEQConfig
from orchestrator.bench.timing import use_clock
from orchestrator.data import (
    DATASETS,
    DataConfig,
    DatasetNotFoundError,
    DatasetSplits,
    load_dataset,
    make_loader,
)
from orchestrator.tasks.model_sizes import mdeq_config

__all__ = [
    "TRAIN_DEQ",
    "BenchInputError",
    "Log",
    "add_common_arguments",
    "baseline_deq",
    "build_models",
    "describe_environment",
    "device_name",
    "held_out_batches",
    "initial_z",
    "load_data",
    "nonneg_float",
    "nonneg_int",
    "pos_float",
    "pos_int",
    "setup_run",
]

# Classifier training (attack): a plain DEQ, Anderson, the sweeps' default tolerances.
TRAIN_DEQ = DEQConfig(solver="anderson", max_iter=20, tol=1e-3, backward_max_iter=15)


class BenchInputError(Exception):
    """Bad input from the user (flags, files, device): reported in one line, exit code 2."""


# ----------------------------------------------------------------------------- arguments


def _number(kind: type, low: float, strict: bool) -> Callable[[str], Any]:
    what = f"{'an integer' if kind is int else 'a finite number'} {'>' if strict else '>='} {low:g}"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    parse.__name__ = what  # argparse names the type in its messages
    return parse


# argparse ``type=`` parsers: a bad value is a one-line usage error naming the bound.
pos_int = _number(int, 1, strict=False)
nonneg_int = _number(int, 0, strict=False)
pos_float = _number(float, 0.0, strict=True)
nonneg_float = _number(float, 0.0, strict=False)


def add_common_arguments(p: argparse.ArgumentParser, *, batch: int, train_steps: int) -> None:
    """Add the flags both benchmarks take (data, model, samples, timing, output) to ``p``;
    ``batch`` and ``train_steps`` are the sub-command's defaults."""
    p.add_argument("--dataset", choices=DATASETS, default="digits", help="default: digits (no files needed)")
    p.add_argument("--data-root", default=None, help="directory holding the dataset (all but digits)")
    p.add_argument("--download", action="store_true", help="download the dataset into --data-root if missing")
    p.add_argument(
        "--size",
        choices=("tiny", "paper"),
        default="tiny",
        help="MDEQ size (orchestrator.tasks.model_sizes.mdeq_config); a checkpoint's own size wins",
    )
    p.add_argument("--checkpoint", default=None, help="a torch.save'd Trainer.state_dict (modules cell/head)")
    p.add_argument(
        "--train-steps",
        type=pos_int,
        default=train_steps,
        help=f"Adam steps of the in-process training when no --checkpoint (default {train_steps})",
    )
    p.add_argument("--batch", type=pos_int, default=batch, help=f"held-out batch size (default {batch})")
    p.add_argument(
        "--samples",
        type=pos_int,
        default=256,
        help="held-out samples, taken in batches of --batch; strengths and losses are reported "
        "with 95%% intervals over them (default 256)",
    )
    p.add_argument(
        "--reps",
        type=pos_int,
        default=2,
        help="timed passes over the samples; every batch of every pass is one paired timing run "
        "of all methods, in turn (default 2)",
    )
    p.add_argument(
        "--deq-solver",
        choices=SOLVERS,
        default="broyden",
        help="solver of the baseline's plain DEQ (default broyden: the paper's Broyden 18/18)",
    )
    p.add_argument(
        "--jiio-z0",
        choices=("step", "zeros"),
        default="step",
        help="the initial state of the JIIO-n rows: step = f(0, x0), one cell evaluation, timed "
        "(default); zeros = the paper's start z = 0 (--jiio-config variants start as their own init "
        "says)",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="what the timings measure: wall time (default) or this process's CPU time (CPU device "
        "only; on a machine shared with other jobs the wall time also counts the waits for a core)",
    )
    p.add_argument(
        "--threads",
        type=nonneg_int,
        default=1,
        help="torch CPU threads (default 1: steady timings on a shared machine, where more threads "
        "than free cores make every method several times slower; 0: torch's default)",
    )
    p.add_argument(
        "--jiio-config",
        action="append",
        default=[],
        metavar="PRESET|NAME=VALUE,...",
        help="an extra JIIO variant, timed and scored beside the others: a preset of "
        "JIIOConfig.preset (e.g. paper-mnist-adversarial), fields set on the bench's JIIO "
        "settings (max_iter=30,anderson_m=5) or on a preset (paper-celeba-generative:max_iter=40); "
        "LABEL@... names it in the tables; repeatable",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


# ----------------------------------------------------------------------------- shared


class Log:
    """Progress lines on stderr, stamped with the bench's name and its seconds so far
    (silent with ``--quiet``, so ``--json`` output stays one object on stdout)."""

    def __init__(self, name: str, quiet: bool) -> None:
        self.name, self.quiet, self.t0 = name, quiet, time.perf_counter()

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            print(f"[jiio bench {self.name} {time.perf_counter() - self.t0:6.1f}s] {msg}", file=sys.stderr)


def _device(args: argparse.Namespace) -> torch.device:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise BenchInputError("--device cuda asked for, but torch sees no CUDA device (use --device cpu)")
    return torch.device(args.device)


def device_name(device: torch.device) -> str:
    """The GPU's or CPU's name, reported with every timing (times mean nothing without it)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:  # Linux: the CPU's marketing name
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def load_data(args: argparse.Namespace) -> DatasetSplits:
    """The dataset the flags name; a missing or bad dataset is a :class:`BenchInputError`."""
    try:
        return load_dataset(
            DataConfig(dataset=args.dataset, data_root=args.data_root, download=args.download, seed=args.seed)
        )
    except (ValueError, DatasetNotFoundError) as err:
        raise BenchInputError(str(err)) from None


def _load_checkpoint(path: str, bench: str) -> dict[str, Any]:
    """The modules and flat config of a Trainer checkpoint, checked for ``bench``."""
    from orchestrator.storage import read_checkpoint

    try:
        state = read_checkpoint(path)
    except FileNotFoundError:
        raise BenchInputError(f"checkpoint not found: {path}") from None
    except ValueError as err:
        raise BenchInputError(str(err)) from None
    modules = state.get("modules") if isinstance(state, dict) else None
    if not isinstance(modules, dict) or not {"cell", "head"} <= set(modules):
        raise BenchInputError(
            f"{path} is not a Trainer checkpoint: expected a dict with 'modules' holding 'cell' and 'head'"
        )
    config = state.get("config") or {}
    if not isinstance(config, dict):
        raise BenchInputError(f"{path}: 'config' must be a flat dict of the run's TaskConfig")
    task = config.get("task")
    wanted = ("adversarial",) if bench == "attack" else ("generative", "inpainting", "denoising")
    if task is not None and task not in wanted:
        raise BenchInputError(
            f"{path} holds a {task!r} model; bench {bench} needs a checkpoint of task {' or '.join(wanted)}"
        )
    return {"modules": modules, "config": config}


def build_models(
    args: argparse.Namespace, splits: DatasetSplits, bench: str
) -> tuple[MDEQCell, nn.Module, dict[str, Any] | None, str, int | None]:
    """Cell and head (from the checkpoint when given); also the checkpoint, size, latent dim."""
    ckpt = _load_checkpoint(args.checkpoint, bench) if args.checkpoint else None
    config = ckpt["config"] if ckpt else {}
    size = config.get("model_size", args.size)
    latent = None if bench == "attack" else int(config.get("latent_dim", args.latent_dim))
    if ckpt and config.get("dataset") not in (None, args.dataset):
        raise BenchInputError(
            f"checkpoint was trained on {config['dataset']!r}: pass --dataset {config['dataset']}"
        )
    try:
        mcfg: MDEQConfig = mdeq_config(size, splits.image_size, splits.channels, latent_dim=latent)
    except ValueError as err:
        raise BenchInputError(f"cannot build the {size} MDEQ: {err}") from None
    cell = MDEQCell(mcfg)
    head: nn.Module = ClassifierHead(mcfg, splits.num_classes or 10) if bench == "attack" else ImageHead(mcfg)
    if ckpt:
        try:
            cell.load_state_dict(ckpt["modules"]["cell"])
            head.load_state_dict(ckpt["modules"]["head"])
        except (RuntimeError, KeyError, TypeError) as err:
            first = str(err).strip().splitlines()[0]
            raise BenchInputError(
                f"checkpoint {args.checkpoint} does not fit a {size} MDEQ for {args.dataset}: {first}"
            ) from None
    return cell, head, ckpt, size, latent


def held_out_batches(
    splits: DatasetSplits, samples: int, batch: int, seed: int, device: torch.device
) -> list[tuple[Tensor, Tensor]]:
    """``samples`` held-out images in batches of ``batch`` (the last one smaller if need be),
    drawn once, in a fixed shuffled order."""
    if len(splits.test) < samples:
        raise BenchInputError(
            f"--samples {samples} is larger than the test split ({len(splits.test)} images)"
        )
    if batch > samples:
        raise BenchInputError(f"--batch {batch} is larger than --samples {samples}")
    out, left = [], samples
    for x, y in make_loader(splits.test, batch, shuffle=True, seed=seed):
        if left <= 0:
            break
        out.append((x[:left].to(device), y[:left].to(device)))
        left -= len(out[-1][0])
    return out


def baseline_deq(args: argparse.Namespace) -> DEQConfig:
    """The baselines' plain DEQ: the paper's settings with ``--deq-solver``."""
    return dataclasses.replace(DEQConfig.paper(), solver=args.deq_solver)


def setup_run(args: argparse.Namespace, name: str) -> tuple[torch.device, Log]:
    """Check the flags that can fail before any work (device, checkpoint, plot path, clock),
    then set the clock, threads and seed; the device and the progress log."""
    device = _device(args)
    if args.checkpoint:
        from orchestrator.storage import file_exists

        try:
            found = file_exists(args.checkpoint)
        except (OSError, ValueError) as err:  # unknown scheme, no credentials, no such bucket
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise BenchInputError(f"cannot reach checkpoint {args.checkpoint}: {first}") from None
        if not found:
            raise BenchInputError(f"checkpoint not found: {args.checkpoint}")
    plot = getattr(args, "plot", None)
    if plot:
        parent = os.path.dirname(os.path.abspath(plot))
        if not os.path.isdir(parent):
            raise BenchInputError(f"--plot {plot}: directory {parent} does not exist")
        if not plot.lower().endswith(".png"):
            raise BenchInputError(f"--plot {plot}: the file name must end in .png")
    if args.clock == "cpu" and device.type != "cpu":
        raise BenchInputError("--clock cpu times the CPU's work: use it with --device cpu")
    use_clock(args.clock)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.load_start = _load()
    return device, Log(name, args.quiet)


def describe_environment(device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    """Where the timings were taken (device, threads, clock, versions, load): the result's
    ``environment``, so a reader can tell whether two results are comparable."""
    return {
        "device": device_name(device),
        "device_type": device.type,
        "threads": torch.get_num_threads(),
        "clock": getattr(args, "clock", "wall"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "seed": args.seed,
        "load_average_start": args.load_start,
        "load_average": _load(),
    }


def _load() -> list[float] | None:
    """1, 5 and 15 minute load averages (other processes' CPU use skews CPU timings)."""
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def initial_z(cell: MDEQCell, x: Tensor, how: str) -> Tensor:
    """JIIO's initial state: zeros (``cell.init_z``, the paper's start) or one cell step from zero."""
    if how == "zeros":
        return cell.init_z(x)
    with torch.no_grad():
        return cell(cell.init_z(x), x)
