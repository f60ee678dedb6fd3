"""``jiio confirm``: re-run a sweep's best configurations and the paper's with several seeds.

A sweep ranks its trials by one evaluation each, with one training seed; the best of many
noisy trials is biased upwards (the winner's curse), and its intervals cover evaluation
noise only. Confirmation re-runs the top ``K`` completed configurations and the paper's
configuration (added when it is not among them: every verdict is paired against it) with
``S`` new seeds each, as a follow-up sweep ``NAME-confirm`` in the same storage (its own
rows, resumable like any sweep: the seed is its one searched dimension, every point is
enqueued; ``meta/sweep=NAME-confirm/confirm.json`` names the sweep it confirms). Then it
reports per configuration (:func:`summarize`, a pure function of the two sweeps' rows):
its trial id in the sweep and its labels (paper, the sweep's best, its rank), its mean
over the new seeds with a 95% t interval over seeds, the difference against the paper's
configuration paired by seed with its interval and a verdict ("beats the paper's
settings", "cannot be told apart", "worse than the paper's settings"), the variance
components (training noise between seeds, evaluation noise within one) and the selection
optimism (the sweep's value minus the confirmed mean, with its interval). The same as JSON
with ``--json``, and in the confirm sweep's HTML report
(``<storage>/analysis/NAME-confirm/``). ``docs/statistics.md`` says what the intervals mean.

    jiio confirm results --name alpha-adversarial-digits --top 3 --seeds 3
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

from orchestrator.analysis.seed_text import confirm_text
from orchestrator.analysis.seeds import confirm_summary
from orchestrator.analysis.text_layout import console_width
from orchestrator.driver.hints import jiio
from orchestrator.driver.search import Dim
from orchestrator.driver.sweep import SweepConfig, run_sweep
from orchestrator.storage import ResultStore, layout

__all__ = ["add_arguments", "plan_confirm", "report", "run", "summarize"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="storage root of the sweep: a directory, s3://... or gs://...")
    p.add_argument("--name", required=True, help="the sweep to confirm")
    p.add_argument("--top", type=int, default=3, help="how many of its best configurations (default 3)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per configuration (default 3)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted confirmation")
    p.add_argument("--max-concurrent", type=int, default=None)
    p.add_argument("--address", default=None, help="Ray address (default: a running cluster, else local)")
    p.add_argument("--json", action="store_true", help="print the confirmation as JSON")
    p.add_argument("--out", default=None, help="where the HTML report goes (default: beside the results)")
    p.add_argument("--no-report", action="store_true", help="write no HTML report")


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
        where = layout.relative(store.base, store.meta_path(name))
        raise ValueError(f"no sweep {name!r} under {store.root} (its {where} is missing)")
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


#: The confirmation from the two sweeps' rows; pure (no storage, no Ray). The math lives in
#: the analysis: :func:`orchestrator.analysis.seeds.confirm_summary`.
summarize = confirm_summary


def report(path: str, name: str, as_json: bool = False, out: str | None = None, html: bool = True) -> int:
    """Print the confirmation of sweep ``name`` (the rows of ``name`` and ``name-confirm``
    under ``path``) and write its HTML report; returns 0, or 1 when nothing is confirmed yet."""
    from orchestrator.analysis.command import open_source, out_dir
    from orchestrator.analysis.report import write_html
    from orchestrator.analysis.summary import summarize as summarize_sweep

    src = open_source(path)
    sweep = f"{name}-confirm"
    s = summarize_sweep(src, sweep)
    c = s.get("confirm")
    if not c or not c.get("configs"):
        why = "; ".join(s.get("notes", [])) or "no trial row yet"
        print(f"nothing confirmed yet in sweep {sweep}: {why}", file=sys.stderr)
        return 1
    if html:
        target = os.path.join(out_dir(src, sweep, out), f"{sweep}-report.html")
        try:
            c["report"] = s["report"] = write_html(s, target, path)
        except OSError as exc:
            c["notes"].append(f"could not write the report {target} ({exc}); pass --out DIR")
    if as_json:
        print(json.dumps(_plain(c), default=str))
    else:
        print(confirm_text(c, console_width()))
        if c.get("report"):
            print(f"report: {c['report']}")
    return 0


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
            f"{jiio()} confirm {args.path} --name {args.name} --top {args.top} --seeds {args.seeds} --resume"
        ),
    )
    n = len(points) // args.seeds
    trials = store.read("trials", args.name)
    metric = meta["metrics"][0]
    done = (trials["status"] == "completed") & trials[metric].notna() if metric in trials else []
    best = min(args.top, int(sum(done)))
    print(
        f"confirming {n} configurations of {args.name} with {args.seeds} seeds each as sweep {cfg.name}"
        + (
            f": the top {best} and the paper's, added as the reference every verdict is paired against"
            if n > best
            else ""
        )
    )
    if args.resume or not store.meta(cfg.name):
        side = {"parent": args.name, "top": args.top, "seeds": args.seeds}
        store.write_meta(cfg.name, json.dumps(side).encode(), name="confirm.json")
    outcome = run_sweep(cfg)
    print()
    code = report(args.path, args.name, args.json, args.out, not args.no_report)
    return 1 if outcome.interrupted or code else 0


def _plain(v: Any) -> Any:
    """JSON-ready: non-finite floats as null, numpy scalars as Python ones."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return _native(v)


def _native(v: Any) -> Any:
    v = v.item() if hasattr(v, "item") else v
    return None if isinstance(v, float) and math.isnan(v) else v


if __name__ == "__main__":  # python -m orchestrator.commands.confirm PATH --name NAME
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    try:
        sys.exit(run(parser.parse_args()))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
