"""The strong baselines of ``jiio bench`` (orchestrator/bench/strong.py, measure.py additions).

References: the margin loss computed by hand from the logits; the fastest baseline that
reaches a reference and the strongest baseline per step recomputed by brute force (every
baseline, every step, numpy/scipy intervals); the bench's JSON on a tiny model checked for
its structure and internal consistency (numbers meaningless).
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from orchestrator import cli
from orchestrator.bench.measure import best_per_step, fastest_reaching, margin, reaches
from orchestrator.bench.strong import baseline_label, compare, parse_baselines, parse_grid

# --- margin -------------------------------------------------------------------------------


def test_margin_by_hand():
    logits = torch.tensor([[2.0, 0.5, 1.0], [0.0, 3.0, -1.0], [1.0, 1.0, 0.0], [-5.0, -4.0, -6.0]])
    y = torch.tensor([0, 2, 1, 2])
    # max over the other classes minus the true class's logit
    want = [max(0.5, 1.0) - 2.0, max(0.0, 3.0) - (-1.0), max(1.0, 0.0) - 1.0, max(-5.0, -4.0) - (-6.0)]
    assert margin(logits, y).tolist() == pytest.approx(want)
    # > 0 exactly where the argmax is another class (no ties here but row 2, which is 0)
    m = margin(logits, y)
    assert [bool(v > 0) for v in m] == [False, True, False, True]


def test_margin_random_against_a_loop():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 7, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 7, (50,), generator=gen)
    got = margin(logits, y)
    for i in range(50):
        others = [float(logits[i, j]) for j in range(7) if j != int(y[i])]
        assert float(got[i]) == pytest.approx(max(others) - float(logits[i, y[i]]), abs=1e-12)
    assert torch.equal(got > 0, logits.argmax(1) != y)


# --- fastest baseline reaching a reference: brute force -------------------------------------


def _t(v: np.ndarray) -> tuple[float, float, float]:
    mean = float(np.mean(v))
    low, high = stats.t.interval(0.95, len(v) - 1, loc=mean, scale=stats.sem(v))
    return mean, float(low), float(high)


def _geo(num: list[float], den: list[float]) -> tuple[float, float, float]:
    logs = np.log(np.maximum(num, 1e-9) / np.maximum(den, 1e-9))
    half = stats.t.ppf(0.975, len(logs) - 1) * logs.std(ddof=1) / np.sqrt(len(logs))
    return float(np.exp(logs.mean())), float(np.exp(logs.mean() - half)), float(np.exp(logs.mean() + half))


def _fastest_reference(curves, times, jiio, ref, higher):
    """Every baseline, every step: first step reaching the reference (mean paired difference
    >= 0), the ratio there, the fastest by ratio; the range ends over all baselines."""
    sign = 1.0 if higher else -1.0
    found, lows, highs, bounds = {}, [], [], []
    runs = len(jiio)
    for b, curve in curves.items():
        step = low = high = None
        for k, c in enumerate(curve):
            m, lo, hi = _t(sign * (c - ref))
            step = k if step is None and m >= 0 else step
            low = k if low is None and hi >= 0 else low
            high = k if high is None and lo >= 0 else high

        def at(k, b=b):
            return _geo([times[b][r][k] for r in range(runs)], jiio)

        if step is not None:
            found[b] = (at(step)[0], step)
        else:
            bounds.append(at(len(curve) - 1)[1])
        if low is not None:
            lows.append(at(low)[1])
        if high is not None:
            highs.append(at(high)[2])
    if not found:
        return None, None, None, min(bounds) if bounds else None, (min(lows, default=None), None)
    best = min(found, key=lambda b: (found[b][0], list(curves).index(b)))
    return best, found[best][1], found[best][0], None, (min(lows, default=None), min(highs, default=None))


@pytest.mark.parametrize("higher", [True, False])
@pytest.mark.parametrize("seed", range(10))
def test_fastest_reaching_matches_brute_force(seed, higher):
    rng = np.random.default_rng(seed)
    n, runs, nb = int(rng.integers(4, 30)), int(rng.integers(2, 6)), int(rng.integers(1, 5))
    ref = rng.normal(0.0, 1.0, size=n)
    curves, times = {}, {}
    for i in range(nb):
        steps = int(rng.integers(2, 10))
        drift = np.linspace(-1.0, 1.0, steps) * rng.uniform(0.1, 2.0) * (1 if higher else -1)
        curves[f"b{i}"] = [ref + d + rng.normal(0, rng.uniform(0.05, 0.5), size=n) for d in drift]
        per_step = rng.uniform(0.05, 1.0)
        times[f"b{i}"] = [
            [0.0, *np.cumsum(per_step * rng.uniform(0.8, 1.2, size=steps - 1)).tolist()] for _ in range(runs)
        ]
    jiio = rng.uniform(0.1, 0.5, size=runs).tolist()
    got = fastest_reaching(
        {b: [torch.from_numpy(c) for c in cs] for b, cs in curves.items()},
        times,
        jiio,
        torch.from_numpy(ref),
        higher,
    )
    best, step, ratio, bound, (low, high) = _fastest_reference(curves, times, jiio, ref, higher)
    assert got["baseline"] == best and got["step"] == step
    if best is None:
        assert got["ratio"] is None
        assert got["lower_bound"] == pytest.approx(bound)
    else:
        assert got["ratio"]["ratio"] == pytest.approx(ratio, rel=1e-9)
        assert got["lower_bound"] is None
    assert got["range"][0] == (pytest.approx(low, rel=1e-9) if low is not None else None)
    assert got["range"][1] == (pytest.approx(high, rel=1e-9) if high is not None else None)
    # every candidate's own crossing step is in the result; the chosen one has the least ratio
    reached = {b: c["ratio"]["ratio"] for b, c in got["candidates"].items() if c["ratio"]}
    if reached:
        assert got["ratio"]["ratio"] == min(reached.values())


def test_best_per_step_matches_brute_force():
    rng = np.random.default_rng(3)
    curves = {f"b{i}": [torch.from_numpy(rng.normal(size=9)) for _ in range(6 + i)] for i in range(4)}
    for higher in (True, False):
        got = best_per_step(curves, higher)
        assert len(got) == 6  # the steps every curve has
        for k, row in enumerate(got):
            means = {b: float(np.mean(c[k].numpy())) for b, c in curves.items()}
            want = max(means, key=means.get) if higher else min(means, key=means.get)
            assert row == {"step": k, "baseline": want, "mean": pytest.approx(means[want])}


def test_reaches_is_the_paired_mean_difference():
    ref = torch.tensor([1.0, 2.0, 3.0])
    assert reaches(ref + 0.1, ref, True)["reached"] and not reaches(ref + 0.1, ref, False)["reached"]
    r = reaches(torch.tensor([1.5, 1.0, 3.0]), ref, True)
    assert r["reached"] is False and r["diff"]["mean"] == pytest.approx(-1 / 6)
    assert r["tied"] is True  # its interval reaches 0


def test_compare_targets_set_by_the_strongest_baseline():
    """Fraction 1: the strongest baseline at its full budget is the reference; it reaches it
    at its last step; a JIIO variant stronger on every sample reaches every target."""
    start = torch.zeros(6)
    weak = [start + 0.1 * k for k in range(5)]  # 0 .. 0.4
    strong = [start + 0.3 * k for k in range(5)]  # 0 .. 1.2
    times = [[0.0, 1.0, 2.0, 3.0, 4.0]] * 2
    base = {
        "weak": {"times": times, "curves": {"m": weak}},
        "strong": {"times": times, "curves": {"m": strong}},
    }
    jiio = {
        "j": {"times": [0.5, 0.5], "values": {"m": start + 2.0}},
        "k": {"times": [0.1, 0.1], "values": {"m": start}},
    }
    out = compare(base, jiio, {"m": True}, {"m": start}, fractions=(0.5, 1.0))
    half, full = out["targets"]
    assert half["set_by"] == full["set_by"] == "strong"
    assert half["reference_mean"] == pytest.approx(0.6) and full["reference_mean"] == pytest.approx(1.2)
    assert (half["baseline"], half["baseline_step"]) == ("strong", 2)  # 0.6 at step 2
    assert (full["baseline"], full["baseline_step"]) == ("strong", 4)
    assert half["jiio"] == full["jiio"] == "j" and half["jiio_reached"] == {"j": True, "k": False}
    assert full["ratio"]["ratio"] == pytest.approx(4.0 / 0.5)
    assert out["versus"]["j"]["m"]["baseline"] is None  # no baseline gets as strong as j
    assert out["versus"]["k"]["m"]["step"] == 0  # k is the start: reached at once
    assert [r["baseline"] for r in out["best_per_step"]["m"]][1:] == ["strong"] * 4


# --- flags --------------------------------------------------------------------------------


def test_parse_baselines_and_grid():
    assert parse_baselines("jfb,ift-4, ift-18") == [0, 4, 18] and parse_baselines("none") == []
    assert parse_grid("0.3,0.6,1.2") == [0.3, 0.6, 1.2]
    assert baseline_label("pgd", 0, 0.3, "s") == "pgd-jfb-s0.3"
    for bad in ("cold", "ift-0", "ift-x", "jfb,jfb", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_baselines(bad)
    for bad in ("0", "-1", "a", "0.1,0.1", "inf", "nan"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_grid(bad)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["bench", "attack", "--baselines", "cold,jfb"], "--baselines"),
        (["bench", "attack", "--step-sizes", "0.3,-1"], "--step-sizes"),
        (["bench", "latent", "--adam-lrs", "x"], "--adam-lrs"),
    ],
)
def test_bad_baseline_flags_exit_2(argv, needle, capsys):
    assert cli.main(argv) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and needle in err[0]


# --- the bench's JSON -----------------------------------------------------------------------

TINY = ["--train-steps", "3", "--batch", "8", "--samples", "16", "--reps", "1", "--quiet", "--plot", ""]


def test_attack_json_strong_baselines(capsys):
    argv = ["bench", "attack", *TINY, "--pgd-steps", "3", "--jiio-iters", "4"]
    argv += ["--baselines", "jfb,ift-2", "--step-sizes", "0.5,1.0", "--json"]
    assert cli.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    labels = ["pgd-cold-s0.6", "pgd-jfb-s0.5", "pgd-jfb-s1", "pgd-ift2-s0.5", "pgd-ift2-s1"]
    assert list(out["baselines"]) == labels
    assert [r["label"] for r in out["baseline_rows"]] == labels
    assert out["config"]["baselines"] == ["cold", "jfb", "ift-2"] and out["config"]["step_sizes"] == [
        0.5,
        1.0,
    ]
    # the cold baseline is the legacy PGD run: same curve as pgd_curve
    cold = out["baselines"]["pgd-cold-s0.6"]["curve"]
    assert cold["loss"] == pytest.approx(out["pgd_curve"]["loss"])
    assert cold["seconds_runs"] == out["pgd_curve"]["seconds_runs"]
    for b in labels:
        c = out["baselines"][b]["curve"]
        assert len(c["seconds"]) == len(c["loss"]) == len(c["margin"]) == len(c["accuracy"]) == 4
        assert all(t == sorted(t) and t[0] >= 0.0 for t in c["seconds_runs"])  # when iterate k existed
        if b != "pgd-cold-s0.6":
            assert len(c["forward_iters"]) == 3 and all(1 <= v <= 18 for v in c["forward_iters"])
            k = out["baselines"][b]["backward_iters"]
            assert all(v <= k for v in c["backward_iters"]) and (k > 0 or set(c["backward_iters"]) == {0})
    for r in out["baseline_rows"]:
        assert r["max_perturbation"] <= 1.0 + 1e-5 and {"margin", "margin_ci", "accuracy"} <= set(r)
    # every JIIO variant against the fastest baseline: the least ratio among those reaching it
    for m in ("loss", "margin", "accuracy"):
        assert len(out["best_per_step"][m]) == 4
        for v in out["versus"].values():
            f = v["fastest"][m]
            cands = {b: c for b, c in f["candidates"].items() if c["ratio"] is not None}
            if f["baseline"] is None:
                assert not cands
            else:
                assert f["ratio"]["ratio"] == min(c["ratio"] for c in cands.values())
                assert f["step"] == cands[f["baseline"]]["step"]
    main = out["speed_ratio_vs_fastest_baseline"]
    assert main == out["versus"]["jiio-4"]["fastest"]
    assert {(t["measure"], t["fraction"]) for t in out["targets"]} == {
        (m, f) for m in ("loss", "margin", "accuracy") for f in (0.9, 1.0)
    }
    rows = {r["label"]: r for r in out["rows"] + out["baseline_rows"]}
    for t in out["targets"]:
        if t["fraction"] == 1.0:  # set by the strongest baseline, reached by it at its last step
            assert t["baseline_step"] is not None
        for v, hit in t["jiio_reached"].items():
            assert hit in (True, False) and v in rows
    assert math.isfinite(out["baseline_rows"][0]["margin"])


def test_latent_json_strong_baselines(capsys):
    argv = ["bench", "latent", *TINY, "--adam-steps", "3", "--jiio-iters", "4", "--jiio-long-iters", "0"]
    argv += ["--baselines", "jfb", "--adam-lrs", "0.1,0.3", "--json"]
    assert cli.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out["baselines"]) == ["adam-cold-lr0.1", "adam-jfb-lr0.1", "adam-jfb-lr0.3"]
    cold = out["baselines"]["adam-cold-lr0.1"]["curve"]
    assert cold["loss"] == pytest.approx(out["curves"]["adam-3"]["loss"])
    for b, d in out["baselines"].items():
        assert d["curve"]["loss"][0] == pytest.approx(out["model"]["start_loss"], rel=1e-4), b
    f = out["versus"]["jiio-4"]["fastest"]["loss"]
    assert out["speed_ratio_vs_fastest_baseline"]["loss"] == f
    assert {t["fraction"] for t in out["targets"]} == {0.9, 1.0}


def test_cpu_clock_times_this_process_and_is_stated(capsys):
    from orchestrator.bench import timing as _timing

    argv = ["bench", "attack", *TINY, "--pgd-steps", "2", "--jiio-iters", "2", "--baselines", "jfb"]
    assert cli.main([*argv, "--step-sizes", "0.6", "--clock", "cpu", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["clock"] == "cpu" and all(r["seconds"] > 0 for r in out["rows"] + out["baseline_rows"])
    assert _timing._CLOCK["now"] is __import__("time").process_time
    assert cli.main([*argv, "--clock", "cpu", "--device", "cuda"]) == 2 or not torch.cuda.is_available()
    _timing.use_clock("wall")
    with pytest.raises(ValueError, match="clock"):
        _timing.use_clock("sundial")


# --- plots: the warm baselines are drawn ---------------------------------------------------


def _baseline(family: str, k: int | None, size: float, loss: list[float]) -> dict:
    n = len(loss)
    curve = {"seconds": [0.1 * i for i in range(n)], "loss": loss, "accuracy": [1 - v / 2 for v in loss]}
    return {"family": family, "backward_iters": k, "step_size": size, "curve": curve}


def test_best_warm_keeps_the_strongest_step_size_per_family():
    from orchestrator.bench.report import best_warm

    b = {
        "pgd-cold-s0.6": _baseline("cold", None, 0.6, [0.1, 0.9, 2.0]),  # strongest, but cold
        "pgd-jfb-s0.3": _baseline("jfb", 0, 0.3, [0.1, 0.5, 0.7]),
        "pgd-jfb-s1.2": _baseline("jfb", 0, 1.2, [0.1, 0.6, 0.8]),
        "pgd-ift4-s0.3": _baseline("ift", 4, 0.3, [0.1, 0.9, 1.1]),
        "pgd-ift4-s1.2": _baseline("ift", 4, 1.2, [0.1, 0.9, 1.0]),
        "pgd-ift18-s0.6": _baseline("ift", 18, 0.6, [0.1, 0.9, 1.05]),
    }
    # brute force: per family, the label with the largest (or smallest) last value
    for key, higher in (("loss", True), ("accuracy", False)):
        want = {}
        for fam in ("jfb", "ift-4", "ift-18"):
            members = [
                lbl
                for lbl, d in b.items()
                if d["family"] != "cold"
                and ("jfb" if d["family"] == "jfb" else f"ift-{d['backward_iters']}") == fam
            ]
            pick = max if higher else min
            want[fam] = pick(members, key=lambda lbl, key=key: b[lbl]["curve"][key][-1])
        assert best_warm(b, key, higher) == want
    assert best_warm(None, "loss", True) == {}


def test_attack_plot_draws_cold_and_warm_baselines_and_every_variant(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from orchestrator.bench.report import plot_attack

    kept = []
    monkeypatch.setattr(plt, "close", kept.append)
    loss = [0.3, 0.8, 0.9, 1.0]
    out = {
        "clock": "cpu",
        "device": "test cpu",
        "config": {"batch": 64, "size": "tiny", "dataset": "digits", "eps": 1.0, "samples": 128},
        "model": {"path": "m.pt"},
        "pgd_curve": {
            "seconds": [0.0, 1.0, 2.0, 3.0],
            "loss": loss,
            "accuracy": [0.9, 0.7, 0.6, 0.55],
            "loss_ci": [[v - 0.1, v + 0.1] for v in loss],
        },
        "rows": [
            {"method": "pgd", "label": "pgd-3"},
            *(
                {
                    "method": "jiio",
                    "label": lbl,
                    "seconds": t,
                    "loss": 1.0,
                    "loss_ci": [0.9, 1.1],
                    "accuracy": 0.5,
                    "accuracy_ci": [0.4, 0.6],
                }
                for lbl, t in (("jiio-8", 0.5), ("fast", 0.2))
            ),
        ],
        "baselines": {
            "pgd-cold-s0.6": _baseline("cold", None, 0.6, loss),
            "pgd-jfb-s0.6": _baseline("jfb", 0, 0.6, [0.3, 0.5, 0.6, 0.65]),
            "pgd-ift4-s0.3": _baseline("ift", 4, 0.3, [0.3, 0.7, 0.9, 0.95]),
            "pgd-ift4-s1.2": _baseline("ift", 4, 1.2, [0.3, 0.8, 1.0, 1.02]),
        },
    }
    plot_attack(str(tmp_path / "p.png"), out)
    (fig,) = kept
    assert (tmp_path / "p.png").stat().st_size > 0
    labels = [text.get_text() for text in fig.legends[0].get_texts()]
    assert labels[0].startswith("PGD-k cold (paper)")
    # one warm curve per family, the strongest step size; the weaker ift4 one is not drawn
    assert any(lbl.startswith("pgd-jfb-s0.6 (warm)") for lbl in labels)
    assert any(lbl.startswith("pgd-ift4-s1.2 (warm)") for lbl in labels)
    assert not any("pgd-ift4-s0.3" in lbl for lbl in labels)
    assert {"jiio-8", "fast"} <= set(labels)
    left, right = fig.axes[:2]
    warm = [ln for ln in left.get_lines() if ln.get_label().startswith("pgd-ift4-s1.2")]
    assert list(warm[0].get_ydata()) == [0.8, 1.0, 1.02]  # iterates 1..K, by loss on the left
    warm = [ln for ln in right.get_lines() if ln.get_label().startswith("pgd-ift4-s1.2")]
    assert list(warm[0].get_ydata()) == pytest.approx([0.6, 0.5, 0.49])  # accuracy on the right
    assert all("CPU time" in ax.get_xlabel() for ax in (left, right))
    # the legend sits below the axes: it covers no data
    fig.canvas.draw()
    box = fig.legends[0].get_window_extent()
    assert all(box.y1 <= ax.get_window_extent().y0 for ax in (left, right))
