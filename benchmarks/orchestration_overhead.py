"""Orchestration overhead of short trials, with and without actor reuse.

Runs the same smoke sweep (``sweeps/alpha.py --smoke``: real trials, each a few seconds)
twice, once reusing Ray actors between trials and once starting a fresh actor per trial,
and reads the trials' own start/finish timestamps and busy time from the Parquet results:

- span: first trial start to last trial finish (Ray's start-up is excluded);
- slot utilisation: sum of trial busy time / (span x concurrent slots);
- per-trial overhead: (span x slots - sum of busy time) / trials.

Run: ``python benchmarks/orchestration_overhead.py [--trials 8] [--slots 2] [--json]``.
The figures in docs/benchmarks.md come from this command.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from orchestrator.storage import ResultStore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(reuse: bool, trials: int, slots: int) -> dict[str, float]:
    storage = tempfile.mkdtemp(prefix="jiio-orch-")
    cmd = [
        sys.executable,
        os.path.join(ROOT, "sweeps", "alpha.py"),
        "--smoke",
        "--trials",
        str(trials),
        "--max-concurrent",
        str(slots),
        "--storage",
        storage,
        "--name",
        "bench",
    ]
    if not reuse:
        cmd.append("--no-reuse-actors")
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    total = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"sweep failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    df = ResultStore(storage).read("trials", "bench")
    span = float(df["finished_at"].max() - df["started_at"].min())
    busy = float(df["wall_s"].sum())
    return {
        "reuse_actors": reuse,
        "trials": len(df),
        "slots": slots,
        "command_s": round(total, 2),
        "span_s": round(span, 2),
        "busy_s": round(busy, 2),
        "mean_trial_s": round(busy / len(df), 2),
        "slot_utilisation": round(busy / (span * slots), 3),
        "overhead_per_trial_s": round((span * slots - busy) / len(df), 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--slots", type=int, default=2)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.trials < 1 or args.slots < 1:
        p.error("--trials and --slots must be >= 1")
    rows = [measure(reuse, args.trials, args.slots) for reuse in (True, False)]
    if args.json:
        print(json.dumps(rows))
        return
    keys = list(rows[0])
    print("  ".join(f"{k:>20s}" for k in keys))
    for r in rows:
        print("  ".join(f"{r[k]!s:>20s}" for k in keys))


if __name__ == "__main__":
    main()
