"""jiio confirm: which configurations it re-runs, and the per-configuration summary."""

from __future__ import annotations

import json
import statistics

import pytest

from orchestrator.confirm import plan_confirm, summarize
from orchestrator.results import ResultStore


def _sweep(store, rows, paper="p"):
    meta = {
        "metrics": ["acc"],
        "modes": ["max"],
        "seed": 5,
        "paper_trial_ids": [paper],
        "space": {"a": {"kind": "uniform", "low": 0, "high": 1, "choices": []}},
        "fixed": {"seed": 5},
        "data": {},
    }
    store.put(f"{store.base}/meta/sweep=s/sweep.json", json.dumps(meta).encode())
    for tid, status, a, acc in rows:
        store.write("trials", "s", tid, [{"trial_id": tid, "status": status, "a": a, "acc": acc}])


def test_the_top_k_completed_and_the_paper_configuration_each_with_new_seeds(tmp_path):
    store = ResultStore(str(tmp_path))
    _sweep(
        store,
        [
            ("x", "completed", 0.1, 0.9),
            ("y", "completed", 0.2, 0.5),
            ("z", "diverged", 0.3, None),
            ("w", "completed", 0.4, 0.7),
            ("p", "completed", 0.6, 0.3),
        ],
    )
    meta, points = plan_confirm(store, "s", top=2, seeds=2)
    assert [p["a"] for p in points] == [0.1, 0.1, 0.4, 0.4, 0.6, 0.6]  # best two, then the paper's
    assert {p["seed"] for p in points} == {1005, 1006}  # never the sweep's own seed (5)
    _, again = plan_confirm(store, "s", top=5, seeds=1)
    assert [p["a"] for p in again] == [0.1, 0.4, 0.2, 0.6]  # the paper's is already among them: once
    with pytest.raises(ValueError, match="must be >= 1"):
        plan_confirm(store, "s", top=0, seeds=2)
    with pytest.raises(ValueError, match="no sweep 'nope'"):
        plan_confirm(store, "nope", top=1, seeds=1)


def test_summary_is_the_mean_and_spread_over_seeds(tmp_path):
    store = ResultStore(str(tmp_path))
    vals = {0.1: [0.8, 0.9, 0.7], 0.4: [0.6, 0.65]}
    for a, accs in vals.items():
        for i, acc in enumerate(accs):
            store.write(
                "trials",
                "c",
                f"{a}-{i}",
                [{"trial_id": f"{a}-{i}", "status": "completed", "a": a, "seed": i, "acc": acc}],
            )
    store.write(
        "trials", "c", "bad", [{"trial_id": "bad", "status": "diverged", "a": 0.4, "seed": 9, "acc": None}]
    )
    table = summarize(store, "c", "acc", ["a"]).set_index("a")
    for a, accs in vals.items():
        assert table.loc[a, "mean"] == pytest.approx(statistics.mean(accs))
        assert table.loc[a, "std"] == pytest.approx(statistics.stdev(accs))
        assert table.loc[a, "count"] == len(accs)
    assert table.loc[0.4, "not_completed"] == 1 and table.loc[0.1, "not_completed"] == 0
