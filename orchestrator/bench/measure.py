"""The statistics of ``jiio bench``: intervals of per-sample strengths and losses, of speed
ratios from paired timing runs, and of the step at which a baseline's curve reaches JIIO.

Every interval is 95%. The benches attack (or reconstruct) ``--samples`` held-out images in
batches; each batch is one timing run of every method, in turn, so the times of two methods
on the same batch form a pair. Three kinds of uncertainty are reported:

- a method's strength or loss over the samples: Wilson for an accuracy, a Student-t
  interval of the mean for cross-entropies and reconstruction losses (:func:`mean_interval`);
- a speed ratio from the paired runs: the geometric mean of the per-run ratios with a
  Student-t interval on their logarithms (:func:`ratio_interval`);
- the baseline step that matches JIIO's strength: from the per-sample paired differences
  between the baseline's iterate k and JIIO's result (:func:`crossing`), the first k whose
  mean difference reaches 0, and the range of k over which the two cannot be told apart.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

import torch
from scipy import stats as _st
from torch import Tensor

from orchestrator.stats import wilson

__all__ = [
    "accuracy_interval",
    "crossing",
    "equal_strength",
    "mean_interval",
    "ratio_interval",
    "timing_row",
]


def _t(n: int) -> float:
    return float(_st.t.ppf(0.975, n - 1)) if n > 1 else math.inf


def mean_interval(values: Tensor | Sequence[float]) -> dict[str, float]:
    """Mean of per-sample values with its 95% Student-t interval.

    Example:
        >>> r = mean_interval([1.0, 2.0, 3.0, 4.0])
        >>> r["mean"], round(r["low"], 3), round(r["high"], 3), r["n"]
        (2.5, 0.446, 4.554, 4)
    """
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    v = v[torch.isfinite(v)]
    n = int(v.numel())
    if n == 0:
        return {"mean": math.nan, "low": math.nan, "high": math.nan, "n": 0}
    mean = float(v.mean())
    half = _t(n) * float(v.std(unbiased=True)) / math.sqrt(n) if n > 1 else math.inf
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n}


def accuracy_interval(correct: Tensor) -> dict[str, float]:
    """Accuracy of a 0/1 per-sample vector with its 95% Wilson interval.

    Example:
        >>> r = accuracy_interval(torch.tensor([1, 0, 0, 0]))
        >>> r["mean"], round(r["low"], 3), round(r["high"], 3)
        (0.25, 0.046, 0.699)
    """
    c = torch.as_tensor(correct).flatten()
    n = int(c.numel())
    k = float(c.float().sum())
    low, high = wilson(k, n)
    return {"mean": k / n if n else math.nan, "low": low, "high": high, "n": n}


def ratio_interval(num: Sequence[float], den: Sequence[float]) -> dict[str, float]:
    """Speed ratio ``num / den`` from paired timing runs: geometric mean of the per-run ratios
    and its 95% Student-t interval on the log scale (``n`` pairs).

    Example:
        >>> r = ratio_interval([4.0, 4.4, 3.6, 4.0], [1.0, 1.1, 0.9, 1.0])
        >>> round(r["ratio"], 6), round(r["low"], 6), round(r["high"], 6)
        (4.0, 4.0, 4.0)
    """
    if len(num) != len(den) or not num:
        raise ValueError(f"need paired, non-empty timings, got {len(num)} and {len(den)}")
    # a time of 0 is below the clock's resolution (a baseline's iterate 0 exists at once)
    tiny = 1e-9
    logs = torch.tensor(
        [math.log(max(a, tiny) / max(b, tiny)) for a, b in zip(num, den, strict=True)], dtype=torch.float64
    )
    n = len(num)
    m = float(logs.mean())
    half = _t(n) * float(logs.std(unbiased=True)) / math.sqrt(n) if n > 1 else math.inf
    return {"ratio": math.exp(m), "low": math.exp(m - half), "high": math.exp(m + half), "n": n}


def crossing(curve: Sequence[Tensor], reference: Tensor, higher_is_stronger: bool) -> dict[str, Any]:
    """Where a baseline's per-step curve reaches a reference result, sample by sample.

    ``curve[k]`` holds the per-sample values (cross-entropy, or reconstruction loss) of the
    baseline's iterate k, ``reference`` those of JIIO's result on the same samples. With
    ``d_k`` the per-sample difference (baseline minus reference, sign-flipped when lower is
    stronger, so that ``d_k >= 0`` means "at least as strong as JIIO"):

    - ``step``: the first k with mean(d_k) >= 0 (None if never);
    - ``step_low``: the first k whose 95% interval of mean(d_k) reaches 0: from there on the
      baseline cannot be told apart from JIIO (or is stronger);
    - ``step_high``: the first k whose interval lies wholly at or above 0: the baseline is
      stronger than JIIO beyond doubt (None if never).

    Example:
        >>> ref = torch.tensor([1.0, 1.2, 0.8, 1.0])
        >>> curve = [ref - 1.0, ref + 0.01 * torch.tensor([1.0, -1.0, 2.0, -1.5]), ref + 0.5]
        >>> c = crossing(curve, ref, higher_is_stronger=True)
        >>> c["step"], c["step_low"], c["step_high"]
        (1, 1, 2)
    """
    sign = 1.0 if higher_is_stronger else -1.0
    step = low = high = None
    for k, values in enumerate(curve):
        d = mean_interval(sign * (values.double() - reference.double()))
        if step is None and d["mean"] >= 0:
            step = k
        if low is None and d["high"] >= 0:
            low = k
        if high is None and d["low"] >= 0:
            high = k
    return {"step": step, "step_low": low, "step_high": high}


def equal_strength(
    base_times: Sequence[Sequence[float]],
    jiio_times: Sequence[float],
    curve: Sequence[Tensor],
    reference: Tensor,
    higher_is_stronger: bool,
) -> dict[str, Any]:
    """Speed ratio of a baseline (per-step times ``base_times[run][k]``) over a JIIO variant
    (``jiio_times[run]``, paired runs) where the baseline's per-sample ``curve`` reaches the
    variant's ``reference`` values (:func:`crossing`): ``ratio`` at that step, ``range`` from
    the first step that cannot be told apart to the first beyond doubt (lower end of the one,
    upper end of the other), ``lower_bound`` when the baseline never gets there (its last
    step's ratio, lower end).

    Example:
        >>> ref = torch.tensor([1.0, 1.0])
        >>> curve = [ref - 1, ref, ref + 1]
        >>> out = equal_strength([[0.0, 1.0, 2.0]] * 2, [0.5, 0.5], curve, ref, True)
        >>> out["step"], round(out["ratio"]["ratio"], 6)
        (1, 2.0)
    """

    def at(k: int | None) -> dict[str, float] | None:
        if k is None:
            return None
        return ratio_interval([base_times[r][k] for r in range(len(jiio_times))], jiio_times)

    c = crossing(curve, reference, higher_is_stronger=higher_is_stronger)
    low, high, last = at(c["step_low"]), at(c["step_high"]), at(len(curve) - 1)
    return {
        **c,
        "ratio": at(c["step"]),
        "range": [low["low"] if low else None, high["high"] if high else None],
        "lower_bound": last["low"] if c["step"] is None and last else None,
    }


def timing_row(method: str, steps: int, label: str, times: list[float], loss: Tensor) -> dict[str, Any]:
    """A bench table row: median time per batch over the runs, and the mean per-sample
    ``loss`` (cross-entropy or reconstruction loss) with its interval."""
    m = mean_interval(loss)
    return {
        "method": method,
        "steps": steps,
        "label": label,
        "seconds": statistics.median(times),  # per batch
        "seconds_all": times,
        "loss": m["mean"],
        "loss_ci": [m["low"], m["high"]],
        "n": m["n"],
    }
