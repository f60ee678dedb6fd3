"""Paired comparisons in jiio analyze: two trials scored on the same samples are compared
by their per-sample differences, checked against scipy's paired t interval; anything that
cannot be shown to be on the same samples stays unpaired."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from orchestrator.analysis import summarize
from orchestrator.analysis.intervals import Interval, PerSample, compare_values, sample_key
from orchestrator.cli import main
from orchestrator.stats import bootstrap
from orchestrator.storage import ResultStore

scipy_stats = pytest.importorskip("scipy.stats")

B, BATCHES = 64, 2
N = B * BATCHES
SOLVE_SPACE = {"alpha_x": {"kind": "loguniform", "low": 0.05, "high": 2.0, "choices": []}}
FIXED = {"task": "adversarial", "seed": 0, "batch_size": B, "eval_batches": BATCHES, "max_iter": 20}
DATA = {"dataset": "digits", "data_root": None, "seed": 0}


def _t_interval(a, b):
    """Independent reference: Student-t 95% interval of the mean difference over finite pairs."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    ci = scipy_stats.ttest_rel(a[ok], b[ok]).confidence_interval(0.95)
    return float(np.mean(a[ok] - b[ok])), float(ci.low), float(ci.high), int(ok.sum())


def _iv(values, key="k"):
    v = np.asarray(values, float)
    lo, hi = bootstrap(v)
    return Interval(lo, hi, int(np.isfinite(v).sum()), "bootstrap", PerSample(v, key))


@pytest.fixture(scope="module")
def planted():
    """Per-sample values whose spread (how hard each sample is) dwarfs a small, real shift."""
    rng = np.random.default_rng(7)
    hard = rng.normal(-1.05, 0.8, N)
    return {
        "hard": hard,
        "paper": hard + rng.normal(0, 0.01, N),
        "better": hard - 0.01 + rng.normal(0, 0.01, N),  # lower is better
    }


# ---------------------------------------------------------------- compare_values


def test_paired_difference_is_significant_where_the_intervals_overlap(planted):
    a, b = planted["better"], planted["paper"]
    ia, ib = _iv(a), _iv(b)
    assert ia.hi > ib.lo and ib.hi > ia.lo  # the unpaired intervals overlap
    v = compare_values(("best", a.mean(), ia), ("paper", b.mean(), ib), "inner_objective", "min")
    d, lo, hi, n = _t_interval(b, a)  # min: positive when a is lower
    p = v["paired"]
    assert v["significant"] is True and p["n"] == n == N
    assert p["difference"] == pytest.approx(d, rel=1e-9)
    width = hi - lo
    assert p["interval"][0] == pytest.approx(lo, abs=0.15 * width)
    assert p["interval"][1] == pytest.approx(hi, abs=0.15 * width)
    assert lo > 0 and p["interval"][0] > 0
    assert v["text"].startswith(
        f"best beats paper (inner_objective, lower is better): paired over {N} samples: "
    )
    assert f"paired over {N} samples: difference +" in v["text"] and v["text"].endswith("which excludes 0")
    # the other way round: significantly worse, and the verdict says so
    w = compare_values(("paper", b.mean(), ib), ("best", a.mean(), ia), "inner_objective", "min")
    assert w["significant"] is False and w["text"].startswith("paper is worse than best")


def test_a_zero_difference_stays_inside_the_noise(planted):
    rng = np.random.default_rng(1)
    b = planted["paper"]
    e = rng.normal(0, 0.01, N)
    a = b + (e - e.mean())  # per-sample noise, no shift at all
    v = compare_values(("a", a.mean(), _iv(a)), ("b", b.mean(), _iv(b)), "test_psnr", "max")
    d, lo, hi, n = _t_interval(a, b)
    p = v["paired"]
    assert v["significant"] is False and lo < 0 < hi and p["interval"][0] < 0 < p["interval"][1]
    assert p["difference"] == pytest.approx(d, abs=1e-12)
    assert "cannot be told apart" in v["text"] and "which contains 0" in v["text"]
    # the same values: no difference, so no evaluation size would separate them
    same = compare_values(("a", b.mean(), _iv(b)), ("b", b.mean(), _iv(b)), "test_psnr", "max")
    assert same["significant"] is False and math.isinf(same["growth"])
    assert "no difference was observed" in same["text"]


def test_growth_follows_the_paired_interval(planted):
    rng = np.random.default_rng(2)
    b = planted["paper"]
    a = b + 0.0004 + rng.normal(0, 0.01, N)  # a shift too small for n = 128
    v = compare_values(("a", a.mean(), _iv(a)), ("b", b.mean(), _iv(b)), "test_psnr", "max")
    d, lo, hi, n = _t_interval(a, b)
    assert v["significant"] is False and lo < 0 < hi
    ref = ((d - lo) / d) ** 2 if d > 0 else ((hi - d) / d) ** 2  # half-width ~ 1/sqrt(n)
    assert v["growth"] == pytest.approx(ref, rel=0.35)
    assert v["n_needed"] == math.ceil(N * v["growth"])
    assert f"to n of about {v['n_needed']} samples scored by both" in v["text"]


