"""Sweep JIIO's damping step sizes (alpha_z, alpha_mu, alpha_x) for a training task.

Every trial trains a model with JIIO as its inner solver and is scored on held-out data
(adversarial: robust accuracy, the worse of PGD and JIIO attacks; generative: PSNR;
inpainting/denoising: median PSNR); wall time is recorded beside it. The paper code's
configuration runs as the first trial, so the sweep shows how far its best beats it.

    python sweeps/alpha.py                      # embedded default: digits, CPU, a few minutes
    python sweeps/alpha.py --task generative --trials 16
    ray submit cluster/gpu.yaml sweeps/alpha.py -- --dataset mnist --data-root ~/data \\
        --trials 64 --storage s3://BUCKET/jiio --name mnist-adv
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

from orchestrator.commands.sweep import SweepSpec, main, task_objective  # noqa: E402
from orchestrator.driver.space import Dim  # noqa: E402


def space(task: str) -> dict[str, Dim]:
    # Adversarial x steps are L2-normalised (units of the eps = 1 ball); generative steps
    # follow the raw gradient of a summed squared error, hence much smaller step sizes.
    x_range = (0.05, 2.0) if task == "adversarial" else (1e-3, 0.3)
    return {
        "alpha_z": Dim("loguniform", 0.2, 1.0),
        "alpha_mu": Dim("loguniform", 0.1, 1.0),
        "alpha_x": Dim("loguniform", *x_range),
    }


def fixed(args: argparse.Namespace) -> dict[str, Any]:
    """The paper code's settings for everything not searched. Its alpha_x drop is a ratio
    (``alpha_x_drop``) at the paper's iteration rule (``alpha_x_switch_iter`` None), so every
    trial drops its own alpha_x the paper's way, and the enqueued first trial is exactly
    ``JIIOConfig.paper(...)`` with this sweep's iteration count and Anderson memory (at the
    CPU default of 20 iterations the paper's rule, drop at max(50, 5T/8) - 1, means no drop).

    Every evaluation covers the whole test split (``eval_batches=None``; each eval row and
    the trial's row record it as ``eval_n``), at every model size; ``--smoke`` evaluates
    one batch."""
    from orchestrator.tasks.jiio_settings import paper_jiio  # jiio_core, torch: once the flags are valid

    paper = paper_jiio(args.task, args.dataset).to_dict()
    out: dict[str, Any] = {k: v for k, v in paper.items() if k not in ("alpha_z", "alpha_mu", "alpha_x")}
    out.update(
        task=args.task,
        mode="jiio",
        seed=args.seed,
        model_size=args.model_size or "tiny",
        trace_every=5,
        eval_batches=None,  # the whole held-out split: metrics with honest error bars
    )
    if args.model_size != "paper":  # CPU-sized defaults: a few minutes for the whole sweep
        out.update(
            epochs=2,
            max_steps_per_epoch=12,
            batch_size=64,
            lr=5e-3,
            max_iter=20,
            anderson_m=10,
            pgd_steps=5,
            pgd_step_size=0.5,
            deq_max_iter=20,
            deq_backward_max_iter=12,
            adam_steps=20,
        )
    if args.smoke:
        out.update(
            epochs=1,
            max_steps_per_epoch=2,
            trace_every=1,
            eval_batches=1,
            max_iter=10,
            pgd_steps=3,
            deq_max_iter=10,
            deq_backward_max_iter=6,
            adam_steps=5,
        )
    if args.epochs is not None:
        out["epochs"] = args.epochs
    return out


def enqueue(args: argparse.Namespace, dims: dict[str, Dim]) -> list[dict[str, Any]]:
    from orchestrator.tasks.jiio_settings import paper_jiio  # jiio_core, torch: once the flags are valid

    paper = paper_jiio(args.task, args.dataset)
    return [{k: getattr(paper, k) for k in dims}]


SPEC = SweepSpec(
    description=__doc__.split("\n\n")[0],
    space=space,
    fixed=fixed,
    objective=task_objective,
    enqueue=enqueue,
    scheduler="asha",
    default_name="alpha",
)

if __name__ == "__main__":
    sys.exit(main(SPEC))
