"""``jiio bench``: JIIO against its baselines on one MDEQ, side by side, in one run.

Two benchmarks, each on a single model and a single held-out batch that every method sees:

- ``attack``: an MDEQ classifier (trained briefly here with a plain DEQ and cross-entropy, or
  loaded from a Trainer checkpoint). L2 PGD (each step a full forward DEQ solve and an
  implicit backward solve, Broyden 18/18 as in the paper) against JIIO (one augmented
  fixed point, the paper's MNIST settings), at K in {K/4, K/2, K} PGD steps and N in
  {N/4, N/2, N} JIIO iterations. Reports time, accuracy under attack, cross-entropy at the
  attack point and the largest perturbation norm, the speedup PGD-K / JIIO-N and the speed
  ratio at equal or better attack strength.
- ``latent``: an MDEQ decoder (latent injected, :class:`~jiio_core.ImageHead`; trained here
  as a GLO generator, i.e. jointly with one free latent code per training image, or loaded
  from a checkpoint). Adam over the latent (each step a forward and an implicit backward
  DEQ solve) against JIIO at N and M iterations, reconstructing held-out images. Reports
  time and reconstruction loss (summed squared error per image, batch mean), the speedup
  Adam-S / JIIO-N, the speed ratio at equal loss, and the loss-versus-time curves (paper
  Fig. 3) as a PNG.

Timing: every variant runs once per repetition, in turn (interleaved, so drift and the load
of other processes hit all of them alike), after one warm-up; the median over repetitions
is reported; on a GPU every timed region starts and ends with ``torch.cuda.synchronize``.
Losses and accuracies are NOT JIIO's own estimates: every method's returned input is
re-evaluated with the same plain DEQ solve, outside the timed region. The baselines'
times stop when their last input is produced (``pgd_attack`` / ``adam_latent`` then run one
more forward solve to report a loss; that solve is not counted).

The entry points are :func:`add_arguments` and :func:`run` (wired into ``jiio bench`` by
``orchestrator.cli``); :func:`run_attack` and :func:`run_latent` return the result dict that
``--json`` prints. Bad input raises :class:`BenchInputError`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jiio_core import (
    DEQ,
    SOLVERS,
    ClassifierHead,
    DEQConfig,
    ImageHead,
    JIIOConfig,
    MDEQCell,
    MDEQConfig,
    adam_latent,
    count_parameters,
    jiio_solve,
    l2_ball,
    pgd_attack,
)
from orchestrator.data import (
    DATASETS,
    DataConfig,
    DatasetNotFoundError,
    DatasetSplits,
    load_dataset,
    make_loader,
)
from orchestrator.tasks.common import mdeq_config

__all__ = ["BenchInputError", "add_arguments", "run", "run_attack", "run_latent"]

# Defaults of JIIO in the latent benchmark, where they differ from the paper's CelebA
# settings (JIIOConfig.paper("celeba_generative")), measured on the tiny digits GLO decoder
# trained here (digits test batch of 64, 40 iterations, loss re-solved at x*; zero latent
# 13.6, Adam-40 2.8, exact-gradient descent with step 0.05 2.7):
# - alpha_x 0.05 (paper 0.01 -> 0.003 after iteration 50; we keep the 0.3 ratio). The
#   gradient of the summed squared error w.r.t. the latent is ~20 per image at the zero
#   latent; 0.05 moves it by ~1 per step at first, the scale of the training latents.
#   0.01-0.03 are stable but slower; from 0.1 up the objective oscillates and ends higher.
# - Anderson memory 5, type II (paper 40, type I). With m=40 type I (also with m=20 or a
#   1e-2 regularisation) the joint residual stalls at 0.3-0.7 and JIIO-40 ends at the zero
#   latent's loss (13.4); m=5 type II gives 4.5 (JIIO-100: 3.5), damped iteration 6.6.
#   Both are flags (--anderson-m, --anderson-type) to reproduce the paper's setting.
# - z0 = f(0, x0), one cell evaluation inside the timed region (--jiio-z0 step). From
#   z0 = 0 (jiio_solve's default) the GroupNorm layers of the cell and head see an all-zero
#   input, whose Jacobian scales like 1/sqrt(GroupNorm eps): the first x steps follow a
#   gradient J_x^T mu ~100x the true one (~2,000 vs ~20 per image) and throw the latent to
#   norm ~80, where the injection's GroupNorm makes the decoder flat and nothing moves
#   again (loss 18-20). The attack suffers too (JIIO-80's CE 4.5 instead of 6.3), so this
#   start is the default of both benchmarks.
LATENT_ALPHA_X = 0.05
LATENT_ANDERSON_M = 5
LATENT_ANDERSON_TYPE = "II"
# Classifier training (attack): a plain DEQ, Anderson, the sweeps' default tolerances.
_TRAIN_DEQ = DEQConfig(solver="anderson", max_iter=20, tol=1e-3, backward_max_iter=15)


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


_pos_int = _number(int, 1, strict=False)
_nonneg_int = _number(int, 0, strict=False)
_pos_float = _number(float, 0.0, strict=True)
_nonneg_float = _number(float, 0.0, strict=False)


def _common_arguments(p: argparse.ArgumentParser, *, batch: int, train_steps: int) -> None:
    p.add_argument("--dataset", choices=DATASETS, default="digits", help="default: digits (no files needed)")
    p.add_argument("--data-root", default=None, help="directory holding the dataset (all but digits)")
    p.add_argument("--download", action="store_true", help="download the dataset into --data-root if missing")
    p.add_argument(
        "--size",
        choices=("tiny", "paper"),
        default="tiny",
        help="MDEQ size (orchestrator.tasks.common.mdeq_config); a checkpoint's own size wins",
    )
    p.add_argument("--checkpoint", default=None, help="a torch.save'd Trainer.state_dict (modules cell/head)")
    p.add_argument(
        "--train-steps",
        type=_pos_int,
        default=train_steps,
        help=f"Adam steps of the in-process training when no --checkpoint (default {train_steps})",
    )
    p.add_argument("--batch", type=_pos_int, default=batch, help=f"held-out batch size (default {batch})")
    p.add_argument("--reps", type=_pos_int, default=3, help="timed repetitions, median reported (default 3)")
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
        help="JIIO's initial state: step = f(0, x0), one cell evaluation, timed (default); "
        "zeros = jiio_solve's default",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument(
        "--threads",
        type=_nonneg_int,
        default=1,
        help="torch CPU threads (default 1: steady timings on a shared machine, where more threads "
        "than free cores make every method several times slower; 0: torch's default)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``attack`` and ``latent`` sub-commands to ``parser`` (``jiio bench``)."""
    sub = parser.add_subparsers(dest="bench", metavar="{attack,latent}", required=True)
    a = sub.add_parser(
        "attack",
        help="JIIO vs PGD: adversarial examples for an MDEQ classifier",
        description="JIIO vs L2 PGD on one MDEQ classifier and one test batch (paper Table 2).",
    )
    _common_arguments(a, batch=64, train_steps=120)
    a.add_argument("--eps", type=_nonneg_float, default=1.0, help="L2 radius (default 1.0)")
    a.add_argument("--pgd-steps", type=_pos_int, default=20, help="K: PGD steps (default 20)")
    a.add_argument("--pgd-step-size", type=_pos_float, default=0.6, help="normalised PGD step (default 0.6)")
    a.add_argument("--jiio-iters", type=_pos_int, default=80, help="N: JIIO iterations (default 80)")
    a.add_argument(
        "--train-lr", type=_pos_float, default=3e-3, help="Adam rate of the training (default 3e-3)"
    )
    a.set_defaults(bench_run=run_attack, command_prog=a.prog)

    lat = sub.add_parser(
        "latent",
        help="JIIO vs Adam: latent optimisation in an MDEQ decoder",
        description="JIIO vs Adam over the latent of one MDEQ decoder (paper Table 3, Fig. 3).",
    )
    _common_arguments(lat, batch=64, train_steps=200)
    lat.add_argument("--latent-dim", type=_pos_int, default=16, help="latent size (default 16)")
    lat.add_argument("--adam-steps", type=_pos_int, default=40, help="S: Adam steps (default 40)")
    lat.add_argument("--adam-lr", type=_pos_float, default=0.1, help="Adam learning rate (default 0.1)")
    lat.add_argument("--jiio-iters", type=_pos_int, default=40, help="N: JIIO iterations (default 40)")
    lat.add_argument(
        "--jiio-long-iters",
        type=_nonneg_int,
        default=100,
        help="M: a second, longer JIIO run (default 100; 0: skip)",
    )
    lat.add_argument(
        "--alpha-x",
        type=_pos_float,
        default=LATENT_ALPHA_X,
        help=f"JIIO step on the latent (default {LATENT_ALPHA_X}; the paper's CelebA value 0.01 is "
        "too small for 16x16 digits, see LATENT_ALPHA_X in orchestrator/bench.py)",
    )
    lat.add_argument(
        "--anderson-m",
        type=_pos_int,
        default=LATENT_ANDERSON_M,
        help=f"JIIO's Anderson memory (default {LATENT_ANDERSON_M}; paper 40)",
    )
    lat.add_argument(
        "--anderson-type",
        choices=("I", "II"),
        default=LATENT_ANDERSON_TYPE,
        help=f"JIIO's Anderson type (default {LATENT_ANDERSON_TYPE}; paper I)",
    )
    lat.add_argument(
        "--train-lr", type=_pos_float, default=3e-3, help="Adam rate of the training (default 3e-3)"
    )
    lat.add_argument(
        "--plot", default="bench_latent.png", help="loss-versus-time PNG (default bench_latent.png)"
    )
    lat.set_defaults(bench_run=run_latent, command_prog=lat.prog)


