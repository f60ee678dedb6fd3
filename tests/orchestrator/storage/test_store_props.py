"""Property-based tests of the Parquet result store (:mod:`orchestrator.storage.store`).

(a) rows of the kinds ``arrow_schema`` types (None, bool, int, finite float, str, list of
floats; a column of ints and floats is a float column) read back equal; (b) writing keys
any number of times, in any order, never duplicates a row key and the last write of each
file wins; (c) ``put`` leaves no temporary file, ``clean_tmp`` removes leftover ones; (d) a
truncated file among good ones never blocks a read, and is moved to ``corrupt/`` on request.

Each example gets its own temporary directory (hypothesis runs many examples per test,
so function-scoped fixtures such as ``tmp_path`` would be shared between them).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import string
import tempfile

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.storage import KEYS, ResultStore, declared_types

# Examples write many small files, each fsync'ed: on tmpfs that costs nothing.
_TMP = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
PROPS = settings(
    max_examples=50,
    deadline=None,
    database=None,  # no .hypothesis/ directory in the working tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- values of the kinds arrow_schema types ------------------------------------------------
FLOATS = st.floats(allow_nan=False, allow_infinity=False)
EXACT_INTS = st.integers(-(2**53), 2**53)  # exactly representable as a double
VALUES = {
    "bool": st.booleans(),
    "int": st.integers(-(2**63), 2**63 - 1),
    "float": FLOATS,
    "exact_int": EXACT_INTS,
    "num": st.one_of(EXACT_INTS, FLOATS),  # ints and floats in one column: a float column
    "str": st.text(max_size=8),
    "list": st.lists(FLOATS, max_size=4) | st.lists(EXACT_INTS, max_size=3).map(tuple),
}
# Declared columns (optional settings), with the kind their declared type holds.
DECLARED_KINDS = {
    n: {pa.int64(): "int", pa.float64(): "float", pa.string(): "str"}[t] for n, t in declared_types().items()
}
RESERVED = {"sweep", *(k for keys in KEYS.values() for k in keys)}
NAMES = st.text(string.ascii_lowercase + "_é0", min_size=1, max_size=6).map(lambda s: "m_" + s)


@st.composite
def columns(draw, kinds=tuple(VALUES), min_size=1, max_size=5):
    """A {name: kind} map: free names of any kind, and some declared names of their kind."""
    cols = draw(st.dictionaries(NAMES, st.sampled_from(kinds), min_size=min_size, max_size=max_size))
    declared = [n for n, k in DECLARED_KINDS.items() if k in kinds]
    for name in draw(st.lists(st.sampled_from(declared), max_size=2, unique=True)) if declared else []:
        cols[name] = DECLARED_KINDS[name]
    assert not RESERVED & set(cols)
    return cols


@st.composite
def rows_of(draw, cols, keys, n_min=1, n_max=6, none=True):
    """Rows with the key fields ``keys(i)``; each column absent, None (if ``none``) or a value."""
    n = draw(st.integers(n_min, n_max))
    rows = []
    for i in range(n):
        row = dict(keys(i))
        for name, kind in draw(st.permutations(list(cols.items()))):  # any column order
            how = draw(st.sampled_from(["value", "value", "none", "absent"] if none else ["value"]))
            if how == "value":
                row[name] = draw(VALUES[kind])
            elif how == "none":
                row[name] = None
        rows.append(row)
    return rows


def _missing(v) -> bool:
    return not isinstance(v, (np.ndarray, list)) and pd.isna(v)


def _check_value(got, want, kind: str, name: str) -> None:
    if want is None:
        assert _missing(got), (name, got)
    elif kind == "list":
        assert isinstance(got, np.ndarray) and got.dtype == np.float64, (name, got)
        assert got.tolist() == [float(x) for x in want], (name, got, want)
    elif kind == "bool":
        assert isinstance(got, (bool, np.bool_)) and bool(got) == want, (name, got, want)
    elif kind == "str":
        assert got == want, (name, got, want)
    elif kind == "int" and isinstance(got, (int, np.integer)):
        assert int(got) == want, (name, got, want)
    else:  # floats, ints of a column with missing values (pandas: float64 with NaN)
        assert isinstance(got, (float, np.floating)) and float(got) == float(want), (name, got, want)


# --- (a) round trip --------------------------------------------------------------------------


@PROPS
@given(data=st.data())
def test_rows_read_back_equal(data):
    cols = data.draw(columns())
    rows = data.draw(rows_of(cols, lambda i: {"trial_id": f"t{i}"}))
    with tempfile.TemporaryDirectory(dir=_TMP) as root:
        store = ResultStore(root)
        store.write("trials", "s", "k", rows)
        df = store.read("trials", "s")
        schema = pq.read_schema(f"{store.base}/trials/sweep=s/k.parquet")
    assert len(df) == len(rows) and list(df["trial_id"]) == [r["trial_id"] for r in rows]
    assert set(df.columns) == {"sweep", "trial_id", *(n for r in rows for n in r)}
    assert (df["sweep"] == "s").all()
    for name, kind in cols.items():
        wanted = [r.get(name) for r in rows]
        if kind in ("num", "exact_int"):  # ints and floats: a float column, unless all are ints
            kind = "int" if all(isinstance(v, int) for v in wanted if v is not None) else "float"
        if name not in df:
            assert all(name not in r for r in rows)  # drawn, but absent from every row
            continue
        field = schema.field(name).type
        assert not pa.types.is_null(field), name  # never Arrow's null type
        if all(v is None for v in wanted):
            assert field == declared_types().get(name, pa.float64()), (name, field)
        elif kind == "int" and None not in wanted:
            assert df[name].dtype == np.int64, (name, df[name].dtype)  # ints stay ints
        elif kind == "bool" and None not in wanted:
            assert df[name].dtype == np.bool_, (name, df[name].dtype)
        for got, want in zip(df[name], wanted, strict=True):
            _check_value(got, want, kind, name)


# --- (b) keyed writes: no duplicates, the last write of a file wins --------------------------


def _file_key(table: str, tid: str, epoch: int) -> str:
    return tid if table in ("trials", "pareto") else f"{tid}-e{epoch:04d}"


@st.composite
def writes(draw, table: str):
    """A sequence of (sweep, file key, rows) writes, keys reused in any order."""
    cols = draw(columns(kinds=("exact_int", "float", "num"), min_size=0, max_size=3))
    ops = []
    for w in range(draw(st.integers(1, 10))):
        sweep = draw(st.sampled_from(["s1", "s2"]))
        tid = draw(st.sampled_from(["t0", "t1", "t2"]))
        epoch = draw(st.integers(1, 3))

        def keys(i, tid=tid, epoch=epoch, w=w):
            key = {"trial_id": tid}
            if table == "steps":
                key.update(
                    step=epoch * 100 + draw(st.integers(0, 3)), phase=draw(st.sampled_from(["train", "eval"]))
                )
            elif table == "traces":
                key.update(step=epoch * 100, iteration=draw(st.integers(1, 4)))
            key["w"] = w  # which write a row came from
            key["i"] = i
            return key

        rows = draw(rows_of(cols, keys, n_max=4))
        ops.append((sweep, _file_key(table, tid, epoch), rows))
    return ops


@pytest.mark.parametrize("table", ["trials", "steps", "traces"])
@PROPS
@given(data=st.data())
def test_rewrites_never_duplicate_and_the_last_wins(table, data):
    ops = data.draw(writes(table))
    keys = ["sweep", *KEYS[table]]
    last: dict[tuple[str, str], list[dict]] = {}
    for sweep, key, rows in ops:
        last[(sweep, key)] = rows
    expected: dict[tuple, tuple[int, int]] = {}
    for (sweep, _), rows in sorted(last.items()):
        for r in rows:  # within one file, a repeated row key keeps its last row
            expected[(sweep, *(r[k] for k in KEYS[table]))] = (r["w"], r["i"])
    with tempfile.TemporaryDirectory(dir=_TMP) as root:
        store = ResultStore(root)
        for sweep, key, rows in ops:
            store.write(table, sweep, key, rows)
        every = store.read(table)
        one = store.read(table, "s1")
    assert not every.duplicated(subset=keys).any()
    got = {tuple(r[k] for k in keys): (int(r["w"]), int(r["i"])) for _, r in every.iterrows()}
    assert got == expected
    assert len(one) == sum(1 for k in expected if k[0] == "s1") and set(one["sweep"]) <= {"s1"}


# --- (c) temporary files ----------------------------------------------------------------------


def _tmp_files(root: str) -> list[str]:
    return [os.path.join(d, n) for d, _, files in os.walk(root) for n in files if n.startswith(".tmp-")]


PATHS = st.lists(st.sampled_from(["a", "b", "sweep=x", "é"]), min_size=1, max_size=3).map("/".join)


@PROPS
@given(puts=st.lists(st.tuples(PATHS, st.binary(max_size=64)), min_size=1, max_size=8))
def test_put_leaves_no_temporary_file(puts):
    with tempfile.TemporaryDirectory(dir=_TMP) as root:
        store = ResultStore(root)
        final = {}
        for rel, data in puts:  # the same paths again and again, nested directories made on the way
            path = f"{store.base}/{rel}.bin"
            store.put(path, data)
            final[path] = data
            assert _tmp_files(root) == []
        store.write("trials", "s", "t", [{"trial_id": "t", "x": 1.0}])
        assert _tmp_files(root) == []
        for path, data in final.items():
            with open(path, "rb") as f:
                assert f.read() == data


@PROPS
@given(
    planted=st.lists(st.tuples(PATHS, st.text(string.hexdigits, min_size=1, max_size=8)), max_size=6),
    ids=st.lists(st.sampled_from(["t0", "t1", "t2"]), min_size=1, max_size=3, unique=True),
)
def test_clean_tmp_removes_leftovers_only(planted, ids):
    with tempfile.TemporaryDirectory(dir=_TMP) as root:
        store = ResultStore(root)
        for tid in ids:
            store.write("trials", "s", tid, [{"trial_id": tid, "x": 0.5}])
        dirs = [f"{store.base}/trials/sweep=s", *(f"{store.base}/{rel}" for rel, _ in planted)]
        made = set()
        for i, (_, name) in enumerate(planted):
            d = dirs[(i + 1) % len(dirs)] if i % 2 else dirs[i % len(dirs)]
            os.makedirs(d, exist_ok=True)
            path = f"{d}/.tmp-{name}{i}"
            with open(path, "wb") as f:
                f.write(b"torn")
            made.add(path)
        with open(f"{store.base}/trials/sweep=s/keep.tmp-not", "wb") as f:  # not a leftover
            f.write(b"x")
        assert sorted(store.read("trials", "s")["trial_id"]) == sorted(ids)  # leftovers never read
        assert store.clean_tmp() == len(made)
        assert _tmp_files(root) == []
        assert os.path.exists(f"{store.base}/trials/sweep=s/keep.tmp-not")
        assert sorted(store.read("trials", "s")["trial_id"]) == sorted(ids)
        assert store.clean_tmp() == 0
    assert ResultStore(os.path.join(root, "gone")).clean_tmp() == 0


# --- (d) truncated files ----------------------------------------------------------------------


@PROPS
@given(
    n=st.integers(2, 5),
    victim=st.integers(0, 4),
    cut=st.floats(0.0, 1.0, exclude_max=True),
    values=st.lists(st.integers(0, 1000), min_size=5, max_size=5),
)
def test_truncated_file_never_blocks_a_read(n, victim, cut, values):
    victim %= n
    with tempfile.TemporaryDirectory(dir=_TMP) as root:
        store = ResultStore(root)
        for i in range(n):
            store.write(
                "trials", "s", f"t{i}", [{"trial_id": f"t{i}", "status": "completed", "v": values[i]}]
            )
        path = f"{store.base}/trials/sweep=s/t{victim}.parquet"
        with open(path, "rb") as f:
            data = f.read()
        with open(path, "wb") as f:
            f.write(data[: math.floor(cut * len(data))])
        good = {f"t{i}": values[i] for i in range(n) if i != victim}

        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            df = store.read("trials", "s")  # on_corrupt="skip": warns, leaves the file
        assert dict(zip(df["trial_id"], df["v"].astype(int), strict=True)) == good
        assert path in err.getvalue() and os.path.exists(path)

        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            df = store.read("trials", "s", on_corrupt="quarantine")
        assert dict(zip(df["trial_id"], df["v"].astype(int), strict=True)) == good
        assert not os.path.exists(path) and path in err.getvalue()
        moved = [n for n in os.listdir(f"{store.base}/corrupt/trials/sweep=s") if not n.endswith(".why.json")]
        assert len(moved) == 1 and moved[0].startswith(f"t{victim}.parquet.")
        with open(f"{store.base}/corrupt/trials/sweep=s/{moved[0]}.why.json") as f:
            assert json.load(f)["moved_from"] == path

        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            assert len(store.read("trials", "s")) == n - 1
        assert err.getvalue() == ""  # the quarantined file is out of the table


def test_failed_put_leaves_no_temporary_file(tmp_path):
    store = ResultStore(str(tmp_path))
    target = f"{store.base}/trials/sweep=s/t.parquet"
    os.makedirs(f"{target}/blocker")  # a directory where the file goes: the rename fails
    with pytest.raises(OSError):
        store.put(target, b"data")
    assert _tmp_files(str(tmp_path)) == []


# --- known gaps, found by the properties above (strict: they flag the fix) ---------------------


@pytest.mark.parametrize(
    "value", ["cuda:0", True, [1.0, 2.0], 2**53 + 1], ids=["str", "bool", "list", "bigint"]
)
def test_column_none_in_one_file_typed_in_another(tmp_path, value):
    store = ResultStore(str(tmp_path))
    store.write("trials", "s", "a", [{"trial_id": "a", "x": None}])
    store.write("trials", "s", "b", [{"trial_id": "b", "x": value}])
    df = store.read("trials", "s").set_index("trial_id")
    assert _missing(df.loc["a", "x"])
    got = df.loc["b", "x"]
    assert (got.tolist() if isinstance(got, np.ndarray) else got) == value


@pytest.mark.parametrize(
    "values", [("a", 1), (True, 2), ([1.0], 2.0)], ids=["str-int", "bool-int", "list-float"]
)
def test_mixed_column_is_written_as_strings(tmp_path, values):
    store = ResultStore(str(tmp_path))
    store.write("trials", "s", "k", [{"trial_id": f"t{i}", "x": v} for i, v in enumerate(values)])
    assert len(store.read("trials", "s")) == 2
