"""jiio analyze on sweeps whose configurations have several seeds (planted answers), the
one-seed message, and importance's minimum and intervals."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from orchestrator.analysis import summarize
from orchestrator.analysis.importance import MIN_TRIALS, importances
from orchestrator.analysis.seed_values import SeedValue
from orchestrator.analysis.seed_verdicts import BEATS, SAME, WORSE, versus
from orchestrator.analysis.seeds import seed_summary
from orchestrator.cli import main
from orchestrator.stats import t_interval
from orchestrator.storage import ResultStore

from ._planted import pair, planted

SEEDS = [11, 12, 13, 14, 15]
N = 360
SPACE = {
    "alpha_x": {"kind": "loguniform", "low": 0.05, "high": 2.0, "choices": []},
    "seed": {"kind": "choice", "low": None, "high": None, "choices": SEEDS},
}
FIXED = {"task": "adversarial", "batch_size": 64, "eval_batches": None}
DATA = {"dataset": "digits", "data_root": None, "seed": 0}


def _analyze(capsys, *argv):
    code = main(["analyze", *map(str, argv)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out


def _seed_sweep(root, configs, metric="robust_acc", samples=None, sweep="m"):
    """A training sweep with a searched seed: ``configs`` maps a trial-id prefix to
    (alpha_x, per-seed values); the paper's is ``paper``. With ``samples`` (prefix ->
    per-seed lists), the eval step rows list them (``<metric>_samples``)."""
    store = ResultStore(root)
    meta = {
        "kind": "train",
        "metrics": [metric],
        "modes": ["max"],
        "space": SPACE,
        "fixed": FIXED,
        "data": DATA,
        "paper_trial_ids": [f"paper-{s}" for s in SEEDS],
        "trials": sum(len(v) for _, v in configs.values()),
    }
    store.put(f"{store.base}/meta/sweep={sweep}/sweep.json", json.dumps(meta).encode())
    for name, (ax, values) in configs.items():
        for seed, v in zip(SEEDS, values, strict=False):
            tid = f"{name}-{seed}"
            row = {"trial_id": tid, "status": "completed", "alpha_x": ax, "seed": seed, metric: float(v)}
            row.update(eval_n=N, wall_s=1.0)
            store.write("trials", sweep, tid, [row])
            if samples:
                listed = [float(x) for x in samples[name][SEEDS.index(seed)]]
                step = {"trial_id": tid, "step": 10, "epoch": 1, "phase": "eval", metric: float(v)}
                step.update({f"{metric}_samples": listed, "eval_n": len(listed)})
                store.write("steps", sweep, tid, [step])
    return store


@pytest.fixture(scope="module")
def planted_effect():
    """Robust accuracy per seed: the seed moves every configuration by the same amount (sd
    0.05, the same seed in each: what seed-level pairing cancels), each evaluation adds its
    own small noise; ``better`` is the paper's +0.02 on every seed, ``same`` equals it."""
    rng = np.random.default_rng(11)
    seed_effect = rng.normal(0, 0.05, len(SEEDS))
    own = lambda: rng.normal(0, 0.003, len(SEEDS))  # noqa: E731
    base = 0.42 + seed_effect
    return {
        "paper": (0.6, base + own()),
        "better": (0.3, base + 0.02 + own()),
        "same": (0.9, base + own()),
        "worse": (1.2, base - 0.03 + own()),
    }


