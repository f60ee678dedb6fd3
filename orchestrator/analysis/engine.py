"""Reading a sweep's Parquet results for analysis, at cluster scale.

The layout (:mod:`orchestrator.storage.layout`) names every file by its trial: ``<trial_id>.parquet``
(trials; steps and traces compacted per trial) or ``<trial_id>-e<epoch>.parquet`` (steps
and traces of one epoch, as written before compaction). :class:`Source` lists a table's
directory once and picks files by trial id from their names, so a plot of three trials'
traces opens those trials' files only, never the whole table; each file is read with only
the columns asked for (projection), by a pool of threads (object stores are latency-bound).

Both layouts are accepted, also side by side: while a trial is being compacted, a row key
(``orchestrator.storage.KEYS``) can be in its compacted file and in an epoch file at once; rows are
deduplicated on the key, an epoch file's row winning (it is never older than the
compacted file's).

For SQL (``jiio analyze --sql``), :meth:`Source.connect` gives a DuckDB connection whose
views ``trials``, ``steps`` and ``traces`` scan ``pyarrow.dataset`` objects (projection
and filter push-down), so a query over a remote bucket streams instead of loading tables.

Analysis never moves or rewrites a file: an unreadable one is skipped and named in
``skipped`` (path -> reason), to be reported once at the end.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from orchestrator.storage import KEYS, ResultStore, layout, untyped_nulls

__all__ = ["AnalyzeError", "Source", "reason"]

THREADS = 8  # local disks; object stores get more (each read is a round trip)
REMOTE_THREADS = 32


class AnalyzeError(ValueError):
    """Bad input for ``jiio analyze``: nothing under the path can be analysed. One line: what
    is wrong and what to do."""


def reason(exc: BaseException) -> str:
    """The first line of an exception's message, without pyarrow's path prefix."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return re.sub(r"^Could not open Parquet input source '[^']*': ", "", text)


