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

from jiio_core import (
    DEQ,
    JIIOConfig,
    MDEQCell,
    count_parameters,
    jiio_solve,
    l2_ball,
    pgd_attack,
    pgd_attack_warm,
)
from orchestrator.bench.measure import (
    accuracy_interval,
    equal_strength,
    margin,
    mean_interval,
    ratio_interval,
    timing_row,
)
from orchestrator.bench.report import plot_attack
from orchestrator.bench.setup import (
    TRAIN_DEQ,
    BenchInputError,
    Log,
    baseline_deq,
    build_models,
    describe_environment,
    held_out_batches,
    initial_z,
    load_data,
    setup_run,
)
from orchestrator.bench.strong import (
    StepClock,
    baseline_label,
    collect,
    compare_samples,
    warm_description,
    warm_settings,
)
from orchestrator.bench.timing import CallClock, interleave, step_counts, time_call
from orchestrator.bench.variants import jiio_variants
from orchestrator.data import DatasetSplits, make_loader

__all__ = ["run_attack"]


def _train_classifier(
    cell: MDEQCell,
    head: nn.Module,
    splits: DatasetSplits,
    args: argparse.Namespace,
    device: torch.device,
    log: Log,
) -> dict[str, Any]:
    deq = DEQ(cell, TRAIN_DEQ)
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