def test_non_finite_pairs_are_dropped(planted):
    a, b = planted["better"].copy(), planted["paper"].copy()
    a[[3, 70]] = np.nan
    b[5] = np.inf
    v = compare_values(("best", np.nanmean(a), _iv(a)), ("paper", b.mean(), _iv(b)), "inner_objective", "min")
    d, lo, hi, n = _t_interval(b, a)
    assert n == N - 3 and v["paired"]["n"] == n
    assert v["paired"]["difference"] == pytest.approx(d, rel=1e-9) and v["significant"] is True


def test_unequal_lengths_or_other_samples_fall_back_to_unpaired(planted):
    a, b = planted["better"], planted["paper"]
    for ia, ib in (
        (_iv(a[:-1]), _iv(b)),  # misaligned lengths
        (_iv(a, key="one"), _iv(b, key="other")),  # not the same samples
        (Interval(*bootstrap(a), N, "bootstrap"), _iv(b)),  # no per-sample values on one side
    ):
        v = compare_values(("best", a.mean(), ia), ("paper", b.mean(), ib), "inner_objective", "min")
        assert "paired" not in v and v["significant"] is False
        assert "95% intervals [" in v["text"] and "overlap" in v["text"]


def test_sample_key_is_conservative():
    meta = {"kind": "solve", "checkpoint": "m.pt", "space": SOLVE_SPACE, "fixed": FIXED, "data": DATA}
    assert sample_key(meta) is not None
    assert sample_key({**meta, "fixed": {**FIXED, "max_iter": 80}}) == sample_key(meta)  # a solver setting
    assert sample_key({**meta, "fixed": {**FIXED, "eval_batches": 3}}) != sample_key(meta)
    assert sample_key({**meta, "checkpoint": "other.pt"}) != sample_key(meta)
    assert sample_key({**meta, "kind": "train"}) != sample_key(meta)
    for bad in (
        {**meta, "space": {**SOLVE_SPACE, "batch_size": {}}},  # searched: other samples per trial
        {k: v for k, v in meta.items() if k != "data"},  # an old sweep: no data config recorded
        {k: v for k, v in meta.items() if k != "checkpoint"},
        {k: v for k, v in meta.items() if k != "kind"},
        {},
    ):
        assert sample_key(bad) is None


# ---------------------------------------------------------------- end to end: jiio analyze


def _solve_sweep(root, sweep, trials, *, old_rows=False, **meta):
    """A solve sweep as run_solve writes it: one steps row per batch listing every sample
    (NaN where the solve diverged) with its eval_n; ``old_rows``: as before, the solved
    samples only and no eval_n."""
    store = ResultStore(root)
    body = {
        "kind": "solve",
        "metrics": ["inner_objective", "solve_s"],
        "modes": ["min", "min"],
        "space": SOLVE_SPACE,
        "fixed": FIXED,
        "data": DATA,
        "checkpoint": "/models/m.pt",
        "trials": len(trials),
        "paper_trial_ids": ["paper"],
        **meta,
    }
    store.put(f"{store.base}/meta/sweep={sweep}/sweep.json", json.dumps(body).encode())
    for i, (tid, values) in enumerate(trials.items()):
        batches = [values[k * B : (k + 1) * B] for k in range(BATCHES)]
        means = [float(np.nanmean(v)) for v in batches]
        row = {"trial_id": tid, "status": "completed", "inner_objective": float(np.mean(means))}
        row.update(solve_s=1.0 + i, eval_n=N, alpha_x=0.1 * (i + 1), wall_s=2.0)
        store.write("trials", sweep, tid, [row])
        steps = []
        for k, v in enumerate(batches):
            listed = [float(x) for x in v if not (old_rows and np.isnan(x))]
            step = {"trial_id": tid, "step": k + 1, "epoch": 0, "phase": "solve", "loss": means[k]}
            step.update(solver_diverged=float(np.isnan(v).mean()), inner_objective_samples=listed)
            if not old_rows:
                step["eval_n"] = len(v)
            steps.append(step)
        store.write("steps", sweep, f"{tid}-e0000", steps)
    return store


def _trials(planted, diverged=True):
    best, paper = planted["better"].copy(), planted["paper"].copy()
    if diverged:  # a different sample diverged in each, one near its batch's mean (the ranking holds)
        hard = planted["hard"]
        best[np.argmin(abs(hard[:B] - hard[:B].mean()))] = np.nan
        paper[B + np.argmin(abs(hard[B:] - hard[B:].mean()))] = np.nan
    others = {f"t{i}": planted["hard"] + 0.05 * (i + 1) for i in range(3)}
    return {"paper": paper, "best": best, **others}


