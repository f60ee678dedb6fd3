"""Sweeps on object storage, end to end, against a real S3 API (moto's server on loopback):
a smoke sweep, SIGKILL + --resume, a worker node lost mid-trial, and `jiio analyze s3://`,
with the same integrity checks as on a local directory. Ray Tune's own experiment state
goes to the bucket too (``<storage>/ray``)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from orchestrator.storage import ResultStore
from tests.orchestrator.test_faults import _check, _snapshot

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = str(ROOT / "sweeps" / "alpha.py")


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "RAY_DEDUP_LOGS": "0", "JIIO_GIT_SHA": "test"}


def _cmd(storage, name, *extra):
    return [
        sys.executable,
        SCRIPT,
        "--smoke",
        "--storage",
        storage,
        "--name",
        name,
        "--gpus-per-trial",
        "0",
        *extra,
    ]


def test_a_sweep_on_s3_then_analyze_it(s3_bucket, tmp_path):
    storage = f"{s3_bucket}/jiio"
    out = subprocess.run(
        _cmd(storage, "s", "--trials", "2"),
        env=_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "settings: storage='s3://" in out.stdout and "(flag)" in out.stdout
    store = ResultStore(storage)
    _check(store, "s", 2, {})
    assert not any(tmp_path.iterdir()), "a local file was written next to the driver"
    # The closing analysis put its report and plots in the bucket, beside the results.
    assert f"report: {storage}/analysis/s/s-report.html" in out.stdout
    assert store.fs.get_file_info(f"{store.base}/analysis/s/s-report.html").type == pafs.FileType.File
    # Ray Tune's experiment state is in the bucket as well.
    infos = store.fs.get_file_info(pafs.FileSelector(f"{store.base}/ray", recursive=True))
    assert any(i.base_name.startswith("experiment_state") for i in infos)
    ana = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "analyze",
            storage,
            "--name",
            "s",
            "--out",
            str(tmp_path / "plots"),
        ],
        env=_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ana.returncode == 0, ana.stdout[-2000:] + ana.stderr[-2000:]
    assert "robust_acc" in ana.stdout


@pytest.mark.slow
def test_sigkill_and_resume_on_s3(s3_bucket, tmp_path):
    storage, name = f"{s3_bucket}/jiio", "k"
    store = ResultStore(storage)
    extra = ("--trials", "4", "--max-concurrent", "1", "--epochs", "2", "--no-early-stop")
    log = open(tmp_path / "first.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        _cmd(storage, name, *extra),
        env=_env(),
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    t0 = time.time()

    def mid_way():  # one trial done, another with a checkpoint and no row yet
        done = set(store.keys("trials", name))
        return done and set(store.keys("checkpoints", name)) - done

    while not mid_way():
        assert time.time() - t0 < 400 and proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        time.sleep(0.3)
    kept = _snapshot(store, name)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    log.close()
    time.sleep(1)
    out = subprocess.run(
        _cmd(storage, name, *extra, "--resume"),
        env=_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    plan = next(line for line in out.stdout.splitlines() if line.startswith(f"sweep {name}: "))
    # The killed driver's trial may live on for seconds (Ray's workers outlast their driver)
    # and finish before the resume starts; after the resume takes the lock it cannot write.
    found = re.search(r"(\d+) finished, (\d+) to continue", plan)
    assert found and int(found[1]) + int(found[2]) == 2 and int(found[2]) <= 1, plan
    _check(store, name, 4, kept)


@pytest.mark.slow
def test_a_worker_node_lost_mid_trial_on_s3(s3_bucket, tmp_path):
    from ray.cluster_utils import Cluster

    storage, name = f"{s3_bucket}/jiio", "m"
    store = ResultStore(storage)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        cmd = _cmd(
            storage, name, "--epochs", "2", "--trials", "4", "--address", cluster.address, "--no-early-stop"
        )
        log = open(tmp_path / "run.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        t0 = time.time()
        while not store.keys("checkpoints", name):
            assert time.time() - t0 < 400 and proc.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            time.sleep(0.3)
        kept = _snapshot(store, name)
        cluster.remove_node(workers[0], allow_graceful=False)  # a node dies mid-trial
        assert proc.wait(timeout=600) == 0, (tmp_path / "run.log").read_text()[-3000:]
        log.close()
        trials = _check(store, name, 4, kept)
        assert set(trials["status"]) == {"completed"}
        assert (trials["attempts"] >= 2).any(), "the killed node's trial should show a second attempt"
    finally:
        cluster.shutdown()
