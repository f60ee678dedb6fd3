"""Configurations over seeds in words: the seed table, variance components, selection optimism.

What: the text of a summary's ``seeds`` section and of ``jiio confirm``
(:func:`seed_lines`, :func:`confirm_text`), and the rows and lines the HTML report reuses
(:func:`seed_rows`, :func:`component_lines`, :func:`optimism_lines`). Why apart from
:mod:`~orchestrator.analysis.report`: ``jiio confirm`` prints these without a sweep report.
"""

from __future__ import annotations

import math
from typing import Any

from orchestrator.analysis.text_layout import fit_table, interval_text, wrap_lines

__all__ = ["component_lines", "confirm_text", "optimism_lines", "seed_lines", "seed_rows"]


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
            interval_text(r.get("ci")),
            _signed(vs.get("difference")) or "-",
            interval_text(vs.get("ci")),
            r.get("verdict") or "-",
        ]
        if confirm:
            opt = r.get("optimism") or {}
            line += [r.get("sweep_value"), _signed(opt.get("value")) or "-", interval_text(opt.get("ci"), 3)]
        cells.append(line)
    return cols, cells


def _grid(cols: list[str], cells: list[list[Any]], width: int | None = None) -> list[str]:
    """A left-aligned text table, each column as wide as its widest cell (within ``width``)."""
    return fit_table(cols, cells, width, drop=("label", "its 95% CI", "in the sweep"))


def component_lines(sec: dict[str, Any]) -> list[str]:
    """Each configuration's variance components: what training noise (between seeds) and
    evaluation noise (within a seed) contribute to its value."""
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


def optimism_lines(sec: dict[str, Any]) -> list[str]:
    """How far the sweep's own values sat from the confirmed means (selection optimism)."""
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
        text = f"  {name} ({', '.join(r.get('labels') or [])}): {o['value']:+.4g} {interval_text(o['ci'])}"
        rel = r.get("optimism_vs_paper")
        if rel:
            beyond = f"{rel['value']:+.4g} {interval_text(rel['ci'])}"
            text += f"; beyond the paper's (not selected by the sweep) {beyond}"
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
    lines += component_lines(sec)
    lines += optimism_lines(sec)
    lines += [f"note: {n}" for n in sec.get("notes", [])]
    return wrap_lines(lines, width)


def confirm_text(c: dict[str, Any], width: int | None = None) -> str:
    """What ``jiio confirm`` prints: the confirmation section in words (within ``width``)."""
    return "\n".join(seed_lines(c, width))
