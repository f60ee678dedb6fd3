"""What the searched parameters do: their importance for the objective and for divergence
(Optuna's PED-ANOVA evaluator on an in-memory study rebuilt from the trial rows), and the
divergence rate over a grid of two parameters (the data behind the divergence maps).

PED-ANOVA, not fANOVA: on 1,000 trials fANOVA's forest takes about a minute on two CPU
cores, PED-ANOVA a twentieth of a second. For the objective it compares where the best
10% of completed trials lie with where all of them lie; for divergence, where the diverged
trials lie with where all finished trials lie.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["divergence_grid", "importances"]

_MIN_TRIALS = 4


def _distribution(name: str, dim: dict[str, Any], values: pd.Series):
    """An Optuna distribution for a Dim (as a dict), or inferred from the values."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    kind = dim.get("kind")
    num = pd.to_numeric(values, errors="coerce")
    if kind == "choice" and dim.get("choices"):
        return CategoricalDistribution(
            [c if isinstance(c, (int, float, str, bool)) else str(c) for c in dim["choices"]]
        )
    if kind not in ("uniform", "loguniform", "int") and (num.isna() & values.notna()).any():
        return CategoricalDistribution(sorted({str(v) for v in values.dropna()}))
    finite = num[np.isfinite(num)]
    low = float(dim["low"]) if isinstance(dim.get("low"), (int, float)) and kind else float(finite.min())
    high = float(dim["high"]) if isinstance(dim.get("high"), (int, float)) and kind else float(finite.max())
    low, high = min(low, float(finite.min())), max(high, float(finite.max()))  # values outside: widen
    if not high > low:
        return None
    if kind == "int":
        return IntDistribution(math.floor(low), math.ceil(high))
    return FloatDistribution(low, high, log=kind == "loguniform" and low > 0)


def _study(rows: pd.DataFrame, space: dict[str, dict[str, Any]], values: np.ndarray, direction: str):
    import optuna
    from optuna.distributions import CategoricalDistribution

    dists = {}
    for name, dim in space.items():
        if name in rows and rows[name].notna().any():
            d = _distribution(name, dim, rows[name])
            if d is not None:
                dists[name] = d
    if not dists:
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=direction)
    made = []
    for (_, r), v in zip(rows.iterrows(), values, strict=True):
        params = {}
        for name, d in dists.items():
            x = r[name]
            if x is None or (isinstance(x, float) and not math.isfinite(x)):
                break
            if isinstance(d, CategoricalDistribution):
                x = x if x in d.choices else str(x)
                if x not in d.choices:
                    break
            else:
                x = int(x) if isinstance(d.low, int) else float(x)
            params[name] = x
        else:
            made.append(optuna.trial.create_trial(params=params, distributions=dists, value=float(v)))
    if len(made) < _MIN_TRIALS:
        return None
    study.add_trials(made)
    return study


def _importance_module():
    """``optuna.importance``, imported without scikit-learn when that is not loaded yet: the
    package imports it (about 4 s on two busy cores) for fANOVA only, inside Optuna's
    ``try_import``, so hiding it just leaves fANOVA unavailable in this process; PED-ANOVA
    needs none of it."""
    import sys

    if "optuna.importance" in sys.modules or "sklearn" in sys.modules:
        import optuna.importance

        return optuna.importance
    sys.modules["sklearn"] = None  # type: ignore[assignment]  # import sklearn -> ImportError
    try:
        import optuna.importance
    finally:
        del sys.modules["sklearn"]
    return optuna.importance


def _ped_anova(study, quantile: float) -> dict[str, float]:
    importance = _importance_module()
    ev = importance.PedAnovaImportanceEvaluator(target_quantile=quantile)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        imp = importance.get_param_importances(study, evaluator=ev)
    return {k: round(float(v), 4) for k, v in imp.items()}


