"""Tests for JIIOConfig and DEQConfig: validation (errors name the field), the paper presets
(numbers from the paper's released code), replace and to_dict."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest

from jiio_core import SOLVERS, DEQConfig, JIIOConfig

INF, NAN = math.inf, math.nan

# (overrides, the field the error must name)
JIIO_BAD = [
    ({"alpha_z": 0}, "alpha_z"),
    ({"alpha_z": 1.5}, "alpha_z"),
    ({"alpha_z": -0.2}, "alpha_z"),
    ({"alpha_z": NAN}, "alpha_z"),
    ({"alpha_z": True}, "alpha_z"),
    ({"alpha_z": "0.5"}, "alpha_z"),
    ({"alpha_mu": -0.1}, "alpha_mu"),
    ({"alpha_mu": 0.0}, "alpha_mu"),
    ({"alpha_mu": 1.0001}, "alpha_mu"),
    ({"alpha_x": 0}, "alpha_x"),
    ({"alpha_x": INF}, "alpha_x"),
    ({"alpha_x": -0.1}, "alpha_x"),
    ({"alpha_x": NAN}, "alpha_x"),
    ({"solver": "newton"}, "solver"),
    ({"solver": "Anderson"}, "solver"),
    ({"anderson_m": 0}, "anderson_m"),
    ({"anderson_m": 2.5}, "anderson_m"),
    ({"anderson_m": True}, "anderson_m"),
    ({"max_iter": 0}, "max_iter"),
    ({"max_iter": 2.5}, "max_iter"),
    ({"max_iter": -1}, "max_iter"),
    ({"tol": -1}, "tol"),
    ({"tol": NAN}, "tol"),
    ({"tol": INF}, "tol"),
    ({"early_stop": 1}, "early_stop"),
    ({"early_stop": "yes"}, "early_stop"),
    ({"alpha_x_switch_iter": 50}, "alpha_x_switch_iter"),  # without alpha_x_drop
    ({"alpha_x_switch_iter": 0, "alpha_x_drop": 0.2}, "alpha_x_switch_iter"),
    ({"alpha_x_switch_iter": 2.5, "alpha_x_drop": 0.2}, "alpha_x_switch_iter"),
    ({"alpha_x_drop": 0}, "alpha_x_drop"),
    ({"alpha_x_switch_iter": 10, "alpha_x_drop": 0}, "alpha_x_drop"),
    ({"alpha_x_drop": INF}, "alpha_x_drop"),
    ({"alpha_x_drop": -0.1}, "alpha_x_drop"),
    ({"alpha_x_drop": NAN}, "alpha_x_drop"),
    ({"alpha_x_drop": True}, "alpha_x_drop"),
    ({"init": "zeros"}, "init"),
    ({"init": None}, "init"),
    ({"select": "Paper"}, "select"),
    ({"anderson_beta": 0}, "anderson_beta"),
    ({"anderson_beta": 1.5}, "anderson_beta"),
    ({"anderson_beta": NAN}, "anderson_beta"),
    ({"x_step": "sign"}, "x_step"),
    ({"select": "best"}, "select"),
    ({"select_slack": 0.5}, "select_slack"),
    ({"select_slack": INF}, "select_slack"),
    ({"anderson_type": "III"}, "anderson_type"),
    ({"anderson_type": 1}, "anderson_type"),
    ({"anderson_lam": -1e-5}, "anderson_lam"),
    ({"anderson_lam": NAN}, "anderson_lam"),
    ({"backward": "unrolled"}, "backward"),
    ({"backward_max_iter": 0}, "backward_max_iter"),
    ({"backward_max_iter": 1.5}, "backward_max_iter"),
    ({"backward_tol": -1e-6}, "backward_tol"),
    ({"backward_tol": INF}, "backward_tol"),
    ({"divergence_factor": 1}, "divergence_factor"),
    ({"divergence_factor": 0.5}, "divergence_factor"),
    ({"divergence_factor": INF}, "divergence_factor"),
]

DEQ_BAD = [
    ({"solver": "newton"}, "solver"),
    ({"max_iter": 0}, "max_iter"),
    ({"max_iter": 2.5}, "max_iter"),
    ({"tol": -1}, "tol"),
    ({"tol": NAN}, "tol"),
    ({"anderson_m": 0}, "anderson_m"),
    ({"anderson_lam": -1.0}, "anderson_lam"),
    ({"anderson_lam": INF}, "anderson_lam"),
    ({"backward": "unrolled"}, "backward"),
    ({"backward": "IFT"}, "backward"),
    ({"backward_max_iter": 0}, "backward_max_iter"),
    ({"backward_tol": -1}, "backward_tol"),
    ({"divergence_factor": 1.0}, "divergence_factor"),
    ({"divergence_factor": NAN}, "divergence_factor"),
]


def _ids(cases):
    return ["-".join(f"{k}={v!r}" for k, v in kw.items()) for kw, _ in cases]


def _names_field(field: str) -> str:
    # The message starts with the field name as a whole word: "alpha_x must ...", so that
    # e.g. an error about alpha_x_drop does not count as naming alpha_x.
    return rf"^{re.escape(field)} must"


@pytest.mark.parametrize(("overrides", "field"), JIIO_BAD, ids=_ids(JIIO_BAD))
def test_jiio_config_invalid_value_names_field(overrides, field):
    with pytest.raises(ValueError, match=_names_field(field)):
        JIIOConfig(**overrides)


@pytest.mark.parametrize(("overrides", "field"), DEQ_BAD, ids=_ids(DEQ_BAD))
def test_deq_config_invalid_value_names_field(overrides, field):
    with pytest.raises(ValueError, match=_names_field(field)):
        DEQConfig(**overrides)


@pytest.mark.parametrize(
    "overrides",
    [
        {"alpha_z": 1.0, "alpha_mu": 1.0, "alpha_x": 1e-6},
        {"alpha_z": 1e-9, "alpha_mu": 0.5, "alpha_x": 100},
        {"tol": 0, "anderson_lam": 0, "backward_tol": 0},
        {"anderson_m": 1, "max_iter": 1, "backward_max_iter": 1},
        {"alpha_x_switch_iter": 1, "alpha_x_drop": 0.5},
        {"alpha_x_drop": 3.0},
        {"select": "objective", "select_slack": 1.0, "x_step": "normalized", "anderson_type": "I"},
        {"select": "paper", "init": "zero", "anderson_lam": 0.0, "anderson_beta": 1.0},
        {"init": "cell_step", "anderson_beta": 1e-3},
        {"solver": "broyden", "backward": "jfb", "early_stop": False, "divergence_factor": 1.0001},
    ],
)
def test_jiio_config_boundary_values_are_valid(overrides):
    cfg = JIIOConfig(**overrides)
    for k, v in overrides.items():
        assert getattr(cfg, k) == v


@pytest.mark.parametrize("solver", ["anderson", "broyden", "fixed_point"])
def test_solver_names(solver):
    assert solver in SOLVERS
    assert DEQConfig(solver=solver).solver == solver
    assert JIIOConfig(solver=solver).solver == solver


def test_design_field_names_exist():
    names = {f.name for f in dataclasses.fields(JIIOConfig)}
    assert {"alpha_z", "alpha_mu", "alpha_x", "solver", "anderson_m", "max_iter", "tol", "backward"} <= names


# --------------------------------------------------------------------------- paper presets


def _paper_switch(T: int) -> int | None:
    """The iteration (0-based) at which the paper code first uses the second alpha_x: its
    loop sets it inside f(v, it) when (it + 1) % max(50, int(T * 5 / 8)) == 0, before the
    x step, for it = 0 .. T - 1."""
    period = max(50, int(T * 5 / 8))
    hits = [it for it in range(T) if (it + 1) % period == 0]
    return hits[0] if hits else None


def test_paper_mnist_adversarial():
    cfg = JIIOConfig.paper("mnist_adversarial")
    assert (cfg.alpha_z, cfg.alpha_mu, cfg.alpha_x) == (0.8, 0.6, 0.6)
    assert _paper_switch(80) == 49
    assert cfg.alpha_x_switch() == 49
    assert cfg.alpha_x_at(0) == 0.6
    assert cfg.alpha_x_at(48) == 0.6
    assert cfg.alpha_x_at(49) == 0.2  # exactly: the drop is 0.2 / 0.6
    assert cfg.alpha_x_at(79) == 0.2
    assert cfg.max_iter == 80 and cfg.anderson_m == 20
    assert cfg.x_step == "normalized"
    assert cfg.anderson_type == "I" and cfg.anderson_lam == 0 and cfg.anderson_beta == 1.0
    assert cfg.solver == "anderson"
    assert cfg.init == "zero" and cfg.select == "paper" and cfg.select_slack == 1.3
    assert cfg.early_stop is False  # the paper code runs all iterations


def test_paper_cifar_adversarial():
    cfg = JIIOConfig.paper("cifar_adversarial")
    assert (cfg.alpha_z, cfg.alpha_mu, cfg.alpha_x) == (0.8, 0.6, 0.1)
    assert cfg.alpha_x_at(0) == cfg.alpha_x_at(79) == 0.1
    assert cfg.alpha_x_switch() is None
    assert cfg.max_iter == 80 and cfg.anderson_m == 20
    assert cfg.x_step == "normalized" and cfg.anderson_type == "I"
    assert (cfg.init, cfg.select, cfg.anderson_lam) == ("zero", "paper", 0)


def test_paper_celeba_generative():
    cfg = JIIOConfig.paper("celeba_generative")
    assert (cfg.alpha_z, cfg.alpha_mu, cfg.alpha_x) == (0.8, 0.6, 0.01)
    assert _paper_switch(100) == 61  # max(50, int(62.5)) = 62, first used at 61
    assert cfg.alpha_x_switch() == 61
    assert cfg.alpha_x_at(60) == 0.01
    assert cfg.alpha_x_at(61) == 0.003
    assert cfg.alpha_x_at(99) == 0.003
    assert cfg.max_iter == 100 and cfg.anderson_m == 40
    assert cfg.x_step == "gradient" and cfg.anderson_type == "I"
    assert (cfg.init, cfg.select, cfg.anderson_lam) == ("zero", "paper", 0)


@pytest.mark.parametrize("T", [1, 10, 48, 49, 50, 51, 79, 80, 81, 100, 120, 160, 161, 400])
@pytest.mark.parametrize("drop", [0.2 / 0.6, 0.3])
def test_alpha_x_drop_rule_follows_max_iter(T, drop):
    """With alpha_x_switch_iter None the drop follows the paper code's rule for any T, so a
    sweep that searches max_iter keeps the paper's schedule (and no drop when T < 50)."""
    cfg = JIIOConfig(alpha_x=0.6, alpha_x_drop=drop, max_iter=T)
    at = _paper_switch(T)
    assert cfg.alpha_x_switch() == at
    for it in range(T):
        want = 0.6 * drop if at is not None and it >= at else 0.6
        assert cfg.alpha_x_at(it) == pytest.approx(want, rel=1e-15), it


