"""Intervals against an independent implementation (scipy's binomtest)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.stats import wilson, wilson_for

scipy_stats = pytest.importorskip("scipy.stats")


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 5000), frac=st.floats(0, 1))
def test_wilson_matches_scipy(n, frac):
    k = round(frac * n)
    ref = scipy_stats.binomtest(k, n).proportion_ci(method="wilson")
    lo, hi = wilson(k, n)
    assert lo == pytest.approx(ref.low, abs=1e-7) and hi == pytest.approx(ref.high, abs=1e-7)
    assert 0 <= lo <= k / n <= hi <= 1


def test_no_samples_no_interval():
    assert all(math.isnan(v) for v in wilson(0, 0)) and all(math.isnan(v) for v in wilson_for(0.5, 0))