def _analyze(capsys, *argv):
    code = main(["analyze", *map(str, argv)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out


def test_jiio_analyze_pairs_the_trials_of_a_solve_sweep(tmp_path, planted, capsys):
    store = _solve_sweep(str(tmp_path), "s", _trials(planted))
    code, out = _analyze(capsys, store.root, "--name", "s", "--json", "--no-plots", "--no-report")
    s = json.loads(out)
    assert code == 0 and s["best"][0]["trial_id"] == "best" and s["paper"]["trial_id"] == "paper"
    v = s["verdict"]
    t = _trials(planted)
    d, lo, hi, n = _t_interval(t["paper"], t["best"])  # min: positive when best is lower
    assert v["significant"] is True and v["paired"]["n"] == n == N - 2
    assert v["paired"]["difference"] == pytest.approx(d, rel=1e-9)
    assert f"paired over {N - 2} samples" in v["text"]
    assert "confirm it on fresh samples" in v["text"]  # the best of 5 trials: still optimistic
    # the marginal intervals ignore the NaN; the per-sample list is printed compactly
    assert s["best"][0]["inner_objective_n"] == N - 1
    assert s["best"][0]["inner_objective_per_sample"] == f"<{N} per-sample values>"
    code, out = _analyze(capsys, store.root, "--name", "s", "--no-plots", "--no-report")
    assert code == 0 and f"paired over {N - 2} samples: difference +" in out


def test_a_searched_seed_or_old_rows_stay_unpaired(tmp_path, planted):
    space = {**SOLVE_SPACE, "seed": {"kind": "int", "low": 0, "high": 9, "choices": []}}
    store = _solve_sweep(str(tmp_path / "seed"), "s", _trials(planted), space=space)
    v = summarize(store, "s")["verdict"]
    assert "paired" not in v and "95% intervals [" in v["text"] and v["significant"] is False
    # rows written before eval_n: both list 127 solved samples, but not the same ones
    store = _solve_sweep(str(tmp_path / "old"), "s", _trials(planted), old_rows=True)
    v = summarize(store, "s")["verdict"]
    assert "paired" not in v and "95% intervals [" in v["text"]
    # old rows where nothing diverged list every sample: they can be paired
    store = _solve_sweep(str(tmp_path / "whole"), "s", _trials(planted, diverged=False), old_rows=True)
    v = summarize(store, "s")["verdict"]
    assert v["paired"]["n"] == N and v["significant"] is True


def test_compare_pairs_sweeps_on_the_same_samples_only(tmp_path, planted, capsys):
    t = _trials(planted)
    root = str(tmp_path)
    _solve_sweep(root, "a", {"best": t["best"], "x": t["t0"]})
    _solve_sweep(root, "b", {"paper": t["paper"], "y": t["t1"]})
    _solve_sweep(root, "c", {"paper": t["paper"], "y": t["t1"]}, checkpoint="/models/other.pt")
    code, out = _analyze(capsys, root, "--compare", "a", "b", "--json")
    v = json.loads(out)["verdict"]
    assert code == 0 and v["significant"] is True and v["paired"]["n"] == N - 2
    # the reported values average different solved samples: the paired difference counts
    assert v["text"].startswith("a's best beats b's best (inner_objective, lower is better): paired over")
    assert "2 samples without a finite value in one or both were left out" in v["text"]
    code, out = _analyze(capsys, root, "--compare", "a", "c", "--json")
    v = json.loads(out)["verdict"]
    assert "paired" not in v and v["significant"] is False and "overlap" in v["text"]


def test_a_training_sweep_pairs_its_last_evaluation(tmp_path, planted):
    """Every trial of a training sweep is evaluated on the same held-out split (the data
    config and seed are fixed): the last eval row's lists are paired."""
    store = ResultStore(str(tmp_path))
    space = {"alpha_x": SOLVE_SPACE["alpha_x"]}
    meta = {"kind": "train", "metrics": ["test_psnr"], "modes": ["max"], "space": space}
    meta.update(fixed={**FIXED, "eval_batches": None}, data=DATA, paper_trial_ids=["paper"])
    store.put(f"{store.base}/meta/sweep=s/sweep.json", json.dumps(meta).encode())
    rng = np.random.default_rng(3)
    psnr = {"paper": 20 + 3 * planted["hard"], "best": 20.02 + 3 * planted["hard"] + rng.normal(0, 0.01, N)}
    for i, (tid, v) in enumerate(psnr.items()):
        store.write(
            "trials",
            "s",
            tid,
            [
                {
                    "trial_id": tid,
                    "status": "completed",
                    "test_psnr": v.mean(),
                    "eval_n": N,
                    "alpha_x": 0.1 + i,
                }
            ],
        )
        early = rng.permutation(v)  # an earlier evaluation: must not be the one paired
        rows = [
            {"trial_id": tid, "step": 5, "epoch": 0, "phase": "train", "loss": 1.0},
            {
                "trial_id": tid,
                "step": 5,
                "epoch": 0,
                "phase": "eval",
                "test_psnr_samples": list(early),
                "eval_n": N,
            },
            {
                "trial_id": tid,
                "step": 10,
                "epoch": 1,
                "phase": "eval",
                "test_psnr_samples": list(v),
                "eval_n": N,
            },
        ]
        store.write("steps", "s", tid, rows)
    v = summarize(store, "s")["verdict"]
    d, lo, hi, n = _t_interval(psnr["best"], psnr["paper"])
    assert v["significant"] is True and v["paired"]["n"] == N
    assert v["paired"]["difference"] == pytest.approx(d, rel=1e-9)
