"""95% intervals of trial objectives, and whether one configuration beats another.

An accuracy-like objective (``*acc*``, ``*_rate``, ``*_frac``, in [0, 1]) measured on
``eval_n`` samples gets a Wilson interval; a mean (or ``*_median``) objective whose
per-sample values are in the trial's eval or solve step rows (``<metric>_samples``) gets a
bootstrap interval; otherwise the interval is unknown ("n unknown"). One configuration
beats another only when their intervals do not overlap; otherwise :func:`compare_values`
says by how much the evaluation would have to grow for the difference to separate them.

Paired comparison: when both configurations were scored on the same samples in the same
order, :func:`compare_values` tests the per-sample differences instead (a paired
bootstrap, :func:`orchestrator.stats.paired_bootstrap`): what the samples share (how hard
each one is) cancels, and the interval of the difference is far narrower than the two
separate intervals. "The same samples" is decided conservatively, from the sweep's
metadata (``meta/sweep=NAME/sweep.json``, which a resume cannot change) and the step rows:

- the sweep records its kind (``solve`` or ``train``), fixed settings, data config and
  search space (and, for a solve sweep, its checkpoint), and none of the settings that
  choose or corrupt the held-out samples (:data:`SAMPLE_KEYS`: the data config, the seed,
  batch size, number of eval batches, task, noise level) is searched. The held-out split
  depends on the data config alone (``orchestrator.data``: digits' split and every
  ``limit_test`` subset are seeded by its ``seed``); evaluation takes its first
  ``eval_batches`` batches unshuffled, and the corruptions of the inverse tasks come from
  a generator seeded by the task's seed. Two trials whose sweeps agree on all of these
  (:func:`sample_key`: the same sweep, or two sweeps with equal settings and data, and for
  solve sweeps the same checkpoint) were scored on the same samples;
- every value is at its place: a solve trial's rows (phase ``solve``, one per batch) each
  list every sample of their batch (as many values as the row's ``eval_n``, NaN where the
  solve diverged; rows written before ``eval_n`` was recorded listed the solved samples
  only, so they count only when no sample of the batch diverged); a training trial's last
  ``eval`` row lists ``eval_n`` values;
- the two lists have the same length.

Otherwise (a sweep without that metadata, a searched seed, accuracies, which have no
per-sample values) the comparison stays unpaired.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.analysis.engine import Source
from orchestrator.stats import (
    bootstrap,
    interval_growth,
    paired_bootstrap,
    separated,
    wilson_for,
    wilson_growth,
    zero_growth,
)

__all__ = [
    "PROPORTION",
    "SAMPLE_KEYS",
    "Interval",
    "PerSample",
    "aligned_samples",
    "compare_values",
    "final_samples",
    "intervals",
    "sample_columns",
    "sample_key",
]

#: metric names that are proportions (accuracies, rates, fractions): Wilson intervals from a count
PROPORTION = re.compile(r"(^|_)(acc|accuracy|rate|frac)(_|$)")
# Settings that choose or alter the held-out samples a trial is scored on: the data config
# (orchestrator.data.DataConfig) and the task's seed (its eval corruptions), batch size and
# number of eval batches (which samples), task and noise level (what is observed).
_DATA_KEYS = ("dataset", "data_root", "image_size", "val_fraction", "seed", "limit_train", "limit_test")
SAMPLE_KEYS = (*_DATA_KEYS, "task", "batch_size", "eval_batches", "noise_sigma")


@dataclass(frozen=True, eq=False)
class PerSample:
    """A trial's per-sample values of one metric, in evaluation order (NaN where a sample has
    no value), and ``key``: what they were computed on (:func:`sample_key`). Two lists with
    the same key and length are on the same samples in the same order."""

    values: np.ndarray
    key: str

    def __len__(self) -> int:
        return int(self.values.size)

    def __str__(self) -> str:  # compact in ``--json`` output (json.dumps(default=str))
        return f"<{len(self)} per-sample values>"

    __repr__ = __str__


@dataclass(frozen=True)
class Interval:
    """A 95% interval of one trial's objective: ``method`` wilson | bootstrap, or None when
    it cannot be computed (``n`` unknown, or no per-sample values)."""

    lo: float = math.nan
    hi: float = math.nan
    n: int | None = None
    method: str | None = None
    per_sample: PerSample | None = field(default=None, compare=False, repr=False)

    @property
    def known(self) -> bool:
        return self.method is not None and math.isfinite(self.lo) and math.isfinite(self.hi)

    def text(self) -> str:
        if self.known:
            return f"[{self.lo:.4g}, {self.hi:.4g}] n={self.n}"
        return "n unknown" if self.n is None else f"n={self.n}, no per-sample values"


def sample_columns(metric: str) -> list[str]:
    """The step-row columns that may hold ``metric``'s per-sample values: its own
    ``<metric>_samples``, then that of the mean it summarises (``psnr_median`` -> ``psnr``)."""
    base = re.sub(r"_(median|mean)$", "", metric)
    return list(dict.fromkeys([f"{metric}_samples", f"{base}_samples"]))


def sample_key(meta: dict[str, Any] | None) -> str | None:
    """What the per-sample values of a sweep's trials are computed on, as a string equal for
    two sweeps exactly when their trials were scored on the same held-out samples in the
    same order; None when the sweep's metadata cannot vouch for it (see the module
    docstring).

    Example:
        >>> meta = {"kind": "solve", "checkpoint": "m.pt", "space": {"alpha_x": {}},
        ...         "data": {"dataset": "digits", "seed": 0}, "fixed": {"eval_batches": 2}}
        >>> sample_key(meta) == sample_key({**meta, "space": {"max_iter": {}}})
        True
        >>> sample_key({**meta, "space": {"seed": {}}}) is None  # a searched seed
        True
    """
    if not isinstance(meta, dict):
        return None
    kind, fixed, data, space = (meta.get(k) for k in ("kind", "fixed", "data", "space"))
    if kind not in ("solve", "train") or not isinstance(fixed, dict) or not isinstance(data, dict):
        return None
    if not isinstance(space, (dict, list)) or set(map(str, space)) & set(SAMPLE_KEYS):
        return None
    key: dict[str, Any] = {"kind": kind, "data": data, "fixed": {k: fixed.get(k) for k in SAMPLE_KEYS}}
    if kind == "solve":
        if not meta.get("checkpoint"):
            return None
        key["checkpoint"] = meta["checkpoint"]
    return json.dumps(key, sort_keys=True, default=repr)


def intervals(
    src: Source, sweep: str, rows: pd.DataFrame, metric: str, meta: dict[str, Any] | None = None
) -> dict[str, Interval]:
    """95% intervals of ``metric`` for the trials in ``rows`` (trial rows), by trial id; each
    carries the trial's per-sample values (``per_sample``) when the sweep's metadata
    ``meta`` says on which samples they are and the rows list them in order (see the module
    docstring)."""
    out: dict[str, Interval] = {}
    if not len(rows) or metric not in rows:
        return out
    cols = sample_columns(metric)
    extra = ["phase", "eval_n", "solver_diverged"]
    steps = src.rows("steps", sweep, rows["trial_id"].astype(str), [*extra, *cols])
    have = [c for c in cols if c in steps.columns]
    key = sample_key(meta)
    stat = "median" if metric.endswith("_median") else "mean"
    for _, r in rows.iterrows():
        tid, value = str(r["trial_id"]), pd.to_numeric(pd.Series([r.get(metric)]), errors="coerce").iloc[0]
        n_raw = r.get("eval_n")
        n = (
            int(n_raw)
            if isinstance(n_raw, (int, float, np.number)) and np.isfinite(n_raw) and n_raw > 0
            else None
        )
        mine = steps[steps["trial_id"] == tid]
        samples = final_samples(mine, have) if have else None
        if samples is not None:
            lo, hi = bootstrap(samples, statistic=stat)
            aligned = aligned_samples(mine, have, str(meta.get("kind"))) if key and meta else None
            paired = PerSample(aligned, key) if key and aligned is not None else None
            out[tid] = Interval(lo, hi, len(samples), "bootstrap", paired)
        elif n and PROPORTION.search(metric) and np.isfinite(value) and 0 <= value <= 1:
            lo, hi = wilson_for(float(value), n)
            out[tid] = Interval(lo, hi, n, "wilson")
        else:
            out[tid] = Interval(n=n)
    return out


def final_samples(steps: pd.DataFrame, cols: list[str]) -> np.ndarray | None:
    """Per-sample values of a trial's final evaluation: the last eval row's list, or every
    solve row's lists together (a solve sweep reports one row per batch)."""
    for col in cols:
        rows = steps[steps[col].map(lambda v: v is not None and hasattr(v, "__len__") and len(v) > 0)]
        if not len(rows):
            continue
        if "phase" in rows and (rows["phase"] == "solve").all():
            values = np.concatenate([np.asarray(v, dtype=float) for v in rows[col]])
        else:
            values = np.asarray(rows.sort_values("step")[col].iloc[-1], dtype=float)
        values = values[np.isfinite(values)]
        if values.size >= 2:
            return values
    return None


