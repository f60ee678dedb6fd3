"""Intervals for a sweep's objectives: how sure a measured difference is.

Accuracies are binomial proportions (Wilson score interval); means of per-sample values
(PSNR, losses) get a percentile bootstrap. Both are 95% by default. Two configurations
scored on the same samples get a paired bootstrap of their difference
(:func:`paired_bootstrap`), far narrower than two separate intervals when the samples'
own difficulty dominates the spread.

Those intervals cover evaluation noise only: which held-out samples a trial was scored on.
Retraining a configuration with another seed moves its value too (initialisation, batch
order, attack restarts), often by more. With several seeds per configuration the seeds are
the replicates: :func:`t_interval` over per-seed means (or per-seed differences, paired by
seed) covers both, :func:`variance_components` splits the spread into training noise
(between seeds) and evaluation noise (within a seed), and :func:`seeds_needed` /
:func:`samples_needed` say which of the two must grow for a difference to be told apart.

Example:
    >>> lo, hi = wilson(50, 128)
    >>> round(lo, 3), round(hi, 3)
    (0.31, 0.477)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "Components",
    "bootstrap",
    "interval_growth",
    "paired_bootstrap",
    "proportion_variance",
    "samples_needed",
    "seeds_needed",
    "separated",
    "t_interval",
    "t_quantile",
    "variance_components",
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


# ---------------------------------------------------------------- seeds as replicates


def t_quantile(level: float, df: float) -> float:
    """The two-sided Student-t quantile: ``q`` with P(|T| <= q) = ``level`` for ``df``
    degrees of freedom (the normal's for infinite ``df``; NaN below 1).

    Example:
        >>> round(t_quantile(0.95, 1), 3), round(t_quantile(0.95, 2), 3), round(t_quantile(0.95, math.inf), 3)
        (12.706, 4.303, 1.96)
    """
    if not df >= 1:
        return math.nan
    from scipy.stats import norm, t

    p = (1 + level) / 2
    return float(norm.ppf(p) if math.isinf(df) else t.ppf(p, df))


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float, int]:
    """Student-t interval of the mean of independent replicates: ``(mean, lo, hi, n)`` over
    the finite ``values`` (ends NaN for fewer than 2), with ``n - 1`` degrees of freedom.

    With one value per training seed (a configuration's per-seed means, or two
    configurations' per-seed differences) this is the interval of the mean over seeds, and
    it covers both noises: a seed's mean is ``mu + b_s + e_s``, ``b_s`` what training with
    seed ``s`` moved (variance ``between``) and ``e_s`` its evaluation error (variance
    ``within / n`` for ``n`` samples), so the spread of the per-seed means estimates
    ``between + within / n`` without having to know either, and the t quantile pays for
    estimating it from few seeds. It is exact for normal per-seed means (a mean over
    hundreds of samples is close to normal) and equal ``n``.

    Why not a two-stage bootstrap (resample seeds, then samples within each seed): it
    estimates the same variance but takes its ends from the resampled means, and with the
    2 to 5 seeds a confirmation runs that distribution has a handful of atoms: it covers
    far less than 95% (about 50% with 2 seeds, 75% with 3, 83% with 5; simulated in
    ``tests/orchestrator/test_stats_seeds.py``), where the t interval keeps 95% by widening
    (quantile 12.7 with 2 seeds, 4.30 with 3, 2.78 with 5).

    When every seed is scored on the same held-out samples (a training sweep's fixed
    split), what makes each sample hard is shared by all seeds and does not vary between
    them: the interval is then over training seeds on these samples.

    Example:
        >>> m, lo, hi, n = t_interval([0.42, 0.47, 0.44])
        >>> round(m, 3), round(lo, 3), round(hi, 3), n
        (0.443, 0.381, 0.506, 3)
    """
    x = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(x)
    if not n:
        return math.nan, math.nan, math.nan, 0
    mean = math.fsum(x) / n
    if n < 2:
        return mean, math.nan, math.nan, n
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in x) / (n - 1))
    half = t_quantile(level, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half, n


def proportion_variance(p: float, n: int) -> float:
    """The sample variance (``n - 1`` denominator) of ``n`` values 0/1 whose mean is ``p``:
    the per-sample variance of an accuracy measured on ``n`` samples (NaN for n < 2).

    Example:
        >>> proportion_variance(0.5, 4), round(proportion_variance(0.25, 100), 5)
        (0.3333333333333333, 0.18939)
    """
    if not n or n < 2 or not math.isfinite(p):
        return math.nan
    k = round(p * n)
    return k * (n - k) / (n * (n - 1))


@dataclass(frozen=True)
class Components:
    """How a configuration's value spreads over training seeds and evaluation samples.

    ``between``: the variance of the seed effect (training noise: what retraining with
    another seed moves the value by, with infinitely many samples); ``within``: the
    per-sample variance inside one seed's evaluation (evaluation noise per sample); ``n``:
    samples per seed (their mean); ``seeds``: how many. ``between`` is NaN with one seed.
    """

    between: float
    within: float
    n: float
    seeds: int

    @property
    def of_mean(self) -> float:
        """The variance of one seed's value: ``between + within / n``."""
        return self.between + self.within / self.n

    @property
    def evaluation(self) -> float:
        """The part of :attr:`of_mean` that more samples per seed would remove: ``within / n``."""
        return self.within / self.n


def variance_components(
    means: Sequence[float], variances: Sequence[float], counts: Sequence[float]
) -> Components:
    """Between-seed and within-seed variance by one-way random-effects ANOVA (method of
    moments, unequal sample counts allowed) from each seed's mean, per-sample variance
    (``n - 1`` denominator; for an accuracy :func:`proportion_variance`) and sample count.

    ``within`` is the pooled within-seed mean square MSW; ``between`` is
    ``(MSB - MSW) / n0`` with MSB the between-seed mean square and
    ``n0 = (N - sum(n_i^2) / N) / (S - 1)``, clipped at 0 (a negative estimate means the
    seeds spread no more than their evaluation noise explains). Seeds whose mean,
    variance or count is not finite are left out.

    When every seed is scored on the same samples, ``within`` also holds how hard each
    sample is, which all seeds share: ``within / n`` then bounds the evaluation part of a
    seed's spread from above and ``between`` is a lower bound.

    Example: three seeds of 400 samples each, per-sample variance 0.24 (an accuracy near
    0.4), seed means 0.40, 0.45, 0.50: their variance 0.0025 less the 0.0006 that
    evaluation noise explains (0.24 / 400) leaves 0.0019 to training:

        >>> c = variance_components([0.40, 0.45, 0.50], [0.24, 0.24, 0.24], [400, 400, 400])
        >>> round(c.between, 5), round(c.within, 3), c.n, c.seeds, round(c.evaluation, 5)
        (0.0019, 0.24, 400.0, 3, 0.0006)
    """
    rows = [
        (float(m), float(v), float(k))
        for m, v, k in zip(means, variances, counts, strict=True)
        if all(x is not None and math.isfinite(float(x)) for x in (m, v, k)) and float(k) >= 1
    ]
    s = len(rows)
    if not s:
        return Components(math.nan, math.nan, math.nan, 0)
    total = math.fsum(k for _, _, k in rows)
    dfw = total - s
    within = math.fsum((k - 1) * v for _, v, k in rows) / dfw if dfw > 0 else math.nan
    n = total / s
    if s < 2:
        return Components(math.nan, within, n, s)
    grand = math.fsum(k * m for m, _, k in rows) / total
    msb = math.fsum(k * (m - grand) ** 2 for m, _, k in rows) / (s - 1)
    n0 = (total - math.fsum(k * k for _, _, k in rows) / total) / (s - 1)
    between = max(0.0, (msb - within) / n0) if math.isfinite(within) else math.nan
    return Components(between, within, n, s)


def seeds_needed(
    diff: float, between: float, within: float, n: float, level: float = 0.95, limit: int = 10**6
) -> float:
    """The fewest seeds per configuration (at least 2) for which the t interval over seeds of
    a difference ``diff`` (a seed's value spreading by ``between + within / n``) excludes 0:
    ``t(S-1) * sqrt((between + within / n) / S) < |diff|``; ``inf`` when ``diff`` is 0 or
    unknown, or more than ``limit`` would be needed.

    Example: seed spread 0.02 (variance 4e-4) against a difference of 0.02:
        >>> seeds_needed(0.02, 4e-4, 0.0, 360)
        7
    """
    var = between + within / n
    if not all(math.isfinite(v) for v in (diff, var)) or diff == 0 or var < 0:
        return math.inf
    if var == 0:
        return 2

    def ok(s: int) -> bool:
        return t_quantile(level, s - 1) * math.sqrt(var / s) < abs(diff)

    if ok(2):
        return 2
    lo, hi = 2, 4
    while not ok(hi):
        lo, hi = hi, hi * 2
        if hi > limit:
            return math.inf
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi


def samples_needed(diff: float, between: float, within: float, seeds: int, level: float = 0.95) -> float:
    """The fewest samples per seed for which the t interval over ``seeds`` seeds of a
    difference ``diff`` excludes 0: ``t(S-1) * sqrt((between + within / n) / S) < |diff|``;
    ``inf`` when no number of samples would do (the training noise ``between`` alone is too
    large, or fewer than 2 seeds: no interval over seeds at all).

    Example: with 3 seeds, no sample count separates 0.02 when seeds alone spread by 0.02;
    with a seed spread of 0.005 about 6,000 samples per seed do.

        >>> samples_needed(0.02, 4e-4, 0.24, 3)
        inf
        >>> samples_needed(0.02, 2.5e-5, 0.24, 3)
        6028
    """
    if seeds < 2 or not all(math.isfinite(v) for v in (diff, between, within)) or diff == 0:
        return math.inf
    room = seeds * diff * diff / t_quantile(level, seeds - 1) ** 2 - between
    if room <= 0:
        return math.inf
    if within <= 0:
        return 1
    return math.floor(within / room) + 1
