"""Where sweeps keep their results: one storage root, on a local disk or an object store.

Everything that knows a path under the root, or touches a filesystem, is in this package:

- :mod:`~orchestrator.storage.layout`: every path of the layout, and only that;
- :mod:`~orchestrator.storage.store`: :class:`ResultStore`, the Parquet tables (trials,
  steps, traces, pareto), atomic writes, reads that survive corrupt files, compaction,
  checkpoints and the sweep's side files;
- :mod:`~orchestrator.storage.records`: the record of every started trial;
- :mod:`~orchestrator.storage.schema`: the Arrow schemas of the rows;
- :mod:`~orchestrator.storage.lock`: one driver per sweep, and fencing of orphaned trials;
- :mod:`~orchestrator.storage.shared`: refusing a local directory that not every node sees;
- :mod:`~orchestrator.storage.files`: single files by path or URI (checkpoints, models).

Why one package: the layout is a contract between the driver, trials on other machines
and the analysis, so it is stated once; no module outside imports ``pyarrow.fs``.
"""

from orchestrator.storage import layout
from orchestrator.storage.files import (
    clean_stale_saves,
    file_exists,
    is_remote,
    load_bytes,
    read_checkpoint,
    save_checkpoint,
)
from orchestrator.storage.layout import TABLES
from orchestrator.storage.lock import OrphanedTrialError, SweepLock, SweepLockedError, assert_driver
from orchestrator.storage.records import TrialRecords
from orchestrator.storage.schema import KEYS, arrow_schema, declared_types, untyped_nulls
from orchestrator.storage.shared import StorageNotSharedError, assert_marker, check_shared, remove_marker
from orchestrator.storage.store import ResultStore

__all__ = [
    "KEYS",
    "TABLES",
    "OrphanedTrialError",
    "ResultStore",
    "StorageNotSharedError",
    "SweepLock",
    "SweepLockedError",
    "TrialRecords",
    "arrow_schema",
    "assert_driver",
    "assert_marker",
    "check_shared",
    "clean_stale_saves",
    "declared_types",
    "file_exists",
    "is_remote",
    "layout",
    "load_bytes",
    "read_checkpoint",
    "remove_marker",
    "save_checkpoint",
    "untyped_nulls",
]
