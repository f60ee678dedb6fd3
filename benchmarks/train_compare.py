"""Adversarial training with JIIO against training with the strong (warm) PGD: robust
accuracy under the strongest attack the project has, against training wall time, over seeds.

The paper's Table 5 says a JIIO-trained classifier is as robust as a PGD-trained one, at a
lower training cost. Its PGD is the cold one (every step a full forward and implicit backward
solve). This script trains, for every seed, one model per mode (``jiio train --task
adversarial --mode MODE``, the same settings as ``jiio train``; ``pgd-warm`` is ``--mode pgd
--set pgd_warm=true --set pgd_warm_backward_iters=K``), in turn, and then attacks each on
the same held-out samples with an ensemble of attacks, every result re-scored by the plain
DEQ (Broyden 18/18): a sample is robust when it is classified correctly under every attack
(per-sample worst case). The ensemble (``--attacks``):

- ``cold``: the paper's PGD-``--eval-pgd-steps`` (step 0.6, full solves every step);
- ``warm``: the strong PGD-``--eval-pgd-steps`` (warm forward, at most 4 warm backward
  iterations, tolerance 1e-3) at each step size of ``--eval-step-sizes``;
- ``jiio``: JIIO-``--eval-jiio-iters`` with the paper's settings from one cell step (as
  ``jiio bench attack``'s JIIO-n rows).

Training time is the sum of the training steps' own clocks (``step_s``: attack, forward,
backward, update), without the per-epoch evaluation (``eval_batches=1`` keeps that short);
the wall time of each whole ``fit`` and its CPU time (``fit_cpu_s``, one thread: the work
done, whatever else the machine runs; it includes the per-epoch evaluation) are recorded
too. Intervals are 95% Student-t over the seeds' values (each seed one model per mode;
``jiio - pgd-warm``: the per-seed differences, and the per-seed time ratios on the log scale). ::

    python benchmarks/train_compare.py --seeds 0,1,2 --epochs 2 --out docs/figures/train-compare.json

Writes one JSON (settings, per-seed results, summaries) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from typing import Any

MODES = {
    "jiio": ["--mode", "jiio"],
    "pgd-warm": ["--mode", "pgd", "--set", "pgd_warm=true"],
    "pgd": ["--mode", "pgd"],
}


def _t_interval(values: list[float]) -> dict[str, float]:
    from orchestrator.bench.measure import mean_interval

    return mean_interval(values)


def train_one(mode: str, seed: int, args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """Train one model as ``jiio train`` would; return the trainer and its costs."""
    import torch

    from orchestrator import cli
    from orchestrator.commands import train as train_cli
    from orchestrator.data import DataConfig, load_dataset
    from orchestrator.tasks.registry import make_trainer

    argv = ["train", "--task", "adversarial", *MODES[mode], "--epochs", str(args.epochs), "--seed", str(seed)]
    if args.max_steps_per_epoch:
        argv += ["--max-steps-per-epoch", str(args.max_steps_per_epoch)]
    argv += ["--set", "eval_batches=1", "--out", "unused.pt"]
    if mode == "pgd-warm":
        argv += ["--set", f"pgd_warm_backward_iters={args.pgd_warm_backward_iters}"]
    ns = cli.build_parser(only="train").parse_args(argv)
    cfg = train_cli._config(ns)
    data = load_dataset(DataConfig(dataset="digits", seed=seed))
    torch.manual_seed(seed)
    trainer = make_trainer(cfg, data)
    rows: list[dict[str, Any]] = []
    t0, c0 = time.perf_counter(), time.process_time()
    result = trainer.fit(rows.append)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    train = [r for r in rows if r.get("phase") == "train"]
    return (
        trainer,
        {
            "mode": mode,
            "seed": seed,
            "status": result.status,
            "steps": len(train),
            "train_s": sum(float(r["step_s"]) for r in train),
            "attack_s": sum(float(r.get("attack_s", r.get("solve_s", 0.0))) for r in train),
            "fit_wall_s": wall,
            "fit_cpu_s": cpu,  # this process's CPU time (one thread): the work, whatever the load
            "final_train_loss": statistics.fmean(float(r["loss"]) for r in train[-5:]),
            "config": {
                k: v for k, v in cfg.to_flat().items() if k.startswith(("pgd", "deq", "max_iter", "epochs"))
            },
        },
    )


def evaluate(trainer: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Clean accuracy and robust accuracy (correct under every attack) on ``--samples``."""
    import torch
    import torch.nn.functional as F

    from jiio_core import DEQ, DEQConfig, JIIOConfig, jiio_solve, l2_ball, pgd_attack, pgd_attack_warm
    from orchestrator.bench.measure import accuracy_interval, margin
    from orchestrator.bench.setup import held_out_batches as _test_batches
    from orchestrator.bench.setup import initial_z as _z0
    from orchestrator.bench.strong import warm_settings

    cell, head = trainer.cell, trainer.head
    for m in (cell, head):
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)
    deq = DEQ(cell, DEQConfig.paper())

    def logits(x: torch.Tensor) -> torch.Tensor:
        return head(deq(x)[0])

    eps, K = trainer.config.eps, args.eval_pgd_steps
    settings = warm_settings(4, argparse.Namespace(warm_tol=1e-3, warm_max_iter=18))
    base = JIIOConfig.paper("mnist_adversarial").replace(max_iter=args.eval_jiio_iters)
    batches = _test_batches(trainer.data, args.samples, 64, 0, torch.device("cpu"))
    correct: dict[str, list[torch.Tensor]] = {"clean": []}
    margins: dict[str, list[torch.Tensor]] = {}
    seconds: dict[str, float] = {}
    for x, y in batches:
        attacks: dict[str, Any] = {}
        if "cold" in args.attacks:
            attacks["pgd-cold"] = lambda x=x, y=y: pgd_attack(logits, x, y, eps=eps, step_size=0.6, steps=K)[
                0
            ]
        if "warm" in args.attacks:
            for a in args.eval_step_sizes:
                attacks[f"pgd-warm-s{a:g}"] = lambda x=x, y=y, a=a: pgd_attack_warm(
                    cell, head, x, y, eps=eps, step_size=a, steps=K, settings=settings
                )[0]
        if "jiio" in args.attacks:

            def jiio(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
                def inner(z: torch.Tensor) -> torch.Tensor:
                    return -F.cross_entropy(head(z), y, reduction="none")

                z0 = _z0(cell, x, "step")
                return jiio_solve(cell, inner, x, z0=z0, config=base, project=l2_ball(x, eps)).x

            attacks[f"jiio-{args.eval_jiio_iters}"] = jiio
        with torch.no_grad():
            correct["clean"].append((logits(x).argmax(1) == y).float())
        for name, attack in attacks.items():
            t0 = time.perf_counter()
            x_adv = attack()
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t0
            assert float((x_adv - x).flatten(1).norm(dim=1).max()) <= eps + 1e-4
            with torch.no_grad():
                out = logits(x_adv)
            correct.setdefault(name, []).append((out.argmax(1) == y).float())
            margins.setdefault(name, []).append(margin(out, y))
    per = {k: torch.cat(v) for k, v in correct.items()}
    names = [k for k in per if k != "clean"]
    robust = torch.stack([per[k] for k in names]).min(dim=0).values if names else per["clean"]
    worst_margin = torch.stack([torch.cat(margins[k]) for k in names]).max(dim=0).values if names else None
    # samples only this attack breaks (correct under every other one): what each adds
    only = {
        k: int(
            (
                (per[k] == 0)
                & torch.stack([per[o] for o in names if o != k] or [per["clean"]]).min(0).values.bool()
            ).sum()
        )
        for k in names
    }
    return {
        "samples": int(robust.numel()),
        "clean_acc": float(per["clean"].mean()),
        "robust_acc": float(robust.mean()),
        "robust_acc_ci": [accuracy_interval(robust)[b] for b in ("low", "high")],
        "acc_by_attack": {k: float(per[k].mean()) for k in names},
        "only_broken_by": only,
        "worst_margin_mean": float(worst_margin.mean()) if worst_margin is not None else None,
        "attack_seconds": seconds,
    }


def _summary(results: list[dict[str, Any]], modes: list[str]) -> dict[str, Any]:
    by = {m: [r for r in results if r["mode"] == m] for m in modes}
    out: dict[str, Any] = {}
    for m, rs in by.items():
        out[m] = {
            key: _t_interval([r[key] for r in rs])
            for key in ("robust_acc", "clean_acc", "train_s", "fit_wall_s", "fit_cpu_s", "worst_margin_mean")
        }
    if len(modes) >= 2:
        a, b = modes[0], modes[1]
        pairs = [
            (ra, rb)
            for ra in by[a]
            for rb in by[b]
            if ra["seed"] == rb["seed"]  # same seed: same data split and evaluation samples
        ]
        out[f"{a} - {b}"] = {
            "robust_acc": _t_interval([ra["robust_acc"] - rb["robust_acc"] for ra, rb in pairs]),
            "clean_acc": _t_interval([ra["clean_acc"] - rb["clean_acc"] for ra, rb in pairs]),
            "train_s_ratio_log": _t_interval([math.log(rb["train_s"] / ra["train_s"]) for ra, rb in pairs]),
            "fit_cpu_s_ratio_log": _t_interval(
                [math.log(rb["fit_cpu_s"] / ra["fit_cpu_s"]) for ra, rb in pairs]
            ),
        }
        for key in ("train_s", "fit_cpu_s"):  # b's time / a's time, geometric mean over seeds
            lg = out[f"{a} - {b}"][f"{key}_ratio_log"]
            out[f"{a} - {b}"][f"{key}_ratio"] = {
                k: math.exp(lg[k]) if math.isfinite(lg[k]) else None for k in ("mean", "low", "high")
            }
    return out


def _numbers(text: str, kind: type) -> list[Any]:
    try:
        return [kind(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=lambda t: _numbers(t, int), default=[0, 1, 2])
    p.add_argument(
        "--modes",
        default="jiio,pgd-warm",
        help="comma-separated: jiio, pgd-warm, pgd (default jiio,pgd-warm)",
    )
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--max-steps-per-epoch", type=int, default=None)
    p.add_argument("--pgd-warm-backward-iters", type=int, default=4)
    p.add_argument(
        "--samples", type=int, default=256, help="held-out samples attacked per model (default 256)"
    )
    p.add_argument(
        "--attacks", default="cold,warm,jiio", help="the evaluation ensemble (default cold,warm,jiio)"
    )
    p.add_argument("--eval-pgd-steps", type=int, default=20)
    p.add_argument("--eval-step-sizes", type=lambda t: _numbers(t, float), default=[0.3, 0.6, 1.2])
    p.add_argument("--eval-jiio-iters", type=int, default=80)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True, help="the JSON file to write")
    args = p.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",")]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        p.error(f"--modes: unknown {bad}; known: {', '.join(MODES)}")
    args.attacks = [a.strip() for a in args.attacks.split(",")]
    if not set(args.attacks) <= {"cold", "warm", "jiio"}:
        p.error(f"--attacks: expected cold, warm, jiio; got {args.attacks}")
    if args.epochs < 1 or not args.seeds:
        p.error("--epochs must be >= 1 and --seeds not empty")
    import torch

    from orchestrator.bench.report import json_safe as _finite

    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()
    results: list[dict[str, Any]] = []

    def write() -> dict[str, Any]:
        """Write the JSON with every model trained so far (after each one: a kill loses at
        most the model in progress)."""
        out = {
            "settings": {
                "seeds": args.seeds,
                "modes": {m: MODES[m] for m in modes},
                "epochs": args.epochs,
                "max_steps_per_epoch": args.max_steps_per_epoch,
                "pgd_warm_backward_iters": args.pgd_warm_backward_iters,
                "samples": args.samples,
                "attacks": args.attacks,
                "eval_pgd_steps": args.eval_pgd_steps,
                "eval_step_sizes": args.eval_step_sizes,
                "eval_jiio_iters": args.eval_jiio_iters,
                "threads": args.threads,
                "torch": torch.__version__,
                "load_average_start": [round(v, 2) for v in load0],
                "load_average_end": [round(v, 2) for v in os.getloadavg()],
            },
            "complete": len(results) == len(args.seeds) * len(modes),
            "results": results,
            "summary": _summary(results, modes),
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        tmp = f"{args.out}.tmp"
        with open(tmp, "w") as fh:
            json.dump(_finite(out), fh, indent=1, allow_nan=False)
        os.replace(tmp, args.out)
        return out

    for seed in args.seeds:
        for mode in modes:  # in turn: drift of the machine's load hits every mode alike
            t0 = time.perf_counter()
            trainer, row = train_one(mode, seed, args)
            row.update(evaluate(trainer, args))
            row["total_s"] = time.perf_counter() - t0
            row["load_average"] = [round(v, 2) for v in os.getloadavg()]
            results.append(row)
            print(
                f"seed {seed} {mode:9s}: train {row['train_s']:.0f} s, CPU {row['fit_cpu_s']:.0f} s "
                f"({row['steps']} steps), clean {row['clean_acc']:.3f}, robust {row['robust_acc']:.3f}, "
                f"by attack {row['acc_by_attack']}, load {row['load_average'][0]}",
                flush=True,
            )
            out = write()
    for key, s in out["summary"].items():
        print(key, json.dumps(s))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