def _listed(v: Any) -> bool:
    return v is not None and hasattr(v, "__len__") and not isinstance(v, str)


def _number(v: Any) -> float:
    return float(v) if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) else math.nan


def aligned_samples(steps: pd.DataFrame, cols: list[str], kind: str) -> np.ndarray | None:
    """A trial's per-sample values of its final evaluation with every sample at its place
    (NaN kept): every ``solve`` row in step order (``kind`` solve) or the last ``eval`` row;
    None when a row does not show that it lists every sample (see the module docstring)."""
    for col in cols:
        rows = steps[steps["phase"] == ("solve" if kind == "solve" else "eval")] if "phase" in steps else []
        if col not in steps or not len(rows) or not rows[col].map(_listed).any():
            continue
        rows = rows.sort_values("step")
        if kind != "solve":
            rows = rows[rows[col].map(_listed)].tail(1)
        parts = []  # a solve row without its list: its batch's samples are missing
        for _, r in rows.iterrows():
            if not _listed(r[col]) or not len(r[col]):
                return None
            values = np.asarray(r[col], dtype=float).ravel()
            n = _number(r.get("eval_n"))
            if not (
                n == values.size
                or (math.isnan(n) and kind == "solve" and _number(r.get("solver_diverged")) == 0)
            ):
                return None  # older solve rows list the solved samples only: whole when none diverged
            parts.append(values)
        return np.concatenate(parts)
    return None


