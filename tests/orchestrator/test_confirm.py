"""jiio confirm: which configurations it re-runs, and the per-configuration summary."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest

from orchestrator.analysis import AnalyzeError
from orchestrator.analysis.seed_verdicts import BEATS, SAME
from orchestrator.cli import main
from orchestrator.commands.confirm import plan_confirm, report, summarize
from orchestrator.stats import t_interval
from orchestrator.storage import ResultStore


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


SEEDS = (1000, 1001, 1002)
FIXED = {"task": "adversarial", "seed": 0, "batch_size": 64, "eval_batches": None}
DATA = {"dataset": "digits", "data_root": None, "seed": 0}
SPACE = {"a": {"kind": "uniform", "low": 0, "high": 1, "choices": []}}
# the sweep: b1 ranked first by luck (its confirmation equals the paper's), b2 truly better by +0.03
PARENT = [("b1", "completed", 0.1, 0.47), ("b2", "completed", 0.2, 0.45), ("p", "completed", 0.6, 0.40)]
PARENT += [("x", "completed", 0.4, 0.30), ("d", "diverged", 0.9, None)]
EFFECT = {0.1: 0.0, 0.2: 0.03, 0.6: 0.0}


def _confirmation(root, top=2, side=True):
    """A sweep ``s`` and its confirmation ``s-confirm`` as jiio confirm writes them: the seed
    moves every configuration alike (sd 0.05, larger than any effect)."""
    store = ResultStore(root)
    meta = {"kind": "train", "metrics": ["robust_acc"], "modes": ["max"], "space": SPACE, "fixed": FIXED}
    meta.update(data=DATA, paper_trial_ids=["p"], trials=len(PARENT), seed=0)
    store.put(f"{store.base}/meta/sweep=s/sweep.json", json.dumps(meta).encode())
    for tid, status, a, acc in PARENT:
        row = {"trial_id": tid, "status": status, "a": a, "robust_acc": acc, "eval_n": 360, "seed": 0}
        store.write("trials", "s", tid, [row])
    rng = np.random.default_rng(4)
    seed_effect = dict(zip(SEEDS, rng.normal(0, 0.05, len(SEEDS)), strict=True))
    space = {**SPACE, "seed": {"kind": "choice", "low": None, "high": None, "choices": list(SEEDS)}}
    ids = [f"c{a}-{s}" for a in EFFECT for s in SEEDS]
    cmeta = {**meta, "space": space, "fixed": {k: v for k, v in FIXED.items() if k != "seed"}}
    cmeta.update(paper_trial_ids=ids, trials=len(ids))  # every point is enqueued: all count as the paper's
    store.put(f"{store.base}/meta/sweep=s-confirm/sweep.json", json.dumps(cmeta).encode())
    if side:
        body = {"parent": "s", "top": top, "seeds": len(SEEDS)}
        store.put(f"{store.base}/meta/sweep=s-confirm/confirm.json", json.dumps(body).encode())
    for a, effect in EFFECT.items():
        for s in SEEDS:
            acc = 0.42 + effect + seed_effect[s] + rng.normal(0, 0.003)
            row = {"trial_id": f"c{a}-{s}", "status": "completed", "a": a, "seed": s, "robust_acc": acc}
            row["eval_n"] = 360
            store.write("trials", "s-confirm", row["trial_id"], [row])
    return store


def _rows(c):
    return {r["trial_id"]: r for r in c["configs"]}


def test_summary_is_a_pure_function_of_the_two_sweeps_rows(tmp_path):
    store = _confirmation(str(tmp_path))
    c = summarize(store.meta("s"), store.read("trials", "s"), store.read("trials", "s-confirm"), top=2)
    assert c["why"] == (
        "3 configurations for --top 2: the sweep's 2 best and the paper's, added as the reference every "
        "verdict is paired against"
    )
    rows = _rows(c)
    assert list(rows) == ["b1", "b2", "p"]  # the sweep's order, trial ids of the sweep
    assert rows["b1"]["labels"] == ["sweep's best"] and rows["b2"]["labels"] == ["rank 2 in the sweep"]
    assert (
        rows["p"]["labels"] == ["paper", "rank 3 in the sweep"]
        and rows["p"]["verdict"] == "the paper's settings"
    )
    assert [r["seeds"] for r in rows.values()] == [3, 3, 3] and c["seeds"] == [str(s) for s in SEEDS]
    # b2 is truly better by +0.03 on every seed; the seeds move everything by more (sd 0.05)
    b2, p = rows["b2"], rows["p"]
    assert b2["ci"][0] < p["ci"][1]  # separately, their intervals over seeds overlap
    assert b2["verdict"] == BEATS and b2["vs_paper"]["ci"][0] > 0
    assert b2["vs_paper"]["difference"] == pytest.approx(0.03, abs=0.01)
    # b1 came first in the sweep by luck: no better than the paper's when retrained
    assert rows["b1"]["verdict"] == SAME and "cannot be told apart" in rows["b1"]["vs_paper"]["text"]
    m, lo, hi, n = t_interval([r for r in rows["b1"]["per_seed"].values()])
    assert rows["b1"]["mean"] == pytest.approx(m) and rows["b1"]["ci"] == pytest.approx([lo, hi]) and n == 3
    # selection optimism: the sweep's value minus the confirmed mean, and beyond the paper's
    b1 = rows["b1"]
    assert b1["sweep_value"] == 0.47 and b1["optimism"]["value"] == pytest.approx(0.47 - m)
    assert b1["optimism"]["ci"][0] < b1["optimism"]["value"] < b1["optimism"]["ci"][1]
    rel = b1["optimism_vs_paper"]
    d = [b1["per_seed"][k] - p["per_seed"][k] for k in b1["per_seed"]]
    assert rel["value"] == pytest.approx((0.47 - 0.40) - statistics.mean(d))
    assert rel["ci"][0] > 0  # the sweep's pick sat above what retraining gives, beyond the paper's shift
    assert "optimism_vs_paper" not in p


def test_why_says_when_the_paper_is_among_the_top(tmp_path):
    store = _confirmation(str(tmp_path), top=3)
    c = summarize(store.meta("s"), store.read("trials", "s"), store.read("trials", "s-confirm"), top=3)
    assert c["why"] == "3 configurations for --top 3: the sweep's 3 best, the paper's among them"
    c = summarize(store.meta("s"), store.read("trials", "s"), store.read("trials", "s-confirm"), top=9)
    assert c["why"].endswith("(only 4 trials of the sweep completed)")


def test_report_prints_the_table_json_and_html(tmp_path, capsys):
    store = _confirmation(str(tmp_path))
    assert report(store.root, "s", as_json=True, out=str(tmp_path / "r")) == 0
    c = json.loads(capsys.readouterr().out)
    assert {r["trial_id"]: r["verdict"] for r in c["configs"]} == {
        "b1": SAME,
        "b2": BEATS,
        "p": "the paper's settings",
    }
    assert c["report"] == str(tmp_path / "r" / "s-confirm-report.html")
    html = (tmp_path / "r" / "s-confirm-report.html").read_text()
    assert "Confirmation over seeds" in html and "beats the paper&#x27;s settings" in html and "b2" in html
    assert report(store.root, "s", out=str(tmp_path / "r")) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        "confirmation of s (s-confirm): 3 configurations for --top 2: the sweep's 2 best and the paper's"
    )
    header = next(line for line in out.splitlines() if line.strip().startswith("trial"))
    for col in ("label", "seeds", "robust_acc mean", "95% CI over seeds", "vs paper", "verdict", "optimism"):
        assert col in header
    assert "b2: rank 2 in the sweep beats the paper's settings: difference +" in out
    assert "selection optimism" in out and "variance components of robust_acc" in out
    # jiio analyze on the confirmation sweep says the same (the paper's is the parent's, not every point)
    assert main(["analyze", store.root, "--name", "s-confirm", "--no-plots", "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "confirmation of s (s-confirm)" in out and "rank 2 in the sweep beats the paper's settings" in out
    paper_table = out[out.index("paper configuration") :].splitlines()[2]
    assert paper_table.split()[0].startswith("c0.6-")  # the paper's (a=0.6), not the first point run


def test_a_confirmation_without_its_side_file_is_found_by_name(tmp_path):
    store = _confirmation(str(tmp_path), side=False)
    from orchestrator.analysis import summarize as summarize_sweep

    c = summarize_sweep(store, "s-confirm")["confirm"]
    assert c["why"] == "3 configurations" and _rows(c)["b2"]["verdict"] == BEATS


def test_nothing_confirmed_yet(tmp_path, capsys):
    store = _confirmation(str(tmp_path))
    for f in (tmp_path / "trials" / "sweep=s-confirm").iterdir():
        f.unlink()
    assert report(store.root, "s") == 1
    assert "nothing confirmed yet in sweep s-confirm" in capsys.readouterr().err
    with pytest.raises(AnalyzeError, match="does not exist"):
        report(str(tmp_path / "nowhere"), "s")
