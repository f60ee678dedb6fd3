"""jiio analyze on small generated sweeps with planted answers (issue 9)."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from orchestrator.analysis import Source, plot_sweep, summarize
from orchestrator.analysis.importance import divergence_grid
from orchestrator.analysis.sweep_rows import space_of
from orchestrator.cli import main

from ._planted import DIVERGE_Z, SPACE, pair, planted


def _analyze(capsys, *argv):
    code = main(["analyze", *map(str, argv)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return planted(str(tmp_path_factory.mktemp("planted")))


def test_planted_best_ranks_first_and_beats_the_paper(sweep):
    s = summarize(sweep, "s")
    assert s["best"][0]["trial_id"] == "best"
    assert s["best"][0]["robust_acc_ci_method"] == "wilson" and s["best"][0]["robust_acc_n"] == 100_000
    lo, hi = s["best"][0]["robust_acc_ci"]
    assert lo < 0.95 < hi and hi - lo < 0.01
    assert s["paper"]["trial_id"] == "paper" and s["median"]["trial_id"] not in ("best", "paper")
    assert s["verdict"]["significant"] is True
    assert s["verdict"]["text"].startswith("best beats the paper configuration by +")
    assert s["state"] == "finished"


def test_importance_ranks_the_planted_parameters_first(sweep):
    imp = summarize(sweep, "s")["importance"]
    assert next(iter(imp["objective"])) == "alpha_x"  # the objective depends on alpha_x alone
    assert next(iter(imp["divergence"])) == "alpha_z"  # divergence on alpha_z alone
    assert imp["objective"]["alpha_x"] > 0.5 and imp["divergence"]["alpha_z"] > 0.5


def test_divergence_map_marks_the_planted_region(sweep):
    src = Source(sweep)
    trials = src.trials("s")
    g = divergence_grid(trials, "alpha_x", "alpha_z", space_of({"space": SPACE}, trials), bins=6)
    above = g["y_edges"][:-1] >= DIVERGE_Z  # y cells entirely in the planted region
    below = g["y_edges"][1:] <= DIVERGE_Z
    rate = g["rate"]
    assert np.nanmin(rate[:, above]) == 1.0 and np.nanmax(rate[:, below]) == 0.0
    assert np.nansum(g["count"]) == (trials["status"] != "error").sum()


def test_a_difference_inside_the_noise_is_not_significant(tmp_path):
    # 2 images out of 128: the example
    s = summarize(pair(str(tmp_path / "a"), "s", 66 / 128, 64 / 128, eval_n=128), "s")
    v = s["verdict"]
    assert v["significant"] is False and "cannot be told apart" in v["text"] and "best beats" not in v["text"]
    assert v["growth"] > 10 and v["n_needed"] > 128 * 10
    # the n it names really separates the intervals
    from orchestrator.stats import separated, wilson_for

    n = v["n_needed"]
    assert separated(wilson_for(66 / 128, n), wilson_for(64 / 128, n))
    # outside the noise: 0.6 vs 0.5 on 5,000 samples
    s = summarize(pair(str(tmp_path / "b"), "s", 0.6, 0.5, eval_n=5000), "s")
    assert s["verdict"]["significant"] is True and "do not overlap" in s["verdict"]["text"]


def test_bootstrap_intervals_from_per_sample_values(tmp_path):
    rng = np.random.default_rng(1)
    base = rng.normal(25.0, 3.0, 200)
    close = summarize(
        pair(
            str(tmp_path / "a"),
            "s",
            float(np.mean(base + 0.1)),
            float(np.mean(base)),
            None,
            (base + 0.1, base),
        ),
        "s",
    )
    assert close["best"][0]["test_psnr_ci_method"] == "bootstrap" and close["best"][0]["test_psnr_n"] == 200
    assert close["verdict"]["significant"] is False and close["verdict"]["n_needed"] > 200
    far = summarize(
        pair(
            str(tmp_path / "b"), "s", float(np.mean(base + 3)), float(np.mean(base)), None, (base + 3, base)
        ),
        "s",
    )
    assert far["verdict"]["significant"] is True


def test_n_unknown_is_said(tmp_path, capsys):
    store = pair(str(tmp_path), "s", 0.6, 0.5, eval_n=None)
    code, out, _ = _analyze(capsys, store.root, "--no-plots", "--no-report")
    assert code == 0 and "n unknown" in out and "best beats" not in out


def test_report_and_plots(sweep, tmp_path, capsys):
    code, out, _ = _analyze(capsys, sweep.root, "--name", "s", "--out", tmp_path)
    assert code == 0
    names = {os.path.basename(p) for p in os.listdir(tmp_path)}
    for kind in ("divergence", "params", "progress", "parallel", "importance", "curves", "traces"):
        assert f"s-{kind}.png" in names, names
    html = (tmp_path / "s-report.html").read_text()
    assert html.count("data:image/png;base64,") == 7 and "src='http" not in html and "<link" not in html
    assert "best beats the paper configuration" in html and "importance for" in html.lower()
    assert f"report: {tmp_path / 's-report.html'}" in out


def test_default_report_goes_beside_local_results(tmp_path, capsys):
    store = pair(str(tmp_path / "runs"), "s", 0.6, 0.5, eval_n=5000)
    code, out, _ = _analyze(capsys, store.root, "--no-plots")
    assert code == 0 and (tmp_path / "runs" / "analysis" / "s" / "s-report.html").is_file()


def test_only_the_picked_trials_files_are_read(sweep, tmp_path, monkeypatch):
    """Traces and steps are read for the best, median and paper trials only."""
    opened = []
    orig = Source._read_file

    def spy(self, path, columns):
        opened.append(path)
        return orig(self, path, columns)

    monkeypatch.setattr(Source, "_read_file", spy)
    s = summarize(sweep, "s")
    plot_sweep(sweep, "s", str(tmp_path))
    read = {p.rsplit("/", 1)[1].split("-e")[0].removesuffix(".parquet") for p in opened if "/traces/" in p}
    assert read <= {"best", "paper", s["median"]["trial_id"]} and {"best", "paper"} <= read


def _compacted(store, sweep, tid, table):
    """Merge a trial's epoch files into <tid>.parquet (as the lead's compaction will)."""
    src = Source(store)
    rows = src.rows(table, sweep, [tid]).drop(columns=["sweep"]).to_dict("records")
    store.write(table, sweep, tid, rows)
    return len(rows)


def test_both_layouts_are_read_and_deduplicated(tmp_path, capsys):
    store = planted(str(tmp_path / "runs"))
    n_best = _compacted(store, "s", "best", "traces")  # compacted, epoch files still there
    _compacted(store, "s", "paper", "traces")
    for f in (tmp_path / "runs" / "traces" / "sweep=s").glob("paper-e*.parquet"):
        f.unlink()  # paper: compacted only
    src = Source(store)
    assert len(src.rows("traces", "s", ["best"])) == n_best == 40
    assert len(src.rows("traces", "s", ["paper"])) == 40
    code, out, _ = _analyze(
        capsys,
        store.root,
        "--sql",
        "SELECT trial_id, count(*) AS n FROM traces GROUP BY trial_id ORDER BY trial_id",
        "--json",
    )
    assert code == 0 and json.loads(out) == [{"trial_id": "best", "n": 40}, {"trial_id": "paper", "n": 40}]


def test_sql_views(sweep, capsys):
    code, out, _ = _analyze(
        capsys,
        sweep.root,
        "--sql",
        "SELECT trial_id, robust_acc FROM trials WHERE status = 'completed' ORDER BY robust_acc DESC LIMIT 1",
        "--json",
    )
    assert code == 0 and json.loads(out) == [{"trial_id": "best", "robust_acc": 0.95}]
    code, out, _ = _analyze(
        capsys, sweep.root, "--sql", "SELECT count(*) AS n, max(step) AS last FROM steps WHERE phase = 'eval'"
    )
    assert code == 0 and out.split() == ["n", "last", "4", "20"]
    code, _, err = _analyze(capsys, sweep.root, "--sql", "SELECT nope FROM trials")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--sql" in err


def test_compare_two_sweeps(tmp_path, capsys):
    planted(str(tmp_path), "a")
    store = pair(str(tmp_path), "b", 0.94, 0.5, eval_n=100_000)
    code, out, _ = _analyze(capsys, store.root, "--compare", "a", "b")
    assert code == 0 and "a's best beats b's best by +0.01" in out
    code, out, _ = _analyze(capsys, store.root, "--compare", "a", "b", "--json")
    res = json.loads(out)
    assert res["a"]["best trial"] == "best" and res["verdict"]["significant"] is True
    code, _, err = _analyze(capsys, store.root, "--compare", "a", "zzz")
    assert code == 2 and "sweeps there: a, b" in err


def test_running_and_interrupted_sweeps(tmp_path, capsys):
    store = planted(str(tmp_path / "runs"))
    store.write_pending("s", "r1", {"alpha_x": 0.2})  # started, no row yet
    store.write_record("s", "r2", {"params": {"alpha_x": 0.3}, "state": "running", "wall_s": 30.0})
    code, out, _ = _analyze(capsys, store.root, "--no-plots", "--no-report")
    assert code == 0 and "state: interrupted" in out and "2 unfinished" in out and "--resume" in out
    lock = {"host": "h", "pid": 1, "since": time.time(), "heartbeat": time.time(), "token": "x"}
    store.put(f"{store.base}/locks/sweep=s/driver.json", json.dumps(lock).encode())
    code, out, _ = _analyze(capsys, store.root, "--no-plots", "--json")
    s = json.loads(out)
    assert s["state"] == "running" and s["running"] == 2 and s["time_s"]["running"] == 30.0
    assert any("provisional" in n for n in s["notes"])


def test_corrupt_trace_of_the_best_trial(tmp_path, capsys):
    store = planted(str(tmp_path / "runs"))
    (tmp_path / "runs" / "traces" / "sweep=s" / "best-e0002.parquet").write_bytes(b"garbage" * 10)
    (tmp_path / "runs" / "pending" / "sweep=s").mkdir(parents=True, exist_ok=True)
    (tmp_path / "runs" / "pending" / "sweep=s" / "zz.json").write_text("{torn")
    code, out, err = _analyze(capsys, store.root, "--out", tmp_path / "out")
    assert code == 0 and "best beats" in out and "s-traces.png" in out  # the rest of the report
    assert "traces/sweep=s/best-e0002.parquet" in err and "pending/sweep=s/zz.json" in err
    assert (tmp_path / "runs" / "pending" / "sweep=s" / "zz.json").exists()  # never moved
