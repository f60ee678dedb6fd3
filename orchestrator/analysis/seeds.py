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

Reading rows into replicates is :mod:`~orchestrator.analysis.seed_values`, the verdicts
:mod:`~orchestrator.analysis.seed_verdicts`; here are the summaries built on them. Everything
is a pure function of rows (pandas frames and the sweeps' metadata): no storage, no Ray.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.analysis.seed_values import (
    SEED,
    SeedValue,
    completed_rows,
    config_key,
    plain_value,
    seed_values,
)
from orchestrator.analysis.seed_verdicts import PAPER, describe, versus
from orchestrator.driver.hints import jiio
from orchestrator.stats import (
    t_quantile,
)

__all__ = ["confirm_summary", "evaluation_only", "seed_summary"]


def evaluation_only(root: str, sweep: str) -> str:
    """The line for a sweep with one training seed per configuration."""
    return (
        "these intervals cover evaluation noise only (which held-out samples were scored): every "
        "configuration was trained with one seed, so what retraining with another seed moves is in "
        "none of them, and more samples cannot shrink it; "
        f"`{jiio()} confirm {root} --name {sweep} --top 3 --seeds 3` measures it"
    )


def _groups(
    trials: pd.DataFrame, values: dict[str, SeedValue], params: list[str]
) -> dict[tuple, tuple[list[SeedValue], int, dict[str, Any]]]:
    """Configuration key -> (its seed values, trials not completed, its parameters)."""
    out: dict[tuple, tuple[list[SeedValue], int, dict[str, Any]]] = {}
    for _, r in trials.iterrows():
        key = config_key(r, params)
        vals, bad, p = out.setdefault(key, ([], 0, {k: plain_value(r.get(k)) for k in params if k != SEED}))
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
    ranked = completed_rows(parent_trials, metric)
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
