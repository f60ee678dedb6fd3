"""``jiio export optuna``: a sweep's Parquet rows as an Optuna study, for optuna-dashboard.

The study is named after the sweep and written to any Optuna storage: an RDB URL
(``sqlite:///sweeps.db``, ``postgresql://...``) or a journal file (``journal:./sweeps.log``,
:class:`optuna.storages.JournalStorage` over :class:`~optuna.storages.journal.JournalFileBackend`).

What goes in (read from ``meta/sweep=NAME/sweep.json`` and the ``trials`` / ``steps`` tables):

* the distributions: the sweep's search space (each ``{kind, low, high, choices}`` as a
  :class:`~orchestrator.driver.search.Dim`, then :meth:`Dim.optuna`), the same the searcher sampled from;
* the directions: one per objective (``modes``: ``max`` -> maximize, ``min`` -> minimize),
  so a multi-objective sweep (``sweeps/solver.py``) becomes a multi-objective study whose
  ``best_trials`` is the sweep's Pareto front;
* one trial per row of ``trials``, in the order the trials ended; its state:

  ======================  ===============================================================
  ``completed``           COMPLETE with its objective values (FAIL if one is missing or
                          not finite: Optuna cannot store it)
  ``pruned``              PRUNED (single objective: with its value at the rung it stopped)
  ``diverged``            FAIL. The searcher was told the worst value (-1e9 / 1e9), but in
                          the dashboard that value would flatten every plot, so the trial
                          is kept as a failure; ``user_attrs["status"]`` says ``diverged``
  ``error``               FAIL, with the error's last line in ``user_attrs["error"]``
  ======================  ===============================================================

* intermediate values (single objective): the objective on each epoch's evaluation row
  (``steps`` rows with ``phase == "eval"``), keyed by epoch;
* user attributes: ``trial_id``, ``status``, ``seed``, ``eval_n``, ``wall_s`` and, for an
  accuracy measured on ``eval_n`` samples, its 95% Wilson interval (``<metric>_ci95``).

A study of that name already in the storage is refused (one line naming ``--replace``);
``--replace`` deletes it first and writes the sweep again.
"""

from __future__ import annotations

import datetime as dt
import math
import warnings
from typing import Any

from orchestrator.driver.search import Dim
from orchestrator.storage import ResultStore, layout

__all__ = ["ExportError", "open_storage", "to_optuna"]

STATES = {"completed": "COMPLETE", "pruned": "PRUNED", "diverged": "FAIL", "error": "FAIL"}


class ExportError(ValueError):
    """Bad input (no such sweep, a study already there, an unknown storage): one line."""


def open_storage(spec: str):
    """An Optuna storage from ``spec``: ``journal:PATH`` (a journal file), or an RDB URL."""
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    if spec.startswith("journal:"):
        path = spec[len("journal:") :]
        if path.startswith("//"):  # journal:///abs/path or journal://rel
            path = path[2:]
        if not path:
            raise ExportError("--to journal:PATH needs a file path, e.g. journal:./sweeps.log")
        return JournalStorage(JournalFileBackend(path))
    if "://" not in spec:
        raise ExportError(
            f"--to {spec!r}: give an RDB URL (sqlite:///sweeps.db) or a journal file (journal:./sweeps.log)"
        )
    return RDBStorage(spec)


