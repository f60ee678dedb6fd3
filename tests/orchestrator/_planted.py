"""Small generated sweeps with planted answers, written through ResultStore.write."""

from __future__ import annotations

import json
import math

import numpy as np

from orchestrator.storage import ResultStore

SPACE = {
    "alpha_z": {"kind": "loguniform", "low": 0.2, "high": 1.0, "choices": []},
    "alpha_mu": {"kind": "loguniform", "low": 0.1, "high": 1.0, "choices": []},
    "alpha_x": {"kind": "loguniform", "low": 0.05, "high": 2.0, "choices": []},
}
BEST = {"alpha_z": 0.5, "alpha_mu": 0.3, "alpha_x": 0.4}
PAPER = {"alpha_z": 0.3, "alpha_mu": 0.6, "alpha_x": 0.6}  # outside the divergent region
DIVERGE_Z = 0.7  # planted: every trial with alpha_z above this diverges


def meta(store: ResultStore, sweep: str, **extra) -> None:
    body = {
        "metrics": ["robust_acc"],
        "modes": ["max"],
        "space": SPACE,
        "paper_trial_ids": ["paper"],
        **extra,
    }
    store.put(f"{store.base}/meta/sweep={sweep}/sweep.json", json.dumps(body).encode())


def acc_of(p: dict[str, float]) -> float:
    """The planted objective: alpha_x alone decides it (peak at 0.4), the others do nothing."""
    return round(0.9 - 0.25 * abs(math.log(p["alpha_x"] / 0.4)), 4)


def planted(
    root: str, sweep: str = "s", n: int = 40, eval_n: int | None = 100_000, seed: int = 0
) -> ResultStore:
    """``n`` random trials + ``best`` (the planted best) + ``paper``; trials with alpha_z >
    DIVERGE_Z diverge; steps and traces for ``best`` and ``paper``, in the per-epoch layout."""
    store = ResultStore(root)
    meta(store, sweep, trials=n + 2)
    rng = np.random.default_rng(seed)
    points = {"best": BEST, "paper": PAPER}
    for i in range(n):
        p = {
            k: float(math.exp(rng.uniform(math.log(d["low"]), math.log(d["high"])))) for k, d in SPACE.items()
        }
        p["alpha_x"] = min(p["alpha_x"], 1.5) if abs(math.log(p["alpha_x"] / 0.4)) > 0.05 else 1.5
        points[f"t{i:02d}"] = p
    for tid, p in points.items():
        diverged = p["alpha_z"] > DIVERGE_Z
        row = {"trial_id": tid, "status": "diverged" if diverged else "completed", **p, "wall_s": 10.0}
        if not diverged:
            row["robust_acc"] = acc_of(p) if tid != "best" else 0.95
        if eval_n is not None:
            row["eval_n"] = eval_n
        store.write("trials", sweep, tid, [row])
    for tid in ("best", "paper"):
        for e in (1, 2):
            rows = [
                {
                    "trial_id": tid,
                    "step": 10 * e - 5 + k,
                    "epoch": e - 1,
                    "phase": "train",
                    "loss": 1.0 / e,
                    "solve_s": 0.2,
                }
                for k in range(5)
            ]
            rows.append(
                {
                    "trial_id": tid,
                    "step": 10 * e,
                    "epoch": e - 1,
                    "phase": "eval",
                    "robust_acc": 0.9 if e == 1 else store_acc(points[tid], tid),
                }
            )
            store.write("steps", sweep, f"{tid}-e{e:04d}", rows)
            traces = [
                {
                    "trial_id": tid,
                    "step": 10 * e - 1,
                    "iteration": i,
                    "residual": 0.5**i,
                    "objective": -1.0 - i / 10,
                }
                for i in range(1, 21)
            ]
            store.write("traces", sweep, f"{tid}-e{e:04d}", traces)
    return store


def store_acc(p: dict[str, float], tid: str) -> float:
    return 0.95 if tid == "best" else acc_of(p)


def pair(
    root: str, sweep: str, best: float, paper: float, eval_n: int | None, samples: tuple | None = None
) -> ResultStore:
    """A sweep of four trials: ``best`` and ``paper`` with the given objective values; with
    ``samples`` (per-sample values of best and paper) the objective is ``test_psnr`` and the
    eval step rows carry ``test_psnr_samples``."""
    store = ResultStore(root)
    metric = "test_psnr" if samples else "robust_acc"
    meta(store, sweep, metrics=[metric], trials=4)
    vals = {"best": best, "paper": paper, "x": min(best, paper) - 0.1, "y": min(best, paper) - 0.2}
    for k, (tid, v) in enumerate(vals.items()):
        row = {
            "trial_id": tid,
            "status": "completed",
            "alpha_z": 0.3 + 0.1 * k,
            "alpha_mu": 0.5,
            "alpha_x": 0.1 * (k + 1),
            metric: v,
            "wall_s": 1.0,
        }
        if eval_n is not None:
            row["eval_n"] = eval_n
        store.write("trials", sweep, tid, [row])
    if samples:
        for tid, values in zip(("best", "paper"), samples, strict=True):
            store.write(
                "steps",
                sweep,
                f"{tid}-e0001",
                [
                    {"trial_id": tid, "step": 1, "phase": "train", "loss": 0.5},
                    {
                        "trial_id": tid,
                        "step": 1,
                        "phase": "eval",
                        metric: float(np.mean(values)),
                        f"{metric}_samples": [float(v) for v in values],
                        "eval_n": len(values),
                    },
                ],
            )
    return store
