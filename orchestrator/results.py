"""Parquet results of sweeps: trials, steps, traces, and trial checkpoints, on any filesystem.

Layout under the storage root (a local directory, ``s3://...`` or ``gs://...``), hive-
partitioned by sweep name::

    trials/sweep=NAME/<trial_id>.parquet            one row per trial (its final state)
    steps/sweep=NAME/<trial_id>-e<epoch>.parquet    the step rows of one epoch of a running trial
    steps/sweep=NAME/<trial_id>.parquet             ... of a finished trial, compacted
    traces/sweep=NAME/<trial_id>-e<epoch>.parquet   solver traces, per epoch, then compacted
    checkpoints/sweep=NAME/<trial_id>.pt            latest checkpoint of an unfinished trial
    pending/sweep=NAME/<trial_id>.json              record of every started trial: parameters,
                                                    attempts, wall time, errors, state
    locks/sweep=NAME/driver.json                    the driver running the sweep (host, pid)
    corrupt/...                                     unreadable files, moved aside with a reason
    pareto/sweep=NAME/front.parquet                 multi-objective sweeps: the non-dominated trials
    meta/sweep=NAME/sweep.json                      objectives, search space, fixed settings

Every file is named by its key, so writing the same key again *replaces* it: a retried,
resumed or duplicated report can never duplicate a row, and a crash loses at most the
epoch in progress, which is recomputed from the checkpoint and written under the same key.
Files are written atomically and durably: on a local filesystem to a temporary name,
fsync'ed, then renamed; on object stores a single PUT is atomic by itself. An unreadable
file never blocks a read: it is skipped with a warning or moved to ``corrupt/``.
Schemas are explicit: a column that is
``None`` everywhere still gets its declared type, never Arrow's ``null`` type.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
import uuid
from collections.abc import Iterable
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from orchestrator.records import TrialRecords

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
    "alpha_x_after": pa.float64(),  # results of earlier versions
    "alpha_x_drop": pa.float64(),
    "error_history": pa.string(),
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


def _as_text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, bool)) else str(value)


def _untyped_nulls(t: pa.Table) -> pa.Table:
    """Columns that are None in every row of a file carry no type information: read them as
    Arrow's null type, so another file's values of any type decide the column's type."""
    for i, f in enumerate(t.schema):
        if t.num_rows and t.column(i).null_count == t.num_rows and f.type != pa.null():
            t = t.set_column(i, pa.field(f.name, pa.null()), pa.nulls(t.num_rows))
    return t


