"""Intervals for a sweep's objectives: how sure a measured difference is.

Accuracies are binomial proportions (Wilson score interval); means of per-sample values
(PSNR, losses) get a percentile bootstrap. Both are 95% by default.

Example:
    >>> lo, hi = wilson(50, 128)
    >>> round(lo, 3), round(hi, 3)
    (0.31, 0.477)
"""

from __future__ import annotations

import math

__all__ = ["wilson", "wilson_for"]


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