class Source:
    """Read-only access to the results under one storage root (see the module docstring)."""

    def __init__(self, store: ResultStore) -> None:
        self.store, self.fs, self.base, self.root = store, store.fs, store.base, store.root
        self.skipped: dict[str, str] = {}
        self.threads = THREADS if store.local else REMOTE_THREADS
        self._listing: dict[tuple[str, str], dict[str, list[str]]] = {}
        self._trials: dict[str, pd.DataFrame] = {}

    # --- files ---------------------------------------------------------------------------
    def rel(self, path: str) -> str:
        return layout.relative(self.base, path)

    def sweeps(self, table: str = "trials") -> list[str]:
        return self.store.sweeps(table)

    def files(self, table: str, sweep: str) -> dict[str, list[str]]:
        """``trial_id -> paths`` of ``table`` for ``sweep`` (one listing, cached): the compacted
        file first, then the epoch files in epoch order."""
        key = (table, sweep)
        if key not in self._listing:
            self._listing[key] = self.store.table_files(table, sweep)
        return self._listing[key]

    def _read_file(self, path: str, columns: list[str] | None) -> pa.Table | None:
        try:
            with self.fs.open_input_file(path) as f:
                pf = pq.ParquetFile(f)
                names = pf.schema_arrow.names
                cols = None if columns is None else [c for c in columns if c in names]
                return untyped_nulls(pf.read(columns=cols))
        except (pa.ArrowException, OSError, ValueError) as exc:
            self.skipped.setdefault(path, reason(exc))
            return None

    def read_files(self, paths: list[str], columns: list[str] | None = None) -> list[pa.Table]:
        """Each readable file of ``paths`` (in order) with the ``columns`` it has."""
        if len(paths) <= 2:
            tables = [self._read_file(p, columns) for p in paths]
        else:
            with ThreadPoolExecutor(self.threads) as pool:
                tables = list(pool.map(lambda p: self._read_file(p, columns), paths))
        return [t for t in tables if t is not None]

    def _combine(self, table: str, sweep: str, parts: list[pa.Table]) -> pd.DataFrame:
        if not parts:
            return pd.DataFrame(columns=[*KEYS[table], "sweep"])
        try:
            t = pa.concat_tables(parts, promote_options="permissive")
        except (pa.ArrowException, KeyError) as exc:  # files that cannot be combined
            where = layout.relative(self.base, self.store.sweep_dir(table, sweep))
            raise AnalyzeError(
                f"the files of {where} under {self.root} cannot be read as one table "
                f"({reason(exc)}); were some written by another program or an incompatible version?"
            ) from None
        if "sweep" in t.column_names:
            t = t.drop_columns(["sweep"])
        df = t.append_column("sweep", pa.array([sweep] * t.num_rows, pa.string())).to_pandas()
        keys = [k for k in KEYS[table] if k in df.columns]
        if keys:
            df = df.drop_duplicates(subset=keys, keep="last").reset_index(drop=True)
        return df

    # --- tables --------------------------------------------------------------------------
    def trials(self, sweep: str) -> pd.DataFrame:
        """Every readable trial row of ``sweep`` (cached; returned as a shallow copy)."""
        if sweep not in self._trials:
            paths = [p for ps in self.files("trials", sweep).values() for p in ps]
            self._trials[sweep] = self._combine("trials", sweep, self.read_files(paths))
        return self._trials[sweep].copy(deep=False)

    def rows(
        self, table: str, sweep: str, trial_ids: Iterable[str], columns: list[str] | None = None
    ) -> pd.DataFrame:
        """The rows of ``table`` (steps, traces, ...) of the given trials only, deduplicated on
        the table's key; only their files are opened, with only ``columns`` (plus the key)."""
        listing = self.files(table, sweep)
        paths = [p for t in dict.fromkeys(trial_ids) for p in listing.get(str(t), [])]
        cols = None if columns is None else list(dict.fromkeys([*KEYS[table], *columns]))
        return self._combine(table, sweep, self.read_files(paths, cols))

    def table(self, table: str, sweep: str) -> pd.DataFrame:
        """A small table read whole (``pareto``)."""
        paths = [p for ps in self.files(table, sweep).values() for p in ps]
        return self._combine(table, sweep, self.read_files(paths))

    # --- JSON side files ----------------------------------------------------------------
    def _json(self, path: str) -> Any:
        """A JSON file: its value, None when absent; raises ValueError/OSError when unreadable."""
        return self.store.read_json(path)

    def meta(self, sweep: str, name: str = "sweep.json") -> Any:
        """``meta/sweep=SWEEP/NAME`` (default the sweep's metadata; ``confirm.json``: what
        ``jiio confirm`` confirmed), None when absent; ValueError/OSError when unreadable."""
        return self._json(self.store.meta_path(sweep, name))

    def records(self, sweep: str, trial_ids: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
        """Trial records (``pending/``) of the given trials (default: all), by id; unreadable
        ones are skipped (named in ``skipped``), never moved. An earlier version's record (the
        bare parameters) reads as a running trial."""
        have = set(self.store.keys("pending", sweep))
        ids = sorted(have if trial_ids is None else have & {str(t) for t in trial_ids})

        def one(tid: str) -> tuple[str, dict[str, Any] | None]:
            path = self.store.record_path(sweep, tid)
            try:
                data = self._json(path)
            except (ValueError, OSError) as exc:
                self.skipped.setdefault(path, reason(exc))
                return tid, None
            if not isinstance(data, dict):
                if data is not None:
                    self.skipped.setdefault(path, "not a JSON object")
                return tid, None
            if not isinstance(data.get("params"), dict):
                data = {"params": data, "trial_id": tid, "state": "running"}
            return tid, data

        with ThreadPoolExecutor(self.threads) as pool:
            return {t: r for t, r in pool.map(one, ids) if r is not None}

    def pending_ids(self, sweep: str) -> list[str]:
        return self.store.keys("pending", sweep)

    def driver(self, sweep: str, stale_s: float = 60.0) -> dict[str, Any] | None:
        """The sweep's live driver (``locks/``: host, pid, heartbeat age), or None when no driver
        holds the lock or its heartbeat is older than ``stale_s`` (the lock's own rule)."""
        try:
            owner = self._json(self.store.lock_path(sweep))
        except (ValueError, OSError):
            return None
        if not isinstance(owner, dict):
            return None
        try:
            age = time.time() - float(owner.get("heartbeat", 0))
        except (TypeError, ValueError):
            return None
        if age > stale_s:
            return None
        return {"host": owner.get("host"), "pid": owner.get("pid"), "heartbeat_age_s": round(age, 1)}

    # --- SQL -----------------------------------------------------------------------------
    def dataset(self, table: str, sweeps: list[str]) -> tuple[ds.Dataset | None, pa.Table | None]:
        """``table`` of ``sweeps`` as a ``pyarrow.dataset`` (with a ``sweep`` column) over the
        files of trials in one layout, and the deduplicated rows of trials caught in both
        layouts (mid-compaction) as a small table; the schema is the union of every readable
        file's (footers read in parallel; an unreadable file is skipped)."""
        clean: list[str] = []
        both: dict[str, list[str]] = {}
        for sweep in sweeps:
            for tid, paths in self.files(table, sweep).items():
                compacted = self.store.table_file(table, sweep, tid)
                if len(paths) > 1 and compacted in paths:
                    both.setdefault(sweep, []).extend(paths)
                else:
                    clean.extend(paths)

        def schema(path: str) -> pa.Schema | None:
            try:
                with self.fs.open_input_file(path) as f:
                    return pq.ParquetFile(f).schema_arrow
            except (pa.ArrowException, OSError, ValueError) as exc:
                self.skipped.setdefault(path, reason(exc))
                return None

        with ThreadPoolExecutor(self.threads) as pool:
            schemas = list(pool.map(schema, clean))
        good = [p for p, s in zip(clean, schemas, strict=True) if s is not None]
        extra = None
        if both:
            frames = [self._combine(table, s, self.read_files(ps)) for s, ps in both.items()]
            extra = pa.Table.from_pandas(pd.concat(frames, ignore_index=True), preserve_index=False)
        if not good:
            return None, extra
        unified = _unify([s for s in schemas if s is not None])
        if "sweep" in unified.names:
            unified = unified.remove(unified.get_field_index("sweep"))
        part = ds.partitioning(pa.schema([("sweep", pa.string())]), flavor="hive")
        dataset = ds.dataset(
            good,
            schema=unified.append(pa.field("sweep", pa.string())),
            format="parquet",
            filesystem=self.fs,
            partitioning=part,
            partition_base_dir=layout.area_dir(self.base, table),
        )
        return dataset, extra

    def connect(self, sweeps: list[str], tables: Iterable[str] = ("trials", "steps", "traces")):
        """A DuckDB connection with a view per table in ``tables`` (over ``sweeps``)."""
        try:
            import duckdb
        except ImportError:
            raise AnalyzeError("--sql needs DuckDB: pip install 'duckdb>=1.1'") from None
        con = duckdb.connect()
        con.execute("SET enable_progress_bar = false")
        for table in tables:
            parts = []
            if table == "trials":  # one small row per trial: read whole, in parallel, typed per file
                frames = [t for t in (self.trials(s) for s in sweeps) if len(t)]
                if frames:
                    con.register("_trials_rows", pd.concat(frames, ignore_index=True))
                    parts.append("SELECT * FROM _trials_rows")
                dataset, extra = None, None
            else:
                dataset, extra = self.dataset(table, sweeps)
            if dataset is not None:
                con.register(f"_{table}_files", dataset)
                parts.append(f"SELECT * FROM _{table}_files")
            if extra is not None and extra.num_rows:
                con.register(f"_{table}_compacting", extra)
                parts.append(f"SELECT * FROM _{table}_compacting")
            if not parts:
                cols = ", ".join(f"NULL::VARCHAR AS {k}" for k in [*KEYS[table], "sweep"])
                parts.append(f"SELECT {cols} WHERE false")
            con.execute(f"CREATE VIEW {table} AS " + " UNION ALL BY NAME ".join(parts))
        return con


def _unify(schemas: list[pa.Schema]) -> pa.Schema:
    """The union of file schemas; a column whose types cannot be promoted is read as strings."""
    try:
        return pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowException, TypeError):
        pass
    fields: dict[str, pa.DataType] = {}
    for s in schemas:
        for f in s:
            old = fields.get(f.name)
            if old is None or old == f.type or pa.types.is_null(f.type):
                fields.setdefault(f.name, f.type)
                continue
            if pa.types.is_null(old):
                fields[f.name] = f.type
                continue
            try:
                fields[f.name] = (
                    pa.unify_schemas(
                        [pa.schema([(f.name, old)]), pa.schema([(f.name, f.type)])],
                        promote_options="permissive",
                    )
                    .field(f.name)
                    .type
                )
            except (pa.ArrowException, TypeError):
                fields[f.name] = pa.string()
    return pa.schema(list(fields.items()))
