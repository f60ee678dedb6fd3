"""Every path under a sweep storage root, named in one place.

Why: the layout is a contract between the driver, the trials (on other machines) and the
analysis, and it outlives the code that wrote it (a resumed sweep reads what an earlier
version wrote). Spelling a path in one module and re-parsing it in another let the two
drift apart; here each path has one function, and every other module asks it.

The layout under a root ``BASE`` (a local directory or the path part of an ``s3://`` /
``gs://`` URI), hive-partitioned by sweep name::

    trials/sweep=NAME/<trial_id>.parquet            one row per trial (its final state)
    steps/sweep=NAME/<trial_id>-e<epoch>.parquet    the step rows of one epoch of a running trial
    steps/sweep=NAME/<trial_id>.parquet             ... of a finished trial, compacted
    traces/sweep=NAME/<trial_id>-e<epoch>.parquet   solver traces, per epoch, then compacted
    pareto/sweep=NAME/front.parquet                 multi-objective sweeps: the non-dominated trials
    checkpoints/sweep=NAME/<trial_id>.pt            latest checkpoint of an unfinished trial
    pending/sweep=NAME/<trial_id>.json              record of every started trial
    pending/sweep=NAME/<trial_id>.result            a data-parallel trial's result, rank 0 -> driver
    locks/sweep=NAME/driver.json                    the driver running the sweep (host, pid, heartbeat)
    locks/sweep=NAME/shared-<token>                 marker: every node must see local storage
    meta/sweep=NAME/sweep.json                      objectives, search space, fixed settings
    meta/sweep=NAME/confirm.json                    what ``jiio confirm`` confirmed
    corrupt/<relative path>.<ms>                    an unreadable file, moved aside ...
    corrupt/<relative path>.<ms>.why.json           ... with the reason
    models/<name>.pt                                the fixed model of a solve sweep
    baselines/<name>.json                           the solver sweep's baseline reference
    analysis/<name>/...                             the closing analysis of a sweep on object storage
    ray/                                            Ray Tune's own experiment state
    .tmp-<hex>                                      a local atomic write in progress (any directory)

Example:
    >>> table_file("/r", "steps", "s", epoch_key("t1", 3))
    '/r/steps/sweep=s/t1-e0003.parquet'
    >>> parse_table_file("t1-e0003.parquet"), parse_table_file("t1.parquet")
    (('t1', 3), ('t1', None))
"""

from __future__ import annotations

import re

__all__ = [
    "AREAS",
    "EXTENSIONS",
    "SWEEP_PREFIX",
    "TABLES",
    "TMP_PREFIX",
    "analysis_dir",
    "area_dir",
    "baseline_file",
    "checkpoint_file",
    "corrupt_file",
    "dp_result_file",
    "epoch_key",
    "epoch_prefix",
    "extension",
    "is_epoch_key",
    "is_uri",
    "lock_dir",
    "lock_file",
    "meta_file",
    "model_file",
    "parse_table_file",
    "ray_dir",
    "record_file",
    "relative",
    "shared_marker",
    "sweep_dir",
    "sweep_of_dir",
    "sweep_of_path",
    "table_file",
    "tmp_file",
    "trial_of_key",
    "validate_sweep",
    "why_file",
]

TABLES = ("trials", "steps", "traces", "pareto")
"""The Parquet tables (``<table>/sweep=NAME/<key>.parquet``)."""
AREAS = (*TABLES, "checkpoints", "pending")
"""Per-sweep directories whose files are named by a key (:meth:`ResultStore.keys`)."""
SWEEP_PREFIX = "sweep="
TMP_PREFIX = ".tmp-"
EXTENSIONS = {"checkpoints": ".pt", "pending": ".json"}  # the tables: ".parquet"
_TABLE_FILE = re.compile(r"^(?P<tid>.+?)(?:-e(?P<epoch>\d+))?\.parquet$")


def is_uri(root: str) -> bool:
    """Whether a storage root is a URI (``s3://``, ``gs://``, ...) rather than a local path."""
    return "://" in root


def validate_sweep(sweep: str) -> str:
    """``sweep`` if it can name a directory; ValueError otherwise."""
    if not sweep or "/" in sweep or sweep.startswith("."):
        raise ValueError(f"sweep name must be a non-empty name without '/', got {sweep!r}")
    return sweep


def area_dir(base: str, area: str) -> str:
    """``BASE/<area>``: the parent of every sweep's directory of that area (a table, ...)."""
    return f"{base}/{area}"


def sweep_dir(base: str, area: str, sweep: str) -> str:
    """``BASE/<area>/sweep=NAME`` for a table, ``checkpoints`` or ``pending``."""
    if area not in AREAS:
        raise ValueError(f"table must be one of {AREAS}, got {area!r}")
    return f"{base}/{area}/{SWEEP_PREFIX}{validate_sweep(sweep)}"


