"""Configurations trained with several seeds: intervals that include training noise.

A sweep scores each configuration once, with one training seed; its intervals (Wilson over
the evaluation samples, or a bootstrap of per-sample values) cover evaluation noise only.
Retraining with another seed moves a value too, often by more than the differences between
configurations. Where a configuration has several seeds (rows that share the searched
parameters and differ in ``seed``: a ``jiio confirm`` sweep), the seeds are the replicates:

- per configuration, the mean over seeds with its Student-t interval (S - 1 degrees of
  freedom, :func:`orchestrator.stats.t_interval`, which says why not a bootstrap), and the
  variance components: between seeds (training noise) and within a seed (evaluation noise
  per sample), by one-way random-effects ANOVA
  (:func:`orchestrator.stats.variance_components`) from each seed's per-sample values
  (``<metric>_samples`` in its last eval row) or, for an accuracy, from its count
  (``eval_n``);
- against the paper's configuration, the difference paired by seed (the same seed in both:
  common random numbers, what a seed does to both cancels) and, where both were scored on
  the same samples in the same order, by sample; its t interval over the per-seed
  differences gives the verdict: "beats the paper's settings" when it lies above 0 (on the
  better side), "worse than the paper's settings" below, else "cannot be told apart", with
  which dimension must grow (seeds or samples per seed) for a difference this size to be
  told apart (:func:`orchestrator.stats.seeds_needed`, :func:`~orchestrator.stats.samples_needed`);
- for a confirmation (:func:`confirm_summary`), how far the sweep's own value sat from the
  confirmed mean (selection optimism) with its interval.

Everything here is a pure function of rows (pandas frames and the sweeps' metadata): no
storage, no Ray.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.analysis.intervals import _PROPORTION, _aligned, _sample_columns, _samples, sample_key
from orchestrator.driver.hints import jiio
from orchestrator.stats import (
    Components,
    proportion_variance,
    samples_needed,
    seeds_needed,
    t_interval,
    t_quantile,
    variance_components,
)

__all__ = [
    "BEATS",
    "SAME",
    "WORSE",
    "SeedValue",
    "config_key",
    "confirm_summary",
    "evaluation_only",
    "multi_seed",
    "remedy",
    "seed_summary",
    "seed_values",
    "versus",
]

SEED = "seed"
# Tasks that evaluate the held-out images alone, the same at every seed (the inverse tasks'
# corruptions come from the seed; an unknown task counts as not sharing its samples).
_FIXED_EVAL = ("adversarial", "generative")
BEATS, SAME, WORSE = "beats the paper's settings", "cannot be told apart", "worse than the paper's settings"
PAPER = "the paper's settings"


def evaluation_only(root: str, sweep: str) -> str:
    """The line for a sweep with one training seed per configuration."""
    return (
        "these intervals cover evaluation noise only (which held-out samples were scored): every "
        "configuration was trained with one seed, so what retraining with another seed moves is in "
        "none of them, and more samples cannot shrink it; "
        f"`{jiio()} confirm {root} --name {sweep} --top 3 --seeds 3` measures it"
    )


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


def _native(v: Any) -> Any:
    v = v.item() if hasattr(v, "item") else v
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _canon(v: Any) -> Any:
    v = _native(v)
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
        fixed = {**fixed, SEED: _native(seed)}
    return sample_key({**meta, "space": space, "fixed": fixed})


def _finite(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f if math.isfinite(f) else math.nan


def _completed(trials: pd.DataFrame, metric: str) -> pd.DataFrame:
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
    done = _completed(trials, metric)
    if not len(done):
        return out
    cols = _sample_columns(metric)
    have = [c for c in cols if steps is not None and c in steps.columns]
    kind = str(meta.get("kind") or "train") if isinstance(meta, dict) else "train"
    median = metric.endswith("_median")
    proportion = bool(_PROPORTION.search(metric)) and not median
    fixed = meta.get("fixed") if isinstance(meta, dict) and isinstance(meta.get("fixed"), dict) else {}
    for _, r in done.iterrows():
        tid = str(r["trial_id"])
        value = float(pd.to_numeric(pd.Series([r[metric]]), errors="coerce").iloc[0])
        seed = _native(r.get(SEED)) if SEED in r else None
        n, within, aligned = _finite(r.get("eval_n")), math.nan, None
        if have and steps is not None:
            mine = steps[steps["trial_id"].astype(str) == tid]
            flat = _samples(mine, have) if len(mine) else None
            if flat is not None:
                n, within = float(flat.size), float(np.var(flat, ddof=1))
            if len(mine) and "phase" in mine:
                aligned = _aligned(mine, have, kind)
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
    done = _completed(trials, metric)
    if not len(done) or SEED not in done:
        return False
    keys = [config_key(r, params) for _, r in done.iterrows()]
    seeds: dict[Any, set[Any]] = {}
    for k, s in zip(keys, done[SEED].map(_canon), strict=True):
        if s is not None:
            seeds.setdefault(k, set()).add(s)
    return any(len(v) >= 2 for v in seeds.values())


def _components_dict(c: Components, shared: bool | None) -> dict[str, Any] | None:
    if not (c.seeds >= 2 and math.isfinite(c.between) and math.isfinite(c.within) and c.n > 0):
        return None
    return {
        "between": c.between,
        "within": c.within,
        "n": c.n,
        "evaluation": c.evaluation,
        "sd_training": math.sqrt(c.between),
        "sd_evaluation": math.sqrt(c.evaluation),
        "shared_samples": shared,
    }


def _shared(values: Sequence[SeedValue]) -> bool | None:
    """Whether every seed was scored on the same samples (None: cannot be told)."""
    keys = {v.split for v in values}
    if None in keys or len(values) < 2:
        return None
    return len(keys) == 1


def describe(values: Sequence[SeedValue], level: float = 0.95) -> dict[str, Any]:
    """One configuration over its seeds: mean with its t interval over seeds, spread, the
    per-seed values and the variance components (None when the evaluations' per-sample
    variance is unknown)."""
    xs = [v.value for v in values]
    mean, lo, hi, s = t_interval(xs, level)
    comp = variance_components(xs, [v.within for v in values], [v.n for v in values])
    return {
        "mean": mean,
        "ci": [lo, hi] if s >= 2 else None,
        "seeds": s,
        "sd": float(np.std(xs, ddof=1)) if s >= 2 else None,
        "min": min(xs) if xs else None,
        "max": max(xs) if xs else None,
        "per_seed": {str(v.seed): v.value for v in values},
        "trial_ids": [v.trial_id for v in values],
        "components": _components_dict(comp, _shared(values)),
    }


def _paired_samples(a: SeedValue, b: SeedValue) -> np.ndarray | None:
    if a.samples is None or b.samples is None or a.key is None or a.key != b.key:
        return None
    if a.samples.shape != b.samples.shape:
        return None
    d = a.samples - b.samples
    d = d[np.isfinite(d)]
    return d if d.size >= 2 else None


def _needs(
    diff: float, comp: Components, seeds: int, level: float, shared: bool | None, spread: float
) -> tuple[float, float, float, float]:
    """``(seeds needed, samples per seed needed, training variance, evaluation variance)``
    for ``diff`` to be told apart. Seeds: from the observed spread of the per-seed values
    (valid whatever its make-up). Samples: from the training share, which samples cannot
    remove; when every seed scored the same samples the evaluation share is only bounded
    from above (by ``within / n`` and by the spread itself), so the training share used is
    a lower bound and the samples needed are finite only where even it allows."""
    total = spread if math.isfinite(spread) else comp.of_mean
    s_need = seeds_needed(diff, total, 0.0, 1.0, level)
    if not (math.isfinite(comp.within) and comp.n > 0):
        return s_need, math.inf, math.nan, math.nan
    ev = comp.evaluation
    if shared and math.isfinite(total):
        ev = min(ev, total)
        between = max(0.0, total - ev)
    else:
        between = comp.between
    return s_need, samples_needed(diff, between, comp.within, seeds, level), between, ev


def remedy(
    diff: float,
    comp: Components,
    seeds: int,
    level: float = 0.95,
    shared: bool | None = None,
    spread: float = math.nan,
) -> str:
    """Which dimension must grow for a difference ``diff`` (undecided over ``seeds`` seeds,
    spreading between seeds as ``comp`` says, or by ``spread``: the variance of the per-seed
    values) to be told apart: seeds, or samples per seed. ``shared``: every seed scored the
    same samples (then the evaluation share is an upper bound; see :func:`_needs`).

    Example: the training seed moves the difference by 0.03 (sd), a seed's evaluation by
    0.01: no number of samples separates 0.02 at 3 seeds; more seeds do.

        >>> c = Components(between=9e-4, within=0.036, n=360.0, seeds=3)
        >>> print(remedy(0.02, c, 3))  # doctest: +NORMALIZE_WHITESPACE
        training noise dominates (sd 0.03 between seeds, against 0.01 for one seed's evaluation of
        360 samples): more samples per seed cannot tell a difference of +0.02 apart at 3 seeds; about
        13 seeds per configuration would
    """
    if seeds < 2:
        return (
            f"one seed in common: no interval over seeds; run {jiio()} confirm with --seeds 3 or more "
            "(the same seeds for both)"
        )
    if not math.isfinite(diff) or diff == 0:
        return "no difference was observed: no number of seeds or samples would tell them apart"
    s_need, n_need, between, ev = _needs(diff, comp, seeds, level, shared, spread)
    seeds_txt = (
        f"about {s_need} seeds per configuration would"
        if math.isfinite(s_need)
        else "no feasible number of seeds would"
    )
    if not math.isfinite(between):
        return (
            "the evaluations' per-sample variance is unknown, so the spread over seeds cannot be split "
            f"into training and evaluation noise; {seeds_txt}"
        )
    least, most = (">= ", "<= ") if shared else ("", "")
    what = (
        f"(sd {least}{math.sqrt(between):.2g} between seeds, against {most}{math.sqrt(ev):.2g} for one "
        f"seed's evaluation of {comp.n:.0f} samples)"
    )
    if not math.isfinite(n_need):
        return (
            f"training noise dominates {what}: more samples per seed cannot tell a difference of "
            f"{diff:+.2g} apart at {seeds} seeds; {seeds_txt}"
        )
    if shared:
        return (
            f"every seed scored the same samples, so how much of the spread over seeds {what} more "
            f"samples would remove cannot be told; {seeds_txt} (at {comp.n:.0f} samples each)"
        )
    dominant = "training" if between >= ev else "evaluation"
    return (
        f"{dominant} noise dominates {what}: {seeds_txt} (at {comp.n:.0f} samples each), or about "
        f"{n_need} samples per seed at {seeds} seeds"
    )


def versus(
    a: Sequence[SeedValue],
    b: Sequence[SeedValue],
    mode: str,
    level: float = 0.95,
    label: str = "this configuration",
    against: str = PAPER,
) -> dict[str, Any]:
    """Configuration ``a`` against ``b`` (the paper's), paired by seed: the per-seed
    differences (the mean of per-sample differences where both seeds were scored on the
    same samples, else the difference of the values) and their t interval over seeds.

    ``difference`` and ``ci`` are positive when ``a`` is better (``mode`` max: higher).
    ``verdict``: :data:`BEATS` when the interval lies above 0, :data:`WORSE` below, else
    :data:`SAME`; ``seeds``: the seeds both have; ``paired_by``: "seed and sample" or
    "seed"; ``components``: the difference's variance components; ``text``: one line, with
    the remedy when undecided."""
    sign = 1.0 if mode == "max" else -1.0
    by_seed = {v.seed: v for v in b if v.seed is not None}
    diffs, withins, ns, by_sample = [], [], [], True
    shared: set[str | None] = set()
    for va in a:
        vb = by_seed.get(va.seed)
        if vb is None or va.seed is None:
            continue
        shared.add(va.split if va.split == vb.split else None)
        d = _paired_samples(va, vb)
        if d is not None:
            diffs.append(sign * float(d.mean()))
            withins.append(float(np.var(d, ddof=1)))
            ns.append(float(d.size))
            continue
        by_sample = False
        diffs.append(sign * (va.value - vb.value))
        n = min(va.n, vb.n)
        ns.append(n)
        withins.append(n * (va.within / va.n + vb.within / vb.n) if n > 0 else math.nan)
    mean, lo, hi, s = t_interval(diffs, level)
    comp = variance_components(diffs, withins, ns)
    paired_by = "seed and sample" if by_sample and diffs else "seed"
    same_samples = (len(shared) == 1 and None not in shared) if s >= 2 else None
    out: dict[str, Any] = {
        "difference": mean if s else None,
        "ci": [lo, hi] if s >= 2 else None,
        "seeds": s,
        "paired_by": paired_by,
        "components": _components_dict(comp, same_samples),
    }
    if s >= 2 and lo > 0:
        out["verdict"] = BEATS if against == PAPER else f"beats {against}"
    elif s >= 2 and hi < 0:
        out["verdict"] = WORSE if against == PAPER else f"worse than {against}"
    else:
        out["verdict"] = SAME
    lower = ", lower is better" if mode == "min" else ""
    if not s:
        out["text"] = f"{label}: no seed in common with {against}: nothing to pair"
        return out
    ci = (
        f"difference {mean:+.4g}{lower}, 95% interval [{lo:.4g}, {hi:.4g}] "
        f"over {s} seeds paired by {paired_by}"
        if s >= 2
        else f"difference {mean:+.4g}{lower} on 1 seed"
    )
    if out["verdict"] != SAME:
        out["text"] = f"{label} {out['verdict']}: {ci}"
        return out
    spread = float(np.var(diffs, ddof=1)) if s >= 2 else math.nan
    shared = bool(same_samples)
    need_s, need_n, _, _ = _needs(mean, comp, s, level, shared, spread)
    out["seeds_needed"] = int(need_s) if math.isfinite(need_s) else None
    out["samples_needed"] = int(need_n) if math.isfinite(need_n) and not shared else None
    contains = ", which contains 0" if s >= 2 else ""
    text = f"{label} and {against} cannot be told apart: {ci}{contains}; "
    out["text"] = text + remedy(mean, comp, s, level, shared=shared, spread=spread)
    return out


def _groups(
    trials: pd.DataFrame, values: dict[str, SeedValue], params: list[str]
) -> dict[tuple, tuple[list[SeedValue], int, dict[str, Any]]]:
    """Configuration key -> (its seed values, trials not completed, its parameters)."""
    out: dict[tuple, tuple[list[SeedValue], int, dict[str, Any]]] = {}
    for _, r in trials.iterrows():
        key = config_key(r, params)
        vals, bad, p = out.setdefault(key, ([], 0, {k: _native(r.get(k)) for k in params if k != SEED}))
        v = values.get(str(r["trial_id"]))
        if v is not None:
            vals.append(v)
        else:
            out[key] = (vals, bad + 1, p)
    return out


def _optimism(
    sweep_value: float, vals: Sequence[SeedValue], mode: str, level: float
) -> dict[str, Any] | None:
    """The sweep's value minus the confirmed mean (positive: the sweep's looked better),
    with the t interval of one more seed's draw against the mean of ``S``: half-width
    ``t(S-1) * sd * sqrt(1 + 1/S)``."""
    xs = [v.value for v in vals]
    if not xs or not math.isfinite(sweep_value):
        return None
    sign = 1.0 if mode == "max" else -1.0
    opt = sign * (sweep_value - float(np.mean(xs)))
    if len(xs) < 2:
        return {"value": opt, "ci": None}
    half = t_quantile(level, len(xs) - 1) * float(np.std(xs, ddof=1)) * math.sqrt(1 + 1 / len(xs))
    return {"value": opt, "ci": [opt - half, opt + half]}


def _table(
    groups: dict[tuple, tuple[list[SeedValue], int, dict[str, Any]]],
    paper_key: tuple | None,
    mode: str,
    level: float,
    labels: dict[tuple, list[str]],
) -> list[dict[str, Any]]:
    paper = groups.get(paper_key)[0] if paper_key in groups else None
    rows = []
    for key, (vals, bad, params) in groups.items():
        row: dict[str, Any] = {"params": params, "labels": labels.get(key, []), **describe(vals, level)}
        row["not_completed"] = bad
        row["is_paper"] = key == paper_key
        if row["is_paper"]:
            row["verdict"] = PAPER
        elif paper:
            name = ", ".join(row["labels"]) or "configuration"
            vs = versus(vals, paper, mode, level, label=name)
            row["vs_paper"] = vs
            row["verdict"] = vs["verdict"]
        rows.append(row)
    return rows


def seed_summary(
    trials: pd.DataFrame,
    meta: dict[str, Any],
    metric: str,
    mode: str,
    params: Sequence[str],
    steps: pd.DataFrame | None = None,
    level: float = 0.95,
    top: int = 10,
) -> dict[str, Any]:
    """A sweep whose configurations have several seeds: each configuration over its seeds
    (best mean first, labelled "paper" and by rank; the best ``top`` and the paper's), and
    each against the paper's configuration (``meta["paper_trial_ids"]``) paired by seed."""
    params = [p for p in params if p != SEED]
    values = seed_values(trials, metric, steps, meta)
    groups = _groups(trials, values, params)
    ids = meta.get("paper_trial_ids") if isinstance(meta, dict) else None
    paper_key = None
    if isinstance(ids, list) and ids and "trial_id" in trials:
        rows = trials[trials["trial_id"].astype(str).isin([str(i) for i in ids])]
        keys = {config_key(r, params) for _, r in rows.iterrows()}
        paper_key = keys.pop() if len(keys) == 1 else None
    sign = 1.0 if mode == "max" else -1.0
    order = sorted(
        groups, key=lambda k: -sign * np.mean([v.value for v in groups[k][0]]) if groups[k][0] else math.inf
    )
    labels = {}
    for rank, key in enumerate(order, 1):
        labels[key] = ["best mean over seeds" if rank == 1 else f"rank {rank} by mean"]
        if key == paper_key:
            labels[key].insert(0, "paper")
    shown = [k for i, k in enumerate(order) if i < top or k == paper_key]
    out = {
        "metric": metric,
        "mode": mode,
        "level": level,
        "configs": _table({k: groups[k] for k in shown}, paper_key, mode, level, labels),
        "notes": [],
    }
    if len(shown) < len(order):
        out["notes"].append(f"{len(order) - len(shown)} more configurations not shown (the best {top} are)")
    if paper_key is None:
        out["notes"].append("no paper configuration among these trials: no verdicts")
    return out


def _why(n: int, top: int | None, paper_in_top: bool | None, completed: int | None) -> str:
    if top is None:
        return f"{n} configurations"
    text = f"{n} configurations for --top {top}: "
    k = min(top, completed) if completed is not None else top
    if paper_in_top is None:
        text += f"the sweep's {k} best (the paper's configuration is not in the sweep)"
    elif paper_in_top:
        text += f"the sweep's {k} best, the paper's among them"
    else:
        text += (
            f"the sweep's {k} best and the paper's, added as the reference every verdict is paired against"
        )
    if completed is not None and completed < top:
        text += f" (only {completed} trials of the sweep completed)"
    return text


def confirm_summary(
    parent_meta: dict[str, Any],
    parent_trials: pd.DataFrame,
    confirm_trials: pd.DataFrame,
    confirm_steps: pd.DataFrame | None = None,
    confirm_meta: dict[str, Any] | None = None,
    top: int | None = None,
    level: float = 0.95,
) -> dict[str, Any]:
    """What a confirmation found, from the rows of the sweep and of its confirm sweep.

    Per configuration (the order of the sweep's ranking): its trial id in the sweep, its
    labels (paper, the sweep's best, its rank in the sweep), its value in the sweep, its
    mean over the new seeds with the t interval, the difference against the paper's
    configuration paired by seed with its interval and the verdict, and the selection
    optimism (the sweep's value minus the confirmed mean, with an interval; also against
    the paper's, which the sweep did not select: what is left is selection). ``why`` says
    why these configurations.
    """
    metric, mode = parent_meta["metrics"][0], parent_meta["modes"][0]
    params = [k for k in parent_meta.get("space", {}) if k != SEED]
    sign = 1.0 if mode == "max" else -1.0
    ranked = _completed(parent_trials, metric)
    if len(ranked):
        ranked = ranked.assign(_v=pd.to_numeric(ranked[metric], errors="coerce")).sort_values(
            "_v", ascending=mode == "min", kind="stable"
        )
    rank: dict[tuple, tuple[int, str, float]] = {}
    for i, (_, r) in enumerate(ranked.iterrows(), 1):
        rank.setdefault(config_key(r, params), (i, str(r["trial_id"]), float(r["_v"])))
    ids = [str(i) for i in parent_meta.get("paper_trial_ids") or []]
    paper_rows = parent_trials[parent_trials["trial_id"].astype(str).isin(ids)] if len(parent_trials) else []
    paper_key = config_key(paper_rows.iloc[0], params) if len(paper_rows) else None
    paper_tid = str(paper_rows.iloc[0]["trial_id"]) if len(paper_rows) else None
    if confirm_meta is None:
        space = dict(parent_meta.get("space") or {})
        space[SEED] = {"kind": "choice"}
        confirm_meta = {**parent_meta, "space": space}
    values = seed_values(confirm_trials, metric, confirm_steps, confirm_meta)
    groups = _groups(confirm_trials, values, params) if len(confirm_trials) else {}
    order = sorted(groups, key=lambda k: rank.get(k, (math.inf,))[0])
    groups = {k: groups[k] for k in order}
    labels: dict[tuple, list[str]] = {}
    for key in order:
        r = rank.get(key)
        lab = [] if r is None else ["sweep's best" if r[0] == 1 else f"rank {r[0]} in the sweep"]
        if key == paper_key:
            lab.insert(0, "paper")
            if r is None:
                lab.append("did not complete in the sweep")
        labels[key] = lab
    rows = _table(groups, paper_key, mode, level, labels)
    paper_row = next((row for row in rows if row["is_paper"]), None)
    paper_vals = groups[paper_key][0] if paper_key in groups else []
    for key, row in zip(order, rows, strict=True):
        r = rank.get(key)
        row["trial_id"] = r[1] if r else (paper_tid if key == paper_key else None)
        row["rank"] = r[0] if r else None
        row["sweep_value"] = r[2] if r else None
        row["optimism"] = _optimism(r[2], groups[key][0], mode, level) if r else None
        paper_rank = rank.get(paper_key) if paper_key is not None else None
        if r and paper_rank and not row["is_paper"] and paper_vals:
            by_seed = {v.seed: v.value for v in paper_vals}
            d = [sign * (v.value - by_seed[v.seed]) for v in groups[key][0] if v.seed in by_seed]
            d0 = sign * (r[2] - paper_rank[2])
            if len(d) >= 2:
                half = t_quantile(level, len(d) - 1) * float(np.std(d, ddof=1)) * math.sqrt(1 + 1 / len(d))
                rel = d0 - float(np.mean(d))
                row["optimism_vs_paper"] = {"value": rel, "ci": [rel - half, rel + half]}
    seeds = sorted({str(v.seed) for v in values.values()})
    paper_in_top = None if paper_key is None else (paper_key in rank and rank[paper_key][0] <= (top or 0))
    out: dict[str, Any] = {
        "metric": metric,
        "mode": mode,
        "level": level,
        "seeds": seeds,
        "why": _why(len(rows), top, paper_in_top, len(ranked)),
        "configs": rows,
        "notes": [],
    }
    if paper_row is None:
        out["notes"].append(
            "the paper's configuration has no completed trial in the confirmation: no verdicts"
            if paper_key is not None
            else "the sweep has no paper configuration: no verdicts"
        )
    bad = sum(row["not_completed"] for row in rows)
    if bad:
        out["notes"].append(
            f"{bad} confirmation trials did not complete (diverged, pruned or errored): left out"
        )
    return out