def test_alpha_x_switch_iter_explicit():
    cfg = JIIOConfig(alpha_x=0.5, alpha_x_drop=0.5, alpha_x_switch_iter=3, max_iter=10)
    assert [cfg.alpha_x_at(i) for i in range(5)] == [0.5, 0.5, 0.5, 0.25, 0.25]
    assert cfg.replace(max_iter=3).alpha_x_switch() is None  # at or after max_iter: no drop
    assert JIIOConfig(alpha_x=0.5).alpha_x_switch() is None


def test_paper_unknown_task_lists_tasks():
    with pytest.raises(ValueError) as err:
        JIIOConfig.paper("imagenet_adversarial")
    msg = str(err.value)
    for task in ("mnist_adversarial", "cifar_adversarial", "celeba_generative"):
        assert task in msg
    assert "imagenet_adversarial" in msg


def test_deq_config_paper_baseline():
    cfg = DEQConfig.paper()
    assert (cfg.solver, cfg.max_iter, cfg.backward_max_iter) == ("broyden", 18, 18)
    assert cfg.backward == "ift"


def test_alpha_x_at_without_switch_is_constant():
    cfg = JIIOConfig(alpha_x=0.3)
    assert all(cfg.alpha_x_at(k) == 0.3 for k in (0, 1, 50, 10_000))


