"""Trial identity by construction: the searcher never reissues a started point or an id."""

from __future__ import annotations

import pandas as pd
import pytest

from orchestrator.driver.search import Dim, UniqueTrials, make_searcher
from orchestrator.trial.meta import make_trial_id

pytest.importorskip("ray.tune")


class Scripted:
    """A stand-in inner searcher that proposes a fixed list of points, in order (repeats
    included, as a re-seeded TPE does after a kill), and records what it was told."""

    metric, mode = "acc", "max"

    def __init__(self, points):
        self.points = list(points)
        self.issued: dict[str, dict] = {}
        self.failed: list[str] = []
        self.completed: list[str] = []

    def suggest(self, tid):
        if tid not in self.issued:
            if not self.points:
                return None
            self.issued[tid] = self.points.pop(0)
        return dict(self.issued[tid])

    def on_trial_complete(self, tid, result=None, error=False):
        (self.failed if error else self.completed).append(tid)

    def on_trial_result(self, tid, result):
        pass

    def set_search_properties(self, *a, **k):
        return True

    def set_max_concurrency(self, n):
        return False


def p(x):
    return {"alpha_x": x}


def test_a_killed_runs_points_are_not_proposed_again_and_ids_never_repeat():
    # The killed run started 0.1 and 0.2 (unfinished: to continue) and finished 0.3.
    a, b, c = (make_trial_id("s", p(x)) for x in (0.1, 0.2, 0.3))
    inner = Scripted([p(0.1), p(0.2), p(0.1), p(0.2), p(0.3), p(0.4), p(0.5)])
    u = UniqueTrials(inner, "s", ("alpha_x",), resume=[(a, p(0.1)), (b, p(0.2))], started={c: p(0.3)})
    got = [u.suggest(f"t{i}") for i in range(4)]
    ids = [g["trial_id"] for g in got]
    assert ids[:2] == [a, b]  # the unfinished trials continue under their own ids
    assert [g["alpha_x"] for g in got[2:]] == [0.4, 0.5]  # re-proposals of 0.1, 0.2, 0.3 declined
    assert len(set(ids)) == 4 and c not in ids
    assert u.declined == 3 and len(inner.failed) == 3  # the inner searcher was told (as failed asks)
    assert u.suggest("t9") is None  # inner has nothing left: wait, not a duplicate


def test_results_reach_the_inner_searcher_under_its_own_ids():
    inner = Scripted([p(0.1), p(0.1), p(0.2)])
    u = UniqueTrials(inner, "s", ("alpha_x",), resume=[], started={})
    u.suggest("t0")
    u.suggest("t1")  # declines the repeat of 0.1, asks again as "t1~1"
    u.on_trial_complete("t1", {"acc": 1.0})
    assert inner.completed == ["t1~1"] and inner.failed == ["t1"]


def test_an_exhausted_discrete_space_repeats_a_point_under_a_new_id():
    inner = Scripted([{"m": 1}] * 40)
    u = UniqueTrials(inner, "s", ("m",), resume=[], started={}, max_declines=3)
    ids = [u.suggest(f"t{i}")["trial_id"] for i in range(3)]
    assert len(set(ids)) == 3
    assert ids[0] == make_trial_id("s", {"m": 1})
    assert ids[1] == make_trial_id("s", {"m": 1}, repeat=1)


def test_real_tpe_reseeded_as_after_a_kill_proposes_fresh_points():
    """The reported bug: seed + len(finished) is the killed run's seed, so TPE proposed the
    same first points again while they were re-enqueued. Here the killed run's first two
    points are to continue; six more suggestions hold no started point and no repeated id."""
    space = {"alpha_x": Dim("loguniform", 0.05, 2.0), "alpha_z": Dim("loguniform", 0.2, 1.0)}
    first = make_searcher("s", space, ("acc",), ("max",), 0, pd.DataFrame(), [], {}, [], 8)
    killed = [first.suggest(f"k{i}") for i in range(2)]
    resume = [(k["trial_id"], {n: k[n] for n in space}) for k in killed]
    again = make_searcher("s", space, ("acc",), ("max",), 0, pd.DataFrame(), resume, {}, [], 8)
    got = [again.suggest(f"r{i}") for i in range(8)]
    assert [g["trial_id"] for g in got[:2]] == [k["trial_id"] for k in killed]
    ids = [g["trial_id"] for g in got]
    assert len(set(ids)) == 8
    points = [tuple(g[n] for n in space) for g in got[2:]]
    assert not set(points) & {tuple(k[n] for n in space) for k in killed}