def _clean(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [float(v) for v in value]
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    return str(value)


class ResultStore(TrialRecords):
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
        """Write ``data`` to ``path`` (under this store's filesystem) atomically and durably.

        Local: a temporary file in the same directory, flushed and fsync'ed, renamed over
        ``path``, then the directory fsync'ed, so a crash leaves the old file or the new
        one, never a torn one. Object stores: one PUT, atomic by itself.
        """
        directory = path.rsplit("/", 1)[0]
        self.fs.create_dir(directory, recursive=True)
        if not self.local:
            with self.fs.open_output_stream(path) as out:
                out.write(data)
            return
        tmp = f"{directory}/.tmp-{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def clean_tmp(self) -> int:
        """Remove leftover ``.tmp-*`` files (of writers killed mid-write); how many."""
        if not self.local or not os.path.isdir(self.base):
            return 0
        n = 0
        for dirpath, _, files in os.walk(self.base):
            for name in files:
                if name.startswith(".tmp-"):
                    try:
                        os.remove(os.path.join(dirpath, name))
                        n += 1
                    except FileNotFoundError:
                        pass
        return n

    def quarantine(self, path: str, reason: str) -> str:
        """Move an unreadable file out of the tables to ``corrupt/`` (kept for inspection)."""
        rel = path[len(self.base) + 1 :] if path.startswith(self.base + "/") else path.rsplit("/", 1)[-1]
        target = f"{self.base}/corrupt/{rel}.{int(time.time() * 1000)}"
        self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        try:
            self.fs.move(path, target)
        except OSError:  # object stores without a rename: copy, then delete
            self.fs.copy_file(path, target)
            self.fs.delete_file(path)
        note = json.dumps({"moved_from": path, "reason": reason, "at": time.time()})
        self.put(target + ".why.json", note.encode())
        return target

    def write(self, table: str, sweep: str, key: str, rows: Iterable[dict[str, Any]]) -> None:
        """Write ``rows`` as the file ``key`` of ``table`` (replacing any earlier one)."""
        rows = [{k: _clean(v) for k, v in r.items()} for r in rows]
        if not rows:
            return
        schema = arrow_schema(rows)
        for f in schema:  # a column of mixed kinds is typed string: write its values as strings
            if f.type == pa.string():
                for r in rows:
                    if r.get(f.name) is not None and not isinstance(r[f.name], str):
                        r[f.name] = _as_text(r[f.name])
        t = pa.Table.from_pylist(rows, schema=schema)
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

    def read(
        self, table: str, sweep: str | None = None, on_corrupt: str = "skip", columns: list[str] | None = None
    ) -> pd.DataFrame:
        """One DataFrame of ``table`` (one sweep, or all), with a ``sweep`` column, deduplicated.

        A file that cannot be read never blocks the read: ``on_corrupt="skip"`` leaves it in
        place with a warning (analysis), ``"quarantine"`` moves it to ``corrupt/`` (the
        sweep driver, which then recomputes its trial).
        """
        frames = []
        for name in [sweep] if sweep is not None else self.sweeps(table):
            directory = self._dir(table, name)
            for key in self.keys(table, name):
                path = f"{directory}/{key}.parquet"
                try:
                    with self.fs.open_input_file(path) as f:  # one small file: no dataset machinery
                        t = pq.ParquetFile(f).read(columns=columns)
                except (pa.ArrowException, OSError) as exc:
                    self._report_corrupt(path, exc, on_corrupt)
                    continue
                t = _untyped_nulls(t)
                frames.append(t.append_column("sweep", pa.array([name] * t.num_rows, pa.string())))
        if not frames:
            return pd.DataFrame(columns=[*KEYS[table], "sweep"])
        table_ = pa.concat_tables(frames, promote_options="permissive")
        df = table_.to_pandas()
        return df.drop_duplicates(subset=["sweep", *KEYS[table]], keep="last").reset_index(drop=True)

    def compact(self, table: str, sweep: str, trial_id: str) -> int:
        """Merge a finished trial's per-epoch files of ``table`` into one file per trial
        (``<trial_id>.parquet``), so the file count grows with trials, not trials x epochs.

        Crash-safe: the merged file (rows of an existing merged file, then of the epoch
        files, which win on a key) is written atomically first; the epoch files are deleted
        after, and a merge interrupted between the two is finished by running it again (a
        reader meanwhile deduplicates on the table's key). Returns how many epoch files
        were merged.

        Example:
            >>> import tempfile
            >>> store = ResultStore(tempfile.mkdtemp())
            >>> for e in (1, 2):
            ...     store.write("steps", "s", f"t-e000{e}", [{"trial_id": "t", "step": e, "phase": "train"}])
            >>> store.compact("steps", "s", "t"), store.keys("steps", "s")
            (2, ['t'])
            >>> store.read("steps", "s")["step"].tolist()
            [1, 2]
        """
        epochs = [k for k in self.keys(table, sweep) if k.startswith(f"{trial_id}-e")]
        if not epochs:
            return 0
        directory = self._dir(table, sweep)
        frames = []
        for key in [trial_id, *epochs]:
            path = f"{directory}/{key}.parquet"
            if key == trial_id and self.fs.get_file_info(path).type != pafs.FileType.File:
                continue
            try:
                with self.fs.open_input_file(path) as f:
                    frames.append(_untyped_nulls(pq.ParquetFile(f).read()))
            except (pa.ArrowException, OSError) as exc:
                self._report_corrupt(path, exc, "quarantine")
        if frames:
            merged = pa.concat_tables(frames, promote_options="permissive")
            keys = merged.select(KEYS[table]).to_pandas()  # dedupe on the key only: Arrow types stay
            keep = keys.drop_duplicates(keep="last").sort_values(KEYS[table][1:], kind="stable").index
            t = merged.take(pa.array(keep.to_numpy()))
            buf = io.BytesIO()
            pq.write_table(t, buf)
            self.put(f"{directory}/{trial_id}.parquet", buf.getvalue())
        for key in epochs:
            with contextlib.suppress(FileNotFoundError, OSError):
                self.fs.delete_file(f"{directory}/{key}.parquet")
        return len(epochs)

    def _report_corrupt(self, path: str, exc: Exception, on_corrupt: str) -> None:
        if on_corrupt == "quarantine":
            where = self.quarantine(path, str(exc))
            print(f"warning: unreadable file {path} ({exc}); moved to {where}", file=sys.stderr)
        else:
            print(f"warning: skipping unreadable file {path} ({exc})", file=sys.stderr)

    def check(self, table: str, sweep: str) -> list[str]:
        """Quarantine the files of ``table`` whose Parquet footer cannot be read; their keys."""
        bad = []
        for key in self.keys(table, sweep):
            path = f"{self._dir(table, sweep)}/{key}.parquet"
            try:
                with self.fs.open_input_file(path) as f:
                    pq.read_metadata(f)
            except (pa.ArrowException, OSError) as exc:
                self._report_corrupt(path, exc, "quarantine")
                bad.append(key)
        return bad

    # --- checkpoints --------------------------------------------------------------------
    def checkpoint_path(self, sweep: str, trial_id: str) -> str:
        return f"{self._dir('checkpoints', sweep)}/{trial_id}.pt"

    def save_checkpoint(self, sweep: str, trial_id: str, data: bytes) -> None:
        self.put(self.checkpoint_path(sweep, trial_id), data)

    def load_checkpoint(self, sweep: str, trial_id: str) -> bytes | None:
        path = self.checkpoint_path(sweep, trial_id)
        if self.fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with self.fs.open_input_stream(path) as f:
            return f.read()

    def delete_checkpoint(self, sweep: str, trial_id: str) -> None:
        path = self.checkpoint_path(sweep, trial_id)
        if self.fs.get_file_info(path).type == pafs.FileType.File:
            self.fs.delete_file(path)

    def meta(self, sweep: str) -> dict[str, Any] | None:
        """The sweep's ``meta/sweep=NAME/sweep.json`` (objectives, space, paper trial), if any."""
        path = f"{self.base}/meta/sweep={sweep}/sweep.json"
        if self.fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with self.fs.open_input_stream(path) as f:
            return json.loads(f.read().decode())
