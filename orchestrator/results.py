"""Parquet results of sweeps: trials, steps, traces, and trial checkpoints, on any filesystem.

Layout under the storage root (a local directory, ``s3://...`` or ``gs://...``), hive-
partitioned by sweep name::

    trials/sweep=NAME/<trial_id>.parquet            one row per trial (its final state)
    steps/sweep=NAME/<trial_id>-e<epoch>.parquet    the step rows of one epoch of one trial
    traces/sweep=NAME/<trial_id>-e<epoch>.parquet   solver traces of that epoch
    checkpoints/sweep=NAME/<trial_id>.pt            latest checkpoint of an unfinished trial
    pending/sweep=NAME/<trial_id>.json              searched parameters of a started trial
    pareto/sweep=NAME/front.parquet                 multi-objective sweeps: the non-dominated trials
    meta/sweep=NAME/sweep.json                      objectives, search space, fixed settings

Every file is named by its key, so writing the same key again *replaces* it: a retried,
resumed or duplicated report can never duplicate a row, and a crash loses at most the
epoch in progress, which is recomputed from the checkpoint and written under the same key.
Files are written atomically: on a local filesystem to a temporary name, then renamed; on
object stores a single PUT is atomic by itself. Schemas are explicit: a column that is
``None`` everywhere still gets its declared type, never Arrow's ``null`` type.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from collections.abc import Iterable
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

__all__ = ["KEYS", "TABLES", "ResultStore", "arrow_schema"]

TABLES = ("trials", "steps", "traces", "pareto")
KEYS = {
    "trials": ["trial_id"],
    "steps": ["trial_id", "step", "phase"],
    "traces": ["trial_id", "step", "iteration"],
    "pareto": ["trial_id"],
}
# Declared types of columns that can be None in every row of a file (optional settings).
_DECLARED: dict[str, pa.DataType] = {
    "alpha_x_switch_iter": pa.int64(),
    "alpha_x_after": pa.float64(),
    "max_steps_per_epoch": pa.int64(),
    "eval_batches": pa.int64(),
    "error": pa.string(),
    "git_sha": pa.string(),
    "data_root": pa.string(),
}


def _arrow_type(name: str, values: list[Any]) -> pa.DataType:
    present = [v for v in values if v is not None]
    if not present:
        return _DECLARED.get(name, pa.float64())
    if all(isinstance(v, bool) for v in present):
        return pa.bool_()
    if all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return _DECLARED.get(name, pa.int64())
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pa.float64()
    if all(isinstance(v, (list, tuple)) for v in present):
        return pa.list_(pa.float64())
    return pa.string()


def arrow_schema(rows: list[dict[str, Any]]) -> pa.Schema:
    """An explicit schema for ``rows`` (column order: first appearance)."""
    names: list[str] = []
    for row in rows:
        names.extend(k for k in row if k not in names)
    return pa.schema([pa.field(n, _arrow_type(n, [r.get(n) for r in rows])) for n in names])


def _clean(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [float(v) for v in value]
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    return str(value)


class ResultStore:
    """Reads and writes the sweep tables under one storage root.

    Example:
        >>> import tempfile
        >>> store = ResultStore(tempfile.mkdtemp())
        >>> store.write("trials", "demo", "t1", [{"trial_id": "t1", "status": "completed", "acc": 0.9}])
        >>> store.read("trials", "demo")[["trial_id", "status", "acc"]].values.tolist()
        [['t1', 'completed', 0.9]]
    """

    def __init__(self, root: str) -> None:
        if not root:
            raise ValueError("storage root must be a directory path or an s3:// / gs:// URI")
        self.root = root
        if "://" in root:
            self.fs, self.base = pafs.FileSystem.from_uri(root)
            self.local = isinstance(self.fs, pafs.LocalFileSystem)
        else:
            self.fs, self.base, self.local = pafs.LocalFileSystem(), os.path.abspath(root), True
        self.base = self.base.rstrip("/")

    def _dir(self, table: str, sweep: str) -> str:
        if table not in (*TABLES, "checkpoints", "pending"):
            raise ValueError(f"table must be one of {(*TABLES, 'checkpoints', 'pending')}, got {table!r}")
        if not sweep or "/" in sweep or sweep.startswith("."):
            raise ValueError(f"sweep name must be a non-empty name without '/', got {sweep!r}")
        return f"{self.base}/{table}/sweep={sweep}"

    def put(self, path: str, data: bytes) -> None:
        """Write ``data`` to ``path`` (under this store's filesystem) atomically."""
        directory = path.rsplit("/", 1)[0]
        self.fs.create_dir(directory, recursive=True)
        target = f"{directory}/.tmp-{uuid.uuid4().hex}" if self.local else path
        with self.fs.open_output_stream(target) as out:
            out.write(data)
        if self.local:
            self.fs.move(target, path)  # atomic rename on a local filesystem

    def write(self, table: str, sweep: str, key: str, rows: Iterable[dict[str, Any]]) -> None:
        """Write ``rows`` as the file ``key`` of ``table`` (replacing any earlier one)."""
        rows = [{k: _clean(v) for k, v in r.items()} for r in rows]
        if not rows:
            return
        t = pa.Table.from_pylist(rows, schema=arrow_schema(rows))
        buf = io.BytesIO()
        pq.write_table(t, buf)
        self.put(f"{self._dir(table, sweep)}/{key}.parquet", buf.getvalue())

    def keys(self, table: str, sweep: str) -> list[str]:
        """The file keys present in ``table`` for ``sweep``."""
        sel = pafs.FileSelector(self._dir(table, sweep), allow_not_found=True)
        names = [i.base_name for i in self.fs.get_file_info(sel) if i.type == pafs.FileType.File]
        ext = {"checkpoints": ".pt", "pending": ".json"}.get(table, ".parquet")
        return sorted(n[: -len(ext)] for n in names if n.endswith(ext) and not n.startswith("."))

    def sweeps(self, table: str = "trials") -> list[str]:
        sel = pafs.FileSelector(f"{self.base}/{table}", allow_not_found=True)
        infos = self.fs.get_file_info(sel)
        return sorted(
            i.base_name[6:]
            for i in infos
            if i.type == pafs.FileType.Directory and i.base_name.startswith("sweep=")
        )

    def read(self, table: str, sweep: str | None = None) -> pd.DataFrame:
        """One DataFrame of ``table`` (one sweep, or all), with a ``sweep`` column, deduplicated."""
        frames = []
        for name in [sweep] if sweep is not None else self.sweeps(table):
            directory = self._dir(table, name)
            for key in self.keys(table, name):
                t = pq.read_table(f"{directory}/{key}.parquet", filesystem=self.fs)
                frames.append(t.append_column("sweep", pa.array([name] * t.num_rows, pa.string())))
        if not frames:
            return pd.DataFrame(columns=[*KEYS[table], "sweep"])
        table_ = pa.concat_tables(frames, promote_options="permissive")
        df = table_.to_pandas()
        return df.drop_duplicates(subset=["sweep", *KEYS[table]], keep="last").reset_index(drop=True)

    # --- checkpoints --------------------------------------------------------------------
    def save_checkpoint(self, sweep: str, trial_id: str, data: bytes) -> None:
        self.put(f"{self._dir('checkpoints', sweep)}/{trial_id}.pt", data)

    def load_checkpoint(self, sweep: str, trial_id: str) -> bytes | None:
        path = f"{self._dir('checkpoints', sweep)}/{trial_id}.pt"
        if self.fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with self.fs.open_input_stream(path) as f:
            return f.read()

    def delete_checkpoint(self, sweep: str, trial_id: str) -> None:
        path = f"{self._dir('checkpoints', sweep)}/{trial_id}.pt"
        if self.fs.get_file_info(path).type == pafs.FileType.File:
            self.fs.delete_file(path)

    # --- pending trials: started, not finished (their parameters, to re-enqueue on resume) ----
    def write_pending(self, sweep: str, trial_id: str, params: dict[str, Any]) -> None:
        self.put(f"{self._dir('pending', sweep)}/{trial_id}.json", json.dumps(params).encode())

    def pending(self, sweep: str) -> dict[str, dict[str, Any]]:
        out = {}
        for key in self.keys("pending", sweep):
            with self.fs.open_input_stream(f"{self._dir('pending', sweep)}/{key}.json") as f:
                out[key] = json.loads(f.read().decode())
        return out

    def meta(self, sweep: str) -> dict[str, Any] | None:
        """The sweep's ``meta/sweep=NAME/sweep.json`` (objectives, space, paper trial), if any."""
        path = f"{self.base}/meta/sweep={sweep}/sweep.json"
        if self.fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with self.fs.open_input_stream(path) as f:
            return json.loads(f.read().decode())

    def delete_pending(self, sweep: str, trial_id: str) -> None:
        path = f"{self._dir('pending', sweep)}/{trial_id}.json"
        if self.fs.get_file_info(path).type == pafs.FileType.File:
            self.fs.delete_file(path)