def _paired(ia: Interval, ib: Interval) -> tuple[np.ndarray, np.ndarray] | None:
    pa, pb = ia.per_sample, ib.per_sample
    if pa is None or pb is None or pa.key != pb.key or len(pa) != len(pb):
        return None
    return pa.values, pb.values


def _compare_paired(
    a: tuple[str, float, Interval], b: tuple[str, float, Interval], metric: str, mode: str, head: str
) -> dict[str, Any] | None:
    """The verdict from the per-sample differences, or None when the two cannot be paired."""
    (la, va, ia), (lb, vb, ib) = a, b
    pair = _paired(ia, ib)
    if pair is None:
        return None
    stat = "median" if metric.endswith("_median") else "mean"
    d, lo, hi, n = paired_bootstrap(*pair, statistic=stat)
    if n < 2 or not all(math.isfinite(v) for v in (d, lo, hi)):
        return None
    if mode == "min":  # positive: a is better
        d, lo, hi = -d, -hi, -lo
    diff = float(va - vb if mode == "max" else vb - va)
    out: dict[str, Any] = {"difference": diff, "paired": {"n": n, "difference": d, "interval": [lo, hi]}}
    ci = f"paired over {n} samples: difference {d:+.4g} [{lo:.4g}, {hi:.4g}]"
    ci += " (of the medians)" if stat == "median" else ""
    left = len(pair[0]) - n
    note = (
        f"; {left} samples without a finite value in one or both were left out (the reported values, "
        f"each over its own samples, differ by {diff:+.4g})"
        if left
        else ""
    )
    lower = ", lower is better" if mode == "min" else ""
    if lo > 0 or hi < 0:
        out["significant"] = bool(lo > 0)
        verb = "beats" if lo > 0 else "is worse than"
        out["text"] = f"{la} {verb} {lb} ({metric}{lower}): {ci}, which excludes 0{note}"
        return out
    out["significant"] = False
    growth = zero_growth(d, lo, hi)
    out["growth"] = float(growth)
    text = f"{la} and {lb} cannot be told apart: {head} is inside the noise ({ci}, which contains 0{note})"
    if math.isfinite(growth):
        out["n_needed"] = math.ceil(n * growth)
        text += (
            f"; for a difference this size to be significant the evaluation would have to grow "
            f"about {growth:.3g}x, to n of about {out['n_needed']} samples scored by both"
        )
    else:
        text += "; no difference was observed, so no evaluation size would separate them"
    out["text"] = text
    return out


