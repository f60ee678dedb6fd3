"""Tests for orchestrator.tasks.generative: the DEQ decoder trained through its latent problem.

Tiny MDEQ on a small digits subset, a few steps each; one slow test trains on all digits.
"""

from __future__ import annotations

import math
import time

import pytest
import torch
from PIL import Image

from jiio_core import JIIOConfig
from orchestrator.data import DataConfig, load_dataset
from orchestrator.tasks import generative as gen_mod
from orchestrator.tasks.generative import GenerativeTrainer, psnr, save_grid, sq_error, train_generative
from orchestrator.tasks.task_config import TaskConfig
from orchestrator.tasks.trainer import StepOutcome, TaskResult
from tests.orchestrator import _latent
from tests.orchestrator._latent import FAST_JIIO, check_eval_samples, first_batch, params

STEP_KEYS = {
    "loss",
    "mse",
    "psnr",
    "inner_loss",
    "inner_s",
    "step_s",
    "diverged_rows",
    "solver_diverged",
    "solver_converged",
}
JIIO_KEYS = STEP_KEYS | {
    "solver_iterations",
    "solver_residual",
    "solve_s",
    "backward_mode",
    "backward_mu_frac",
}
JIIO_KEYS |= {"backward_residual", "backward_iterations"}
EVAL_KEYS = {"test_mse", "test_psnr", "test_psnr_median", "test_diverged", "inner_s", "eval_n"}
EVAL_KEYS |= {"test_mse_samples", "test_psnr_samples"}


@pytest.fixture(scope="module")
def data():
    return load_dataset(DataConfig(dataset="digits", limit_train=32, limit_test=16))


def make_config(**changes) -> TaskConfig:
    return _latent.make_config(**{"task": "generative", **changes})


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_build_decodes_latents_to_images(data):
    tr = GenerativeTrainer(make_config(), data)
    assert set(tr.modules) == {"cell", "head"}
    assert tr.cell.config.latent_dim == 16
    with torch.no_grad():
        img = tr.decode(torch.randn(3, 16))
    assert img.shape == (3, 1, 16, 16)
    assert float(img.min()) >= 0 and float(img.max()) <= 1


@pytest.mark.parametrize(("backward_tol", "mode"), [(1e-5, "ift"), (0.9, "mu")])
def test_jiio_step_reports_metrics_and_which_backward_ran(data, backward_tol, mode):
    """20 damped iterations leave mu* ~10% off: with the default backward_tol every sample
    solves; with a tolerance above that, mu* is reused (the outer loss is the inner one)."""
    tr = GenerativeTrainer(make_config(jiio=FAST_JIIO.replace(backward_tol=backward_tol)), data)
    before = params(tr)
    out = tr.train_step(first_batch(data), torch.zeros(8, dtype=torch.long))
    assert isinstance(out, StepOutcome) and not out.diverged
    assert set(out.metrics) >= JIIO_KEYS
    assert out.metrics["backward_mode"] == mode
    assert out.metrics["backward_mu_frac"] == (1.0 if mode == "mu" else 0.0)
    assert out.metrics["backward_residual"] <= backward_tol
    assert (out.metrics["backward_iterations"] == 0) == (mode == "mu")
    assert out.metrics["diverged_rows"] == 0.0
    assert math.isclose(out.metrics["mse"], out.metrics["loss"] / 256, rel_tol=1e-5)
    assert out.trace is None
    assert not same(before, params(tr))


def test_adam_mode_runs_and_evaluates(data):
    rows: list[dict] = []
    res, tr = train_generative(
        make_config(mode="adam"), DataConfig("digits", limit_train=32, limit_test=16), rows.append
    )
    assert isinstance(res, TaskResult) and res.status == "completed" and res.steps == 2
    train_rows = [r for r in rows if r["phase"] == "train"]
    assert len(train_rows) == 2 and all(set(r) >= STEP_KEYS for r in train_rows)
    assert all(math.isfinite(r["loss"]) for r in train_rows)
    assert set(res.metrics) >= EVAL_KEYS


def test_inner_jiio_solve_reduces_reconstruction_loss(data):
    tr = GenerativeTrainer(make_config(), data)
    y = first_batch(data)
    for _ in range(4):
        tr.train_step(y, y)
    with torch.no_grad():
        at_x0 = sq_error(tr.decode(tr.latent_init(8)), y)
        sol = tr.solve_latent(y)
        at_solution = sq_error(tr.decode(sol.x), y)
    assert not bool(sol.diverged.any())
    assert float(at_solution.mean()) < 0.9 * float(at_x0.mean())


