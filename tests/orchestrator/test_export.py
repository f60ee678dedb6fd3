"""``jiio export optuna``: a sweep's rows round-trip through an Optuna storage."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest

from orchestrator.cli import main
from orchestrator.commands.export import to_optuna
from orchestrator.storage import ResultStore
from tests.orchestrator._planted import planted


def _single(root: str):
    store = planted(root, "s", n=10)
    store.write(
        "trials",
        "s",
        "pr",
        [
            {
                "trial_id": "pr",
                "status": "pruned",
                "alpha_z": 0.3,
                "alpha_mu": 0.3,
                "alpha_x": 0.3,
                "robust_acc": 0.5,
            }
        ],
    )
    store.write(
        "trials",
        "s",
        "err",
        [
            {
                "trial_id": "err",
                "status": "error",
                "alpha_z": 0.3,
                "alpha_mu": 0.3,
                "alpha_x": 0.2,
                "error": "x\nBoom",
            }
        ],
    )
    return store


def test_single_objective_round_trip(tmp_path):
    store = _single(str(tmp_path / "r"))
    url = f"sqlite:///{tmp_path}/o.db"
    out = to_optuna(store.root, "s", url)
    rows = store.read("trials", "s")
    study = optuna.load_study(study_name="s", storage=url)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    done = rows[rows["status"] == "completed"]
    best = done.loc[done["robust_acc"].idxmax()]
    assert study.best_trial.user_attrs["trial_id"] == best["trial_id"] == "best"
    assert study.best_value == pytest.approx(best["robust_acc"])
    assert study.best_params == pytest.approx({k: best[k] for k in ("alpha_z", "alpha_mu", "alpha_x")})
    assert study.best_trial.intermediate_values == {0: 0.9, 1: 0.95}  # the eval rows, per epoch
    lo, hi = study.best_trial.user_attrs["robust_acc_ci95"]
    assert lo < 0.95 < hi and study.best_trial.user_attrs["eval_n"] == 100_000
    by_id = {t.user_attrs["trial_id"]: t for t in study.trials}
    expect = {"completed": "COMPLETE", "pruned": "PRUNED", "diverged": "FAIL", "error": "FAIL"}
    for _, r in rows.iterrows():
        t = by_id[r["trial_id"]]
        assert t.state.name == expect[r["status"]] and t.user_attrs["status"] == r["status"]
    assert by_id["pr"].value == 0.5 and by_id["err"].user_attrs["error"] == "Boom"
    assert len(study.trials) == len(rows) and out["skipped"] == []


def test_cli_journal_refuses_again_then_replaces(tmp_path, capsys):
    store = _single(str(tmp_path / "r"))
    log = tmp_path / "o.log"
    args = ["export", "optuna", store.root, "--name", "s", "--to", f"journal:{log}"]
    assert main(args) == 0
    assert "optuna-dashboard" in capsys.readouterr().out
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--replace" in err
    assert main([*args, "--replace"]) == 0
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(log)))
    assert len(optuna.load_study(study_name="s", storage=storage).trials) == len(store.read("trials", "s"))
    assert main(["export", "optuna", store.root, "--name", "nope", "--to", f"journal:{log}"]) == 2
    assert "no sweep 'nope'" in capsys.readouterr().err


def _front(points: dict[str, tuple[float, float]]) -> set[str]:
    return {
        a
        for a, pa in points.items()
        if not any(
            all(x <= y for x, y in zip(pb, pa, strict=True)) and pb != pa
            for b, pb in points.items()
            if b != a
        )
    }


def test_multi_objective_pareto_front(tmp_path):
    store = ResultStore(str(tmp_path / "r"))
    space = {
        "anderson_m": {"kind": "int", "low": 1, "high": 40, "choices": []},
        "alpha_x": {"kind": "loguniform", "low": 0.05, "high": 2.0, "choices": []},
        "init": {"kind": "choice", "low": 0.0, "high": 0.0, "choices": ["zero", "cell_step"]},
    }
    meta = {"metrics": ["inner_objective", "solve_s"], "modes": ["min", "min"], "space": space}
    store.put(f"{store.base}/meta/sweep=m/sweep.json", json.dumps(meta).encode())
    rng = np.random.default_rng(3)
    points = {}
    for i in range(30):
        tid = f"t{i:02d}"
        obj, sec = float(np.round(rng.uniform(-2, 0), 3)), float(np.round(rng.uniform(0.1, 2), 3))
        status = "diverged" if i % 10 == 9 else "completed"
        row = {
            "trial_id": tid,
            "status": status,
            "anderson_m": int(rng.integers(1, 41)),
            "alpha_x": float(rng.uniform(0.05, 2.0)),
            "init": ["zero", "cell_step"][i % 2],
        }
        if status == "completed":
            row.update(inner_objective=obj, solve_s=sec)
            points[tid] = (obj, sec)
        store.write("trials", "m", tid, [row])
    url = f"sqlite:///{tmp_path}/o.db"
    to_optuna(store.root, "m", url)
    study = optuna.load_study(study_name="m", storage=url)
    assert [d.name for d in study.directions] == ["MINIMIZE", "MINIMIZE"]
    assert study.metric_names == ["inner_objective", "solve_s"]
    front = {t.user_attrs["trial_id"] for t in study.best_trials}
    assert front == _front(points) and front
    rows = store.read("trials", "m").set_index("trial_id")
    for t in study.best_trials:
        r = rows.loc[t.user_attrs["trial_id"]]
        assert t.values == [r["inner_objective"], r["solve_s"]]
        assert t.params == {"anderson_m": r["anderson_m"], "alpha_x": r["alpha_x"], "init": r["init"]}
    assert sum(t.state.name == "FAIL" for t in study.trials) == 3
