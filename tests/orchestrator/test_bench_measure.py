"""Tests for ``orchestrator.bench.measure``: the intervals of ``jiio bench`` checked against
independent references (scipy's Student-t interval, the Wilson formula written out here,
numpy log-ratios, a brute-force crossing), and properties of :func:`crossing`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from orchestrator.bench.measure import accuracy_interval, crossing, mean_interval, ratio_interval

Z95 = float(stats.norm.ppf(0.975))


def _t_reference(v: np.ndarray) -> tuple[float, float, float]:
    """Mean and 95% Student-t interval of ``v`` (n >= 2), from scipy alone."""
    mean = float(np.mean(v))
    low, high = stats.t.interval(0.95, len(v) - 1, loc=mean, scale=stats.sem(v))
    return mean, float(low), float(high)


def _wilson_reference(k: int, n: int) -> tuple[float, float]:
    """Wilson score interval written out: (p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)."""
    p, z = k / n, Z95
    denom = 1 + z**2 / n
    center = (p + z**2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    return center - half, center + half


# --- mean_interval --------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 5, 17, 256])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mean_interval_matches_scipy_t_interval(n, seed):
    v = np.random.default_rng(seed).normal(loc=3.0, scale=2.0, size=n)
    got = mean_interval(v.tolist())
    mean, low, high = _t_reference(v)
    assert got["n"] == n
    assert got["mean"] == pytest.approx(mean, rel=1e-12, abs=1e-12)
    assert got["low"] == pytest.approx(low, rel=1e-9, abs=1e-12)
    assert got["high"] == pytest.approx(high, rel=1e-9, abs=1e-12)


def test_mean_interval_accepts_tensors_and_drops_non_finite():
    v = np.array([1.0, 2.5, 4.0, 0.5, 3.0])
    noisy = torch.tensor([[1.0, math.nan, 2.5], [4.0, math.inf, 0.5], [-math.inf, 3.0, math.nan]])
    got = mean_interval(noisy.float())
    mean, low, high = _t_reference(v)
    assert got["n"] == 5
    assert (got["mean"], got["low"], got["high"]) == pytest.approx((mean, low, high), rel=1e-6)


def test_mean_interval_degenerate_sizes():
    empty = mean_interval([])
    assert empty["n"] == 0 and all(math.isnan(empty[k]) for k in ("mean", "low", "high"))
    only_nan = mean_interval([math.nan, math.inf])
    assert only_nan["n"] == 0 and math.isnan(only_nan["mean"])
    one = mean_interval([2.0])
    assert one == {"mean": 2.0, "low": -math.inf, "high": math.inf, "n": 1}
    const = mean_interval([1.5] * 7)
    assert const == {"mean": 1.5, "low": 1.5, "high": 1.5, "n": 7}


# --- accuracy_interval ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "n"), [(0, 1), (1, 1), (1, 4), (0, 10), (10, 10), (3, 10), (57, 128), (250, 256)]
)
def test_accuracy_interval_matches_hand_wilson(k, n):
    correct = torch.zeros(n, dtype=torch.long)
    correct[torch.randperm(n, generator=torch.Generator().manual_seed(k * 1000 + n))[:k]] = 1
    got = accuracy_interval(correct)
    low, high = _wilson_reference(k, n)
    assert got["n"] == n
    assert got["mean"] == k / n
    assert got["low"] == pytest.approx(max(0.0, low), rel=1e-6, abs=1e-12)
    assert got["high"] == pytest.approx(min(1.0, high), rel=1e-6, abs=1e-12)
    assert 0.0 <= got["low"] <= got["mean"] <= got["high"] <= 1.0


def test_accuracy_interval_exact_ends_and_input_kinds():
    assert accuracy_interval(torch.zeros(10))["low"] == 0.0
    assert accuracy_interval(torch.ones(10))["high"] == 1.0
    as_bool = accuracy_interval(torch.tensor([[True, False], [False, False]]))
    as_int = accuracy_interval(torch.tensor([1, 0, 0, 0]))
    assert as_bool == as_int
    assert as_int["mean"] == 0.25
    empty = accuracy_interval(torch.tensor([]))
    assert empty["n"] == 0 and all(math.isnan(empty[k]) for k in ("mean", "low", "high"))


# --- ratio_interval -------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 4, 9, 30])
@pytest.mark.parametrize("seed", [0, 1])
def test_ratio_interval_matches_t_interval_of_log_ratios(n, seed):
    rng = np.random.default_rng(seed)
    den = rng.uniform(0.5, 2.0, size=n)
    num = den * rng.lognormal(mean=math.log(3.0), sigma=0.2, size=n)
    got = ratio_interval(num.tolist(), den.tolist())
    m, low, high = _t_reference(np.log(num / den))
    assert got["n"] == n
    assert got["ratio"] == pytest.approx(math.exp(m), rel=1e-12)
    assert got["low"] == pytest.approx(math.exp(low), rel=1e-9)
    assert got["high"] == pytest.approx(math.exp(high), rel=1e-9)
    assert got["low"] < got["ratio"] < got["high"]


def test_ratio_interval_constant_ratios_give_zero_width():
    exact = ratio_interval([2.0, 4.0, 6.0, 8.0], [1.0, 2.0, 3.0, 4.0])
    assert exact == {
        "ratio": pytest.approx(2.0, rel=1e-15),
        "low": exact["ratio"],
        "high": exact["ratio"],
        "n": 4,
    }
    assert exact["low"] == exact["ratio"] == exact["high"]
    doc = ratio_interval([4.0, 4.4, 3.6, 4.0], [1.0, 1.1, 0.9, 1.0])  # equal up to rounding
    assert (doc["low"], doc["ratio"], doc["high"]) == pytest.approx((4.0, 4.0, 4.0), rel=1e-12)


def test_ratio_interval_is_a_geometric_mean_and_inverts():
    num, den = [3.0, 1.0, 2.0], [1.0, 2.0, 1.5]
    fwd, back = ratio_interval(num, den), ratio_interval(den, num)
    geo = math.prod(a / b for a, b in zip(num, den, strict=True)) ** (1 / 3)
    assert fwd["ratio"] == pytest.approx(geo, rel=1e-12)
    assert back["ratio"] == pytest.approx(1 / fwd["ratio"], rel=1e-12)
    assert back["low"] == pytest.approx(1 / fwd["high"], rel=1e-12)
    assert back["high"] == pytest.approx(1 / fwd["low"], rel=1e-12)


def test_ratio_interval_single_pair_is_unbounded():
    one = ratio_interval([3.0], [1.5])
    assert one == {"ratio": pytest.approx(2.0), "low": 0.0, "high": math.inf, "n": 1}


@pytest.mark.parametrize(("num", "den"), [([1.0, 2.0], [1.0]), ([1.0], [1.0, 2.0]), ([], []), ([], [1.0])])
def test_ratio_interval_rejects_unpaired_or_empty(num, den):
    with pytest.raises(ValueError, match="paired"):
        ratio_interval(num, den)


# --- crossing -------------------------------------------------------------------------------


def _crossing_reference(curve: list[np.ndarray], ref: np.ndarray, higher_is_stronger: bool) -> dict:
    """First k with mean(d_k) >= 0, first k whose interval reaches 0, first k whose interval
    lies at or above 0; d_k = +-(curve[k] - ref), intervals from scipy."""
    sign = 1.0 if higher_is_stronger else -1.0
    step = low = high = None
    for k, values in enumerate(curve):
        mean, lo, hi = _t_reference(sign * (values - ref))
        if step is None and mean >= 0:
            step = k
        if low is None and hi >= 0:
            low = k
        if high is None and lo >= 0:
            high = k
    return {"step": step, "step_low": low, "step_high": high}


@pytest.mark.parametrize("higher_is_stronger", [True, False])
@pytest.mark.parametrize("seed", range(12))
def test_crossing_matches_brute_force_reference(seed, higher_is_stronger):
    rng = np.random.default_rng(seed)
    n, steps = int(rng.integers(3, 40)), int(rng.integers(1, 12))
    ref = rng.normal(2.0, 1.0, size=n)
    # A curve that drifts from weaker to stronger than the reference, with per-sample noise.
    drift = np.linspace(-1.0, 1.0, steps) * rng.uniform(0.05, 1.0) * (1 if higher_is_stronger else -1)
    curve = [ref + d + rng.normal(0.0, rng.uniform(0.05, 1.0), size=n) for d in drift]
    got = crossing([torch.from_numpy(c) for c in curve], torch.from_numpy(ref), higher_is_stronger)
    assert got == _crossing_reference(curve, ref, higher_is_stronger)
    # and the per-step intervals behind it are scipy's
    sign = 1.0 if higher_is_stronger else -1.0
    for c in curve:
        d = mean_interval(torch.from_numpy(sign * (c - ref)))
        assert (d["mean"], d["low"], d["high"]) == pytest.approx(_t_reference(sign * (c - ref)), rel=1e-9)


def test_crossing_accepts_float32_and_reports_none_when_never_reached():
    ref = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float32)
    weaker = [ref - 1.0 - 0.1 * torch.arange(4.0), ref - 0.5 + 0.01 * torch.arange(4.0)]
    assert crossing(weaker, ref, higher_is_stronger=True) == {
        "step": None,
        "step_low": None,
        "step_high": None,
    }
    assert crossing([], ref, higher_is_stronger=True) == {"step": None, "step_low": None, "step_high": None}
    # lower is stronger: the same curve is stronger than the reference from the start
    assert crossing(weaker, ref, higher_is_stronger=False) == {"step": 0, "step_low": 0, "step_high": 0}


_values = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False)


@st.composite
def _curves(draw):
    n = draw(st.integers(1, 12))
    steps = draw(st.integers(0, 6))
    ref = draw(st.lists(_values, min_size=n, max_size=n))
    curve = [draw(st.lists(_values, min_size=n, max_size=n)) for _ in range(steps)]
    return [torch.tensor(c, dtype=torch.float64) for c in curve], torch.tensor(ref, dtype=torch.float64)


@settings(max_examples=300, deadline=None)
@given(_curves(), st.booleans())
def test_crossing_steps_are_ordered_and_symmetric_under_negation(data, higher_is_stronger):
    curve, ref = data
    got = crossing(curve, ref, higher_is_stronger)
    step, low, high = got["step"], got["step_low"], got["step_high"]
    if step is not None:
        assert low is not None and low <= step
    if high is not None:
        assert step is not None and step <= high
    for v in got.values():
        assert v is None or 0 <= v < len(curve)
    # lower-is-stronger on negated values is the same question as higher-is-stronger
    negated = crossing([-c for c in curve], -ref, not higher_is_stronger)
    assert negated == got


def test_equal_strength_against_a_brute_force_reference():
    """The ratio at the crossing step, its range and the lower bound, recomputed by hand."""
    from orchestrator.bench.measure import equal_strength

    gen = torch.Generator().manual_seed(7)
    ref = torch.rand(64, generator=gen, dtype=torch.float64)
    curve = [
        ref + (k - 3) * 0.05 + 0.01 * torch.randn(64, generator=gen, dtype=torch.float64) for k in range(8)
    ]
    base = [[0.1 * k * (1 + 0.02 * r) for k in range(8)] for r in range(5)]
    jiio = [0.05 * (1 + 0.03 * r) for r in range(5)]
    out = equal_strength(base, jiio, curve, ref, higher_is_stronger=True)
    c = crossing(curve, ref, higher_is_stronger=True)
    assert (out["step"], out["step_low"], out["step_high"]) == (c["step"], c["step_low"], c["step_high"])

    def geo(k):
        logs = np.log([base[r][k] / jiio[r] for r in range(5)])
        half = stats.t.ppf(0.975, 4) * logs.std(ddof=1) / np.sqrt(5)
        return np.exp(logs.mean()), np.exp(logs.mean() - half), np.exp(logs.mean() + half)

    assert out["ratio"]["ratio"] == pytest.approx(geo(c["step"])[0])
    assert out["range"] == pytest.approx([geo(c["step_low"])[1], geo(c["step_high"])[2]])
    assert out["lower_bound"] is None
    never = equal_strength(base, jiio, [v - 10 for v in curve], ref, higher_is_stronger=True)
    assert never["step"] is None and never["lower_bound"] == pytest.approx(geo(7)[1])
