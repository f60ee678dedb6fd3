"""``jiio analyze``: kept as the entry point; the implementation is :mod:`orchestrator.analysis`."""

from __future__ import annotations

from orchestrator.analysis import AnalyzeError, Source, compare, plot_sweep, run, sql, summarize, summary_text

__all__ = ["AnalyzeError", "Source", "compare", "plot_sweep", "run", "sql", "summarize", "summary_text"]
