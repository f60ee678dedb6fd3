"""What the searched parameters do: their importance for the objective and for divergence
(Optuna's PED-ANOVA evaluator on an in-memory study rebuilt from the trial rows), and the
divergence rate over a grid of two parameters (the data behind the divergence maps).

PED-ANOVA, not fANOVA: on 1,000 trials fANOVA's forest takes about a minute on two CPU
cores, PED-ANOVA a twentieth of a second. For the objective it compares where the best
10% of completed trials lie (and at least the best :data:`TOP` = 5, the number Optuna's
documentation asks for a stable estimate) with where all of them lie; for divergence,
where the diverged trials lie with where all finished trials lie.

Below :data:`MIN_TRIALS` = 10 trials (completed ones for the objective, finished ones with
both outcomes for divergence) importance is not computed, and the ``notes`` say why: the
best 5 would be half of the trials or more, and which parameter separates them from the
rest is decided by chance (with 5 random trials, any parameter). Above it each importance
gets a 95% percentile bootstrap interval over trials (:data:`N_BOOT` resamples of the
trials with replacement, the importance recomputed on each) and the share of resamples in
which each parameter came first: a ranking that flips between resamples is not one. Above
:data:`BOOT_MAX` trials each resample draws that many (an m-out-of-n bootstrap, which
bounds the cost at about 50 PED-ANOVA fits of 300 trials, a few seconds): the intervals
are then those of an importance computed from 300 trials, wider than from all of them.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["BOOT_MAX", "MIN_TRIALS", "N_BOOT", "TOP", "divergence_grid", "importances"]

MIN_TRIALS = 10
TOP = 5
N_BOOT = 50
BOOT_MAX = 300


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


def _frozen(rows: pd.DataFrame, space: dict[str, dict[str, Any]], values: np.ndarray) -> list[Any]:
    """One finished Optuna trial per row (None for a row without a usable value of every
    parameter), over the distributions of ``space`` that vary among ``rows``."""
    import optuna
    from optuna.distributions import CategoricalDistribution

    dists = {}
    for name, dim in space.items():
        if name in rows and rows[name].notna().any():
            d = _distribution(name, dim, rows[name])
            if d is not None:
                dists[name] = d
    if not dists:
        return []
    made: list[Any] = []
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
            continue
        made.append(None)
    return made


def _study(made: list[Any], direction: str):
    """An in-memory study of the trials ``made`` (None entries left out); None for fewer than 2."""
    import optuna

    usable = [t for t in made if t is not None]
    if len(usable) < 2:
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=direction)
    study.add_trials(usable)
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


def _with_uncertainty(
    rows: pd.DataFrame,
    space: dict[str, dict[str, Any]],
    values: np.ndarray,
    direction: str,
    quantile,
    n_boot: int,
    seed: int = 0,
) -> dict[str, Any]:
    """PED-ANOVA on ``rows`` and on ``n_boot`` bootstrap resamples of them: ``importance``,
    ``ci`` (param -> [lo, hi], 95% percentile) and ``first`` (param -> share of resamples
    in which it ranked first); ``{}`` when it cannot be computed. ``quantile(values)``
    gives the target quantile for a set of values."""
    made = _frozen(rows, space, values)
    study = _study(made, direction)
    if study is None:
        return {}
    imp = _ped_anova(study, quantile(values))
    out: dict[str, Any] = {"importance": imp, "ci": {}, "first": {}, "resamples": 0}
    rng = np.random.default_rng(seed)
    draws: list[dict[str, float]] = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(rows), min(len(rows), BOOT_MAX))
        v = values[idx]
        if np.ptp(v) == 0:
            continue
        boot = _study([made[i] for i in idx], direction)
        if boot is not None:
            draws.append(_ped_anova(boot, quantile(v)))
    if draws:
        out["resamples"] = len(draws)
        for k in imp:
            got = np.array([d.get(k, 0.0) for d in draws])
            out["ci"][k] = [
                round(float(np.quantile(got, 0.025)), 4),
                round(float(np.quantile(got, 0.975)), 4),
            ]
        firsts = [max(d, key=lambda k: d[k]) for d in draws if d and max(d.values()) > 0]
        out["first"] = {k: round(firsts.count(k) / len(draws), 3) for k in imp}
    return out


def _top_quantile(values: np.ndarray) -> float:
    """The best 10%, and at least the best :data:`TOP` (Optuna's advice for PED-ANOVA)."""
    return min(0.99, max(0.1, (TOP - 0.5) / max(len(values), 1)))


def _too_few(what: str, have: int, kind: str) -> str:
    compared = (
        f"where the diverged trials lie with where all {kind} ones lie: with fewer than {MIN_TRIALS} "
        "trials either set is a handful of points"
        if what == "divergence"
        else f"where the best {TOP} trials lie with where all lie: with fewer than {MIN_TRIALS} trials "
        "those are half of them or more"
    )
    return (
        f"importance for {what}: not shown: {have} {kind} trials, fewer than the {MIN_TRIALS} it needs "
        f"(PED-ANOVA compares {compared}, and which parameter sets them apart is chance)"
    )


def importances(
    trials: pd.DataFrame, space: dict[str, dict[str, Any]], main: str, mode: str, n_boot: int = N_BOOT
) -> dict[str, Any]:
    """``{"objective": {param: importance}, "divergence": {...}}`` (each normalised to sum to
    1, most important first), their 95% bootstrap intervals over trials (``objective_ci``,
    ``divergence_ci``: param -> [lo, hi]) and the share of resamples in which each
    parameter ranked first (``objective_first``, ``divergence_first``), with a ``notes``
    entry for what could not be computed and why (fewer than :data:`MIN_TRIALS` trials)."""
    out: dict[str, Any] = {"objective": {}, "divergence": {}, "notes": [], "min_trials": MIN_TRIALS}
    if not space or not len(trials):
        return out
    status = (
        trials["status"] if "status" in trials else pd.Series(["unknown"] * len(trials), index=trials.index)
    )
    if main and main in trials:
        done = trials[status == "completed"]
        vals = pd.to_numeric(done[main], errors="coerce").to_numpy(dtype=float)
        keep = np.isfinite(vals)
        if keep.sum() < MIN_TRIALS:
            out["notes"].append(_too_few(main, int(keep.sum()), "completed"))
        elif np.ptp(vals[keep]) == 0:
            out["notes"].append(f"importance for {main}: every completed trial has the same value")
        else:
            direction = "maximize" if mode == "max" else "minimize"
            got = _with_uncertainty(done[keep], space, vals[keep], direction, _top_quantile, n_boot)
            if got:
                out["objective"], out["objective_ci"] = got["importance"], got["ci"]
                out["objective_first"], out["objective_resamples"] = got["first"], got["resamples"]
            else:
                out["notes"].append(f"importance for {main}: no searched parameter varies among the trials")
    finished = trials[status.isin(["completed", "diverged", "pruned"])]
    bad = (finished["status"] == "diverged").to_numpy()
    if len(bad) < MIN_TRIALS:
        out["notes"].append(_too_few("divergence", len(bad), "finished"))
    elif not 0 < bad.sum() < len(bad):
        out["notes"].append(
            "importance for divergence: " + ("no trial diverged" if not bad.sum() else "every trial diverged")
        )
    else:
        # minimise "did not diverge": the target set (best quantile) is exactly the diverged trials
        got = _with_uncertainty(
            finished, space, (~bad).astype(float), "minimize", lambda v: float(np.mean(v == 0)), n_boot
        )
        if got:
            out["divergence"], out["divergence_ci"] = got["importance"], got["ci"]
            out["divergence_first"], out["divergence_resamples"] = got["first"], got["resamples"]
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