def test_a_planted_effect_smaller_than_the_seed_noise_is_found_by_pairing(tmp_path, planted_effect):
    store = _seed_sweep(str(tmp_path), planted_effect)
    s = summarize(store, "m")
    rows = {r["trial_ids"][0].split("-")[0]: r for r in s["seeds"]["configs"]}
    better, paper = rows["better"], rows["paper"]
    # separately, the intervals over seeds overlap: the seed noise (sd 0.05) dwarfs +0.02
    assert better["ci"][0] < paper["ci"][1] and paper["ci"][0] < better["ci"][1]
    # paired by seed, the difference is clear, and it is the t interval of the differences
    vs = better["vs_paper"]
    d = planted_effect["better"][1] - planted_effect["paper"][1]
    m, lo, hi, n = t_interval(d)
    assert vs["verdict"] == BEATS and better["verdict"] == BEATS and n == len(SEEDS) == vs["seeds"]
    assert vs["difference"] == pytest.approx(m) and vs["ci"] == pytest.approx([lo, hi])
    assert vs["paired_by"] == "seed" and lo > 0
    assert rows["same"]["verdict"] == SAME and rows["worse"]["verdict"] == WORSE
    assert rows["paper"]["verdict"] == "the paper's settings" and "paper" in rows["paper"]["labels"]
    assert rows["better"]["labels"] == ["best mean over seeds"]
    # the verdict over seeds replaces the per-trial one
    assert s["verdict"]["over"] == "seeds" and s["verdict"]["significant"] is True
    assert "noise" not in s
    # the components: the training seed dominates; the accuracy's count gives the evaluation
    # part, an upper bound here (every seed scored the same samples)
    c = better["components"]
    assert c["sd_training"] > c["sd_evaluation"] and c["n"] == N and c["shared_samples"] is True
    assert c["sd_evaluation"] == pytest.approx((0.45 * 0.55 / (N - 1)) ** 0.5, rel=0.05)


def test_pairing_by_seed_matters(tmp_path, planted_effect):
    """Shuffle which seed is which in one configuration: the same values, no pairing any
    more, and the planted effect is lost in the seed noise."""
    ax, vals = planted_effect["better"]
    shuffled = {**planted_effect, "better": (ax, np.roll(vals, 2))}
    store = _seed_sweep(str(tmp_path), shuffled)
    rows = {r["trial_ids"][0].split("-")[0]: r for r in summarize(store, "m")["seeds"]["configs"]}
    assert rows["better"]["verdict"] == SAME


def test_identical_configurations_cannot_be_told_apart(tmp_path, planted_effect):
    ax, vals = planted_effect["paper"]
    store = _seed_sweep(str(tmp_path), {"paper": (ax, vals), "twin": (0.2, vals.copy())})
    s = summarize(store, "m")
    twin = next(r for r in s["seeds"]["configs"] if not r["is_paper"])
    assert twin["verdict"] == SAME and twin["vs_paper"]["difference"] == 0
    assert "no difference was observed" in twin["vs_paper"]["text"]
    assert s["verdict"]["significant"] is False


def test_the_console_and_report_show_configurations_over_seeds(tmp_path, planted_effect, capsys):
    store = _seed_sweep(str(tmp_path), planted_effect)
    code, out = _analyze(capsys, store.root, "--name", "m", "--no-plots", "--out", tmp_path / "r")
    assert code == 0
    assert "robust_acc over seeds, per configuration" in out and "95% CI over seeds" in out
    assert "beats the paper's settings: difference +" in out and "over 5 seeds paired by seed" in out
    assert "variance components of robust_acc" in out and "training noise" in out
    assert "cannot be told apart" in out and "evaluation noise only" not in out
    html = (tmp_path / "r" / "m-report.html").read_text()
    assert "Configurations over seeds" in html and "beats the paper&#x27;s settings" in html
    code, out = _analyze(capsys, store.root, "--name", "m", "--json", "--no-plots", "--no-report")
    sec = json.loads(out)["seeds"]
    assert {r["verdict"] for r in sec["configs"]} == {BEATS, SAME, WORSE, "the paper's settings"}


