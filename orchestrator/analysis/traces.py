"""Plots of a few trials' step rows and solver traces: the objective over training, and the
convergence of the best, median and paper configurations (residual against iteration; the
inner objective against wall time, as the paper's Fig. 3).

Only the picked trials' files are opened (:meth:`Source.rows` selects them by name), with
only the columns drawn: a sweep of millions of trace rows costs a few files here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.analysis.engine import Source
from orchestrator.analysis.figures import legend_outside, pyplot
from orchestrator.analysis.figures import save as save_figure
from orchestrator.analysis.sweep_rows import numeric

__all__ = ["last_traces", "plot_curves", "plot_traces"]

#: writes a figure into a folder under a name and returns its path (:func:`figures.save`)
SaveFigure = Callable[[Any, str, str], str]

_STYLE = {"best": ("tab:green", "-"), "median": ("tab:orange", "--"), "paper": ("tab:purple", "-.")}


def _labels(pick: dict[str, str]) -> dict[str, str]:
    """trial id -> "best / paper (id)" (one trial can be several picks)."""
    out: dict[str, list[str]] = {}
    for label, tid in pick.items():
        if tid is not None:
            out.setdefault(str(tid), []).append(label)
    return {tid: " / ".join(ls) for tid, ls in out.items()}


def plot_curves(
    src: Source, sweep: str, main: str, pick: dict[str, str], out_dir: str, save: SaveFigure = save_figure
) -> str | None:
    """``main`` at each evaluation over training steps, for the picked trials; ``save`` writes
    the figure (:func:`~orchestrator.analysis.plots.plot_all` passes its own)."""
    labels = _labels(pick)
    if not labels:
        return None
    steps = src.rows("steps", sweep, labels, ["phase", main])
    if not {"trial_id", "step", main} <= set(steps.columns):
        return None
    steps = steps.assign(**{main: numeric(steps[main])})
    steps = steps[np.isfinite(steps[main].to_numpy())]
    if "phase" in steps and steps["phase"].isin(["eval", "solve"]).any():
        steps = steps[steps["phase"].isin(["eval", "solve"])]
    if not len(steps):
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for tid, label in labels.items():
        grp = steps[steps["trial_id"].astype(str) == tid].sort_values("step")
        if len(grp):
            color, ls = _STYLE.get(label.split(" / ")[0], ("tab:blue", "-"))
            ax.plot(grp["step"], grp[main], ls, marker="o", ms=3, color=color, label=f"{label} ({tid})")
    ax.set_xlabel("step")
    ax.set_ylabel(main)
    legend_outside(ax, fontsize=7)
    ax.set_title(f"{sweep}: {main} at each evaluation", fontsize=9)
    fig.tight_layout()
    return save(fig, out_dir, f"{sweep}-curves.png")


def last_traces(src: Source, sweep: str, trial_ids: list[str]) -> dict[str, pd.DataFrame]:
    """Per trial: the trace of its last traced step (iteration, residual, objective), with
    ``time_s``: the step's ``solve_s`` spread evenly over its iterations (NaN if unknown)."""
    traces = src.rows("traces", sweep, trial_ids, ["residual", "objective"])
    if not {"trial_id", "step", "iteration", "residual"} <= set(traces.columns):
        return {}
    steps = src.rows("steps", sweep, trial_ids, ["solve_s"])
    out = {}
    for tid in trial_ids:
        t = traces[traces["trial_id"].astype(str) == tid]
        if not len(t):
            continue
        step = t["step"].max()
        t = t[t["step"] == step].sort_values("iteration")
        seconds = np.nan
        if "solve_s" in steps:
            s = steps[(steps["trial_id"].astype(str) == tid) & (steps["step"] == step)]
            if "phase" in s and (s["phase"] != "eval").any():  # the step that ran the traced solve
                s = s[s["phase"] != "eval"]
            vals = numeric(s["solve_s"]).dropna() if len(s) else pd.Series(dtype=float)
            seconds = float(vals.iloc[-1]) if len(vals) else np.nan
        iters = numeric(t["iteration"]).to_numpy()
        out[tid] = t.assign(time_s=seconds * iters / max(iters.max(), 1))
    return out


def plot_traces(
    src: Source, sweep: str, pick: dict[str, str], out_dir: str, save: SaveFigure = save_figure
) -> str | None:
    """Residual against iteration and objective against wall time of the picked trials;
    ``save`` writes the figure (:func:`~orchestrator.analysis.plots.plot_all` passes its own)."""
    from matplotlib.ticker import MaxNLocator

    labels = _labels(pick)
    found = last_traces(src, sweep, list(labels)) if labels else {}
    if not found:
        return None
    plt = pyplot()
    has_obj = any("objective" in t and numeric(t["objective"]).notna().any() for t in found.values())
    fig, axes = plt.subplots(
        1, 2 if has_obj else 1, figsize=(10 if has_obj else 5.5, 4.2), squeeze=False, layout="constrained"
    )
    timed = all(np.isfinite(t["time_s"]).all() for t in found.values())
    for tid, t in found.items():
        label = labels[tid]
        color, ls = _STYLE.get(label.split(" / ")[0], ("tab:blue", "-"))
        name = f"{label} ({tid}, step {int(t['step'].iloc[0])})"
        res = numeric(t["residual"]).to_numpy()
        axes[0][0].semilogy(t["iteration"], np.where(res > 0, res, np.nan), ls, color=color, label=name)
        if has_obj and "objective" in t:
            x = t["time_s"] * 1000 if timed else t["iteration"]
            axes[0][1].plot(x, numeric(t["objective"]), ls, color=color, label=name)
    axes[0][0].set_xlabel("JIIO iteration")
    axes[0][0].set_ylabel("relative residual")
    axes[0][0].xaxis.set_major_locator(MaxNLocator(integer=True))  # iterations are whole
    axes[0][0].set_title("convergence (last traced step)", fontsize=9)
    if has_obj:
        ax = axes[0][1]
        ax.set_xlabel(
            "wall time, ms (step's solve_s spread evenly over iterations)" if timed else "JIIO iteration"
        )
        ax.set_ylabel("inner objective (minimised)")
        ax.set_title(
            "objective against time" if timed else "objective (no solve_s: against iteration)", fontsize=9
        )
        if not timed:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    # one legend for both panels, below them: it covers no curve
    fig.legend(*axes[0][0].get_legend_handles_labels(), fontsize=7, loc="outside lower center")
    fig.suptitle(f"{sweep}: best, median and paper configurations", fontsize=10)
    return save(fig, out_dir, f"{sweep}-traces.png")
