"""Analyse a sweep's Parquet results: a ranked table, the paper baseline, plots.

``jiio analyze PATH [--name NAME] [--out DIR] [--json]`` reads ``trials/``, ``steps/``,
``traces/`` (and ``pareto/`` for multi-objective sweeps) under the storage root ``PATH``
and prints, per sweep: trial counts by status, the best trials by the sweep's objective
with their hyperparameters and wall time, and how the best compares with the paper
code's configuration (the enqueued first trial). It writes PNG plots to ``--out``:
objective against each searched hyperparameter, search progress (best so far), the
objective over training steps, solver convergence traces of the best and paper trials,
and the Pareto front.

Bad input never ends in a traceback. A storage path that does not exist, holds no sweep,
or whose sweep has no readable trial row raises :class:`AnalyzeError` (``jiio analyze``:
one line on stderr, exit code 2). Unreadable files (truncated, garbage) are skipped and
named once, after the analysis of what is readable. A sweep whose objective no trial
reported (every trial diverged or failed before its first evaluation) is shown with its
counts and the reason; when no sweep has anything to rank, :func:`run` returns 1.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs

from orchestrator.results import ResultStore

__all__ = ["AnalyzeError", "plot_sweep", "summarize", "summary_text"]

_GUESSES = ("robust_acc", "test_psnr_median", "test_psnr", "inner_objective")
_PROG = "jiio analyze"


class AnalyzeError(ValueError):
    """Bad input for ``jiio analyze``: nothing under the path can be analysed. One line: what
    is wrong and what to do."""


class _Store(ResultStore):
    """A read-only view for analysis: each table is read once, and the files a read skips
    as unreadable are collected (``skipped``: path -> reason) to be named once, at the end."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.skipped: dict[str, str] = {}
        self._cache: dict[tuple[str, str | None], pd.DataFrame] = {}

    def _report_corrupt(self, path: str, exc: Exception, on_corrupt: str) -> None:
        if on_corrupt != "skip":  # analysis never moves files; keep the store's behaviour anyway
            super()._report_corrupt(path, exc, on_corrupt)
            return
        self.skipped.setdefault(path, _reason(exc))

    def read(self, table, sweep=None, on_corrupt="skip", columns=None):
        if on_corrupt != "skip" or columns is not None:
            return super().read(table, sweep, on_corrupt, columns)
        key = (table, sweep)
        if key not in self._cache:
            try:
                self._cache[key] = super().read(table, sweep)
            except (KeyError, pa.ArrowException) as exc:  # files that cannot be combined
                where = f"{table}/sweep={sweep}" if sweep else f"{table}/"
                raise AnalyzeError(
                    f"the files of {where} under {self.root} cannot be read as one table ({_reason(exc)}); "
                    "were some written by another program or an incompatible version?"
                ) from None
        return self._cache[key].copy(deep=False)

    def rel(self, path: str) -> str:
        return path[len(self.base) + 1 :] if path.startswith(self.base + "/") else path


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return re.sub(r"^Could not open Parquet input source '[^']*': ", "", text)


def _meta(store: ResultStore, sweep: str, notes: list[str] | None = None) -> dict[str, Any]:
    """The sweep's metadata, or {} when it is missing (old sweeps) or unreadable."""
    try:
        meta = store.meta(sweep)
    except (ValueError, OSError, pa.ArrowException) as exc:
        if notes is not None:
            notes.append(f"meta/sweep={sweep}/sweep.json is unreadable ({_reason(exc)}); ignored")
        return {}
    if meta is not None and not isinstance(meta, dict):
        if notes is not None:
            notes.append(f"meta/sweep={sweep}/sweep.json is not a JSON object; ignored")
        return {}
    return meta or {}


def _default_mode(metric: str) -> str:
    return "min" if metric == "inner_objective" or metric.endswith("_s") or "loss" in metric else "max"


