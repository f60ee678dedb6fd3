"""benchmarks/solver_front.py: a solver sweep's Pareto front, re-measured by the bench.

The front is written with the ResultStore as ``sweep_state.record_pareto`` writes it; the
checkpoint comes from ``jiio train``. The numbers are meaningless (tiny model, few steps):
what is tested is that every picked front row runs as a labelled bench variant with exactly
its searched settings, and that the outputs are written.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from jiio_core import JIIOConfig
from orchestrator import cli
from orchestrator.storage import ResultStore

REPO = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location("solver_front", REPO / "benchmarks" / "solver_front.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _row(tid: str, solve_s: float, **cfg) -> dict:
    base = {"anderson_m": 5, "max_iter": 6, "alpha_z": 0.8, "alpha_mu": 0.6, "alpha_x": 0.6}
    return {"trial_id": tid, "inner_objective": -solve_s, "solve_s": solve_s, **base, **cfg}


@pytest.mark.slow  # about 2 minutes on 2 cores: a checkpoint, the bench with its baselines, a plot
def test_front_rows_run_as_labelled_variants(tmp_path, capsys):
    ckpt = tmp_path / "m.pt"
    assert (
        cli.main(
            [
                "train",
                "--task",
                "adversarial",
                "--mode",
                "clean",
                "--epochs",
                "1",
                "--max-steps-per-epoch",
                "2",
                "--set",
                "eval_batches=1",
                "--set",
                "pgd_steps=2",
                "--set",
                "max_iter=4",
                "--quiet",
                "--out",
                str(ckpt),
            ]
        )
        == 0
    )
    store = ResultStore(str(tmp_path / "results"))
    rows = [
        _row("a", 1.0, max_iter=3, init="zero", anderson_type="I"),
        _row("b", 2.0, anderson_m=2, alpha_x=0.25, init="cell_step", anderson_type="II"),
        _row("c", 3.0, max_iter=5, init="zero", anderson_type="II"),
    ]
    store.write("pareto", "s", "front", rows)
    # the sweep's stored baseline reference (sweeps/solver.py): mean -CE and time per step
    ref = {
        "baselines": {"pgd-x": {"seconds": [0.0, 0.5, 2.5, 6.0], "inner_objective": [0.0, -1.0, -2.0, -3.0]}}
    }
    (tmp_path / "results" / "baselines").mkdir()
    (tmp_path / "results" / "baselines" / "s.json").write_text(json.dumps(ref))
    mod = _module()
    out = tmp_path / "fig" / "front"
    bench = [
        "--batch",
        "8",
        "--samples",
        "16",
        "--reps",
        "1",
        "--pgd-steps",
        "2",
        "--jiio-iters",
        "4",
        "--baselines",  # one warm baseline at one step size beside the cold one: the plumbing, fast
        "jfb",
        "--step-sizes",
        "0.6",
        "--quiet",
    ]
    args = ["--results", str(tmp_path / "results"), "--name", "s", "--checkpoint", str(ckpt)]
    assert mod.main([*args, "--top", "2", "--out", str(out), "--", *bench]) == 0
    data = json.loads((tmp_path / "fig" / "front.json").read_text())
    assert (tmp_path / "fig" / "front.png").stat().st_size > 0
    # --top 2 over 3 rows: the fastest and the slowest, spread by solve time
    assert [f["trial_id"] for f in data["front"]] == ["a", "c"]
    by = {r["label"]: r for r in data["rows"]}
    base = JIIOConfig.paper("mnist_adversarial")
    for f, src in zip(data["front"], (rows[0], rows[2]), strict=True):
        fields = {k: src[k] for k in mod.SEARCHED}
        assert by[f["label"]]["jiio_config"] == base.replace(**fields).to_dict()
        assert f["label"] in data["versus"]
        # against the fastest baseline that reaches it, as the bench reports it
        assert f["fastest"]["loss"]["baseline"] == data["versus"][f["label"]]["fastest"]["loss"]["baseline"]
        assert set(f["fastest"]) == {"loss", "margin", "accuracy"}
    # the sweep's own estimate: a (-1.0, 1 s) reached at step 1 (0.5 s), c (-3.0, 3 s) at step 3 (6 s)
    assert data["sweep_reference"] is True
    assert data["front"][0]["sweep_vs_fastest"] == {
        "baseline": "pgd-x",
        "step": 1,
        "seconds": 0.5,
        "ratio": 0.5,
    }
    assert data["front"][1]["sweep_vs_fastest"] == {
        "baseline": "pgd-x",
        "step": 3,
        "seconds": 6.0,
        "ratio": 2.0,
    }
    assert "front-a" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("n", "top", "want"), [(3, 5, [0, 1, 2]), (5, 2, [0, 4]), (5, 3, [0, 2, 4]), (1, 4, [0])]
)
def test_front_picks_spread_over_the_front(tmp_path, n, top, want):
    store = ResultStore(str(tmp_path))
    store.write("pareto", "s", "front", [_row(f"t{i}", float(i + 1)) for i in range(n)])
    rows = _module().front_configs(str(tmp_path), "s", top)
    assert [r["trial_id"] for r in rows] == [f"t{i}" for i in want]


def test_missing_front_is_one_clear_message(tmp_path):
    mod = _module()
    with pytest.raises(SystemExit, match="no Pareto front"):
        mod.main(
            [
                "--results",
                str(tmp_path),
                "--name",
                "nope",
                "--checkpoint",
                "x.pt",
                "--out",
                str(tmp_path / "o"),
            ]
        )
