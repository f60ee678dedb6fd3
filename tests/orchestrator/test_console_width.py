"""The sweep's closing analysis and ``jiio analyze`` fit an 80-column terminal (issue 18
point 6): tables narrowed, long lines wrapped; a wider terminal gets wider lines."""

from __future__ import annotations

import numpy as np

from orchestrator.analysis.text_layout import fit_table, wrap_lines
from orchestrator.cli import main

from ._planted import planted
from .test_analyze_seeds import _seed_sweep


def _lines(capsys, monkeypatch, columns, *argv):
    monkeypatch.delenv("JIIO_CONSOLE_WIDTH", raising=False)
    monkeypatch.setenv("COLUMNS", str(columns))  # what shutil.get_terminal_size reads first
    assert main(["analyze", *map(str, argv), "--no-plots", "--no-report"]) == 0
    return capsys.readouterr().out.splitlines()


def test_jiio_analyze_fits_80_columns(tmp_path, capsys, monkeypatch):
    store = planted(str(tmp_path / "a"), n=6)
    lines = _lines(capsys, monkeypatch, 80, store.root, "--name", "s")
    assert max(map(len, lines)) <= 80, max(lines, key=len)
    text = "\n".join(lines)
    assert "best trials (n = 100000 samples each):" in text and "[0.9486, 0.9513]" in text  # not cut
    header = next(line for line in lines if line.strip().startswith("trial_id"))
    assert "alpha_x" in header and "robust_acc" in header  # parameters and objective kept
    wide = _lines(capsys, monkeypatch, 200, store.root, "--name", "s")
    assert max(map(len, wide)) > 80 and max(map(len, wide)) <= 200  # a wider terminal is used


def test_the_seed_table_fits_80_columns(tmp_path, capsys, monkeypatch):
    rng = np.random.default_rng(3)
    base = 0.42 + rng.normal(0, 0.05, 5)
    configs = {"paper": (0.6, base), "better": (0.3, base + 0.02), "worse": (1.2, base - 0.03)}
    store = _seed_sweep(str(tmp_path), configs)
    lines = _lines(capsys, monkeypatch, 80, store.root, "--name", "m")
    assert max(map(len, lines)) <= 80, max(lines, key=len)
    assert any("beats the paper's settings" in line for line in lines)


def test_fit_table_drops_then_lists_and_wrap_keeps_intervals_whole():
    cols, cells = ["id", "a", "b", "wall_s"], [["x" * 30, 0.5, "y" * 30, 1.0]]
    assert all("wall_s" not in line for line in fit_table(cols, cells, 70, drop=("wall_s",)))
    tight = fit_table(cols, cells, 40, drop=("wall_s",))
    assert max(map(len, tight)) <= 40 and "a 0.5" in "\n".join(tight)
    wrapped = wrap_lines(["importance: " + ", ".join(f"p{i} 0.5 [0.0011, 0.61]" for i in range(9))], 40)
    assert max(map(len, wrapped)) <= 40 and all(line.count("[") == line.count("]") for line in wrapped)