def _objectives(
    store: ResultStore, sweep: str, trials: pd.DataFrame, notes: list[str] | None = None
) -> tuple[list[str], list[str], dict]:
    """The sweep's objectives (from its metadata, else guessed from the columns), modes, meta."""
    meta = _meta(store, sweep, notes)
    metrics = meta.get("metrics")
    if isinstance(metrics, str):
        metrics = [metrics]
    if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
        metrics = []
    modes = meta.get("modes")
    modes = [modes] if isinstance(modes, str) else modes
    if metrics and not (
        isinstance(modes, list) and len(modes) == len(metrics) and all(m in ("min", "max") for m in modes)
    ):
        modes = [_default_mode(m) for m in metrics]
        if notes is not None:
            notes.append(
                f"meta/sweep={sweep}/sweep.json gives no valid modes for {', '.join(metrics)}; "
                f"assuming {', '.join(modes)}"
            )
    if not metrics:  # no metadata: guess from the columns a task reports
        for name in _GUESSES:
            if name in trials.columns:
                metrics, modes = [name], [_default_mode(name)]
                break
    return list(metrics), list(modes or []), meta


def _space(meta: dict[str, Any], trials: pd.DataFrame) -> dict[str, dict[str, Any]]:
    space = meta.get("space")
    if isinstance(space, dict) and space:
        return {str(k): v if isinstance(v, dict) else {} for k, v in space.items()}
    if isinstance(space, list) and space:
        return {str(k): {} for k in space}
    return {c: {"kind": "uniform"} for c in ("alpha_z", "alpha_mu", "alpha_x") if c in trials}


def _status(trials: pd.DataFrame) -> pd.Series:
    if "status" in trials:
        return trials["status"].astype(object).where(trials["status"].notna(), "unknown")
    return pd.Series(["unknown"] * len(trials), index=trials.index, dtype=object)


def _ranked(trials: pd.DataFrame, main: str, mode: str) -> pd.DataFrame:
    """Completed trials with a value of ``main``, best first (``main`` made numeric)."""
    if main not in trials:
        return trials.iloc[:0]
    ok = trials[_status(trials) == "completed"]
    vals = pd.to_numeric(ok[main], errors="coerce").astype("float64")
    ok = ok.assign(**{main: vals})[np.isfinite(vals.to_numpy())]
    return ok.sort_values(main, ascending=(mode == "min"), kind="stable")


def _why_unranked(trials: pd.DataFrame, sweep: str, metrics: list[str], meta: dict[str, Any]) -> str:
    """Why no trial of ``sweep`` can be ranked, and what to do."""
    status = _status(trials)
    counts = ", ".join(f"{k} {v}" for k, v in sorted(status.value_counts().items()))
    if not metrics:
        where = f"meta/sweep={sweep}/sweep.json " + ("names no objective" if meta else "is missing")
        return (
            f"nothing to rank: {where}, and no trial row has a known objective column "
            f"({', '.join(_GUESSES)}); the trials ({counts}) may all have stopped before their first "
            "evaluation, or the sweep reports another metric (analysis needs the sweep's meta file)"
        )
    main = metrics[0]
    if main not in trials:
        text = (
            f"nothing to rank: no trial reported {main} ({counts}): every trial stopped before its first eval"
        )
    else:
        text = f"nothing to rank: no completed trial has a value of {main} ({counts})"
    hints = []
    if (status == "diverged").any():
        hints.append(
            "diverged trials hit non-finite or exploding solver residuals: narrow the search space "
            "towards smaller step sizes (alpha_*) or more solver iterations"
        )
    if (status == "error").any():
        msgs = []
        if "error" in trials:
            for tid, err in zip(trials["trial_id"], trials["error"], strict=True):
                if isinstance(err, str) and err.strip():
                    msgs.append(f"{tid}: {err.strip().splitlines()[-1][:200]}")
        hints.append(
            "errored trials failed"
            + (" (" + "; ".join(msgs[:3]) + ("; ..." if len(msgs) > 3 else "") + ")" if msgs else "")
            + ": fix the cause, then run the sweep again with --resume (it retries errored trials)"
        )
    if (status == "pruned").any() and not hints:
        hints.append("pruned trials were stopped early by the scheduler")
    if not hints:
        hints.append("wait for the running trials to finish, or run the sweep again with --resume")
    return text + "; " + "; ".join(hints)


