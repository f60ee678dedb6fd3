"""The intervals jiio analyze uses: bootstrap against scipy's, and the growth it names."""

from __future__ import annotations

import math

import numpy as np
import pytest

from orchestrator.stats import bootstrap, interval_growth, separated, wilson_for, wilson_growth

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