def importances(
    trials: pd.DataFrame, space: dict[str, dict[str, Any]], main: str, mode: str
) -> dict[str, Any]:
    """``{"objective": {param: importance}, "divergence": {...}}`` (each normalised to sum to
    1, most important first), with a ``notes`` entry for what could not be computed."""
    out: dict[str, Any] = {"objective": {}, "divergence": {}, "notes": []}
    if not space or not len(trials):
        return out
    status = (
        trials["status"] if "status" in trials else pd.Series(["unknown"] * len(trials), index=trials.index)
    )
    if main and main in trials:
        done = trials[status == "completed"]
        vals = pd.to_numeric(done[main], errors="coerce").to_numpy(dtype=float)
        keep = np.isfinite(vals)
        if keep.sum() >= _MIN_TRIALS and np.ptp(vals[keep]) > 0:
            study = _study(done[keep], space, vals[keep], "maximize" if mode == "max" else "minimize")
            if study is not None:
                out["objective"] = _ped_anova(study, 0.1)
        if not out["objective"]:
            out["notes"].append(f"importance for {main}: too few completed trials with distinct values")
    finished = trials[status.isin(["completed", "diverged", "pruned"])]
    bad = (finished["status"] == "diverged").to_numpy()
    if 0 < bad.sum() < len(bad) and len(bad) >= _MIN_TRIALS:
        # minimise "did not diverge": the target set (best quantile) is exactly the diverged trials
        study = _study(finished, space, (~bad).astype(float), "minimize")
        if study is not None:
            out["divergence"] = _ped_anova(study, float(bad.mean()))
    else:
        out["notes"].append(
            "importance for divergence: " + ("no trial diverged" if not bad.sum() else "every trial diverged")
            if len(bad) >= _MIN_TRIALS
            else "importance for divergence: too few finished trials"
        )
    return out


def divergence_grid(
    trials: pd.DataFrame, x: str, y: str, space: dict[str, dict[str, Any]], bins: int = 8
) -> dict[str, Any]:
    """The fraction of finished trials that diverged in each cell of a ``bins`` x ``bins`` grid
    over parameters ``x`` and ``y`` (log-spaced for loguniform dimensions).

    Returns ``x_edges``, ``y_edges``, ``rate`` (``rate[i][j]``: x cell i, y cell j; NaN for an
    empty cell), ``count`` and ``diverged`` (per cell), and the points (x, y, diverged).
    """
    status = trials["status"] if "status" in trials else pd.Series(dtype=object)
    fin = trials[status.isin(["completed", "diverged", "pruned"])]
    xs = pd.to_numeric(fin[x], errors="coerce").to_numpy(dtype=float)
    ys = pd.to_numeric(fin[y], errors="coerce").to_numpy(dtype=float)
    ok = np.isfinite(xs) & np.isfinite(ys)
    xs, ys, bad = xs[ok], ys[ok], (fin["status"] == "diverged").to_numpy()[ok]
    edges = []
    for name, v in ((x, xs), (y, ys)):
        dim = space.get(name, {})
        lo = (
            float(dim["low"])
            if isinstance(dim.get("low"), (int, float)) and dim.get("kind")
            else (v.min() if v.size else 0.0)
        )
        hi = (
            float(dim["high"])
            if isinstance(dim.get("high"), (int, float)) and dim.get("kind")
            else (v.max() if v.size else 1.0)
        )
        if v.size:
            lo, hi = min(lo, v.min()), max(hi, v.max())
        if not hi > lo:
            hi = lo + 1.0
        log = dim.get("kind") == "loguniform" and lo > 0
        edges.append(np.geomspace(lo, hi, bins + 1) if log else np.linspace(lo, hi, bins + 1))
    count, _, _ = np.histogram2d(xs, ys, bins=edges)
    div, _, _ = np.histogram2d(xs[bad], ys[bad], bins=edges)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(count > 0, div / np.maximum(count, 1), np.nan)
    return {
        "x": x,
        "y": y,
        "x_edges": edges[0],
        "y_edges": edges[1],
        "rate": rate,
        "count": count,
        "diverged": div,
        "points": (xs, ys, bad),
    }
