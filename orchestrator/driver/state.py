"""What the driver reads and writes in the store besides the trials' own rows.

- the sweep's identity (``meta/sweep=NAME/sweep.json``) and the check that a resume runs
  the sweep it was started as (:func:`check_resume`);
- the plan of a (resumed) run: which trials are finished, which continue, which errored
  trials are retried (:func:`plan_run`);
- the rows the driver writes for trials that did not write their own: pruned by ASHA,
  failed past their retries (:func:`driver_row`), with the same provenance columns as a
  completed row, taken from the trial's record;
- the Pareto front of a multi-objective sweep (:func:`record_pareto`).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from orchestrator.storage import ResultStore, layout
from orchestrator.trial.meta import PLACEMENT_KEYS, PROVENANCE_KEYS, provenance

__all__ = [
    "ERROR_ROUNDS",
    "FINISHED",
    "Plan",
    "check_resume",
    "driver_row",
    "finish_compaction",
    "identity",
    "missing_seeds",
    "plan_run",
    "quarantine_incomplete",
    "record_pareto",
    "sync_records",
    "write_meta",
]

FINISHED = ("completed", "diverged", "pruned", "error")
ERROR_ROUNDS = 3  # runs of the driver (the first and two resumes) an erroring trial gets
# A key absent from an older sweep's meta is not compared (that sweep still resumes).
_IDENTITY = ("kind", "metrics", "modes", "space", "fixed", "data", "checkpoint", "seeds", "scheduler")


def identity(cfg) -> dict[str, Any]:
    """The settings a resume must not change (JSON-normalised): what a trial means."""
    raw = {
        "kind": cfg.kind,
        "metrics": list(cfg.metrics),
        "modes": list(cfg.modes),
        "space": {k: d.to_dict() for k, d in cfg.space.items()},
        "fixed": cfg.fixed,
        "data": cfg.data,
        "checkpoint": cfg.checkpoint,
        "seeds": list(cfg.seed_list()),
        "scheduler": cfg.scheduler,  # asha prunes, fifo does not: --no-early-stop changes the sweep
    }
    return json.loads(json.dumps(raw, default=repr))


def _diff(old: Any, new: Any, path: str, out: list[str]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new), key=str):
            _diff(old.get(k, "<unset>"), new.get(k, "<unset>"), f"{path}.{k}" if path else str(k), out)
    elif old != new:
        out.append(f"{path}: {old!r} -> {new!r}")


def check_resume(store: ResultStore, cfg) -> None:
    """Refuse (``ValueError``, one line) to resume a sweep with other settings than it was
    started with: trials of both would be mixed in one table."""
    meta = store.meta(cfg.name)
    if not meta:
        return
    new = identity(cfg)
    changes: list[str] = []
    for key in _IDENTITY:
        if key in meta:
            _diff(meta[key], new[key], key, changes)
    if changes:
        shown = "; ".join(changes[:6]) + (f"; and {len(changes) - 6} more" if len(changes) > 6 else "")
        raise ValueError(
            f"--resume of sweep {cfg.name!r} with other settings than it was started with ({shown}); "
            "resume with the original flags, or use --name for a new sweep"
        )


def write_meta(store: ResultStore, cfg, paper_ids: list[str]) -> None:
    """``meta/sweep=NAME/sweep.json``: the sweep's identity, its size and the paper trial's id."""
    old = store.meta(cfg.name) or {}
    meta = {
        "name": cfg.name,
        **identity(cfg),
        "trials": cfg.trials,
        "seed": cfg.seed,
        "paper_trial_ids": old.get("paper_trial_ids") or paper_ids,
        "created_at": old.get("created_at", time.time()),
    }
    store.write_meta(cfg.name, json.dumps(meta, indent=1, default=repr).encode())


@dataclass
class Plan:
    """What one run of the driver does."""

    finished: pd.DataFrame  # trials that count as done (their rows stay as they are)
    resume: list[tuple[str, dict[str, Any]]]  # (trial_id, params) to continue, in order
    started: dict[str, dict[str, Any]]  # every other trial ever started: id -> params
    retried: list[str] = field(default_factory=list)  # errored trials given another round
    missing: list[dict[str, Any]] = field(
        default_factory=list
    )  # replicated: (config, seed) runs never started


def _retryable(record: dict[str, Any]) -> bool:
    errors = record.get("errors", [])
    same_twice = len(errors) >= 2 and errors[-1].get("message") == errors[-2].get("message")
    return int(record.get("error_rounds", 0)) < ERROR_ROUNDS and not same_twice


def plan_run(trials: pd.DataFrame, records: dict[str, dict[str, Any]], searched: tuple[str, ...]) -> Plan:
    """Split a sweep's state into finished trials, trials to continue, and the rest."""
    done = trials[trials["status"].isin(FINISHED)] if len(trials) else trials
    retried = []
    if len(done):
        errored = done[(done["status"] == "error") & done["trial_id"].isin(list(records))]
        retried = [t for t in errored["trial_id"] if _retryable(records[t])]
        done = done[~done["trial_id"].isin(retried)]
    done_ids = set(done["trial_id"]) if len(done) else set()
    resume = [
        (t, r["params"]) for t, r in records.items() if t not in done_ids and r.get("state") != "finished"
    ]
    queued = {t for t, _ in resume}
    resume += [(t, records[t]["params"]) for t in retried if t not in queued]
    resume_ids = {t for t, _ in resume}
    started = {t: r["params"] for t, r in records.items() if t not in resume_ids}
    row_ids = set(trials["trial_id"]) if len(trials) else set()
    old = [t for t in row_ids if t not in started and t not in resume_ids]
    if old:  # rows of sweeps written before records were kept
        cols = [k for k in searched if k in trials]
        by_id = trials.drop_duplicates("trial_id").set_index("trial_id").loc[old, cols]
        for tid, values in zip(by_id.index, by_id.to_dict("records"), strict=True):
            started[tid] = {k: _native(v) for k, v in values.items()}
    # A record marked finished whose row is gone (quarantined): recompute it.
    lost = [t for t, r in records.items() if r.get("state") == "finished" and t not in row_ids]
    for t in lost:
        resume.append((t, records[t]["params"]))
        started.pop(t, None)
    return Plan(done, resume, started, retried)


