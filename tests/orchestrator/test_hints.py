"""Printed hints name a ``jiio`` that runs as printed (issue 18 point 5)."""

from __future__ import annotations

import os
import sys

from orchestrator.analysis.seeds import evaluation_only
from orchestrator.driver import hints


def test_hints_name_the_venvs_jiio_when_it_is_not_on_path(tmp_path, monkeypatch):
    venv = tmp_path / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").write_text("")
    jiio = venv / "jiio"
    jiio.write_text("#!/bin/sh\n")
    jiio.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(venv / "python"))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.chdir(tmp_path)
    assert hints.jiio() == os.path.join(".venv", "bin", "jiio")
    assert "`.venv/bin/jiio confirm R --name S --top 3 --seeds 3`" in evaluation_only("R", "S")
    monkeypatch.setenv("PATH", f"{venv}:/usr/bin")  # an activated venv: the bare name runs it
    assert hints.jiio() == "jiio"
    jiio.unlink()  # no console script: the module
    assert hints.jiio() == f"{venv / 'python'} -m orchestrator.cli"
