"""A summarised sweep in words: the console text and a self-contained HTML report (tables
and the PNG plots embedded as base64, one file to mail or archive)."""

from __future__ import annotations

import base64
import html
import math
import os
import re
import shutil
import textwrap
import time
from typing import Any

__all__ = [
    "confirm_text",
    "console_width",
    "fit_table",
    "fmt",
    "seed_lines",
    "seed_rows",
    "summary_text",
    "wrap_lines",
    "write_html",
]


def console_width() -> int:
    """The width the console text is laid out for: the terminal's, at least 80
    (``JIIO_CONSOLE_WIDTH`` sets it)."""
    try:
        return max(20, int(os.environ["JIIO_CONSOLE_WIDTH"]))
    except (KeyError, ValueError):
        return max(80, shutil.get_terminal_size((80, 24)).columns)


def wrap_lines(lines: list[str], width: int | None) -> list[str]:
    """Each line longer than ``width`` wrapped at spaces (paths and numbers are never cut),
    continuation lines indented two more than the line's own indent."""
    if not width:
        return lines
    out: list[str] = []
    for line in lines:
        if len(line) <= width:
            out.append(line.replace("\0", " "))
            continue
        indent = line[: len(line) - len(line.lstrip())]
        glued = re.sub(r"\[([^\[\], ]+), ([^\[\], ]+)\]", "[\\1,\0\\2]", line)  # intervals stay whole
        out += [
            w.replace("\0", " ")
            for w in textwrap.wrap(
                glued,
                width,
                subsequent_indent=indent + "  ",
                break_long_words=False,
                break_on_hyphens=False,
            )
        ] or [line]
    return out


