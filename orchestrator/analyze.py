"""Analyse a sweep's Parquet results: a ranked table, the paper baseline, plots.

``jiio analyze PATH [--name NAME] [--out DIR] [--json]`` reads ``trials/``, ``steps/``,
``traces/`` (and ``pareto/`` for multi-objective sweeps) under the storage root ``PATH``
and prints, per sweep: trial counts by status, the best trials by the sweep's objective
with their hyperparameters and wall time, and how the best compares with the paper
code's configuration (the enqueued first trial). It writes PNG plots to ``--out``:
objective against each searched hyperparameter, search progress (best so far), solver
convergence traces of the best and paper trials, and the Pareto front.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import pandas as pd

from orchestrator.results import ResultStore

__all__ = ["plot_sweep", "summarize", "summary_text"]


def _objectives(store: ResultStore, sweep: str, trials: pd.DataFrame) -> tuple[list[str], list[str], dict]:
    meta = store.meta(sweep) or {}
    metrics, modes = meta.get("metrics"), meta.get("modes")
    if not metrics:  # no metadata: guess from the columns a task reports
        for name in ("robust_acc", "test_psnr_median", "test_psnr", "inner_objective"):
            if name in trials.columns:
                metrics, modes = [name], ["min" if name == "inner_objective" else "max"]
                break
    return list(metrics or []), list(modes or []), meta


def summarize(store: ResultStore, sweep: str, top: int = 5) -> dict[str, Any]:
    """Counts, best trials and the paper baseline of one sweep, as plain data."""
    trials = store.read("trials", sweep)
    metrics, modes, meta = _objectives(store, sweep, trials)
    out: dict[str, Any] = {
        "sweep": sweep,
        "trials": len(trials),
        "requested": meta.get("trials"),
        "status": trials["status"].value_counts().to_dict() if len(trials) else {},
        "metrics": metrics,
        "modes": modes,
    }
    if not len(trials) or not metrics:
        return out
    space = list(meta.get("space", {})) or [c for c in ("alpha_z", "alpha_mu", "alpha_x") if c in trials]
    main, mode = metrics[0], modes[0]
    ok = trials[trials["status"] == "completed"].dropna(subset=[main])
    ranked = ok.sort_values(main, ascending=(mode == "min"))
    cols = ["trial_id", *metrics, *space, "wall_s"]
    out["best"] = [{c: _plain(r.get(c)) for c in cols if c in r} for _, r in ranked.head(top).iterrows()]
    paper_ids = set(meta.get("paper_trial_ids", []))
    paper = trials[trials["trial_id"].isin(paper_ids)]
    if len(paper):
        p = paper.iloc[0]
        out["paper"] = {
            c: _plain(p.get(c)) for c in ["trial_id", "status", *metrics, *space, "wall_s"] if c in p
        }
        if len(ranked) and p["status"] == "completed" and not pd.isna(p.get(main)):
            best = float(ranked.iloc[0][main])
            out["best_minus_paper"] = best - float(p[main]) if mode == "max" else float(p[main]) - best
    if len(metrics) > 1:
        front = store.read("pareto", sweep)
        out["pareto"] = [{c: _plain(v) for c, v in r.items() if c != "sweep"} for _, r in front.iterrows()]
    return out


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def summary_text(s: dict[str, Any]) -> str:
    lines = [
        f"sweep {s['sweep']}: {s['trials']} trials"
        + (f" of {s['requested']}" if s.get("requested") else "")
        + " ("
        + ", ".join(f"{k} {v}" for k, v in sorted(s["status"].items()))
        + ")"
    ]
    if s.get("metrics"):
        lines.append(
            "objective: " + ", ".join(f"{m} ({mo})" for m, mo in zip(s["metrics"], s["modes"], strict=True))
        )
    for title, rows in (
        ("best trials", s.get("best", [])),
        ("paper configuration", [s["paper"]] if "paper" in s else []),
        ("pareto front", s.get("pareto", [])),
    ):
        if not rows:
            continue
        cols = list(rows[0])
        lines += ["", title + ":", "  " + "  ".join(f"{c:>14s}" for c in cols)]
        lines += ["  " + "  ".join(_fmt(r.get(c)) for c in cols) for r in rows]
    if "best_minus_paper" in s:
        lines += [
            "",
            f"best beats the paper configuration by {s['best_minus_paper']:+.4g} ({s['metrics'][0]})",
        ]
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:14.4g}"
    return f"{v!s:>14s}"


def plot_sweep(store: ResultStore, sweep: str, out_dir: str) -> list[str]:
    """Write the sweep's PNG plots into ``out_dir``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials = store.read("trials", sweep)
    metrics, modes, meta = _objectives(store, sweep, trials)
    os.makedirs(out_dir, exist_ok=True)
    paths: list[str] = []
    if not len(trials) or not metrics:
        return paths
    main, mode = metrics[0], modes[0]
    space = meta.get("space", {}) or {
        c: {"kind": "uniform"} for c in ("alpha_z", "alpha_mu", "alpha_x") if c in trials
    }
    colors = {"completed": "tab:blue", "diverged": "tab:red", "pruned": "tab:gray", "error": "black"}
    if space:
        fig, axes = plt.subplots(1, len(space), figsize=(4 * len(space), 3.4), squeeze=False)
        for ax, (name, dim) in zip(axes[0], space.items(), strict=True):
            for status, grp in trials.groupby("status"):
                if name in grp and main in grp:
                    ax.scatter(grp[name], grp[main], s=18, c=colors.get(status, "tab:green"), label=status)
            if dim.get("kind") == "loguniform":
                ax.set_xscale("log")
            ax.set_xlabel(name)
            ax.set_ylabel(main)
        axes[0][0].legend(fontsize=7)
        fig.suptitle(f"{sweep}: {main} against each hyperparameter")
        fig.tight_layout()
        paths.append(_save(fig, out_dir, f"{sweep}-params.png"))
    order = trials.sort_values("wall_s" if "wall_s" in trials else "trial_id").reset_index(drop=True)
    vals = pd.to_numeric(order[main], errors="coerce")
    best = vals.cummax() if mode == "max" else vals.cummin()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.plot(range(1, len(vals) + 1), vals, "o", ms=4, label="trial")
    ax.plot(range(1, len(best) + 1), best, "-", label="best so far")
    ax.set_xlabel("trial (by finish order)")
    ax.set_ylabel(main)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(_save(fig, out_dir, f"{sweep}-progress.png"))
    traces = store.read("traces", sweep)
    if len(traces):
        ok = trials[trials["status"] == "completed"].dropna(subset=[main])
        pick = {"paper": next(iter(meta.get("paper_trial_ids", [])), None)}
        if len(ok):
            pick["best"] = ok.sort_values(main, ascending=(mode == "min")).iloc[0]["trial_id"]
        fig, ax = plt.subplots(figsize=(5, 3.4))
        for label, tid in pick.items():
            t = traces[traces["trial_id"] == tid]
            if len(t):
                last = t[t["step"] == t["step"].max()]
                ax.semilogy(last["iteration"], last["residual"], label=f"{label} ({tid})")
        ax.set_xlabel("JIIO iteration")
        ax.set_ylabel("relative residual")
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(_save(fig, out_dir, f"{sweep}-traces.png"))
    if len(metrics) > 1:
        fig, ax = plt.subplots(figsize=(5, 3.4))
        done = trials[trials["status"] == "completed"]
        ax.scatter(done[metrics[1]], done[metrics[0]], s=14, label="trials")
        front = store.read("pareto", sweep).sort_values(metrics[1])
        ax.plot(front[metrics[1]], front[metrics[0]], "r-o", ms=4, label="Pareto front")
        ax.set_xlabel(metrics[1])
        ax.set_ylabel(metrics[0])
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(_save(fig, out_dir, f"{sweep}-pareto.png"))
    return paths


def _save(fig, out_dir: str, name: str) -> str:
    import matplotlib.pyplot as plt

    path = os.path.join(out_dir, name)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(path: str, name: str | None, out: str | None, as_json: bool, plots: bool = True) -> int:
    """The ``jiio analyze`` command; returns an exit code."""
    store = ResultStore(path)
    sweeps = [name] if name else store.sweeps("trials")
    if not sweeps or (name and not store.keys("trials", name)):
        have = ", ".join(store.sweeps("trials")) or "none"
        raise FileNotFoundError(f"no results for sweep {name or '(any)'} under {path} (sweeps there: {have})")
    summaries = []
    for sweep in sweeps:
        s = summarize(store, sweep)
        if plots:
            s["plots"] = plot_sweep(store, sweep, out or os.path.join("analysis", sweep))
        summaries.append(s)
    if as_json:
        print(json.dumps(summaries if len(summaries) > 1 else summaries[0], default=str))
    else:
        for s in summaries:
            print(summary_text(s))
            for p in s.get("plots", []):
                print(f"plot: {p}")
            print()
    return 0
