"""benchmarks/gpu_check.sh on the CPU, quick sizes (slow): every step runs, the JSON has
every step's exit code, time and parsed result; on a machine without CUDA the CUDA tests
skip and the graph step says why it did not run. The GPU run itself is not tested here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_quick_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["ok"] is True and data["device_asked"] == "cpu" and data["quick"] is True
    steps = data["steps"]
    assert list(steps) == ["env", "cuda_tests", "graph", "overhead", "bench"]
    for name, s in steps.items():
        assert s["ran"] and s["rc"] == 0 and not s["timed_out"] and s["seconds"] >= 0, name
    junit = steps["cuda_tests"]["junit"]
    assert junit["tests"] > 0 and junit["failures"] == junit["errors"] == 0
    if not torch.cuda.is_available():
        assert junit["skipped"] == junit["tests"]
        assert steps["graph"]["result"]["graph"].startswith("not run: ValueError")
    assert steps["graph"]["result"]["eager_objective"] < 0  # the negated cross-entropy
    overhead = steps["overhead"]["result"]
    assert overhead is not None
    bench = steps["bench"]["result"]
    assert bench["config"]["dataset"] == "synthetic-mnist" and bench["within_eps"] is True
    assert bench["baseline_rows"][0]["label"] == "pgd-cold-s0.6"
    assert {"loss", "margin", "accuracy"} == set(bench["speed_ratio_vs_fastest_baseline"])


def test_gpu_check_rejects_bad_arguments(tmp_path):
    for argv in (["--device", "tpu"], ["--frobnicate"]):
        proc = subprocess.run(
            ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), *argv],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
        assert proc.returncode == 2 and "gpu_check.sh:" in proc.stderr