def _cell(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else ("-" if v is None else str(v))


def fit_table(
    cols: list[str], cells: list[list[Any]], width: int | None = None, drop: tuple[str, ...] = ()
) -> list[str]:
    """A left-aligned text table, each column as wide as its widest cell, within ``width``:
    the columns named in ``drop`` go first (in that order) while it is too wide, and if it
    still is, each row becomes its own wrapped ``column value`` line."""
    text = [[_cell(v) for v in row] for row in cells]
    keep = list(range(len(cols)))

    def render() -> list[str]:
        widths = {i: max([len(cols[i])] + [len(row[i]) for row in text]) for i in keep}
        out = ["  " + "  ".join(cols[i].ljust(widths[i]) for i in keep).rstrip()]
        out += ["  " + "  ".join(row[i].ljust(widths[i]) for i in keep).rstrip() for row in text]
        return out

    lines = render()
    for name in drop:
        if not width or max(map(len, lines)) <= width:
            return lines
        if name in cols and cols.index(name) in keep:
            keep.remove(cols.index(name))
            lines = render()
    if not width or max(map(len, lines)) <= width:
        return lines
    # "\0": a column's name and its value stay on one line (wrap_lines makes it a space)
    records = ["  " + ", ".join(f"{cols[i]}\0{row[i]}" for i in keep if row[i] != "-") for row in text]
    return wrap_lines(records, width)


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
        cols += [m, "95% CI" if len(metrics) == 1 else f"{m} 95% CI", "n"]
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


def _iv(ci: Any, digits: int = 4) -> str:
    if ci and all(isinstance(v, (int, float)) and math.isfinite(v) for v in ci):
        return f"[{ci[0]:.{digits}g}, {ci[1]:.{digits}g}]"
    return "-"


def _signed(v: Any) -> Any:
    return f"{v:+.4g}" if isinstance(v, (int, float)) and math.isfinite(v) else None


def seed_rows(sec: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Columns and cells of the table of configurations over seeds (a ``seeds`` or
    ``confirm`` section): trial id, labels, seeds, mean with its interval over seeds, the
    difference against the paper's configuration paired by seed with its interval, the
    verdict, and for a confirmation the sweep's own value and the selection optimism."""
    m = sec.get("metric", "value")
    rows = sec.get("configs", [])
    confirm = any("sweep_value" in r for r in rows)
    cols = [
        "trial",
        "label",
        "seeds",
        f"{m} mean",
        "95% CI over seeds",
        "vs paper",
        "95% CI (paired)",
        "verdict",
    ]
    if confirm:
        cols += ["in the sweep", "optimism", "its 95% CI"]
    cells = []
    for r in rows:
        vs = r.get("vs_paper") or {}
        seeds = f"{r.get('seeds')}" + (
            f" (+{r['not_completed']} not completed)" if r.get("not_completed") else ""
        )
        line = [
            r.get("trial_id") or ",".join(r.get("trial_ids", [])[:1]) or "-",
            ", ".join(r.get("labels") or []) or "-",
            seeds,
            r.get("mean"),
            _iv(r.get("ci")),
            _signed(vs.get("difference")) or "-",
            _iv(vs.get("ci")),
            r.get("verdict") or "-",
        ]
        if confirm:
            opt = r.get("optimism") or {}
            line += [r.get("sweep_value"), _signed(opt.get("value")) or "-", _iv(opt.get("ci"), 3)]
        cells.append(line)
    return cols, cells


def _grid(cols: list[str], cells: list[list[Any]], width: int | None = None) -> list[str]:
    """A left-aligned text table, each column as wide as its widest cell (within ``width``)."""
    return fit_table(cols, cells, width, drop=("label", "its 95% CI", "in the sweep"))


def _component_lines(sec: dict[str, Any]) -> list[str]:
    lines = []
    for r in sec.get("configs", []):
        c = r.get("components")
        if not c:
            continue
        name = r.get("trial_id") or ", ".join(r.get("labels") or []) or "configuration"
        upper = "; at most: every seed scored the same samples" if c.get("shared_samples") else ""
        lines.append(
            f"  {name}: between seeds {c['between']:.3g} (sd {c['sd_training']:.3g}, training noise); "
            f"within a seed {c['within']:.3g} per sample, {c['evaluation']:.3g} for one seed's "
            f"{c['n']:.0f} samples (sd {c['sd_evaluation']:.3g}, evaluation noise{upper})"
        )
    if lines:
        lines.insert(0, f"variance components of {sec.get('metric')} (one-way random-effects ANOVA):")
    return lines


def _optimism_lines(sec: dict[str, Any]) -> list[str]:
    rows = [r for r in sec.get("configs", []) if (r.get("optimism") or {}).get("ci")]
    if not rows:
        return []
    lines = [
        "selection optimism: the sweep's value minus the mean over the new seeds (positive: the sweep's "
        "looked better; 95% interval of one more seed against that mean):"
    ]
    for r in rows:
        o = r["optimism"]
        name = r.get("trial_id") or "-"
        text = f"  {name} ({', '.join(r.get('labels') or [])}): {o['value']:+.4g} {_iv(o['ci'])}"
        rel = r.get("optimism_vs_paper")
        if rel:
            text += f"; beyond the paper's (not selected by the sweep) {rel['value']:+.4g} {_iv(rel['ci'])}"
        lines.append(text)
    return lines


def seed_lines(sec: dict[str, Any], width: int | None = None) -> list[str]:
    """A ``seeds`` or ``confirm`` section in words: the table, one verdict line per
    configuration, the variance components and (confirmation) the selection optimism."""
    m = sec.get("metric")
    head = (
        f"confirmation of {sec['sweep']} ({sec.get('confirm_sweep', '')}): {sec.get('why')}; "
        f"seeds {', '.join(sec.get('seeds', []))}"
        if "why" in sec and sec.get("sweep")
        else (f"confirmation: {sec['why']}" if "why" in sec else f"{m} over seeds, per configuration")
    )
    lines = [
        head,
        f"{m}: mean over seeds with its 95% t interval; differences paired by seed, against the paper's",
    ]
    cols, cells = seed_rows(sec)
    lines += _grid(cols, cells, width)
    for r in sec.get("configs", []):
        if r.get("vs_paper"):
            lines.append(f"{r.get('trial_id') or '-'}: {r['vs_paper']['text']}")
    lines += _component_lines(sec)
    lines += _optimism_lines(sec)
    lines += [f"note: {n}" for n in sec.get("notes", [])]
    return wrap_lines(lines, width)


def confirm_text(c: dict[str, Any], width: int | None = None) -> str:
    """What ``jiio confirm`` prints: the confirmation section in words (within ``width``)."""
    return "\n".join(seed_lines(c, width))


def _importance_lines(s: dict[str, Any]) -> list[str]:
    imp = s.get("importance") or {}
    lines = []
    for what in ("objective", "divergence"):
        vals = imp.get(what)
        if not vals:
            continue
        label = s["metrics"][0] if what == "objective" and s.get("metrics") else what
        ci, first = imp.get(f"{what}_ci") or {}, imp.get(f"{what}_first") or {}
        parts = [f"{k} {v:.2f}" + (f" {_iv(ci[k], 2)}" if k in ci else "") for k, v in vals.items()]
        line = f"importance for {label}: " + ", ".join(parts)
        if ci:
            top = next(iter(vals))
            line += (
                f" (95% bootstrap intervals over trials; {top} first in "
                f"{100 * first.get(top, 0):.0f}% of {imp.get(f'{what}_resamples')} resamples)"
            )
        lines.append(line)
    lines += [f"note: {n}" for n in imp.get("notes", []) if "not shown" in n]
    return lines


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


def _trial_table(s: dict[str, Any], rows: list[dict[str, Any]], width: int | None) -> list[str]:
    """A trial table within ``width``: an ``n`` that every row shares goes to the caption,
    then wall time, n and status are dropped as needed."""
    cols, cells = table_rows(s, rows)
    caption = ""
    if "n" in cols:
        i = cols.index("n")
        ns = {str(line[i]) for line in cells}
        if len(ns) == 1 and ns != {"None"}:
            caption = f" (n = {ns.pop()} samples{' each' if len(cells) > 1 else ''})"
            cols = cols[:i] + cols[i + 1 :]
            cells = [line[:i] + line[i + 1 :] for line in cells]
    return [caption, *fit_table(cols, cells, width, drop=("wall_s", "n", "status"))]


def summary_text(s: dict[str, Any], width: int | None = None) -> str:
    """The summary in words; ``width``: laid out within that many columns (None: unlimited)."""
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
            caption, *table = _trial_table(s, rows, width)
            lines += ["", f"{title}{caption}:", *table]
    if s.get("pareto"):
        cols = list(s["pareto"][0])
        lines += ["", "pareto front:"]
        lines += fit_table(cols, [[r.get(c) for c in cols] for r in s["pareto"]], width, drop=("wall_s",))
    for key in ("confirm", "seeds"):
        if s.get(key):
            lines += ["", *seed_lines(s[key], width)]
    if "verdict" in s and s["verdict"].get("over") != "seeds":  # over seeds: in the section above
        lines += ["", s["verdict"]["text"]]
    elif "best_minus_paper" in s and "verdict" not in s:  # a summary without intervals
        lines += ["", f"best - paper configuration = {s['best_minus_paper']:+.4g} ({s['metrics'][0]})"]
    if s.get("noise") and not (s.get("verdict") or {}).get("evaluation_only"):
        lines.append(f"note: {s['noise']['text']}")
    lines += _importance_lines(s)
    return "\n".join(wrap_lines(lines, width))


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
    for key, title in (("confirm", "Confirmation over seeds"), ("seeds", "Configurations over seeds")):
        sec = s.get(key)
        if not sec:
            continue
        parts.append(f"<h2>{title}</h2>")
        if sec.get("why"):
            parts.append(f"<p>{e(sec['why'])}; seeds {e(', '.join(sec.get('seeds', [])))}</p>")
        parts.append(
            f"<p>{e(str(sec.get('metric')))}: mean over seeds with its 95% t interval; differences "
            "paired by seed, against the paper's configuration</p>"
        )
        parts.append(_table(*seed_rows(sec)))
        for r in sec.get("configs", []):
            if r.get("vs_paper"):
                parts.append(
                    f"<p class=verdict>{e(str(r.get('trial_id') or '-'))}: {e(r['vs_paper']['text'])}</p>"
                )
        parts += [f"<p>{e(line.strip())}</p>" for line in _component_lines(sec) + _optimism_lines(sec)]
        parts += [f"<p class=note>note: {e(n)}</p>" for n in sec.get("notes", [])]
    if s.get("noise"):
        parts.append(f"<p class=note>{e(s['noise']['text'])}</p>")
    imp = s.get("importance") or {}
    for what in ("objective", "divergence"):
        if imp.get(what):
            ci, first = imp.get(f"{what}_ci") or {}, imp.get(f"{what}_first") or {}
            parts += [
                f"<h2>Importance for {e(what)}</h2>",
                _table(
                    ["parameter", "importance", "95% CI (bootstrap over trials)", "ranked first in"],
                    [
                        [
                            k,
                            v,
                            _iv(ci.get(k), 2),
                            f"{100 * first[k]:.0f}% of resamples" if k in first else "-",
                        ]
                        for k, v in imp[what].items()
                    ],
                ),
            ]
    parts += [f"<p class=note>note: {e(n)}</p>" for n in imp.get("notes", []) if "not shown" in n]
    if s.get("pareto"):
        cols = list(s["pareto"][0])
        parts += ["<h2>Pareto front</h2>", _table(cols, [[r.get(c) for c in cols] for r in s["pareto"]])]
    if s.get("skipped"):
        parts += [
            "<h2>Unreadable files (skipped)</h2>",
            _table(["path", "reason"], [[x["path"], x["reason"]] for x in s["skipped"]]),
        ]
    from orchestrator.analysis.plots import CAPTIONS

    for p in s.get("plots", []):
        with open(p, "rb") as f:
            data = base64.b64encode(f.read()).decode()
        kind = os.path.basename(p)[len(s["sweep"]) + 1 : -len(".png")]
        title, caption = CAPTIONS.get(kind, (os.path.basename(p), ""))
        parts.append(
            f"<figure><h3>{e(title)}</h3><img alt='{e(title)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{e(caption)} <span class=note>({e(os.path.basename(p))})</span></figcaption>"
            "</figure>"
        )
    title = f"<title>jiio analyze: {e(s['sweep'])}</title>"
    head = f"<head><meta charset=utf-8>{title}<style>{_CSS}</style></head>"
    doc = f"<!doctype html><html>{head}<body>{''.join(parts)}</body></html>"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(doc)
    return path