def test_training_reduces_loss_on_a_fixed_batch(data):
    tr = GenerativeTrainer(make_config(lr=1e-2), data)
    y = first_batch(data)
    losses = [tr.train_step(y, y).metrics["loss"] for _ in range(8)]
    assert sum(losses[-2:]) < 0.8 * sum(losses[:2]), losses


def test_jac_reg_and_trace(data):
    tr = GenerativeTrainer(make_config(jac_reg=0.5, trace_every=1), data)
    out = tr.train_step(first_batch(data), None)
    assert out.metrics["jac_reg_loss"] > 0
    assert out.trace is not None and set(out.trace) >= {"objective", "residual", "z_residual"}
    assert len(out.trace["objective"]) == FAST_JIIO.max_iter


def _poison(tr: GenerativeTrainer) -> None:
    with torch.no_grad():
        tr.head.body[-1].bias.fill_(float("nan"))


# common.Trainer.fit steps the scheduler after a step that made no optimiser step: torch warns
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_diverged_step_makes_no_update_and_ends_the_run(data):
    tr = GenerativeTrainer(make_config(epochs=3, max_steps_per_epoch=4, diverged_patience=2), data)
    _poison(tr)
    before = params(tr)
    out = tr.train_step(first_batch(data), None)
    assert out.diverged and out.metrics["diverged_rows"] == 8.0
    assert out.metrics["solver_diverged"] == 1.0
    assert same(before[:-1], params(tr)[:-1])  # all but the poisoned (NaN) bias
    rows: list[dict] = []
    res = tr.fit(rows.append)
    assert res.status == "diverged" and res.steps == 2
    assert [r["diverged_step"] for r in rows] == [True, True]
    assert same(before[:-1], params(tr)[:-1])


def test_adam_mode_divergence(data):
    tr = GenerativeTrainer(make_config(mode="adam"), data)
    _poison(tr)
    before = params(tr)
    out = tr.train_step(first_batch(data), None)
    assert out.diverged and out.metrics["diverged_rows"] == 8.0
    assert same(before[:-1], params(tr)[:-1])


def test_minority_of_diverged_rows_is_masked(data, monkeypatch):
    seen = {}
    real = gen_mod.jiio_solve

    def one_bad_row(f, loss, x0, **kw):
        res = real(f, loss, x0, **kw)
        res.diverged = res.diverged.clone()
        res.diverged[0] = True
        with torch.no_grad():
            seen["per"] = loss(res.z.detach())
        return res

    monkeypatch.setattr(gen_mod, "jiio_solve", one_bad_row)
    tr = GenerativeTrainer(make_config(), data)
    before = params(tr)
    out = tr.train_step(first_batch(data), None)
    assert not out.diverged and out.metrics["diverged_rows"] == 1.0
    assert math.isclose(out.metrics["loss"], float(seen["per"][1:].mean()), rel_tol=1e-5)
    # the left-out row's outer gradient is 0 (no solve); the others' mu* had not converged
    assert out.metrics["backward_mode"] == "mixed" and out.metrics["backward_mu_frac"] == 1 / 8
    assert not same(before, params(tr))


def test_evaluate_reports_reconstruction_and_leaves_params(data):
    tr = GenerativeTrainer(make_config(), data)
    before = params(tr)
    m1 = tr.evaluate()
    assert set(m1) >= EVAL_KEYS and "corrupted_psnr" not in m1
    assert m1["eval_n"] == 8  # eval_batches=1 batch of 8
    assert m1["test_psnr_median"] > 0 and math.isfinite(m1["test_psnr"])
    assert same(before, params(tr))
    assert tr.evaluate()["test_mse"] == pytest.approx(m1["test_mse"])
    assert all(p.grad is None for m in tr.modules.values() for p in m.parameters())


@pytest.mark.parametrize(("eval_batches", "n"), [(None, 16), (1, 8), (5, 16)])
def test_evaluate_counts_its_samples(data, eval_batches, n):
    """``eval_n``: the whole split (16) when eval_batches is None, else eval_batches x 8
    capped by the split; each image's MSE recomputed independently (one solve, one batch)."""
    tr = GenerativeTrainer(make_config(eval_batches=eval_batches), data)
    m = tr.evaluate()
    check_eval_samples(m, n)
    images = torch.stack([data.test[i][0] for i in range(n)])
    with torch.no_grad():
        recon = tr.head(tr.solve_latent(images).z)
    mse = (recon - images).pow(2).flatten(1).mean(1)
    assert m["test_mse_samples"] == pytest.approx(mse.tolist(), rel=1e-3)


