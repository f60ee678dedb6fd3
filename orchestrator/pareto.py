"""Pareto fronts of multi-objective sweeps (all objectives minimised).

Why its own module: the driver writes a sweep's front (``pareto`` table) and the analysis
and tests compute it too; the math does not belong to any of them.
"""

from __future__ import annotations

__all__ = ["pareto_front"]


def pareto_front(points: list[tuple[float, ...]]) -> list[bool]:
    """Which points are not dominated (all objectives minimised).

    Example:
        >>> pareto_front([(1, 5), (2, 2), (3, 3), (5, 1)])
        [True, True, False, True]
    """
    out = []
    for i, p in enumerate(points):
        dominated = any(
            all(a <= b for a, b in zip(q, p, strict=True)) and any(a < b for a, b in zip(q, p, strict=True))
            for j, q in enumerate(points)
            if j != i
        )
        out.append(not dominated)
    return out
