"""The sweep store: Parquet tables, trial records and checkpoints under one storage root.

The root is a local directory, ``s3://...`` or ``gs://...``; every path under it comes from
:mod:`orchestrator.storage.layout` (see there for the whole layout).

Every file is named by its key, so writing the same key again *replaces* it: a retried,
resumed or duplicated report can never duplicate a row, and a crash loses at most the
epoch in progress, which is recomputed from the checkpoint and written under the same key.
Files are written atomically and durably: on a local filesystem to a temporary name,
fsync'ed, then renamed; on object stores a single PUT is atomic by itself. An unreadable
file never blocks a read: it is skipped with a warning or moved to ``corrupt/``.
Schemas are explicit (:mod:`orchestrator.storage.schema`): a column that is ``None``
everywhere still gets its declared type, never Arrow's ``null`` type.
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

from orchestrator.storage import layout
from orchestrator.storage.records import TrialRecords
from orchestrator.storage.schema import KEYS, arrow_schema, as_text, clean_value, untyped_nulls

__all__ = ["ResultStore"]


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

    def sweep_dir(self, table: str, sweep: str) -> str:
        """``<table>/sweep=NAME`` under this root (a table, ``checkpoints`` or ``pending``)."""
        return layout.sweep_dir(self.base, table, sweep)

    def table_file(self, table: str, sweep: str, key: str) -> str:
        """The path of the Parquet file ``key`` of ``table`` for ``sweep``."""
        return layout.table_file(self.base, table, sweep, key)

    def is_file(self, path: str) -> bool:
        """Whether ``path`` (under this store's filesystem) is an existing file."""
        return self.fs.get_file_info(path).type == pafs.FileType.File

    def exists(self, path: str) -> bool:
        """Whether anything (a file or a directory) is at ``path``."""
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def is_dir(self, path: str) -> bool:
        return self.fs.get_file_info(path).type == pafs.FileType.Directory

    def get(self, path: str) -> bytes:
        """The bytes of the file at ``path``; OSError when missing or unreadable."""
        with self.fs.open_input_stream(path) as f:
            return f.read()

    def read_json(self, path: str) -> Any:
        """A JSON file: its value, None when absent; ValueError/OSError when unreadable."""
        if not self.is_file(path):
            return None
        return json.loads(self.get(path).decode())

    def delete(self, path: str) -> None:
        self.fs.delete_file(path)

    def list_files(self, directory: str, recursive: bool = False) -> list[str]:
        """Paths of the files under ``directory`` (none when it does not exist)."""
        sel = pafs.FileSelector(directory, allow_not_found=True, recursive=recursive)
        return [i.path for i in self.fs.get_file_info(sel) if i.type == pafs.FileType.File]

    def list_names(self, directory: str) -> list[str]:
        """Base names of the entries (files and directories) directly in ``directory``."""
        sel = pafs.FileSelector(directory, allow_not_found=True)
        return [i.base_name for i in self.fs.get_file_info(sel)]

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
        tmp = layout.tmp_file(directory, uuid.uuid4().hex)
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
                if name.startswith(layout.TMP_PREFIX):
                    try:
                        os.remove(os.path.join(dirpath, name))
                        n += 1
                    except FileNotFoundError:
                        pass
        return n

    def quarantine(self, path: str, reason: str) -> str:
        """Move an unreadable file out of the tables to ``corrupt/`` (kept for inspection)."""
        target = layout.corrupt_file(self.base, path, int(time.time() * 1000))
        self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        try:
            self.fs.move(path, target)
        except OSError:  # object stores without a rename: copy, then delete
            self.fs.copy_file(path, target)
            self.fs.delete_file(path)
        note = json.dumps({"moved_from": path, "reason": reason, "at": time.time()})
        self.put(layout.why_file(target), note.encode())
        return target

    def write(self, table: str, sweep: str, key: str, rows: Iterable[dict[str, Any]]) -> None:
        """Write ``rows`` as the file ``key`` of ``table`` (replacing any earlier one)."""
        rows = [{k: clean_value(v) for k, v in r.items()} for r in rows]
        if not rows:
            return
        schema = arrow_schema(rows)
        for f in schema:  # a column of mixed kinds is typed string: write its values as strings
            if f.type == pa.string():
                for r in rows:
                    if r.get(f.name) is not None and not isinstance(r[f.name], str):
                        r[f.name] = as_text(r[f.name])
        t = pa.Table.from_pylist(rows, schema=schema)
        buf = io.BytesIO()
        pq.write_table(t, buf)
        self.put(self.table_file(table, sweep, key), buf.getvalue())

    def keys(self, table: str, sweep: str) -> list[str]:
        """The file keys present in ``table`` for ``sweep``."""
        sel = pafs.FileSelector(self.sweep_dir(table, sweep), allow_not_found=True)
        names = [i.base_name for i in self.fs.get_file_info(sel) if i.type == pafs.FileType.File]
        ext = layout.extension(table)
        return sorted(n[: -len(ext)] for n in names if n.endswith(ext) and not n.startswith("."))

    def sweeps(self, table: str = "trials") -> list[str]:
        """The sweeps that have a directory in ``table``."""
        sel = pafs.FileSelector(layout.area_dir(self.base, table), allow_not_found=True)
        infos = self.fs.get_file_info(sel)
        names = (layout.sweep_of_dir(i.base_name) for i in infos if i.type == pafs.FileType.Directory)
        return sorted(n for n in names if n is not None)

    def table_files(self, table: str, sweep: str) -> dict[str, list[str]]:
        """``trial_id -> paths`` of ``table`` for ``sweep`` (one listing): the compacted file
        first, then the epoch files in epoch order. Names that are not table files are left out."""
        directory = self.sweep_dir(table, sweep)
        sel = pafs.FileSelector(directory, allow_not_found=True)
        found: dict[str, list[tuple[int, str]]] = {}
        for info in self.fs.get_file_info(sel):
            if info.type != pafs.FileType.File or info.base_name.startswith("."):
                continue
            parsed = layout.parse_table_file(info.base_name)
            if parsed is None:
                continue
            tid, epoch = parsed
            found.setdefault(tid, []).append(
                (-1 if epoch is None else epoch, f"{directory}/{info.base_name}")
            )
        return {t: [p for _, p in sorted(v)] for t, v in sorted(found.items())}

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
            for key in self.keys(table, name):
                path = self.table_file(table, name, key)
                try:
                    with self.fs.open_input_file(path) as f:  # one small file: no dataset machinery
                        t = pq.ParquetFile(f).read(columns=columns)
                except (pa.ArrowException, OSError) as exc:
                    self.report_corrupt(path, exc, on_corrupt)
                    continue
                t = untyped_nulls(t)
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
        epochs = [k for k in self.keys(table, sweep) if k.startswith(layout.epoch_prefix(trial_id))]
        if not epochs:
            return 0
        frames = []
        for key in [trial_id, *epochs]:
            path = self.table_file(table, sweep, key)
            if key == trial_id and not self.is_file(path):
                continue
            try:
                with self.fs.open_input_file(path) as f:
                    frames.append(untyped_nulls(pq.ParquetFile(f).read()))
            except (pa.ArrowException, OSError) as exc:
                self.report_corrupt(path, exc, "quarantine")
        if frames:
            merged = pa.concat_tables(frames, promote_options="permissive")
            keys = merged.select(KEYS[table]).to_pandas()  # dedupe on the key only: Arrow types stay
            keep = keys.drop_duplicates(keep="last").sort_values(KEYS[table][1:], kind="stable").index
            t = merged.take(pa.array(keep.to_numpy()))
            buf = io.BytesIO()
            pq.write_table(t, buf)
            self.put(self.table_file(table, sweep, trial_id), buf.getvalue())
        for key in epochs:
            with contextlib.suppress(FileNotFoundError, OSError):
                self.fs.delete_file(self.table_file(table, sweep, key))
        return len(epochs)

    def report_corrupt(self, path: str, exc: Exception, on_corrupt: str) -> None:
        """Warn about an unreadable file; with ``on_corrupt="quarantine"`` also move it aside."""
        if on_corrupt == "quarantine":
            where = self.quarantine(path, str(exc))
            print(f"warning: unreadable file {path} ({exc}); moved to {where}", file=sys.stderr)
        else:
            print(f"warning: skipping unreadable file {path} ({exc})", file=sys.stderr)

    def check(self, table: str, sweep: str) -> list[str]:
        """Quarantine the files of ``table`` whose Parquet footer cannot be read; their keys."""
        bad = []
        for key in self.keys(table, sweep):
            path = self.table_file(table, sweep, key)
            try:
                with self.fs.open_input_file(path) as f:
                    pq.read_metadata(f)
            except (pa.ArrowException, OSError) as exc:
                self.report_corrupt(path, exc, "quarantine")
                bad.append(key)
        return bad

    # --- checkpoints --------------------------------------------------------------------
    def checkpoint_path(self, sweep: str, trial_id: str) -> str:
        return layout.checkpoint_file(self.base, sweep, trial_id)

    def save_checkpoint(self, sweep: str, trial_id: str, data: bytes) -> None:
        self.put(self.checkpoint_path(sweep, trial_id), data)

    def load_checkpoint(self, sweep: str, trial_id: str) -> bytes | None:
        path = self.checkpoint_path(sweep, trial_id)
        if not self.is_file(path):
            return None
        return self.get(path)

    def delete_checkpoint(self, sweep: str, trial_id: str) -> None:
        path = self.checkpoint_path(sweep, trial_id)
        if self.is_file(path):
            self.fs.delete_file(path)

    # --- side files ---------------------------------------------------------------------
    def meta_path(self, sweep: str, name: str = "sweep.json") -> str:
        return layout.meta_file(self.base, sweep, name)

    def meta(self, sweep: str, name: str = "sweep.json") -> dict[str, Any] | None:
        """The sweep's ``meta/sweep=NAME/sweep.json`` (objectives, space, paper trial), if any;
        ``name="confirm.json"``: what ``jiio confirm`` confirmed."""
        return self.read_json(self.meta_path(sweep, name))

    def write_meta(self, sweep: str, body: bytes, name: str = "sweep.json") -> None:
        self.put(self.meta_path(sweep, name), body)

    def lock_path(self, sweep: str) -> str:
        return layout.lock_file(self.base, sweep)

    def model_path(self, name: str) -> str:
        return layout.model_file(self.base, name)

    def model_uri(self, name: str) -> str:
        """The model ``name`` as trials open it: a URI on object storage, else the path."""
        if not layout.is_uri(self.root):
            return self.model_path(name)
        return f"{self.root.rstrip('/')}/{layout.relative(self.base, self.model_path(name))}"

    def baseline_path(self, name: str) -> str:
        return layout.baseline_file(self.base, name)

    def analysis_path(self, name: str) -> str:
        return layout.analysis_dir(self.base, name)

    def ray_path(self) -> str:
        return layout.ray_dir(self.base)
