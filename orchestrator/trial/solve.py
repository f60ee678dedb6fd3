"""Trials that tune the inner solve alone: JIIO on a fixed trained model, no training.

Each trial loads the same checkpoint (a ``Trainer.state_dict`` saved with ``torch.save``),
runs the task's own inner problem with its own solver settings on held-out batches
(adversarial: the task's JIIO attack on the eps-ball; generative / inpainting / denoising:
the task's latent inference against its observation, i.e. the clean, masked or noisy
image), and reports the final inner objective and the wall time: the two objectives of a
multi-objective sweep.
The model is trained once, in the driver, when none is given
(:func:`orchestrator.driver.fixed_model.ensure_checkpoint`).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from jiio_core import JIIOResult
from orchestrator.storage import ResultStore, assert_driver, layout, read_checkpoint
from orchestrator.tasks import TaskConfig
from orchestrator.tasks.generative import psnr
from orchestrator.tasks.registry import make_trainer
from orchestrator.tasks.step_metrics import mean_trace

if TYPE_CHECKING:
    from orchestrator.trial.meta import SweepMeta

__all__ = ["run_solve"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _solve_batch(trainer: Any, x: Tensor, y: Tensor, gen: torch.Generator | None) -> JIIOResult:
    """The task's own inner problem on one test batch, solved by JIIO as the task solves it.

    Adversarial: ``trainer.attack_jiio`` (minimise ``-CE(head(z*), labels)`` over the eps-ball
    around the images). Generative / inpainting / denoising: the observation and mask of
    ``trainer.eval_problem`` (the clean image; the masked image; the noisy image), then
    ``trainer.solve_latent`` (minimise ``|mask * (head(z*(x)) - observation)|^2`` over the
    latent from ``x0 = 0``).
    """
    if trainer.config.task == "adversarial":
        return trainer.attack_jiio(x, y)
    target, mask = trainer.eval_problem(x, gen)
    sol = trainer.solve_latent(target, mask)
    assert sol.res is not None  # mode "jiio"
    return sol.res


def _quality(trainer: Any, res: JIIOResult, x: Tensor, y: Tensor) -> float:
    """Adversarial: the classifier's accuracy at the returned state; otherwise the mean PSNR
    of the reconstruction ``head(z*)`` against the CLEAN images."""
    out = trainer.head(res.z)
    if trainer.config.task == "adversarial":
        return float((out.argmax(1) == y).float().mean())
    return float(psnr(out, x).mean())


def run_solve(
    task_cfg: TaskConfig, data: Any, meta: SweepMeta, store: ResultStore, trial_id: str
) -> tuple[dict[str, Any], str]:
    """Inner solves with ``task_cfg.jiio`` on the checkpoint's model; metrics and status.

    The inner problem is the task's own, on the first ``eval_batches`` test batches (see
    :func:`_solve_batch`); the model's settings (task, size, latent, eps, noise) come from
    the checkpoint. Metrics: ``inner_objective`` (the mean over batches of the mean inner
    loss of the non-diverged samples at the returned iterate: adversarial ``-CE``, else the
    summed squared error against the observation), ``solve_s`` (wall time of the solves),
    ``solver_diverged`` / ``solver_converged`` (fractions), and ``attack_acc`` (adversarial)
    or ``recon_psnr`` (PSNR in dB of the reconstruction against the clean image). Writes
    one ``steps`` row per batch (phase ``"solve"``) and its per-iteration ``traces``; a row
    lists the inner loss of every sample of its batch, in order, in
    ``inner_objective_samples`` (NaN where the solve diverged; ``eval_n`` values), so every
    trial of the sweep lists the same samples at the same places.
    """
    if meta.checkpoint is None:
        raise ValueError("a solve sweep needs a checkpoint (SweepMeta.checkpoint)")
    state = read_checkpoint(meta.checkpoint)
    model_keys = ("task", "model_size", "latent_dim", "supervised", "noise_sigma", "eps")
    # Whatever the checkpoint was trained by, the solve sweep runs the task's JIIO inner solve.
    cfg = task_cfg.replace(mode="jiio", **{k: state["config"][k] for k in model_keys if k in state["config"]})
    trainer = make_trainer(cfg, data)
    trainer.load_state_dict(state)
    for m in trainer.modules.values():
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)
    quality_name = "attack_acc" if cfg.task == "adversarial" else "recon_psnr"
    # the corruptions of the task's own evaluation (the same for every trial of the sweep)
    gen = trainer._eval_generator() if cfg.task != "adversarial" else None
    rows, traces, objective, seconds, diverged, converged, quality = [], [], [], 0.0, [], [], []
    eval_n = 0
    for i, (x, y) in enumerate(trainer.eval_batches("test")):
        _sync(trainer.device)
        t0 = time.perf_counter()
        with torch.no_grad():
            res = _solve_batch(trainer, x, y, gen)
        _sync(trainer.device)
        solve_s = time.perf_counter() - t0
        seconds += solve_s
        with torch.no_grad():
            quality.append(_quality(trainer, res, x, y))
        ok = ~res.diverged
        objective.append(float(res.objective[ok].mean()) if bool(ok.any()) else float("inf"))
        eval_n += int(ok.numel())
        diverged.append(float(res.diverged.float().mean()))
        converged.append(float(res.converged.float().mean()))
        rows.append(
            {
                "trial_id": trial_id,
                "step": i + 1,
                "epoch": 0,
                "phase": "solve",
                "loss": objective[-1],
                "solver_iterations": float(res.iterations),
                "solver_converged": converged[-1],
                "solver_diverged": diverged[-1],
                "solver_residual": float(res.residual[ok].mean()) if bool(ok.any()) else float("inf"),
                "solve_s": solve_s,
                quality_name: quality[-1],
                # every sample of the batch in order (NaN where the solve diverged), so the
                # analysis can pair trials sample by sample; eval_n: the list's length
                "inner_objective_samples": [
                    float(v) if good else math.nan
                    for v, good in zip(res.objective.tolist(), ok.tolist(), strict=True)
                ],
                "eval_n": int(ok.numel()),
            }
        )
        means = mean_trace(res)
        traces.extend(
            {"trial_id": trial_id, "step": i + 1, "iteration": j + 1, **{k: v[j] for k, v in means.items()}}
            for j in range(res.iterations)
        )
    n = len(objective)
    if n == 0:
        raise ValueError("the test split gave no batch to solve (check eval_batches and the dataset limits)")
    assert_driver(store, meta.name, meta.extra.get("driver_token"))  # not an orphan of a dead driver
    store.write("steps", meta.name, layout.epoch_key(trial_id, 0), rows)
    store.write("traces", meta.name, layout.epoch_key(trial_id, 0), traces)
    metrics = {
        "inner_objective": sum(objective) / n,
        "solve_s": seconds,
        "solver_diverged": sum(diverged) / n,
        "solver_converged": sum(converged) / n,
        quality_name: sum(quality) / n,
        "eval_n": eval_n,
    }
    # more than half diverged, or a whole batch did (its objective is inf: nothing to rank)
    bad = metrics["solver_diverged"] > 0.5 or not math.isfinite(metrics["inner_objective"])
    status = "diverged" if bad else "completed"
    return metrics, status