def _per_sample(model: Callable[[Tensor], Tensor], x_adv: Tensor, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """Correct (0/1), cross-entropy, margin loss (largest other logit minus the true one) and
    perturbation norm per sample, by the plain DEQ."""
    with torch.no_grad():
        logits = model(x_adv)
    return {
        "correct": (logits.argmax(1) == y).float(),
        "ce": F.cross_entropy(logits, y, reduction="none"),
        "margin": margin(logits, y),
        "delta": (x_adv - x).reshape(x.shape[0], -1).norm(dim=1),
    }


def _cat(parts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def _row(method: str, steps: int, label: str, times: list[float], s: dict[str, Tensor]) -> dict[str, Any]:
    acc, mar = accuracy_interval(s["correct"]), mean_interval(s["margin"])
    row = timing_row(method, steps, label, times, s["ce"])
    row.update(
        accuracy=acc["mean"],
        accuracy_ci=[acc["low"], acc["high"]],
        margin=mar["mean"],
        margin_ci=[mar["low"], mar["high"]],
        max_perturbation=float(s["delta"].max()),
    )
    return row


def _versus(
    pgd_times: list[list[float]], curve: list[dict[str, Tensor]], row: dict[str, Any], s: dict[str, Tensor]
) -> dict[str, Any]:
    """One JIIO variant against the PGD run: raw speedup, and the speed ratio at equal
    strength by cross-entropy and by accuracy (paired per sample), with intervals."""
    t_j, K = row["seconds_all"], len(curve) - 1
    return {
        "label": row["label"],
        "speedup": ratio_interval([t[K] for t in pgd_times[: len(t_j)]], t_j),
        "equal_loss": equal_strength(pgd_times, t_j, [p["ce"] for p in curve], s["ce"], True),
        "equal_accuracy": equal_strength(pgd_times, t_j, [p["correct"] for p in curve], s["correct"], False),
    }


def _strong(
    args: argparse.Namespace,
    cold: dict[str, Any],
    runs: dict[str, list[dict[str, Any]]],
    last: dict[str, list[Any]],
    warm: dict[str, tuple[int, float]],
    samples: dict[str, dict[str, Tensor]],
    jiio_rows: dict[str, dict[str, Any]],
    score: Callable[[list[Tensor]], dict[str, Tensor]],
    clean: dict[str, Tensor],
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Every baseline (the cold PGD run and each warm one, every iterate re-scored by the
    plain DEQ) against every JIIO variant by cross-entropy, margin loss and accuracy
    (:func:`orchestrator.bench.strong.compare`); plus one row per baseline at K steps."""
    K = args.pgd_steps
    per = collect(cold, warm, runs, last, K, score, log)
    keys = {"loss": ("ce", True), "margin": ("margin", True), "accuracy": ("correct", False)}
    out = compare_samples(per, samples, {v: r["seconds_all"] for v, r in jiio_rows.items()}, keys, clean)
    rows = [_row("pgd", K, b, [t[K] for t in d["times"]], d["samples"][K]) for b, d in per.items()]
    out["rows"] = [{**r, **d["info"]} for r, d in zip(rows, per.values(), strict=True)]
    return out


def run_attack(args: argparse.Namespace) -> dict[str, Any]:
    """``jiio bench attack``: PGD-K vs JIIO-N (and ``--jiio-config`` variants) on one
    classifier, over ``--samples`` held-out images in batches."""
    device, log = setup_run(args, "attack")
    splits = load_data(args)
    if splits.num_classes < 2:
        raise BenchInputError(f"bench attack needs a labelled dataset; {args.dataset} has no classes")
    cell, head, ckpt, size, _ = build_models(args, splits, "attack")
    batches = held_out_batches(splits, args.samples, args.batch, args.seed, device)  # before any training
    base = JIIOConfig.paper("mnist_adversarial")
    extra = jiio_variants(args.jiio_config, base)
    cell, head = cell.to(device), head.to(device)
    if ckpt:
        log(f"loaded {size} MDEQ classifier from {args.checkpoint}")
        training: dict[str, Any] = {"source": "checkpoint", "path": args.checkpoint, "config": ckpt["config"]}
    else:
        log(f"training a {size} MDEQ classifier on {args.dataset}: {args.train_steps} steps")
        training = {"source": "trained", **_train_classifier(cell, head, splits, args, device, log)}
    cell.eval(), head.eval()
    n_params = count_parameters(cell) + count_parameters(head)
    for p in [*cell.parameters(), *head.parameters()]:
        p.requires_grad_(False)  # attacks need gradients w.r.t. the input only
    deq_cfg = baseline_deq(args)
    deq = DEQ(cell, deq_cfg)

    def model(inp: Tensor) -> Tensor:
        return head(deq(inp)[0])

    clean = _cat([_per_sample(model, x, x, y) for x, y in batches])
    log(
        f"clean accuracy {float(clean['correct'].mean()):.3f} on {args.samples} samples; "
        f"{args.reps} pass(es) over {len(batches)} batches"
    )

    def pgd(k: int) -> Callable[[Tensor, Tensor], dict[str, Any]]:
        clock = CallClock(model, device)

        def go(x: Tensor, y: Tensor) -> dict[str, Any]:
            clock.reset()
            pgd_attack(clock, x, y, eps=args.eps, step_size=args.pgd_step_size, steps=k)
            # call k starts when the k-th iterate exists; the last one (k = K) is pgd_attack's
            # own loss report, not part of the attack, so the attack's time is its start
            return {"seconds": clock.starts[-1], "times": list(clock.starts), "inputs": list(clock.inputs)}

        return go

    def pgd_warm(k_back: int, size: float, steps: int) -> Callable[[Tensor, Tensor], dict[str, Any]]:
        clock, settings = StepClock(device), warm_settings(k_back, args)

        def go(x: Tensor, y: Tensor) -> dict[str, Any]:
            clock.start(x)  # iterate 0 is x itself (no random start)
            _, st = pgd_attack_warm(
                cell, head, x, y, eps=args.eps, step_size=size, steps=steps, settings=settings, callback=clock
            )
            return {
                "seconds": clock.times[-1],
                "times": list(clock.times),
                "inputs": list(clock.inputs),
                "stats": {"forward_iters": st.forward_iters, "backward_iters": st.backward_iters},
            }

        return go

    def jiio(cfg: JIIOConfig, own_start: bool = False) -> Callable[[Tensor, Tensor], dict[str, Any]]:
        # --jiio-z0 sets the start of the JIIO-n rows; a --jiio-config variant starts as its
        # own ``init`` says (jiio_solve's z0=None), as the solver sweep that found it did
        def go(x: Tensor, y: Tensor) -> dict[str, Any]:
            def loss_fn(z: Tensor) -> Tensor:  # JIIO minimises: the negated cross-entropy
                return -F.cross_entropy(head(z), y, reduction="none")

            def solve() -> Any:
                z0 = None if own_start else initial_z(cell, x, args.jiio_z0)
                return jiio_solve(cell, loss_fn, x, z0=z0, config=cfg, project=l2_ball(x, args.eps))

            seconds, res = time_call(solve, device)
            return {"seconds": seconds, "x": res.x, "res": res}

        return go

    # PGD with k < K steps is, step for step, the first k steps of PGD-K (fixed step size,
    # no random start): its rows are read off the PGD-K run (iterate k and the time it
    # existed). JIIO-n is not a prefix of JIIO-N (the alpha_x switch and the best-iterate
    # selection depend on N): each n is its own run.
    K = args.pgd_steps
    configs = {f"jiio-{n}": base.replace(max_iter=n) for n in step_counts(args.jiio_iters)}
    configs.update(extra)
    # the warm baselines (strong.py): every family of --baselines at every step size of the grid
    warm = {baseline_label("pgd", k, a, "s"): (k, a) for k in args.baselines for a in args.step_sizes}
    variants = {
        f"pgd-{K}": pgd(K),
        **{name: pgd_warm(k, a, K) for name, (k, a) in warm.items()},
        **{name: jiio(cfg, name in extra) for name, cfg in configs.items()},
    }
    x_w, y_w = batches[0]
    pgd(1)(x_w, y_w), jiio(base.replace(max_iter=2))(x_w, y_w)  # warm-up: allocator, kernels, lazy init
    for k in args.baselines:
        pgd_warm(k, args.pgd_step_size, 1)(x_w, y_w)
    runs, last = interleave(variants, batches, args.reps, log)
    strong_runs = {name: runs.pop(name) for name in warm}
    strong_last = {name: last.pop(name) for name in warm}

    pgd_times = [run["times"] for run in runs.pop(f"pgd-{K}")]
    pgd_last = last.pop(f"pgd-{K}")
    curve = [
        _cat([_per_sample(model, o["inputs"][k], x, y) for o, (x, y) in zip(pgd_last, batches, strict=True)])
        for k in range(K + 1)
    ]
    rows = [_row("pgd", k, f"pgd-{k}", [t[k] for t in pgd_times], curve[k]) for k in step_counts(K)]
    samples: dict[str, dict[str, Tensor]] = {}
    for name, outs in last.items():
        samples[name] = _cat(
            [_per_sample(model, o["x"], x, y) for o, (x, y) in zip(outs, batches, strict=True)]
        )
        steps = configs[name].max_iter
        row = _row("jiio", steps, name, [run["seconds"] for run in runs[name]], samples[name])
        row["objective"] = statistics.fmean(float(-o["res"].objective.mean()) for o in outs)  # JIIO's own CE
        row["diverged"] = statistics.fmean(float(o["res"].diverged.float().mean()) for o in outs)
        if name in extra:
            row["jiio_config"] = configs[name].to_dict()
        rows.append(row)
    by = {r["label"]: r for r in rows}
    p_main, j_main = by[f"pgd-{K}"], by[f"jiio-{args.jiio_iters}"]
    versus: dict[str, dict[str, Any]] = {
        name: _versus(pgd_times, curve, by[name], samples[name]) for name in samples
    }
    main = versus[f"jiio-{args.jiio_iters}"]
    for name, v in versus.items():  # every JIIO variant against the main one (JIIO-N, the paper's)
        s_main, s_v = samples[f"jiio-{args.jiio_iters}"], samples[name]
        v["vs_main"] = {
            "speed": ratio_interval(j_main["seconds_all"], by[name]["seconds_all"]),  # > 1: faster
            "loss_diff": mean_interval(s_v["ce"] - s_main["ce"]),  # > 0: stronger
            "accuracy_diff": mean_interval(s_v["correct"] - s_main["correct"]),  # < 0: stronger
        }
    cold = {
        "label": baseline_label("pgd", None, args.pgd_step_size, "s"),
        "times": pgd_times,
        "samples": curve,
        "info": {"family": "cold", "backward_iters": None, "step_size": args.pgd_step_size},
    }

    def score(xs: list[Tensor]) -> dict[str, Tensor]:  # one iterate per batch, re-scored
        return _cat([_per_sample(model, xi, x, y) for xi, (x, y) in zip(xs, batches, strict=True)])

    strong = _strong(args, cold, strong_runs, strong_last, warm, samples, by, score, clean, log)
    for name, v in versus.items():
        v["fastest"] = strong["versus"][name]  # against the fastest baseline reaching it
    tol = 1e-5 * max(1.0, args.eps)
    stronger = [r for r in rows if r["method"] == "pgd" and r["loss"] >= j_main["loss"]]
    cheapest = min(stronger, key=lambda r: r["seconds"]) if stronger else None
    reach = main["equal_loss"]["step"]
    p_curve = {
        "seconds": [statistics.median(t[k] for t in pgd_times) for k in range(K + 1)],
        "loss": [float(c["ce"].mean()) for c in curve],
        "loss_ci": [[mean_interval(c["ce"])[b] for b in ("low", "high")] for c in curve],
        "accuracy": [float(c["correct"].mean()) for c in curve],
        "seconds_runs": pgd_times,  # per timing run: when iterate k existed
    }
    out = {
        "bench": "attack",
        **describe_environment(device, args),
        "config": {
            "dataset": args.dataset,
            "size": size,
            "batch": args.batch,
            "samples": args.samples,
            "reps": args.reps,
            "timing_runs": len(j_main["seconds_all"]),
            "eps": args.eps,
            "pgd_steps": K,
            "pgd_step_size": args.pgd_step_size,
            "pgd_normalize": True,
            "step_sizes": args.step_sizes,
            **warm_description(args),
            "jiio_iters": args.jiio_iters,
            "jiio_z0": args.jiio_z0,
            "jiio_configs": list(extra),
            "checkpoint": args.checkpoint,
            "train_steps": None if ckpt else args.train_steps,
            "deq": dataclasses.asdict(deq_cfg),
            "jiio": base.replace(max_iter=args.jiio_iters).to_dict(),
        },
        "model": {
            **training,
            "parameters": n_params,
            "clean_accuracy": float(clean["correct"].mean()),
            "clean_accuracy_ci": [accuracy_interval(clean["correct"])[b] for b in ("low", "high")],
            "clean_loss": float(clean["ce"].mean()),
        },
        "pgd": p_main,
        "jiio": j_main,
        "rows": rows,
        "versus": versus,
        "within_eps": all(r["max_perturbation"] <= args.eps + tol for r in rows + strong["rows"]),
        # the strong baselines (strong.py): every baseline's curve, the strongest per step,
        # every JIIO variant against the fastest baseline reaching it, fixed targets
        "baselines": strong["baselines"],
        "baseline_rows": strong["rows"],
        "best_per_step": strong["best_per_step"],
        "targets": strong["targets"],
        "speed_ratio_vs_fastest_baseline": versus[f"jiio-{args.jiio_iters}"]["fastest"],
        "speedup": p_main["seconds"] / j_main["seconds"],
        "speedup_ci": main["speedup"],
        "equal_or_better_strength": j_main["loss"] >= p_main["loss"]
        or j_main["accuracy"] <= p_main["accuracy"],
        "equal_strength_pgd_steps": cheapest["steps"] if cheapest else None,
        "speed_ratio_at_equal_strength": cheapest["seconds"] / j_main["seconds"] if cheapest else None,
        "speed_ratio_at_equal_strength_lower_bound": None
        if cheapest
        else p_main["seconds"] / j_main["seconds"],
        # the same at the granularity of single PGD steps, paired per sample, with intervals
        "pgd_curve": p_curve,
        "pgd_steps_to_jiio_loss": reach,
        "pgd_seconds_to_jiio_loss": p_curve["seconds"][reach] if reach is not None else None,
        "speed_ratio_at_equal_loss": main["equal_loss"]["ratio"]["ratio"] if reach is not None else None,
        "plot": None,
    }
    if args.plot:
        out["plot"] = plot_attack(args.plot, out)
        log(f"wrote {out['plot']}")
    return out