def run(args: argparse.Namespace) -> int:
    """Run the chosen benchmark and print its tables (or its JSON object) on stdout."""
    out = args.bench_run(args)
    if args.json:
        print(json.dumps(_finite(out), allow_nan=False))
    else:
        print(_render(out))
    return 0


# ----------------------------------------------------------------------------- shared


class _Log:
    def __init__(self, name: str, quiet: bool) -> None:
        self.name, self.quiet, self.t0 = name, quiet, time.perf_counter()

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            print(f"[jiio bench {self.name} {time.perf_counter() - self.t0:6.1f}s] {msg}", file=sys.stderr)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t0, out


class _CallClock:
    """Wraps a model; records when each call starts (synchronised), relative to ``reset``,
    and the input of each call (a reference, no copy).

    A baseline that calls the model once per step (``pgd_attack``, ``adam_latent``) calls it
    the k-th time (0-based) exactly when its k-th iterate exists: ``starts[k]`` is the time
    it took to compute that iterate, ``inputs[k]`` the iterate itself.
    """

    def __init__(self, fn: Callable[[Tensor], Tensor], device: torch.device) -> None:
        self.fn, self.device = fn, device
        self.starts: list[float] = []
        self.inputs: list[Tensor] = []
        self.t0 = time.perf_counter()

    def reset(self) -> None:
        _sync(self.device)
        self.starts, self.inputs, self.t0 = [], [], time.perf_counter()

    def __call__(self, x: Tensor) -> Tensor:
        _sync(self.device)
        self.starts.append(time.perf_counter() - self.t0)
        self.inputs.append(x.detach())
        return self.fn(x)