class Recording(Scripted):
    """Also keeps the results the inner searcher is told."""

    def __init__(self, points):
        super().__init__(points)
        self.results: dict[str, dict | None] = {}

    def on_trial_complete(self, tid, result=None, error=False):
        super().on_trial_complete(tid, result, error)
        self.results[tid] = result


def test_seeds_replicate_every_configuration_and_the_searcher_is_told_their_mean():
    """--seeds 3: each proposed configuration runs under seeds 5, 6, 7 (the first as its
    trial, the others right after); ids hash the seed; the searcher hears one result per
    configuration, the mean over its seeds, once the last seed finished (an errored seed
    is left out of the mean), and a configuration already started is declined as before."""
    started = {make_trial_id("s", {**p(0.9), "seed": 5}): {**p(0.9), "seed": 5}}
    inner = Recording([p(0.1), p(0.9), p(0.2)])
    u = UniqueTrials(inner, "s", ("alpha_x",), resume=[], started=started, seeds=(5, 6, 7))
    got = [u.suggest(f"t{i}") for i in range(6)]
    assert [(g["alpha_x"], g["seed"]) for g in got] == [
        (0.1, 5),
        (0.1, 6),
        (0.1, 7),
        (0.2, 5),
        (0.2, 6),
        (0.2, 7),
    ]
    assert [g["trial_id"] for g in got] == [
        make_trial_id("s", {**p(x), "seed": s}) for x in (0.1, 0.2) for s in (5, 6, 7)
    ]
    assert u.declined == 1  # 0.9 was started before
    u.on_trial_complete("t1", {"acc": 0.5})
    u.on_trial_complete("t0", {"acc": 0.2})
    assert "t0" not in inner.results  # a seed is still running
    u.on_trial_complete("t2", {"acc": 0.8})
    assert inner.results["t0"] == {"acc": pytest.approx(0.5)}
    u.on_trial_complete("t3", {"acc": 0.4})
    u.on_trial_complete("t4", None, error=True)
    u.on_trial_complete("t5", {"acc": 0.6})
    assert inner.results["t3~1"] == {"acc": pytest.approx(0.5)}  # the errored seed left out


def test_a_replicated_resume_issues_unfinished_runs_and_missing_seeds_first():
    a = make_trial_id("s", {**p(0.1), "seed": 0})
    inner = Recording([p(0.3)])
    u = UniqueTrials(
        inner,
        "s",
        ("alpha_x",),
        resume=[(a, {**p(0.1), "seed": 0})],
        started={},
        seeds=(0, 1),
        queue=[(a, {**p(0.1), "seed": 0}), (None, {**p(0.1), "seed": 1})],
    )
    got = [u.suggest(f"t{i}") for i in range(4)]
    assert [(g["trial_id"], g["alpha_x"], g["seed"]) for g in got[:2]] == [
        (a, 0.1, 0),
        (make_trial_id("s", {**p(0.1), "seed": 1}), 0.1, 1),
    ]
    assert [(g["alpha_x"], g["seed"]) for g in got[2:]] == [(0.3, 0), (0.3, 1)]
    u.on_trial_complete("t0", {"acc": 1.0})
    u.on_trial_complete("t1", {"acc": 1.0})
    assert inner.results == {}  # a resumed configuration has no inner trial to tell


def test_missing_seeds_of_started_configurations():
    from orchestrator.driver.state import Plan, missing_seeds

    done = pd.DataFrame(
        [
            {"trial_id": "a", "status": "completed", "alpha_x": 0.1, "seed": 0},
            {"trial_id": "b", "status": "pruned", "alpha_x": 0.1, "seed": 1},
            {"trial_id": "c", "status": "completed", "alpha_x": 0.2, "seed": 1},
        ]
    )
    plan = Plan(done, [("d", {"alpha_x": 0.3, "seed": 0})], {"e": {"alpha_x": 0.4, "seed": 0}})
    got = missing_seeds(plan, ("alpha_x",), (0, 1))
    assert got == [{"alpha_x": 0.2, "seed": 0}, {"alpha_x": 0.3, "seed": 1}, {"alpha_x": 0.4, "seed": 1}]
