"""Sweep the inner solve on a fixed trained model: Anderson memory, iterations and alphas.

Multi-objective: every trial runs JIIO with its settings on the same held-out batches
and reports the final inner objective (adversarial: the negated cross-entropy, lower is
a stronger attack; generative: the summed squared reconstruction error) and the wall
time; Optuna's multi-objective TPE proposes, and the Pareto front is written to
``pareto/sweep=NAME/front.parquet``. The paper code's settings run first.

    python sweeps/solver.py                      # trains a small digits model once, then sweeps
    python sweeps/solver.py --checkpoint model.pt --trials 40
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

# Run from a checkout (python sweeps/alpha.py): import the checkout. Copied elsewhere (ray
# submit puts the script at ~/alpha.py on the head): use the installed package.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isfile(os.path.join(_ROOT, "orchestrator", "sweep.py")):
    sys.path.insert(0, _ROOT)

from orchestrator.solve_trial import ensure_checkpoint  # noqa: E402
from orchestrator.sweep import Dim  # noqa: E402
from orchestrator.sweep_cli import SweepSpec, main, paper_jiio  # noqa: E402


def space(task: str) -> dict[str, Dim]:
    x_range = (0.05, 2.0) if task == "adversarial" else (1e-3, 0.3)
    return {
        "anderson_m": Dim("int", 1, 40),
        "max_iter": Dim("int", 10, 120),
        "alpha_z": Dim("loguniform", 0.2, 1.0),
        "alpha_mu": Dim("loguniform", 0.1, 1.0),
        "alpha_x": Dim("loguniform", *x_range),
        # the start (the paper's z = 0, or one cell step) and the Anderson type (paper: I)
        "init": Dim("choice", choices=("zero", "cell_step")),
        "anderson_type": Dim("choice", choices=("I", "II")),
    }


def fixed(args: argparse.Namespace) -> dict[str, Any]:
    paper = paper_jiio(args.task, args.dataset).to_dict()
    out: dict[str, Any] = {k: v for k, v in paper.items() if k not in space(args.task)}
    out.update(
        task=args.task,
        mode="jiio",
        seed=args.seed,
        model_size=args.model_size or "tiny",
        epochs=args.epochs or 2,
        eval_batches=2,
        batch_size=64,
    )
    # The paper's alpha_x drop stays: a ratio of each trial's alpha_x, at the paper's rule
    # (alpha_x_switch_iter None), which follows the searched max_iter.
    if args.smoke:
        out.update(epochs=1, max_steps_per_epoch=3, eval_batches=1, batch_size=16)
    if args.epochs is not None:  # a flag wins over --smoke, as in sweeps/alpha.py
        out["epochs"] = args.epochs
    return out


def objective(task: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return ("inner_objective", "solve_s"), ("min", "min")


def enqueue(args: argparse.Namespace, dims: dict[str, Dim]) -> list[dict[str, Any]]:
    paper = paper_jiio(args.task, args.dataset)
    return [{k: getattr(paper, k) for k in dims}]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint",
        default=None,
        help="a trained Trainer checkpoint (torch.save of state_dict); default: train a small one",
    )


def prepare(
    args: argparse.Namespace, fixed_: dict[str, Any], data: dict[str, Any], name: str
) -> dict[str, Any]:
    return {"checkpoint": ensure_checkpoint(args.checkpoint, args.storage, name, fixed_, data)}


SPEC = SweepSpec(
    description=__doc__.split("\n\n")[0],
    space=space,
    fixed=fixed,
    objective=objective,
    enqueue=enqueue,
    scheduler="fifo",
    kind="solve",
    default_name="solver",
    add_arguments=add_arguments,
    prepare=prepare,
)

if __name__ == "__main__":
    sys.exit(main(SPEC))