def test_psnr_and_sq_error():
    a = torch.zeros(2, 1, 4, 4)
    assert psnr(a + 0.1, a).tolist() == pytest.approx([20.0, 20.0], abs=1e-4)
    assert sq_error(a + 0.5, a).tolist() == pytest.approx([4.0, 4.0])
    mask = torch.zeros_like(a)
    mask[:, :, 0, 0] = 1
    assert sq_error(a + 0.5, a, mask).tolist() == pytest.approx([0.25, 0.25])


def test_latent_density_sampling_and_grid(data, tmp_path):
    tr = GenerativeTrainer(make_config(), data)
    with pytest.raises(RuntimeError, match="fit_latent_density"):
        tr.sample(2)
    tr.fit_latent_density(n_batches=2)
    assert tr.latent_mean is not None and tr.latent_cov is not None
    assert tr.latent_mean.shape == (16,) and tr.latent_cov.shape == (16, 16)
    assert torch.allclose(tr.latent_cov, tr.latent_cov.T)
    assert float(torch.linalg.eigvalsh(tr.latent_cov).min()) > 0
    imgs = tr.sample(5, torch.Generator().manual_seed(1))
    again = tr.sample(5, torch.Generator().manual_seed(1))
    assert imgs.shape == (5, 1, 16, 16) and torch.equal(imgs, again)
    assert float(imgs.min()) >= 0 and float(imgs.max()) <= 1
    path = tmp_path / "grid" / "samples.png"
    save_grid(imgs, path, nrow=8)
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size == (5 * 18 + 2, 18 + 2)  # make_grid: 2 px padding around each tile
    tr.save_grid(imgs, tmp_path / "again.png", nrow=2)
    with Image.open(tmp_path / "again.png") as im:
        assert im.size == (2 * 18 + 2, 3 * 18 + 2)


def test_state_dict_round_trip(data):
    tr = GenerativeTrainer(make_config(), data)
    tr.train_step(first_batch(data), None)
    tr.global_step, tr.epoch = 1, 1
    tr.fit_latent_density(n_batches=1)
    state = tr.state_dict()
    fresh = GenerativeTrainer(make_config(seed=5), data)
    assert not same(params(tr), params(fresh))
    fresh.load_state_dict(state)
    assert same(params(tr), params(fresh))
    assert (fresh.global_step, fresh.epoch) == (1, 1)
    assert torch.equal(fresh.latent_mean, tr.latent_mean) and torch.equal(fresh.latent_cov, tr.latent_cov)
    assert fresh.optimizer.state_dict()["state"].keys() == tr.optimizer.state_dict()["state"].keys()
    g = torch.Generator()
    assert torch.equal(fresh.sample(3, g.manual_seed(0)), tr.sample(3, g.manual_seed(0)))
    assert fresh.evaluate()["test_mse"] == pytest.approx(tr.evaluate()["test_mse"])


def test_train_generative_rejects_other_tasks():
    with pytest.raises(ValueError, match="generative"):
        train_generative(make_config(task="denoising"), DataConfig("digits", limit_train=8, limit_test=8))


@pytest.mark.slow
def test_jiio_trained_generator_reconstructs_held_out_digits():
    """All digits (1293 train / 360 test), tiny MDEQ, 5 epochs of JIIO training."""
    cfg = TaskConfig(
        task="generative",
        mode="jiio",
        batch_size=32,
        epochs=5,
        lr=5e-3,
        eval_batches=None,
        jiio=JIIOConfig(solver="fixed_point", alpha_x=0.003, max_iter=30, early_stop=False),
    )
    t0 = time.perf_counter()
    res, tr = train_generative(cfg, DataConfig("digits"))
    shown = {k: v for k, v in res.metrics.items() if not isinstance(v, list)}
    print(f"\nheld-out PSNR {shown} in {time.perf_counter() - t0:.0f} s")
    assert res.status == "completed"
    assert res.metrics["test_psnr"] > 20.0  # measured: 21.7 dB (median 21.7), ~75 s on 1 CPU thread
    assert res.metrics["test_diverged"] == 0.0
