"""A sweep's trial rows and metadata, read defensively: objectives, searched space, status, ranking.

What: the small readers every analysis view needs (the summary, the plots, the traces):
the metadata or ``{}`` (:func:`read_meta`), the objectives and their modes, guessed from the
columns when the metadata lacks them (:func:`objectives`), the searched parameters
(:func:`space_of`), a status per row (:func:`status_of`), numbers out of any column
(:func:`numeric`), completed trials best first (:func:`ranked`) and the runs a sweep asked
for (:func:`requested_runs`). Why apart: the plots need these without the summary's
statistics, and old or damaged sweeps (no metadata, odd columns) are handled in one place.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from orchestrator.analysis.engine import Source, reason

__all__ = [
    "FINISHED",
    "GUESSES",
    "default_mode",
    "numeric",
    "objectives",
    "ranked",
    "read_meta",
    "requested_runs",
    "space_of",
    "status_of",
]


#: objectives guessed, in this order, for a sweep whose metadata names none
GUESSES = ("robust_acc", "test_psnr_median", "test_psnr", "inner_objective")


#: the statuses of a trial that will not run again
FINISHED = ("completed", "diverged", "pruned")


def default_mode(metric: str) -> str:
    """``"min"`` for an inner objective, a time or a loss; else ``"max"`` (accuracies, PSNR)."""
    return "min" if metric == "inner_objective" or metric.endswith("_s") or "loss" in metric else "max"


def read_meta(src: Source, sweep: str, notes: list[str] | None = None) -> dict[str, Any]:
    """The sweep's metadata, or {} when it is missing (old sweeps) or unreadable (a note)."""
    try:
        meta = src.meta(sweep)
    except (ValueError, OSError) as exc:
        if notes is not None:
            notes.append(f"meta/sweep={sweep}/sweep.json is unreadable ({reason(exc)}); ignored")
        return {}
    if meta is not None and not isinstance(meta, dict):
        if notes is not None:
            notes.append(f"meta/sweep={sweep}/sweep.json is not a JSON object; ignored")
        return {}
    return meta or {}


def objectives(
    meta: dict[str, Any], sweep: str, trials: pd.DataFrame, notes: list[str] | None = None
) -> tuple[list[str], list[str]]:
    """The sweep's objectives (from its metadata, else guessed from the columns) and modes."""
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
        modes = [default_mode(m) for m in metrics]
        if notes is not None:
            notes.append(
                f"meta/sweep={sweep}/sweep.json gives no valid modes for {', '.join(metrics)}; "
                f"assuming {', '.join(modes)}"
            )
    if not metrics:  # no metadata: guess from the columns a task reports
        for name in GUESSES:
            if name in trials.columns:
                metrics, modes = [name], [default_mode(name)]
                break
    return list(metrics), list(modes or [])


def space_of(meta: dict[str, Any], trials: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """The searched parameters (name -> Dim as a dict) that the trial rows have."""
    space = meta.get("space")
    if isinstance(space, dict) and space:
        out = {str(k): v if isinstance(v, dict) else {} for k, v in space.items()}
    elif isinstance(space, list) and space:
        out = {str(k): {} for k in space}
    else:
        out = {c: {"kind": "uniform"} for c in ("alpha_z", "alpha_mu", "alpha_x")}
    return {k: v for k, v in out.items() if k in trials.columns}


def status_of(trials: pd.DataFrame) -> pd.Series:
    """Each row's status, ``"unknown"`` where the column or the value is missing."""
    if "status" in trials:
        return trials["status"].astype(object).where(trials["status"].notna(), "unknown")
    return pd.Series(["unknown"] * len(trials), index=trials.index, dtype=object)


def numeric(s: pd.Series) -> pd.Series:
    """A column as float64, NaN where a value is not a number (old rows, strings)."""
    return pd.to_numeric(s, errors="coerce").astype("float64")


def ranked(trials: pd.DataFrame, main: str, mode: str) -> pd.DataFrame:
    """Completed trials with a finite value of ``main``, best first (``main`` made numeric)."""
    if main not in trials:
        return trials.iloc[:0]
    ok = trials[status_of(trials) == "completed"]
    vals = numeric(ok[main])
    ok = ok.assign(**{main: vals})[np.isfinite(vals.to_numpy())]
    return ok.sort_values(main, ascending=(mode == "min"), kind="stable")


def requested_runs(meta: dict[str, Any]) -> int | None:
    """The trials a sweep asked for: its configurations times its training seeds (``--seeds``).

    Example:
        >>> requested_runs({"trials": 6, "seeds": [0, 1, 2]}), requested_runs({"trials": 6})
        (18, 6)
    """
    trials = meta.get("trials")
    if not isinstance(trials, int) or isinstance(trials, bool):
        return None
    seeds = meta.get("seeds")
    return trials * (len(seeds) if isinstance(seeds, list) and seeds else 1)