def _native(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def _finite(v: Any) -> bool:
    v = _native(v)
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _param(dim: Dim, v: Any) -> Any:
    v = _native(v)
    if dim.kind == "int" and _finite(v) and float(v) == int(v):
        return int(v)
    if dim.kind in ("uniform", "loguniform") and _finite(v):
        return float(v)
    return v


def _intermediates(store: ResultStore, sweep: str, metric: str) -> dict[str, dict[int, float]]:
    steps = store.read("steps", sweep)
    if not len(steps) or metric not in steps or "phase" not in steps:
        return {}
    ev = steps[(steps["phase"] == "eval") & steps[metric].notna()]
    key = "epoch" if "epoch" in ev else "step"
    out: dict[str, dict[int, float]] = {}
    for _, r in ev.iterrows():
        if _finite(r[metric]) and _finite(r[key]):
            out.setdefault(str(r["trial_id"]), {})[int(r[key])] = float(r[metric])
    return out


def _frozen(
    row: dict[str, Any],
    space: dict[str, Dim],
    metrics: list[str],
    inter: dict[int, float],
):
    """The Optuna trial of one ``trials`` row, or a reason it cannot be one."""
    import optuna
    from optuna.trial import TrialState

    from orchestrator.stats import wilson_for

    status = str(row.get("status"))
    if status not in STATES:
        return f"status {status!r}"
    params = {}
    for k, dim in space.items():
        v = row.get(k)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return f"no value for {k}"
        params[k] = _param(dim, v)
        if not dim.contains(params[k]):
            return f"{k}={params[k]!r} outside the search space"
    state = TrialState[STATES[status]]
    values = [row.get(m) for m in metrics]
    attrs: dict[str, Any] = {"trial_id": str(row["trial_id"]), "status": status}
    if state == TrialState.COMPLETE and not all(_finite(v) for v in values):
        state, attrs["status"] = TrialState.FAIL, f"{status} (objective missing or not finite)"
    if state == TrialState.COMPLETE:
        out_values = [float(_native(v)) for v in values]
    elif state == TrialState.PRUNED and len(metrics) == 1 and _finite(values[0]):
        out_values = [float(_native(values[0]))]
    else:
        out_values = None
    for k in ("seed", "eval_n", "wall_s"):
        if _finite(row.get(k)):
            attrs[k] = _native(row[k])
    if status == "error" and row.get("error"):
        lines = str(row["error"]).strip().splitlines()
        attrs["error"] = lines[-1] if lines else "error"
    n = row.get("eval_n")
    for m, v in zip(metrics, values, strict=True):
        if _finite(v) and _finite(n) and int(n) > 0 and m.endswith("acc") and 0 <= float(v) <= 1:
            attrs[f"{m}_ci95"] = [float(x) for x in wilson_for(float(v), int(n))]
    trial = optuna.trial.create_trial(
        state=state,
        values=out_values,
        params=params,
        distributions={k: d.optuna() for k, d in space.items()},
        user_attrs=attrs,
        intermediate_values=inter if len(metrics) == 1 else None,
    )
    if _finite(row.get("finished_at")) and trial.datetime_complete is not None:
        trial.datetime_complete = dt.datetime.fromtimestamp(float(row["finished_at"]))
    if _finite(row.get("started_at")):
        trial.datetime_start = dt.datetime.fromtimestamp(float(row["started_at"]))
    elif _finite(row.get("wall_s")) and trial.datetime_complete is not None:
        trial.datetime_start = trial.datetime_complete - dt.timedelta(seconds=float(row["wall_s"]))
    return trial


def to_optuna(root: str, sweep: str, to: str, replace: bool = False) -> dict[str, Any]:
    """Write sweep ``sweep`` of the results under ``root`` as the Optuna study ``sweep`` in
    storage ``to``; returns what was written (study name, trials per state, skipped rows)."""
    import optuna

    store = ResultStore(root)
    meta = store.meta(sweep)
    if not meta:
        have = ", ".join(store.sweeps()) or "none"
        where = layout.relative(store.base, store.meta_path(sweep))
        raise ExportError(f"no sweep {sweep!r} under {root} ({where}); sweeps: {have}")
    try:
        space = {
            k: Dim(d["kind"], d.get("low", 0.0), d.get("high", 0.0), tuple(d.get("choices") or ()))
            for k, d in meta["space"].items()
        }
        metrics, modes = list(meta["metrics"]), list(meta["modes"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportError(
            f"sweep {sweep!r}: its sweep.json has no usable space/metrics/modes ({exc})"
        ) from None
    trials = store.read("trials", sweep)
    storage = open_storage(to)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if sweep in optuna.get_all_study_names(storage):
        if not replace:
            raise ExportError(f"study {sweep!r} already exists in {to}; pass --replace to write it again")
        optuna.delete_study(study_name=sweep, storage=storage)
    directions = ["maximize" if m == "max" else "minimize" for m in modes]
    study = optuna.create_study(storage=storage, study_name=sweep, directions=directions)
    study.set_user_attr("sweep", sweep)
    study.set_user_attr("metrics", metrics)
    study.set_user_attr("results", root)
    with warnings.catch_warnings():  # experimental since Optuna 3.2, used by the dashboard
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(metrics)
    inter = _intermediates(store, sweep, metrics[0]) if len(metrics) == 1 and len(trials) else {}
    if len(trials) and "finished_at" in trials:  # trial numbers in the order the trials ended
        trials = trials.sort_values("finished_at", kind="stable")
    frozen, skipped = [], []
    for row in trials.to_dict("records"):
        t = _frozen(row, space, metrics, inter.get(str(row["trial_id"]), {}))
        if isinstance(t, str):
            skipped.append(f"{row.get('trial_id')}: {t}")
        else:
            frozen.append(t)
    study.add_trials(frozen)
    states: dict[str, int] = {}
    for t in frozen:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    return {"study": sweep, "storage": to, "trials": len(frozen), "states": states, "skipped": skipped}


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="target", metavar="{optuna}", required=True, parser_class=type(parser))
    p = sub.add_parser("optuna", help="the sweep as an Optuna study (optuna-dashboard)")
    p.add_argument("path", help="storage root of the results: a directory, s3://... or gs://...")
    p.add_argument("--name", required=True, help="the sweep; also the study's name")
    p.add_argument(
        "--to",
        required=True,
        help="Optuna storage: an RDB URL (sqlite:///sweeps.db) or a journal file (journal:./sweeps.log)",
    )
    p.add_argument("--replace", action="store_true", help="delete a study of that name first")


def run(args) -> int:
    out = to_optuna(args.path, args.name, args.to, replace=args.replace)
    states = ", ".join(f"{n} {k.lower()}" for k, n in sorted(out["states"].items())) or "no trials"
    print(f"study {out['study']!r} in {out['storage']}: {out['trials']} trials ({states})")
    for line in out["skipped"]:
        print(f"  skipped {line}")
    to = out["storage"]
    print(f"view it: optuna-dashboard {to[len('journal:') :] if to.startswith('journal:') else to}")
    return 0