def summarize(store: ResultStore, sweep: str, top: int = 5) -> dict[str, Any]:
    """Counts, best trials and the paper baseline of one sweep, as plain data.

    ``ranked`` is how many trials could be ranked (completed, with a finite objective);
    ``notes`` say what is missing and what to do (e.g. no trial reported the objective).
    """
    trials = store.read("trials", sweep)
    notes: list[str] = []
    metrics, modes, meta = _objectives(store, sweep, trials, notes)
    out: dict[str, Any] = {
        "sweep": sweep,
        "trials": len(trials),
        "requested": meta.get("trials"),
        "status": _status(trials).value_counts().to_dict() if len(trials) else {},
        "metrics": metrics,
        "modes": modes,
        "ranked": 0,
        "notes": notes,
    }
    if not len(trials):
        notes.append(f"no readable trial rows in trials/sweep={sweep}")
        return out
    space = list(_space(meta, trials))
    main, mode = (metrics[0], modes[0]) if metrics else ("", "max")
    ranked = _ranked(trials, main, mode) if metrics else trials.iloc[:0]
    out["ranked"] = len(ranked)
    if not len(ranked):
        notes.append(_why_unranked(trials, sweep, metrics, meta))
    missing = [m for m in metrics[1:] if m not in trials]
    if missing and metrics[0] in trials:
        notes.append(
            f"no trial reported {', '.join(missing)} (an objective in meta/sweep={sweep}/sweep.json)"
        )
    if not metrics:
        return out
    cols = ["trial_id", *metrics, *space, "wall_s"]
    out["best"] = [{c: _plain(r.get(c)) for c in cols if c in r} for _, r in ranked.head(top).iterrows()]
    paper_ids = meta.get("paper_trial_ids") or []
    paper_ids = set(paper_ids) if isinstance(paper_ids, list) else set()
    paper = trials[trials["trial_id"].isin(paper_ids)] if "trial_id" in trials else trials.iloc[:0]
    if len(paper):
        p = paper.iloc[0]
        out["paper"] = {
            c: _plain(p.get(c)) for c in ["trial_id", "status", *metrics, *space, "wall_s"] if c in p
        }
        p_val = pd.to_numeric(pd.Series([p.get(main)]), errors="coerce").astype("float64").iloc[0]
        if len(ranked) and p.get("status") == "completed" and math.isfinite(p_val):
            best = float(ranked.iloc[0][main])
            out["best_minus_paper"] = best - p_val if mode == "max" else p_val - best
    if len(metrics) > 1:
        front = _read_optional(store, "pareto", sweep)
        out["pareto"] = [{c: _plain(v) for c, v in r.items() if c != "sweep"} for _, r in front.iterrows()]
    return out


def _read_optional(store: ResultStore, table: str, sweep: str) -> pd.DataFrame:
    """A table the analysis can do without (its plots are left out): empty if it cannot be read."""
    try:
        return store.read(table, sweep)
    except (AnalyzeError, KeyError, pa.ArrowException) as exc:
        print(f"{_PROG}: warning: {exc}; leaving out what needs {table}/", file=sys.stderr)
        return pd.DataFrame()