def sweep_of_dir(name: str) -> str | None:
    """The sweep of a directory name ``sweep=NAME``; None for any other name."""
    return name[len(SWEEP_PREFIX) :] if name.startswith(SWEEP_PREFIX) else None


def sweep_of_path(path: str) -> str | None:
    """The sweep a path belongs to: the name of its first ``sweep=NAME`` component, or None.

    Example:
        >>> sweep_of_path("results/trials/sweep=alpha/3f2a.parquet")
        'alpha'
        >>> sweep_of_path("results/models/m.pt") is None
        True
    """
    for part in path.split("/"):
        sweep = sweep_of_dir(part)
        if sweep is not None:
            return sweep
    return None


def extension(area: str) -> str:
    """The file extension of an area's keyed files."""
    return EXTENSIONS.get(area, ".parquet")


def table_file(base: str, table: str, sweep: str, key: str) -> str:
    """The Parquet file ``key`` of ``table`` for ``sweep``."""
    return f"{sweep_dir(base, table, sweep)}/{key}.parquet"


def epoch_key(trial_id: str, epoch: int) -> str:
    """The key of one epoch's steps/traces file of a running trial: ``<trial_id>-e<epoch:04d>``."""
    return f"{trial_id}-e{epoch:04d}"


def epoch_prefix(trial_id: str) -> str:
    """What every epoch key of ``trial_id`` starts with."""
    return f"{trial_id}-e"


def trial_of_key(key: str) -> str:
    """The trial id of a steps/traces key (an epoch key or a compacted one)."""
    return key.rsplit("-e", 1)[0]


def is_epoch_key(key: str) -> bool:
    """Whether a steps/traces key is one epoch's file (not yet compacted)."""
    return "-e" in key


def parse_table_file(name: str) -> tuple[str, int | None] | None:
    """``(trial_id, epoch)`` of a table file name (``epoch`` None when compacted); None when
    the name is not a table file."""
    m = _TABLE_FILE.match(name)
    if m is None:
        return None
    return m["tid"], None if m["epoch"] is None else int(m["epoch"])


def checkpoint_file(base: str, sweep: str, trial_id: str) -> str:
    return f"{sweep_dir(base, 'checkpoints', sweep)}/{trial_id}.pt"


def record_file(base: str, sweep: str, trial_id: str) -> str:
    return f"{sweep_dir(base, 'pending', sweep)}/{trial_id}.json"


def dp_result_file(base: str, sweep: str, trial_id: str) -> str:
    """Where rank 0 of a data-parallel trial leaves its metrics for the trial's actor."""
    return f"{sweep_dir(base, 'pending', sweep)}/{trial_id}.result"


def lock_dir(base: str, sweep: str) -> str:
    """``locks/sweep=NAME`` (the name is not checked here: the driver checked it)."""
    return f"{base}/locks/{SWEEP_PREFIX}{sweep}"


def lock_file(base: str, sweep: str) -> str:
    """The driver lock of ``sweep``."""
    return f"{lock_dir(base, sweep)}/driver.json"


def shared_marker(base: str, sweep: str, token: str) -> str:
    """The marker file that every node must see when the storage is a local directory."""
    return f"{lock_dir(base, sweep)}/shared-{token}"


def meta_file(base: str, sweep: str, name: str = "sweep.json") -> str:
    """``meta/sweep=NAME/<name>``: ``sweep.json`` (the sweep's identity) or ``confirm.json``.
    The sweep name is not checked: a name that cannot exist is simply not found."""
    return f"{base}/meta/{SWEEP_PREFIX}{sweep}/{name}"


def model_file(base: str, name: str) -> str:
    return f"{base}/models/{name}.pt"


def baseline_file(base: str, name: str) -> str:
    return f"{base}/baselines/{name}.json"


def analysis_dir(base: str, name: str) -> str:
    return f"{base}/analysis/{name}"


def ray_dir(base: str) -> str:
    return f"{base}/ray"


def relative(base: str, path: str) -> str:
    """``path`` relative to ``base`` (unchanged when not under it)."""
    return path[len(base) + 1 :] if path.startswith(base + "/") else path


def corrupt_file(base: str, path: str, ms: int) -> str:
    """Where an unreadable ``path`` is moved: its path under ``corrupt/``, suffixed with the time."""
    rel = path[len(base) + 1 :] if path.startswith(base + "/") else path.rsplit("/", 1)[-1]
    return f"{base}/corrupt/{rel}.{ms}"


def tmp_file(directory: str, token: str) -> str:
    """A local atomic write's temporary file in ``directory``."""
    return f"{directory}/{TMP_PREFIX}{token}"


def why_file(moved: str) -> str:
    """The note beside a file moved to ``corrupt/``: where it came from and why."""
    return f"{moved}.why.json"
