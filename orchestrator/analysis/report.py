"""A summarised sweep in words: the console text and a self-contained HTML report (tables
and the PNG plots embedded as base64, one file to mail or archive)."""

from __future__ import annotations

import base64
import html
import math
import os
import time
from typing import Any

__all__ = ["fmt", "summary_text", "write_html"]


def fmt(v: Any, width: int = 14) -> str:
    if isinstance(v, float):
        return f"{v:{width}.4g}"
    if v is None:
        v = "-"
    return f"{v!s:>{width}s}"


def _hours(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


def _ci(row: dict[str, Any], metric: str) -> str:
    ci = row.get(f"{metric}_ci")
    if ci and all(isinstance(v, (int, float)) for v in ci):
        return f"[{ci[0]:.4g}, {ci[1]:.4g}]"
    return "n unknown" if row.get(f"{metric}_n") is None else "no samples"


def table_rows(s: dict[str, Any], rows: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Columns and cells of a trial table: id (status), each objective with its interval and
    n, the parameters, wall time."""
    metrics = [m for m in s.get("metrics", []) if any(m in r for r in rows)]
    params = [p for p in (s.get("space") or {}) if any(p in r for r in rows)]
    cols = ["trial_id"] + (["status"] if any("status" in r for r in rows) else [])
    for m in metrics:
        cols += [m, f"{m} 95% CI", "n"]
    cols += [*params, "wall_s"]
    cells = []
    for r in rows:
        line: list[Any] = [r.get("trial_id")] + ([r.get("status")] if "status" in cols else [])
        for m in metrics:
            line += [r.get(m), _ci(r, m), r.get(f"{m}_n")]
        line += [r.get(p) for p in params] + [r.get("wall_s")]
        cells.append(line)
    if not metrics and rows:  # an older summary: whatever the rows hold
        cols = list(rows[0])
        cells = [[r.get(c) for c in cols] for r in rows]
    return cols, cells


def _header(s: dict[str, Any]) -> str:
    status = ", ".join(f"{k} {v}" for k, v in sorted(s["status"].items()))
    line = (
        f"sweep {s['sweep']}: {s['trials']} trials"
        + (f" of {s['requested']}" if s.get("requested") else "")
        + (f" ({status})" if status else "")
    )
    if s.get("running"):
        line += (
            f", {s['running']} still running"
            if s.get("state") == "running"
            else f", {s['running']} unfinished"
        )
    return line


def summary_text(s: dict[str, Any]) -> str:
    lines = [_header(s)]
    if s.get("state"):
        lines.append(f"state: {s['state']}")
    if s.get("time_s"):
        lines.append("time: " + ", ".join(f"{k} {_hours(v)}" for k, v in sorted(s["time_s"].items())))
    if s.get("metrics"):
        lines.append(
            "objective: " + ", ".join(f"{m} ({mo})" for m, mo in zip(s["metrics"], s["modes"], strict=True))
        )
    lines += [f"note: {n}" for n in s.get("notes", [])]
    for title, rows in (
        ("best trials", s.get("best", [])),
        ("paper configuration", [s["paper"]] if "paper" in s else []),
    ):
        if rows:
            cols, cells = table_rows(s, rows)
            lines += ["", title + ":", "  " + "  ".join(f"{c:>14s}" for c in cols)]
            lines += ["  " + "  ".join(fmt(v) for v in line) for line in cells]
    if s.get("pareto"):
        cols = list(s["pareto"][0])
        lines += ["", "pareto front:", "  " + "  ".join(f"{c:>14s}" for c in cols)]
        lines += ["  " + "  ".join(fmt(r.get(c)) for c in cols) for r in s["pareto"]]
    if "verdict" in s:
        lines += ["", s["verdict"]["text"]]
    elif "best_minus_paper" in s:  # a summary without intervals
        lines += ["", f"best - paper configuration = {s['best_minus_paper']:+.4g} ({s['metrics'][0]})"]
    imp = s.get("importance") or {}
    for what in ("objective", "divergence"):
        if imp.get(what):
            label = s["metrics"][0] if what == "objective" and s.get("metrics") else what
            lines.append(
                f"importance for {label}: " + ", ".join(f"{k} {v:.2f}" for k, v in imp[what].items())
            )
    return "\n".join(lines)


def _table(cols: list[str], cells: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "" if not math.isfinite(v) else f"{v:.4g}"
        return html.escape("" if v is None else str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in cells)
    return f"<table><tr>{head}</tr>{body}</table>"


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right;font-size:13px}th{background:#f2f2f2}.note{color:#8a5a00}.verdict{font-weight:600}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}code{background:#f4f4f4;padding:1px 4px}"""


def write_html(s: dict[str, Any], path: str, storage: str) -> str:
    """Write the sweep's self-contained report to ``path``; returns ``path``."""
    e = html.escape
    parts = [f"<h1>Sweep {e(s['sweep'])}</h1>", f"<p>{e(_header(s))}<br>storage: <code>{e(storage)}</code>"]
    parts.append(
        f"<br>state: <b>{e(str(s.get('state', '?')))}</b>; generated {time.strftime('%Y-%m-%d %H:%M:%S')}</p>"
    )
    parts += [f"<p class=note>note: {e(n)}</p>" for n in s.get("notes", [])]
    counts = dict(s.get("status", {}))
    if s.get("running"):
        counts["running"] = s["running"]
    times = s.get("time_s", {})
    parts.append("<h2>Trials by status</h2>")
    parts.append(
        _table(
            ["status", "trials", "time"],
            [[k, v, _hours(times.get(k, 0.0))] for k, v in sorted(counts.items())],
        )
    )
    if s.get("metrics"):
        parts.append(
            "<p>objective: "
            + e(", ".join(f"{m} ({mo})" for m, mo in zip(s["metrics"], s["modes"], strict=True)))
            + "</p>"
        )
    if "verdict" in s:
        parts.append(f"<p class=verdict>{e(s['verdict']['text'])}</p>")
    for title, rows in (
        ("Best trials", s.get("best", [])),
        ("Median trial", [s["median"]] if s.get("median") else []),
        ("Paper configuration", [s["paper"]] if s.get("paper") else []),
    ):
        if rows:
            parts += [f"<h2>{title}</h2>", _table(*table_rows(s, rows))]
    imp = s.get("importance") or {}
    for what in ("objective", "divergence"):
        if imp.get(what):
            parts += [
                f"<h2>Importance for {e(what)}</h2>",
                _table(["parameter", "importance"], list(imp[what].items())),
            ]
    if s.get("pareto"):
        cols = list(s["pareto"][0])
        parts += ["<h2>Pareto front</h2>", _table(cols, [[r.get(c) for c in cols] for r in s["pareto"]])]
    if s.get("skipped"):
        parts += [
            "<h2>Unreadable files (skipped)</h2>",
            _table(["path", "reason"], [[x["path"], x["reason"]] for x in s["skipped"]]),
        ]
    for p in s.get("plots", []):
        with open(p, "rb") as f:
            data = base64.b64encode(f.read()).decode()
        name = e(os.path.basename(p))
        parts.append(f"<h3>{name}</h3><img alt='{name}' src='data:image/png;base64,{data}'>")
    title = f"<title>jiio analyze: {e(s['sweep'])}</title>"
    head = f"<head><meta charset=utf-8>{title}<style>{_CSS}</style></head>"
    doc = f"<!doctype html><html>{head}<body>{''.join(parts)}</body></html>"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(doc)
    return path