def _plain(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return [_plain(x) for x in v.tolist()]
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def summary_text(s: dict[str, Any]) -> str:
    status = ", ".join(f"{k} {v}" for k, v in sorted(s["status"].items()))
    lines = [
        f"sweep {s['sweep']}: {s['trials']} trials"
        + (f" of {s['requested']}" if s.get("requested") else "")
        + (f" ({status})" if status else "")
    ]
    if s.get("metrics"):
        lines.append(
            "objective: " + ", ".join(f"{m} ({mo})" for m, mo in zip(s["metrics"], s["modes"], strict=True))
        )
    lines += [f"note: {n}" for n in s.get("notes", [])]
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
    """Write the sweep's PNG plots into ``out_dir``; returns their paths.

    A plot whose data is missing (no trial reported the objective, no traces, no Pareto
    front yet) is left out.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials = store.read("trials", sweep)
    metrics, modes, meta = _objectives(store, sweep, trials)
    os.makedirs(out_dir, exist_ok=True)
    paths: list[str] = []
    if not len(trials) or not metrics or metrics[0] not in trials:
        return paths
    main, mode = metrics[0], modes[0]
    status = _status(trials)
    values = pd.to_numeric(trials[main], errors="coerce").astype("float64")
    if not np.isfinite(values.to_numpy()).any():
        return paths
    trials = trials.assign(**{main: values})
    space = {k: v for k, v in _space(meta, trials).items() if k in trials}
    colors = {"completed": "tab:blue", "diverged": "tab:red", "pruned": "tab:gray", "error": "black"}
    if space:
        fig, axes = plt.subplots(1, len(space), figsize=(4 * len(space), 3.4), squeeze=False)
        for ax, (name, dim) in zip(axes[0], space.items(), strict=True):
            for st, grp in trials.groupby(status):
                ax.scatter(grp[name], grp[main], s=18, c=colors.get(st, "tab:green"), label=st)
            if dim.get("kind") == "loguniform":
                ax.set_xscale("log")
            ax.set_xlabel(name)
            ax.set_ylabel(main)
        axes[0][0].legend(fontsize=7)
        fig.suptitle(f"{sweep}: {main} against each hyperparameter")
        fig.tight_layout()
        paths.append(_save(fig, out_dir, f"{sweep}-params.png"))
    order = trials.sort_values("wall_s" if "wall_s" in trials else "trial_id").reset_index(drop=True)
    vals = order[main]
    best = vals.cummax() if mode == "max" else vals.cummin()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.plot(range(1, len(vals) + 1), vals, "o", ms=4, label="trial")
    ax.plot(range(1, len(best) + 1), best, "-", label="best so far")
    ax.set_xlabel("trial (by finish order)")
    ax.set_ylabel(main)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(_save(fig, out_dir, f"{sweep}-progress.png"))
    ranked = _ranked(trials, main, mode)
    pick = {"paper": next(iter(meta.get("paper_trial_ids") or []), None)}
    if len(ranked):
        pick["best"] = ranked.iloc[0]["trial_id"]
    steps = _read_optional(store, "steps", sweep)
    if {"trial_id", "step", main} <= set(steps.columns):
        steps = steps.assign(**{main: pd.to_numeric(steps[main], errors="coerce").astype("float64")})
        steps = steps[np.isfinite(steps[main].to_numpy())]
        if "phase" in steps and (steps["phase"] == "eval").any():
            steps = steps[steps["phase"] == "eval"]
        if len(steps):
            fig, ax = plt.subplots(figsize=(5, 3.4))
            labelled = False
            for tid, grp in steps.groupby("trial_id"):
                grp = grp.sort_values("step")
                if tid in pick.values():
                    label = " / ".join(k for k, v in pick.items() if v == tid)
                    ax.plot(grp["step"], grp[main], "-o", ms=3, lw=1.6, label=f"{label} ({tid})")
                    labelled = True
                else:
                    ax.plot(grp["step"], grp[main], "-", color="0.75", lw=0.7)
            ax.set_xlabel("training step")
            ax.set_ylabel(main)
            if labelled:
                ax.legend(fontsize=7)
            fig.tight_layout()
            paths.append(_save(fig, out_dir, f"{sweep}-curves.png"))
    traces = _read_optional(store, "traces", sweep)
    if len(traces) and {"trial_id", "step", "iteration", "residual"} <= set(traces.columns):
        fig, ax = plt.subplots(figsize=(5, 3.4))
        drawn = False
        for label, tid in pick.items():
            t = traces[traces["trial_id"] == tid]
            if len(t):
                last = t[t["step"] == t["step"].max()]
                ax.semilogy(last["iteration"], last["residual"], label=f"{label} ({tid})")
                drawn = True
        ax.set_xlabel("JIIO iteration")
        ax.set_ylabel("relative residual")
        if drawn:
            ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(_save(fig, out_dir, f"{sweep}-traces.png"))
    if len(metrics) > 1 and metrics[1] in trials:
        fig, ax = plt.subplots(figsize=(5, 3.4))
        done = trials[status == "completed"]
        ax.scatter(done[metrics[1]], done[metrics[0]], s=14, label="trials")
        front = _read_optional(store, "pareto", sweep)
        if set(metrics[:2]) <= set(front.columns):
            front = front.sort_values(metrics[1])
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


def _open(path: str) -> _Store:
    """The store at ``path``, which must exist and be a directory (or an object-store prefix)."""
    try:
        store = _Store(path)
        info = store.fs.get_file_info(store.base)
    except (ValueError, OSError, pa.ArrowException) as exc:
        raise AnalyzeError(f"cannot open the storage {path!r}: {_reason(exc)}") from None
    hint = "pass the --storage directory (or s3:// / gs:// URI) the sweep wrote its results to"
    if info.type == pafs.FileType.NotFound:
        raise AnalyzeError(f"storage path {path} does not exist: {hint}")
    if info.type != pafs.FileType.Directory:
        raise AnalyzeError(f"storage path {path} is a file, not a results directory: {hint}")
    return store


def _no_sweeps(store: _Store, path: str, name: str | None) -> AnalyzeError:
    """The error for a path with no (such) sweep: what is there instead."""
    have = store.sweeps("trials")
    started = sorted(set(store.sweeps("pending")) | set(store.sweeps("steps")))
    if name and name in started:
        n = len(store.keys("pending", name))
        return AnalyzeError(
            f"sweep {name} under {path} has no finished trial yet ({n} started): "
            "each trial writes its row to trials/ when it ends; run jiio analyze again then"
        )
    if name and have:
        return AnalyzeError(f"no results for sweep {name} under {path} (sweeps there: {', '.join(have)})")
    if started:
        return AnalyzeError(
            f"no results for sweep {name or '(any)'} under {path}: no trial has finished yet "
            f"(sweeps started there: {', '.join(started)})"
        )
    sel = pafs.FileSelector(store.base, allow_not_found=True)
    entries = sorted(i.base_name for i in store.fs.get_file_info(sel))
    there = (
        f"it holds {', '.join(entries[:8])}{', ...' if len(entries) > 8 else ''}, but no trials/sweep=NAME/"
        if entries
        else "it is empty"
    )
    return AnalyzeError(
        f"no results for sweep {name or '(any)'} under {path} (sweeps there: none; {there}): "
        "pass the --storage directory the sweep wrote to"
    )


def _report_skipped(store: _Store, path: str) -> None:
    if not store.skipped:
        return
    n = len(store.skipped)
    print(
        f"{_PROG}: warning: skipped {n} unreadable file{'s' if n > 1 else ''} under {path} "
        "(left in place; their rows are missing from the analysis):",
        file=sys.stderr,
    )
    for p, why in sorted(store.skipped.items()):
        print(f"  {store.rel(p)}: {why}", file=sys.stderr)
    print(
        "  resuming the sweep (--resume) moves them to corrupt/ and reruns the trials whose row was lost",
        file=sys.stderr,
    )


def run(path: str, name: str | None, out: str | None, as_json: bool, plots: bool = True) -> int:
    """The ``jiio analyze`` command; returns an exit code: 0, or 1 when no sweep has a trial
    that can be ranked. Raises :class:`AnalyzeError` when there is nothing to analyse."""
    store = _open(path)
    have = store.sweeps("trials")
    if not have or (name and name not in have):
        raise _no_sweeps(store, path, name)
    sweeps = [name] if name else have
    summaries = [summarize(store, sweep) for sweep in sweeps]
    if not any(s["trials"] for s in summaries):
        skipped = sorted(store.rel(p) for p in store.skipped)
        listed = ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        if skipped:
            raise AnalyzeError(
                f"nothing to analyse under {path} for sweep {', '.join(sweeps)}: every trial file is "
                f"unreadable ({listed}); resume the sweep (--resume): it moves them to corrupt/ and "
                "reruns their trials"
            )
        started = sum(len(store.keys("pending", s)) for s in sweeps)
        raise AnalyzeError(
            f"nothing to analyse under {path} for sweep {', '.join(sweeps)}: no trial rows in trials/"
            + (f" ({started} trials started)" if started else "")
            + "; each trial writes its row when it ends: run jiio analyze again once one has finished"
        )
    for s in summaries:
        if plots and s["trials"]:
            s["plots"] = plot_sweep(store, s["sweep"], out or os.path.join("analysis", s["sweep"]))
        skipped = [p for p in store.skipped if f"/sweep={s['sweep']}/" in p]
        if skipped:
            s["skipped"] = [{"path": store.rel(p), "reason": store.skipped[p]} for p in sorted(skipped)]
    if as_json:
        print(json.dumps(summaries if len(summaries) > 1 else summaries[0], default=str))
    else:
        for s in summaries:
            print(summary_text(s))
            for p in s.get("plots", []):
                print(f"plot: {p}")
            print()
    _report_skipped(store, path)
    if not any(s["ranked"] for s in summaries):
        print(f"{_PROG}: nothing to rank in sweep {', '.join(sweeps)} (see the notes above)", file=sys.stderr)
        return 1
    return 0
