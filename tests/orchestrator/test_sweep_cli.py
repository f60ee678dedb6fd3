"""Bad input is refused in the driver, before Ray starts: one line, exit code 2, nothing written."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.commands import sweep as sweep_cli

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "sweeps"))
import alpha  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "JIIO_GIT_SHA": "test"}


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    """Fail the test if anything would start Ray or run a sweep."""

    def boom(*a, **k):
        raise AssertionError("Ray started or a sweep ran for bad input")

    monkeypatch.setattr(sweep_cli, "run_sweep", boom)
    monkeypatch.setattr(sweep_cli, "_cluster_gpus", boom)


def refused(argv, capsys, storage) -> str:
    with pytest.raises(SystemExit) as exc:
        sweep_cli.main(alpha.SPEC, [*argv, "--storage", str(storage)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert not os.path.exists(storage), "bad input wrote something"
    return err


BAD = [
    (["--epochs", "0"], "--epochs: must be an integer >= 1"),
    (["--gpus-per-trial", "nan"], "--gpus-per-trial: must be a finite number >= 0"),
    (["--gpus-per-trial", "inf"], "--gpus-per-trial: must be a finite number >= 0"),
    (["--gpus-per-trial", "1.5"], "whole number above 1"),
    (["--cpus-per-trial", "0"], "--cpus-per-trial: must be a finite number > 0"),
    (["--max-concurrent", "0"], "--max-concurrent: must be an integer >= 1"),
    (["--trials", "-3"], "--trials: must be an integer >= 1"),
    (["--trials", "2.5"], "--trials: must be an integer"),
    (["--workers-per-trial", "0"], "--workers-per-trial"),
    (["--data-root", "/does/not/exist"], "--data-root '/does/not/exist' is not a directory"),
    (["--dataset", "mnist"], "needs --data-root"),
    (["--name", "../x"], "--name must be"),
    (["--name", ".hidden"], "--name must be"),
    (["--task", "nope"], "invalid choice"),
]


@pytest.mark.parametrize(("argv", "message"), BAD)
def test_bad_flags_are_refused_before_ray(argv, message, capsys, tmp_path):
    assert message in refused(argv, capsys, tmp_path / "res")


@settings(max_examples=40, deadline=None)
@given(
    flag=st.sampled_from(
        ["--epochs", "--trials", "--max-concurrent", "--gpus-per-trial", "--cpus-per-trial", "--seed"]
    ),
    value=st.one_of(
        st.sampled_from(["nan", "inf", "-inf", "-1", "0", "1e400", "", "x", "1.5e-3", "--"]),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.integers(-10, 0).map(str),
    ),
)
def test_any_invalid_number_is_one_line_and_exit_2(flag, value, tmp_path_factory):
    """Property: a flag value is either accepted as a valid setting or refused in one line."""
    storage = tmp_path_factory.mktemp("p") / "res"
    parser = sweep_cli.build_parser(alpha.SPEC)
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exc:
        args = parser.parse_args([flag, value, "--storage", str(storage)])
        # Accepted: it must then be a valid, finite setting of its kind.
        v = getattr(args, flag[2:].replace("-", "_"))
        import math

        assert math.isfinite(v) and v >= 0
        raise SystemExit(0)
    if exc.value.code == 2:
        lines = err.getvalue().strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert not storage.exists()


def test_a_second_driver_on_the_same_sweep_is_refused_naming_the_first(tmp_path):
    lock = tmp_path / "locks" / "sweep=s" / "driver.json"
    lock.parent.mkdir(parents=True)
    since = time.time() - 5
    lock.write_text(
        json.dumps(
            {
                "token": "t",
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "since": since,
                "heartbeat": time.time(),
            }
        )
    )
    cmd = [
        sys.executable,
        str(ROOT / "sweeps" / "alpha.py"),
        "--smoke",
        "--storage",
        str(tmp_path),
        "--name",
        "s",
        "--gpus-per-trial",
        "0",
    ]
    out = subprocess.run(cmd, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert f"pid {os.getpid()}" in last and socket.gethostname() in last and "another driver" in last
    assert sorted(p.name for p in tmp_path.iterdir()) == ["locks"]  # nothing else written


def _first_trial(spec, argv):
    import argparse

    parser = sweep_cli.build_parser(spec)
    spec.add_arguments(parser)
    args: argparse.Namespace = parser.parse_args(argv)
    space = spec.space(args.task)
    (point,) = spec.enqueue(args, space)
    assert all(space[k].contains(v) for k, v in point.items()), "the paper's point is outside the space"
    from orchestrator.tasks import TaskConfig

    return TaskConfig.from_flat({**spec.fixed(args), **point}).jiio, space


@pytest.mark.parametrize(
    ("task", "paper_task"), [("adversarial", "mnist_adversarial"), ("generative", "celeba_generative")]
)
def test_the_alpha_sweeps_first_trial_is_exactly_the_papers_configuration(task, paper_task):
    from jiio_core import JIIOConfig

    paper = JIIOConfig.paper(paper_task)
    jiio, space = _first_trial(alpha.SPEC, ["--task", task, "--model-size", "paper"])
    assert jiio == paper
    assert [jiio.alpha_x_at(i) for i in range(jiio.max_iter)] == [
        paper.alpha_x_at(i) for i in range(80 if task == "adversarial" else 100)
    ]
    # Any other trial drops its own alpha_x by the paper's ratio: a drop, never a rise.
    other = jiio.replace(alpha_x=space["alpha_x"].high)
    after = other.alpha_x_at(other.max_iter - 1)
    assert after < other.alpha_x and after / other.alpha_x == pytest.approx(
        paper.alpha_x_at(paper.max_iter - 1) / paper.alpha_x
    )
    # The CPU-sized default: the paper's configuration with its own T and memory.
    small, _ = _first_trial(alpha.SPEC, ["--task", task])
    assert small == paper.replace(max_iter=small.max_iter, anderson_m=small.anderson_m)


def test_the_solver_sweeps_first_trial_is_exactly_the_papers_configuration():
    import solver

    from jiio_core import JIIOConfig

    jiio, space = _first_trial(solver.SPEC, [])
    assert jiio == JIIOConfig.paper("mnist_adversarial")
    assert jiio.alpha_x_at(48) == 0.6 and jiio.alpha_x_at(49) == pytest.approx(0.2)
    short = jiio.replace(max_iter=40)  # a searched max_iter: the paper's rule, no drop before T
    assert short.alpha_x_at(39) == 0.6


def test_a_plain_resume_counts_against_the_sweeps_own_target(tmp_path):
    from orchestrator.storage import ResultStore

    name = "alpha-adversarial-digits"
    store = ResultStore(str(tmp_path))
    store.put(f"{store.base}/meta/sweep={name}/sweep.json", json.dumps({"name": name, "trials": 9}).encode())
    args, cfg = sweep_cli.configure(
        alpha.SPEC, ["--resume", "--storage", str(tmp_path), "--gpus-per-trial", "0"]
    )
    assert cfg.trials == 9 and cfg.runs == 9
    _, cfg = sweep_cli.configure(
        alpha.SPEC, ["--resume", "--storage", str(tmp_path), "--gpus-per-trial", "0", "--trials", "12"]
    )
    assert cfg.trials == 12
    _, cfg = sweep_cli.configure(alpha.SPEC, ["--storage", str(tmp_path / "new"), "--gpus-per-trial", "0"])
    assert cfg.trials == 6


def test_resume_with_fewer_trials_than_finished_says_so(tmp_path, capsys):
    from orchestrator.driver.sweep import _run_locked
    from orchestrator.storage import ResultStore

    name = "alpha-adversarial-digits"
    store = ResultStore(str(tmp_path))
    store.put(f"{store.base}/meta/sweep={name}/sweep.json", json.dumps({"name": name, "trials": 8}).encode())
    for i in range(8):
        store.write(
            "trials", name, f"t{i}", [{"trial_id": f"t{i}", "status": "completed", "alpha_x": 0.1 + i}]
        )
    _, cfg = sweep_cli.configure(
        alpha.SPEC, ["--resume", "--trials", "4", "--storage", str(tmp_path), "--gpus-per-trial", "0"]
    )
    outcome = _run_locked(cfg, store)
    out = capsys.readouterr().out
    assert "already has 8 finished trials; --trials 4 is below that: nothing to run" in out, out
    assert "pass a larger --trials to extend it" in out and "8 of 4" not in out
    assert outcome.ran == 0 and not outcome.interrupted


def test_help_and_a_bad_flag_answer_without_importing_torch_or_ray():
    probe = (
        "import sys, runpy\n"
        "sys.argv = ['sweeps/alpha.py', sys.argv[1]]\n"
        "try:\n    runpy.run_path('sweeps/alpha.py', run_name='__main__')\n"
        "except SystemExit as e:\n    code = e.code\n"
        "heavy = sorted(m for m in ('torch', 'ray', 'jiio_core', 'pandas') if m in sys.modules)\n"
        "print('HEAVY', heavy, code, file=sys.stderr)\n"
    )
    for flag, code in (("--help", 0), ("--bad-flag", 2)):
        t0 = time.time()
        out = subprocess.run(
            [sys.executable, "-c", probe, flag], cwd=ROOT, env=ENV, capture_output=True, text=True
        )
        took = time.time() - t0
        assert f"HEAVY [] {code}" in out.stderr, out.stderr[-2000:]
        assert took < 3.0, f"{flag} took {took:.1f} s"  # was 5-10 s (torch and ray imported first)
    t0 = time.time()
    out = subprocess.run(
        [sys.executable, "sweeps/alpha.py", "--bad-flag"], cwd=ROOT, env=ENV, capture_output=True
    )
    assert out.returncode == 2 and time.time() - t0 < 3.0


def test_the_flag_choices_equal_the_tasks_and_datasets():
    from orchestrator.data import DATASETS
    from orchestrator.tasks import TASKS

    assert tuple(TASKS) == sweep_cli.TASKS and tuple(DATASETS) == sweep_cli.DATASETS


def test_a_finished_sweep_without_resume_is_refused_before_ray_starts(tmp_path, capsys):
    from orchestrator.storage import ResultStore

    name = "alpha-adversarial-digits"
    ResultStore(str(tmp_path)).write("trials", name, "t0", [{"trial_id": "t0", "status": "completed"}])
    with pytest.raises(SystemExit) as exc:  # no --gpus-per-trial: the GPU probe (Ray) would come next
        sweep_cli.main(alpha.SPEC, ["--storage", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "already has 1 finished and 0 unfinished trials" in err and "pass --resume" in err


def test_the_sweeps_own_lines_fit_80_columns(tmp_path, capsys, monkeypatch):
    from orchestrator.driver.sweep import SweepOutcome

    monkeypatch.setenv("JIIO_CONSOLE_WIDTH", "80")
    monkeypatch.setattr(sweep_cli, "run_sweep", lambda cfg: SweepOutcome(6, 6, 6, False, cfg.storage))
    monkeypatch.chdir(tmp_path)
    assert sweep_cli.main(alpha.SPEC, ["--gpus-per-trial", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("settings: storage='results' (default)") and len(lines) > 4
    assert all(len(line) <= 80 or " " not in line.strip() for line in lines), lines
