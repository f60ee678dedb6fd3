"""The cluster config's defaults (metadata.jiio): flag > cluster > built-in, and refusals."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

from orchestrator.commands import sweep as sweep_cli
from orchestrator.driver.cluster_settings import ClusterSettings, ClusterSettingsError
from orchestrator.tasks import TaskConfig

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "sweeps"))
import alpha  # noqa: E402


def _config(tmp_path, **jiio) -> str:
    """cluster/gpu.yaml as a user edits it: only metadata.jiio changed."""
    doc = yaml.safe_load((ROOT / "cluster" / "gpu.yaml").read_text())
    doc["metadata"]["jiio"].update(jiio)
    path = tmp_path / "ray_bootstrap_config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def _args(argv, monkeypatch, path):
    monkeypatch.setenv("JIIO_CLUSTER_CONFIG", path)
    parser = sweep_cli.build_parser(alpha.SPEC)
    args = parser.parse_args(argv)
    sweep_cli.apply_cluster_settings(parser, args)
    return args


def test_the_shipped_config_carries_the_clusters_defaults():
    s = ClusterSettings.load(str(ROOT / "cluster" / "gpu.yaml"))
    assert s.launcher and s.values["gpus_per_trial"] == 0.25 and s.values["model_size"] == "paper"
    with pytest.raises(ClusterSettingsError, match=r"placeholder.*cluster/gpu.yaml.*--storage"):
        s.resolve("storage", None, "results")  # BUCKET not filled in: refused when used
    assert s.resolve("storage", "s3://mine/x", "results") == ("s3://mine/x", "flag")


def test_flag_then_cluster_then_default(tmp_path, monkeypatch):
    path = _config(tmp_path, storage="s3://team-bucket/jiio")
    args = _args(["--gpus-per-trial", "0.5"], monkeypatch, path)
    assert (args.storage, args.gpus_per_trial, args.model_size, args.data_root) == (
        "s3://team-bucket/jiio",
        0.5,
        "paper",
        "~/data",
    )
    line = args._settings_line
    assert "storage='s3://team-bucket/jiio' (cluster" in line and "gpus_per_trial=0.5 (flag)" in line
    assert "model_size='paper' (cluster" in line


def test_off_a_cluster_the_builtin_defaults(tmp_path, monkeypatch):
    monkeypatch.delenv("JIIO_CLUSTER_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/ray_bootstrap_config.yaml
    parser = sweep_cli.build_parser(alpha.SPEC)
    args = parser.parse_args([])
    sweep_cli.apply_cluster_settings(parser, args)
    assert (args.storage, args.model_size) == ("results", "tiny")
    assert "storage='results' (default)" in args._settings_line


@pytest.mark.parametrize(
    ("jiio", "message"),
    [
        ({"storage": "s3://BUCKET/jiio"}, "still the placeholder"),
        ({"gpus_per_trial": "lots"}, "gpus_per_trial must be a finite number"),
        ({"model_size": "huge"}, "model_size must be 'tiny' or 'paper'"),
        ({"bucket": "x"}, "metadata.jiio.bucket is not a setting"),
        ({"trial_limits": 2}, "metadata.jiio.trial_limits must be a mapping"),
        ({"trial_limits": {}}, "metadata.jiio.trial_limits must be a mapping"),
        (
            {"trial_limits": {"steps": 2}},
            "trial_limits.steps is not a limit; known: epochs, max_steps_per_epoch",
        ),
        ({"trial_limits": {"lr": 0.1}}, "trial_limits.lr is not a limit"),
        ({"trial_limits": {"eval_batches": 0}}, "trial_limits.eval_batches must be an integer >= 1, got 0"),
        ({"trial_limits": {"epochs": 1.5}}, "trial_limits.epochs must be an integer >= 1, got 1.5"),
        ({"trial_limits": {"epochs": True}}, "trial_limits.epochs must be an integer >= 1, got True"),
        ({"trial_limits": {"max_steps_per_epoch": "2"}}, "max_steps_per_epoch must be an integer >= 1"),
    ],
)
def test_a_wrong_cluster_setting_is_one_line_and_exit_2(jiio, message, tmp_path, monkeypatch, capsys):
    path = _config(tmp_path, **{"storage": "s3://b/j", **jiio})
    with pytest.raises(SystemExit) as exc:
        _args([], monkeypatch, path)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and message in err and "\n" not in err


def test_local_default_storage_on_a_launcher_cluster_is_refused(tmp_path, monkeypatch, capsys):
    doc = yaml.safe_load((ROOT / "cluster" / "gpu.yaml").read_text())
    del doc["metadata"]["jiio"]["storage"]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(SystemExit):
        _args([], monkeypatch, str(path))
    err = capsys.readouterr().err
    assert "--storage defaults to the local directory 'results'" in err and "metadata.jiio.storage" in err
    # An explicit directory is the user's choice (e.g. NFS); the driver then checks every node sees it.
    args = _args(["--storage", str(tmp_path / "nfs")], monkeypatch, str(path))
    assert args.storage == str(tmp_path / "nfs")


def test_a_missing_cluster_config_named_by_the_environment_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv("JIIO_CLUSTER_CONFIG", str(tmp_path / "nope.yaml"))
    with pytest.raises(ClusterSettingsError, match="does not exist"):
        ClusterSettings.load()
    assert os.environ["JIIO_CLUSTER_CONFIG"].endswith("nope.yaml")


class _RanError(Exception):
    pass


def _swept(argv, monkeypatch, path):
    """The SweepConfig that ``sweep_cli.main`` hands to run_sweep (nothing runs), and the
    settings line it printed."""
    seen = {}

    def run_sweep(cfg):
        seen["cfg"] = cfg
        raise _RanError

    monkeypatch.setenv("JIIO_CLUSTER_CONFIG", path)
    monkeypatch.setattr(sweep_cli, "run_sweep", run_sweep)
    with pytest.raises(_RanError):
        sweep_cli.main(alpha.SPEC, argv)
    return seen["cfg"]


@pytest.mark.parametrize("size", [[], ["--model-size", "tiny"]])
def test_trial_limits_bound_every_trial_the_same_way_at_every_model_size(size, tmp_path, monkeypatch, capsys):
    limits = {"max_steps_per_epoch": 2, "eval_batches": 1}
    path = _config(tmp_path, storage="s3://b/j", trial_limits=limits)
    cfg = _swept(size, monkeypatch, path)
    trial = TaskConfig.from_flat({**cfg.fixed, **cfg.enqueue[0]})
    assert (trial.max_steps_per_epoch, trial.eval_batches) == (2, 1)
    # Everything else is the script's: paper size keeps its own settings (TaskConfig's 2 epochs).
    plain = alpha.fixed(
        sweep_cli.build_parser(alpha.SPEC).parse_args([*size, "--model-size", trial.model_size])
    )
    assert {k: v for k, v in cfg.fixed.items() if k not in limits} == {
        k: v for k, v in plain.items() if k not in limits
    }
    assert trial.model_size == ("tiny" if size else "paper") and trial.epochs == 2
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("settings:"))
    assert f"trial_limits={limits!r} (cluster {path})" in line, line


def test_a_flag_wins_over_a_trial_limit_and_limits_never_lengthen(tmp_path, monkeypatch, capsys):
    path = _config(tmp_path, storage="s3://b/j", trial_limits={"epochs": 1, "max_steps_per_epoch": 5})
    assert _swept([], monkeypatch, path).fixed["epochs"] == 1
    capsys.readouterr()
    cfg = _swept(["--epochs", "3"], monkeypatch, path)
    assert cfg.fixed["epochs"] == 3 and cfg.fixed["max_steps_per_epoch"] == 5
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("settings:"))
    assert (
        "trial_limits={'max_steps_per_epoch': 5} (cluster" in line and "--epochs given: the flag wins" in line
    )
    # An upper bound: --smoke's 2 steps per epoch stay 2.
    assert _swept(["--smoke"], monkeypatch, path).fixed["max_steps_per_epoch"] == 2


def test_without_trial_limits_the_fixed_settings_are_the_scripts(tmp_path, monkeypatch, capsys):
    path = _config(tmp_path, storage="s3://b/j")
    cfg = _swept([], monkeypatch, path)
    assert cfg.fixed == alpha.fixed(sweep_cli.build_parser(alpha.SPEC).parse_args(["--model-size", "paper"]))
    assert "trial_limits=" not in capsys.readouterr().out
