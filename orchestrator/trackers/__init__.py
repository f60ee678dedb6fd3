"""Opt-in experiment trackers for a running sweep: ``--log mlflow|tensorboard|wandb``.

One Ray Tune callback on the driver (:class:`TrackerCallback`) turns Tune's events into
tracker runs: one run per trial (named by its ``trial_id``, the same id as in the Parquet
rows, so a resumed trial continues its run), grouped by sweep; the trial's parameters when
it starts, its metrics at the end of every epoch (step = epoch), and at its end the
objective(s), ``eval_n`` and its status (``completed``, ``diverged``, ``pruned`` by ASHA,
``error``). The Parquet rows stay the record; trackers are a view of them.

Where it goes (offline by default):

* MLflow: experiment = the sweep's name, in ``--mlflow-uri`` or ``$MLFLOW_TRACKING_URI``,
  else a SQLite store at ``<storage>/mlflow.db`` (``./mlflow.db`` for object storage):
  ``mlflow ui --backend-store-uri sqlite:///<storage>/mlflow.db``; ``--mlflow-uri
  file:./mlruns`` for MLflow's file store (MLflow 3 keeps it only on request);
* TensorBoard: one directory per trial, ``<storage>/tensorboard/<sweep>/<trial_id>``
  (``./tensorboard/...`` for object storage): ``tensorboard --logdir <storage>/tensorboard``;
* Weights & Biases: project ``$WANDB_PROJECT`` (default ``jiio``), group = the sweep,
  offline (``$WANDB_MODE`` overrides) under ``<storage>/wandb``: ``wandb sync`` uploads it.

Nothing breaks or slows when a package is missing: the tracker is left out with one line
saying what to install. Tune's event loop never waits on a tracker: events go through a
FIFO queue to one background thread, drained when the experiment ends; a tracker that
fails is switched off with one line, and the sweep goes on.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from typing import Any

from orchestrator.trackers.backends import MLflowBackend, TensorBoardBackend, WandBBackend
from orchestrator.trackers.callback import TrackerCallback

__all__ = ["TRACKERS", "TrackerCallback", "make_callbacks", "missing"]

TRACKERS = ("mlflow", "tensorboard", "wandb")
_INSTALL = {"mlflow": "mlflow", "tensorboard": "tensorboard", "wandb": "wandb"}


def missing(name: str) -> str | None:
    """One line saying what to install for tracker ``name``, or None when it can run."""
    if name == "tensorboard":
        ok = (
            importlib.util.find_spec("tensorboard") is not None
            or importlib.util.find_spec("tensorboardX") is not None
        )
    else:
        ok = importlib.util.find_spec(name) is not None
    if ok:
        return None
    pkg = _INSTALL[name]
    return (
        f"--log {name}: the {pkg} package is not installed (pip install '{pkg}', or "
        f"pip install -e '.[{name}]'); not logging to {name}"
    )


def _local_root(storage: str) -> str:
    return os.path.abspath(storage) if "://" not in storage or storage.startswith("file://") else os.getcwd()


def make_callbacks(
    names: list[str] | tuple[str, ...],
    sweep: str,
    storage: str,
    metrics: tuple[str, ...],
    searched: tuple[str, ...] = (),
    mlflow_uri: str | None = None,
) -> list[TrackerCallback]:
    """The Tune callbacks for ``--log NAMES`` (an empty list when none can run); prints
    one line per tracker: where it logs, or what to install."""
    trackers: dict[str, Any] = {}
    root = _local_root(storage.removeprefix("file://"))
    for name in dict.fromkeys(names):
        why = missing(name)
        if why:
            print(why, file=sys.stderr)
            continue
        if name == "mlflow":
            uri = mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root}/mlflow.db"
            if uri.startswith("file:") or "://" not in uri:  # asked for by name: MLflow 3 wants an opt-in
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            trackers[name] = functools.partial(MLflowBackend, sweep, uri)
            where = f"MLflow experiment {sweep!r} in {uri} (mlflow ui --backend-store-uri {uri})"
        elif name == "tensorboard":
            trackers[name] = functools.partial(TensorBoardBackend, sweep, os.path.join(root, "tensorboard"))
            where = (
                f"TensorBoard, one run per trial: tensorboard --logdir {os.path.join(root, 'tensorboard')}"
            )
        else:
            trackers[name] = functools.partial(WandBBackend, sweep, os.path.join(root, "wandb"))
            mode = os.environ.get("WANDB_MODE", "offline")
            where = f"W&B group {sweep!r} ({mode}, {os.path.join(root, 'wandb')}; wandb sync uploads it)"
        print(f"--log {name}: {where}")
    if not trackers:
        return []
    return [TrackerCallback(trackers, metrics, searched, storage, sweep)]
