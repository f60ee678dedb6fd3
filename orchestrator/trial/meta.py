"""What every trial shares, whoever runs it: its identity, its objective values, provenance.

One owner per concern: this module knows how a trial is named (:func:`make_trial_id`),
what a diverged trial reports (:func:`worst_value`), how objectives are derived from a
task's metrics, and which versions and device produced a row. The trial runners
(:mod:`~orchestrator.trial.train`, :mod:`~orchestrator.trial.solve`,
:mod:`~orchestrator.trial.data_parallel`), the Ray entry point
(:mod:`~orchestrator.trial.trainable`) and the driver (:mod:`orchestrator.driver.sweep`)
all import it; it imports none of them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import socket
import subprocess
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

__all__ = [
    "PLACEMENT_KEYS",
    "PROVENANCE_KEYS",
    "SweepMeta",
    "derived_metrics",
    "device_name",
    "make_trial_id",
    "objective_values",
    "placement",
    "provenance",
    "versions",
    "worst_value",
]


@dataclass(frozen=True)
class SweepMeta:
    """What every trial of one sweep shares (passed to the trainable, not searched)."""

    name: str
    storage: str
    searched: tuple[str, ...]
    fixed: dict[str, Any]
    data: dict[str, Any]
    metrics: tuple[str, ...]
    modes: tuple[str, ...]
    kind: str = "train"  # "train": a training run; "solve": inner solves on a fixed checkpoint
    checkpoint: str | None = None  # kind "solve": storage key of the trained model
    extra: dict[str, Any] = field(default_factory=dict)


def make_trial_id(sweep: str, params: dict[str, Any], repeat: int = 0) -> str:
    """Deterministic id from the sweep name and the searched parameters (12 hex digits).

    ``repeat`` > 0 names a second (third, ...) trial of the same point, e.g. when a small
    discrete space has been exhausted: two live trials never share an id.

    Example:
        >>> a = make_trial_id("s", {"alpha_x": 0.5, "alpha_z": 0.8})
        >>> a == make_trial_id("s", {"alpha_z": 0.8, "alpha_x": 0.5}), len(a)
        (True, 12)
        >>> a == make_trial_id("s", {"alpha_x": 0.5, "alpha_z": 0.8}, repeat=1)
        False
    """
    body: dict[str, Any] = {"sweep": sweep, "params": params}
    if repeat:
        body["repeat"] = repeat
    blob = json.dumps(body, sort_keys=True, default=repr)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def worst_value(mode: str) -> float:
    """The objective value a diverged trial reports: the worst possible, as the searcher sees it.

    Example:
        >>> worst_value("max"), worst_value("min")
        (-1000000000.0, 1000000000.0)
    """
    return -1e9 if mode == "max" else 1e9


def objective_values(
    metrics: dict[str, Any], names: tuple[str, ...], modes: tuple[str, ...], bad: bool
) -> dict[str, float]:
    """The objectives as reported to Tune: each metric, or its worst value when missing,
    non-finite, or the trial diverged (``bad``).

    Example:
        >>> objective_values({"acc": 0.5}, ("acc",), ("max",), bad=False)
        {'acc': 0.5}
        >>> objective_values({"acc": float("nan")}, ("acc",), ("max",), bad=False)
        {'acc': -1000000000.0}
    """
    out = {}
    for name, mode in zip(names, modes, strict=True):
        v = metrics.get(name)
        ok = isinstance(v, (int, float)) and math.isfinite(v) and not bad
        out[name] = float(v) if ok else worst_value(mode)
    return out


def derived_metrics(task: str, metrics: dict[str, Any]) -> dict[str, float]:
    """Objectives computed from reported metrics: ``robust_acc`` = the worse of PGD and JIIO.

    Example:
        >>> derived_metrics("adversarial", {"pgd_acc": 0.4, "jiio_acc": 0.3})
        {'robust_acc': 0.3}
    """
    out = {}
    if task == "adversarial" and "pgd_acc" in metrics and "jiio_acc" in metrics:
        out["robust_acc"] = min(float(metrics["pgd_acc"]), float(metrics["jiio_acc"]))
    return out


@lru_cache(maxsize=1)
def _git_sha() -> str:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(
            ["git", "-C", here, "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict[str, str]:
    """torch, ray and project git versions, for provenance columns."""
    import ray
    import torch

    sha = os.environ.get("JIIO_GIT_SHA") or _git_sha()
    return {"torch_version": torch.__version__, "ray_version": ray.__version__, "git_sha": sha}


def device_name(cuda: bool | None = None) -> str:
    """The accelerator's name, else the CPU's."""
    import torch

    if (torch.cuda.is_available() if cuda is None else cuda) and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return platform.processor() or platform.machine() or "cpu"


PROVENANCE_KEYS = ("torch_version", "ray_version", "git_sha", "device", "host")
PLACEMENT_KEYS = ("held_cpus", "held_gpus", "node_type", "node_id", "cuda_device")


def placement(
    cuda: bool, cpus: float | None = None, gpus: float | None = None
) -> dict[str, float | str | None]:
    """Where a trial ran and what it held, for its row: the CPUs and GPU share Ray assigned
    it (``cpus``/``gpus`` override them, e.g. a data-parallel trial whose Ray Train
    workers hold the resources), the cluster's node type (``RAY_NODE_TYPE_NAME``, set by
    the autoscaler on the nodes it starts; ``head`` or None on a hand-started node), the
    Ray node id, and the CUDA device's name, or ``"cpu"`` when the trial used none.

    Outside a Ray task or actor the Ray fields are None.

    Example:
        >>> placement(cuda=False)["cuda_device"]
        'cpu'
    """
    import torch

    held: dict[str, float] = {}
    node_id = None
    labels: dict[str, str] = {}
    try:
        import ray

        if ray.is_initialized():
            ctx = ray.get_runtime_context()
            if ctx.worker.mode == ray.WORKER_MODE:  # a task or actor, not the driver
                held = {k: float(v) for k, v in ctx.get_assigned_resources().items()}
                node_id = ctx.get_node_id()
                labels = dict(ctx.get_node_labels() or {})
    except Exception:  # provenance never fails a trial
        pass
    node_type = os.environ.get("RAY_NODE_TYPE_NAME") or labels.get("ray.io/node-group") or None
    in_ray = node_id is not None
    return {
        "held_cpus": cpus if cpus is not None else (held.get("CPU", 0.0) if in_ray else None),
        "held_gpus": gpus if gpus is not None else (held.get("GPU", 0.0) if in_ray else None),
        "node_type": node_type,
        "node_id": node_id,
        "cuda_device": torch.cuda.get_device_name(torch.cuda.current_device()) if cuda else "cpu",
    }


def provenance(cuda: bool | None = None) -> dict[str, str]:
    """The columns every trials row carries, whatever its status: versions, device, host."""
    return {**versions(), "device": device_name(cuda), "host": socket.gethostname()}
