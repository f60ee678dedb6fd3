"""Local storage that not every node sees is refused before any trial runs.

The worker node here runs in its own mount namespace with a tmpfs over the test's
directory: a real second disk, as a worker of a cluster without a shared mount has.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.storage import StorageNotSharedError, assert_marker

ROOT = Path(__file__).resolve().parents[3]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "JIIO_GIT_SHA": "test"}


def test_a_trial_on_a_node_without_the_driver_files_fails_with_the_reason(tmp_path):
    marker = tmp_path / "locks" / "marker"
    assert_marker(str(tmp_path), None)  # object storage: nothing to check
    with pytest.raises(StorageNotSharedError, match=r"not the same directory on every node.*s3://"):
        assert_marker(str(tmp_path), str(marker))
    marker.parent.mkdir()
    marker.write_text("x")
    assert_marker(str(tmp_path), str(marker))


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare for a private mount"
)
def test_a_node_with_its_own_disk_is_named_and_no_trial_runs(tmp_path):
    from ray.cluster_utils import Cluster

    ray_bin = str(Path(sys.executable).parent / "ray")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = None
    try:
        # The worker node sees an empty tmpfs where the driver's storage directory is.
        worker = subprocess.Popen(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                f"mount -t tmpfs tmpfs {tmp_path} && exec {ray_bin} start --address={cluster.address} "
                "--num-cpus=1 --block --disable-usage-stats",
            ],
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import ray

        ray.init(address=cluster.address)
        t0 = time.time()
        while len([n for n in ray.nodes() if n["Alive"]]) < 2:
            assert time.time() - t0 < 60 and worker.poll() is None, "the worker node did not join"
            time.sleep(0.5)
        ray.shutdown()
        storage = tmp_path / "res"
        cmd = [
            sys.executable,
            str(ROOT / "sweeps" / "alpha.py"),
            "--smoke",
            "--trials",
            "2",
            "--address",
            cluster.address,
            "--storage",
            str(storage),
            "--gpus-per-trial",
            "0",
            "--name",
            "s",
        ]
        out = subprocess.run(cmd, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
        last = out.stderr.strip().splitlines()[-1]
        assert "is not the same directory on every node" in last and "does not see the driver's files" in last
        assert not (storage / "trials").exists() and not (storage / "pending").exists()  # no trial ran
        assert not list((storage / "locks").rglob("shared-*"))  # the marker is cleaned up
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=30)
        cluster.shutdown()
