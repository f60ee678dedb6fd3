"""The README's "JIIO against PGD and Adam, on your own model" block, run as written.

Each command of the block runs in a fresh directory exactly as the README gives it, with
only size flags appended (argparse keeps the last value of a repeated flag, so these
shrink the run without changing its path): fewer epochs and steps, fewer samples, fewer
trials. ``.venv/bin/`` is this interpreter's directory, and ``sweeps/`` and
``benchmarks/`` are the checkout's.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

SMALL_BENCH = [
    "--samples",
    "16",
    "--batch",
    "8",
    "--reps",
    "1",
    "--pgd-steps",
    "2",
    "--jiio-iters",
    "4",
    "--quiet",
]
SMALL = {
    "jiio train": [
        "--epochs",
        "1",
        "--max-steps-per-epoch",
        "2",
        "--set",
        "eval_batches=1",
        "--set",
        "pgd_steps=2",
    ],
    "jiio bench": SMALL_BENCH,
    "sweeps/solver.py": ["--trials", "2", "--smoke"],
    "benchmarks/solver_front.py": ["--top", "2"],  # its bench flags follow "--"
}


def _block() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## JIIO against PGD and Adam, on your own model", 1)[1]
    body = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split(" # ")[0].strip() for line in body.splitlines() if line.strip()]


def _argv(line: str) -> list[str]:
    argv = shlex.split(line)
    argv[0] = argv[0].replace(".venv/bin/", f"{BIN}/")
    argv = [str(REPO / a) if a.startswith(("sweeps/", "benchmarks/")) else a for a in argv]
    for key, extra in SMALL.items():
        if key in line:
            if "--" in argv:
                i = argv.index("--")
                argv = [*argv[:i], *extra, *argv[i:], *SMALL_BENCH]
            else:
                argv = [*argv, *extra]
    return argv


def test_the_block_is_what_this_test_runs():
    lines = _block()
    assert [next(k for k in SMALL if k in line) for line in lines] == list(SMALL)


@pytest.mark.slow
def test_readme_bench_block_runs_as_written(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    outs = []
    for line in _block():
        proc = subprocess.run(_argv(line), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{line}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        outs.append(proc.stdout)
    assert (tmp_path / "models" / "adv-pgd.pt").is_file()  # jiio train made models/
    assert "adversarial-fast" in outs[1] and (tmp_path / "bench_attack.png").is_file()
    assert "2/2 trials finished" in outs[2]
    front = json.loads((tmp_path / "front.json").read_text())
    assert front["front"] and all(f["label"] in front["versus"] for f in front["front"])
    assert (tmp_path / "front.png").is_file()
