"""Verdicts over seeds: one configuration described over its seeds, and against the paper's.

What: :func:`describe` (mean over seeds with its Student-t interval, spread, variance
components), :func:`versus` (a configuration against the paper's, paired by seed and, where
both scored the same samples, by sample: :data:`BEATS`, :data:`SAME` or :data:`WORSE`) and
:func:`remedy` (which dimension, seeds or samples per seed, must grow to tell a difference
apart). Why here: these are the statistics of replicates, separate from reading them out of
rows (:mod:`~orchestrator.analysis.seed_values`) and from the sweep summaries built on
them (:mod:`~orchestrator.analysis.seeds`). Pure functions: no storage, no Ray.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from orchestrator.analysis.seed_values import SeedValue
from orchestrator.driver.hints import jiio
from orchestrator.stats import (
    Components,
    samples_needed,
    seeds_needed,
    t_interval,
    variance_components,
)

__all__ = ["BEATS", "PAPER", "SAME", "WORSE", "describe", "remedy", "versus"]


BEATS, SAME, WORSE = "beats the paper's settings", "cannot be told apart", "worse than the paper's settings"


PAPER = "the paper's settings"


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
