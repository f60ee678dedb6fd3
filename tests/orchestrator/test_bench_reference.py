"""The solver sweep's baseline reference (orchestrator/bench/reference.py, sweeps/solver.py):
every baseline run on the trials' own batches, scored by the trials' measure (mean -CE),
stored once per sweep; ``fastest_to`` against a brute-force search."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from orchestrator.bench.reference import baseline_reference, fastest_to
from orchestrator.data import DataConfig, load_dataset
from orchestrator.tasks.adversarial import AdversarialTrainer
from orchestrator.tasks.task_config import TaskConfig

REPO = Path(__file__).resolve().parents[2]
DATA = {"dataset": "digits", "image_size": 8, "limit_train": 48, "limit_test": 16}


def _trainer() -> AdversarialTrainer:
    torch.manual_seed(0)
    cfg = TaskConfig(mode="clean", batch_size=8, eval_batches=2, pgd_steps=3, deq_max_iter=12)
    trainer = AdversarialTrainer(cfg, load_dataset(DataConfig(**DATA)))
    for m in trainer.modules.values():
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)
    return trainer


def test_reference_runs_every_baseline_on_the_trials_batches():
    trainer = _trainer()
    ref = baseline_reference(trainer, baselines="jfb,ift-2", step_sizes=(0.5, 1.0))
    assert list(ref["baselines"]) == [
        "pgd-cold-s0.6",
        "pgd-jfb-s0.5",
        "pgd-jfb-s1",
        "pgd-ift2-s0.5",
        "pgd-ift2-s1",
    ]
    assert ref["samples"] == 16 and ref["pgd_steps"] == 3
    # iterate 0 is the clean input: its -CE, by the trainer's DEQ, over both batches
    with torch.no_grad():
        clean = -sum(
            float(F.cross_entropy(trainer.logits(x), y, reduction="sum")) for x, y in trainer.eval_batches()
        )
    for label, b in ref["baselines"].items():
        assert len(b["seconds"]) == len(b["inner_objective"]) == 4
        assert b["seconds"] == sorted(b["seconds"]) and b["seconds"][0] >= 0
        assert b["inner_objective"][0] == pytest.approx(clean / 16, rel=1e-5), label
        assert b["inner_objective"][-1] < b["inner_objective"][0]  # an attack: the CE rises
    json.dumps(ref, allow_nan=False)


@pytest.mark.parametrize("seed", range(8))
def test_fastest_to_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    ref = {"baselines": {}}
    for i in range(int(rng.integers(1, 5))):
        steps = int(rng.integers(2, 8))
        ref["baselines"][f"b{i}"] = {
            "seconds": np.cumsum(rng.uniform(0, 1, size=steps)).tolist(),
            "inner_objective": (-np.cumsum(rng.uniform(0, 1, size=steps))).tolist(),
        }
    target = float(rng.uniform(-3, 0))
    hits = []
    for label, b in ref["baselines"].items():
        ks = [k for k, v in enumerate(b["inner_objective"]) if v <= target]
        if ks:
            hits.append((b["seconds"][ks[0]], list(ref["baselines"]).index(label), label, ks[0]))
    got = fastest_to(ref, target)
    if not hits:
        assert got is None
    else:
        t, _, label, k = min(hits)
        assert got == {"baseline": label, "step": k, "seconds": t}


def test_solver_sweep_stores_its_reference_once(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("solver_sweep", REPO / "sweeps" / "solver.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    trainer = _trainer()
    ckpt = tmp_path / "m.pt"
    state = trainer.state_dict()
    state["config"] = trainer.config.to_flat()
    torch.save(state, ckpt)
    fixed = {"task": "adversarial", "batch_size": 8, "eval_batches": 1, "pgd_steps": 2, "deq_max_iter": 12}
    storage = str(tmp_path / "store")
    path = mod.baseline_reference(str(ckpt), storage, "s", fixed, DATA, baselines="jfb", step_sizes=(0.6,))
    ref = json.loads(Path(path).read_text())
    assert list(ref["baselines"]) == ["pgd-cold-s0.6", "pgd-jfb-s0.6"] and ref["samples"] == 8
    assert all(math.isfinite(v) for b in ref["baselines"].values() for v in b["inner_objective"])
    assert "first reached by" in capsys.readouterr().out
    before = Path(path).read_bytes()
    assert mod.baseline_reference(str(ckpt), storage, "s", fixed, DATA) == path  # resumed: kept
    assert Path(path).read_bytes() == before