def compare_values(
    a: tuple[str, float, Interval], b: tuple[str, float, Interval], metric: str, mode: str
) -> dict[str, Any]:
    """Whether configuration ``a`` (label, value, interval) beats ``b``.

    When both intervals carry per-sample values on the same samples (``per_sample``, see
    the module docstring), the test is paired: ``significant`` is True when the 95%
    interval of the difference excludes 0 on ``a``'s side, and ``paired`` holds its ``n``,
    ``difference`` and ``interval`` (positive: ``a`` is better). Otherwise ``significant`` is
    True only when the two 95% intervals separate, None when an interval is unknown.
    ``text`` says so in words, with the growth of the evaluation that would make the
    difference significant when it is not.
    """
    (la, va, ia), (lb, vb, ib) = a, b
    diff = va - vb if mode == "max" else vb - va
    diff = float(diff)
    out: dict[str, Any] = {"difference": diff, "significant": None}
    head = f"{la} - {lb} = {diff:+.4g} ({metric}{', lower is better' if mode == 'min' else ''})"
    paired = _compare_paired(a, b, metric, mode, head)
    if paired is not None:
        return paired
    if not (ia.known and ib.known):
        missing = [lab for lab, iv in ((la, ia), (lb, ib)) if not iv.known]
        out["text"] = (
            f"{head}; {' and '.join(missing)}: n unknown (no eval_n or per-sample values), so whether "
            "this is more than noise cannot be told"
        )
        return out
    ci = f"95% intervals [{ia.lo:.4g}, {ia.hi:.4g}] and [{ib.lo:.4g}, {ib.hi:.4g}]"
    if separated((ia.lo, ia.hi), (ib.lo, ib.hi)):
        out["significant"] = bool(diff > 0)
        verb = "beats" if diff > 0 else "is worse than"
        out["text"] = f"{la} {verb} {lb} by {diff:+.4g} ({metric}): {ci} do not overlap"
        return out
    out["significant"] = False
    if ia.method == ib.method == "wilson" and ia.n and ib.n:
        growth = wilson_growth(va, ia.n, vb, ib.n)
    else:
        growth = interval_growth((ia.lo, ia.hi), (ib.lo, ib.hi), va, vb)
    out["growth"] = float(growth)
    text = f"{la} and {lb} cannot be told apart: {head} is inside the noise ({ci} overlap)"
    if math.isfinite(growth):
        need = max(ia.n or 0, ib.n or 0) * growth
        out["n_needed"] = math.ceil(need)
        text += (
            f"; for a difference this size to be significant the evaluation would have to grow "
            f"about {growth:.3g}x, to n of about {out['n_needed']} samples per configuration"
        )
    else:
        text += "; no difference was observed, so no evaluation size would separate them"
    out["text"] = text
    return out
