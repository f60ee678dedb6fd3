"""One source of truth for a trial's length: ASHA's ``max_t`` is what trials train.

The cluster command (``ray submit cluster/gpu.yaml sweeps/alpha.py``, paper-size models)
once gave ASHA ``max_t = fixed.get("epochs", 1)`` = 1 while its trials trained
``TaskConfig``'s default of 2 epochs: every trial was stopped ("pruned") at epoch 1 and the
sweep ended with no completed trial. Here every sweep script x task x model size x
``--smoke``/``--epochs`` is configured as ``main`` configures it, and the epochs that
trials resolve (``TaskConfig.from_flat`` of the fixed settings and points of the space,
as ``trainable.run_trial`` does) are compared with ``trial_epochs``; the slow tests run a
sweep whose fixed settings leave ``epochs`` to the default, and resume a sweep that ended
with every trial pruned.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.commands.sweep import configure
from orchestrator.driver.state import plan_run
from orchestrator.driver.sweep import SweepConfig, reopen_best_pruned, trial_epochs
from orchestrator.storage import ResultStore
from orchestrator.tasks import TaskConfig

ROOT = Path(__file__).resolve().parents[2]
SWEEPS = {p.stem: p for p in sorted((ROOT / "sweeps").glob("*.py"))}
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_DEDUP_LOGS": "0", "JIIO_GIT_SHA": "test"}


def _spec(script: str):
    spec = importlib.util.spec_from_file_location(f"_sweep_{script}", SWEEPS[script])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SPEC


def _points(cfg: SweepConfig, n: int, rng: random.Random):
    """The enqueued points, then random points of the space (what the searcher proposes)."""
    yield from cfg.enqueue
    for _ in range(n):
        point = {}
        for k, d in cfg.space.items():
            if d.kind == "choice":
                point[k] = rng.choice(d.choices)
            elif d.kind == "int":
                point[k] = rng.randint(int(d.low), int(d.high))
            else:
                point[k] = rng.uniform(d.low, d.high)
        yield point


def test_every_sweep_script_is_covered():
    assert {"alpha", "solver"} <= set(SWEEPS), SWEEPS  # a new script joins the cross product below


FLAGS = {
    "none": [],
    "smoke": ["--smoke"],
    "epochs": ["--epochs", "3"],
    "smoke+epochs": ["--smoke", "--epochs", "3"],
}


@pytest.mark.parametrize(
    ("script", "task", "size", "flags"),
    list(
        itertools.product(
            sorted(SWEEPS), ("adversarial", "generative", "inpainting"), (None, "tiny", "paper"), FLAGS
        )
    ),
)
def test_asha_max_t_equals_the_epochs_every_trial_trains(tmp_path, monkeypatch, script, task, size, flags):
    monkeypatch.delenv("JIIO_CLUSTER_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/ray_bootstrap_config.yaml of this machine
    argv = ["--task", task, "--storage", str(tmp_path / "r"), "--gpus-per-trial", "0", *FLAGS[flags]]
    if size is not None:
        argv += ["--model-size", size]
    _, cfg = configure(_spec(script), argv)
    epochs = {TaskConfig.from_flat({**cfg.fixed, **p}).epochs for p in _points(cfg, 20, random.Random(0))}
    assert epochs == {trial_epochs(cfg)}, (cfg.fixed.get("epochs"), epochs)
    if "epochs" in flags:
        assert epochs == {3}
    elif flags == "smoke" and script == "alpha":
        assert epochs == {1}


def test_the_cluster_command_as_typed_resolves_paper_trials_and_their_max_t(tmp_path, monkeypatch):
    """``ray submit cluster/gpu.yaml sweeps/alpha.py`` with no arguments: the cluster's
    metadata makes the trials paper-sized, which leaves ``epochs`` to TaskConfig."""
    config = tmp_path / "ray_bootstrap_config.yaml"
    config.write_text(
        "provider: {type: aws}\n"
        "metadata:\n  jiio:\n    storage: s3://bucket/jiio\n    gpus_per_trial: 0.25\n    model_size: paper\n"
    )
    monkeypatch.setenv("JIIO_CLUSTER_CONFIG", str(config))
    _, cfg = configure(_spec("alpha"), [])
    assert cfg.fixed["model_size"] == "paper" and "epochs" not in cfg.fixed
    assert (
        trial_epochs(cfg)
        == TaskConfig().epochs
        == TaskConfig.from_flat({**cfg.fixed, **cfg.enqueue[0]}).epochs
    )


def _all_pruned(tmp_path) -> tuple[ResultStore, SweepConfig]:
    """A sweep state as the buggy max_t left it: 3 trials, all pruned at epoch 1."""
    from orchestrator.driver.search import Dim

    cfg = SweepConfig(
        name="s",
        space={"alpha_x": Dim("loguniform", 0.05, 2.0)},
        metrics=("robust_acc",),
        modes=("max",),
        fixed={"task": "adversarial"},
        data={"dataset": "digits", "data_root": None, "seed": 0},
        trials=3,
        resume=True,
    )
    store = ResultStore(str(tmp_path))
    for tid, x, acc in (("a", 0.1, 0.30), ("b", 0.2, 0.45), ("c", 0.4, 0.40)):
        params = {"alpha_z": 0.5, "alpha_mu": 0.5, "alpha_x": x}
        store.write(
            "trials",
            "s",
            tid,
            [{"trial_id": tid, "status": "pruned", **params, "robust_acc": acc, "epoch": 1}],
        )
        store.write_record(
            "s", tid, {"params": params, "trial_id": tid, "state": "finished", "status": "pruned"}
        )
    return store, cfg


def test_resume_of_an_all_pruned_sweep_reopens_its_best_trial_and_keeps_the_old_row(tmp_path):
    store, cfg = _all_pruned(tmp_path)
    trials, records = store.read("trials", "s"), store.records("s")
    assert reopen_best_pruned(store, cfg, trials, records) == "b"  # the best robust_acc
    trials = store.read("trials", "s")
    assert sorted(trials["trial_id"]) == ["a", "c"]
    plan = plan_run(trials, store.records("s"), ("alpha_x",))
    assert plan.resume == [("b", {"alpha_z": 0.5, "alpha_mu": 0.5, "alpha_x": 0.2})]
    assert len(plan.finished) == 2
    kept = list((tmp_path / "corrupt" / "trials" / "sweep=s").glob("b.parquet.*.why.json"))
    assert len(kept) == 1 and "reopened" in json.loads(kept[0].read_text())["reason"]
    # Once one trial completed, nothing is reopened.
    store.write(
        "trials", "s", "b", [{"trial_id": "b", "status": "completed", "alpha_x": 0.2, "robust_acc": 0.5}]
    )
    assert reopen_best_pruned(store, cfg, store.read("trials", "s"), store.records("s")) is None


@pytest.mark.slow
def test_a_sweep_whose_fixed_settings_leave_epochs_to_the_default_completes_its_trials(tmp_path):
    """Fails on the old max_t (fixed.get("epochs", 1)): every trial ends pruned at epoch 1."""
    code = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
import ray
from orchestrator.driver.search import Dim
from orchestrator.driver.sweep import SweepConfig, run_sweep
ray.init(num_cpus=2, log_to_driver=False)
cfg = SweepConfig(
    name="len", space={{"alpha_x": Dim("loguniform", 0.05, 2.0)}}, metrics=("robust_acc",), modes=("max",),
    fixed=dict(task="adversarial", mode="jiio", max_steps_per_epoch=1, eval_batches=1, batch_size=16,
               max_iter=5, pgd_steps=2, deq_max_iter=6, deq_backward_max_iter=4),
    data={{"dataset": "digits", "data_root": None, "seed": 0}}, storage={str(tmp_path)!r}, trials=2,
    max_concurrent=2, scheduler="asha")
out = run_sweep(cfg)
print("OUTCOME", out.completed, out.pruned, out.epochs)
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=400
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = ResultStore(str(tmp_path)).read("trials", "len")
    assert len(trials) == 2
    # Both reach the last epoch: ASHA stops none before it (the first rung promotes the better,
    # and a trial alone at a rung is never below its cutoff); at least one completes.
    done = trials.loc[trials["status"] == "completed", "trial_id"]
    assert len(done) >= 1, trials[["trial_id", "status"]]
    steps = ResultStore(str(tmp_path)).read("steps", "len")
    last = steps[steps["trial_id"].isin(done)].groupby("trial_id")["epoch"].max()
    assert set(last) == {2}, last  # trained TaskConfig's 2 epochs


@pytest.mark.slow
def test_the_cli_explains_an_all_pruned_sweep_and_resume_completes_it(tmp_path):
    store, _ = _all_pruned(tmp_path / "r")
    # The same sweep, as alpha.py --smoke names and configures it (trials a-c are foreign
    # points of its space; the identity check passes since no meta was written).
    script = [
        sys.executable,
        str(SWEEPS["alpha"]),
        "--smoke",
        "--storage",
        str(tmp_path / "r"),
        "--name",
        "s",
        "--trials",
        "3",
    ]
    proc = subprocess.run(
        [*script, "--resume"], env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=400
    )
    assert "reopening the best pruned trial b" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = store.read("trials", "s")
    assert sorted(trials["trial_id"]) == ["a", "b", "c"]
    assert trials.set_index("trial_id").loc["b", "status"] == "completed"
    assert "Best configurations" in proc.stdout or "best" in proc.stdout.lower()


def test_a_replicated_sweep_runs_every_seed_to_its_end(tmp_path, monkeypatch):
    """--seeds 2: trials x seeds runs, the seeds shared by every configuration, and no ASHA
    (it stops runs one by one: configurations would be compared over different seeds)."""
    monkeypatch.delenv("JIIO_CLUSTER_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    base = ["--storage", str(tmp_path / "r"), "--gpus-per-trial", "0", "--trials", "3", "--seed", "4"]
    _, one = configure(_spec("alpha"), base)
    _, two = configure(_spec("alpha"), [*base, "--seeds", "2"])
    assert (one.scheduler, one.runs, one.seed_list()) == ("asha", 3, (4,))
    assert (two.scheduler, two.runs, two.seed_list()) == ("fifo", 6, (4, 5))
