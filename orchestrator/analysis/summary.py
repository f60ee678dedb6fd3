"""One sweep as plain data: its state, trials by status, time by status, the best and the
paper configurations with 95% intervals, and whether the best really beats the paper's.

Intervals (:mod:`orchestrator.stats`): an accuracy-like objective (``*acc*``, ``*_rate``,
``*_frac``, in [0, 1]) measured on ``eval_n`` samples gets a Wilson interval; a mean (or
``*_median``) objective whose per-sample values are in the trial's eval or solve step rows
(``<metric>_samples``) gets a bootstrap interval; otherwise the interval is unknown and the
summary says "n unknown". "Best beats the paper configuration" is said only when the two
intervals do not overlap; otherwise the summary says they cannot be told apart and by how
much the evaluation would have to grow for the observed difference to separate them. When
both were scored on the same samples (every trial of a solve sweep; a training sweep's
trials on its fixed held-out split: :mod:`orchestrator.analysis.intervals` says how this is
decided), the verdict is paired instead: the 95% interval of the per-sample differences
must exclude 0. A row's ``<metric>_per_sample`` (a :class:`PerSample`, printed compactly
in JSON) carries those values for ``jiio analyze --compare``.

Those intervals cover evaluation noise only. With one training seed per configuration
(the usual sweep) the summary says so (``noise``, and in the verdict): what retraining
moves is in none of them, and ``jiio confirm`` measures it. Where configurations have
several seeds (:mod:`orchestrator.analysis.seeds`), ``seeds`` holds each configuration's
mean with its interval over seeds and its verdict against the paper's configuration paired
by seed, and that verdict replaces the per-trial one; for a confirmation sweep
(``NAME-confirm``, written by ``jiio confirm``) ``confirm`` holds the same, labelled by the
sweep it confirms (trial ids, ranks, selection optimism).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.analysis.engine import Source
from orchestrator.analysis.importance import importances
from orchestrator.analysis.intervals import (
    PROPORTION,
    Interval,
    compare_values,
    intervals,
    sample_columns,
)
from orchestrator.analysis.seed_values import SEED, config_key, multi_seed
from orchestrator.analysis.seed_verdicts import BEATS
from orchestrator.analysis.seeds import confirm_summary, evaluation_only, seed_summary
from orchestrator.analysis.sweep_rows import (
    FINISHED,
    GUESSES,
    numeric,
    objectives,
    ranked,
    read_meta,
    requested_runs,
    space_of,
    status_of,
)
from orchestrator.driver.hints import jiio
from orchestrator.storage import layout

__all__ = ["summarize"]


def _rel(path: str) -> str:
    """A layout path under the empty root, as messages name it (``trials/sweep=NAME``)."""
    return path.lstrip("/")


def _plain(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return [_plain(x) for x in v.tolist()]
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _why_unranked(trials: pd.DataFrame, sweep: str, metrics: list[str], meta: dict[str, Any]) -> str:
    """Why no trial of ``sweep`` can be ranked, and what to do."""
    status = status_of(trials)
    counts = ", ".join(f"{k} {v}" for k, v in sorted(status.value_counts().items()))
    if not metrics:
        where = f"{_rel(layout.meta_file('', sweep))} " + ("names no objective" if meta else "is missing")
        return (
            f"nothing to rank: {where}, and no trial row has a known objective column "
            f"({', '.join(GUESSES)}); the trials ({counts}) may all have stopped before their first "
            "evaluation, or the sweep reports another metric (analysis needs the sweep's meta file)"
        )
    main = metrics[0]
    if main not in trials:
        text = (
            f"nothing to rank: no trial reported {main} ({counts}): every trial stopped before its first eval"
        )
    else:
        text = f"nothing to rank: no completed trial has a value of {main} ({counts})"
    hints = []
    if (status == "diverged").any():
        hints.append(
            "diverged trials hit non-finite or exploding solver residuals: narrow the search space "
            "towards smaller step sizes (alpha_*) or more solver iterations"
        )
    if (status == "error").any():
        msgs = []
        if "error" in trials:
            for tid, err in zip(trials["trial_id"], trials["error"], strict=True):
                if isinstance(err, str) and err.strip():
                    msgs.append(f"{tid}: {err.strip().splitlines()[-1][:200]}")
        hints.append(
            "errored trials failed"
            + (" (" + "; ".join(msgs[:3]) + ("; ..." if len(msgs) > 3 else "") + ")" if msgs else "")
            + ": fix the cause, then run the sweep again with --resume (it retries errored trials)"
        )
    if (status == "pruned").any() and not hints:
        hints.append("pruned trials were stopped early by the scheduler")
    if not hints:
        hints.append("wait for the running trials to finish, or run the sweep again with --resume")
    return text + "; " + "; ".join(hints)


def _progress(
    src: Source, sweep: str, trials: pd.DataFrame, meta: dict[str, Any], out: dict[str, Any]
) -> None:
    """State of the sweep: running (a live driver), interrupted, or finished; trials still
    running (started, no final row) and the time spent by status."""
    status = status_of(trials)
    final = set(trials.loc[status.isin(FINISHED), "trial_id"].astype(str)) if len(trials) else set()
    rows = set(trials["trial_id"].astype(str)) if len(trials) else set()
    records = src.records(sweep, [t for t in src.pending_ids(sweep) if t not in final])
    open_ = {t: r for t, r in records.items() if r.get("state") != "finished"}
    running = sorted(t for t in open_ if t not in rows)
    retrying = sorted(t for t in open_ if t in rows)
    time_s: dict[str, float] = {}
    if "wall_s" in trials and len(trials):
        wall = numeric(trials["wall_s"]).fillna(0.0)
        time_s = {str(k): float(v) for k, v in wall.groupby(status).sum().items()}
    if running:
        time_s["running"] = float(sum(float(open_[t].get("wall_s") or 0.0) for t in running))
    driver = src.driver(sweep)
    requested = requested_runs(meta)
    if driver is not None:
        state = "running"
    elif running or retrying or (requested and len(trials) < requested):
        state = "interrupted"
    else:
        state = "finished"
    out.update(running=len(running), time_s=time_s, state=state, driver=driver)
    if retrying:
        out["retrying"] = retrying
    notes = out["notes"]
    if state == "running":
        notes.append(
            f"the sweep is running (driver {driver['host']} pid {driver['pid']}, heartbeat "
            f"{driver['heartbeat_age_s']:.0f} s ago): {len(running)} trials in flight; "
            "these figures are provisional"
        )
    elif state == "interrupted":
        what = f"{len(running)} started trials have no final row" if running else ""
        if retrying:
            what += (", " if what else "") + f"{len(retrying)} errored trials were being retried"
        if requested and len(trials) < requested:
            what += (", " if what else "") + f"{len(trials)} of {requested} requested trials finished"
        notes.append(
            f"the sweep was interrupted ({what}) and no driver is running it: these figures cover the "
            "finished trials; run the sweep again with --resume to finish it"
        )


def _row(r: pd.Series, cols: list[str]) -> dict[str, Any]:
    return {c: _plain(r.get(c)) for c in cols if c in r}


def summarize(src: Source, sweep: str, top: int = 5) -> dict[str, Any]:
    """Counts, state, best trials and the paper baseline of one sweep, as plain data.

    ``ranked`` is how many trials could be ranked (completed, with a finite objective);
    ``notes`` say what is missing and what to do (e.g. no trial reported the objective).
    """
    trials = src.trials(sweep)
    notes: list[str] = []
    meta = read_meta(src, sweep, notes)
    metrics, modes = objectives(meta, sweep, trials, notes)
    out: dict[str, Any] = {
        "sweep": sweep,
        "trials": len(trials),
        "requested": requested_runs(meta),
        "status": status_of(trials).value_counts().to_dict() if len(trials) else {},
        "metrics": metrics,
        "modes": modes,
        "ranked": 0,
        "notes": notes,
    }
    _progress(src, sweep, trials, meta, out)
    if not len(trials):
        notes.append(f"no readable trial rows in {_rel(layout.sweep_dir('', 'trials', sweep))}")
        return out
    space = space_of(meta, trials)
    out["space"] = space
    main, mode = (metrics[0], modes[0]) if metrics else ("", "max")
    order = ranked(trials, main, mode) if metrics else trials.iloc[:0]
    out["ranked"] = len(order)
    if not len(order):
        notes.append(_why_unranked(trials, sweep, metrics, meta))
    missing = [m for m in metrics[1:] if m not in trials]
    if missing and metrics[0] in trials:
        notes.append(
            f"no trial reported {', '.join(missing)} (an objective in {_rel(layout.meta_file('', sweep))})"
        )
    if not metrics:
        return out
    cols = ["trial_id", *metrics, *space, "wall_s"]
    best = order.head(top)
    paper_ids = meta.get("paper_trial_ids") or []
    paper_ids = [str(p) for p in paper_ids] if isinstance(paper_ids, list) else []
    parent = _confirm_parent(src, sweep, meta, trials, notes)
    if parent is not None:  # a confirmation: every point was enqueued, the paper's is the parent's
        paper_ids = parent["paper_ids"]
    paper = (
        trials[trials["trial_id"].astype(str).isin(paper_ids)] if "trial_id" in trials else trials.iloc[:0]
    )
    median = order.iloc[[len(order) // 2]] if len(order) else order
    shown = pd.concat([best, paper, median]).drop_duplicates("trial_id")
    ivs = {m: intervals(src, sweep, shown, m, meta) for m in metrics if m in trials}

    def with_ci(r: pd.Series, base: list[str]) -> dict[str, Any]:
        row = _row(r, base)
        for m, by_id in ivs.items():
            iv = by_id.get(str(r["trial_id"]), Interval())
            row[f"{m}_ci"] = [_plain(iv.lo), _plain(iv.hi)] if iv.known else None
            row[f"{m}_n"] = iv.n
            row[f"{m}_ci_method"] = iv.method
            if iv.per_sample is not None:
                row[f"{m}_per_sample"] = iv.per_sample
        return row

    out["best"] = [with_ci(r, cols) for _, r in best.iterrows()]
    if len(median):
        out["median"] = with_ci(median.iloc[0], cols)
    if not any(iv.known for by_id in ivs.values() for iv in by_id.values()) and len(order):
        notes.append(
            "n unknown: the trials report neither eval_n nor per-sample values, so no objective has an "
            "interval and no difference can be called significant"
        )
    if len(paper):
        p = paper.iloc[0]
        out["paper"] = with_ci(p, ["trial_id", "status", *metrics, *space, "wall_s"])
        p_val = numeric(pd.Series([p.get(main)])).iloc[0]
        if len(order) and p.get("status") == "completed" and math.isfinite(p_val):
            b = order.iloc[0]
            b_val = float(b[main])
            out["best_minus_paper"] = b_val - p_val if mode == "max" else p_val - b_val
            if str(b["trial_id"]) == str(p["trial_id"]):
                out["verdict"] = {"significant": False, "text": "the paper configuration is the best trial"}
            else:
                iv = ivs.get(main, {})
                out["verdict"] = compare_values(
                    ("best", b_val, iv.get(str(b["trial_id"]), Interval())),
                    ("the paper configuration", p_val, iv.get(str(p["trial_id"]), Interval())),
                    main,
                    mode,
                )
                if out["verdict"]["significant"]:
                    out["verdict"]["text"] += (
                        f" (the best of {len(order)} trials is picked on this same evaluation, so its value "
                        "is optimistic: confirm it on fresh samples)"
                    )
        elif p.get("status") != "completed":
            notes.append(
                f"the paper configuration ({p['trial_id']}) ended {p.get('status')}: nothing to compare"
            )
    elif paper_ids:
        notes.append("the paper configuration has no trial row yet")
    out["importance"] = importances(trials, space, main, mode)
    _seeds(src, sweep, trials, meta, main, mode, list(space), parent, out)
    if len(metrics) > 1:
        front = src.table("pareto", sweep)
        out["pareto"] = [{c: _plain(v) for c, v in r.items() if c != "sweep"} for _, r in front.iterrows()]
    return out


def _confirm_parent(
    src: Source, sweep: str, meta: dict[str, Any], trials: pd.DataFrame, notes: list[str]
) -> dict[str, Any] | None:
    """For a confirmation sweep: the sweep it confirms (``meta/sweep=SWEEP/confirm.json``,
    else a name ``PARENT-confirm`` with a searched seed), its metadata and trials, and the
    ids of this sweep's trials of the parent's paper configuration; None otherwise."""
    try:
        side = src.meta(sweep, "confirm.json")
    except (ValueError, OSError):
        side = None
    space = meta.get("space") if isinstance(meta.get("space"), dict) else {}
    if isinstance(side, dict) and isinstance(side.get("parent"), str):
        name, top = side["parent"], side.get("top")
    elif sweep.endswith("-confirm") and SEED in space:
        name, top = sweep[: -len("-confirm")], None
    else:
        return None
    pmeta = read_meta(src, name)
    if not pmeta.get("metrics") or not isinstance(pmeta.get("space"), dict):
        notes.append(f"sweep {sweep} confirms {name}, whose metadata is missing: no labels or verdicts")
        return None
    ptrials = src.trials(name)
    params = [k for k in pmeta["space"] if k != SEED]
    ids = [str(i) for i in pmeta.get("paper_trial_ids") or []]
    prow = ptrials[ptrials["trial_id"].astype(str).isin(ids)] if len(ptrials) else ptrials
    paper_ids: list[str] = []
    if len(prow) and len(trials):
        key = config_key(prow.iloc[0], params)
        paper_ids = [str(r["trial_id"]) for _, r in trials.iterrows() if config_key(r, params) == key]
    return {"name": name, "meta": pmeta, "trials": ptrials, "top": top, "paper_ids": paper_ids}


def _steps(src: Source, sweep: str, trials: pd.DataFrame, metric: str) -> pd.DataFrame | None:
    """The step rows with per-sample values of ``metric`` (None for an accuracy-like metric,
    whose count is enough)."""
    if PROPORTION.search(metric) and not metric.endswith("_median"):
        return None
    ids = trials.loc[status_of(trials) == "completed", "trial_id"].astype(str)
    cols = ["phase", "eval_n", "solver_diverged", *sample_columns(metric)]
    return src.rows("steps", sweep, ids, cols) if len(ids) else None


def _seeds(
    src: Source,
    sweep: str,
    trials: pd.DataFrame,
    meta: dict[str, Any],
    main: str,
    mode: str,
    space: list[str],
    parent: dict[str, Any] | None,
    out: dict[str, Any],
) -> None:
    """The seed-level part of the summary: ``confirm`` or ``seeds`` (and the verdict over
    seeds), or, with one seed per configuration, ``noise``: the intervals cover evaluation
    noise only."""
    params = [p for p in space if p != SEED]
    if not main or main not in trials:
        return
    section = None
    if parent is not None:
        pmeta = parent["meta"]
        if pmeta["metrics"][0] != main:
            out["notes"].append(f"{sweep} ranks {main} but confirms {parent['name']}, which ranks another")
            return
        section = confirm_summary(
            pmeta, parent["trials"], trials, _steps(src, sweep, trials, main), meta, parent["top"]
        )
        section["sweep"], section["confirm_sweep"] = parent["name"], sweep
        out["confirm"] = section
    elif multi_seed(trials, params, main):
        section = seed_summary(trials, meta, main, mode, params, _steps(src, sweep, trials, main))
        out["seeds"] = section
    else:
        text = evaluation_only(src.root, sweep)
        out["noise"] = {"seeds_per_configuration": 1, "text": text}
        verdict = out.get("verdict")
        if verdict and "difference" in verdict and verdict.get("significant") is not None:
            verdict["evaluation_only"] = True
            verdict["text"] += (
                "; these intervals cover evaluation noise only (one training seed per configuration)"
                + (
                    ", so that n would be enough only if retraining moved nothing"
                    if "n_needed" in verdict
                    else ""
                )
                + f": `{jiio()} confirm {src.root} --name {sweep} --seeds 3` measures what retraining moves"
            )
        return
    rows = [r for r in section["configs"] if "vs_paper" in r]
    if rows:  # the verdict over seeds replaces the per-trial one: the best configuration's
        sign = 1.0 if mode == "max" else -1.0
        ranked_rows = sorted(rows, key=lambda r: (r.get("rank") or math.inf, -sign * r["mean"]))
        best = ranked_rows[0]
        vs = best["vs_paper"]
        out["verdict"] = {
            "significant": vs["verdict"] == BEATS,
            "over": "seeds",
            "difference": vs["difference"],
            "seeds": vs["seeds"],
            "interval": vs["ci"],
            "text": vs["text"],
        }
