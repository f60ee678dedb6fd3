"""The sweep's compact console, driven by the Tune callback hooks it receives."""

from __future__ import annotations

import io
from types import SimpleNamespace

from rich.console import Console

from orchestrator.driver.console import SweepConsole


def _trial(tid, **config):
    return SimpleNamespace(trial_id=tid, config={"trial_id": f"id-{tid}", **config})


def _console():
    c = SweepConsole(
        "s", total=5, finished_before=1, metric="robust_acc", mode="max", searched=("alpha_x",), live=False
    )
    out = io.StringIO()
    c._console = Console(file=out, width=300)
    return c, out


def test_counts_best_with_wilson_interval_and_one_line_per_event():
    c, out = _console()
    c.setup()
    a, b, d, e = (_trial(t, alpha_x=x) for t, x in (("a", 0.1), ("b", 0.2), ("d", 0.3), ("e", 0.4)))
    for t in (a, b, d, e):
        c.on_trial_start(0, [], t)
    c.on_trial_result(0, [], a, {"robust_acc": 0.3, "final": False, "trial_key": "id-a"})
    c.on_trial_result(
        0,
        [],
        a,
        {"robust_acc": 0.5, "final": True, "status": "completed", "trial_key": "id-a", "eval_n": 128},
    )
    c.on_trial_result(
        0, [], b, {"robust_acc": -1e9, "final": True, "status": "diverged", "trial_key": "id-b"}
    )
    c.on_trial_complete(0, [], d)  # stopped by ASHA: no final report
    c.on_trial_error(0, [], e)
    text = c.summary()
    assert (
        "5/5 done (1 before this run) - 1 completed, 1 diverged, 1 pruned, 1 error; 0 running, 0 left" in text
    )
    # The interval is the Wilson interval of 64/128 (scipy: 0.4146, 0.5853).
    assert "best robust_acc 0.5 [0.415, 0.585] (95% Wilson, n=128)  trial id-a: alpha_x=0.1" in text
    lines = out.getvalue().splitlines()
    assert sum(line.startswith("trial id-") for line in lines) == 4  # one line per finished trial
    assert any("id-d pruned" in line for line in lines) and any("id-e error" in line for line in lines)


def test_the_console_survives_tunes_pickling():
    import pickle

    c, _ = _console()
    c.setup()
    back = pickle.loads(pickle.dumps(c))
    assert back.summary().startswith("sweep s: 1/5 done")


def test_a_resumed_sweeps_best_covers_the_trials_finished_before():
    import pandas as pd

    from orchestrator.driver.console import best_finished

    before = pd.DataFrame(
        [
            {"trial_id": "old-1", "status": "completed", "robust_acc": 0.7, "alpha_x": 0.5, "eval_n": 128},
            {"trial_id": "old-2", "status": "pruned", "robust_acc": 0.9, "alpha_x": 0.6},
            {"trial_id": "old-3", "status": "completed", "robust_acc": 0.4, "alpha_x": 0.7},
        ]
    )
    best = best_finished(before, "robust_acc", "max", ("alpha_x",))
    c = SweepConsole("s", 5, 3, "robust_acc", "max", ("alpha_x",), live=False, best=best)
    c._console = Console(file=io.StringIO(), width=80)
    c.setup()
    t = _trial("a", alpha_x=0.1)
    c.on_trial_start(0, [], t)
    c.on_trial_result(
        0, [], t, {"robust_acc": 0.5, "final": True, "status": "completed", "trial_key": "id-a"}
    )
    assert "best robust_acc 0.7" in c.summary() and "trial old-1: alpha_x=0.5" in c.summary()
    c.on_trial_result(
        0, [], t, {"robust_acc": 0.8, "final": True, "status": "completed", "trial_key": "id-a"}
    )
    assert "best robust_acc 0.8" in c.summary()


def test_the_logged_lines_fit_80_columns():
    c = SweepConsole(
        "alpha-adversarial-digits", 6, 0, "robust_acc", "max", ("alpha_z", "alpha_x"), live=False
    )
    out = io.StringIO()
    c._console = Console(file=out, width=80)
    c.setup()
    t = _trial("a", alpha_z=0.123456, alpha_x=0.654321)
    c.on_trial_start(0, [], t)
    result = {
        "robust_acc": 0.5,
        "final": True,
        "status": "completed",
        "trial_key": "b26dbc076025",
        "eval_n": 64,
    }
    c.on_trial_result(0, [], t, result)
    lines = out.getvalue().splitlines()
    assert max(map(len, lines)) <= 80, lines
    assert "trial b26dbc076025 completed." in out.getvalue()
