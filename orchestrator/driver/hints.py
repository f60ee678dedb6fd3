"""How a printed hint names the ``jiio`` command, so that it runs as printed.

The README installs into ``.venv`` without activating it, so a bare ``jiio`` is usually not
on PATH: a hint names the ``jiio`` beside the running Python (relative to the working
directory when under it), plain ``jiio`` when that very file is what PATH finds, else
``PYTHON -m orchestrator.cli``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys

__all__ = ["jiio"]


def jiio() -> str:
    """The command that runs ``jiio`` here (see the module docstring)."""
    beside = os.path.join(os.path.dirname(sys.executable), "jiio")
    if os.path.isfile(beside) and os.access(beside, os.X_OK):
        found = shutil.which("jiio")
        if found and os.path.realpath(found) == os.path.realpath(beside):
            return "jiio"
        rel = os.path.relpath(beside)
        return shlex.quote(beside if rel.startswith("..") else rel)
    return f"{shlex.quote(sys.executable)} -m orchestrator.cli"
