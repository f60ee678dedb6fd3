"""95% intervals of trial objectives, and whether one configuration beats another.

An accuracy-like objective (``*acc*``, ``*_rate``, ``*_frac``, in [0, 1]) measured on
``eval_n`` samples gets a Wilson interval; a mean (or ``*_median``) objective whose
per-sample values are in the trial's eval or solve step rows (``<metric>_samples``) gets a
bootstrap interval; otherwise the interval is unknown ("n unknown"). One configuration
beats another only when their intervals do not overlap; otherwise :func:`compare_values`
says by how much the evaluation would have to grow for the difference to separate them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.analysis.engine import Source
from orchestrator.stats import bootstrap, interval_growth, separated, wilson_for, wilson_growth

__all__ = ["Interval", "compare_values", "intervals"]

_PROPORTION = re.compile(r"(^|_)(acc|accuracy|rate|frac)(_|$)")


@dataclass(frozen=True)
class Interval:
    """A 95% interval of one trial's objective: ``method`` wilson | bootstrap, or None when
    it cannot be computed (``n`` unknown, or no per-sample values)."""

    lo: float = math.nan
    hi: float = math.nan
    n: int | None = None
    method: str | None = None

    @property
    def known(self) -> bool:
        return self.method is not None and math.isfinite(self.lo) and math.isfinite(self.hi)

    def text(self) -> str:
        if self.known:
            return f"[{self.lo:.4g}, {self.hi:.4g}] n={self.n}"
        return "n unknown" if self.n is None else f"n={self.n}, no per-sample values"


def _sample_columns(metric: str) -> list[str]:
    base = re.sub(r"_(median|mean)$", "", metric)
    return list(dict.fromkeys([f"{metric}_samples", f"{base}_samples"]))


def intervals(src: Source, sweep: str, rows: pd.DataFrame, metric: str) -> dict[str, Interval]:
    """95% intervals of ``metric`` for the trials in ``rows`` (trial rows), by trial id."""
    out: dict[str, Interval] = {}
    if not len(rows) or metric not in rows:
        return out
    cols = _sample_columns(metric)
    steps = src.rows("steps", sweep, rows["trial_id"].astype(str), ["phase", *cols])
    have = [c for c in cols if c in steps.columns]
    stat = "median" if metric.endswith("_median") else "mean"
    for _, r in rows.iterrows():
        tid, value = str(r["trial_id"]), pd.to_numeric(pd.Series([r.get(metric)]), errors="coerce").iloc[0]
        n_raw = r.get("eval_n")
        n = (
            int(n_raw)
            if isinstance(n_raw, (int, float, np.number)) and np.isfinite(n_raw) and n_raw > 0
            else None
        )
        samples = _samples(steps[steps["trial_id"] == tid], have) if have else None
        if samples is not None:
            lo, hi = bootstrap(samples, statistic=stat)
            out[tid] = Interval(lo, hi, len(samples), "bootstrap")
        elif n and _PROPORTION.search(metric) and np.isfinite(value) and 0 <= value <= 1:
            lo, hi = wilson_for(float(value), n)
            out[tid] = Interval(lo, hi, n, "wilson")
        else:
            out[tid] = Interval(n=n)
    return out


def _samples(steps: pd.DataFrame, cols: list[str]) -> np.ndarray | None:
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


def compare_values(
    a: tuple[str, float, Interval], b: tuple[str, float, Interval], metric: str, mode: str
) -> dict[str, Any]:
    """Whether configuration ``a`` (label, value, interval) beats ``b``: ``significant`` is
    True only when the 95% intervals separate, None when an interval is unknown; ``text``
    says so in words, with the growth of the evaluation that would make the difference
    significant when it is not."""
    (la, va, ia), (lb, vb, ib) = a, b
    diff = va - vb if mode == "max" else vb - va
    diff = float(diff)
    out: dict[str, Any] = {"difference": diff, "significant": None}
    head = f"{la} - {lb} = {diff:+.4g} ({metric}{', lower is better' if mode == 'min' else ''})"
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
