"""The Ray cluster launcher path of ``cluster/gpu.yaml``, end to end on one machine.

The slow test runs what a user runs against AWS (``ray up``, ``ray submit`` of
``sweeps/alpha.py`` with no ``--storage`` or ``--gpus-per-trial``, ``ray down``) on a
config derived from ``cluster/gpu.yaml``: the local provider over ``sshd -i``, GPU workers
from Ray's fake multi-node provider on the head's autoscaler, moto's S3 server as the
bucket, all inside private namespaces (``tests/cluster/launcher_harness.py`` says how and
why). It checks the results in the bucket: a 3-trial sweep on autoscaled GPU workers; a
sweep that loses a worker mid-trial and still ends with its 3 trials, none lost or
duplicated; after ``ray down`` and a fresh ``ray up``, ``--resume --trials 4`` from the
bucket alone, the first 3 rows unchanged. Each step's time is printed (``pytest -s``).

Not covered: ``worker_setup_commands`` and file mounts on workers (fake nodes share the
head's files and Python, and run no setup), the network commands of ``setup_commands``
(replaced, see :func:`launcher_harness.offline_commands`), a real GPU, EC2 itself.

The fast test checks the derived configs offline with Ray's own validation.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.cluster import launcher_harness as harness

TIMEOUT_S = 1200  # measured: about 5 minutes on 2 cores


def _derived(config: str = "gpu.yaml"):
    source = harness.load_source(harness.ROOT / "cluster" / config)
    cfg, replaced = harness.derive_config(
        source,
        cluster_name="jiio-sweeps-local-test",
        ssh_user="root",
        ssh_key="/nonexistent/id_ed25519",
        proxy_command="/usr/sbin/sshd -i -f /nonexistent/sshd_config",
        fake_config_local="/nonexistent/fake_autoscale.yaml",
        storage="s3://bucket/jiio",
    )
    return source, cfg, replaced, harness.fake_autoscale_config(source, "jiio-sweeps-local-test")


@pytest.mark.parametrize("config", ["gpu.yaml", "gpu-gcp.yaml"])
def test_derived_configs_keep_the_cluster_config_and_pass_rays_validation(config):
    from ray.autoscaler._private.util import prepare_config, validate_config

    source, cfg, replaced, fake = _derived(config)
    validate_config(prepare_config(cfg))  # what `ray up` does with it, before any ssh
    validate_config(fake)
    # Kept from gpu.yaml: what is synced and how.
    for key in ("rsync_exclude", "rsync_filter", "cluster_synced_files", "initialization_commands"):
        assert cfg[key] == source.get(key, []), key
    assert source["file_mounts"].items() <= cfg["file_mounts"].items()
    # Every command that needs no network is kept verbatim and in order; no pip reaches an index.
    for key in ("setup_commands", "head_setup_commands"):
        offline = [c for c in source.get(key, []) if "pip install" not in " ".join(c.split())]
        assert [c for c in cfg[key] if c in offline] == offline, key
        for c in cfg[key]:
            flat = " ".join(c.split())
            assert "pip install" not in flat or "--no-index --dry-run" in flat, c
    assert {r["command"].split(" ")[0] for r in replaced} <= {"pip", "python"}
    assert len(replaced) == sum(
        "pip install" in " ".join(c.split())
        for k in ("setup_commands", "head_setup_commands")
        for c in source.get(k, [])
    )
    # The head's autoscaler is the fake one; the rest of gpu.yaml's head start is kept.
    start = " ".join(cfg["head_start_ray_commands"])
    assert "RAY_FAKE_CLUSTER=1" in start and f"--autoscaling-config={harness.FAKE_CONFIG_REMOTE}" in start
    assert "ray_bootstrap_config.yaml" not in start
    for flag in ("--num-cpus=0", "--dashboard-host=127.0.0.1", "--port=6379"):
        assert flag in start
    assert cfg["metadata"]["jiio"] == {"storage": "s3://bucket/jiio", "gpus_per_trial": 0.25}
    # The fake autoscaler offers gpu.yaml's worker types with their resources.
    workers = {n: t for n, t in source["available_node_types"].items() if n != source["head_node_type"]}
    assert workers and set(workers) < set(fake["available_node_types"])
    for name, spec in workers.items():
        assert fake["available_node_types"][name]["resources"] == spec["resources"]
    head = fake["available_node_types"][fake["head_node_type"]]
    assert head["resources"] == source["available_node_types"][source["head_node_type"]]["resources"]
    assert fake["idle_timeout_minutes"] == source["idle_timeout_minutes"]


def _times(result: dict) -> str:
    return "\n".join(f"  {k:<48} {v:7.1f} s" for k, v in result.get("times", {}).items())


def _no_duplicates(tables: Path, label: str, n: int) -> None:
    """Exactly ``n`` trial rows and no step row twice, counted file by file (the store's
    reader would hide duplicates)."""
    trials = pd.read_parquet(tables / f"{label}-trials-raw.parquet")
    assert len(trials) == n and trials["trial_id"].nunique() == n, trials[["trial_id", "status", "_file"]]
    steps = pd.read_parquet(tables / f"{label}-steps-raw.parquet")
    assert set(steps["trial_id"]) == set(trials["trial_id"]), "a trial without step rows, or rows of no trial"
    dup = steps[steps.duplicated(["trial_id", "step", "phase"], keep=False)]
    assert dup.empty, f"{label}: duplicated step rows:\n{dup[['trial_id', 'step', 'phase', '_file']]}"


def _every_epoch_once(trials: pd.DataFrame, steps: pd.DataFrame, label: str) -> None:
    """Each trial has one eval row for each of its epochs 1..epochs, and train steps 1..N without gaps."""
    for _, row in trials.iterrows():
        mine = steps[steps["trial_id"] == row["trial_id"]]
        evals = sorted(mine.loc[mine["phase"] == "eval", "epoch"])
        assert evals == list(range(1, int(row["epochs"]) + 1)), (
            f"{label} {row['trial_id']}: eval epochs {evals}"
        )
        train = sorted(mine.loc[mine["phase"] == "train", "step"])
        assert train == list(range(1, len(train) + 1)), f"{label} {row['trial_id']}: train steps {train}"


@pytest.mark.slow
def test_ray_up_submit_kill_a_worker_down_up_resume(tmp_path):
    reason = harness.missing_prerequisites()
    if reason:
        pytest.skip(reason)
    out = tmp_path / "launcher"
    cmd = [*harness.unshare_command(), sys.executable, harness.__file__, "--out", str(out)]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    took = time.monotonic() - t0
    result = json.loads((out / "result.json").read_text()) if (out / "result.json").exists() else {}
    print(f"\nlauncher test, {took:.0f} s in all (logs in {out / 'logs'}):\n{_times(result)}")
    assert proc.returncode == 0 and result.get("ok"), (
        "\n".join(result.get("errors", []))
        + "\n--- harness output ---\n"
        + proc.stdout[-4000:]
        + proc.stderr[-4000:]
    )
    check_run(out, result)


def check_run(out: Path, result: dict) -> None:
    """The assertions on one harness run's output directory (callable on a kept one)."""
    logs = {s["name"]: Path(s["log"]).read_text(errors="replace") for s in result["steps"]}
    tables = out / "tables"

    # 1. The sweep took its storage and GPUs per trial from the cluster config, not from flags.
    for name in ("submit-launcher", "submit-kill", "submit-resume"):
        step = next(s for s in result["steps"] if s["name"] == name)
        assert "--storage" not in step["cmd"] and "--gpus-per-trial" not in step["cmd"]
        line = next((ln for ln in logs[name].splitlines() if ln.startswith("settings:")), None)
        assert line is not None, f"{name}: no settings line:\n{logs[name][-3000:]}"
        assert f"storage='{result['storage']}' (cluster " in line, line
        assert "gpus_per_trial=0.25 (cluster " in line and "ray_bootstrap_config.yaml" in line, line
    assert result["bootstrap_metadata"]["first"]["jiio"]["gpus_per_trial"] == 0.25

    # 2. Three trials, on autoscaled fake GPU workers (the head offers CPU 0: no trial runs there).
    first = pd.read_parquet(tables / "launcher-trials.parquet")
    assert len(first) == 3 and first["trial_id"].is_unique, first[["trial_id", "status"]]
    assert set(first["status"]) == {"completed"}, first[["trial_id", "status", "error"]]
    _no_duplicates(tables, "launcher", 3)
    cluster = result["cluster"]
    workers = {
        t
        for t in harness.fake_autoscale_config(harness.load_source(), "x")["available_node_types"]
        if t != harness.FAKE_HEAD_TYPE
    }
    assert cluster["launcher"]["launched"] and {t for _, t in cluster["launcher"]["launched"]} <= workers, (
        cluster["launcher"]["monitor_tail"]
    )
    assert any(t in cluster["launcher"]["ray_status"] for t in workers), cluster["launcher"]["ray_status"]

    # 3. A worker killed mid-trial: the sweep still ends with its 3 trials, none lost or duplicated.
    kill = result["kill"]
    assert kill["raylets"] == 1 and kill["busy_workers"] >= 1, kill
    assert not kill["trials_at_kill"], "the kill landed after a trial had finished"
    killed = pd.read_parquet(tables / "kill-trials.parquet")
    assert len(killed) == 3 and killed["trial_id"].is_unique, killed[["trial_id", "status"]]
    assert set(killed["status"]) == {"completed"}, killed[["trial_id", "status", "error"]]
    assert (killed["attempts"] >= 2).any(), killed[["trial_id", "attempts"]]  # a trial ran again
    _no_duplicates(tables, "kill", 3)
    _every_epoch_once(killed, pd.read_parquet(tables / "kill-steps-raw.parquet"), "kill")
    assert kill["node"] not in kill["nodes_after"], "the killed node is still running"
    assert len(cluster["kill"]["launched"]) > len(cluster["launcher"]["launched"]), "no replacement worker"
    assert not result["stores"]["kill"]["checkpoints"]  # finished trials leave no checkpoint
    assert set(result["stores"]["kill"]["records"].values()) == {"finished"}

    # 4. ray down, a fresh ray up, --resume --trials 4 from the bucket alone.
    after = pd.read_parquet(tables / "resume-trials.parquet")
    assert len(after) == 4 and after["trial_id"].is_unique, after[["trial_id", "status"]]
    assert set(after["status"]) == {"completed"}, after[["trial_id", "status", "error"]]
    assert set(first["trial_id"]) < set(after["trial_id"])
    cols = list(first.columns)
    old = first.set_index("trial_id").sort_index()
    new = after.set_index("trial_id").loc[old.index, [c for c in cols if c != "trial_id"]]
    pd.testing.assert_frame_equal(new, old[new.columns], check_dtype=False)
    assert "3 finished, 0 to continue" in logs["submit-resume"] and "1 new" in logs["submit-resume"]
    _no_duplicates(tables, "resume", 4)
    assert result["cluster"]["resume"]["launched"], "the fresh cluster launched no GPU worker"
