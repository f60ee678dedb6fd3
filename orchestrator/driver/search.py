"""The sweep's searcher: Optuna TPE through Ray Tune, warm-started from Parquet, with trial
identity enforced by construction.

:class:`UniqueTrials` sits between Tune and ``OptunaSearch`` and assigns every trial its
``trial_id`` (carried in the trial's config). A resumed sweep's unfinished trials come back
first, under their own ids; any other suggestion whose parameters were already started
(finished, unfinished, or issued earlier in this run) is declined and asked again, so a
started point is never proposed twice and two live trials never share an id, whatever the
searcher's seed. Only a space too small to offer a new point (a few discrete choices) gets
a repeated point, under a new id (``make_trial_id(..., repeat=k)``).

Seeds as replicates (``seeds`` of two or more training seeds): a configuration is run once
per seed, the same seeds for every configuration (common random numbers, so differences
between configurations pair by seed). The searcher proposes configurations; the first seed
runs as its trial, the others are issued right after as replicas (trial ids hash the
parameters with the seed), and the searcher is told the configuration's mean over its
finished seeds once all of them have finished. Unfinished runs of a resumed sweep and the
seeds a started configuration still lacks are issued first, directly.
"""

from __future__ import annotations

import copy
import math
import sys
from typing import Any

from orchestrator.driver.space import Dim
from orchestrator.trial.meta import make_trial_id, worst_value

__all__ = ["Dim", "UniqueTrials", "make_searcher"]


def _searcher_base():
    from ray.tune.search import Searcher

    return Searcher


class UniqueTrials(_searcher_base()):  # type: ignore[misc]
    """Wraps a Tune ``Searcher``: assigns ``trial_id``s, never issues a started point again.

    ``resume``: ``(trial_id, params)`` of the trials to continue, in order (the inner
    searcher must propose them first, e.g. as ``points_to_evaluate``); ``started``: every
    other trial id ever started, with its parameters. ``seeds`` (two or more): run every
    configuration once per seed; ``queue``: runs to issue first, directly, as
    ``(trial_id or None, params with "seed")`` (a replicated sweep's unfinished runs and
    the seeds its started configurations lack).
    """

    def __init__(
        self,
        searcher,
        sweep: str,
        searched: tuple[str, ...],
        resume: list[tuple[str, dict[str, Any]]],
        started: dict[str, dict[str, Any]],
        max_declines: int = 25,
        seeds: tuple[int, ...] = (),
        queue: list[tuple[str | None, dict[str, Any]]] = (),
    ) -> None:
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher, self.sweep, self.searched = searcher, sweep, tuple(searched)
        self.max_declines = max_declines
        # Replicated sweeps: runs issued directly, first ((trial_id or None, params with seed)).
        self.seeds = tuple(seeds) if len(seeds) > 1 else ()
        self._queue: list[tuple[str | None, dict[str, Any]]] = list(queue)
        self._groups: dict[str, dict[str, Any]] = {}  # configuration point -> inner id, seeds left, results
        self._member: dict[str, tuple[str, int]] = {}  # Tune's trial id -> (configuration point, seed)
        self._resume: dict[str, list[str]] = {}
        for tid, params in resume:
            self._resume.setdefault(self._point(params), []).append(tid)
        self.taken_ids: set[str] = set(started) | {tid for tid, _ in resume}
        self.taken_points: set[str] = {self._point(p) for p in started.values()}
        self._inner: dict[str, str] = {}  # Tune's trial id -> the inner searcher's
        self.declined = 0

    def _point(self, params: dict[str, Any]) -> str:
        return make_trial_id(self.sweep, {k: params[k] for k in self.searched if k in params})

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        return self.searcher.set_max_concurrency(max_concurrent)

    def run_id(self, params: dict[str, Any]) -> str:
        """The trial id of one run: the parameters' hash, with the seed in a replicated sweep."""
        key = {k: params[k] for k in self.searched}
        if self.seeds:
            key["seed"] = params["seed"]
        repeat, tid = 0, make_trial_id(self.sweep, key)
        while tid in self.taken_ids:
            repeat += 1
            tid = make_trial_id(self.sweep, key, repeat=repeat)
        return tid

    def _issue(self, trial_id: str, tid: str | None, params: dict[str, Any], inner: str | None = None):
        tid = tid or self.run_id(params)
        point = self._point(params)
        self.taken_ids.add(tid)
        self.taken_points.add(point)
        if self.seeds:
            group = self._groups.setdefault(point, {"inner": inner, "left": set(), "results": []})
            group["left"].add(params["seed"])
            self._member[trial_id] = (point, params["seed"])
        return {**params, "trial_id": tid}

    def suggest(self, trial_id: str):
        if self._queue:  # a replicated sweep's unfinished runs and missing seeds
            tid, params = self._queue.pop(0)
            return self._issue(trial_id, tid, dict(params))
        for attempt in range(self.max_declines + 1):
            inner = trial_id if attempt == 0 else f"{trial_id}~{attempt}"
            config = self.searcher.suggest(inner)
            if config is None or not isinstance(config, dict):
                return config  # None (wait) or FINISHED
            point = self._point(config)
            queued = None if self.seeds else self._resume.get(point)
            if queued:
                tid = queued.pop(0)
            elif point in self.taken_points and attempt < self.max_declines:
                self.searcher.on_trial_complete(inner, result=None, error=True)
                self.declined += 1
                continue
            else:
                tid = None
            self._inner[trial_id] = inner
            if self.seeds:  # the first seed now, the others right after, as replicas
                self._queue[:0] = [(None, {**config, "seed": s}) for s in self.seeds[1:]]
                # Every seed counts before any is issued: a first seed that finishes before its
                # replicas start does not complete the configuration alone.
                self._groups[point] = {"inner": inner, "left": set(self.seeds), "results": []}
                return self._issue(trial_id, None, {**config, "seed": self.seeds[0]}, inner=inner)
            return self._issue(trial_id, tid, config)
        raise AssertionError("unreachable")

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._inner and not self.seeds:
            self.searcher.on_trial_result(self._inner[trial_id], result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if self.seeds:
            if trial_id in self._member:
                self._replica_done(trial_id, None if error else result)
            return
        if trial_id in self._inner:
            self.searcher.on_trial_complete(self._inner[trial_id], result=result, error=error)

    def _replica_done(self, trial_id: str, result: dict | None) -> None:
        """One seed of a configuration finished; with its last seed the searcher is told the
        mean over the seeds that gave a finite value (an error if none did)."""
        point, seed = self._member.pop(trial_id)
        group = self._groups[point]
        group["left"].discard(seed)
        if result:
            group["results"].append(result)
        if group["left"] or group["inner"] is None:
            return
        metrics = self.searcher.metric if isinstance(self.searcher.metric, list) else [self.searcher.metric]
        mean: dict[str, float] = {}
        for m in metrics:
            values = [float(r[m]) for r in group["results"] if _finite(r.get(m))]
            if values:
                mean[m] = sum(values) / len(values)
        done = len(mean) == len(metrics)
        self.searcher.on_trial_complete(group["inner"], result=mean if done else None, error=not done)
        group["inner"] = None

    def get_state(self) -> dict:
        """This wrapper's bookkeeping (Tune saves the inner searcher separately)."""
        state = self.__dict__.copy()
        del state["searcher"]
        return copy.deepcopy(state)

    def set_state(self, state: dict) -> None:
        self.__dict__.update(state)

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)


