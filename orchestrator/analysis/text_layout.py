"""Plain-text layout for the console: the width to lay out for, wrapping, tables that fit.

Why apart from :mod:`~orchestrator.analysis.report`: the report, the seed tables
(:mod:`~orchestrator.analysis.seed_text`), ``--compare`` and the sweep CLI all lay text out
the same way, and none of them needs the others' content to do so.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import textwrap
from typing import Any

__all__ = ["console_width", "fit_table", "fmt", "interval_text", "wrap_lines"]


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
    """One right-aligned cell ``width`` wide: floats to 4 significant digits, None as ``-``."""
    if isinstance(v, float):
        return f"{v:{width}.4g}"
    if v is None:
        v = "-"
    return f"{v!s:>{width}s}"


def interval_text(ci: Any, digits: int = 4) -> str:
    """``[lo, hi]`` to ``digits`` significant digits, or ``-`` when the interval is unknown."""
    if ci and all(isinstance(v, (int, float)) and math.isfinite(v) for v in ci):
        return f"[{ci[0]:.{digits}g}, {ci[1]:.{digits}g}]"
    return "-"
