"""The ``jiio analyze`` command: summaries, plots and reports; ``--sql``; ``--compare``.

Bad input never ends in a traceback. A storage path that does not exist, holds no sweep,
or whose sweep has no readable trial row raises :class:`AnalyzeError` (one line on stderr,
exit code 2). Unreadable files are skipped and named once, after the analysis of what is
readable. A sweep whose objective no trial reported is shown with its counts and the
reason; when no sweep has anything to rank, :func:`run` returns 1.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import pyarrow as pa

from orchestrator.analysis.engine import AnalyzeError, Source, reason
from orchestrator.analysis.plots import plot_all
from orchestrator.analysis.report import summary_text, write_html
from orchestrator.analysis.summary import summarize
from orchestrator.analysis.text_layout import console_width
from orchestrator.driver.hints import jiio
from orchestrator.storage import layout

__all__ = ["compare", "open_source", "run", "sql"]

PROG = "jiio analyze"
# The path is jiio analyze's (and confirm's) first argument, not a flag.
_PATH_HINT = (
    "give as the first argument the results directory (or s3:// / gs:// URI) the sweep wrote to, "
    "its --storage (default: results)"
)


def open_source(path: str) -> Source:
    """The results at ``path``, which must exist and be a directory (or an object-store prefix)."""
    from orchestrator.storage import ResultStore

    try:
        store = ResultStore(path)
        exists, is_dir = store.exists(store.base), store.is_dir(store.base)
    except (ValueError, OSError, pa.ArrowException) as exc:
        raise AnalyzeError(f"cannot open the storage {path!r}: {reason(exc)}") from None
    hint = _PATH_HINT
    if not exists:
        raise AnalyzeError(f"storage path {path} does not exist: {hint}")
    if not is_dir:
        raise AnalyzeError(f"storage path {path} is a file, not a results directory: {hint}")
    return Source(store)


def _no_sweeps(src: Source, path: str, name: str | None) -> AnalyzeError:
    """The error for a path with no (such) sweep: what is there instead."""
    have = src.sweeps("trials")
    started = sorted(set(src.sweeps("pending")) | set(src.sweeps("steps")))
    if name and name in started:
        n = len(src.pending_ids(name))
        return AnalyzeError(
            f"sweep {name} under {path} has no finished trial yet ({n} started): "
            f"each trial writes its row to trials/ when it ends; run {jiio()} analyze again then"
        )
    if name and have:
        return AnalyzeError(f"no results for sweep {name} under {path} (sweeps there: {', '.join(have)})")
    if started:
        return AnalyzeError(
            f"no results for sweep {name or '(any)'} under {path}: no trial has finished yet "
            f"(sweeps started there: {', '.join(started)})"
        )
    entries = sorted(src.store.list_names(src.base))
    trials_dir = layout.sweep_dir("", "trials", "NAME").lstrip("/")
    there = (
        f"it holds {', '.join(entries[:8])}{', ...' if len(entries) > 8 else ''}, but no {trials_dir}/"
        if entries
        else "it is empty"
    )
    return AnalyzeError(
        f"no results for sweep {name or '(any)'} under {path} (sweeps there: none; {there}): {_PATH_HINT}"
    )


def _report_skipped(src: Source, path: str) -> None:
    if not src.skipped:
        return
    n = len(src.skipped)
    print(
        f"{PROG}: warning: skipped {n} unreadable file{'s' if n > 1 else ''} under {path} "
        "(left in place; their rows are missing from the analysis):",
        file=sys.stderr,
    )
    for p, why in sorted(src.skipped.items()):
        print(f"  {src.rel(p)}: {why}", file=sys.stderr)
    print(
        "  resuming the sweep (--resume) moves them to corrupt/ and reruns the trials whose row was lost",
        file=sys.stderr,
    )


def _sweeps(src: Source, path: str, name: str | None) -> list[str]:
    have = src.sweeps("trials")
    if not have or (name and name not in have):
        raise _no_sweeps(src, path, name)
    return [name] if name else have


def out_dir(src: Source, sweep: str, out: str | None) -> str:
    """Where plots and the report go: ``--out``, else beside the results (a local storage
    root's ``analysis/<sweep>/``), else ``./analysis/<sweep>`` (object storage)."""
    if out:
        return out
    if src.store.local:
        return os.path.join(src.base, "analysis", sweep)
    return os.path.join("analysis", sweep)


def _summaries(src: Source, path: str, sweeps: list[str]) -> list[dict[str, Any]]:
    summaries = [summarize(src, sweep) for sweep in sweeps]
    if not any(s["trials"] for s in summaries):
        skipped = sorted(src.rel(p) for p in src.skipped if p.startswith(f"{src.base}/trials/"))
        listed = ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        if skipped:
            raise AnalyzeError(
                f"nothing to analyse under {path} for sweep {', '.join(sweeps)}: every trial file is "
                f"unreadable ({listed}); resume the sweep (--resume): it moves them to corrupt/ and "
                "reruns their trials"
            )
        started = sum(len(src.pending_ids(s)) for s in sweeps)
        raise AnalyzeError(
            f"nothing to analyse under {path} for sweep {', '.join(sweeps)}: no trial rows in trials/"
            + (f" ({started} trials started)" if started else "")
            + f"; each trial writes its row when it ends: run {jiio()} analyze again once one has finished"
        )
    return summaries


def run(
    path: str, name: str | None, out: str | None, as_json: bool, plots: bool = True, report: bool = True
) -> int:
    """``jiio analyze``; returns an exit code: 0, or 1 when no sweep has a trial that can be
    ranked. Raises :class:`AnalyzeError` when there is nothing to analyse."""
    src = open_source(path)
    sweeps = _sweeps(src, path, name)
    summaries = _summaries(src, path, sweeps)
    for s in summaries:
        if not s["trials"]:
            continue
        where = out_dir(src, s["sweep"], out)
        if plots:
            s["plots"] = plot_all(src, s, where)
        skipped = [p for p in src.skipped if layout.sweep_of_path(p) == s["sweep"]]
        if skipped:
            s["skipped"] = [{"path": src.rel(p), "reason": src.skipped[p]} for p in sorted(skipped)]
        if report:
            target = os.path.join(where, f"{s['sweep']}-report.html")
            try:
                s["report"] = write_html(s, target, path)
            except OSError as exc:
                s["notes"].append(f"could not write the report {target} ({reason(exc)}); pass --out DIR")
    if as_json:
        print(json.dumps(summaries if len(summaries) > 1 else summaries[0], default=str))
    else:
        for s in summaries:
            print(summary_text(s, console_width()))
            for p in s.get("plots", []):
                print(f"plot: {p}")
            if s.get("report"):
                print(f"report: {s['report']}")
            print()
    _report_skipped(src, path)
    if not any(s["ranked"] for s in summaries):
        print(f"{PROG}: nothing to rank in sweep {', '.join(sweeps)} (see the notes above)", file=sys.stderr)
        return 1
    return 0


def sql(path: str, name: str | None, query: str, as_json: bool) -> int:
    """``jiio analyze PATH --sql QUERY``: the query over the views ``trials``, ``steps`` and
    ``traces`` (of sweep ``name``, else of every sweep; each has a ``sweep`` column)."""
    src = open_source(path)
    sweeps = sorted(set(src.sweeps("trials")) | set(src.sweeps("steps")) | set(src.sweeps("traces")))
    if name:
        if name not in sweeps:
            raise _no_sweeps(src, path, name)
        sweeps = [name]
    lowered = query.lower()
    tables = [t for t in ("trials", "steps", "traces") if t in lowered]  # build only what is used
    con = src.connect(sweeps, tables)
    import duckdb  # connect() checked that it is there

    try:
        result = con.execute(query)
        names = [d[0] for d in result.description] if result.description else []
        rows = result.fetchall()
    except duckdb.Error as exc:
        raise AnalyzeError(f"--sql: {reason(exc)} (views: trials, steps, traces)") from None
    finally:
        _report_skipped(src, path)
    if as_json:
        print(json.dumps([dict(zip(names, r, strict=True)) for r in rows], default=str))
    else:
        import pandas as pd

        with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 200):
            print(pd.DataFrame(rows, columns=names).to_string(index=False) if rows else "(no rows)")
    return 0


def compare(path: str, a: str, b: str, as_json: bool) -> int:
    """``jiio analyze PATH --compare A B``: two sweeps side by side, and whether A's best
    beats B's (only when their 95% intervals separate)."""
    from orchestrator.analysis.comparison import compare_summaries, compare_text

    src = open_source(path)
    for n in (a, b):
        _sweeps(src, path, n)
    summaries = _summaries(src, path, [a, b])
    result = compare_summaries(*summaries)
    if as_json:
        print(json.dumps(result, default=str))
    else:
        print(compare_text(result))
    _report_skipped(src, path)
    return 0 if all(s["ranked"] for s in summaries) else 1
