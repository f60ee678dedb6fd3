"""End-to-end sweeps on a local Ray: Parquet tables, SIGKILL + resume, extension, node loss.

Each sweep runs ``sweeps/alpha.py --smoke`` in a subprocess (its own Ray, its own
process group, so a SIGKILL takes Ray's processes with it) against a temporary storage.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.storage import ResultStore

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = str(ROOT / "sweeps" / "alpha.py")
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_DEDUP_LOGS": "0", "JIIO_GIT_SHA": "test"}

TRIAL_COLUMNS = {
    "sweep",
    "trial_id",
    "status",
    "task",
    "dataset",
    "alpha_z",
    "alpha_mu",
    "alpha_x",
    "anderson_m",
    "max_iter",
    "robust_acc",
    "wall_s",
    "seed",
    "torch_version",
    "ray_version",
    "git_sha",
    "device",
}
STEP_COLUMNS = {
    "sweep",
    "trial_id",
    "step",
    "epoch",
    "phase",
    "loss",
    "solver_iterations",
    "solver_converged",
    "solver_diverged",
    "solver_residual",
    "solve_s",
    "diverged_step",
}
TRACE_COLUMNS = {
    "sweep",
    "trial_id",
    "step",
    "iteration",
    "z_residual",
    "mu_residual",
    "x_step",
    "residual",
    "objective",
}


def _sweep(storage: Path, name: str, *extra: str, timeout: float = 400) -> subprocess.CompletedProcess:
    cmd = [sys.executable, SCRIPT, "--smoke", "--storage", str(storage), "--name", name, *extra]
    return subprocess.run(cmd, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _check_consistent(store: ResultStore, name: str, n: int) -> None:
    trials = store.read("trials", name)
    assert len(trials) == n and trials["trial_id"].is_unique
    assert set(trials["status"]) <= {"completed", "diverged", "pruned"}
    steps = store.read("steps", name)
    raw = sum(
        len(__import__("pyarrow.parquet").parquet.read_table(f"{store.base}/steps/sweep={name}/{k}.parquet"))
        for k in store.keys("steps", name)
    )
    assert raw == len(steps), "a (trial_id, step, phase) key appears in two files"
    done = trials[trials["status"] == "completed"]
    for tid in done["trial_id"]:
        rows = steps[steps["trial_id"] == tid]
        train = rows[rows["phase"] == "train"]["step"].tolist()
        assert train == list(range(1, len(train) + 1)), f"lost or repeated step rows for {tid}: {train}"
        assert (rows["phase"] == "eval").sum() == int(trials.set_index("trial_id").loc[tid, "epochs"])
    assert not store.pending(name) and not store.keys("checkpoints", name)


def test_small_sweep_writes_the_three_tables(tmp_path):
    # A relative --storage, as in the README: trials run in other working directories.
    cmd = [sys.executable, SCRIPT, "--smoke", "--storage", "res", "--name", "s", "--trials", "2"]
    out = subprocess.run(cmd, env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "2/2 trials finished" in out.stdout and "jiio analyze" in out.stdout
    store = ResultStore(str(tmp_path / "res"))
    assert set(store.read("trials", "s")["status"]) == {"completed"}
    trials, steps, traces = (store.read(t, "s") for t in ("trials", "steps", "traces"))
    assert set(trials.columns) >= TRIAL_COLUMNS, TRIAL_COLUMNS - set(trials.columns)
    assert set(steps.columns) >= STEP_COLUMNS, STEP_COLUMNS - set(steps.columns)
    assert set(traces.columns) >= TRACE_COLUMNS, TRACE_COLUMNS - set(traces.columns)
    # The paper code's configuration is the first trial (enqueued).
    assert ((trials["alpha_z"] == 0.8) & (trials["alpha_mu"] == 0.6) & (trials["alpha_x"] == 0.6)).any()
    # Explicit schemas: no column of Arrow's null type, even where a value is always missing.
    import pyarrow.parquet as pq

    for key in store.keys("trials", "s"):
        schema = pq.read_schema(f"{store.base}/trials/sweep=s/{key}.parquet")
        assert all(str(f.type) != "null" for f in schema), schema
    _check_consistent(store, "s", 2)
    # Running it again without --resume refuses with a clear message.
    again = _sweep(tmp_path / "res", "s", "--trials", "2")
    assert again.returncode == 2 and "--resume" in again.stderr


def test_sigkill_then_resume_then_extend(tmp_path):
    store = ResultStore(str(tmp_path))
    cmd = [
        sys.executable,
        SCRIPT,
        "--smoke",
        "--storage",
        str(tmp_path),
        "--name",
        "k",
        "--trials",
        "4",
        "--max-concurrent",
        "1",
    ]
    log = open(tmp_path / "first.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        cmd, env=ENV, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    t0 = time.time()
    # Kill once one trial finished and another one has started. A trial's record is marked
    # finished just after its row is written, so a record of a trial that has a row is not
    # "another one started": count only records without a row.
    while time.time() - t0 < 300:
        done = set(store.keys("trials", "k"))
        if done and set(store.pending("k")) - done:
            break
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    log.close()
    before = store.read("trials", "k")
    assert 1 <= len(before) < 4 and set(store.pending("k")) - set(before["trial_id"])
    out = _sweep(tmp_path, "k", "--trials", "4", "--max-concurrent", "1", "--resume")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "to continue" in out.stdout
    _check_consistent(store, "k", 4)
    after = store.read("trials", "k").set_index("trial_id")
    for _, row in before.iterrows():  # finished trials are kept as they were
        assert after.loc[row["trial_id"], "wall_s"] == row["wall_s"]
    # Extending a finished sweep: 2 more trials, none repeated.
    out = _sweep(tmp_path, "k", "--trials", "6", "--max-concurrent", "1", "--resume")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    _check_consistent(store, "k", 6)
    # Asking for no more than is finished runs nothing.
    out = _sweep(tmp_path, "k", "--trials", "6", "--resume")
    assert out.returncode == 0 and "nothing to run" in out.stdout


@pytest.mark.slow
def test_worker_node_killed_mid_sweep_every_trial_completes(tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        store = ResultStore(str(tmp_path))
        cmd = [
            sys.executable,
            SCRIPT,
            "--smoke",
            "--epochs",
            "2",
            "--storage",
            str(tmp_path),
            "--name",
            "m",
            "--trials",
            "4",
            "--address",
            cluster.address,
            "--no-early-stop",
        ]
        log = open(tmp_path / "run.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        t0 = time.time()
        while time.time() - t0 < 300 and not store.keys("checkpoints", "m"):
            assert proc.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            time.sleep(0.2)
        cluster.remove_node(workers[0], allow_graceful=False)  # a node dies mid-trial
        assert proc.wait(timeout=600) == 0, (tmp_path / "run.log").read_text()[-3000:]
        log.close()
        _check_consistent(store, "m", 4)
        assert set(store.read("trials", "m")["status"]) == {"completed"}
        text = (tmp_path / "run.log").read_text()
        assert "errored" in text or "Error" in text, "the killed node should have failed a trial"
    finally:
        cluster.shutdown()


@pytest.mark.slow
def test_ctrl_c_prints_the_resume_command_and_loses_nothing(tmp_path):
    store = ResultStore(str(tmp_path))
    cmd = [
        sys.executable,
        SCRIPT,
        "--smoke",
        "--storage",
        str(tmp_path),
        "--name",
        "i",
        "--trials",
        "3",
        "--max-concurrent",
        "1",
    ]
    proc = subprocess.Popen(
        cmd,
        env=ENV,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    t0 = time.time()
    while time.time() - t0 < 300 and not store.keys("trials", "i"):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1
    assert "--resume" in err.splitlines()[-1] and "nothing is lost" in err
    assert set(store.read("trials", "i")["status"]) == {"completed"}  # the interrupted one is not "pruned"
    resumed = subprocess.run(
        [*cmd, "--resume"], env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=400
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _check_consistent(store, "i", 3)
