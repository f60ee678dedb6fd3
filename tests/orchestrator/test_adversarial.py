"""Tests for orchestrator.tasks.adversarial: clean / PGD / JIIO adversarial training of an MDEQ.

Fast tests run a step or two on a few digits; the slow test trains each mode for real and
checks that adversarial training (PGD or JIIO) buys robustness that clean training lacks.
"""

from __future__ import annotations

import copy
import math
import time

import pytest
import torch
import torch.nn.functional as F

from jiio_core import JIIOConfig, JIIOResult
from orchestrator.data import DataConfig, load_dataset
from orchestrator.tasks.adversarial import (
    ATTACKS,
    AdversarialTrainer,
    attack_table,
    format_table,
    train_adversarial,
)
from orchestrator.tasks.task_config import TaskConfig

FAST_JIIO = JIIOConfig.paper("mnist_adversarial").replace(max_iter=15, alpha_x_switch_iter=10)
EVAL_KEYS = {
    "eval_n",
    "pgd_loss_samples",
    "jiio_loss_samples",
    "clean_acc",
    "pgd_acc",
    "jiio_acc",
    "pgd_loss",
    "jiio_loss",
    "pgd_attack_s",
    "jiio_attack_s",
    "jiio_attack_diverged",
}
SOLVER_KEYS = {"solver_iterations", "solver_converged", "solver_diverged", "solver_residual", "solve_s"}
TRAIN_KEYS = {
    "clean": {"loss", "train_acc", "step_s"},
    "pgd": {"loss", "train_acc", "step_s", "attack_s"},
    "jiio": {"loss", "train_acc", "step_s", "inner_loss", "backward_mu_frac", "backward_residual"}
    | {"backward_iterations"}
    | SOLVER_KEYS,
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: intra-op threads only add overhead (tens of times slower on a busy box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data():
    # 8x8 digits (MDEQ branches at 8x8 and 4x4) keep every solve cheap
    return load_dataset(DataConfig(dataset="digits", image_size=8, limit_train=48, limit_test=16))


def fast_config(mode: str, **changes) -> TaskConfig:
    base = TaskConfig(
        task="adversarial",
        mode=mode,
        epochs=1,
        max_steps_per_epoch=1,
        batch_size=8,
        eval_batches=1,
        pgd_steps=2,
        deq_max_iter=12,
        deq_backward_max_iter=10,
        jiio=FAST_JIIO,
    )
    return base.replace(**changes)


def params_of(trainer: AdversarialTrainer) -> list[torch.Tensor]:
    return [p.detach().clone() for m in trainer.modules.values() for p in m.parameters()]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


class Recording(AdversarialTrainer):
    """Keeps the last JIIO result; ``mark`` forces chosen samples to count as diverged."""

    mark: list[int] = []  # noqa: RUF012 (set per test on the instance)

    def attack_jiio(self, x: torch.Tensor, y: torch.Tensor, max_iter: int | None = None) -> JIIOResult:
        res = super().attack_jiio(x, y, max_iter)
        if self.mark:
            res.diverged = res.diverged.clone()
            res.diverged[self.mark] = True
        if torch.is_grad_enabled():  # a training step's solve, not an evaluation attack
            self.last = res
        return res


def batch(trainer: AdversarialTrainer) -> tuple[torch.Tensor, torch.Tensor]:
    return next(iter(trainer.eval_batches("train")))


@pytest.mark.parametrize("mode", ["clean", "pgd", "jiio"])
def test_each_mode_reports_documented_keys(data, mode):
    cfg = fast_config(mode, trace_every=1, jac_reg=0.01)
    trainer = Recording(cfg, data)
    rows: list[dict] = []
    result = trainer.fit(rows.append)
    assert result.status == "completed" and result.steps == 1
    train, evals = rows[:-1], rows[-1]
    assert len(train) == 1 and train[0]["phase"] == "train" and train[0]["diverged_step"] is False
    assert TRAIN_KEYS[mode] | {"jac_penalty"} <= set(train[0])
    assert all(math.isfinite(train[0][k]) for k in TRAIN_KEYS[mode])
    assert 0.0 <= train[0]["train_acc"] <= 1.0
    assert evals["phase"] == "eval" and evals["epoch_end"] is True and evals["epoch"] == 1
    assert set(evals) >= EVAL_KEYS and set(result.metrics) >= EVAL_KEYS
    for k in ("clean_acc", "pgd_acc", "jiio_acc", "jiio_attack_diverged"):
        assert 0.0 <= evals[k] <= 1.0
    assert evals["eval_n"] == result.metrics["eval_n"] == 8  # eval_batches=1 batch of 8
    if mode == "jiio":
        # the outer CE is a multiple of the negated inner loss, but after 15 iterations no
        # sample's mu* met backward_tol: every sample solved (x* fixed), to backward_tol
        res = trainer.last
        assert float(res.mu_residual.min()) > cfg.jiio.backward_tol
        assert train[0]["backward_mode"] == res.backward["mode"] == "ift"
        assert train[0]["backward_mu_frac"] == 0.0 and train[0]["backward_iterations"] > 0
        assert train[0]["backward_residual"] <= cfg.jiio.backward_tol
        assert set(train[0]["trace"]) >= {"residual", "objective"}
        assert len(train[0]["trace"]["residual"]) == train[0]["solver_iterations"]
    else:
        assert "trace" not in train[0]


def test_clean_training_decreases_loss_and_changes_params(data):
    trainer = AdversarialTrainer(fast_config("clean", lr=1e-2), data)
    x, y = batch(trainer)
    before = params_of(trainer)
    losses = [trainer.train_step(x, y).metrics["loss"] for _ in range(8)]
    assert losses[-1] < 0.7 * losses[0], losses
    assert not same(before, params_of(trainer))


def test_jiio_attack_stays_in_ball_and_evaluate_restores_grad_flags(data):
    trainer = AdversarialTrainer(fast_config("jiio", eps=0.5), data)
    x, y = batch(trainer)
    with torch.no_grad():
        res = trainer.attack_jiio(x, y)
    assert not res.z.requires_grad
    assert float((res.x - x).flatten(1).norm(dim=1).max()) <= 0.5 + 1e-5
    x_pgd = trainer.attack_pgd(x, y)
    assert float((x_pgd - x).flatten(1).norm(dim=1).max()) <= 0.5 + 1e-5
    trainer.modules["head"].linear.bias.requires_grad_(False)  # a flag evaluate must keep
    flags = [p.requires_grad for m in trainer.modules.values() for p in m.parameters()]
    trainer.evaluate()
    assert flags == [p.requires_grad for m in trainer.modules.values() for p in m.parameters()]
    assert all(p.grad is None for m in trainer.modules.values() for p in m.parameters())


def test_minority_of_diverged_samples_is_left_out(data):
    trainer = Recording(fast_config("jiio"), data)
    trainer.mark = [0, 3]
    x, y = batch(trainer)
    before, head = params_of(trainer), copy.deepcopy(trainer.modules["head"])
    out = trainer.train_step(x, y)
    res, keep = trainer.last, torch.ones(len(y), dtype=torch.bool)
    keep[[0, 3]] = False
    assert torch.isfinite(res.z).all()  # jiio_core returns the last good iterate, finite
    with torch.no_grad():
        kept = F.cross_entropy(head(res.z[keep]), y[keep])
        everyone = F.cross_entropy(head(res.z), y)
    assert not out.diverged and out.metrics["solver_diverged"] == pytest.approx(0.25)
    assert out.metrics["loss"] == pytest.approx(float(kept), rel=1e-5)
    assert out.metrics["loss"] != pytest.approx(float(everyone), rel=1e-5)
    assert out.metrics["inner_loss"] == pytest.approx(float(kept), rel=1e-4)
    # masked rows (gradient 0) need no solve; the others' mu* had not converged: "mixed"
    assert float(res.mu_residual.min()) > trainer.config.jiio.backward_tol
    assert out.metrics["backward_mode"] == "mixed" and out.metrics["backward_mu_frac"] == 0.25
    assert not same(before, params_of(trainer))


def test_training_reuses_mu_for_samples_whose_mu_met_backward_tol(data):
    """The eq. 19 shortcut in training: with backward_tol above every sample's mu residual
    no backward solve runs, and the step's gradient is mu* reused."""
    trainer = Recording(fast_config("jiio", jiio=FAST_JIIO.replace(backward_tol=0.95)), data)
    x, y = batch(trainer)
    out = trainer.train_step(x, y)
    assert float(trainer.last.mu_residual.max()) <= 0.95
    assert out.metrics["backward_mode"] == "mu" and out.metrics["backward_mu_frac"] == 1.0
    assert out.metrics["backward_iterations"] == 0.0
    assert out.metrics["backward_residual"] == pytest.approx(float(trainer.last.mu_residual.max()))


def test_majority_of_diverged_samples_makes_a_diverged_step(data):
    trainer = Recording(fast_config("jiio"), data)
    trainer.mark = [0, 1, 2, 3, 4]
    x, y = batch(trainer)
    before = params_of(trainer)
    out = trainer.train_step(x, y)
    assert out.diverged and out.metrics["solver_diverged"] > 0.5
    assert same(before, params_of(trainer))
    assert all(p.grad is None for m in trainer.modules.values() for p in m.parameters())


def test_non_finite_loss_makes_a_diverged_step(data):
    trainer = AdversarialTrainer(fast_config("clean"), data)
    x, y = batch(trainer)
    before = params_of(trainer)
    out = trainer.train_step(torch.full_like(x, float("nan")), y)
    assert out.diverged and not math.isfinite(out.metrics["loss"])
    assert same(before, params_of(trainer))


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_diverging_jiio_ends_run_without_update(data):
    # Huge raw-gradient x steps inside a huge ball: the augmented residual explodes.
    jiio = JIIOConfig(solver="fixed_point", alpha_x=1e6, x_step="gradient", max_iter=6)
    cfg = fast_config("jiio", jiio=jiio, eps=1e6, max_steps_per_epoch=4, diverged_patience=2)
    trainer = AdversarialTrainer(cfg, data)
    before = params_of(trainer)
    rows: list[dict] = []
    result = trainer.fit(rows.append)
    assert result.status == "diverged" and result.steps == 2
    assert len(rows) == 2 and all(r["diverged_step"] is True for r in rows)
    assert all(r["solver_diverged"] > 0.5 for r in rows)
    assert same(before, params_of(trainer))


class _StopError(Exception):
    pass


def test_state_dict_round_trip_continues_identically(data):
    cfg = fast_config("clean", epochs=2, max_steps_per_epoch=2)
    whole = AdversarialTrainer(cfg, data)
    whole_result = whole.fit()

    def stop_after_first_epoch(row: dict) -> None:
        if row["phase"] == "eval":
            raise _StopError  # as if the trial were stopped right after its epoch-1 checkpoint

    first = AdversarialTrainer(cfg, data)
    with pytest.raises(_StopError):
        first.fit(stop_after_first_epoch)
    state = first.state_dict()
    resumed = AdversarialTrainer(cfg, data)
    with torch.no_grad():  # a different starting point: the state must overwrite it
        for m in resumed.modules.values():
            for p in m.parameters():
                p.add_(1.0)
    resumed.load_state_dict(state)
    assert (resumed.epoch, resumed.global_step) == (first.epoch, first.global_step) == (1, 2)
    assert same(params_of(first), params_of(resumed))
    result = resumed.fit()
    assert result.status == "completed" and resumed.global_step == whole.global_step == 4
    for u, v in zip(params_of(whole), params_of(resumed), strict=True):
        assert torch.allclose(u, v, atol=1e-6)
    assert result.metrics["clean_acc"] == whole_result.metrics["clean_acc"]


def test_attack_table_and_format(data):
    trainer = AdversarialTrainer(fast_config("clean"), data)
    done = {"clean_acc": 0.9, "pgd_acc": 0.05, "jiio_acc": 0.0625, "pgd_loss": 3.0}
    table = attack_table({"clean": done, "pgd": trainer, "jiio": dict(done, jiio_acc=0.5)})
    assert list(table) == ["clean", "pgd", "jiio"]
    assert all(list(row) == list(ATTACKS) for row in table.values())
    assert table["clean"] == {"clean": 0.9, "pgd": 0.05, "jiio": 0.0625}
    assert all(0.0 <= v <= 1.0 for v in table["pgd"].values())
    text = format_table(table)
    lines = text.splitlines()
    assert len(lines) == 4 and "PGD" in lines[0] and "JIIO" in lines[0]
    assert len({len(line) for line in lines}) == 1  # aligned
    assert lines[1].split() == ["clean", "90.0%", "5.0%", "6.2%"]


def _check_sample_metrics(m: dict, n: int) -> None:
    """What the analysis relies on: counts behind the accuracies, per-sample losses."""
    assert type(m["eval_n"]) is int and m["eval_n"] == n
    for k in ("clean_acc", "pgd_acc", "jiio_acc", "jiio_attack_diverged"):
        count = m[k] * n
        assert count == pytest.approx(round(count), abs=1e-9), (k, m[k], n)
    for k in ("pgd_loss", "jiio_loss"):
        samples = m[f"{k}_samples"]
        assert isinstance(samples, list) and len(samples) == n
        assert all(type(v) is float and v >= 0 for v in samples)
        assert math.fsum(samples) / n == pytest.approx(m[k], rel=1e-12)


@pytest.mark.parametrize(("eval_batches", "n"), [(None, 16), (1, 8), (5, 16)])
def test_evaluate_counts_its_samples(data, eval_batches, n):
    """``eval_n``: the whole split when eval_batches is None, else eval_batches * batch_size
    capped by the split (16 test digits, batches of 8); the clean accuracy recomputed
    independently, in one batch over the same samples."""
    trainer = AdversarialTrainer(fast_config("clean", eval_batches=eval_batches), data)
    for m in trainer.modules.values():
        m.eval()
    metrics = trainer.evaluate()
    _check_sample_metrics(metrics, n)
    x = torch.stack([data.test[i][0] for i in range(n)])
    y = torch.tensor([int(data.test[i][1]) for i in range(n)])
    with torch.no_grad():
        correct = int((trainer.logits(x).argmax(1) == y).sum())
    assert round(metrics["clean_acc"] * n) == correct


def test_eval_counts_and_samples_reach_the_steps_table_not_tune(data, tmp_path, monkeypatch):
    """End to end through trainable.run_trial (Tune's report captured): the eval step rows
    in Parquet hold eval_n and the per-sample lists; the reports to Tune and the trials
    row hold eval_n and no list."""
    import ray.tune

    from orchestrator.storage import ResultStore
    from orchestrator.trial.meta import SweepMeta
    from orchestrator.trial.trainable import run_trial

    reports: list[dict] = []
    monkeypatch.setattr(ray.tune, "report", reports.append)
    flat = fast_config("clean", epochs=2, eval_batches=None).to_flat()
    meta = SweepMeta(
        name="s",
        storage=str(tmp_path),
        searched=("alpha_x",),
        fixed={k: v for k, v in flat.items() if k not in ("device", "alpha_x")},
        data={"dataset": "digits", "image_size": 8, "limit_train": 48, "limit_test": 16},
        metrics=("robust_acc",),
        modes=("max",),
    )
    run_trial({"alpha_x": flat["alpha_x"], "trial_id": "t"}, meta)
    store = ResultStore(str(tmp_path))
    steps = store.read("steps", "s")
    evals = steps[steps["phase"] == "eval"].sort_values("epoch")
    assert list(evals["epoch"]) == [1, 2] and list(evals["eval_n"]) == [16, 16] == [len(data.test)] * 2
    assert steps[steps["phase"] == "train"]["eval_n"].isna().all()
    for _, row in evals.iterrows():
        m = {k: ([float(u) for u in v] if k.endswith("_samples") else v) for k, v in row.items()}
        m["eval_n"] = int(m["eval_n"])
        _check_sample_metrics(m, 16)
    (trial,) = store.read("trials", "s").to_dict("records")
    assert trial["status"] == "completed" and trial["eval_n"] == 16
    assert trial["robust_acc"] == min(evals.iloc[-1]["pgd_acc"], evals.iloc[-1]["jiio_acc"])
    assert trial["pgd_loss"] == evals.iloc[-1]["pgd_loss"]
    assert not any(k.endswith("_samples") for k in trial)
    assert len(reports) == 2 and reports[-1]["final"] is True  # epoch 1's, then the trial's end
    assert reports[0]["eval_n"] == 16
    assert not any(isinstance(v, list) for r in reports for v in r.values())


def test_rejects_other_tasks(data):
    with pytest.raises(ValueError, match="adversarial"):
        AdversarialTrainer(TaskConfig(task="generative", mode="jiio"), data)


@pytest.mark.slow
def test_adversarial_training_buys_robustness():
    """Real training on all 1293 training digits (16x16), 3 epochs, batch 64, per mode.

    eps = 1.0 (the paper's MNIST radius): a 16x16 digit in [0, 1] has an L2 norm of about 7
    (MNIST 28x28: about 9.3), so the ball is as large relative to the image as the paper's.
    Evaluation: the first 128 test digits, PGD 5 steps of 0.5, JIIO 30 iterations.
    Run: ``.venv/bin/python -m pytest tests/orchestrator/test_adversarial.py -m slow -s -q``.
    Seen (CPU, 2 shared cores, 250 s): clean-trained 98% clean but 1% / 6% under PGD /
    JIIO; PGD- and JIIO-trained 92-94% clean, 46-50% under PGD, 56-63% under JIIO.
    """
    device = "cuda" if torch.cuda.is_available() else "cpu"
    base = TaskConfig(
        task="adversarial",
        epochs=3,
        batch_size=64,
        lr=5e-3,
        eps=1.0,
        pgd_steps=5,
        pgd_step_size=0.5,
        deq_max_iter=20,
        deq_backward_max_iter=15,
        eval_batches=2,
        jiio=JIIOConfig.paper("mnist_adversarial").replace(max_iter=30, alpha_x_switch_iter=20),
        device=device,
    )
    results, seconds = {}, {}
    for mode in ("clean", "pgd", "jiio"):
        t = time.perf_counter()
        result, _ = train_adversarial(base.replace(mode=mode), DataConfig(dataset="digits"))
        seconds[mode] = round(time.perf_counter() - t, 1)
        assert result.status == "completed"
        results[mode] = result.metrics
    table = attack_table(results)
    print(f"\n{format_table(table)}\ntrain+eval seconds: {seconds}")
    for mode, m in results.items():
        shown = {k: round(v, 3) if isinstance(v, float) else v for k, v in m.items()}
        print(mode, {k: v for k, v in shown.items() if not isinstance(v, list)})  # eval_attack: text
    assert table["clean"]["clean"] > 0.8, table
    undefended = max(table["clean"]["pgd"], table["clean"]["jiio"])
    for mode in ("pgd", "jiio"):
        assert min(table[mode]["pgd"], table[mode]["jiio"]) > undefended + 0.25, table
        assert table[mode]["clean"] > 0.75, table


def test_the_evaluation_attack_budget_is_a_stated_setting_reported_with_robust_accuracy(data):
    """``eval_pgd_steps`` / ``eval_jiio_max_iter`` set the evaluation's attacks (default: the
    training attack's) and ``eval_attack`` states them beside the accuracies; a weaker
    evaluation attack can only leave as many or more samples correct."""
    base = dict(mode="clean", epochs=1, max_steps_per_epoch=1, eval_batches=1, batch_size=32)
    strong = AdversarialTrainer(TaskConfig(**base, pgd_steps=6), data)
    weak = AdversarialTrainer(TaskConfig(**base, pgd_steps=6, eval_pgd_steps=1, eval_jiio_max_iter=1), data)
    weak.load_state_dict(strong.state_dict())
    for t in (strong, weak):
        t.deq.eval()
    m_strong, m_weak = strong.evaluate(), weak.evaluate()
    assert m_strong["eval_attack"].startswith("L2 eps 1: PGD-6 ")
    assert "JIIO-" + str(TaskConfig().jiio.max_iter) in m_strong["eval_attack"]
    assert "PGD-1 " in m_weak["eval_attack"] and m_weak["eval_attack"].endswith("JIIO-1")
    assert m_weak["pgd_loss"] < m_strong["pgd_loss"]  # one step from the clean input moves the loss less
    with pytest.raises(ValueError, match="eval_pgd_steps"):
        TaskConfig(eval_pgd_steps=0)
