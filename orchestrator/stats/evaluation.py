"""Evaluation noise: intervals over the held-out samples a trial was scored on.

Accuracies are binomial proportions (Wilson score interval, :func:`wilson`); means of
per-sample values (PSNR, losses) get a percentile bootstrap (:func:`bootstrap`); two
configurations scored on the same samples get a paired bootstrap of their difference
(:func:`paired_bootstrap`). The ``*_growth`` functions say by how much the evaluation would
have to grow for an observed difference to be told apart. Training noise (seeds) is
:mod:`orchestrator.stats.seeds`.

Example:
    >>> lo, hi = wilson(50, 128)
    >>> round(lo, 3), round(hi, 3)
    (0.31, 0.477)
"""

from __future__ import annotations

import math

__all__ = [
    "bootstrap",
    "interval_growth",
    "paired_bootstrap",
    "separated",
    "wilson",
    "wilson_for",
    "wilson_growth",
    "zero_growth",
]


def wilson(successes: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n`` (``(nan, nan)`` when n is 0).

    Unlike the normal approximation it stays inside [0, 1] and is sensible at 0 and n
    successes: ``wilson(0, 10)`` is about (0, 0.28), not (0, 0).
    """
    if not n or n <= 0 or not math.isfinite(successes):
        return math.nan, math.nan
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes <= 0 else max(0.0, center - half)  # exact ends: no rounding past p
    hi = 1.0 if successes >= n else min(1.0, center + half)
    return lo, hi


def wilson_for(accuracy: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson interval of an accuracy measured on ``n`` samples.

    Example:
        >>> [round(v, 3) for v in wilson_for(0.5, 128)]
        [0.415, 0.585]
    """
    if not n or not math.isfinite(accuracy):
        return math.nan, math.nan
    return wilson(round(accuracy * n), n, z)


def bootstrap(
    samples, statistic: str = "mean", level: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (or ``"median"``) of per-sample values.

    ``(nan, nan)`` for fewer than 2 finite values. Deterministic for a given ``seed``.

    Example:
        >>> lo, hi = bootstrap([float(v % 7) for v in range(200)])
        >>> lo < 2.97 < hi, round(hi - lo, 1)
        (True, 0.5)
    """
    import numpy as np

    x = np.asarray(samples, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    fn = np.median if statistic == "median" else np.mean
    for start in range(0, n_boot, 256):  # bounded memory for large samples
        k = min(256, n_boot - start)
        idx = rng.integers(0, x.size, size=(k, x.size))
        stats[start : start + k] = fn(x[idx], axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(stats, [alpha, 1 - alpha])
    return float(lo), float(hi)


def separated(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether two intervals do not overlap (both must be known).

    Example:
        >>> separated((0.1, 0.2), (0.25, 0.3)), separated((0.1, 0.3), (0.25, 0.4))
        (True, False)
    """
    if not all(math.isfinite(v) for v in (*a, *b)):
        return False
    return a[1] < b[0] or b[1] < a[0]


def wilson_growth(p1: float, n1: int, p2: float, n2: int, z: float = 1.959964) -> float:
    """The factor by which both evaluations (``n1``, ``n2`` samples) would have to grow for the
    Wilson intervals of the observed accuracies ``p1`` and ``p2`` to separate (1.0 if they
    already do, ``inf`` if the accuracies are equal).

    Example:
        >>> round(wilson_growth(0.5, 128, 0.5156, 128))  # 2 more right answers out of 128
        123
    """
    if not (n1 and n2) or not (math.isfinite(p1) and math.isfinite(p2)) or p1 == p2:
        return math.inf

    def apart(k: float) -> bool:
        a = wilson(p1 * n1 * k, max(1, round(n1 * k)), z)
        b = wilson(p2 * n2 * k, max(1, round(n2 * k)), z)
        return separated(a, b)

    if apart(1.0):
        return 1.0
    lo, hi = 1.0, 2.0
    while not apart(hi):
        lo, hi = hi, hi * 2
        if hi > 1e12:
            return math.inf
    while hi / lo > 1.001:
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if apart(mid) else (mid, hi)
    return hi


def interval_growth(a: tuple[float, float], b: tuple[float, float], va: float, vb: float) -> float:
    """For intervals whose half-widths shrink as 1/sqrt(n) (bootstrap of a mean): the factor by
    which both evaluations would have to grow for intervals ``a`` and ``b`` around the
    observed values ``va`` and ``vb`` to separate (1.0 if they already do, ``inf`` if the
    values are equal or an interval is unknown).

    Example:
        >>> round(interval_growth((9.0, 11.0), (10.0, 12.0), 10.0, 11.0), 2)
        4.0
    """
    if not all(math.isfinite(v) for v in (*a, *b, va, vb)) or va == vb:
        return math.inf
    if separated(a, b):
        return 1.0
    half = (a[1] - a[0]) / 2 + (b[1] - b[0]) / 2
    return max(1.0, (half / abs(va - vb)) ** 2)


def paired_bootstrap(
    a, b, statistic: str = "mean", level: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float, float, int]:
    """Percentile bootstrap interval of ``stat(a) - stat(b)`` for values paired by position
    (the same samples, in the same order, scored by two configurations): pairs are resampled
    together, so what the two share (how hard each sample is) cancels.

    ``stat`` is the mean (then the difference is the mean of per-sample differences) or
    ``"median"``. Pairs where either value is not finite are dropped. Returns
    ``(difference, lo, hi, n)`` with ``n`` the number of pairs used; the difference and the
    ends are NaN for fewer than 2 pairs. Deterministic for a given ``seed``. Raises
    ``ValueError`` when ``a`` and ``b`` differ in length (they cannot be paired).

    Example: a shift of 0.1 on samples spread over [0, 6]: the separate intervals overlap,
    the paired one is far from 0.

        >>> base = [float(v % 7) for v in range(200)]
        >>> shifted = [v + 0.1 + 0.01 * (i % 3) for i, v in enumerate(base)]
        >>> separated(bootstrap(shifted), bootstrap(base))
        False
        >>> d, lo, hi, n = paired_bootstrap(shifted, base)
        >>> round(d, 3), 0.1 < lo < d < hi < 0.12, n
        (0.11, True, 200)
    """
    import numpy as np

    x, y = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"paired values must have the same length; got {x.size} and {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = int(x.size)
    if n < 2:
        return math.nan, math.nan, math.nan, n
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    if statistic == "median":
        diff = float(np.median(x) - np.median(y))
    else:
        d = x - y
        diff = float(d.mean())
    for start in range(0, n_boot, 256):  # bounded memory for large samples
        k = min(256, n_boot - start)
        idx = rng.integers(0, n, size=(k, n))
        if statistic == "median":
            stats[start : start + k] = np.median(x[idx], axis=1) - np.median(y[idx], axis=1)
        else:
            stats[start : start + k] = d[idx].mean(axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(stats, [alpha, 1 - alpha])
    return diff, float(lo), float(hi), n


def zero_growth(diff: float, lo: float, hi: float) -> float:
    """For an interval ``(lo, hi)`` around an observed difference ``diff`` whose half-widths
    shrink as 1/sqrt(n): the factor by which the evaluation would have to grow for it to
    exclude 0 (1.0 if it already does, ``inf`` if the difference is 0 or unknown). The side
    of the interval towards 0 is the one that counts.

    Example:
        >>> zero_growth(1.0, -1.0, 3.0), zero_growth(-1.0, -1.5, 0.5), zero_growth(1.0, 0.5, 2.0)
        (4.0, 2.25, 1.0)
    """
    if not all(math.isfinite(v) for v in (diff, lo, hi)) or diff == 0:
        return math.inf
    if lo > 0 or hi < 0:
        return 1.0
    reach = diff - lo if diff > 0 else hi - diff
    return max(1.0, (reach / abs(diff)) ** 2)
