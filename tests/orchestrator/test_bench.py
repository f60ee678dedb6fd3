"""Tests for ``jiio bench`` (orchestrator.bench through orchestrator.cli.main), tiny settings.

Each run trains (or loads) a tiny MDEQ on the embedded digits for a handful of steps and
times one repetition on a batch of 8: the numbers are meaningless, the structure, the
constraints (perturbations inside the eps-ball) and the error handling are what is tested.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from jiio_core import DEQ, ClassifierHead, DEQConfig, ImageHead, MDEQCell
from orchestrator import bench, cli
from orchestrator.bench.setup import held_out_batches
from orchestrator.bench.timing import step_counts
from orchestrator.bench.variants import jiio_variant
from orchestrator.data import DataConfig, load_dataset
from orchestrator.tasks.model_sizes import mdeq_config
from orchestrator.tasks.task_config import TaskConfig

TINY = ["--train-steps", "3", "--batch", "8", "--samples", "16", "--reps", "1", "--quiet", "--plot", ""]
ATTACK = ["bench", "attack", *TINY, "--pgd-steps", "4", "--jiio-iters", "8"]
LATENT = ["bench", "latent", *TINY, "--adam-steps", "4", "--jiio-iters", "6", "--jiio-long-iters", "10"]

ATTACK_KEYS = {
    "bench",
    "device",
    "device_type",
    "threads",
    "torch",
    "seed",
    "config",
    "model",
    "pgd",
    "jiio",
    "rows",
    "within_eps",
    "speedup",
    "equal_or_better_strength",
    "equal_strength_pgd_steps",
    "speed_ratio_at_equal_strength",
    "speed_ratio_at_equal_strength_lower_bound",
    "pgd_curve",
    "pgd_steps_to_jiio_loss",
    "pgd_seconds_to_jiio_loss",
    "speed_ratio_at_equal_loss",
    "load_average",
    "load_average_start",
}
LATENT_KEYS = {
    "bench",
    "device",
    "device_type",
    "threads",
    "torch",
    "seed",
    "config",
    "model",
    "adam",
    "jiio",
    "jiio_long",
    "rows",
    "curves",
    "speedup",
    "speedup_long",
    "equal_or_better_loss",
    "adam_steps_to_jiio_loss",
    "adam_seconds_to_jiio_loss",
    "speed_ratio_at_equal_loss",
    "speed_ratio_at_equal_loss_lower_bound",
    "plot",
}


def _run_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    rc = cli.main([*argv, "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    lines = out.strip().splitlines()
    assert len(lines) == 1, "--json prints exactly one line"
    return json.loads(lines[0])


def _assert_one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert "error" in lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]


# ----------------------------------------------------------------------------- attack


def test_attack_json_has_documented_keys_and_stays_in_the_ball(capsys):
    eps = 0.5
    out = _run_json([*ATTACK, "--eps", str(eps), "--jiio-config", "fast@max_iter=3,anderson_m=2"], capsys)
    assert set(out) >= ATTACK_KEYS
    fast = out["rows"].pop()  # the labelled --jiio-config variant comes last
    assert fast["label"] == "fast" and fast["steps"] == 3
    assert fast["jiio_config"]["anderson_m"] == 2 and fast["jiio_config"]["x_step"] == "normalized"
    assert fast["max_perturbation"] <= eps + 1e-5
    # paired against JIIO-8: the same runs, the same samples
    vs = out["versus"]["fast"]["vs_main"]
    logs = [math.log(a / b) for a, b in zip(out["jiio"]["seconds_all"], fast["seconds_all"], strict=True)]
    assert vs["speed"]["ratio"] == pytest.approx(math.exp(sum(logs) / len(logs)))
    assert vs["loss_diff"]["mean"] == pytest.approx(fast["loss"] - out["jiio"]["loss"], abs=1e-5)
    assert out["bench"] == "attack" and out["device_type"] == "cpu"
    assert out["torch"] == torch.__version__
    assert out["config"]["eps"] == eps and out["config"]["deq"]["solver"] == "broyden"
    assert out["config"]["deq"]["max_iter"] == 18 and out["config"]["deq"]["backward_max_iter"] == 18
    assert out["config"]["jiio"]["max_iter"] == 8 and out["config"]["jiio"]["x_step"] == "normalized"
    assert out["model"]["source"] == "trained" and out["model"]["steps"] == 3
    rows = [(r["method"], r["steps"]) for r in out["rows"]]
    assert rows == [("pgd", 1), ("pgd", 2), ("pgd", 4), ("jiio", 2), ("jiio", 4), ("jiio", 8)]
    for r in out["rows"]:
        assert {"method", "steps", "seconds", "accuracy", "loss", "max_perturbation"} <= set(r)
        assert r["seconds"] > 0 and 0.0 <= r["accuracy"] <= 1.0 and math.isfinite(r["loss"])
        assert r["max_perturbation"] <= eps + 1e-5
    assert out["within_eps"] is True
    p, j = out["pgd"], out["jiio"]
    assert (p["steps"], j["steps"]) == (4, 8)
    assert out["speedup"] == pytest.approx(p["seconds"] / j["seconds"])
    assert out["equal_or_better_strength"] == (j["loss"] >= p["loss"] or j["accuracy"] <= p["accuracy"])
    # the speed ratio at equal strength: the cheapest PGD row reaching JIIO-N's loss
    reaching = [r for r in out["rows"] if r["method"] == "pgd" and r["loss"] >= j["loss"]]
    if reaching:
        best = min(reaching, key=lambda r: r["seconds"])
        assert out["equal_strength_pgd_steps"] == best["steps"]
        assert out["speed_ratio_at_equal_strength"] == pytest.approx(best["seconds"] / j["seconds"])
    else:
        assert out["speed_ratio_at_equal_strength"] is None
        assert out["speed_ratio_at_equal_strength_lower_bound"] == pytest.approx(out["speedup"])
    # PGD-k rows are PGD-K's k-th iterate: its CE is the one PGD itself saw at step k
    curve = out["pgd_curve"]
    assert len(curve["seconds"]) == len(curve["loss"]) == 5
    for r in out["rows"][:3]:
        assert r["loss"] == pytest.approx(curve["loss"][r["steps"]], rel=1e-4)
        assert r["seconds"] == pytest.approx(curve["seconds"][r["steps"]])
    k = out["pgd_steps_to_jiio_loss"]
    if k is not None:
        assert curve["loss"][k] >= j["loss"] and all(v < j["loss"] for v in curve["loss"][:k])
        # geometric mean over the paired timing runs of PGD's time to iterate k / JIIO's time
        logs = [math.log(t[k] / tj) for t, tj in zip(curve["seconds_runs"], j["seconds_all"], strict=True)]
        assert out["speed_ratio_at_equal_loss"] == pytest.approx(math.exp(sum(logs) / len(logs)))


def test_attack_table_output(capsys):
    rc = cli.main([*ATTACK, "--eps", "1.0", "--jiio-z0", "zeros"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "speedup vs PGD-4" in out and "equal CE: PGD steps, ratio" in out
    assert "jiio-8" in out and "[95% intervals]" in out
    assert "all perturbations within eps: yes" in out


# ----------------------------------------------------------------------------- latent


def test_latent_json_curves_and_plot(tmp_path, capsys):
    plot = tmp_path / "curves.png"
    out = _run_json([*LATENT, "--plot", str(plot)], capsys)
    assert set(out) >= LATENT_KEYS
    assert out["bench"] == "latent"
    assert [(r["method"], r["steps"]) for r in out["rows"]] == [("adam", 4), ("jiio", 6), ("jiio", 10)]
    for r in out["rows"]:
        assert r["seconds"] > 0 and math.isfinite(r["loss"]) and r["loss"] >= 0
    a, j = out["adam"], out["jiio"]
    assert out["speedup"] == pytest.approx(a["seconds"] / j["seconds"])
    assert out["speedup_long"] == pytest.approx(a["seconds"] / out["jiio_long"]["seconds"])
    assert out["config"]["jiio"]["anderson_m"] == bench.LATENT_ANDERSON_M
    assert out["config"]["alpha_x"] == bench.LATENT_ALPHA_X
    # curves: Adam's has one point per iterate (steps + 1), JIIO's one per iteration
    ca, cj = out["curves"]["adam-4"], out["curves"]["jiio-6"]
    assert len(ca["seconds"]) == len(ca["loss"]) == 5
    assert len(cj["seconds"]) == len(cj["loss"]) == 6
    assert ca["seconds"] == sorted(ca["seconds"]) and cj["seconds"] == sorted(cj["seconds"])
    assert ca["loss"][-1] == pytest.approx(a["loss"], rel=1e-4)
    # iterate 0 is the zero latent (Adam updates its latent in place: each step's own copy)
    assert ca["loss"][0] == pytest.approx(out["model"]["start_loss"], rel=1e-4)
    assert len(set(ca["loss"])) > 1
    assert cj["seconds"][-1] == pytest.approx(j["seconds"])
    # speed ratio at equal loss, from Adam's curve
    k = out["adam_steps_to_jiio_loss"]
    if k is None:
        assert all(v > j["loss"] for v in ca["loss"])
        assert out["speed_ratio_at_equal_loss"] is None
    else:
        assert ca["loss"][k] <= j["loss"] and all(v > j["loss"] for v in ca["loss"][:k])
        logs = [math.log(t[k] / tj) for t, tj in zip(ca["seconds_runs"], j["seconds_all"], strict=True)]
        assert out["speed_ratio_at_equal_loss"] == pytest.approx(math.exp(sum(logs) / len(logs)))
    assert out["plot"] == str(plot)
    with Image.open(plot) as img:
        img.verify()
    with Image.open(plot) as img:
        assert img.format == "PNG" and img.size[0] > 100 and img.size[1] > 100


def test_latent_table_without_plot(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = cli.main([*LATENT, "--jiio-long-iters", "0", "--plot", ""])
    out = capsys.readouterr().out
    assert rc == 0
    assert "speedup Adam-4 / JIIO-6" in out and "speed ratio at equal loss" in out
    assert list(tmp_path.iterdir()) == []  # no PNG written


# ----------------------------------------------------------------------------- checkpoints


def _trainer_state(modules: dict[str, torch.nn.Module], **config) -> dict:
    """What Trainer.state_dict() stores."""
    return {
        "modules": {k: m.state_dict() for k, m in modules.items()},
        "optimizer": {},
        "scheduler": {},
        "epoch": 1,
        "global_step": 10,
        "config": TaskConfig.from_flat(config).to_flat(),
    }


def test_attack_checkpoint_round_trip(tmp_path, capsys):
    torch.manual_seed(3)
    splits = load_dataset(DataConfig("digits", seed=5))  # the bench splits the data by --seed
    mcfg = mdeq_config("tiny", splits.image_size, splits.channels)
    cell, head = MDEQCell(mcfg), ClassifierHead(mcfg)
    path = tmp_path / "adv.pt"
    torch.save(_trainer_state({"cell": cell, "head": head}, task="adversarial", mode="clean"), path)
    out = _run_json([*ATTACK, "--checkpoint", str(path), "--seed", "5"], capsys)
    assert out["model"]["source"] == "checkpoint" and out["model"]["path"] == str(path)
    assert out["config"]["train_steps"] is None
    # the loaded weights are the ones evaluated: same clean accuracy and loss on the same batch
    parts = held_out_batches(splits, 16, 8, 5, torch.device("cpu"))
    x, y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    with torch.no_grad():
        logits = head(DEQ(cell, DEQConfig.paper())(x)[0])
    assert out["model"]["clean_accuracy"] == pytest.approx(float((logits.argmax(1) == y).float().mean()))
    assert out["model"]["clean_loss"] == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-4)
    assert all(r["max_perturbation"] <= 1.0 + 1e-5 for r in out["rows"])


def test_latent_checkpoint_round_trip(tmp_path, capsys):
    torch.manual_seed(4)
    mcfg = mdeq_config("tiny", 16, 1, latent_dim=8)  # latent size from the checkpoint's config
    cell, head = MDEQCell(mcfg), ImageHead(mcfg)
    path = tmp_path / "gen.pt"
    torch.save(_trainer_state({"cell": cell, "head": head}, task="generative", latent_dim=8), path)
    out = _run_json([*LATENT, "--checkpoint", str(path), "--plot", ""], capsys)
    assert out["model"]["source"] == "checkpoint" and out["config"]["latent_dim"] == 8
    splits = load_dataset(DataConfig("digits"))
    target = torch.cat([p[0] for p in held_out_batches(splits, 16, 8, 0, torch.device("cpu"))])
    with torch.no_grad():
        recon = head(DEQ(cell, DEQConfig.paper())(torch.zeros(16, 8))[0])
    start = float((recon - target).pow(2).flatten(1).sum(1).mean())
    assert out["model"]["start_loss"] == pytest.approx(start, rel=1e-4)
    assert out["plot"] is None


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["bench", "attack", "--checkpoint", "/nonexistent/model.pt"], "checkpoint not found"),
        (["bench", "latent", "--checkpoint", "/nonexistent/model.pt"], "checkpoint not found"),
        (["bench", "attack", "--eps", "-1"], "--eps"),
        (["bench", "attack", "--eps=nan"], "--eps"),
        (["bench", "attack", "--batch", "0"], "--batch"),
        (["bench", "latent", "--adam-lr", "0"], "--adam-lr"),
        (["bench", "attack", "--pgd-steps", "two"], "--pgd-steps"),
        (["bench", "attack", "--no-such-flag"], "--no-such-flag"),
        (["bench", "latent", "--plot", "/nonexistent/dir/curves.png"], "does not exist"),
        (["bench", "latent", "--plot", "curves.jpg"], ".png"),
        (["bench", "attack", "--dataset", "mnist"], "--data-root"),
        (["bench", "attack", "--dataset", "mnist", "--data-root", "/nonexistent"], "MNIST"),
        (["bench", "attack", "--samples", "100000"], "larger than the test split"),
        (["bench", "attack", "--batch", "512"], "larger than --samples 256"),
        (["bench", "attack", "--jiio-config", "no-such-preset"], "unknown JIIO preset"),
        (["bench", "attack", "--jiio-config", "anderson_q=3"], "not a JIIOConfig field"),
        (["bench", "latent", "--jiio-config", "alpha_z=2"], "alpha_z"),
        (["bench", "latent", "--jiio-config", "nope:max_iter=3"], "unknown JIIO preset"),
        (["bench", "attack", "--jiio-config", "jiio-80@max_iter=3"], "reserved"),
        (["bench", "attack", "--jiio-config", "a@max_iter=3", "--jiio-config", "a@max_iter=4"], "repeated"),
        (["bench", "latent", "--jiio-config", "paper-celeba-generative:foo=1"], "'foo'"),
        (["bench"], "required"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, needle, capsys):
    rc = cli.main(argv)
    _assert_one_line_error(rc, capsys.readouterr().err, needle)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_exits_2(capsys):
    rc = cli.main(["bench", "attack", "--device", "cuda"])
    _assert_one_line_error(rc, capsys.readouterr().err, "CUDA")


def test_bad_checkpoints_exit_2(tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    rc = cli.main(["bench", "attack", "--checkpoint", str(junk)])
    _assert_one_line_error(rc, capsys.readouterr().err, "cannot read checkpoint")

    no_modules = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, no_modules)
    rc = cli.main(["bench", "attack", "--checkpoint", str(no_modules)])
    _assert_one_line_error(rc, capsys.readouterr().err, "not a Trainer checkpoint")

    mcfg = mdeq_config("tiny", 16, 1, latent_dim=16)
    generative = tmp_path / "gen.pt"
    state = _trainer_state({"cell": MDEQCell(mcfg), "head": ImageHead(mcfg)}, task="generative")
    torch.save(state, generative)
    rc = cli.main(["bench", "attack", "--checkpoint", str(generative)])
    _assert_one_line_error(rc, capsys.readouterr().err, "'generative'")

    # an adversarial checkpoint whose modules do not fit the model it says it is
    wrong = tmp_path / "wrong.pt"
    paper = mdeq_config("paper", 16, 1)
    state = _trainer_state({"cell": MDEQCell(paper), "head": ClassifierHead(paper)}, task="adversarial")
    state["config"]["model_size"] = "tiny"
    torch.save(state, wrong)
    rc = cli.main(["bench", "attack", "--checkpoint", str(wrong)])
    _assert_one_line_error(rc, capsys.readouterr().err, "does not fit")


# ----------------------------------------------------------------------------- cli structure


def test_help_and_command_table(capsys):
    assert "bench" in cli.COMMANDS
    assert cli.main(["--help"]) == 0
    assert "bench" in capsys.readouterr().out
    assert cli.main(["bench", "latent", "--help"]) == 0
    assert "--alpha-x" in capsys.readouterr().out


def test_a_command_added_to_the_table_is_dispatched(monkeypatch, capsys):
    seen = {}

    def add(p):
        p.add_argument("path")

    def run(args):
        seen["path"] = args.path
        if args.path == "bad":
            raise cli.UsageError("bad path")
        return 0

    monkeypatch.setitem(cli.COMMANDS, "analyze", cli.Command("analyze results", add, run))
    assert cli.main(["analyze", "results/"]) == 0 and seen["path"] == "results/"
    rc = cli.main(["analyze", "bad"])
    _assert_one_line_error(rc, capsys.readouterr().err, "jiio analyze: error: bad path")


def test_jiio_config_variants_build_the_asked_configuration():
    from jiio_core import JIIOConfig

    base = JIIOConfig.paper("mnist_adversarial")
    celeba = JIIOConfig.paper("celeba_generative")
    assert jiio_variant("paper-celeba-generative", base) == celeba
    assert jiio_variant("paper-celeba-generative:max_iter=40,init=cell_step", base) == celeba.replace(
        max_iter=40, init="cell_step"
    )
    assert jiio_variant("max_iter=7,alpha_x=0.25", base) == base.replace(max_iter=7, alpha_x=0.25)


def test_steps_rows():
    assert step_counts(20) == [5, 10, 20]
    assert step_counts(80) == [20, 40, 80]
    assert step_counts(1) == [1]
    assert step_counts(3) == [1, 3]


def test_plot_default_is_png_in_cwd():
    args = cli.build_parser().parse_args(["bench", "latent"])
    assert args.plot == "bench_latent.png" and Path(args.plot).suffix == ".png"
    assert args.threads == 1 and args.jiio_iters == 40 and args.jiio_long_iters == 100
    a = cli.build_parser().parse_args(["bench", "attack"])
    assert (a.batch, a.pgd_steps, a.jiio_iters, a.eps, a.reps) == (64, 20, 80, 1.0, 2)
    assert (a.samples, a.plot) == (256, "bench_attack.png")
