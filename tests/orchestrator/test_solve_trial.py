"""Tests for orchestrator.trial.solve: the inner-solve trials of ``sweeps/solver.py``.

``run_solve`` must solve each task's own inner problem (adversarial: the attack against the
labels on the eps-ball; generative: reconstruction of the IMAGES; inpainting / denoising:
reconstruction of the masked / noisy observation), so every metric here is checked
against a reference solve written out in the test with its own loss. ``ensure_checkpoint``
trains once and reuses; the Pareto writer is checked end to end against a brute-force front.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from jiio_core import jiio_solve, l2_ball
from jiio_core.augmented import TRACE_KEYS
from orchestrator.analysis import summarize
from orchestrator.data import DataConfig, load_dataset, make_loader
from orchestrator.driver.fixed_model import ensure_checkpoint
from orchestrator.storage import ResultStore, load_bytes
from orchestrator.tasks.inverse import corrupt
from orchestrator.tasks.registry import make_trainer
from orchestrator.tasks.task_config import TaskConfig
from orchestrator.tasks.trainer import Trainer
from orchestrator.trial.meta import SweepMeta
from orchestrator.trial.solve import run_solve

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = str(ROOT / "sweeps" / "solver.py")
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_DEDUP_LOGS": "0", "JIIO_GIT_SHA": "test"}

TASKS = ("adversarial", "generative", "inpainting", "denoising")
DATA = {"dataset": "digits", "limit_train": 32, "limit_test": 24}
# Digits are (1, 16, 16) with labels (B,): at B = 8 an image loss against the labels cannot
# broadcast (16 vs 8), so a solve that mixes them up raises instead of scoring silently.
BATCH = 8
EVAL_BATCHES = 2
SOLVE = {"solver": "anderson", "anderson_m": 5, "max_iter": 12, "alpha_z": 0.8, "alpha_mu": 0.6}
ALPHA_X = {"adversarial": 0.5, "generative": 0.01, "inpainting": 0.01, "denoising": 0.01}
STEP_KEYS = {"trial_id", "step", "epoch", "phase", "loss", "solver_iterations", "solve_s"}
TRACE_COLUMNS = {"trial_id", "step", "iteration", *TRACE_KEYS}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data():
    return load_dataset(DataConfig(**DATA))


def _train_config(task: str) -> TaskConfig:
    # trained without JIIO (clean / Adam latents): the checkpoint is only the model whose inner
    # problem the solve trials attack, and run_solve must use JIIO whatever trained it
    return TaskConfig(
        task=task,
        mode="clean" if task == "adversarial" else "adam",
        adam_steps=4,
        batch_size=BATCH,
        epochs=1,
        max_steps_per_epoch=2,
        eval_batches=1,
        pgd_steps=2,
        deq_max_iter=10,
        deq_backward_max_iter=10,
        lr=5e-3,
    )


@pytest.fixture(scope="module")
def checkpoints(data, tmp_path_factory):
    """One tiny checkpoint per task: two training steps on digits, saved as ``torch.save(state_dict)``."""
    folder = tmp_path_factory.mktemp("ckpt")
    out = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for task in TASKS:
            trainer = make_trainer(_train_config(task), data)
            trainer.fit()
            out[task] = str(folder / f"{task}.pt")
            torch.save(trainer.state_dict(), out[task])
    finally:
        torch.set_num_threads(threads)
    return out


def _meta(tmp_path: Path, checkpoint: str | None, name: str = "s") -> SweepMeta:
    return SweepMeta(
        name=name,
        storage=str(tmp_path),
        searched=("alpha_x",),
        fixed={},
        data=DATA,
        metrics=("inner_objective", "solve_s"),
        modes=("min", "min"),
        kind="solve",
        checkpoint=checkpoint,
    )


def _solve_config(task: str, batch: int = BATCH, batches: int = EVAL_BATCHES) -> TaskConfig:
    return TaskConfig.from_flat(
        {
            "task": task,
            "mode": "jiio",
            "batch_size": batch,
            "eval_batches": batches,
            "seed": 0,
            "alpha_x": ALPHA_X[task],
            **SOLVE,
        }
    )


def _reference(
    task: str, checkpoint: str, data, batch: int = BATCH, batches: int = EVAL_BATCHES
) -> dict[str, Any]:
    """The solve sweep's metrics recomputed independently: our own loss, our own batches.

    The modules come from the checkpoint; the batches are the first ``batches`` of the
    test split in order; the inner loss is written out here; the reported objective is
    recomputed from ``head(res.z)``, not taken from the solver; ``samples``: every sample's
    loss in order, NaN where the solve diverged.
    """
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    cfg = _solve_config(task, batch, batches)
    trainer = make_trainer(cfg.replace(eps=state["config"]["eps"]), data)
    trainer.load_state_dict(state)
    cell, head = trainer.modules["cell"].eval(), trainer.modules["head"].eval()
    for p in [*cell.parameters(), *head.parameters()]:
        p.requires_grad_(False)
    # the corruptions of the task's evaluation: its generator, drawn batch after batch
    gen = trainer._eval_generator() if task != "adversarial" else None
    objective, quality, clean_objective, samples = [], [], [], []
    loader = make_loader(data.test, batch, shuffle=False)
    for i, (images, labels) in enumerate(loader):
        if i >= batches:
            break
        if task == "adversarial":

            def loss(z, labels=labels):
                return -F.cross_entropy(head(z), labels, reduction="none")

            x0, project = images, l2_ball(images, cfg.eps)
        else:
            if task == "generative":
                observed, mask = images, torch.ones_like(images)
            else:
                observed, mask = corrupt(images, task, gen, state["config"]["noise_sigma"])

            def loss(z, observed=observed, mask=mask):
                return (mask * (head(z) - observed)).pow(2).flatten(1).sum(1)

            x0, project = torch.zeros(images.shape[0], state["config"]["latent_dim"]), None
        with torch.no_grad():
            res = jiio_solve(cell, loss, x0, config=cfg.jiio, project=project)
            ok = ~res.diverged
            assert bool(ok.any())
            out = head(res.z)
            if task == "adversarial":
                assert bool(((res.x - images).flatten(1).norm(dim=1) <= cfg.eps + 1e-5).all())
                per = -F.cross_entropy(out, labels, reduction="none")
                quality.append(float((out.argmax(1) == labels).float().mean()))
            else:
                per = (mask * (out - observed)).pow(2).flatten(1).sum(1)
                mse = (out - images).pow(2).flatten(1).mean(1)
                quality.append(float((10 * torch.log10(1 / mse.clamp_min(1e-12))).mean()))
                clean_objective.append(float((out - images).pow(2).flatten(1).sum(1)[ok].mean()))
            objective.append(float(per[ok].mean()))
            samples += [float(v) if good else math.nan for v, good in zip(per, ok, strict=True)]
    n = len(objective)
    ref: dict[str, Any] = {"inner_objective": sum(objective) / n, "samples": samples}
    ref["attack_acc" if task == "adversarial" else "recon_psnr"] = sum(quality) / n
    if clean_objective:
        ref["clean_objective"] = sum(clean_objective) / n
    return ref


# ---------------------------------------------------------------- run_solve


def test_labels_and_images_do_not_broadcast_at_the_test_batch(data):
    """The guard the run_solve tests rely on: an image loss against labels raises at BATCH."""
    images, labels = next(iter(make_loader(data.test, BATCH, shuffle=False)))
    assert images.shape[1:] == (1, 16, 16) and labels.shape == (BATCH,)
    with pytest.raises(RuntimeError):
        (images - labels).pow(2).flatten(1).sum(1)


@pytest.mark.parametrize("task", TASKS)
def test_run_solve_scores_the_tasks_own_inner_problem(task, data, checkpoints, tmp_path):
    store = ResultStore(str(tmp_path))
    metrics, status = run_solve(_solve_config(task), data, _meta(tmp_path, checkpoints[task]), store, "t1")
    ref = _reference(task, checkpoints[task], data)
    quality = "attack_acc" if task == "adversarial" else "recon_psnr"
    assert metrics["inner_objective"] == pytest.approx(ref["inner_objective"], rel=1e-4, abs=1e-5)
    assert status == "completed"
    assert set(metrics) == {
        "inner_objective",
        "solve_s",
        "solver_diverged",
        "solver_converged",
        quality,
        "eval_n",
    }
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    assert metrics["eval_n"] == EVAL_BATCHES * BATCH
    assert metrics[quality] == pytest.approx(ref[quality], rel=1e-4, abs=1e-5)
    assert metrics["solve_s"] > 0 and 0 <= metrics["solver_diverged"] <= 0.5
    if task in ("inpainting", "denoising"):
        # the observation is the corrupted image, not the clean one: a solve against the
        # clean images would land on a clearly different objective
        assert abs(ref["clean_objective"] - ref["inner_objective"]) > 0.05 * abs(ref["inner_objective"])
    if task == "adversarial":
        assert metrics["inner_objective"] < 0  # the negated cross-entropy

    steps = store.read("steps", "s")
    assert len(steps) == EVAL_BATCHES and set(steps.columns) >= STEP_KEYS
    assert set(steps["trial_id"]) == {"t1"} and set(steps["phase"]) == {"solve"}
    assert sorted(steps["step"]) == list(range(1, EVAL_BATCHES + 1))
    assert steps[["loss", "solver_iterations", "solve_s", quality]].map(math.isfinite).all().all()
    assert steps["loss"].mean() == pytest.approx(metrics["inner_objective"], rel=1e-6)
    steps = steps.sort_values("step")
    assert list(steps["eval_n"]) == [BATCH] * EVAL_BATCHES
    for loss, values in zip(steps["loss"], steps["inner_objective_samples"], strict=True):
        # every sample of the batch in order; the row's loss is the mean of the solved ones
        finite = [v for v in values if math.isfinite(v)]
        assert len(values) == BATCH and finite
        assert sum(finite) / len(finite) == pytest.approx(loss, rel=1e-5)
    listed = [float(v) for values in steps["inner_objective_samples"] for v in values]
    assert listed == pytest.approx(ref["samples"], rel=1e-4, abs=1e-5, nan_ok=True)
    traces = store.read("traces", "s")
    assert set(traces.columns) >= TRACE_COLUMNS and set(traces["trial_id"]) == {"t1"}
    assert not traces.duplicated(["trial_id", "step", "iteration"]).any()
    for step, it in zip(steps["step"], steps["solver_iterations"], strict=True):
        rows = traces[traces["step"] == step]
        assert sorted(rows["iteration"]) == list(range(1, int(it) + 1))
        assert rows[list(TRACE_KEYS)].map(math.isfinite).all().all()


def test_run_solve_generative_at_a_broadcasting_batch(data, checkpoints, tmp_path):
    """At batch 16 a (B, 1, 16, 16) - (B,) difference broadcasts silently; the score must
    still be the reconstruction error of the images."""
    store = ResultStore(str(tmp_path))
    ckpt = checkpoints["generative"]
    cfg = _solve_config("generative", 16, batches=1)
    metrics, _ = run_solve(cfg, data, _meta(tmp_path, ckpt), store, "t16")
    ref = _reference("generative", ckpt, data, batch=16, batches=1)
    assert metrics["inner_objective"] == pytest.approx(ref["inner_objective"], rel=1e-4)


def test_run_solve_lists_diverged_samples_as_nan_in_place(data, checkpoints, tmp_path, monkeypatch):
    """A diverged sample keeps its place in ``inner_objective_samples`` (NaN), so trials
    that diverge on different samples still list the same samples at the same places."""
    import orchestrator.trial.solve as solve_trial

    solve = solve_trial._solve_batch

    def second_diverges(trainer, x, y, gen):
        res = solve(trainer, x, y, gen)
        diverged = res.diverged.clone()
        diverged[1] = True
        return dataclasses.replace(res, diverged=diverged)

    monkeypatch.setattr(solve_trial, "_solve_batch", second_diverges)
    store = ResultStore(str(tmp_path))
    metrics, _ = run_solve(
        _solve_config("adversarial"), data, _meta(tmp_path, checkpoints["adversarial"]), store, "t"
    )
    steps = store.read("steps", "s").sort_values("step")
    assert metrics["eval_n"] == EVAL_BATCHES * BATCH
    for loss, values, n in zip(steps["loss"], steps["inner_objective_samples"], steps["eval_n"], strict=True):
        assert n == len(values) == BATCH and math.isnan(values[1])
        rest = [v for i, v in enumerate(values) if i != 1]
        assert all(math.isfinite(v) for v in rest) and sum(rest) / len(rest) == pytest.approx(loss, rel=1e-6)


def test_a_wholly_diverged_batch_makes_the_trial_diverged(data, checkpoints, tmp_path, monkeypatch):
    """One of two batches diverges entirely, the other not at all: solver_diverged is exactly
    0.5 and inner_objective is inf; the trial must not end "completed" with nothing to rank."""
    import orchestrator.trial.solve as solve_trial

    solve, calls = solve_trial._solve_batch, []

    def first_batch_diverges(trainer, x, y, gen):
        res = solve(trainer, x, y, gen)
        calls.append(1)
        if len(calls) == 1:
            res = dataclasses.replace(res, diverged=torch.ones_like(res.diverged))
        return res

    monkeypatch.setattr(solve_trial, "_solve_batch", first_batch_diverges)
    metrics, status = run_solve(
        _solve_config("adversarial"),
        data,
        _meta(tmp_path, checkpoints["adversarial"]),
        ResultStore(str(tmp_path)),
        "t",
    )
    assert metrics["solver_diverged"] == 0.5 and metrics["inner_objective"] == math.inf
    assert status == "diverged"


def test_run_solve_needs_a_checkpoint(data, tmp_path):
    with pytest.raises(ValueError, match="checkpoint"):
        run_solve(_solve_config("generative"), data, _meta(tmp_path, None), ResultStore(str(tmp_path)), "t")


# ---------------------------------------------------------------- ensure_checkpoint

FIXED = {
    "task": "adversarial",
    "mode": "jiio",
    "seed": 0,
    "model_size": "tiny",
    "epochs": 1,
    "max_steps_per_epoch": 1,
    "eval_batches": 1,
    "batch_size": BATCH,
    "pgd_steps": 1,
    "deq_max_iter": 5,
    "max_iter": 5,
}


@pytest.fixture
def fit_calls(monkeypatch):
    calls = []
    fit = Trainer.fit

    def counting(self, *args, **kwargs):
        calls.append(self.config.mode)
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "fit", counting)
    return calls


def test_ensure_checkpoint_missing_path_is_a_clear_error(tmp_path):
    missing = str(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match=r"checkpoint .*nope\.pt.* not found"):
        ensure_checkpoint(missing, str(tmp_path / "store"), "s", FIXED, DATA)
    assert not (tmp_path / "store").exists()


def test_ensure_checkpoint_given_path_is_returned_untouched(tmp_path, fit_calls):
    path = tmp_path / "given.pt"
    path.write_bytes(b"x")
    assert ensure_checkpoint(str(path), str(tmp_path / "store"), "s", FIXED, DATA) == str(path)
    assert fit_calls == []


def test_ensure_checkpoint_trains_once_then_reuses(tmp_path, fit_calls):
    storage = str(tmp_path / "store")
    uri = ensure_checkpoint(None, storage, "run", FIXED, DATA)
    target = tmp_path / "store" / "models" / "run.pt"
    assert uri == str(target) and target.is_file()
    assert fit_calls == ["clean"]  # the adversarial model is trained clean
    state = torch.load(io.BytesIO(load_bytes(uri)), map_location="cpu", weights_only=True)
    assert state["config"]["task"] == "adversarial" and set(state["modules"]) == {"cell", "head"}
    mtime = target.stat().st_mtime_ns
    assert ensure_checkpoint(None, storage, "run", FIXED, DATA) == uri
    assert fit_calls == ["clean"] and target.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in target.parent.iterdir()) == ["run.pt"]  # no temporary left


def test_ensure_checkpoint_relative_storage(tmp_path, fit_calls, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = ensure_checkpoint(None, "rel/store", "r", FIXED, DATA)
    assert os.path.isabs(uri) and Path(uri) == tmp_path / "rel" / "store" / "models" / "r.pt"
    monkeypatch.chdir(ROOT)  # trials may run elsewhere: the uri still names the file
    assert load_bytes(uri) and fit_calls == ["clean"]
    monkeypatch.chdir(tmp_path)
    assert ensure_checkpoint(None, "rel/store", "r", FIXED, DATA) == uri
    assert fit_calls == ["clean"]


# ---------------------------------------------------------------- the Pareto front, end to end


def _non_dominated(points: dict[str, tuple[float, float]]) -> set[str]:
    """Brute force: ids whose point no other point is <= in both and < in one (minimised)."""
    front = set()
    for i, p in points.items():
        if not any(q[0] <= p[0] and q[1] <= p[1] and q != p for j, q in points.items() if j != i):
            front.add(i)
    return front


def _solver_sweep(tmp_path: Path, task: str | None) -> None:
    storage = tmp_path / "store"
    cmd = [sys.executable, SCRIPT, "--smoke", "--trials", "3", "--storage", str(storage), "--name", "p"]
    if task is not None:
        cmd += ["--task", task]
    out = subprocess.run(cmd, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=500)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    store = ResultStore(str(storage))
    trials = store.read("trials", "p")
    assert len(trials) == 3 and trials["trial_id"].is_unique
    assert set(trials["status"]) <= {"completed", "diverged"}, trials[["trial_id", "status"]]
    done = trials[trials["status"] == "completed"].dropna(subset=["inner_objective", "solve_s"])
    assert len(done) >= 1
    assert done[["inner_objective", "solve_s"]].map(math.isfinite).all().all()
    if task in (None, "adversarial"):
        assert (done["inner_objective"] < 0).all()  # negated cross-entropy
    else:
        assert (done["inner_objective"] > 0).all()  # a summed squared error
    points = {r.trial_id: (float(r.inner_objective), float(r.solve_s)) for r in done.itertuples(index=False)}
    path = storage / "pareto" / "sweep=p" / "front.parquet"
    assert path.is_file()
    front = pq.read_table(path).to_pandas()
    assert front["trial_id"].is_unique
    assert set(front["trial_id"]) == _non_dominated(points)
    merged = front.merge(trials, on="trial_id", suffixes=("", "_t"))
    for col in ("inner_objective", "solve_s", "alpha_x", "anderson_m", "max_iter"):
        pd.testing.assert_series_equal(merged[col], merged[f"{col}_t"], check_names=False)
    steps = store.read("steps", "p")
    assert set(steps["phase"]) == {"solve"} and set(steps["trial_id"]) == set(trials["trial_id"])
    assert (storage / "models" / "p.pt").is_file()
    # every trial listed every sample of the same batches: jiio analyze pairs them
    s = summarize(store, "p")
    assert all(len(r["inner_objective_per_sample"]) == 16 for r in s["best"])  # --smoke: 1 batch of 16
    if "verdict" in s and s["best"][0]["trial_id"] != s["paper"]["trial_id"]:
        assert s["verdict"]["paired"]["n"] >= 2 and "paired over" in s["verdict"]["text"]


def test_solver_sweep_pareto_front_default_task(tmp_path):
    _solver_sweep(tmp_path, None)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["generative", "inpainting", "denoising"])
def test_solver_sweep_pareto_front_latent_tasks(tmp_path, task):
    _solver_sweep(tmp_path, task)
