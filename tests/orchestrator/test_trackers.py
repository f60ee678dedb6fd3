"""``--log mlflow|tensorboard|wandb``: the tracker callback driven with fake Tune events, read
back with each library's own reader."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import pickle
import sys
import types

import pytest

from orchestrator import trackers
from orchestrator.trackers import TrackerCallback, make_callbacks

AUTO = {"training_iteration": 1, "time_this_iter_s": 0.1, "timestamp": 1, "done": False, "pid": 7}


class Trial:
    def __init__(self, tid: str, alpha_x: float) -> None:
        self.trial_id = f"ray_{tid}"
        self.config = {"alpha_x": alpha_x, "trial_id": tid}
        self.last_result: dict = {}


def _drive(cb: TrackerCallback) -> None:
    """Three trials: ``done`` completes (two epochs), ``cut`` is pruned after one, ``bad`` errors."""
    done, cut, bad = Trial("done", 0.4), Trial("cut", 1.2), Trial("bad", 0.1)
    for t in (done, cut, bad):
        cb.on_trial_start(0, [], t)
    for e, acc in ((1, 0.6), (2, 0.8)):
        r = {**AUTO, "epoch": e, "robust_acc": acc, "loss": 1.0 / e, "eval_n": 500, "trial_key": "done"}
        cb.on_trial_result(0, [], done, r)
    cut.last_result = {**AUTO, "epoch": 1, "robust_acc": 0.3, "eval_n": 500, "trial_key": "cut"}
    cb.on_trial_result(0, [], cut, cut.last_result)
    final = {"robust_acc": 0.8, "final": True, "status": "completed", "trial_key": "done", "epoch": 2}
    done.last_result = final
    cb.on_trial_result(0, [], done, final)
    cb.on_trial_complete(0, [], done)
    cb.on_trial_complete(0, [], cut)  # stopped by ASHA before its last report
    cb.on_trial_error(0, [], bad)
    cb.on_experiment_end([])


def test_mlflow_file_store(tmp_path, capsys, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # the default store, SQLite, is slow to create
    uri = f"file://{tmp_path}/mlruns"
    (cb,) = make_callbacks(["mlflow"], "s", str(tmp_path), ("robust_acc",), ("alpha_x",), mlflow_uri=uri)
    assert uri in capsys.readouterr().out
    _drive(cb)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("s")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"done", "cut", "bad"}
    done = runs["done"]
    assert done.data.params == {"alpha_x": "0.4"} and done.data.tags["jiio.sweep"] == "s"
    history = client.get_metric_history(done.info.run_id, "robust_acc")
    assert [(m.step, m.value) for m in history] == [(1, 0.6), (2, 0.8)]
    assert done.data.metrics["final/robust_acc"] == 0.8 and done.data.metrics["final/eval_n"] == 500
    assert "training_iteration" not in done.data.metrics and "pid" not in done.data.metrics
    states = {k: (r.info.status, r.data.tags["jiio.status"]) for k, r in runs.items()}
    assert states == {
        "done": ("FINISHED", "completed"),
        "cut": ("KILLED", "pruned"),
        "bad": ("FAILED", "error"),
    }
    assert runs["cut"].data.metrics["final/robust_acc"] == 0.3  # its value at the rung it stopped
    # A resumed trial continues its run (same trial_id), no second run.
    (cb2,) = make_callbacks(["mlflow"], "s", str(tmp_path), ("robust_acc",), ("alpha_x",), mlflow_uri=uri)
    t = Trial("cut", 1.2)
    cb2.on_trial_start(0, [], t)
    cb2.on_trial_result(0, [], t, {"epoch": 2, "robust_acc": 0.4, "trial_key": "cut"})
    cb2.on_trial_complete(0, [], t)
    cb2.close()
    assert len(client.search_runs([exp.experiment_id])) == 3
    cut = client.search_runs([exp.experiment_id], "tags.`jiio.trial_id` = 'cut'")[0]
    assert [m.step for m in client.get_metric_history(cut.info.run_id, "robust_acc")] == [1, 2]


def test_tensorboard_one_directory_per_trial(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (cb,) = make_callbacks(["tensorboard"], "s", str(tmp_path), ("robust_acc",), ("alpha_x",))
    cb = pickle.loads(pickle.dumps(cb))  # Tune pickles its callbacks
    _drive(cb)
    root = tmp_path / "tensorboard" / "s"
    assert sorted(p.name for p in root.iterdir()) == ["bad", "cut", "done"]
    acc = EventAccumulator(str(root / "done"))
    acc.Reload()
    assert [(s.step, round(s.value, 6)) for s in acc.Scalars("robust_acc")] == [(1, 0.6), (2, 0.8)]
    assert [s.value for s in acc.Scalars("final/robust_acc")] == [pytest.approx(0.8)]
    assert [s.value for s in acc.Scalars("final/eval_n")] == [500]
    assert "pid" not in acc.Tags()["scalars"]


class _FakeRun:
    def __init__(self, **kw) -> None:
        self.kw, self.logged, self.summary, self.exit_code = kw, [], {}, None

    def log(self, data) -> None:
        self.logged.append(dict(data))

    def finish(self, exit_code: int = 0) -> None:
        self.exit_code = exit_code


def test_wandb_offline_with_a_stand_in(tmp_path, monkeypatch):
    runs: list[_FakeRun] = []
    fake = types.ModuleType("wandb")
    fake.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    fake.init = lambda **kw: runs.append(_FakeRun(**kw)) or runs[-1]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    (cb,) = make_callbacks(["wandb"], "s", str(tmp_path), ("robust_acc",), ("alpha_x",))
    _drive(cb)
    by = {r.kw["name"]: r for r in runs}
    assert set(by) == {"done", "cut", "bad"}
    assert by["done"].kw["mode"] == "offline" and by["done"].kw["group"] == "s"
    assert by["done"].kw["config"] == {"alpha_x": 0.4}
    assert [d["robust_acc"] for d in by["done"].logged] == [0.6, 0.8]
    assert by["done"].summary["final/robust_acc"] == 0.8 and by["done"].summary["status"] == "completed"
    assert by["bad"].exit_code == 1 and by["cut"].summary["status"] == "pruned"


def test_missing_package_is_one_line_and_no_callback(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        trackers.importlib.util, "find_spec", lambda n, *a: None if n in ("mlflow", "wandb") else real(n, *a)
    )
    assert make_callbacks(["mlflow", "wandb"], "s", str(tmp_path), ("robust_acc",)) == []
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("pip install" in line for line in err)
    assert "mlflow" in err[0] and "wandb" in err[1]


def test_a_failing_tracker_is_switched_off_and_others_go_on(capsys):
    class Broken:
        def start(self, *a):
            raise RuntimeError("server gone\nmore")

    class Keep:
        def __init__(self):
            self.events = []

        def start(self, *a):
            self.events.append("start")

        def log(self, *a):
            self.events.append("log")

        def end(self, *a):
            self.events.append("end")

        def close(self):
            self.events.append("close")

    keep = Keep()
    cb = TrackerCallback({"broken": Broken(), "keep": keep}, ("robust_acc",))
    _drive(cb)
    assert keep.events[:3] == ["start", "start", "start"] and keep.events[-1] == "close"
    assert keep.events.count("end") == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["--log broken: RuntimeError: server gone; no longer logging to broken"]


def test_log_flags_reach_the_sweep_config(tmp_path):
    from pathlib import Path

    from orchestrator.commands import sweep as sweep_cli

    path = Path(__file__).resolve().parents[2] / "sweeps" / "alpha.py"
    spec = importlib.util.spec_from_file_location("_alpha_for_trackers", path)
    alpha = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(alpha)

    base = ["--storage", str(tmp_path), "--gpus-per-trial", "0", "--smoke"]
    _, cfg = sweep_cli.configure(alpha.SPEC, [*base, "--log", "tensorboard", "--log", "mlflow"])
    assert cfg.log == ("tensorboard", "mlflow") and cfg.mlflow_uri is None
    _, cfg = sweep_cli.configure(alpha.SPEC, [*base, "--log", "mlflow", "--mlflow-uri", "file:./m"])
    assert cfg.mlflow_uri == "file:./m"
    assert sweep_cli.configure(alpha.SPEC, base)[1].log == ()


@pytest.mark.slow
def test_a_smoke_sweep_logs_every_trial(tmp_path):
    """A real ``sweeps/alpha.py --smoke --log tensorboard --log mlflow``: one TensorBoard
    directory and one MLflow run (default SQLite store) per trial, the same trial ids as the
    Parquet rows, each with the objective's per-epoch values and its final value."""
    import subprocess

    from orchestrator.storage import ResultStore
    from tests.orchestrator.test_sweep import ENV, ROOT, SCRIPT

    logs = ["--log", "tensorboard"] + (["--log", "mlflow"] if importlib.util.find_spec("mlflow") else [])
    cmd = [
        sys.executable,
        SCRIPT,
        "--smoke",
        "--storage",
        str(tmp_path),
        "--name",
        "t",
        "--trials",
        "2",
        *logs,
    ]
    out = subprocess.run(cmd, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = ResultStore(str(tmp_path)).read("trials", "t")
    ids = set(rows["trial_id"])
    assert len(ids) == 2
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = tmp_path / "tensorboard" / "t"
    assert {p.name for p in root.iterdir()} == ids
    for tid in ids:
        acc = EventAccumulator(str(root / tid))
        acc.Reload()
        tags = acc.Tags()["scalars"]
        assert "robust_acc" in tags and "final/robust_acc" in tags, tags
        final = rows.set_index("trial_id").loc[tid, "robust_acc"]
        if rows.set_index("trial_id").loc[tid, "status"] == "completed":
            assert acc.Scalars("final/robust_acc")[-1].value == pytest.approx(final, abs=1e-6)
    if "mlflow" in logs:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
        exp = client.get_experiment_by_name("t")
        runs = client.search_runs([exp.experiment_id])
        assert {r.info.run_name for r in runs} == ids
        assert all("final/robust_acc" in r.data.metrics for r in runs)


def test_the_last_epoch_and_eval_n_come_from_the_parquet_rows(tmp_path):
    """A trial reports its last epoch to its rows only: the tracker logs it from the trial's
    eval rows, and the final objective and eval_n from its trials row."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from orchestrator.storage import ResultStore

    store = ResultStore(str(tmp_path))
    eval_row = {"trial_id": "one", "step": 9, "epoch": 1, "phase": "eval", "epoch_end": True}
    store.write(
        "steps",
        "s",
        "one",
        [
            {"trial_id": "one", "step": 9, "phase": "train", "loss": 2.0},
            {**eval_row, "robust_acc": 0.7, "clean_acc": 0.9, "eval_n": 256},
        ],
    )
    store.write(
        "trials", "s", "one", [{"trial_id": "one", "status": "completed", "robust_acc": 0.7, "eval_n": 256}]
    )
    (cb,) = make_callbacks(["tensorboard"], "s", str(tmp_path), ("robust_acc",), ("alpha_x",))
    t = Trial("one", 0.5)
    cb.on_trial_start(0, [], t)
    t.last_result = {"robust_acc": 0.7, "final": True, "status": "completed", "trial_key": "one", "epoch": 1}
    cb.on_trial_result(0, [], t, t.last_result)
    cb.on_trial_complete(0, [], t)
    cb.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard" / "s" / "one"))
    acc.Reload()
    scalars = {tag: [(e.step, round(e.value, 6)) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    assert scalars == {
        "robust_acc": [(1, 0.7)],
        "clean_acc": [(1, 0.9)],
        "eval_n": [(1, 256)],
        "final/robust_acc": [(1, 0.7)],
        "final/eval_n": [(1, 256)],
    }