def test_paired_by_seed_and_by_sample(tmp_path):
    """Per-sample values on the same samples (the data config fixes the held-out split):
    each seed's difference is the mean of per-sample differences, and the within-seed
    variance of the difference is that of the per-sample differences."""
    rng = np.random.default_rng(5)
    hard = rng.normal(22.0, 3.0, 200)  # how hard each sample is: shared by every model
    lists = {"paper": [], "better": []}
    for _ in SEEDS:
        seed = rng.normal(0, 0.4)  # the seed moves both
        lists["paper"].append(hard + seed + rng.normal(0, 0.05, hard.size))
        lists["better"].append(hard + seed + 0.05 + rng.normal(0, 0.05, hard.size))
    configs = {k: (ax, [float(np.mean(v)) for v in lists[k]]) for k, ax in (("paper", 0.6), ("better", 0.3))}
    store = _seed_sweep(str(tmp_path), configs, metric="test_psnr", samples=lists)
    s = summarize(store, "m")
    better = next(r for r in s["seeds"]["configs"] if not r["is_paper"])
    vs = better["vs_paper"]
    per_seed = [np.mean(b - p) for b, p in zip(lists["better"], lists["paper"], strict=True)]
    m, lo, hi, _ = t_interval(per_seed)
    assert vs["paired_by"] == "seed and sample" and vs["verdict"] == BEATS
    assert vs["ci"] == pytest.approx([lo, hi])
    within = np.mean([np.var(b - p, ddof=1) for b, p in zip(lists["better"], lists["paper"], strict=True)])
    assert vs["components"]["within"] == pytest.approx(within, rel=1e-9)
    # the configuration's own within-seed variance is the samples' spread (hard ones and easy ones)
    assert better["components"]["within"] == pytest.approx(9.0, rel=0.2)


def test_remedy_names_seeds_when_training_noise_dominates():
    rng = np.random.default_rng(8)
    seed_a, seed_b = rng.normal(0, 0.03, 3), rng.normal(0, 0.03, 3)  # not shared: no common random numbers
    a = [SeedValue(f"a{s}", s, 0.43 + x, N, 0.245) for s, x in zip(SEEDS, seed_a, strict=False)]
    b = [SeedValue(f"b{s}", s, 0.42 + x, N, 0.245) for s, x in zip(SEEDS, seed_b, strict=False)]
    vs = versus(a, b, "max")
    assert vs["verdict"] == SAME and vs["seeds"] == 3
    assert "training noise dominates" in vs["text"] and vs["samples_needed"] is None
    assert vs["seeds_needed"] > 3 and f"about {vs['seeds_needed']} seeds per configuration" in vs["text"]
    one = versus(a[:1], b[:1], "max")
    assert one["verdict"] == SAME and "one seed in common" in one["text"]


def test_seed_summary_needs_the_same_seeds_to_pair():
    rows = pd.DataFrame(
        {
            "trial_id": ["p1", "p2", "a3", "a4"],
            "status": "completed",
            "alpha_x": [0.6, 0.6, 0.3, 0.3],
            "seed": [1, 2, 3, 4],
            "robust_acc": [0.4, 0.41, 0.5, 0.52],
            "eval_n": N,
        }
    )
    sec = seed_summary(rows, {"paper_trial_ids": ["p1"]}, "robust_acc", "max", ["alpha_x", "seed"])
    a = next(r for r in sec["configs"] if not r["is_paper"])
    assert (
        a["vs_paper"]["seeds"] == 0 and a["verdict"] == SAME and "no seed in common" in a["vs_paper"]["text"]
    )


# ---------------------------------------------------------------- one seed per configuration


def test_one_seed_per_configuration_says_the_intervals_cover_evaluation_noise_only(tmp_path, capsys):
    store = pair(str(tmp_path), "s", 66 / 128, 64 / 128, eval_n=128)
    s = summarize(store, "s")
    assert s["noise"]["seeds_per_configuration"] == 1 and "seeds" not in s
    v = s["verdict"]
    assert v["evaluation_only"] is True and v["significant"] is False
    assert (
        "to n of about" in v["text"]
        and "so that n would be enough only if retraining moved nothing" in v["text"]
    )
    assert f"jiio confirm {store.root} --name s --seeds 3" in v["text"]
    code, out = _analyze(capsys, store.root, "--name", "s", "--no-plots", "--out", tmp_path / "r")
    assert "these intervals cover evaluation noise only (one training seed per configuration)" in out
    html = (tmp_path / "r" / "s-report.html").read_text()
    assert "cover evaluation noise only" in html
    pair(str(tmp_path), "t", 0.6, 0.5, eval_n=5000)  # --compare of two one-seed sweeps says it too
    assert main(["analyze", store.root, "--compare", "s", "t", "--json"]) == 0
    v = json.loads(capsys.readouterr().out)["verdict"]
    assert v["evaluation_only"] is True and "cover evaluation noise only" in v["text"]