def missing_seeds(plan: Plan, searched: tuple[str, ...], seeds: tuple[int, ...]) -> list[dict[str, Any]]:
    """The runs a replicated sweep's started configurations still lack: for every
    configuration with some seed finished, continuing or started, the parameters with each
    seed of ``seeds`` it has not run (in the order the configurations first appear), so a
    driver killed between a configuration's first seed and its replicas loses none.

    Example:
        >>> import pandas as pd
        >>> done = pd.DataFrame([{"trial_id": "a", "status": "completed", "alpha_x": 0.1, "seed": 0}])
        >>> missing_seeds(Plan(done, [("b", {"alpha_x": 0.2, "seed": 1})], {}), ("alpha_x",), (0, 1))
        [{'alpha_x': 0.1, 'seed': 1}, {'alpha_x': 0.2, 'seed': 0}]
    """
    seen: dict[tuple, set[int]] = {}
    params: dict[tuple, dict[str, Any]] = {}

    def add(p: dict[str, Any]) -> None:
        key = tuple(_native(p.get(k)) for k in searched)
        params.setdefault(key, {k: _native(p.get(k)) for k in searched})
        if p.get("seed") is not None:
            seen.setdefault(key, set()).add(int(_native(p["seed"])))
        else:
            seen.setdefault(key, set())

    for _, row in plan.finished.iterrows():
        add(row.to_dict())
    for _, p in plan.resume:
        add(p)
    for p in plan.started.values():
        add(p)
    return [{**params[key], "seed": s} for key in params for s in seeds if s not in seen[key]]


