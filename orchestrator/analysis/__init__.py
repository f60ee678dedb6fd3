"""Analysis of a sweep's Parquet results (``jiio analyze``), at cluster scale.

- :mod:`~orchestrator.analysis.engine`: reads only the files and columns asked for (files
  picked by trial id from their names, both the per-epoch and the compacted layout),
  DuckDB views over ``pyarrow.dataset`` for ``--sql``;
- :mod:`~orchestrator.analysis.sweep_rows`: a sweep's metadata, objectives, searched space,
  statuses and ranking, read defensively;
- :mod:`~orchestrator.analysis.intervals`: 95% intervals of a trial's objective and paired
  comparisons on shared samples;
- :mod:`~orchestrator.analysis.summary`: state, counts and time by status, best and paper
  configurations with 95% intervals, and whether the best really beats the paper's;
- :mod:`~orchestrator.analysis.seeds` (with :mod:`~orchestrator.analysis.seed_values` and
  :mod:`~orchestrator.analysis.seed_verdicts`): configurations with several seeds (a ``jiio
  confirm`` sweep): intervals over seeds, variance components, verdicts against the
  paper's configuration paired by seed, selection optimism;
- :mod:`~orchestrator.analysis.importance`: parameter importance (objective, divergence)
  with bootstrap intervals over trials, and the divergence grid;
- :mod:`~orchestrator.analysis.plots`, :mod:`~orchestrator.analysis.traces` (drawing with
  :mod:`~orchestrator.analysis.figures`): the PNGs;
- :mod:`~orchestrator.analysis.report` (with :mod:`~orchestrator.analysis.text_layout` and
  :mod:`~orchestrator.analysis.seed_text`): console text and the self-contained HTML report;
- :mod:`~orchestrator.analysis.comparison`: two sweeps side by side (``--compare``);
- :mod:`~orchestrator.analysis.command`: ``run``, ``sql``, ``compare``.
"""

from __future__ import annotations

from typing import Any

from orchestrator.analysis.command import compare, run, sql
from orchestrator.analysis.engine import AnalyzeError, Source
from orchestrator.analysis.report import summary_text
from orchestrator.storage import ResultStore

__all__ = ["AnalyzeError", "Source", "compare", "plot_sweep", "run", "sql", "summarize", "summary_text"]


def _source(store: ResultStore | Source) -> Source:
    return store if isinstance(store, Source) else Source(store)


def summarize(store: ResultStore | Source, sweep: str, top: int = 5) -> dict[str, Any]:
    """One sweep as plain data (see :func:`orchestrator.analysis.summary.summarize`)."""
    from orchestrator.analysis.summary import summarize as _summarize

    return _summarize(_source(store), sweep, top)


def plot_sweep(store: ResultStore | Source, sweep: str, out_dir: str) -> list[str]:
    """Write the sweep's PNG plots into ``out_dir``; returns their paths (a plot whose data
    is missing is left out)."""
    from orchestrator.analysis.plots import plot_all

    src = _source(store)
    return plot_all(src, summarize(src, sweep), out_dir)
