"""The sweep's PNG plots (headless): objective against each parameter, search progress,
divergence maps, parallel coordinates, parameter importance, the Pareto front, and (from
:mod:`orchestrator.analysis.traces`) the convergence of the best, median and paper trials.

Each plot is left out when its data is missing (no objective, one parameter, no traces).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from orchestrator.analysis.engine import Source
from orchestrator.analysis.figures import COLORS, legend_outside, log_axis, pyplot, save
from orchestrator.analysis.importance import divergence_grid
from orchestrator.analysis.sweep_rows import numeric, status_of
from orchestrator.analysis.traces import plot_curves, plot_traces
from orchestrator.stats import wilson_for

__all__ = ["CAPTIONS", "divergence_pairs", "plot_all"]

# Each plot's title and what to look for in it (the HTML report's heading and caption), by
# the file's suffix: <sweep>-<kind>.png.
CAPTIONS = {
    "divergence": (
        "Where trials diverge",
        "Red cells are step-size regions where most trials diverged: keep the search out of them.",
    ),
    "params": (
        "Objective against each parameter",
        "A parameter whose points rise or fall together matters; the dashed line is the paper's "
        "configuration, so points above it on the objective beat the paper.",
    ),
    "progress": (
        "Search progress",
        "The best-so-far line should flatten as the search converges; pruned trials (hollow) show "
        "the value at the rung where ASHA stopped them, not a final value.",
    ),
    "parallel": (
        "Parallel coordinates",
        "Each line is a completed trial, colour by its objective (diverged in red); bright lines "
        "bunching on an axis mark that parameter's good range, in its own units.",
    ),
    "importance": (
        "Parameter importance",
        "How much of the objective's (and divergence's) variation each parameter explains; "
        "overlapping intervals mean the order is not settled.",
    ),
    "curves": (
        "Objective during training",
        "The best, median and paper trials at each evaluation: a curve still rising at the end "
        "means more epochs would help.",
    ),
    "traces": (
        "Solver convergence",
        "Residual per JIIO iteration of the best, median and paper configurations: a steeper "
        "fall is a faster solve; a flat or rising line did not converge.",
    ),
    "pareto": (
        "Pareto front",
        "Trials on the red line are not beaten on both objectives by any other: pick among them.",
    ),
}


def _log(dim: dict[str, Any]) -> bool:
    return dim.get("kind") == "loguniform"


def _params(trials, sweep, main, space, out_dir, paper: dict[str, Any] | None = None) -> str:
    plt = pyplot()
    status = status_of(trials)
    n = len(space)
    fig, axes = plt.subplots(
        1, n, figsize=(4 * n + 1.2, 3.6), squeeze=False, sharey=True, layout="constrained"
    )
    eval_n = numeric(trials["eval_n"]) if "eval_n" in trials else None
    for ax, (name, dim) in zip(axes[0], space.items(), strict=True):
        vals = trials[main]
        floor = float(vals.min() - 0.05 * (vals.max() - vals.min() or 1.0)) if vals.notna().any() else 0.0
        for st, grp in trials.groupby(status):
            has = grp[main].notna()
            if has.any():
                ax.scatter(
                    grp.loc[has, name],
                    grp.loc[has, main],
                    s=16,
                    c=COLORS.get(st, "tab:green"),
                    label=st,
                    alpha=0.8,
                )
            if (~has).any():  # no value (diverged, failed): drawn below the others
                ax.scatter(
                    grp.loc[~has, name],
                    [floor] * int((~has).sum()),
                    s=18,
                    marker="x",
                    c=COLORS.get(st, "tab:green"),
                    label=f"{st}, no value (at the bottom)",
                )
        if eval_n is not None:  # Wilson intervals where the trial says on how many samples
            ok = (status == "completed") & eval_n.notna() & trials[main].between(0, 1)
            bars = [
                wilson_for(float(v), int(k)) for v, k in zip(trials.loc[ok, main], eval_n[ok], strict=True)
            ]
            if bars:
                lo, hi = np.array(bars).T
                ax.vlines(trials.loc[ok, name], lo, hi, color="tab:blue", lw=0.8, alpha=0.5)
        if paper and isinstance(paper.get(name), (int, float)) and np.isfinite(paper[name]):
            ax.axvline(paper[name], color="tab:purple", ls="--", lw=1, label="paper's configuration")
            if isinstance(paper.get(main), (int, float)) and np.isfinite(paper[main]):
                ax.scatter([paper[name]], [paper[main]], s=90, marker="*", c="tab:purple", zorder=4)
        if _log(dim):
            ax.set_xscale("log")
            log_axis(ax.xaxis)
        ax.set_xlabel(name)
    axes[0][0].set_ylabel(main)
    fig.legend(*axes[0][0].get_legend_handles_labels(), fontsize=7, loc="outside right upper")
    fig.suptitle(
        f"{sweep}: {main} against each parameter" + (" (bars: 95% Wilson)" if eval_n is not None else "")
    )
    return save(fig, out_dir, f"{sweep}-params.png")


def _progress(trials, sweep, main, mode, out_dir) -> str:
    plt = pyplot()
    by = "finished_at" if "finished_at" in trials else "wall_s" if "wall_s" in trials else "trial_id"
    order = trials.sort_values(by).reset_index(drop=True)
    vals = order[main]
    status = status_of(order)
    x = np.arange(1, len(vals) + 1)
    final = status == "completed"
    # The best so far counts final values only: a pruned trial's value is from an early rung.
    best = (vals.where(final).cummax() if mode == "max" else vals.where(final).cummin()).ffill()
    fig, ax = plt.subplots(figsize=(6.8, 3.4), layout="constrained")
    ax.plot(x[final], vals[final], "o", ms=4, alpha=0.8, color="tab:blue", label="completed (final value)")
    pruned = (status == "pruned").to_numpy()
    if pruned.any():
        ax.plot(
            x[pruned],
            vals[pruned],
            "o",
            ms=5,
            mfc="none",
            color="tab:gray",
            label="pruned (value at its last rung)",
        )
    other = ~final.to_numpy() & ~pruned & np.isfinite(vals.to_numpy(dtype=float))
    if other.any():
        ax.plot(x[other], vals[other], "x", ms=5, color="tab:red", label="diverged / error")
    ax.plot(x, best, "-", lw=2, color="tab:green", label="best so far (completed)")
    ax.set_xlabel("trial (by finish order)")
    ax.set_ylabel(main)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    better = "higher" if mode == "max" else "lower"
    ax.set_title(f"{sweep}: {main} per trial ({better} is better)", fontsize=9)
    legend_outside(ax, fontsize=7)
    return save(fig, out_dir, f"{sweep}-progress.png")


def divergence_pairs(space: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """(alpha_x, alpha_z) and (alpha_x, alpha_mu) where searched; else the first parameter
    against the next two."""
    pairs = [("alpha_x", y) for y in ("alpha_z", "alpha_mu") if {"alpha_x", y} <= set(space)]
    if pairs:
        return pairs
    names = [k for k, d in space.items() if d.get("kind") != "choice"]
    return [(names[0], y) for y in names[1:3]]


def _divergence(trials, sweep, space, out_dir) -> str | None:
    pairs = divergence_pairs(space)
    if not pairs:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(
        1, len(pairs), figsize=(5.6 * len(pairs) + 1, 4.4), squeeze=False, layout="constrained"
    )
    mesh = None
    size = 12 if len(trials) <= 200 else 5
    for ax, (x, y) in zip(axes[0], pairs, strict=True):
        g = divergence_grid(trials, x, y, space)
        mesh = ax.pcolormesh(
            g["x_edges"], g["y_edges"], g["rate"].T, cmap="RdYlGn_r", vmin=0, vmax=1, alpha=0.75
        )
        xs, ys, bad = g["points"]
        ax.scatter(xs[~bad], ys[~bad], s=size, c="black", marker="o", label="finished", alpha=0.6, lw=0)
        ax.scatter(xs[bad], ys[bad], s=2 * size, c="darkred", marker="x", label="diverged", lw=1)
        if len(g["x_edges"]) <= 9:
            for i in range(len(g["x_edges"]) - 1):
                for j in range(len(g["y_edges"]) - 1):
                    if g["count"][i, j]:
                        cx = _mid(g["x_edges"], i, _log(space.get(x, {})))
                        cy = _mid(g["y_edges"], j, _log(space.get(y, {})))
                        ax.text(
                            cx,
                            cy,
                            f"{int(g['diverged'][i, j])}/{int(g['count'][i, j])}",
                            ha="center",
                            va="center",
                            fontsize=6,
                            color="0.15",
                        )
        for name, axis, setter in ((x, ax.xaxis, ax.set_xscale), (y, ax.yaxis, ax.set_yscale)):
            if _log(space.get(name, {})):
                setter("log")
                log_axis(axis)
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.set_title(f"cells: diverged/finished trials over ({x}, {y})", fontsize=9)
    fig.colorbar(mesh, ax=axes[0].tolist(), label="fraction diverged", shrink=0.9)
    fig.legend(*axes[0][0].get_legend_handles_labels(), fontsize=7, loc="outside lower center", ncols=2)
    fig.suptitle(f"{sweep}: where trials diverge")
    return save(fig, out_dir, f"{sweep}-divergence.png")


def _mid(edges, i, log) -> float:
    return float(np.sqrt(edges[i] * edges[i + 1]) if log else (edges[i] + edges[i + 1]) / 2)


def _parallel(trials, sweep, main, mode, space, out_dir) -> str | None:
    names = [k for k, d in space.items() if d.get("kind") != "choice"]
    if len(names) < 2:
        return None
    plt = pyplot()
    from matplotlib.collections import LineCollection

    status = status_of(trials)
    cols, scales = [], []
    for name in [*names, main]:
        v = numeric(trials[name]).to_numpy()
        log = name != main and _log(space.get(name, {}))
        if log:
            v = np.log10(np.where(v > 0, v, np.nan))
        lo, hi = np.nanmin(v) if np.isfinite(v).any() else 0, np.nanmax(v) if np.isfinite(v).any() else 1
        cols.append((v - lo) / (hi - lo) if hi > lo else v * 0 + 0.5)
        scales.append((lo, hi, log))
    norm = np.vstack(cols).T
    fig, ax = plt.subplots(figsize=(1.8 * (len(names) + 1) + 1.5, 4))
    xs = np.arange(len(names) + 1)
    done = (status == "completed").to_numpy() & np.isfinite(norm[:, -1])
    bad = (status == "diverged").to_numpy()
    order = np.argsort(norm[done, -1] if mode == "max" else -norm[done, -1])
    lines = LineCollection(
        [np.column_stack([xs, r]) for r in norm[done][order]], cmap="viridis", linewidths=1.0
    )
    # coloured by the objective in its own units (bright: better)
    lines.set_array(numeric(trials[main]).to_numpy()[done][order])
    lines.set_cmap("viridis" if mode == "max" else "viridis_r")
    ax.add_collection(lines)
    seg_bad = [np.column_stack([xs[:-1], r[:-1]]) for r in norm[bad]]
    ax.add_collection(
        LineCollection(seg_bad, colors="tab:red", linewidths=0.7, alpha=0.5, label="diverged", zorder=3)
    )
    ax.set_xticks(xs, [*(f"{n} (log)" if _log(space.get(n, {})) else n for n in names), main])
    for x, (lo, hi, log) in zip(xs, scales, strict=True):
        ax.axvline(x, color="0.6", lw=0.6)
        for value, text in _axis_ticks(lo, hi, log):  # each axis labelled in its own units
            pos = (value - lo) / (hi - lo) if hi > lo else 0.5
            ax.plot([x - 0.03, x], [pos, pos], color="0.4", lw=0.6)
            ax.text(x - 0.05, pos, text, ha="right", va="center", fontsize=6, color="0.25", gid="axis-tick")
    ax.set_xlim(-0.35, xs[-1] + 0.1)
    ax.set_ylim(-0.05, 1.05)
    ax.set_yticks([])
    fig.colorbar(lines, ax=ax, label=f"{main} ({'higher' if mode == 'max' else 'lower'} is better)")
    ax.set_title(f"{sweep}: parallel coordinates (completed by {main}; diverged in red)", fontsize=9)
    fig.tight_layout()
    return save(fig, out_dir, f"{sweep}-parallel.png")


def _axis_ticks(lo: float, hi: float, log: bool) -> list[tuple[float, str]]:
    """Tick positions (in the axis' drawn units: log10 for a log axis) and labels in the
    parameter's own units, between lo and hi."""
    from matplotlib.ticker import LogLocator, MaxNLocator

    if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= lo:
        return [(lo, f"{10**lo if log else lo:.3g}")] if np.isfinite(lo) else []
    if log:
        ticks = LogLocator(subs=(1.0, 2.0, 5.0)).tick_values(10**lo, 10**hi)
        ticks = [t for t in ticks if lo - 1e-9 <= np.log10(t) <= hi + 1e-9]
        if len(ticks) < 2:
            ticks = [10**lo, 10**hi]
        return [(float(np.log10(t)), f"{t:.3g}") for t in ticks]
    ticks = [t for t in MaxNLocator(5).tick_values(lo, hi) if lo - 1e-12 <= t <= hi + 1e-12]
    return [(float(t), f"{t:.3g}") for t in ticks] or [(lo, f"{lo:.3g}"), (hi, f"{hi:.3g}")]


def _importance(summary, sweep, out_dir) -> str | None:
    imp = summary.get("importance") or {}
    panels = [
        (k, v) for k, v in (("objective", imp.get("objective")), ("divergence", imp.get("divergence"))) if v
    ]
    if not panels:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(
        1, len(panels), figsize=(4.5 * len(panels), 0.5 + 0.45 * max(len(v) for _, v in panels) + 1)
    )
    axes = np.atleast_1d(axes)
    for ax, (what, vals) in zip(axes, panels, strict=True):
        names = list(vals)[::-1]
        ci = imp.get(f"{what}_ci") or {}
        err = None
        if all(n in ci for n in names):  # 95% bootstrap intervals over trials
            err = np.array(
                [[max(0.0, vals[n] - ci[n][0]) for n in names], [max(0.0, ci[n][1] - vals[n]) for n in names]]
            )
        color = "tab:red" if what == "divergence" else "tab:blue"
        ax.barh(names, [vals[n] for n in names], color=color, xerr=err, capsize=3)
        ax.set_xlim(0, 1)
        label = summary["metrics"][0] if what == "objective" and summary.get("metrics") else what
        ax.set_title(f"importance for {label}", fontsize=9)
        ax.set_xlabel(
            "PED-ANOVA importance (sums to 1)" + ("\n95% bootstrap intervals" if err is not None else "")
        )
    fig.tight_layout()
    return save(fig, out_dir, f"{sweep}-importance.png")


def _pareto(src, trials, sweep, metrics, out_dir) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    done = trials[status_of(trials) == "completed"]
    ax.scatter(done[metrics[1]], done[metrics[0]], s=14, label="trials")
    front = src.table("pareto", sweep)
    if set(metrics[:2]) <= set(front.columns):
        front = front.sort_values(metrics[1])
        ax.plot(front[metrics[1]], front[metrics[0]], "r-o", ms=4, label="Pareto front")
    ax.set_xlabel(metrics[1])
    ax.set_ylabel(metrics[0])
    ax.set_title(f"{sweep}: {metrics[0]} against {metrics[1]}", fontsize=9)
    legend_outside(ax, fontsize=7)
    fig.tight_layout()
    return save(fig, out_dir, f"{sweep}-pareto.png")


def plot_all(src: Source, summary: dict[str, Any], out_dir: str) -> list[str]:
    """Write every plot of one summarised sweep into ``out_dir``; their paths."""
    sweep, metrics, modes = summary["sweep"], summary.get("metrics") or [], summary.get("modes") or []
    trials = src.trials(sweep)
    os.makedirs(out_dir, exist_ok=True)
    paths: list[str] = []
    if not len(trials):
        return paths
    space = summary.get("space") or {}
    if space:
        paths.append(_divergence(trials, sweep, space, out_dir))
    if not metrics or metrics[0] not in trials:
        return [p for p in paths if p]
    main, mode = metrics[0], modes[0]
    values = numeric(trials[main])
    if not np.isfinite(values.to_numpy()).any():
        return [p for p in paths if p]
    trials = trials.assign(**{main: values})
    if space:
        paths.append(_params(trials, sweep, main, space, out_dir, summary.get("paper")))
    paths.append(_progress(trials, sweep, main, mode, out_dir))
    paths.append(_parallel(trials, sweep, main, mode, space, out_dir))
    paths.append(_importance(summary, sweep, out_dir))
    pick = {}
    if summary.get("best"):
        pick["best"] = summary["best"][0]["trial_id"]
    if summary.get("median"):
        pick["median"] = summary["median"]["trial_id"]
    if summary.get("paper"):
        pick["paper"] = summary["paper"]["trial_id"]
    paths.append(plot_curves(src, sweep, main, pick, out_dir, save=save))
    paths.append(plot_traces(src, sweep, pick, out_dir, save=save))
    if len(metrics) > 1 and metrics[1] in trials:
        paths.append(_pareto(src, trials, sweep, metrics, out_dir))
    return [p for p in paths if p]