def sync_records(
    store: ResultStore, sweep: str, trials: pd.DataFrame, records: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """A trial killed between writing its row and marking its record finished leaves a
    ``running`` record beside a finished row: mark it finished (the row is the truth)."""
    rows = set(trials["trial_id"]) if len(trials) else set()
    for tid, rec in records.items():
        if tid in rows and rec.get("state") != "finished":
            rec["state"] = "finished"
            store.write_record(sweep, tid, rec)
    return records


def driver_row(
    store: ResultStore,
    cfg,
    trial_id: str,
    params: dict[str, Any],
    status: str,
    last: dict[str, Any],
    error: str | None,
) -> dict[str, Any]:
    """A trials row written by the driver (pruned, error), updating the trial's record."""
    record = store.record(cfg.name, trial_id) or {"params": params, "trial_id": trial_id}
    prov = {k: record[k] for k in PROVENANCE_KEYS if k in record}
    if len(prov) < len(PROVENANCE_KEYS):
        prov = {**provenance(cuda=False), **prov}  # never started on a worker: the driver's
    prov.update({k: record.get(k) for k in PLACEMENT_KEYS})  # where it ran (None: never started)
    errors = list(record.get("errors", []))
    if error is not None:
        errors.append(
            {"message": error.strip().splitlines()[-1][:500] if error.strip() else "", "at": time.time()}
        )
        record["error_rounds"] = int(record.get("error_rounds", 0)) + 1
    row = {
        **cfg.fixed,
        "trial_id": trial_id,
        "status": status,
        **params,
        "task": cfg.fixed.get("task"),
        "dataset": cfg.data.get("dataset"),
        "seed": params.get("seed", cfg.fixed.get("seed", 0)),
        **{m: last.get(m) for m in cfg.metrics},
        # sample counts behind the metrics (eval_n, or a metric's own <metric>_n), as reported
        **{k: v for k, v in last.items() if (k == "eval_n" or k.endswith("_n")) and type(v) is int},
        "epoch": last.get("epoch"),
        "wall_s": float(record.get("wall_s") or last.get("time_total_s") or 0.0),
        "attempts": int(record.get("attempts") or 0),
        "started_at": record.get("first_started_at"),
        "finished_at": time.time(),
        "error": None if error is None else error[-2000:],
        "error_history": json.dumps(errors[:-1]) if len(errors) > 1 else None,
        **prov,
    }
    record.update(state="finished", status=status, errors=errors)
    store.write("trials", cfg.name, trial_id, [row])
    store.write_record(cfg.name, trial_id, record)
    store.delete_checkpoint(cfg.name, trial_id)
    for table in ("steps", "traces"):
        store.compact(table, cfg.name, trial_id)
    return row


def quarantine_incomplete(store: ResultStore, sweep: str) -> None:
    """Unreadable steps/traces files move to ``corrupt/``; a finished trial that lost one
    has its row moved there too, so this run recomputes it (under the same keys)."""
    bad = {layout.trial_of_key(key) for table in ("steps", "traces") for key in store.check(table, sweep)}
    for tid in sorted(bad & set(store.keys("trials", sweep))):
        path = store.table_file("trials", sweep, tid)
        where = store.quarantine(path, "a steps or traces file of this trial was unreadable")
        print(
            f"trial {tid}: some of its rows were unreadable; its row moved to {where}, it runs again",
            file=sys.stderr,
        )


def finish_compaction(store: ResultStore, sweep: str, finished: set[str]) -> None:
    """Per-epoch files of finished trials (a compaction interrupted by a kill, or results of
    earlier versions) are merged into one file per trial."""
    for table in ("steps", "traces"):
        left = {layout.trial_of_key(k) for k in store.keys(table, sweep) if layout.is_epoch_key(k)} & finished
        for tid in sorted(left):
            store.compact(table, sweep, tid)


def record_pareto(store: ResultStore, cfg) -> None:
    """Write the non-dominated completed trials of a multi-objective sweep to ``pareto/``."""
    from orchestrator.pareto import pareto_front

    trials = store.read("trials", cfg.name)
    if not len(trials):
        return
    ok = trials[trials["status"] == "completed"].dropna(subset=[m for m in cfg.metrics if m in trials])
    if not len(ok) or any(m not in ok for m in cfg.metrics):
        return
    sign = [1.0 if m == "min" else -1.0 for m in cfg.modes]
    points = [
        tuple(s * float(r[m]) for s, m in zip(sign, cfg.metrics, strict=True)) for _, r in ok.iterrows()
    ]
    front = ok[pareto_front(points)]
    cols = ["trial_id", *cfg.metrics, *cfg.space]
    store.write("pareto", cfg.name, "front", [{c: _native(r[c]) for c in cols} for _, r in front.iterrows()])


def _native(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v
