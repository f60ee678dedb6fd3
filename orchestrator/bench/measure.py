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

With several baselines (cold, warm-started, step sizes from a grid), :func:`fastest_reaching`
picks the one that reaches a reference strength soonest in time (the ratio JIIO is judged
by) and :func:`best_per_step` the strongest at each step count.
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
    "best_per_step",
    "crossing",
    "equal_strength",
    "fastest_reaching",
    "margin",
    "mean_interval",
    "ratio_interval",
    "reaches",
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


def margin(logits: Tensor, y: Tensor) -> Tensor:
    """Margin loss per sample: the largest other logit minus the true class's logit (> 0:
    misclassified). Unlike the cross-entropy it does not flatten once an attack succeeds.

    Example:
        >>> margin(torch.tensor([[2.0, 0.5, 1.0], [0.0, 3.0, -1.0]]), torch.tensor([0, 2]))
        tensor([-1.,  4.])
    """
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], -math.inf)
    return other.max(dim=1).values - true


def reaches(values: Tensor, reference: Tensor, higher_is_stronger: bool) -> dict[str, Any]:
    """Whether one result reaches a reference, paired per sample: ``reached`` (mean of the
    sign-adjusted difference >= 0, as :func:`crossing`), ``tied`` (its 95% interval reaches
    0) and the difference itself with its interval."""
    sign = 1.0 if higher_is_stronger else -1.0
    d = mean_interval(sign * (values.double() - reference.double()))
    return {"reached": d["mean"] >= 0, "tied": d["high"] >= 0, "diff": d}


def fastest_reaching(
    curves: dict[str, Sequence[Tensor]],
    times: dict[str, Sequence[Sequence[float]]],
    jiio_times: Sequence[float],
    reference: Tensor,
    higher_is_stronger: bool,
) -> dict[str, Any]:
    """The baseline that reaches ``reference`` soonest in time, and its speed ratio to JIIO.

    ``curves[b][k]``: per-sample values of baseline ``b``'s iterate ``k``; ``times[b][run][k]``
    when that iterate existed (runs paired with ``jiio_times``). For every baseline,
    :func:`equal_strength` (``candidates``); the fastest is the one with the smallest speed
    ratio at its crossing step (ties: the first in ``curves``' order), reported as
    ``baseline``, ``step``, ``ratio``. ``range``: from the fastest baseline that cannot be
    told apart from the reference (lower end of its ratio at its ``step_low``) to the fastest
    that is stronger beyond doubt (upper end at its ``step_high``), over all baselines. When
    no baseline reaches it: ``baseline`` None, ``lower_bound`` the smallest of the baselines'
    lower bounds (their whole run's ratio, lower end).

    Example:
        >>> ref = torch.tensor([1.0, 1.0])
        >>> curves = {"slow": [ref - 1, ref], "fast": [ref - 1, ref - 0.5, ref]}
        >>> times = {"slow": [[0.0, 1.0]] * 2, "fast": [[0.0, 0.2, 0.4]] * 2}
        >>> out = fastest_reaching(curves, times, [0.5, 0.5], ref, True)
        >>> out["baseline"], out["step"], round(out["ratio"]["ratio"], 6)
        ('fast', 2, 0.8)
    """
    cands = {
        b: equal_strength(times[b], jiio_times, curves[b], reference, higher_is_stronger) for b in curves
    }
    reached = [b for b in cands if cands[b]["ratio"] is not None]
    fastest = min(reached, key=lambda b: cands[b]["ratio"]["ratio"]) if reached else None

    def end(which: int, key: str) -> float | None:
        ends = [c["range"][which] for c in cands.values() if c[key] is not None]
        return min(ends) if ends else None

    bounds = [c["lower_bound"] for c in cands.values() if c["lower_bound"] is not None]
    best = cands[fastest] if fastest else None
    return {
        "baseline": fastest,
        "step": best["step"] if best else None,
        "step_low": best["step_low"] if best else None,
        "step_high": best["step_high"] if best else None,
        "ratio": best["ratio"] if best else None,
        "range": [end(0, "step_low"), end(1, "step_high")],
        "lower_bound": None if fastest else (min(bounds) if bounds else None),
        "candidates": cands,
    }


def best_per_step(curves: dict[str, Sequence[Tensor]], higher_is_stronger: bool) -> list[dict[str, Any]]:
    """At each step count, the baseline whose iterate is strongest on average (ties: the
    first in ``curves``' order), over the steps every curve has.

    Example:
        >>> a, b = torch.tensor([0.0, 2.0]), torch.tensor([1.0, 1.0])
        >>> [r["baseline"] for r in best_per_step({"a": [a, a + 1], "b": [b, b]}, True)]
        ['a', 'a']
    """
    sign = 1.0 if higher_is_stronger else -1.0
    n = min(len(c) for c in curves.values())
    out = []
    for k in range(n):
        means = {b: float(c[k].double().mean()) for b, c in curves.items()}
        b = max(means, key=lambda name: sign * means[name])
        out.append({"step": k, "baseline": b, "mean": means[b]})
    return out
