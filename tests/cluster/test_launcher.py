"""The Ray cluster launcher path of ``cluster/gpu.yaml``, end to end on one machine.

The slow test runs what a user runs against AWS (``ray up``, ``ray submit CONFIG
sweeps/alpha.py`` with no arguments, ``ray down``) on a config derived from
``cluster/gpu.yaml``: the local provider over ``sshd -i``, GPU workers from Ray's fake
multi-node provider on the head's autoscaler, moto's S3 server as the bucket, all inside
private namespaces (``tests/cluster/launcher_harness.py`` says how and why). The derived
config keeps ``gpu.yaml``'s ``metadata.jiio`` (``model_size: paper`` included) with the
moto bucket as storage, plus ``trial_limits`` (2 training steps per epoch, 1 evaluation
batch) so that paper-size trials fit a CPU. It checks the results in the bucket: the
default 6-trial sweep on autoscaled GPU workers, paper-size, TaskConfig's 2 epochs, at
least one trial completed, its analysis and HTML report in the bucket and no result file
on local disks; a smoke sweep that loses a worker mid-trial and still ends with its 3
trials, none lost or duplicated; after ``ray down`` and a fresh ``ray up``, ``--resume
--trials 7`` of the default sweep from the bucket alone, the first 6 rows unchanged.
Each step's time is printed (``pytest -s``), ``ray up``'s hashing of ``file_mounts``
among them.

Not covered: ``worker_setup_commands`` and file mounts on workers (fake nodes share the
head's files and Python, and run no setup), the network commands of ``setup_commands``
(replaced, see :func:`launcher_harness.offline_commands`), a real GPU, EC2 itself.

The fast test checks the derived configs offline with Ray's own validation.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from orchestrator.driver.cluster_settings import ClusterSettings
from tests.cluster import launcher_harness as harness

TIMEOUT_S = 2400  # measured: 13-17 minutes on a shared 2-core machine under load (cluster/README.md)


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
        trial_limits=harness.TRIAL_LIMITS,
    )
    return source, cfg, replaced, harness.fake_autoscale_config(source, "jiio-sweeps-local-test")


@pytest.mark.parametrize("config", ["gpu.yaml", "gpu-gcp.yaml"])
def test_derived_configs_keep_the_cluster_config_and_pass_rays_validation(config, tmp_path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    source, cfg, replaced, fake = _derived(config)
    validate_config(prepare_config(cfg))  # what `ray up` does with it, before any ssh
    validate_config(fake)
    # Kept from gpu.yaml: what is synced and how.
    for key in ("rsync_exclude", "rsync_filter", "cluster_synced_files", "initialization_commands"):
        assert cfg[key] == source.get(key, []), key
    assert source["file_mounts"].items() <= cfg["file_mounts"].items()
    # Parts of the repository, never its root: `ray up` hashes all under each source (.venv too).
    for remote, local in source["file_mounts"].items():
        assert remote.startswith("~/jiio/") and local not in (".", "./", ""), (remote, local)
        assert (harness.ROOT / local).exists(), local
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
    # gpu.yaml's cluster settings (model size paper, data root) with the test bucket and the
    # trial limits; the sweep's own reader accepts them.
    assert cfg["metadata"]["jiio"] == {
        **source["metadata"]["jiio"],
        "storage": "s3://bucket/jiio",
        "gpus_per_trial": 0.25,
        "trial_limits": harness.TRIAL_LIMITS,
    }
    assert cfg["metadata"]["jiio"]["model_size"] == "paper"
    path = tmp_path / "derived.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert ClusterSettings.load(str(path)).values == cfg["metadata"]["jiio"]
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


def _settings_line(log: str) -> str | None:
    """The sweep's ``settings:`` line, unwrapped: the console wraps it at 80 columns, its
    continuation lines indented."""
    lines = log.splitlines()
    for i, ln in enumerate(lines):
        if ln.startswith("settings:"):
            parts = [ln.rstrip()]
            for more in lines[i + 1 :]:
                if not more.startswith(" "):
                    break
                parts.append(more.strip())
            return " ".join(parts)
    return None


def check_run(out: Path, result: dict) -> None:
    """The assertions on one harness run's output directory (callable on a kept one)."""
    logs = {s["name"]: Path(s["log"]).read_text(errors="replace") for s in result["steps"]}
    tables = out / "tables"

    # 1. Every sweep took its storage and GPUs per trial from the cluster config, not from flags;
    #    the default sweep is the command as typed, everything from metadata.jiio.
    default = next(s for s in result["steps"] if s["name"] == "submit-default")
    assert default["cmd"] == shlex.join(["ray", "submit", result["config"], harness.SCRIPT]), default["cmd"]
    for name in ("submit-default", "submit-kill", "submit-resume"):
        step = next(s for s in result["steps"] if s["name"] == name)
        assert "--storage" not in step["cmd"] and "--gpus-per-trial" not in step["cmd"]
        line = _settings_line(logs[name])
        assert line is not None, f"{name}: no settings line:\n{logs[name][-3000:]}"
        assert f"storage='{result['storage']}' (cluster " in line, line
        assert "gpus_per_trial=0.25 (cluster " in line and "ray_bootstrap_config.yaml" in line, line
        assert f"trial_limits={harness.TRIAL_LIMITS!r} (cluster " in line, line
    for name in ("submit-default", "submit-resume"):
        assert "model_size='paper' (cluster " in (_settings_line(logs[name]) or "")
    meta = result["bootstrap_metadata"]["first"]["jiio"]
    assert meta["gpus_per_trial"] == 0.25 and meta["model_size"] == "paper"
    assert meta["trial_limits"] == harness.TRIAL_LIMITS

    # 2. The default sweep: 6 paper-size trials of TaskConfig's 2 epochs on autoscaled fake GPU
    #    workers (the head offers CPU 0), at least one completed (ASHA's max_t is the trials'
    #    epochs); its analysis and report in the bucket, nothing on local disks.
    n = harness.DEFAULT_TRIALS
    first = pd.read_parquet(tables / "default-trials.parquet")
    assert len(first) == n and first["trial_id"].is_unique, first[["trial_id", "status"]]
    assert set(first["status"]) <= {"completed", "pruned"}, first[["trial_id", "status", "error"]]
    done = first[first["status"] == "completed"]
    assert len(done), f"no trial completed:\n{first[['trial_id', 'status', 'epochs']]}"
    assert (done["epochs"] == 2).all(), done[["trial_id", "epochs"]]
    for col, value in {"model_size": "paper", **harness.TRIAL_LIMITS}.items():
        if col in first:
            assert (first[col] == value).all(), first[["trial_id", col]]
    _no_duplicates(tables, "default", n)
    _every_epoch_once(done, pd.read_parquet(tables / "default-steps-raw.parquet"), "default")
    analysis = result["analysis"]["default"]
    assert f"{harness.DEFAULT_SWEEP}-report.html" in analysis and any(f.endswith(".png") for f in analysis), (
        analysis,
        logs["submit-default"][-3000:],
    )
    assert f"{result['storage']}/analysis/{harness.DEFAULT_SWEEP}/" in logs["submit-default"]
    assert result["local_outputs"] == {"default": [], "resume": []}, result["local_outputs"]
    cluster = result["cluster"]
    workers = {
        t
        for t in harness.fake_autoscale_config(harness.load_source(), "x")["available_node_types"]
        if t != harness.FAKE_HEAD_TYPE
    }
    assert cluster["default"]["launched"] and {t for _, t in cluster["default"]["launched"]} <= workers, (
        cluster["default"]["monitor_tail"]
    )
    assert any(t in cluster["default"]["ray_status"] for t in workers), cluster["default"]["ray_status"]

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
    # The retried trials finished elsewhere: on a replacement worker, or on the other worker the
    # default sweep left up (idle_timeout_minutes keeps it), whichever the autoscaler had.
    retried = killed[killed["attempts"] >= 2]
    assert kill["node"] not in set(retried["node_id"]), retried[["trial_id", "node_id"]]
    assert set(retried["node_id"]) <= set(kill["nodes_after"]), (retried["node_id"], kill["nodes_after"])
    assert not result["stores"]["kill"]["checkpoints"]  # finished trials leave no checkpoint
    assert set(result["stores"]["kill"]["records"].values()) == {"finished"}

    # 4. ray down, a fresh ray up, --resume --trials 7 of the default sweep from the bucket alone.
    after = pd.read_parquet(tables / "resume-trials.parquet")
    assert len(after) == n + 1 and after["trial_id"].is_unique, after[["trial_id", "status"]]
    assert set(after["status"]) <= {"completed", "pruned"}, after[["trial_id", "status", "error"]]
    assert set(first["trial_id"]) < set(after["trial_id"])
    cols = list(first.columns)
    old = first.set_index("trial_id").sort_index()
    new = after.set_index("trial_id").loc[old.index, [c for c in cols if c != "trial_id"]]
    pd.testing.assert_frame_equal(new, old[new.columns], check_dtype=False)
    assert f"{n} finished, 0 to continue" in logs["submit-resume"] and "1 new" in logs["submit-resume"]
    _no_duplicates(tables, "resume", n + 1)
    assert result["cluster"]["resume"]["launched"], "the fresh cluster launched no GPU worker"
    assert f"{harness.DEFAULT_SWEEP}-report.html" in result["analysis"]["resume"]
    # Ray's hashing of file_mounts within `ray up`: the mounts hold no virtualenv, so it is quick
    # even with the multi-GB .venv inside the repository (recorded in the times).
    for label in ("first", "fresh"):
        assert result["times"][f"ray up ({label}): hashing file_mounts"] < 5, result["times"]
