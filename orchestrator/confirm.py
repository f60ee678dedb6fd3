"""``jiio confirm``: re-run a sweep's best configurations and the paper's with several seeds.

A sweep ranks its trials by one evaluation each; the best of many noisy trials is biased
upwards (the winner's curse). Confirmation re-runs the top ``K`` completed configurations
and the paper's configuration with ``S`` new seeds each, as a follow-up sweep
``NAME-confirm`` in the same storage (its own rows, resumable like any sweep: the seed is
its one searched dimension, every point is enqueued), then reports per configuration the
mean, the standard deviation and the range over seeds.

    jiio confirm results --name alpha-adversarial-digits --top 3 --seeds 3
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

import pandas as pd

from orchestrator.results import ResultStore
from orchestrator.search import Dim
from orchestrator.sweep import SweepConfig, run_sweep

__all__ = ["add_arguments", "plan_confirm", "run", "summarize"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="storage root of the sweep: a directory, s3://... or gs://...")
    p.add_argument("--name", required=True, help="the sweep to confirm")
    p.add_argument("--top", type=int, default=3, help="how many of its best configurations (default 3)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per configuration (default 3)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted confirmation")
    p.add_argument("--max-concurrent", type=int, default=None)
    p.add_argument("--address", default=None, help="Ray address (default: a running cluster, else local)")


def _dims(space: dict[str, Any]) -> dict[str, Dim]:
    return {k: Dim(d["kind"], d["low"], d["high"], tuple(d.get("choices") or ())) for k, d in space.items()}


def plan_confirm(
    store: ResultStore, name: str, top: int, seeds: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The parent sweep's meta and the points to run: each configuration x each new seed."""
    if top < 1 or seeds < 1:
        raise ValueError(f"--top and --seeds must be >= 1, got {top} and {seeds}")
    meta = store.meta(name)
    if not meta:
        raise ValueError(
            f"no sweep {name!r} under {store.root} (its meta/sweep={name}/sweep.json is missing)"
        )
    trials = store.read("trials", name)
    metric, mode = meta["metrics"][0], meta["modes"][0]
    done = trials[trials["status"] == "completed"].dropna(subset=[metric]) if len(trials) else trials
    if not len(done):
        raise ValueError(f"sweep {name!r} has no completed trial with {metric}: nothing to confirm")
    best = done.sort_values(metric, ascending=mode == "min").head(top)
    searched = list(meta["space"])
    configs = [{k: _native(r[k]) for k in searched} for _, r in best.iterrows()]
    paper_ids = set(meta.get("paper_trial_ids") or [])
    paper = trials[trials["trial_id"].isin(paper_ids)]
    if len(paper):
        point = {k: _native(paper.iloc[0][k]) for k in searched}
        if point not in configs:
            configs.append(point)
    base_seed = int(meta.get("seed", meta.get("fixed", {}).get("seed", 0)) or 0)
    new_seeds = [base_seed + 1000 + i for i in range(seeds)]  # never the sweep's own seed
    return meta, [{**c, "seed": s} for c in configs for s in new_seeds]


def summarize(store: ResultStore, name: str, metric: str, searched: list[str]) -> pd.DataFrame:
    """Mean, standard deviation, range and number of seeds per configuration."""
    t = store.read("trials", name)
    if not len(t):
        return pd.DataFrame()
    ok = t[t["status"] == "completed"]
    groups = ok.groupby(searched, dropna=False)[metric]
    out = groups.agg(["mean", "std", "min", "max", "count"]).reset_index()
    failed = t[t["status"] != "completed"].groupby(searched, dropna=False).size().rename("not_completed")
    out = out.merge(failed.reset_index(), on=searched, how="left").fillna({"not_completed": 0})
    return out.sort_values("mean", ascending=False).reset_index(drop=True)


def run(args: argparse.Namespace) -> int:
    store = ResultStore(args.path)
    meta, points = plan_confirm(store, args.name, args.top, args.seeds)
    space = _dims(meta["space"])
    space["seed"] = Dim("choice", choices=tuple(sorted({p["seed"] for p in points})))
    cfg = SweepConfig(
        name=f"{args.name}-confirm",
        space=space,
        metrics=tuple(meta["metrics"]),
        modes=tuple(meta["modes"]),
        fixed={k: v for k, v in meta["fixed"].items() if k != "seed"},
        data=meta["data"],
        storage=args.path,
        trials=len(points),
        enqueue=tuple(points),
        resume=args.resume,
        scheduler="fifo",
        kind=meta.get("kind", "train"),
        checkpoint=meta.get("checkpoint"),
        max_concurrent=args.max_concurrent,
        address=args.address,
        resume_command=(
            f"jiio confirm {args.path} --name {args.name} --top {args.top} --seeds {args.seeds} --resume"
        ),
    )
    print(
        f"confirming {len(points) // args.seeds} configurations of {args.name} with {args.seeds} seeds each "
        f"as sweep {cfg.name}"
    )
    outcome = run_sweep(cfg)
    metric = meta["metrics"][0]
    table = summarize(store, cfg.name, metric, list(meta["space"]))
    if len(table):
        print(f"\n{metric} over seeds (mean, std, min, max, completed seeds):")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 1 if outcome.interrupted or not len(table) else 0


def _native(v: Any) -> Any:
    v = v.item() if hasattr(v, "item") else v
    return None if isinstance(v, float) and math.isnan(v) else v


if __name__ == "__main__":  # python -m orchestrator.confirm PATH --name NAME
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    try:
        sys.exit(run(parser.parse_args()))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