# --------------------------------------------------------------------------- replace / to_dict


def test_replace_validates_and_copies():
    cfg = JIIOConfig.paper("mnist_adversarial")
    new = cfg.replace(alpha_x=0.3, max_iter=10)
    assert (new.alpha_x, new.max_iter) == (0.3, 10)
    assert (cfg.alpha_x, cfg.max_iter) == (0.6, 80)  # original untouched
    assert new.alpha_x_drop == 0.2 / 0.6 and new.anderson_type == "I"  # rest carried over
    assert new.alpha_x_switch() is None  # the rule: 49 >= max_iter 10
    with pytest.raises(ValueError, match=_names_field("alpha_z")):
        cfg.replace(alpha_z=0)
    with pytest.raises(ValueError, match=_names_field("alpha_x_switch_iter")):
        cfg.replace(alpha_x_switch_iter=40, alpha_x_drop=None)  # a switch of no drop
    with pytest.raises(TypeError):
        cfg.replace(not_a_field=1)


def test_config_is_frozen():
    cfg = JIIOConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.alpha_z = 0.5  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEQConfig().tol = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("task", [None, "mnist_adversarial", "cifar_adversarial", "celeba_generative"])
def test_to_dict_round_trips(task):
    cfg = JIIOConfig() if task is None else JIIOConfig.paper(task)
    d = cfg.to_dict()
    assert isinstance(d, dict)
    assert set(d) == {f.name for f in dataclasses.fields(JIIOConfig)}
    assert d["alpha_z"] == cfg.alpha_z and d["anderson_m"] == cfg.anderson_m
    back = JIIOConfig(**d)
    assert back == cfg
    d["alpha_x"] = 0.123  # a copy: mutating it does not touch the config
    assert cfg.alpha_x != 0.123
