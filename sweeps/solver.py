"""Sweep the inner solve on a fixed trained model: Anderson memory, iterations and alphas.

Multi-objective: every trial runs JIIO with its settings on the same held-out batches
and reports the final inner objective (adversarial: the negated cross-entropy, lower is
a stronger attack; generative: the summed squared reconstruction error) and the wall
time; Optuna's multi-objective TPE proposes, and the Pareto front is written to
``pareto/sweep=NAME/front.parquet``. The paper code's settings run first.

What the front is compared with (adversarial task): before the first trial, the driver runs
the baselines of ``jiio bench attack`` once on the very batches every trial solves (the
paper's cold PGD and the strong warm ones, jfb / ift-4 / ift-18 at step sizes 0.3 / 0.6 /
1.2; :mod:`orchestrator.bench.reference`) and writes their per-step strength (the trials'
measure, mean -CE) and time to ``<storage>/baselines/<name>.json``; a trial beats the best
baseline when it reaches its ``inner_objective`` sooner than the fastest baseline that gets
there (``orchestrator.bench.reference.fastest_to``). ``benchmarks/solver_front.py`` reports
that beside its paired re-measurement against the same baselines. ``--no-baseline-reference``
and ``--smoke`` skip it.

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
if os.path.isfile(os.path.join(_ROOT, "orchestrator", "cli.py")):
    sys.path.insert(0, _ROOT)

from orchestrator.commands.sweep import SweepSpec, main  # noqa: E402
from orchestrator.driver.sweep import Dim  # noqa: E402


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
    from orchestrator.tasks.jiio_settings import paper_jiio  # jiio_core, torch: once the flags are valid

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
    from orchestrator.tasks.jiio_settings import paper_jiio  # jiio_core, torch: once the flags are valid

    paper = paper_jiio(args.task, args.dataset)
    return [{k: getattr(paper, k) for k in dims}]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint",
        default=None,
        help="a trained Trainer checkpoint (torch.save of state_dict); default: train a small one",
    )
    p.add_argument(
        "--no-baseline-reference",
        action="store_true",
        help="do not run the baselines (cold and warm PGD) once before the sweep (see the module doc)",
    )


def prepare(
    args: argparse.Namespace, fixed_: dict[str, Any], data: dict[str, Any], name: str
) -> dict[str, Any]:
    from orchestrator.driver.fixed_model import ensure_checkpoint  # torch: only once the flags are valid

    checkpoint = ensure_checkpoint(args.checkpoint, args.storage, name, fixed_, data)
    skip = getattr(args, "no_baseline_reference", False) or args.smoke  # a smoke run: plumbing only
    if fixed_.get("task") == "adversarial" and not skip:
        baseline_reference(checkpoint, args.storage, name, fixed_, data)
    return {"checkpoint": checkpoint}


def baseline_reference(
    checkpoint: str, storage: str, name: str, fixed_: dict[str, Any], data: dict[str, Any], **grid: Any
) -> str:
    """Run the baselines once on the trials' batches (CPU, in the driver) and store them at
    ``<storage>/baselines/<name>.json``, unless an earlier run of this sweep did."""
    import io

    import torch

    from orchestrator.bench import reference
    from orchestrator.data import DataConfig, load_dataset
    from orchestrator.storage import ResultStore, read_checkpoint
    from orchestrator.tasks import TaskConfig
    from orchestrator.tasks.registry import make_trainer

    store = ResultStore(storage)
    target = store.baseline_path(name)
    if store.is_file(target):
        return target  # a resumed sweep keeps the reference its trials are compared with
    state = read_checkpoint(checkpoint)
    keys = ("task", "model_size", "eps")
    cfg = TaskConfig.from_flat({**fixed_, "mode": "jiio", "device": "cpu"}).replace(
        **{k: state["config"][k] for k in keys if k in state["config"]}
    )
    trainer = make_trainer(cfg, load_dataset(DataConfig(**data)))
    trainer.load_state_dict(state)
    for m in trainer.modules.values():
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)
    print(
        f"baseline reference for {name}: cold and warm PGD-{grid.get('steps') or cfg.pgd_steps} "
        "on the trials' batches ...",
        flush=True,
    )
    ref = reference.baseline_reference(trainer, **grid)
    ref.update(checkpoint=checkpoint, device="cpu", threads=torch.get_num_threads())
    buf = io.BytesIO(reference.dumps(ref))
    store.put(target, buf.getvalue())
    strongest = min(b["inner_objective"][-1] for b in ref["baselines"].values())
    best = reference.fastest_to(ref, strongest)
    assert best is not None  # the strongest final value is reached, by its own baseline
    print(
        f"baseline reference: strongest -CE {strongest:.4f}, first reached by {best['baseline']} "
        f"at step {best['step']} ({best['seconds']:.1f} s)",
        flush=True,
    )
    return target


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
