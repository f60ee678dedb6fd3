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
import json

from orchestrator.bench.attack import run_attack
from orchestrator.bench.latent import LATENT_ALPHA_X, LATENT_ANDERSON_M, LATENT_ANDERSON_TYPE, run_latent
from orchestrator.bench.report import json_safe, render
from orchestrator.bench.setup import (
    BenchInputError,
    add_common_arguments,
    nonneg_float,
    nonneg_int,
    pos_float,
    pos_int,
)
from orchestrator.bench.strong import add_baseline_arguments

__all__ = ["BenchInputError", "add_arguments", "run", "run_attack", "run_latent"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``attack`` and ``latent`` sub-commands to ``parser`` (``jiio bench``)."""
    sub = parser.add_subparsers(dest="bench", metavar="{attack,latent}", required=True)
    a = sub.add_parser(
        "attack",
        help="JIIO vs PGD: adversarial examples for an MDEQ classifier",
        description="JIIO vs L2 PGD on one MDEQ classifier and one test batch (paper Table 2).",
    )
    add_common_arguments(a, batch=64, train_steps=120)
    a.add_argument("--eps", type=nonneg_float, default=1.0, help="L2 radius (default 1.0)")
    a.add_argument("--pgd-steps", type=pos_int, default=20, help="K: PGD steps (default 20)")
    a.add_argument("--pgd-step-size", type=pos_float, default=0.6, help="normalised PGD step (default 0.6)")
    add_baseline_arguments(a, grid_flag="--step-sizes", grid="0.3,0.6,1.2", what="normalised PGD step sizes")
    a.add_argument("--jiio-iters", type=pos_int, default=80, help="N: JIIO iterations (default 80)")
    a.add_argument(
        "--train-lr", type=pos_float, default=3e-3, help="Adam rate of the training (default 3e-3)"
    )
    a.add_argument(
        "--plot",
        default="bench_attack.png",
        help="strength-versus-time PNG: the cold PGD's and the warm baselines' per-step curves and "
        "every JIIO variant (default bench_attack.png; '' for none)",
    )
    a.set_defaults(bench_run=run_attack, command_prog=a.prog)

    lat = sub.add_parser(
        "latent",
        help="JIIO vs Adam: latent optimisation in an MDEQ decoder",
        description="JIIO vs Adam over the latent of one MDEQ decoder (paper Table 3, Fig. 3).",
    )
    add_common_arguments(lat, batch=64, train_steps=200)
    lat.add_argument("--latent-dim", type=pos_int, default=16, help="latent size (default 16)")
    lat.add_argument("--adam-steps", type=pos_int, default=40, help="S: Adam steps (default 40)")
    lat.add_argument("--adam-lr", type=pos_float, default=0.1, help="Adam learning rate (default 0.1)")
    add_baseline_arguments(lat, grid_flag="--adam-lrs", grid="0.05,0.1,0.2,0.4", what="Adam learning rates")
    lat.add_argument("--jiio-iters", type=pos_int, default=40, help="N: JIIO iterations (default 40)")
    lat.add_argument(
        "--jiio-long-iters",
        type=nonneg_int,
        default=100,
        help="M: a second, longer JIIO run (default 100; 0: skip)",
    )
    lat.add_argument(
        "--alpha-x",
        type=pos_float,
        default=LATENT_ALPHA_X,
        help=f"JIIO step on the latent (default {LATENT_ALPHA_X}; the paper's CelebA value 0.01 is "
        "too small for 16x16 digits, see LATENT_ALPHA_X in orchestrator/bench/latent.py)",
    )
    lat.add_argument(
        "--anderson-m",
        type=pos_int,
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
        "--train-lr", type=pos_float, default=3e-3, help="Adam rate of the training (default 3e-3)"
    )
    lat.add_argument(
        "--plot",
        default="bench_latent.png",
        help="loss-versus-time PNG: Adam's (cold and warm) and JIIO's curves (default "
        "bench_latent.png; '' for none)",
    )
    lat.set_defaults(bench_run=run_latent, command_prog=lat.prog)


def run(args: argparse.Namespace) -> int:
    """Run the chosen benchmark and print its tables (or its JSON object) on stdout."""
    out = args.bench_run(args)
    if args.json:
        print(json.dumps(json_safe(out), allow_nan=False))
    else:
        print(render(out))
    return 0
