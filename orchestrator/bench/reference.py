"""The solver sweep's baseline reference: the baselines of ``jiio bench attack`` (the paper's
cold PGD and the strong warm ones at every step size of the grid, :mod:`orchestrator.bench.strong`)
run once, before the sweep, on the very batches every trial solves, scored by the sweep's
own measure (``inner_objective``: the mean of ``-CE``, lower is a stronger attack).

``sweeps/solver.py`` writes it beside the sweep (``<storage>/baselines/<name>.json``); for a
trial's ``(inner_objective, solve_s)``, :func:`fastest_to` names the baseline that reaches
the same strength soonest and its time: the sweep's own, interval-free estimate of JIIO's
speed ratio against the best baseline. ``benchmarks/solver_front.py`` prints it beside the
bench's re-measurement (paired, with intervals) of the front against the same baselines.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch
import torch.nn.functional as F

from jiio_core import pgd_attack, pgd_attack_warm
from orchestrator.bench.strong import (
    DEFAULT_BASELINES,
    StepClock,
    baseline_label,
    parse_baselines,
    warm_settings,
)
from orchestrator.bench.timing import CallClock

__all__ = ["DEFAULT_STEP_SIZES", "baseline_reference", "fastest_to", "reference_path"]

DEFAULT_STEP_SIZES = (0.3, 0.6, 1.2)


def reference_path(storage: str, name: str) -> str:
    """Where a sweep's reference lives: ``<storage>/baselines/<name>.json``."""
    return f"{storage.rstrip('/')}/baselines/{name}.json"


def baseline_reference(
    trainer: Any,
    baselines: str = DEFAULT_BASELINES,
    step_sizes: tuple[float, ...] = DEFAULT_STEP_SIZES,
    warm_tol: float = 1e-3,
    warm_max_iter: int = 18,
    steps: int | None = None,
) -> dict[str, Any]:
    """Every baseline on ``trainer.eval_batches("test")`` (adversarial task, modules loaded):
    per step, the mean ``-CE`` at the iterate (re-scored by the trainer's plain DEQ) and the
    time at which it existed, summed over the batches as a trial's ``solve_s`` is; ``steps``
    PGD steps (default the trainer's ``pgd_steps``)."""
    cfg = trainer.config
    if cfg.task != "adversarial":
        raise ValueError(f"the baseline reference covers the adversarial task, not {cfg.task!r}")
    ns = argparse.Namespace(warm_tol=warm_tol, warm_max_iter=warm_max_iter)
    K, eps = steps or cfg.pgd_steps, cfg.eps
    runs: dict[str, Any] = {baseline_label("pgd", None, cfg.pgd_step_size, "s"): (None, cfg.pgd_step_size)}
    for k in parse_baselines(baselines):
        for a in step_sizes:
            runs[baseline_label("pgd", k, a, "s")] = (k, a)
    batches = list(trainer.eval_batches("test"))
    out: dict[str, Any] = {}
    for label, (k, a) in runs.items():
        seconds, objective, n = [0.0] * (K + 1), [0.0] * (K + 1), 0
        for x, y in batches:
            if k is None:
                clock = CallClock(trainer.logits, trainer.device)
                clock.reset()
                pgd_attack(clock, x, y, eps=eps, step_size=a, steps=K)
                times, inputs = clock.starts, clock.inputs
            else:
                step_clock = StepClock(trainer.device)
                step_clock.start(x)
                pgd_attack_warm(
                    trainer.cell,
                    trainer.head,
                    x,
                    y,
                    eps=eps,
                    step_size=a,
                    steps=K,
                    settings=warm_settings(k, ns),
                    callback=step_clock,
                )
                times, inputs = step_clock.times, step_clock.inputs
            with torch.no_grad():
                for i in range(K + 1):
                    seconds[i] += times[i]
                    objective[i] -= float(F.cross_entropy(trainer.logits(inputs[i]), y, reduction="sum"))
            n += len(y)
        out[label] = {
            "backward_iters": k,
            "step_size": a,
            "seconds": seconds,
            "inner_objective": [v / n for v in objective],
        }
    return {
        "measure": "inner_objective: mean -CE at the iterate, by the trainer's plain DEQ (lower: stronger)",
        "time": "seconds at which iterate k existed, summed over the batches (as a trial's solve_s)",
        "pgd_steps": K,
        "eps": eps,
        "samples": sum(len(y) for _, y in batches),
        "warm": {
            "tol": warm_tol,
            "max_iter": warm_max_iter,
            "baselines": baselines,
            "step_sizes": list(step_sizes),
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "baselines": out,
    }


def fastest_to(reference: dict[str, Any], inner_objective: float) -> dict[str, Any] | None:
    """The baseline that first reaches a mean ``inner_objective`` at least as strong (<=) as
    the given one, soonest in time: ``{"baseline", "step", "seconds"}``; None if none does.

    Example:
        >>> ref = {"baselines": {"a": {"seconds": [0, 1, 2], "inner_objective": [-1, -2, -3]},
        ...                      "b": {"seconds": [0, 3, 4], "inner_objective": [-1, -3, -3]}}}
        >>> fastest_to(ref, -2.5)
        {'baseline': 'a', 'step': 2, 'seconds': 2}
    """
    best = None
    for label, b in reference["baselines"].items():
        for k, (t, v) in enumerate(zip(b["seconds"], b["inner_objective"], strict=True)):
            if v <= inner_objective:
                if best is None or t < best["seconds"]:
                    best = {"baseline": label, "step": k, "seconds": t}
                break
    return best


def dumps(reference: dict[str, Any]) -> bytes:
    return json.dumps(reference, allow_nan=False).encode()
