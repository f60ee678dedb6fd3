"""Training noise: several seeds of one configuration as replicates.

Retraining a configuration with another seed moves its value (initialisation, batch order,
attack restarts), often by more than evaluation noise does. :func:`t_interval` over per-seed
means (or per-seed differences, paired by seed) covers both; :func:`variance_components`
splits the spread into training noise (between seeds) and evaluation noise (within a seed);
:func:`seeds_needed` / :func:`samples_needed` say which of the two must grow for a
difference to be told apart. Evaluation noise alone is :mod:`orchestrator.stats.evaluation`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "Components",
    "proportion_variance",
    "samples_needed",
    "seeds_needed",
    "t_interval",
    "t_quantile",
    "variance_components",
]


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
