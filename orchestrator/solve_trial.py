"""Trials that tune the inner solve alone: JIIO on a fixed trained model, no training.

Each trial loads the same checkpoint (a ``Trainer.state_dict`` saved with ``torch.save``),
runs the inner problem with its own solver settings on held-out batches (adversarial:
the JIIO attack on the eps-ball; generative / inverse: latent inference), and reports the
final inner objective and the wall time: the two objectives of a multi-objective sweep.
:func:`ensure_checkpoint` trains a small model once, in the driver, when none is given.
"""

from __future__ import annotations

import io
import time
from typing import Any

import torch
import torch.nn.functional as F

from jiio_core import jiio_solve, l2_ball
from orchestrator.data import DataConfig, load_dataset
from orchestrator.results import ResultStore
from orchestrator.tasks import TaskConfig

__all__ = ["ensure_checkpoint", "load_bytes", "pareto_front", "run_solve"]


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


def ensure_checkpoint(
    path: str | None, storage: str, name: str, fixed: dict[str, Any], data: dict[str, Any]
) -> str:
    """``path`` if given, else train a small model once and store it under ``<storage>/models/``."""
    if path:
        load_bytes(path)  # fail early, with the message above, if it is missing
        return path
    import pyarrow.fs as pafs

    from orchestrator.trainable import task_trainer

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
    trainer = task_trainer(cfg, load_dataset(DataConfig(**data)))
    trainer.fit()
    buf = io.BytesIO()
    torch.save(trainer.state_dict(), buf)
    store.put(target, buf.getvalue())
    return uri


def run_solve(
    task_cfg: TaskConfig, data, meta, store: ResultStore, trial_id: str
) -> tuple[dict[str, Any], str]:
    """Inner solves with ``task_cfg.jiio`` on the checkpoint's model; metrics and status."""
    from orchestrator.trainable import task_trainer

    assert meta.checkpoint is not None, "a solve sweep needs a checkpoint"
    state = torch.load(io.BytesIO(load_bytes(meta.checkpoint)), map_location="cpu", weights_only=True)
    model_keys = ("task", "model_size", "latent_dim", "supervised", "noise_sigma", "eps")
    cfg = task_cfg.replace(**{k: state["config"][k] for k in model_keys if k in state["config"]})
    trainer = task_trainer(cfg, data)
    trainer.load_state_dict(state)
    cell, head = trainer.modules["cell"].eval(), trainer.modules["head"].eval()
    for p in [*cell.parameters(), *head.parameters()]:
        p.requires_grad_(False)
    rows, traces, objective, seconds, diverged, converged, quality = [], [], [], 0.0, [], [], []
    for i, (x, y) in enumerate(trainer.eval_batches("test")):
        if cfg.task == "adversarial":
            loss = lambda z, y=y: -F.cross_entropy(head(z), y, reduction="none")  # noqa: E731
            x0, project = x, l2_ball(x, cfg.eps)
        else:
            loss = lambda z, y=y: (head(z) - y).pow(2).flatten(1).sum(1)  # noqa: E731
            x0, project = torch.zeros(x.shape[0], cfg.latent_dim, device=x.device), None
            y = x
        t0 = time.perf_counter()
        with torch.no_grad():
            res = jiio_solve(cell, loss, x0, config=cfg.jiio, project=project)
        seconds += time.perf_counter() - t0
        ok = ~res.diverged
        objective.append(float(res.objective[ok].mean()) if bool(ok.any()) else float("inf"))
        diverged.append(float(res.diverged.float().mean()))
        converged.append(float(res.converged.float().mean()))
        if cfg.task == "adversarial":
            with torch.no_grad():
                quality.append(float((head(res.z).argmax(1) == y).float().mean()))
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
                "solve_s": time.perf_counter() - t0,
            }
        )
        means = {k: t.mean(dim=1).tolist() for k, t in res.trace.items()}
        traces.extend(
            {"trial_id": trial_id, "step": i + 1, "iteration": j + 1, **{k: v[j] for k, v in means.items()}}
            for j in range(res.iterations)
        )
    store.write("steps", meta.name, f"{trial_id}-e0000", rows)
    store.write("traces", meta.name, f"{trial_id}-e0000", traces)
    n = len(objective)
    metrics = {
        "inner_objective": sum(objective) / n,
        "solve_s": seconds,
        "solver_diverged": sum(diverged) / n,
        "solver_converged": sum(converged) / n,
    }
    if quality:
        metrics["attack_acc"] = sum(quality) / n
    status = "diverged" if metrics["solver_diverged"] > 0.5 else "completed"
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