# ---------------------------------------------------------------- importance


def _random_trials(n, seed=0):
    rng = np.random.default_rng(seed)
    t = pd.DataFrame({"trial_id": [f"t{i}" for i in range(n)], "status": "completed"})
    t["alpha_x"], t["alpha_z"] = rng.uniform(0.05, 2.0, n), rng.uniform(0.2, 1.0, n)
    t["robust_acc"] = 0.9 - 0.25 * np.abs(np.log(t["alpha_x"] / 0.4)) + rng.normal(0, 0.005, n)
    return t


IMP_SPACE = {
    "alpha_x": {"kind": "loguniform", "low": 0.05, "high": 2.0},
    "alpha_z": {"kind": "uniform", "low": 0.2, "high": 1.0},
}


def test_importance_below_its_minimum_says_why():
    imp = importances(_random_trials(MIN_TRIALS - 1), IMP_SPACE, "robust_acc", "max")
    assert imp["objective"] == {} and imp["min_trials"] == MIN_TRIALS
    note = next(n for n in imp["notes"] if n.startswith("importance for robust_acc"))
    assert f"not shown: {MIN_TRIALS - 1} completed trials, fewer than the {MIN_TRIALS} it needs" in note
    assert importances(_random_trials(MIN_TRIALS), IMP_SPACE, "robust_acc", "max")["objective"]


def test_importance_minimum_in_the_console_and_report(tmp_path, capsys):
    store = pair(str(tmp_path), "s", 0.6, 0.5, eval_n=5000)  # 4 trials
    code, out = _analyze(capsys, store.root, "--name", "s", "--no-plots", "--out", tmp_path / "r")
    assert code == 0
    assert "note: importance for robust_acc: not shown: 4 completed trials, fewer than the 10" in out
    html = (tmp_path / "r" / "s-report.html").read_text()
    assert "importance for robust_acc: not shown" in html


def test_importance_has_bootstrap_intervals_over_trials(tmp_path):
    imp = summarize(planted(str(tmp_path)), "s")["importance"]
    ci, first = imp["objective_ci"], imp["objective_first"]
    assert set(ci) == set(imp["objective"]) and imp["objective_resamples"] >= 40
    for k in imp["objective"]:
        assert 0 <= ci[k][0] <= ci[k][1] <= 1
    assert ci["alpha_x"][0] > max(ci["alpha_z"][0], ci["alpha_mu"][0])  # the planted parameter stands out
    assert first["alpha_x"] > 0.8 and abs(sum(first.values()) - 1) < 0.05
    assert imp["divergence_first"]["alpha_z"] > 0.8


def test_seed_summary_shows_the_best_and_the_papers():
    ax = [0.1, 0.2, 0.3, 0.6]  # the paper's (0.6) is the worst
    rows = pd.DataFrame(
        {
            "trial_id": [f"t{a}-{s}" for a in ax for s in (1, 2)],
            "status": "completed",
            "alpha_x": [a for a in ax for _ in (1, 2)],
            "seed": [1, 2] * len(ax),
            "robust_acc": [0.5 - a / 10 + s / 100 for a in ax for s in (1, 2)],
        }
    )
    meta = {"paper_trial_ids": ["t0.6-1"]}
    sec = seed_summary(rows, meta, "robust_acc", "max", ["alpha_x", "seed"], top=2)
    assert [r["params"]["alpha_x"] for r in sec["configs"]] == [0.1, 0.2, 0.6]
    assert sec["configs"][-1]["labels"] == ["paper", "rank 4 by mean"]
    assert "1 more configurations not shown (the best 2 are)" in sec["notes"]
