"""jiio analyze on a synthetic sweep whose answers are known by construction."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from orchestrator.analyze import AnalyzeError, plot_sweep, run, summarize, summary_text
from orchestrator.cli import main
from orchestrator.pareto import pareto_front
from orchestrator.storage import ResultStore


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
    # no eval_n and no per-sample values: the difference is shown, never called a win
    assert "best beats" not in text
    assert "best - the paper configuration = +0.25 (robust_acc)" in text and "n unknown" in text
    assert s["verdict"]["significant"] is None


def test_plots_are_written_and_open(tmp_path):
    paths = plot_sweep(_store(tmp_path), "s", str(tmp_path / "plots"))
    # one searched parameter: no divergence map or parallel coordinates; no eval steps: no curves;
    # 5 trials: fewer than importance needs (importance.MIN_TRIALS), so no importance plot
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
    assert out["best"][0]["trial_id"] == "a" and len(out["plots"]) == 3  # no importance: 5 trials
    assert out["report"] == str(tmp_path / "out" / "s-report.html")
    with pytest.raises(AnalyzeError, match="sweeps there: s"):
        run(store.root, "nope", None, as_json=False, plots=False)


def test_jiio_analyze_command_line(tmp_path, capsys):
    store = _store(tmp_path)
    assert main(["analyze", store.root, "--name", "s", "--json", "--no-plots"]) == 0
    assert json.loads(capsys.readouterr().out)["best"][0]["trial_id"] == "a"
    assert main(["analyze", str(tmp_path / "nothing-here")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("jiio analyze: error: storage path ")
    assert "does not exist" in err[0]
    # analyze takes the path as its first argument: no "--storage" flag to pass to it
    assert "pass the --storage" not in err[0] and "first argument" in err[0]


# --- bad input: a clear message and an exit code, never a traceback (issue 7) -----------------


def _analyze(capsys, *argv):
    """``jiio analyze ARGV``: exit code, stdout, stderr."""
    code = main(["analyze", *map(str, argv)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def _meta(store, sweep="s", **meta):
    store.put(f"{store.base}/meta/sweep={sweep}/sweep.json", json.dumps(meta).encode())


def _failed_sweep(tmp_path, meta=True):
    """Every trial diverged or errored before its first evaluation: no robust_acc anywhere."""
    store = ResultStore(str(tmp_path / "runs"))
    if meta:
        _meta(store, metrics=["robust_acc"], modes=["max"], trials=3, paper_trial_ids=["a"])
    store.write("trials", "s", "a", [{"trial_id": "a", "status": "diverged", "alpha_x": 2.0, "wall_s": 1.0}])
    store.write("trials", "s", "b", [{"trial_id": "b", "status": "diverged", "alpha_x": 3.0, "wall_s": 2.0}])
    err = "Traceback (most recent call last):\n  ...\nRuntimeError: CUDA out of memory"
    store.write("trials", "s", "c", [{"trial_id": "c", "status": "error", "alpha_x": 0.5, "error": err}])
    return store


def test_objective_never_reported(tmp_path, capsys):
    store = _failed_sweep(tmp_path)
    code, out, err = _analyze(capsys, store.root, "--name", "s", "--out", tmp_path / "plots")
    assert code == 1  # nothing to rank; not a usage error
    assert "sweep s: 3 trials of 3 (diverged 2, error 1)" in out
    assert "nothing to rank: no trial reported robust_acc" in out
    assert "RuntimeError: CUDA out of memory" in out  # the errored trial's last error line
    assert "--resume" in out
    assert "nothing to rank in sweep s" in err
    code, out, _ = _analyze(capsys, store.root, "--json", "--no-plots")
    s = json.loads(out)
    assert code == 1 and s["ranked"] == 0 and not s.get("best")
    assert any("robust_acc" in n for n in s["notes"])


def test_objective_never_reported_without_meta(tmp_path, capsys):
    store = _failed_sweep(tmp_path, meta=False)  # an old sweep: no meta/ file to name the objective
    code, out, _ = _analyze(capsys, store.root, "--out", tmp_path / "plots")
    assert code == 1
    assert "meta/sweep=s/sweep.json is missing" in out and "robust_acc" in out


def test_one_sweep_without_objective_does_not_fail_the_others(tmp_path, capsys):
    store = _failed_sweep(tmp_path)
    store.write("trials", "good", "x", [{"trial_id": "x", "status": "completed", "robust_acc": 0.4}])
    code, out, _ = _analyze(capsys, store.root, "--no-plots")
    assert code == 0
    assert "nothing to rank" in out and "sweep good: 1 trials" in out


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", "does not exist"),
        ("empty", "it is empty"),
        ("file", "is a file, not a results directory"),
        ("elsewhere", "it holds data, but no trials/sweep=NAME/"),
    ],
)
def test_nothing_under_the_path(tmp_path, capsys, case, expected):
    path = tmp_path / "runs"
    if case == "empty":
        path.mkdir()
    elif case == "file":
        path.write_text("not a directory")
    elif case == "elsewhere":
        (path / "data").mkdir(parents=True)
    code, out, err = _analyze(capsys, path)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jiio analyze: error: ") and expected in lines[0]
    assert "--storage" in lines[0]  # what to do


def test_sweep_without_rows(tmp_path, capsys):
    store = ResultStore(str(tmp_path / "runs"))
    (tmp_path / "runs" / "trials" / "sweep=s").mkdir(parents=True)  # no trial has finished yet
    store.write_pending("s", "a", {"alpha_x": 0.1})
    store.write_pending("s", "b", {"alpha_x": 0.2})
    for argv in ([store.root], [store.root, "--name", "s"]):
        code, out, err = _analyze(capsys, *argv, "--no-plots")
        assert code == 2 and out == ""
        assert (
            err.startswith("jiio analyze: error: ") and "no trial rows" in err and "2 trials started" in err
        )


def test_sweep_started_but_not_finished(tmp_path, capsys):
    store = ResultStore(str(tmp_path / "runs"))
    store.write_pending("s", "a", {"alpha_x": 0.1})  # no trials/ directory at all yet
    code, _, err = _analyze(capsys, store.root, "--name", "s", "--no-plots")
    assert code == 2 and "sweep s" in err and "no finished trial yet (1 started)" in err


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_partly_corrupt_sweep(tmp_path, capsys):
    store = _store(tmp_path)
    for tid, acc in (("a", 0.55), ("b", 0.40)):
        store.write(
            "steps", "s", f"{tid}-e0001", [{"trial_id": tid, "step": 10, "phase": "eval", "robust_acc": acc}]
        )
    _truncate(tmp_path / "trials" / "sweep=s" / "b.parquet")
    (tmp_path / "steps" / "sweep=s" / "a-e0001.parquet").write_bytes(b"\x00garbage\xff" * 20)
    code, out, err = _analyze(capsys, store.root, "--name", "s", "--out", tmp_path / "plots")
    assert code == 0
    assert "sweep s: 4 trials of 5" in out  # b is unreadable; a, p, c, d are analysed
    best = out.split("best trials:")[1].split("paper configuration:")[0]
    assert "a" in best.split() and "b" not in best.split()
    for bad in ("trials/sweep=s/b.parquet", "steps/sweep=s/a-e0001.parquet"):
        assert err.count(bad) == 1, err  # named once, after the analysis
    assert "skipped 2 unreadable files" in err and "--resume" in err
    assert (tmp_path / "trials" / "sweep=s" / "b.parquet").exists()  # analysis never moves files
    code, out, _ = _analyze(capsys, store.root, "--name", "s", "--json", "--out", tmp_path / "plots")
    s = json.loads(out)
    assert code == 0 and sorted(x["path"] for x in s["skipped"]) == [
        "steps/sweep=s/a-e0001.parquet",
        "trials/sweep=s/b.parquet",
    ]
    assert all(x["reason"] for x in s["skipped"])


def test_every_trial_file_corrupt(tmp_path, capsys):
    store = _store(tmp_path)
    for f in (tmp_path / "trials" / "sweep=s").iterdir():
        _truncate(f)
    code, out, err = _analyze(capsys, store.root, "--no-plots")
    assert code == 2 and out == ""
    assert "every trial file is unreadable" in err and "trials/sweep=s/a.parquet" in err and "--resume" in err


@pytest.mark.parametrize(
    "meta", [b"{not json", b"[1, 2]", b'{"metrics": ["robust_acc"], "modes": "sideways"}']
)
def test_bad_sweep_metadata_is_a_note(tmp_path, capsys, meta):
    store = _store(tmp_path)
    store.put(f"{store.base}/meta/sweep=s/sweep.json", meta)
    code, out, _ = _analyze(capsys, store.root, "--no-plots")
    assert code == 0
    assert "note: meta/sweep=s/sweep.json" in out
    assert "objective: robust_acc (max)" in out and "best trials:" in out


def test_metadata_names_metrics_not_reported(tmp_path, capsys):
    store = _store(tmp_path, multi=True)  # inner_objective and solve_s, no pareto/ written yet
    code, out, _ = _analyze(capsys, store.root, "--out", tmp_path / "plots")
    assert code == 0 and "pareto.png" in out
    _meta(store, metrics=["inner_objective", "robust_acc"], modes=["min", "max"])
    code, out, _ = _analyze(capsys, store.root, "--out", tmp_path / "plots")
    assert code == 0 and "no trial reported robust_acc" in out and "best trials:" in out
