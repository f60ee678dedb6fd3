"""Tests for orchestrator.tasks.inverse: corruptions, and the unsupervised / supervised
inverse problems (inpainting, denoising) solved through a DEQ decoder's latent."""

from __future__ import annotations

import math

import pytest
import torch

from orchestrator.data import DataConfig, load_dataset
from orchestrator.tasks.generative import psnr
from orchestrator.tasks.inverse import InverseTrainer, corrupt, inpainting_window, train_inverse
from orchestrator.tasks.task_config import TaskConfig
from tests.orchestrator import _latent
from tests.orchestrator._latent import FAST_JIIO, check_eval_samples, first_batch, params

EVAL_KEYS = {"test_psnr_median", "test_psnr", "test_mse", "corrupted_psnr", "test_diverged", "inner_s"}
EVAL_KEYS |= {"eval_n", "test_psnr_samples", "test_mse_samples", "corrupted_psnr_samples"}


@pytest.fixture(scope="module")
def data():
    return load_dataset(DataConfig(dataset="digits", limit_train=32, limit_test=16))


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_config(**changes) -> TaskConfig:
    return _latent.make_config(**{"task": "inpainting", **changes})


# ---------------------------------------------------------------- corruptions


@pytest.mark.parametrize(("size", "side"), [(16, 5), (28, 9), (32, 10), (64, 20)])
def test_inpainting_zeroes_one_square_window_per_image(size, side):
    assert inpainting_window(size) == side
    images = torch.rand(6, 3, size, size) * 0.9 + 0.1  # no zero pixels of its own
    bad, mask = corrupt(images, "inpainting", torch.Generator().manual_seed(0))
    assert bad.shape == images.shape and mask.shape == images.shape
    zeros = bad == 0
    assert zeros.flatten(1).sum(1).tolist() == [side * side * 3] * 6
    assert torch.equal(mask, (~zeros).float())
    assert torch.equal(bad[~zeros], images[~zeros])
    for hole in zeros[:, 0]:  # the hole is one side x side square, the same in every channel
        rows = hole.any(1).nonzero().flatten()
        cols = hole.any(0).nonzero().flatten()
        assert len(rows) == len(cols) == side
        assert int(rows[-1] - rows[0]) == side - 1 and int(cols[-1] - cols[0]) == side - 1
        assert bool(hole[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all())
    assert torch.equal(zeros[:, 0:1].expand_as(zeros), zeros)


def test_inpainting_windows_vary_and_cover_the_image():
    images = torch.ones(2000, 1, 16, 16)
    _, mask = corrupt(images, "inpainting", torch.Generator().manual_seed(3))
    holes = (mask == 0).float().sum(0)[0]
    assert bool((holes > 0).all())  # every pixel is masked in some image: windows reach the borders
    assert len({tuple((m[0] == 0).nonzero()[0].tolist()) for m in mask}) > 50


def test_denoising_adds_gaussian_noise_of_sigma():
    images = torch.full((4, 3, 64, 64), 0.5)
    noisy, mask = corrupt(images, "denoising", torch.Generator().manual_seed(0), noise_sigma=0.4)
    assert torch.equal(mask, torch.ones_like(images))
    noise = noisy - images
    assert float(noise.std()) == pytest.approx(0.4, rel=0.02)
    assert abs(float(noise.mean())) < 0.01
    assert float(noise.max()) > 0.5  # not clipped to [0, 1]


def test_corruption_is_determined_by_the_generator():
    images = torch.rand(5, 1, 16, 16)
    for task in ("inpainting", "denoising"):
        a = corrupt(images, task, torch.Generator().manual_seed(7), 0.2)
        b = corrupt(images, task, torch.Generator().manual_seed(7), 0.2)
        c = corrupt(images, task, torch.Generator().manual_seed(8), 0.2)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert not torch.equal(a[0], c[0])


def test_corrupt_rejects_bad_input():
    with pytest.raises(ValueError, match="task"):
        corrupt(torch.rand(1, 1, 8, 8), "deblurring")
    with pytest.raises(ValueError, match="shape"):
        corrupt(torch.rand(1, 8, 8), "inpainting")


@pytest.mark.parametrize(("delta", "db"), [(0.1, 20.0), (0.01, 40.0), (0.5, 10 * math.log10(4))])
def test_psnr_closed_form(delta, db):
    clean = torch.rand(3, 2, 8, 8) * 0.4
    assert psnr(clean + delta, clean).tolist() == pytest.approx([db] * 3, abs=1e-3)
    assert psnr(clean - delta, clean).tolist() == pytest.approx([db] * 3, abs=1e-3)


# ---------------------------------------------------------------- trainers


def test_unsupervised_trains_on_clean_images_and_evaluates_the_inverse_problem(data):
    jiio = FAST_JIIO.replace(backward_tol=0.9)  # above every mu* residual after 20 iterations
    tr = InverseTrainer(make_config(task="inpainting", supervised=False, jiio=jiio), data)
    out = tr.train_step(first_batch(data), None)
    assert not out.diverged and out.metrics["backward_mode"] == "mu"  # inner == outer loss
    before = params(tr)
    m = tr.evaluate()
    assert set(m) >= EVAL_KEYS
    assert math.isfinite(m["test_psnr_median"]) and m["test_psnr_median"] > 0
    assert all(torch.equal(a, b) for a, b in zip(before, params(tr), strict=True))
    again = tr.evaluate()  # the same corruptions every time
    same_keys = {k for k in EVAL_KEYS if k != "inner_s" and not k.endswith("_samples")}
    assert {k: again[k] for k in same_keys} == pytest.approx({k: m[k] for k in same_keys}, rel=1e-5)
    assert again["test_psnr_samples"] == pytest.approx(m["test_psnr_samples"], rel=1e-5)
    # the corrupted input's PSNR is that of the masked-out pixels alone
    images = next(tr.eval_batches("test"))[0]
    bad, _ = corrupt(images, "inpainting", tr._eval_generator())
    assert m["corrupted_psnr"] == pytest.approx(float(psnr(bad, images).mean()), rel=1e-5)
    assert m["eval_n"] == 8 and m["corrupted_psnr_samples"] == pytest.approx(psnr(bad, images).tolist())


def test_denoising_eval_reports_the_noisy_input_psnr(data):
    tr = InverseTrainer(make_config(task="denoising", noise_sigma=0.2, mode="adam"), data)
    m = tr.evaluate()
    assert set(m) >= EVAL_KEYS
    assert m["corrupted_psnr"] == pytest.approx(-10 * math.log10(0.2**2), abs=0.5)


@pytest.mark.parametrize("task", ["inpainting", "denoising"])
def test_supervised_training_uses_the_ift_backward(data, task):
    """The outer loss is not a multiple of the inner one: mu* is never reused, however loose
    backward_tol is (it bounds mu*'s residual, not what counts as the same loss)."""
    jiio = FAST_JIIO.replace(backward_tol=0.9)
    tr = InverseTrainer(make_config(task=task, supervised=True, jiio=jiio), data)
    before = params(tr)
    out = tr.train_step(first_batch(data), None)
    assert not out.diverged
    assert out.metrics["backward_mode"] == "ift" and out.metrics["backward_mu_frac"] == 0.0
    # outer loss is against the clean image, inner loss against the measurement
    assert out.metrics["loss"] != pytest.approx(out.metrics["inner_loss"])
    assert not all(torch.equal(a, b) for a, b in zip(before, params(tr), strict=True))


def test_supervised_adam_mode_and_train_inverse(data):
    rows: list[dict] = []
    res, tr = train_inverse(
        make_config(task="denoising", supervised=True, mode="adam"),
        DataConfig("digits", limit_train=32, limit_test=16),
        rows.append,
    )
    assert res.status == "completed" and res.steps == 2
    assert all(math.isfinite(r["loss"]) for r in rows if r["phase"] == "train")
    assert set(res.metrics) >= EVAL_KEYS
    state = tr.state_dict()
    fresh = InverseTrainer(make_config(task="denoising", supervised=True, mode="adam"), tr.data)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.train_generator.get_state(), tr.train_generator.get_state())


def test_whole_split_evaluation_counts_and_lists_every_image(data):
    """eval_batches=None: all 16 test digits (two batches of 8, corrupted in turn by the
    evaluation's generator); per-image lists whose means and median are the metrics."""
    tr = InverseTrainer(make_config(task="denoising", eval_batches=None), data)
    m = tr.evaluate()
    check_eval_samples(m, 16)
    gen, expected = tr._eval_generator(), []
    for images, _ in tr.eval_batches("test"):
        bad, _ = corrupt(images, "denoising", gen, tr.config.noise_sigma)
        expected += psnr(bad, images).tolist()
    assert len(expected) == len(data.test) == 16
    assert m["corrupted_psnr_samples"] == pytest.approx(expected, rel=1e-6)


def test_inverse_trainer_rejects_the_generative_task(data):
    with pytest.raises(ValueError, match="inpainting"):
        InverseTrainer(make_config(task="generative"), data)
