"""ResultStore: keyed atomic files, explicit schemas, dedup, pending and checkpoints.

Tests that take ``root`` run on a local directory and on S3 (``conftest.py``)."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.storage import ResultStore, arrow_schema


def test_roundtrip_and_replacing_a_key_never_duplicates(tmp_path):
    store = ResultStore(str(tmp_path))
    store.write("steps", "s", "t1-e0001", [{"trial_id": "t1", "step": 1, "phase": "train", "loss": 2.0}])
    store.write("steps", "s", "t1-e0001", [{"trial_id": "t1", "step": 1, "phase": "train", "loss": 1.5}])
    store.write("steps", "s", "t1-e0002", [{"trial_id": "t1", "step": 2, "phase": "train", "loss": 1.0}])
    df = store.read("steps", "s").sort_values("step")
    assert df[["step", "loss"]].values.tolist() == [[1, 1.5], [2, 1.0]]
    assert set(df["sweep"]) == {"s"}
    assert not [
        f for f in os.listdir(tmp_path / "steps" / "sweep=s") if f.startswith(".")
    ]  # no temp files left


def test_duplicate_keys_across_files_are_dropped_on_read(root):
    store = ResultStore(root)
    row = {"trial_id": "t1", "step": 3, "phase": "eval", "acc": 0.5}
    store.write("steps", "s", "a", [row])
    store.write("steps", "s", "b", [{**row, "acc": 0.6}])
    df = store.read("steps", "s")
    assert len(df) == 1


def test_explicit_schema_for_all_none_and_mixed_columns(tmp_path):
    rows = [
        {"alpha_x_after": None, "x": 1, "y": None, "n": 1, "tr": [1, 2]},
        {"alpha_x_after": None, "x": 2.5, "y": None, "n": 2, "tr": [3.0]},
    ]
    schema = arrow_schema(rows)
    assert schema.field("alpha_x_after").type == pa.float64()  # declared type, not null
    assert schema.field("y").type == pa.float64()  # unknown all-None: a metric, float
    assert schema.field("x").type == pa.float64()  # int and float mix
    assert schema.field("n").type == pa.int64()
    assert schema.field("tr").type == pa.list_(pa.float64())
    store = ResultStore(str(tmp_path))
    store.write("trials", "s", "t", [{"trial_id": "t", **rows[0]}])
    file_schema = pq.read_schema(tmp_path / "trials" / "sweep=s" / "t.parquet")
    assert all(str(f.type) != "null" for f in file_schema)


def test_columns_differing_between_files_are_unified(root):
    store = ResultStore(root)
    store.write("trials", "s", "a", [{"trial_id": "a", "acc": 0.5}])
    store.write("trials", "s", "b", [{"trial_id": "b", "psnr": 20.0}])
    df = store.read("trials", "s").set_index("trial_id")
    assert df.loc["a", "acc"] == 0.5 and df.loc["b", "psnr"] == 20.0
    assert store.sweeps() == ["s"]
    assert store.read("trials", "nothing").empty


def test_uri_and_object_store_paths(tmp_path):
    store = ResultStore(f"file://{tmp_path}")
    store.local = False  # the object-store branch: one direct write, no rename
    store.write("trials", "s", "t", [{"trial_id": "t", "acc": 1.0}])
    assert ResultStore(str(tmp_path)).read("trials", "s")["acc"].tolist() == [1.0]


def test_pending_checkpoints_and_meta(root):
    store = ResultStore(root)
    store.write_pending("s", "t1", {"alpha_x": 0.1})
    assert store.pending("s") == {"t1": {"alpha_x": 0.1}}
    store.save_checkpoint("s", "t1", b"abc")
    assert store.load_checkpoint("s", "t1") == b"abc" and store.keys("checkpoints", "s") == ["t1"]
    store.delete_checkpoint("s", "t1")
    store.mark_finished("s", "t1")
    assert store.load_checkpoint("s", "t1") is None and store.pending("s") == {}
    assert store.meta("s") is None
    store.write_meta("s", json.dumps({"metrics": ["acc"]}).encode())
    assert store.meta("s") == {"metrics": ["acc"]}


@pytest.mark.parametrize("sweep", ["", "a/b", ".hidden"])
def test_bad_names_raise(root, sweep):
    with pytest.raises(ValueError, match="sweep name"):
        ResultStore(root).write("trials", sweep, "k", [{"a": 1}])
    with pytest.raises(ValueError, match="table must be"):
        ResultStore(root).write("bogus", "s", "k", [{"a": 1}])


def test_compaction_keeps_every_row_and_its_types_and_an_interrupted_one_is_finished(root):
    import pyarrow.parquet as pq

    from orchestrator.driver.state import finish_compaction as _finish_compaction

    store = ResultStore(root)
    rows = {
        1: [{"trial_id": "t", "step": 1, "phase": "train", "n": 3, "opt": None, "tr": [1.0, 2.0]}],
        2: [
            {"trial_id": "t", "step": 2, "phase": "train", "n": 4, "opt": 7, "tr": [3.0]},
            {"trial_id": "t", "step": 2, "phase": "eval", "n": 5, "opt": None, "tr": []},
        ],
    }
    for e, r in rows.items():
        store.write("steps", "s", f"t-e{e:04d}", r)
    before = store.read("steps", "s")
    assert store.compact("steps", "s", "t") == 2 and store.keys("steps", "s") == ["t"]
    after = store.read("steps", "s")

    def rows_of(df):
        df = df.sort_values(["step", "phase"])
        return [
            (r.step, r.phase, r.n, None if r.opt != r.opt else r.opt, list(r.tr)) for r in df.itertuples()
        ]

    assert rows_of(after) == rows_of(before)
    schema = pq.read_schema(store.table_file("steps", "s", "t"), filesystem=store.fs)
    assert str(schema.field("n").type) == "int64" and schema.field("tr").type.value_type == pa.float64()
    # Killed after writing the merged file, before deleting the epoch files: a new epoch
    # file next to it (as the kill left) is merged by the next driver, its rows winning.
    store.write(
        "steps",
        "s",
        "t-e0002",
        [{"trial_id": "t", "step": 2, "phase": "train", "n": 40, "opt": 7, "tr": [3.0]}],
    )
    _finish_compaction(store, "s", {"t"})
    assert store.keys("steps", "s") == ["t"]
    got = store.read("steps", "s").set_index(["step", "phase"])["n"].to_dict()
    assert got == {(1, "train"): 3, (2, "train"): 40, (2, "eval"): 5}
    _finish_compaction(store, "s", set())  # unfinished trials are left alone
    store.write("steps", "s", "u-e0001", [{"trial_id": "u", "step": 1, "phase": "train"}])
    _finish_compaction(store, "s", {"t"})
    assert store.keys("steps", "s") == ["t", "u-e0001"]
