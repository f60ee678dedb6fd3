"""What one sweep trial costs: training steps and the evaluation's attacks, timed, extrapolated.

A trial of ``sweeps/alpha.py`` trains ``epochs`` epochs of ``steps_per_epoch`` steps and then
evaluates on the held-out split: clean accuracy, PGD-k and JIIO-n attacks on every batch
(``eval_attack`` in its row states k and n). This script times those pieces on images of a
dataset's shape (random pixels and labels: the cost depends on shapes, not on content),
so it needs no dataset files, and extrapolates to a whole trial on that dataset:

    trial_s = epochs * steps_per_epoch * train_step_s + eval_batches * (pgd_batch_s + jiio_batch_s)

Each piece is the median of ``--reps`` timed runs after one warm-up, on ``--threads``
threads (a sweep trial gets one CPU, ``--cpus-per-trial`` 1, hence one thread).

    python benchmarks/trial_cost.py --size paper --dataset mnist --json
    python benchmarks/trial_cost.py --size paper --dataset mnist --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from torch.utils.data import TensorDataset

from orchestrator.data import DatasetSplits
from orchestrator.tasks import TaskConfig
from orchestrator.tasks.adversarial import AdversarialTrainer

# (channels, image size, train split, test split) of each dataset as the loaders give it.
SHAPES = {"digits": (1, 16, 1078, 360), "mnist": (1, 28, 55000, 10000), "cifar10": (3, 32, 45000, 10000)}


def _splits(dataset: str, n: int) -> DatasetSplits:
    c, s, _, _ = SHAPES[dataset]
    gen = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.rand(n, c, s, s, generator=gen), torch.randint(0, 10, (n,), generator=gen))
    return DatasetSplits(ds, ds, ds, 10, c, s, f"{dataset}-shaped")


def _median_s(fn, reps: int, device: str) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    cfg = TaskConfig(
        task="adversarial",
        mode=args.mode,
        model_size=args.size,
        batch_size=args.batch,
        eval_batches=1,
        device=args.device,
        **({"epochs": args.epochs} if args.epochs else {}),
    )
    trainer = AdversarialTrainer(cfg, _splits(args.dataset, 2 * args.batch))
    x, y = next(iter(trainer.eval_batches("train")))
    step_s = _median_s(lambda: trainer.train_step(x, y), args.reps, args.device)
    trainer.deq.eval()
    pgd_s = _median_s(lambda: trainer.attack_pgd(x, y, cfg.eval_pgd_steps), args.reps, args.device)

    def jiio() -> None:
        with torch.no_grad():
            trainer.attack_jiio(x, y, cfg.eval_jiio_max_iter)

    jiio_s = _median_s(jiio, args.reps, args.device)
    _, _, n_train, n_test = SHAPES[args.dataset]
    steps = -(-n_train // args.batch)
    batches = -(-n_test // args.batch)
    train_total = cfg.epochs * steps * step_s
    eval_total = batches * (pgd_s + jiio_s)
    return {
        "dataset": args.dataset,
        "model_size": args.size,
        "mode": args.mode,
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "eval_attack": trainer.eval_attack(),
        "train_step_s": step_s,
        "pgd_batch_s": pgd_s,
        "jiio_batch_s": jiio_s,
        "epochs": cfg.epochs,
        "steps_per_epoch": steps,
        "eval_batches": batches,
        "train_s": train_total,
        "eval_s": eval_total,
        "trial_s": train_total + eval_total,
        "reps": args.reps,
        "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=("tiny", "paper"), default="paper")
    p.add_argument("--dataset", choices=tuple(SHAPES), default="mnist")
    p.add_argument("--mode", choices=("clean", "pgd", "jiio"), default="jiio")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--epochs", type=int, default=None, help="default: TaskConfig's, as a paper-size trial")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.batch < 1 or args.reps < 1 or args.threads < 1:
        p.error("--batch, --reps and --threads must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    torch.set_num_threads(args.threads)
    out = measure(args)
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(
        f"{out['dataset']}, {out['model_size']} MDEQ, mode {out['mode']}, {out['device']}, "
        f"{out['threads']} thread(s), batch {out['batch']}; evaluation: {out['eval_attack']}"
    )
    print(
        f"  train step {out['train_step_s']:.3f} s; per eval batch PGD {out['pgd_batch_s']:.3f} s, "
        f"JIIO {out['jiio_batch_s']:.3f} s (medians of {out['reps']})"
    )
    print(
        f"  one trial: {out['epochs']} x {out['steps_per_epoch']} steps = {out['train_s'] / 3600:.2f} h, "
        f"evaluation {out['eval_batches']} batches = {out['eval_s'] / 3600:.2f} h, "
        f"total {out['trial_s'] / 3600:.2f} h"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
