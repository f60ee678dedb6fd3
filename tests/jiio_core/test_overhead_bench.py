"""benchmarks/jiio_overhead.py runs and reports what docs/benchmarks.md quotes (a smoke run)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "jiio_overhead.py"


def test_overhead_bench_reports_wall_cpu_load_and_the_history_floor(capsys):
    spec = importlib.util.spec_from_file_location("jiio_overhead", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.main(["--size", "tiny", "--batch", "2", "--iters", "3", "--reps", "1", "--mixer", "--json"])
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(out))
    names = {"f+vjp", "jiio/anderson(m=20,I)", "jiio/anderson(m=5,II)", "jiio/fixed_point"}
    assert names <= set(out["ms_per_iter"]) and names <= set(out["cpu_ms_per_iter"])
    assert set(out["overhead_pct"]) == set(out["cpu_overhead_pct"]) == set(out["ms_per_iter"]) - {"f+vjp"}
    assert len(out["loadavg_before"]) == len(out["loadavg_after"]) == 3
    D = out["state_per_sample"]
    assert D == 2 * (8 * 16 * 16 + 16 * 8 * 8) + 16 * 16  # tiny: z and mu (8@16^2 + 16@8^2), x 1@16^2
    for mx in out["mixer"]:
        floor = 2 * mx["m"] * D * 2 * 4  # two reads of the float32 history, batch 2
        assert mx["floor_bytes"] == floor
        reads = (3 if mx["kind"] == "I" else 2) * mx["m"] * D * 2 * 4
        assert reads < mx["bytes_read"] < reads + 8 * D * 2 * 4  # the passes plus a few vectors
