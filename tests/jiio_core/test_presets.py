"""Tests for ``jiio_core.presets``: every named JIIO setting is its paper base plus its
changes, valid, sourced, and reachable through ``JIIOConfig.preset``."""

from __future__ import annotations

import dataclasses

import pytest

from jiio_core import JIIOConfig
from jiio_core.presets import PRESETS, Preset, preset

PAPER_TASKS = ("mnist_adversarial", "cifar_adversarial", "celeba_generative")
PAPER_PRESETS = {
    "paper-mnist-adversarial": "mnist_adversarial",
    "paper-cifar-adversarial": "cifar_adversarial",
    "paper-celeba-generative": "celeba_generative",
}
JIIO_FIELDS = {f.name for f in dataclasses.fields(JIIOConfig)}


def test_presets_table_is_non_empty_and_typed():
    assert PRESETS
    for name, entry in PRESETS.items():
        assert isinstance(name, str) and name == name.strip() and name
        assert isinstance(entry, Preset)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_is_its_base_plus_changes(name):
    entry = PRESETS[name]
    assert entry.base in PAPER_TASKS, f"{name}: base {entry.base!r} is not a JIIOConfig.paper task"
    assert set(entry.changes) <= JIIO_FIELDS, f"{name}: unknown fields {set(entry.changes) - JIIO_FIELDS}"
    got = preset(name)
    assert isinstance(got, JIIOConfig)
    # built independently: the paper's fields, the changes on top, through the validating constructor
    expected = JIIOConfig(**{**dataclasses.asdict(JIIOConfig.paper(entry.base)), **entry.changes})
    assert got == expected
    assert got == JIIOConfig.paper(entry.base).replace(**entry.changes)
    assert got == entry.config()
    # valid: rebuilding from its own fields passes __post_init__'s checks and gives it back
    assert JIIOConfig(**got.to_dict()) == got
    for field, value in entry.changes.items():
        assert getattr(got, field) == value


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_classmethod_is_the_same_function(name):
    assert JIIOConfig.preset(name) == preset(name)
    assert JIIOConfig.preset(name) is not preset(name)  # a fresh config each call


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_names_its_source(name):
    assert isinstance(PRESETS[name].source, str)
    assert PRESETS[name].source.strip(), f"preset {name} has no source"


@pytest.mark.parametrize("bad", ["", "paper", "paper-mnist", "PAPER-MNIST-ADVERSARIAL", "mnist_adversarial"])
@pytest.mark.parametrize("build", [preset, JIIOConfig.preset])
def test_unknown_name_lists_the_known_ones(bad, build):
    with pytest.raises(ValueError, match="unknown JIIO preset") as err:
        build(bad)
    message = str(err.value)
    assert repr(bad) in message
    for known in PRESETS:
        assert known in message


@pytest.mark.parametrize(("name", "task"), sorted(PAPER_PRESETS.items()))
def test_paper_presets_are_the_paper_settings(name, task):
    assert name in PRESETS
    assert PRESETS[name].base == task
    assert preset(name) == JIIOConfig.paper(task)
    assert JIIOConfig.preset(name) == JIIOConfig.paper(task)


def test_paper_presets_differ_from_each_other():
    configs = [preset(name) for name in PAPER_PRESETS]
    assert len({dataclasses.astuple(c) for c in configs}) == len(configs)
