"""``jiio bench attack``: L2 PGD against JIIO on one MDEQ classifier and one test batch
(see :mod:`orchestrator.bench`)."""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jiio_core import DEQ, JIIOConfig, MDEQCell, count_parameters, jiio_solve, l2_ball, pgd_attack
from orchestrator.bench._common import (
    _TRAIN_DEQ,
    BenchInputError,
    _baseline_deq,
    _build,
    _CallClock,
    _environment,
    _interleave,
    _load_data,
    _Log,
    _setup,
    _steps,
    _test_batch,
    _timed,
    _z0,
)
from orchestrator.data import DatasetSplits, make_loader

__all__ = ["_train_classifier", "run_attack"]


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

    def jiio_cfg(n: int) -> JIIOConfig:  # the alpha_x drop follows n (the paper's rule)
        return base.replace(max_iter=n)

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
