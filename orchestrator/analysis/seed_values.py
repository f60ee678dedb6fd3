"""One value per seed: the completed trials of a multi-seed sweep, read as replicates.

What: :func:`seed_values` turns each completed trial into a :class:`SeedValue` (its
objective, its evaluation's sample count and per-sample variance, what samples it was
scored on); :func:`config_key` says which trials are one configuration (same searched
parameters, any seed); :func:`multi_seed` whether a sweep has several seeds of one.
Why apart from the verdicts (:mod:`~orchestrator.analysis.seed_verdicts`) and the
summaries (:mod:`~orchestrator.analysis.seeds`): reading rows into replicates is the only
part that knows the Parquet columns. Pure functions of rows: no storage, no Ray.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.analysis.intervals import (
    PROPORTION,
    aligned_samples,
    final_samples,
    sample_columns,
    sample_key,
)
from orchestrator.stats import (
    proportion_variance,
)

__all__ = ["SEED", "SeedValue", "completed_rows", "config_key", "multi_seed", "plain_value", "seed_values"]


#: the trial parameter that names a replicate (not part of a configuration's identity)
SEED = "seed"


# Tasks that evaluate the held-out images alone, the same at every seed (the inverse tasks'
# corruptions come from the seed; an unknown task counts as not sharing its samples).
_FIXED_EVAL = ("adversarial", "generative")


@dataclass(frozen=True, eq=False)
class SeedValue:
    """One completed trial: one seed of one configuration.

    ``value``: its objective; ``n``: the samples it was evaluated on; ``within``: the
    per-sample variance of that evaluation (NaN when unknown, and for a median);
    ``samples``: its per-sample values at their place (NaN kept), when the rows list them;
    ``key``: what samples it was scored on (:func:`orchestrator.analysis.intervals.sample_key`
    at its seed), None when the metadata cannot vouch for it; ``split``: the same, but equal
    across seeds when the seed does not change what is evaluated (the held-out images are
    fixed by the data config; the inverse tasks' corruptions come from the seed): seeds
    with one ``split`` share their samples.
    """

    trial_id: str
    seed: Any
    value: float
    n: float = math.nan
    within: float = math.nan
    samples: np.ndarray | None = None
    key: str | None = None
    split: str | None = None


def plain_value(v: Any) -> Any:
    """A numpy scalar as a plain Python value; a non-finite float as None (JSON-safe)."""
    v = v.item() if hasattr(v, "item") else v
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _canon(v: Any) -> Any:
    v = plain_value(v)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, float):
        return float(f"{v:.12g}")  # a parameter read back from Parquet equals the one enqueued
    return v


def config_key(row: pd.Series | dict[str, Any], params: Iterable[str]) -> tuple[tuple[str, Any], ...]:
    """A configuration's identity: its searched parameters (not the seed), floats to 12
    significant digits.

    Example:
        >>> config_key({"alpha_x": 0.30000000000000004, "seed": 3}, ["alpha_x"])
        (('alpha_x', 0.3),)
    """
    return tuple((k, _canon(row.get(k))) for k in params if k != SEED)


def _seed_key(meta: dict[str, Any] | None, seed: Any) -> str | None:
    """What samples a trial at ``seed`` is scored on: the sweep's sample key with the seed
    fixed at the trial's (a searched seed changes the corruptions of the inverse tasks,
    not the held-out split, which the data config fixes)."""
    if not isinstance(meta, dict):
        return None
    space, fixed = meta.get("space"), meta.get("fixed")
    if isinstance(space, dict):
        space = {k: v for k, v in space.items() if k != SEED}
    elif isinstance(space, list):
        space = [k for k in space if k != SEED]
    if isinstance(fixed, dict) and seed is not None:
        fixed = {**fixed, SEED: plain_value(seed)}
    return sample_key({**meta, "space": space, "fixed": fixed})


def _finite(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f if math.isfinite(f) else math.nan


def completed_rows(trials: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The completed trials with a finite ``metric`` (all of them count as completed without a
    ``status`` column)."""
    if not len(trials) or metric not in trials:
        return trials.iloc[:0]
    status = trials["status"] if "status" in trials else pd.Series("completed", index=trials.index)
    vals = pd.to_numeric(trials[metric], errors="coerce")
    return trials[(status == "completed") & np.isfinite(vals.to_numpy(dtype=float))]


def seed_values(
    trials: pd.DataFrame,
    metric: str,
    steps: pd.DataFrame | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, SeedValue]:
    """Each completed trial with a finite ``metric``, by trial id, with what its evaluation
    says about evaluation noise: the per-sample values of its last evaluation in ``steps``
    (``<metric>_samples``; their variance is ``within``), else for an accuracy-like metric
    (``*acc*``, ``*_rate``, ``*_frac``) its ``eval_n`` count (``within`` is the variance of
    that many 0/1 values). A ``*_median`` metric gets no ``within`` (a median's evaluation
    noise is not ``within / n``)."""
    out: dict[str, SeedValue] = {}
    done = completed_rows(trials, metric)
    if not len(done):
        return out
    cols = sample_columns(metric)
    have = [c for c in cols if steps is not None and c in steps.columns]
    kind = str(meta.get("kind") or "train") if isinstance(meta, dict) else "train"
    median = metric.endswith("_median")
    proportion = bool(PROPORTION.search(metric)) and not median
    fixed = meta.get("fixed") if isinstance(meta, dict) and isinstance(meta.get("fixed"), dict) else {}
    for _, r in done.iterrows():
        tid = str(r["trial_id"])
        value = float(pd.to_numeric(pd.Series([r[metric]]), errors="coerce").iloc[0])
        seed = plain_value(r.get(SEED)) if SEED in r else None
        n, within, aligned = _finite(r.get("eval_n")), math.nan, None
        if have and steps is not None:
            mine = steps[steps["trial_id"].astype(str) == tid]
            flat = final_samples(mine, have) if len(mine) else None
            if flat is not None:
                n, within = float(flat.size), float(np.var(flat, ddof=1))
            if len(mine) and "phase" in mine:
                aligned = aligned_samples(mine, have, kind)
        if not math.isfinite(within) and proportion and math.isfinite(n) and 0 <= value <= 1:
            within = proportion_variance(value, int(n))
        if median:
            within = math.nan
        task = r.get("task") if isinstance(r.get("task"), str) else fixed.get("task")
        split = _seed_key(meta, seed if task not in _FIXED_EVAL else None)
        out[tid] = SeedValue(tid, seed, value, n, within, aligned, _seed_key(meta, seed), split)
    return out


def multi_seed(trials: pd.DataFrame, params: Iterable[str], metric: str) -> bool:
    """Whether some configuration has completed trials at two or more distinct seeds.

    Example:
        >>> rows = pd.DataFrame({"trial_id": ["a", "b"], "status": "completed", "x": [1.0, 1.0],
        ...                      "seed": [0, 1], "acc": [0.5, 0.6]})
        >>> multi_seed(rows, ["x"], "acc"), multi_seed(rows.assign(x=[1.0, 2.0]), ["x"], "acc")
        (True, False)
    """
    done = completed_rows(trials, metric)
    if not len(done) or SEED not in done:
        return False
    keys = [config_key(r, params) for _, r in done.iterrows()]
    seeds: dict[Any, set[Any]] = {}
    for k, s in zip(keys, done[SEED].map(_canon), strict=True):
        if s is not None:
            seeds.setdefault(k, set()).add(s)
    return any(len(v) >= 2 for v in seeds.values())