def _device(args: argparse.Namespace) -> torch.device:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise BenchInputError("--device cuda asked for, but torch sees no CUDA device (use --device cpu)")
    return torch.device(args.device)


def _device_name(device: torch.device) -> str:
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


def _load_data(args: argparse.Namespace) -> DatasetSplits:
    try:
        return load_dataset(
            DataConfig(dataset=args.dataset, data_root=args.data_root, download=args.download, seed=args.seed)
        )
    except (ValueError, DatasetNotFoundError) as err:
        raise BenchInputError(str(err)) from None


def _load_checkpoint(path: str, bench: str) -> dict[str, Any]:
    """The modules and flat config of a Trainer checkpoint, checked for ``bench``."""
    if not os.path.isfile(path):
        raise BenchInputError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling, zip or I/O errors: all mean "not a checkpoint"
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise BenchInputError(f"cannot read checkpoint {path}: {first}") from None
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


def _build(
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


def _test_batch(splits: DatasetSplits, batch: int, seed: int, device: torch.device) -> tuple[Tensor, Tensor]:
    if len(splits.test) < batch:
        raise BenchInputError(f"--batch {batch} is larger than the test split ({len(splits.test)} images)")
    x, y = next(iter(make_loader(splits.test, batch, shuffle=True, seed=seed)))
    return x.to(device), y.to(device)


def _baseline_deq(args: argparse.Namespace) -> DEQConfig:
    return dataclasses.replace(DEQConfig.paper(), solver=args.deq_solver)


def _setup(args: argparse.Namespace, name: str) -> tuple[torch.device, _Log]:
    device = _device(args)
    if args.checkpoint and not os.path.isfile(args.checkpoint):
        raise BenchInputError(f"checkpoint not found: {args.checkpoint}")
    plot = getattr(args, "plot", None)
    if plot:
        parent = os.path.dirname(os.path.abspath(plot))
        if not os.path.isdir(parent):
            raise BenchInputError(f"--plot {plot}: directory {parent} does not exist")
        if not plot.lower().endswith(".png"):
            raise BenchInputError(f"--plot {plot}: the file name must end in .png")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.load_start = _load()
    return device, _Log(name, args.quiet)


def _environment(device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "device": _device_name(device),
        "device_type": device.type,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "seed": args.seed,
        "load_average_start": args.load_start,
        "load_average": _load(),
    }


def _load() -> list[float] | None:
    """1, 5 and 15 minute load averages (other processes' CPU use skews CPU timings)."""
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def _z0(cell: MDEQCell, x: Tensor, how: str) -> Tensor | None:
    """JIIO's initial state: None (jiio_solve's zeros) or one cell step from zero."""
    if how == "zeros":
        return None
    with torch.no_grad():
        return cell(cell.init_z(x), x)


def _steps(k: int) -> list[int]:
    """The row counts shown for a budget of ``k`` steps: k/4, k/2 and k (deduplicated)."""
    return sorted({max(1, k // 4), max(1, k // 2), k})


def _interleave(
    variants: dict[str, Callable[[], Any]], reps: int, log: _Log
) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """Run every variant once per repetition, in turn; return outputs per rep and the last."""
    outs: dict[str, list[Any]] = {k: [] for k in variants}
    for r in range(reps):
        for name, fn in variants.items():
            outs[name].append(fn())
        log(f"rep {r + 1}/{reps}: " + ", ".join(f"{k} {v[-1]['seconds']:.2f}s" for k, v in outs.items()))
    return outs, {k: v[-1] for k, v in outs.items()}


# ----------------------------------------------------------------------------- attack


def _train_classifier(
    cell: MDEQCell,
    head: nn.Module,
    splits: DatasetSplits,
    args: argparse.Namespace,
    device: torch.device,
    log: _Log,
) -> dict[str, Any]:
    deq = DEQ(cell, _TRAIN_DEQ)
    params = [*cell.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=args.train_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.train_steps)
    step, epoch, t0, losses = 0, 0, time.perf_counter(), []
    cell.train(), head.train()
    while step < args.train_steps:
        for x, y in make_loader(splits.train, 64, shuffle=True, seed=args.seed * 1000 + epoch):
            z, _ = deq(x.to(device))
            loss = F.cross_entropy(head(z), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            step += 1
            if step % 25 == 0 or step == args.train_steps:
                mean = statistics.fmean(losses[-25:])
                log(f"train step {step}/{args.train_steps}: cross-entropy {mean:.3f}")
            if step >= args.train_steps:
                break
        epoch += 1
    cell.eval(), head.eval()
    return {
        "steps": step,
        "seconds": time.perf_counter() - t0,
        "final_train_loss": statistics.fmean(losses[-10:]),
    }


def run_attack(args: argparse.Namespace) -> dict[str, Any]:
    """``jiio bench attack``: PGD-K vs JIIO-N on one classifier and one test batch."""
    device, log = _setup(args, "attack")
    splits = _load_data(args)
    if splits.num_classes < 2:
        raise BenchInputError(f"bench attack needs a labelled dataset; {args.dataset} has no classes")
    cell, head, ckpt, size, _ = _build(args, splits, "attack")
    x, y = _test_batch(splits, args.batch, args.seed, device)  # checked before any training
    cell, head = cell.to(device), head.to(device)
    if ckpt:
        log(f"loaded {size} MDEQ classifier from {args.checkpoint}")
        training: dict[str, Any] = {"source": "checkpoint", "path": args.checkpoint}
    else:
        log(f"training a {size} MDEQ classifier on {args.dataset}: {args.train_steps} steps")
        training = {"source": "trained", **_train_classifier(cell, head, splits, args, device, log)}
    cell.eval(), head.eval()
    n_params = count_parameters(cell) + count_parameters(head)
    for p in [*cell.parameters(), *head.parameters()]:
        p.requires_grad_(False)  # attacks need gradients w.r.t. the input only
    deq_cfg = _baseline_deq(args)
    deq = DEQ(cell, deq_cfg)

    def model(inp: Tensor) -> Tensor:
        return head(deq(inp)[0])

    def evaluate(x_adv: Tensor) -> dict[str, float]:
        with torch.no_grad():
            logits = model(x_adv)
        delta = (x_adv - x).reshape(x.shape[0], -1).norm(dim=1)
        return {
            "accuracy": float((logits.argmax(1) == y).float().mean()),
            "loss": float(F.cross_entropy(logits, y, reduction="none").mean()),
            "max_perturbation": float(delta.max()),
        }

    clean = evaluate(x)
    log(f"clean accuracy on the batch: {clean['accuracy']:.3f}; timing {args.reps} interleaved reps")

    def pgd(k: int) -> Callable[[], dict[str, Any]]:
        clock = _CallClock(model, device)

        def go() -> dict[str, Any]:
            clock.reset()
            _, st = pgd_attack(clock, x, y, eps=args.eps, step_size=args.pgd_step_size, steps=k)
            # call k starts when the k-th iterate exists; the last one (k = K) is pgd_attack's
            # own loss report, not part of the attack, so the attack's time is its start
            return {
                "seconds": clock.starts[-1],
                "times": list(clock.starts),
                "inputs": list(clock.inputs),
                "curve": [*st.step_loss, float(st.final_loss.mean())],  # mean CE at iterate k
            }

        return go

    def loss_fn(z: Tensor) -> Tensor:  # JIIO minimises: the negated cross-entropy
        return -F.cross_entropy(head(z), y, reduction="none")

    base = JIIOConfig.paper("mnist_adversarial")

    def jiio_cfg(n: int) -> JIIOConfig:
        return base.replace(max_iter=n, alpha_x_switch_iter=max(50, 5 * n // 8))

    project = l2_ball(x, args.eps)

    def jiio(n: int) -> Callable[[], dict[str, Any]]:
        cfg = jiio_cfg(n)

        def go() -> dict[str, Any]:
            def solve() -> Any:
                return jiio_solve(
                    cell, loss_fn, x, z0=_z0(cell, x, args.jiio_z0), config=cfg, project=project
                )

            seconds, res = _timed(solve, device)
            return {"seconds": seconds, "x": res.x, "res": res}

        return go

    # PGD with k < K steps is, step for step, the first k steps of PGD-K (fixed step size,
    # no random start): its rows are read off the PGD-K run (iterate k and the time it
    # existed) instead of being run again. JIIO-n is not a prefix of JIIO-N (the alpha_x
    # switch and the best-iterate selection depend on N): each n is its own run.
    K, jiio_iters = args.pgd_steps, _steps(args.jiio_iters)
    variants = {f"pgd-{K}": pgd(K)}
    variants.update({f"jiio-{n}": jiio(n) for n in jiio_iters})
    pgd(1)(), jiio(2)()  # warm-up: allocator, kernels, lazy init
    per_rep, last = _interleave(variants, args.reps, log)

    rows = []
    pgd_outs = per_rep.pop(f"pgd-{K}")
    for k in _steps(K):
        times = [o["times"][k] for o in pgd_outs]
        rows.append(
            {
                "method": "pgd",
                "steps": k,
                "seconds": statistics.median(times),
                "seconds_all": times,
                **evaluate(pgd_outs[-1]["inputs"][k]),
            }
        )
    for name, outs in per_rep.items():
        res = last[name]["res"]
        rows.append(
            {
                "method": "jiio",
                "steps": int(name.split("-")[1]),
                "seconds": statistics.median(o["seconds"] for o in outs),
                "seconds_all": [o["seconds"] for o in outs],
                **evaluate(res.x),
                "objective": float(-res.objective.mean()),  # JIIO's own estimate of the CE
                "diverged": float(res.diverged.float().mean()),
            }
        )
    by = {f"{r['method']}-{r['steps']}": r for r in rows}
    p_main, j_main = by[f"pgd-{args.pgd_steps}"], by[f"jiio-{args.jiio_iters}"]
    tol = 1e-5 * max(1.0, args.eps)
    within = all(r["max_perturbation"] <= args.eps + tol for r in rows)
    stronger = [r for r in rows if r["method"] == "pgd" and r["loss"] >= j_main["loss"]]
    p_curve = {
        "seconds": [statistics.median(t) for t in zip(*(o["times"] for o in pgd_outs), strict=True)],
        "loss": pgd_outs[-1]["curve"],
    }
    reach = next((k for k, v in enumerate(p_curve["loss"]) if v >= j_main["loss"]), None)
    cheapest = min(stronger, key=lambda r: r["seconds"]) if stronger else None
    out = {
        "bench": "attack",
        **_environment(device, args),
        "config": {
            "dataset": args.dataset,
            "size": size,
            "batch": args.batch,
            "reps": args.reps,
            "eps": args.eps,
            "pgd_steps": args.pgd_steps,
            "pgd_step_size": args.pgd_step_size,
            "pgd_normalize": True,
            "jiio_iters": args.jiio_iters,
            "jiio_z0": args.jiio_z0,
            "checkpoint": args.checkpoint,
            "train_steps": None if ckpt else args.train_steps,
            "deq": dataclasses.asdict(deq_cfg),
            "jiio": jiio_cfg(args.jiio_iters).to_dict(),
        },
        "model": {
            **training,
            "parameters": n_params,
            "clean_accuracy": clean["accuracy"],
            "clean_loss": clean["loss"],
        },
        "pgd": p_main,
        "jiio": j_main,
        "rows": rows,
        "within_eps": within,
        "speedup": p_main["seconds"] / j_main["seconds"],
        "equal_or_better_strength": j_main["loss"] >= p_main["loss"]
        or j_main["accuracy"] <= p_main["accuracy"],
        "equal_strength_pgd_steps": cheapest["steps"] if cheapest else None,
        "speed_ratio_at_equal_strength": cheapest["seconds"] / j_main["seconds"] if cheapest else None,
        "speed_ratio_at_equal_strength_lower_bound": None
        if cheapest
        else p_main["seconds"] / j_main["seconds"],
        # the same at the granularity of single PGD steps (PGD's per-step CE, same DEQ solve)
        "pgd_curve": p_curve,
        "pgd_steps_to_jiio_loss": reach,
        "pgd_seconds_to_jiio_loss": p_curve["seconds"][reach] if reach is not None else None,
        "speed_ratio_at_equal_loss": p_curve["seconds"][reach] / j_main["seconds"]
        if reach is not None
        else None,
    }
    return out


# ----------------------------------------------------------------------------- latent


def _se(out: Tensor, target: Tensor) -> Tensor:
    """Summed squared error per image: the paper's generative objective."""
    return (out - target).pow(2).reshape(out.shape[0], -1).sum(1)


def _train_decoder(
    cell: MDEQCell,
    head: nn.Module,
    splits: DatasetSplits,
    latent_dim: int,
    args: argparse.Namespace,
    device: torch.device,
    log: _Log,
) -> dict[str, Any]:
    """GLO (Bojanowski et al. 2018): decoder and one free latent per training image, jointly."""
    gen = torch.Generator().manual_seed(args.seed)
    n_train = len(splits.train)
    keep = torch.randperm(n_train, generator=gen)[: min(n_train, 2048)].tolist()
    images = torch.stack([splits.train[i][0] for i in keep]).to(device)
    codes = nn.Embedding(len(keep), latent_dim, sparse=True).to(device)
    nn.init.normal_(codes.weight, std=0.5)
    deq = DEQ(cell, _TRAIN_DEQ)
    opt = torch.optim.Adam([*cell.parameters(), *head.parameters()], lr=args.train_lr)
    opt_codes = torch.optim.SparseAdam(list(codes.parameters()), lr=10 * args.train_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.train_steps)
    t0, losses = time.perf_counter(), []
    cell.train(), head.train()
    for step in range(1, args.train_steps + 1):
        idx = torch.randint(0, len(keep), (min(64, len(keep)),), generator=gen).to(device)
        z, _ = deq(codes(idx))
        loss = _se(head(z), images[idx]).mean()
        opt.zero_grad(set_to_none=True)
        opt_codes.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        opt_codes.step()
        sched.step()
        losses.append(float(loss.detach()))
        if step % 50 == 0 or step == args.train_steps:
            mean = statistics.fmean(losses[-50:])
            log(f"train step {step}/{args.train_steps}: reconstruction loss {mean:.2f}")
    cell.eval(), head.eval()
    return {
        "steps": args.train_steps,
        "seconds": time.perf_counter() - t0,
        "images": len(keep),
        "final_train_loss": statistics.fmean(losses[-10:]),
    }


def run_latent(args: argparse.Namespace) -> dict[str, Any]:
    """``jiio bench latent``: Adam-S vs JIIO-N (and JIIO-M) over a DEQ decoder's latent."""
    device, log = _setup(args, "latent")
    splits = _load_data(args)
    cell, head, ckpt, size, latent_dim = _build(args, splits, "latent")
    target, _ = _test_batch(splits, args.batch, args.seed, device)  # checked before any training
    assert latent_dim is not None
    cell, head = cell.to(device), head.to(device)
    if ckpt:
        log(f"loaded {size} MDEQ decoder (latent {latent_dim}) from {args.checkpoint}")
        training: dict[str, Any] = {"source": "checkpoint", "path": args.checkpoint}
    else:
        what = f"a {size} MDEQ decoder (latent {latent_dim}) on {args.dataset}"
        log(f"training {what}: {args.train_steps} GLO steps")
        training = {"source": "trained", **_train_decoder(cell, head, splits, latent_dim, args, device, log)}
    cell.eval(), head.eval()
    n_params = count_parameters(cell) + count_parameters(head)
    for p in [*cell.parameters(), *head.parameters()]:
        p.requires_grad_(False)  # the latent is the only variable
    x0 = torch.zeros(args.batch, latent_dim, device=device, dtype=target.dtype)
    deq_cfg = _baseline_deq(args)
    deq = DEQ(cell, deq_cfg)

    def decoder(x: Tensor) -> Tensor:
        return head(deq(x)[0])

    def evaluate(x: Tensor) -> float:
        with torch.no_grad():
            return float(_se(decoder(x), target).mean())

    start_loss = evaluate(x0)
    log(f"loss at the zero latent: {start_loss:.2f}; timing {args.reps} interleaved reps")

    def adam(steps: int) -> Callable[[], dict[str, Any]]:
        clock = _CallClock(decoder, device)

        def go() -> dict[str, Any]:
            clock.reset()
            x, st = adam_latent(clock, target, x0, steps=steps, lr=args.adam_lr, loss_fn=_se)
            # call i starts once the i-th latent exists; the last call is adam_latent's report
            curve = [*st.step_loss, float(st.final_loss.mean())]
            return {"seconds": clock.starts[-1], "x": x, "times": list(clock.starts), "curve": curve}

        return go

    def jiio_cfg(n: int) -> JIIOConfig:
        return JIIOConfig.paper("celeba_generative").replace(
            max_iter=n,
            alpha_x=args.alpha_x,
            alpha_x_after=0.3 * args.alpha_x,
            alpha_x_switch_iter=max(50, 5 * n // 8),
            anderson_m=args.anderson_m,
            anderson_type=args.anderson_type,
        )

    def loss_fn(z: Tensor) -> Tensor:
        return _se(head(z), target)

    def jiio(n: int) -> Callable[[], dict[str, Any]]:
        cfg = jiio_cfg(n)

        def go() -> dict[str, Any]:
            def solve() -> Any:
                return jiio_solve(cell, loss_fn, x0, z0=_z0(cell, x0, args.jiio_z0), config=cfg)

            seconds, res = _timed(solve, device)
            return {"seconds": seconds, "x": res.x, "res": res}

        return go

    iters = [args.jiio_iters] + ([args.jiio_long_iters] if args.jiio_long_iters else [])
    iters = sorted(set(iters))
    variants = {f"adam-{args.adam_steps}": adam(args.adam_steps)}
    variants.update({f"jiio-{n}": jiio(n) for n in iters})
    adam(1)(), jiio(2)()  # warm-up
    per_rep, last = _interleave(variants, args.reps, log)

    rows: list[dict[str, Any]] = []
    curves: dict[str, dict[str, list[float]]] = {}
    for name, outs in per_rep.items():
        method, steps = name.split("-")
        seconds = statistics.median(o["seconds"] for o in outs)
        row: dict[str, Any] = {
            "method": method,
            "steps": int(steps),
            "seconds": seconds,
            "seconds_all": [o["seconds"] for o in outs],
            "loss": evaluate(last[name]["x"]),
        }
        if method == "adam":
            times = [statistics.median(t) for t in zip(*(o["times"] for o in outs), strict=True)]
            curves[name] = {"seconds": times, "loss": last[name]["curve"]}
        else:
            res = last[name]["res"]
            row["objective"] = float(res.objective.mean())  # JIIO's own estimate
            row["diverged"] = float(res.diverged.float().mean())
            obj = res.trace["objective"]
            per = seconds / res.iterations
            curves[name] = {
                "seconds": [per * (k + 1) for k in range(res.iterations)],
                "loss": [float(v) for v in torch.where(torch.isfinite(obj), obj, torch.nan).nanmean(1)],
            }
        rows.append(row)
    by = {f"{r['method']}-{r['steps']}": r for r in rows}
    a_main, j_main = by[f"adam-{args.adam_steps}"], by[f"jiio-{args.jiio_iters}"]
    j_long = by.get(f"jiio-{args.jiio_long_iters}") if args.jiio_long_iters else None
    a_curve = curves[f"adam-{args.adam_steps}"]
    reach = next((i for i, v in enumerate(a_curve["loss"]) if v <= j_main["loss"]), None)
    adam_t = a_curve["seconds"][reach] if reach is not None else None
    plot = _plot_latent(args.plot, curves, rows, device, size, args) if args.plot else None
    if plot:
        log(f"wrote {plot}")
    return {
        "bench": "latent",
        **_environment(device, args),
        "config": {
            "dataset": args.dataset,
            "size": size,
            "latent_dim": latent_dim,
            "batch": args.batch,
            "reps": args.reps,
            "adam_steps": args.adam_steps,
            "adam_lr": args.adam_lr,
            "jiio_iters": args.jiio_iters,
            "jiio_long_iters": args.jiio_long_iters or None,
            "alpha_x": args.alpha_x,
            "jiio_z0": args.jiio_z0,
            "checkpoint": args.checkpoint,
            "train_steps": None if ckpt else args.train_steps,
            "deq": dataclasses.asdict(deq_cfg),
            "jiio": jiio_cfg(args.jiio_iters).to_dict(),
        },
        "model": {
            **training,
            "parameters": n_params,
            "start_loss": start_loss,
        },
        "adam": a_main,
        "jiio": j_main,
        "jiio_long": j_long,
        "rows": rows,
        "curves": curves,
        "speedup": a_main["seconds"] / j_main["seconds"],
        "speedup_long": a_main["seconds"] / j_long["seconds"] if j_long else None,
        "equal_or_better_loss": j_main["loss"] <= a_main["loss"],
        "adam_steps_to_jiio_loss": reach,
        "adam_seconds_to_jiio_loss": adam_t,
        "speed_ratio_at_equal_loss": adam_t / j_main["seconds"] if adam_t is not None else None,
        "speed_ratio_at_equal_loss_lower_bound": None
        if reach is not None
        else a_main["seconds"] / j_main["seconds"],
        "plot": plot,
    }


def _plot_latent(
    path: str,
    curves: dict[str, dict[str, list[float]]],
    rows: list[dict[str, Any]],
    device: torch.device,
    size: str,
    args: argparse.Namespace,
) -> str:
    """Paper Fig. 3: reconstruction loss against wall time, one curve per method."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for c, row in zip(curves.values(), rows, strict=True):
        label = ("Adam " if row["method"] == "adam" else "JIIO ") + str(row["steps"])
        (line,) = ax.plot(c["seconds"], c["loss"], label=label)
        ax.plot([row["seconds"]], [row["loss"]], "o", color=line.get_color(), markersize=5)
    main = next(r for r in rows if r["method"] == "jiio" and r["steps"] == args.jiio_iters)
    ax.axhline(main["loss"], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("reconstruction loss (summed SE per image)")
    ax.set_yscale("log")
    title = f"{size} MDEQ decoder, {args.dataset}, batch {args.batch}, {_device_name(device)}"
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    legend = f"dots: loss re-solved at the result\ndotted: JIIO {args.jiio_iters}'s loss"
    ax.legend(title=legend, title_fontsize=8, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- output


def _finite(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats -> None."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _header(out: dict[str, Any]) -> list[str]:
    cfg, model = out["config"], out["model"]
    deq = cfg["deq"]
    if model["source"] == "checkpoint":
        src = f"checkpoint {model['path']}"
    else:
        src = f"trained here, {model['steps']} steps in {model['seconds']:.1f} s"
    start, end = out["load_average_start"], out["load_average"]
    load = f"{_f(start[0] if start else None, '.2f')} -> {_f(end[0] if end else None, '.2f')}"
    return [
        f"jiio bench {out['bench']} | {out['device']} ({out['device_type']}, {out['threads']} threads) "
        f"| torch {out['torch']} | load average {load}",
        f"model: {cfg['size']} MDEQ on {cfg['dataset']}, {model['parameters']} parameters, {src} "
        f"| held-out batch {cfg['batch']} | median of {cfg['reps']} interleaved reps "
        f"| baseline DEQ {deq['solver']} {deq['max_iter']}/{deq['backward_max_iter']}",
    ]


def _render_attack(out: dict[str, Any]) -> list[str]:
    cfg, p, j = out["config"], out["pgd"], out["jiio"]
    P, J = f"PGD-{p['steps']}", f"JIIO-{j['steps']}"
    lines = [
        f"clean accuracy {out['model']['clean_accuracy']:.3f} | L2 eps {cfg['eps']} | PGD step "
        f"{cfg['pgd_step_size']} (normalised) | JIIO z0 {cfg['jiio_z0']}",
        f"{'method':8s}{'steps':>6s}{'seconds':>10s}{'accuracy':>10s}{'CE loss':>10s}{'max |d|':>10s}",
    ]
    for r in out["rows"]:
        lines.append(
            f"{r['method']:8s}{r['steps']:6d}{r['seconds']:10.3f}{r['accuracy']:10.3f}"
            f"{r['loss']:10.4f}{r['max_perturbation']:10.4f}"
        )
    same = "yes" if out["equal_or_better_strength"] else "no"
    lines.append(
        f"speedup {P} / {J}: {out['speedup']:.2f}x | {J} equal or better strength: {same} "
        f"(CE {j['loss']:.4f} vs {p['loss']:.4f}, accuracy {j['accuracy']:.3f} vs {p['accuracy']:.3f})"
    )
    if out["speed_ratio_at_equal_strength"] is not None:
        k = out["equal_strength_pgd_steps"]
        lines.append(
            f"speed ratio at equal or better strength: {out['speed_ratio_at_equal_strength']:.2f}x "
            f"(PGD-{k}, the cheapest PGD row whose CE >= {J}'s)"
        )
    else:
        lines.append(
            f"speed ratio at equal or better strength: {P} never reached {J}'s CE; at least "
            f"{out['speed_ratio_at_equal_strength_lower_bound']:.2f}x"
        )
    if out["speed_ratio_at_equal_loss"] is not None:
        lines.append(
            f"per PGD step: PGD reaches {J}'s CE after {out['pgd_steps_to_jiio_loss']} steps, "
            f"{out['pgd_seconds_to_jiio_loss']:.3f} s: {out['speed_ratio_at_equal_loss']:.2f}x"
        )
    lines.append(f"all perturbations within eps: {'yes' if out['within_eps'] else 'NO'}")
    return lines


def _render_latent(out: dict[str, Any]) -> list[str]:
    cfg, a, j, jl = out["config"], out["adam"], out["jiio"], out["jiio_long"]
    A, J = f"Adam-{a['steps']}", f"JIIO-{j['steps']}"
    jc = cfg["jiio"]
    lines = [
        f"latent {cfg['latent_dim']}, loss at the zero latent {out['model']['start_loss']:.3f} | Adam lr "
        f"{cfg['adam_lr']} | JIIO alpha_x {cfg['alpha_x']}, Anderson m={jc['anderson_m']} "
        f"type {jc['anderson_type']}, z0 {cfg['jiio_z0']}",
        f"{'method':8s}{'steps':>6s}{'seconds':>10s}{'loss':>10s}{'JIIO obj':>10s}",
    ]
    for r in out["rows"]:
        obj = _f(r.get("objective"), ".3f")
        lines.append(f"{r['method']:8s}{r['steps']:6d}{r['seconds']:10.3f}{r['loss']:10.3f}{obj:>10s}")
    line = f"speedup {A} / {J}: {out['speedup']:.2f}x"
    if jl:
        line += f" | {A} / JIIO-{jl['steps']}: {out['speedup_long']:.2f}x"
    lines.append(line + f" | loss {J} {j['loss']:.3f}, {A} {a['loss']:.3f}")
    if out["speed_ratio_at_equal_loss"] is not None:
        lines.append(
            f"speed ratio at equal loss: {out['speed_ratio_at_equal_loss']:.2f}x (Adam reaches {J}'s loss "
            f"after {out['adam_steps_to_jiio_loss']} steps, {out['adam_seconds_to_jiio_loss']:.3f} s)"
        )
    else:
        lines.append(
            f"speed ratio at equal loss: {A} never reached {J}'s loss; at least "
            f"{out['speed_ratio_at_equal_loss_lower_bound']:.2f}x"
        )
    if out["plot"]:
        lines.append(f"loss-versus-time curves: {out['plot']}")
    return lines


def _f(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _render(out: dict[str, Any]) -> str:
    body = _render_attack(out) if out["bench"] == "attack" else _render_latent(out)
    return "\n".join(_header(out) + body)
