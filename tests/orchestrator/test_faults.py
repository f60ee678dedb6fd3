"""Faults as users meet them, end to end through ``sweeps/alpha.py``: SIGKILL at random
moments and resume, trials that error, a changed flag on resume, a corrupt file.

Every check is on the Parquet tables: exactly N distinct trials, no (trial, step, phase)
key in two files, and every row finished before a kill unchanged after it.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from orchestrator.storage import ResultStore

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = str(ROOT / "sweeps" / "alpha.py")
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_DEDUP_LOGS": "0", "JIIO_GIT_SHA": "test"}


def _cmd(storage, name, *extra):
    return [
        sys.executable,
        SCRIPT,
        "--smoke",
        "--storage",
        str(storage),
        "--name",
        name,
        "--gpus-per-trial",
        "0",
        *extra,
    ]


def _run(storage, name, *extra, timeout=600):
    return subprocess.run(
        _cmd(storage, name, *extra), env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def _raw_rows(store: ResultStore, table: str, name: str) -> pd.DataFrame:
    frames = [
        pq.read_table(f"{store.base}/{table}/sweep={name}/{k}.parquet", filesystem=store.fs).to_pandas()
        for k in store.keys(table, name)
    ]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _snapshot(store: ResultStore, name: str) -> dict[str, dict]:
    trials = store.read("trials", name)
    return {r["trial_id"]: r.to_dict() for _, r in trials.iterrows()}


def _same(a, b) -> bool:
    return (pd.isna(a) and pd.isna(b)) if not isinstance(a, (list, tuple)) and pd.isna(a) is True else a == b


def _check(store: ResultStore, name: str, n: int, kept: dict[str, dict]) -> pd.DataFrame:
    trials = _raw_rows(store, "trials", name)
    assert len(trials) == n and trials["trial_id"].is_unique, trials[["trial_id", "status"]]
    assert set(trials["status"]) <= {"completed", "diverged", "pruned"}, trials[
        ["trial_id", "status", "error"]
    ]
    for table, key in (
        ("steps", ["trial_id", "step", "phase"]),
        ("traces", ["trial_id", "step", "iteration"]),
    ):
        raw = _raw_rows(store, table, name)
        assert not raw.duplicated(subset=key).any(), f"a {table} key is in two files"
        epoch_files = [k for k in store.keys(table, name) if "-e" in k]
        assert not epoch_files, f"finished trials keep one {table} file each, not per epoch: {epoch_files}"
        assert set(raw["trial_id"]) <= set(trials["trial_id"]), (
            f"{table} rows of a trial that is not in trials/"
        )
    now = trials.set_index("trial_id")
    for tid, row in kept.items():  # rows finished before a kill are unchanged
        assert tid in now.index
        for col, v in row.items():
            if col not in ("sweep", "trial_id"):
                assert _same(now.loc[tid, col], v), (tid, col, now.loc[tid, col], v)
    assert not store.pending(name) and not store.keys("checkpoints", name)
    return trials


def _wait(cond, proc, log, limit=300):
    t0 = time.time()
    while time.time() - t0 < limit:
        if cond():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.1)
    raise AssertionError("timed out waiting:\n" + Path(log).read_text()[-3000:])


@pytest.mark.slow
@pytest.mark.parametrize("seeds", [1, 2], ids=["one-seed", "seeded"])
def test_five_sigkills_at_random_moments_then_resume_gives_exactly_n_trials(tmp_path, seeds):
    """With ``--seeds 2`` a trial is one (configuration, seed) run: 3 configurations give
    exactly 6 runs, every configuration under both seeds, none twice."""
    configs, name = 6 // seeds, "kills"
    n = configs * seeds
    store = ResultStore(str(tmp_path))
    rng = random.Random(int(os.environ.get("JIIO_KILL_SEED", "7")))
    extra = ("--trials", str(configs), "--epochs", "3", "--max-concurrent", "2", "--seeds", str(seeds))
    moments = [
        (
            "before any trial finished",
            lambda: len(store.keys("pending", name)) >= 2 and not store.keys("trials", name),
        ),
        ("mid-epoch of a multi-epoch trial", lambda: bool(store.keys("checkpoints", name))),
        (
            "while ASHA stops a trial",
            lambda: (
                bool(store.keys("trials", name)) and "pruned" in set(store.read("trials", name)["status"])
            ),
        )
        if seeds == 1
        else (  # a replicated sweep runs FIFO (no ASHA): kill between a configuration's seeds
            "after a run finished while another one runs",
            lambda: (
                bool(set(store.pending(name)) - set(store.keys("trials", name)))
                and bool(store.keys("trials", name))
            ),
        ),
        # Random moments early enough to land before the sweep ends (a resume takes about
        # 8 s to start its trials; the runs left after three kills take longer than 12 s).
        ("at a random time", None),
        ("at a random time", None),
    ]
    kept: dict[str, dict] = {}
    kills = 0
    for i, (_what, cond) in enumerate(moments):
        log = tmp_path / f"run{i}.log"
        with open(log, "w") as out:
            args = _cmd(tmp_path, name, *extra, *(("--resume",) if i else ()))
            proc = subprocess.Popen(
                args, env=ENV, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
            if cond is None:
                deadline = time.time() + rng.uniform(4, 12)
                _wait(lambda d=deadline: time.time() > d, proc, log)
            else:
                _wait(cond, proc, log)
                time.sleep(rng.uniform(0, 1.5))
            if proc.poll() is None:
                kept = _snapshot(store, name)  # just before the kill
                os.killpg(proc.pid, signal.SIGKILL)
                kills += 1
            proc.wait()
            time.sleep(1)  # Ray's processes of the killed session go with their group
    out = _run(tmp_path, name, *extra, "--resume")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert kills >= 5, f"only {kills} kills landed while the sweep ran"
    trials = _check(store, name, n, kept)
    assert (trials["attempts"] >= 1).all()
    runs = trials.groupby(["alpha_z", "alpha_mu", "alpha_x"])["seed"].apply(sorted)
    assert len(runs) == configs and all(r == list(range(seeds)) for r in runs), runs


@pytest.mark.slow
def test_errored_trials_are_retried_on_resume_and_end_error_when_they_fail_the_same_way(tmp_path):
    empty = tmp_path / "data"
    empty.mkdir()
    store = ResultStore(str(tmp_path / "res"))
    args = ("--trials", "1", "--dataset", "mnist", "--data-root", str(empty))
    first = _run(tmp_path / "res", "e", *args)
    assert first.returncode == 1, first.stderr[-3000:]
    tail = first.stderr.strip().splitlines()
    assert "1 trial(s) ended in error" in first.stderr and "DatasetNotFoundError" in first.stderr
    assert "no trial of sweep e completed" in tail[-1]
    row = store.read("trials", "e").iloc[0]
    assert row["status"] == "error" and row["attempts"] == 3  # Tune's retries, counted
    assert row["host"] and row["device"] and row["git_sha"] == "test"  # same provenance as completed rows
    again = _run(tmp_path / "res", "e", *args, "--resume")
    assert "1 errored, retried" in again.stdout and again.returncode == 1
    row = store.read("trials", "e").iloc[0]
    assert row["attempts"] == 6 and "DatasetNotFoundError" in row["error_history"]
    third = _run(tmp_path / "res", "e", *args, "--resume")  # failed the same way twice: final
    assert "nothing to run" in third.stdout and "DatasetNotFoundError" in third.stderr
    assert third.returncode == 1


def test_resume_with_a_changed_flag_is_refused_and_a_corrupt_row_is_recomputed(tmp_path):
    store = ResultStore(str(tmp_path))
    out = _run(tmp_path, "c", "--trials", "2", "--max-concurrent", "1")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    before = _snapshot(store, "c")
    changed = _run(tmp_path, "c", "--trials", "2", "--epochs", "2", "--resume")
    assert changed.returncode == 2
    last = changed.stderr.strip().splitlines()[-1]
    assert "fixed.epochs: 1 -> 2" in last and "--name" in last
    assert _snapshot(store, "c").keys() == before.keys()
    # A torn trials file (a disk fault): moved aside with a message, its trial recomputed.
    victim = sorted(before)[0]
    path = tmp_path / "trials" / "sweep=c" / f"{victim}.parquet"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    (tmp_path / "trials" / "sweep=c" / ".tmp-deadbeef").write_bytes(b"half a write")
    out = _run(tmp_path, "c", "--trials", "2", "--resume")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "moved to" in out.stderr and "leftover temporary" in out.stderr
    assert list((tmp_path / "corrupt").rglob(f"{victim}.parquet.*"))
    trials = _check(store, "c", 2, {k: v for k, v in before.items() if k != victim})
    assert victim in set(trials["trial_id"])
    assert not list(tmp_path.rglob(".tmp-*"))
