"""What a sweep script prints at its end: the sweep's analysis, beside its results.

Why its own module: the closing analysis (``jiio analyze`` run in-process, its report put
in the bucket on object storage) is output, not the running of the sweep
(:mod:`orchestrator.commands.sweep`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass


__all__ = ["closing_analysis", "say"]


def say(text: str) -> None:
    """Print ``text`` on stdout within the console width (``text_layout.console_width``)."""
    from orchestrator.analysis.text_layout import console_width, wrap_lines

    print("\n".join(wrap_lines(text.split("\n"), console_width())), flush=True)


def closing_analysis(storage: str, name: str) -> None:
    """The sweep's summary (best configurations with intervals, the paper's, importance) and
    the path of its HTML report, as ``jiio analyze`` prints them. A failure here never
    changes the sweep's outcome: its results are written."""
    from orchestrator.analysis import AnalyzeError
    from orchestrator.analysis import run as analyze

    print()
    if "://" not in storage:  # the report goes beside the results: <storage>/analysis/<sweep>/
        try:
            analyze(storage, name, None, as_json=False, plots=True, report=True)
        except (AnalyzeError, OSError, ValueError) as exc:
            print(f"(no analysis: {exc})")
        return
    # Object storage: drawn in a temporary directory, then put beside the results in the
    # bucket (nothing is left on the driver's disk), and the printed paths are the bucket's.
    import contextlib
    import io
    import tempfile

    from orchestrator.storage import ResultStore, layout

    with tempfile.TemporaryDirectory() as tmp:
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                analyze(storage, name, tmp, as_json=False, plots=True, report=True)
        except (AnalyzeError, OSError, ValueError) as exc:
            print(out.getvalue() + f"(no analysis: {exc})")
            return
        store = ResultStore(storage)
        target = f"{storage.rstrip('/')}/{layout.relative(store.base, store.analysis_path(name))}"
        for entry in sorted(os.listdir(tmp)):
            with open(os.path.join(tmp, entry), "rb") as f:
                store.put(f"{store.analysis_path(name)}/{entry}", f.read())
        print(out.getvalue().replace(tmp, target), end="")
