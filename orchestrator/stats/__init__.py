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

Evaluation noise is :mod:`~orchestrator.stats.evaluation`, training noise
:mod:`~orchestrator.stats.seeds`; everything is importable from here.

Example:
    >>> lo, hi = wilson(50, 128)
    >>> round(lo, 3), round(hi, 3)
    (0.31, 0.477)
"""

from orchestrator.stats.evaluation import (
    bootstrap,
    interval_growth,
    paired_bootstrap,
    separated,
    wilson,
    wilson_for,
    wilson_growth,
    zero_growth,
)
from orchestrator.stats.seeds import (
    Components,
    proportion_variance,
    samples_needed,
    seeds_needed,
    t_interval,
    t_quantile,
    variance_components,
)

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