def make_searcher(
    sweep: str,
    space: dict[str, Dim],
    metrics: tuple[str, ...],
    modes: tuple[str, ...],
    seed: int,
    finished,
    resume: list[tuple[str, dict[str, Any]]],
    started: dict[str, dict[str, Any]],
    enqueue: list[dict[str, Any]],
    max_concurrent: int,
    seeds: tuple[int, ...] = (),
    missing: list[dict[str, Any]] = (),
):
    """Seeded TPE, told every finished trial (a diverged one as the worst value), continuing
    ``resume`` first, then ``enqueue`` (e.g. the paper's configuration), then new points.

    With ``seeds`` (two or more) every configuration runs once per seed: ``resume`` and
    ``missing`` (runs, with their ``seed``, that started configurations still lack) are
    issued first, and the searcher is told each configuration's mean over its seeds."""
    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep's console says what matters
    multi = len(metrics) > 1
    # Seeded by how many trials were ever started: a resumed sweep draws new points.
    sampler = optuna.samplers.TPESampler(seed=seed + len(started) + len(resume))
    replicated = len(seeds) > 1
    points = ([] if replicated else [dict(p) for _, p in resume]) + [dict(p) for p in enqueue]
    searcher = OptunaSearch(
        space={k: d.optuna() for k, d in space.items()},
        metric=list(metrics) if multi else metrics[0],
        mode=list(modes) if multi else modes[0],
        sampler=sampler,
        points_to_evaluate=points or None,
    )
    worst = [worst_value(m) for m in modes]
    if replicated and len(finished):  # one point per configuration: its mean over seeds
        finished = _config_means(finished, tuple(space), metrics, worst)
    for _, row in finished.iterrows():
        params = {k: _native(row[k]) for k in space if k in row}
        if len(params) != len(space) or row["status"] == "error":
            continue
        if not all(space[k].contains(v) for k, v in params.items()):
            print(
                f"not telling the searcher about trial {row['trial_id']}: outside the current space",
                file=sys.stderr,
            )
            continue
        values = worst if row["status"] == "diverged" else [row.get(m) for m in metrics]
        if any(v is None or not math.isfinite(float(v)) for v in values):
            continue
        try:
            if multi:  # OptunaSearch.add_evaluated_point takes one value; add the trial directly
                searcher._ot_study.add_trial(
                    optuna.trial.create_trial(
                        state=optuna.trial.TrialState.COMPLETE,
                        values=[float(v) for v in values],
                        params=params,
                        distributions=searcher._space,
                    )
                )
            else:
                searcher.add_evaluated_point(params, float(values[0]))
        except ValueError as exc:
            print(f"not telling the searcher about trial {row['trial_id']}: {exc}", file=sys.stderr)
    if replicated:
        queue = [(t, dict(p)) for t, p in resume] + [(None, dict(p)) for p in missing]
        unique = UniqueTrials(searcher, sweep, tuple(space), resume, started, seeds=seeds, queue=queue)
    else:
        unique = UniqueTrials(searcher, sweep, tuple(space), resume, started)
    return ConcurrencyLimiter(unique, max_concurrent=max_concurrent)


def _config_means(finished, searched: tuple[str, ...], metrics: tuple[str, ...], worst: list[float]):
    """Finished runs of a replicated sweep, one row per configuration: the mean of each
    objective over its seeds (a diverged run counts as the worst value, an error not at all)."""
    rows = finished[finished["status"] != "error"].copy()
    cols = [k for k in searched if k in rows]
    if len(cols) != len(searched) or not len(rows):
        return rows.iloc[0:0]
    for m, w in zip(metrics, worst, strict=True):
        rows[m] = rows[m].where(rows["status"] != "diverged", w) if m in rows else w
    means = rows.groupby(cols, dropna=False)[list(metrics)].mean().reset_index()
    first = rows.groupby(cols, dropna=False)["trial_id"].first().reset_index()
    out = means.merge(first, on=cols)
    out["status"] = "completed"
    return out


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _native(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v
