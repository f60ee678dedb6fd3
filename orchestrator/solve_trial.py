"""Trials that tune the inner solve alone: JIIO on a fixed trained model, no training.

Each trial loads the same checkpoint (a ``Trainer.state_dict`` saved with ``torch.save``),
runs the task's own inner problem with its own solver settings on held-out batches
(adversarial: the task's JIIO attack on the eps-ball; generative / inpainting / denoising:
the task's latent inference against its observation, i.e. the clean, masked or noisy
image), and reports the final inner objective and the wall time: the two objectives of a
multi-objective sweep.
:func:`ensure_checkpoint` trains a small model once, in the driver, when none is given.
"""

from __future__ import annotations

import io
import math
import os
import time
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from jiio_core import JIIOResult
from orchestrator.data import DataConfig, load_dataset
from orchestrator.lock import assert_driver
from orchestrator.results import ResultStore
from orchestrator.tasks import TaskConfig
from orchestrator.tasks.generative import psnr
from orchestrator.tasks.registry import make_trainer
from orchestrator.tasks.step_metrics import mean_trace

if TYPE_CHECKING:
    from orchestrator.trial_meta import SweepMeta

__all__ = ["ensure_checkpoint", "file_exists", "load_bytes", "pareto_front", "read_checkpoint", "run_solve"]


def file_exists(path: str) -> bool:
    """Whether a local path or an ``s3://`` / ``gs://`` URI names an existing file."""
    import pyarrow.fs as pafs

    if "://" not in path:
        return os.path.isfile(path)
    fs, p = pafs.FileSystem.from_uri(path)
    return fs.get_file_info(p).type == pafs.FileType.File


def load_bytes(path: str) -> bytes:
    """Read a file from a local path or an ``s3://`` / ``gs://`` URI."""
    import pyarrow.fs as pafs

    if "://" in path:
        fs, p = pafs.FileSystem.from_uri(path)
    else:
        fs, p = pafs.LocalFileSystem(), path
    if fs.get_file_info(p).type != pafs.FileType.File:
        raise FileNotFoundError(
            f"checkpoint {path!r} not found: pass a Trainer checkpoint saved with torch.save"
        )
    with fs.open_input_stream(p) as f:
        return f.read()


def read_checkpoint(path: str) -> Any:
    """``torch.load`` (CPU, weights only) of a local path or an ``s3://`` / ``gs://`` URI.
    Raises :class:`FileNotFoundError` when it is missing and :class:`ValueError` (one line)
    when it cannot be read as a checkpoint (unpickling, zip or EOF errors)."""
    data = load_bytes(path)
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # every failure here means "not a checkpoint"
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"cannot read checkpoint {path}: {first}") from None


def ensure_checkpoint(
    path: str | None, storage: str, name: str, fixed: dict[str, Any], data: dict[str, Any]
) -> str:
    """``path`` if given, else train a small model once and store it under ``<storage>/models/``.

    A given ``path`` that does not exist raises :class:`FileNotFoundError` now, in the
    driver, rather than in every trial. Without one, the model is trained once (adversarial:
    clean training; the other tasks: JIIO training) and stored as
    ``<storage>/models/<name>.pt``; a later call (a resumed or extended sweep) finds it there
    and returns the same URI without training again, so every trial sees the same model. A
    relative local ``storage`` gives an absolute path, valid whatever the trials' directory.
    """
    if path:
        load_bytes(path)  # fail early, with the message above, if it is missing
        # trials run in Ray's own working directories: a relative local path would miss
        return path if "://" in path else os.path.abspath(path)
    import pyarrow.fs as pafs

    store = ResultStore(storage)
    target = f"{store.base}/models/{name}.pt"
    uri = target if "://" not in storage else f"{storage.rstrip('/')}/models/{name}.pt"
    if store.fs.get_file_info(target).type == pafs.FileType.File:
        return uri  # trained by an earlier run of this sweep: every trial must see the same model
    train_mode = "clean" if fixed.get("task") == "adversarial" else "jiio"
    cfg = TaskConfig.from_flat({**fixed, "mode": train_mode, "device": "cpu"})
    print(
        f"training the fixed model for {name} ({cfg.task}, {train_mode}, {cfg.epochs} epochs) ...", flush=True
    )
    trainer = make_trainer(cfg, load_dataset(DataConfig(**data)))
    result = trainer.fit()
    if result.status != "completed":
        print(f"warning: training the fixed model for {name} ended {result.status}", flush=True)
    buf = io.BytesIO()
    torch.save(trainer.state_dict(), buf)
    store.put(target, buf.getvalue())
    return uri


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
    store.write("steps", meta.name, f"{trial_id}-e0000", rows)
    store.write("traces", meta.name, f"{trial_id}-e0000", traces)
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


def pareto_front(points: list[tuple[float, ...]]) -> list[bool]:
    """Which points are not dominated (all objectives minimised).

    Example:
        >>> pareto_front([(1, 5), (2, 2), (3, 3), (5, 1)])
        [True, True, False, True]
    """
    out = []
    for i, p in enumerate(points):
        dominated = any(
            all(a <= b for a, b in zip(q, p, strict=True)) and any(a < b for a, b in zip(q, p, strict=True))
            for j, q in enumerate(points)
            if j != i
        )
        out.append(not dominated)
    return out
