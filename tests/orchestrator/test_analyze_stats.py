"""The intervals jiio analyze uses: bootstrap (also paired) against scipy's, and the growth it names."""

from __future__ import annotations

import math

import numpy as np
import pytest

from orchestrator.stats import (
    bootstrap,
    interval_growth,
    paired_bootstrap,
    separated,
    wilson_for,
    wilson_growth,
    zero_growth,
)

scipy_stats = pytest.importorskip("scipy.stats")


@pytest.mark.parametrize("stat", ["mean", "median"])
def test_bootstrap_matches_scipy(stat):
    x = np.random.default_rng(3).normal(20.0, 4.0, 300)
    lo, hi = bootstrap(x, statistic=stat, n_boot=4000)
    ref = scipy_stats.bootstrap(
        (x,), getattr(np, stat), n_resamples=4000, method="percentile", random_state=0
    )
    width = ref.confidence_interval.high - ref.confidence_interval.low
    assert lo == pytest.approx(ref.confidence_interval.low, abs=0.1 * width)
    assert hi == pytest.approx(ref.confidence_interval.high, abs=0.1 * width)


def test_bootstrap_needs_two_values():
    assert all(math.isnan(v) for v in bootstrap([1.0])) and all(math.isnan(v) for v in bootstrap([]))


def test_wilson_growth_is_the_smallest_separating_size():
    k = wilson_growth(0.52, 500, 0.50, 500)
    n = math.ceil(500 * k)
    assert separated(wilson_for(0.52, n), wilson_for(0.50, n))
    m = int(500 * k * 0.98)
    assert not separated(wilson_for(0.52, m), wilson_for(0.50, m))
    assert wilson_growth(0.9, 1000, 0.5, 1000) == 1.0 and math.isinf(wilson_growth(0.5, 10, 0.5, 10))


def test_interval_growth_follows_one_over_sqrt_n():
    # half-widths 1 and 1, difference 1: intervals must shrink by 2, so n grows by 4
    assert interval_growth((9.0, 11.0), (10.0, 12.0), 10.0, 11.0) == pytest.approx(4.0)
    assert interval_growth((0.0, 1.0), (2.0, 3.0), 0.5, 2.5) == 1.0


@pytest.mark.parametrize("stat", ["mean", "median"])
def test_paired_bootstrap_matches_scipy(stat):
    rng = np.random.default_rng(5)
    hard = rng.normal(20.0, 4.0, 300)  # what both configurations share: cancels in the pairs
    a, b = hard + 0.3 + rng.normal(0, 0.5, 300), hard + rng.normal(0, 0.5, 300)
    d, lo, hi, n = paired_bootstrap(a, b, statistic=stat, n_boot=4000)
    fn = getattr(np, stat)
    ref = scipy_stats.bootstrap(
        (a, b),
        lambda x, y, axis=-1: fn(x, axis=axis) - fn(y, axis=axis),
        paired=True,
        n_resamples=4000,
        method="percentile",
        random_state=0,
    ).confidence_interval
    width = ref.high - ref.low
    assert n == 300 and d == pytest.approx(fn(a) - fn(b))
    assert lo == pytest.approx(ref.low, abs=0.1 * width) and hi == pytest.approx(ref.high, abs=0.1 * width)
    if stat == "mean":  # and the Student-t interval of the mean difference
        t = scipy_stats.ttest_rel(a, b).confidence_interval(0.95)
        assert lo == pytest.approx(t.low, abs=0.1 * width) and hi == pytest.approx(t.high, abs=0.1 * width)
        assert not separated(bootstrap(a), bootstrap(b)) and lo > 0  # only the pairs see the shift


def test_paired_bootstrap_drops_non_finite_pairs_and_needs_equal_lengths():
    a, b = [1.0, 2.0, math.nan, 4.0, 5.0], [0.5, math.inf, 3.0, 3.0, 4.5]
    d, lo, hi, n = paired_bootstrap(a, b)
    assert n == 3 and d == pytest.approx(np.mean([0.5, 1.0, 0.5])) and 0.5 <= lo <= hi <= 1.0
    assert all(math.isnan(v) for v in paired_bootstrap([1.0, math.nan], [1.0, 2.0])[:3])
    with pytest.raises(ValueError, match="same length"):
        paired_bootstrap([1.0, 2.0], [1.0])


def test_zero_growth_follows_one_over_sqrt_n():
    # the side towards 0 reaches 2 past a difference of 1: it must shrink by 2, so n grows by 4
    assert zero_growth(1.0, -1.0, 3.0) == pytest.approx(4.0)
    assert zero_growth(-1.0, -2.0, 1.0) == pytest.approx(4.0)
    assert zero_growth(1.0, 0.2, 1.8) == 1.0 and math.isinf(zero_growth(0.0, -1.0, 1.0))
