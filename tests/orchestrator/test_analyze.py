"""jiio analyze on a synthetic sweep whose answers are known by construction."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from orchestrator.analyze import plot_sweep, run, summarize, summary_text
from orchestrator.results import ResultStore
from orchestrator.solve_trial import pareto_front


def _store(tmp_path, multi=False):
    store = ResultStore(str(tmp_path))
    metrics, modes = (["inner_objective", "solve_s"], ["min", "min"]) if multi else (["robust_acc"], ["max"])
    meta = {
        "metrics": metrics,
        "modes": modes,
        "trials": 5,
        "paper_trial_ids": ["p"],
        "space": {"alpha_x": {"kind": "loguniform", "low": 0.01, "high": 1.0}},
    }
    store.put(f"{store.base}/meta/sweep=s/sweep.json", json.dumps(meta).encode())
    rows = [
        ("p", "completed", 0.30, 0.6, 3.0),
        ("a", "completed", 0.55, 0.2, 2.0),
        ("b", "completed", 0.40, 0.1, 1.0),
        ("c", "diverged", None, 5.0, 0.5),
        ("d", "pruned", 0.10, 0.05, 0.2),
    ]
    for tid, status, acc, ax, wall in rows:
        row = {"trial_id": tid, "status": status, "alpha_x": ax, "wall_s": wall}
        row.update(
            {"inner_objective": -acc if acc is not None else None, "solve_s": wall}
            if multi
            else {"robust_acc": acc}
        )
        store.write("trials", "s", tid, [row])
    store.write(
        "traces",
        "s",
        "a-e0001",
        [{"trial_id": "a", "step": 1, "iteration": i, "residual": 0.5**i} for i in range(1, 6)],
    )
    return store


def test_summary_ranks_and_compares_with_the_paper(tmp_path):
    s = summarize(_store(tmp_path), "s")
    assert s["status"] == {"completed": 3, "diverged": 1, "pruned": 1}
    assert [r["trial_id"] for r in s["best"]] == ["a", "b", "p"]  # completed only, best first
    assert s["paper"]["trial_id"] == "p"
    assert s["best_minus_paper"] == pytest.approx(0.25)
    text = summary_text(s)
    assert "best beats the paper configuration by +0.25" in text


def test_plots_are_written_and_open(tmp_path):
    paths = plot_sweep(_store(tmp_path), "s", str(tmp_path / "plots"))
    assert {p.rsplit("-", 1)[1] for p in paths} == {"params.png", "progress.png", "traces.png"}
    for p in paths:
        with Image.open(p) as im:
            assert im.size[0] > 100 and im.size[1] > 100


def test_multi_objective_pareto(tmp_path):
    store = _store(tmp_path, multi=True)
    trials = store.read("trials", "s")
    done = trials[trials["status"] == "completed"]
    mask = pareto_front(list(zip(done["inner_objective"], done["solve_s"], strict=True)))
    store.write(
        "pareto", "s", "front", done[mask][["trial_id", "inner_objective", "solve_s"]].to_dict("records")
    )
    s = summarize(store, "s")
    # p (-0.30, 3.0) is dominated by a (-0.55, 2.0); a and b (-0.40, 1.0) are not dominated.
    assert sorted(r["trial_id"] for r in s["pareto"]) == ["a", "b"]
    assert any(p.endswith("pareto.png") for p in plot_sweep(store, "s", str(tmp_path / "plots")))


def test_pareto_front_brute_force():
    pts = [(3, 1), (1, 3), (2, 2), (2, 3), (3, 3), (1, 3)]
    front = pareto_front(pts)
    assert front == [True, True, True, False, False, True]


def test_run_reports_missing_sweeps_clearly(tmp_path, capsys):
    store = _store(tmp_path)
    assert run(store.root, "s", str(tmp_path / "out"), as_json=True) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["best"][0]["trial_id"] == "a" and len(out["plots"]) == 3
    with pytest.raises(FileNotFoundError, match="sweeps there: s"):
        run(store.root, "nope", None, as_json=False, plots=False)


def test_jiio_analyze_command_line(tmp_path, capsys):
    from orchestrator.cli import main

    store = _store(tmp_path)
    assert main(["analyze", store.root, "--name", "s", "--json", "--no-plots"]) == 0
    assert json.loads(capsys.readouterr().out)["best"][0]["trial_id"] == "a"
    assert main(["analyze", str(tmp_path / "nothing-here")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("jiio analyze: error: no results")
