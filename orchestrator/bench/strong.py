"""The baselines of ``jiio bench`` (:mod:`orchestrator.bench`): the paper's cold one and the
strong, warm-started ones a DEQ engineer writes, each at every step size of a small grid,
and how JIIO compares with the fastest of them.

Families:

- ``cold``, always run: the paper's baseline (:func:`~jiio_core.pgd_attack` /
  :func:`~jiio_core.adam_latent`): every step a full forward solve from ``z = 0`` and a full
  implicit backward solve with the plain DEQ (Broyden 18/18 by default), at the bench's own
  step size (``--pgd-step-size`` / ``--adam-lr``) only;
- the warm families of ``--baselines`` (comma-separated; ``none`` for the cold one alone):
- ``jfb``: warm-started forward (from the previous step's ``z*``), Jacobian-free backward
  (``u = dl/dz``, no VJP);
- ``ift-K``: warm-started forward, at most ``K`` backward iterations (VJPs) warm-started from
  the previous step's ``u``, a sample stopping once its relative residual is
  ``<= --warm-tol``.

Warm forwards: Anderson (memory 5) to the relative residual ``--warm-tol`` or at most
``--warm-max-iter`` cell evaluations (:func:`~jiio_core.pgd_attack_warm`,
:func:`~jiio_core.adam_latent_warm`). Every warm family runs at every step size of the grid
(``--step-sizes`` / ``--adam-lrs``). With a fixed step size (no random start) each run of K
steps contains the runs of fewer steps as prefixes, so one run gives a baseline's whole
per-step curve: the time at which iterate k existed, and iterate k itself (re-scored by the
bench's plain DEQ like every method).

:func:`compare` puts every JIIO variant against the fastest baseline that reaches its
strength (:func:`~orchestrator.bench.measure.fastest_reaching`), reports the strongest
baseline per step count, and the time each side needs to reach fixed targets set by the
baselines themselves (the strongest baseline at its full step budget, and a fraction of the
way there from the unattacked / starting point), which does not depend on how strong JIIO is.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from jiio_core import WarmSettings
from orchestrator.bench.measure import (
    best_per_step,
    fastest_reaching,
    mean_interval,
    reaches,
)
from orchestrator.bench.timing import clock_now, sync_device

__all__ = [
    "DEFAULT_BASELINES",
    "StepClock",
    "add_baseline_arguments",
    "baseline_label",
    "collect",
    "compare",
    "compare_samples",
    "parse_baselines",
    "parse_grid",
    "warm_description",
    "warm_settings",
]

DEFAULT_BASELINES = "jfb,ift-4,ift-18"
#: the forward solver of the warm baselines (Anderson, memory 5: pgd_attack_warm's default)
WARM_SOLVER = {"solver": "anderson", "anderson_m": 5}


def parse_baselines(text: str) -> list[int]:
    """The warm families of ``--baselines`` as backward iterations: ``jfb`` is 0, ``ift-K`` K.

    Example:
        >>> parse_baselines("jfb, ift-4,ift-18"), parse_baselines("none")
        ([0, 4, 18], [])
    """
    if text.strip() == "none":
        return []
    out: list[int] = []
    for item in (t.strip() for t in text.split(",")):
        if item == "jfb":
            k = 0
        elif item.startswith("ift-") and item[4:].isdigit() and int(item[4:]) >= 1:
            k = int(item[4:])
        else:
            raise argparse.ArgumentTypeError(
                f"warm baselines are jfb or ift-K (K >= 1), comma-separated, or none; got {item!r}"
            )
        if k in out:
            raise argparse.ArgumentTypeError(f"baseline {item!r} given twice")
        out.append(k)
    return out


def parse_grid(text: str) -> list[float]:
    """``0.3,0.6`` -> ``[0.3, 0.6]``: finite numbers > 0, no repeats, in the given order."""
    out: list[float] = []
    for item in text.split(","):
        try:
            v = float(item)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be numbers > 0, comma-separated; got {item!r}") from None
        if not (v > 0 and v < float("inf")) or v in out:
            raise argparse.ArgumentTypeError(f"must be distinct finite numbers > 0; got {item!r}")
        out.append(v)
    return out


def add_baseline_arguments(p: argparse.ArgumentParser, *, grid_flag: str, grid: str, what: str) -> None:
    p.add_argument(
        "--baselines",
        type=parse_baselines,
        default=parse_baselines(DEFAULT_BASELINES),
        metavar="jfb,ift-K,...|none",
        help=f"warm baseline families (default {DEFAULT_BASELINES}), beside the paper's cold one "
        "(always run): jfb = warm forward + Jacobian-free backward, ift-K = warm forward + at "
        "most K warm backward iterations; see orchestrator/bench/strong.py",
    )
    p.add_argument(
        grid_flag,
        type=parse_grid,
        default=parse_grid(grid),
        metavar="A,B,...",
        help=f"{what} of the warm baselines, every one run (default {grid}); the fastest baseline "
        "that reaches a strength is what JIIO is compared with",
    )
    p.add_argument(
        "--warm-tol",
        type=float,
        default=1e-3,
        help="relative residual at which the warm baselines' forward and backward solves stop (default 1e-3)",
    )
    p.add_argument(
        "--warm-max-iter",
        type=int,
        default=18,
        help="at most this many forward iterations per warm step (default 18, the paper's Broyden cap)",
    )


def warm_settings(k: int, args: argparse.Namespace) -> WarmSettings:
    """The solve settings of the warm baseline with ``k`` backward iterations."""
    return WarmSettings(
        **WARM_SOLVER,
        forward_tol=args.warm_tol,
        forward_max_iter=args.warm_max_iter,
        backward_iters=k,
        backward_tol=args.warm_tol,
    )


def warm_description(args: argparse.Namespace) -> dict[str, Any]:
    """The baselines' settings as the bench's JSON ``config`` states them."""
    tol = f"tol {args.warm_tol:g}"
    return {
        "baselines": ["cold", *("jfb" if k == 0 else f"ift-{k}" for k in args.baselines)],
        "warm": {
            "forward": f"anderson m=5, {tol}, at most {args.warm_max_iter} iterations, from the "
            "previous step's z*",
            "backward": f"anderson, at most K iterations, {tol}, from the previous step's u (jfb: none)",
        },
    }


def baseline_label(prefix: str, k: int | None, size: float, size_name: str) -> str:
    """``pgd-cold-s0.6`` (``k`` None), ``pgd-jfb-s0.3`` (0), ``adam-ift4-lr0.2``: table labels.

    Example:
        >>> baseline_label("pgd", None, 0.6, "s"), baseline_label("adam", 4, 0.2, "lr")
        ('pgd-cold-s0.6', 'adam-ift4-lr0.2')
    """
    name = "cold" if k is None else ("jfb" if k == 0 else f"ift{k}")
    return f"{prefix}-{name}-{size_name}{size:g}"


class StepClock:
    """The per-step clock of a warm baseline (its ``callback``): after :meth:`start` with the
    start ``x0``, ``times[k]`` is when iterate ``k`` existed (iterate 0 at 0), ``inputs[k]``
    a copy of it."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.t0 = device, 0.0
        self.times: list[float] = []
        self.inputs: list[Tensor] = []

    def start(self, x0: Tensor) -> None:
        sync_device(self.device)
        self.times, self.inputs, self.t0 = [0.0], [x0.detach().clone()], clock_now()

    def __call__(self, _t: int, x_t: Tensor) -> None:
        sync_device(self.device)
        self.times.append(clock_now() - self.t0)
        self.inputs.append(x_t.detach().clone())


def collect(
    cold: dict[str, Any],
    warm: dict[str, tuple[int, float]],
    runs: dict[str, list[dict[str, Any]]],
    last: dict[str, list[Any]],
    steps: int,
    score: Callable[[list[Tensor]], dict[str, Tensor]],
    log: Callable[[str], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Every baseline's timings and re-scored per-step samples, the cold one first.

    ``cold``: ``{"label", "times", "samples", "info"}`` (already scored); ``warm``: label ->
    (backward iterations, step size); ``runs[label]``: the timing runs (``times`` per step),
    ``last[label]``: the last pass's outputs per batch (``inputs`` per step, ``stats``);
    ``score(xs)``: per-sample values of one iterate per batch (a dict of tensors); ``log``
    gets one progress line per baseline (re-scoring every iterate takes minutes).
    """
    per = {cold["label"]: {**{k: v for k, v in cold.items() if k != "label"}, "stats": []}}
    for i, (name, (k, a)) in enumerate(warm.items()):
        if log is not None:
            log(f"re-scoring {name}'s {steps + 1} iterates by the plain DEQ ({i + 1}/{len(warm)})")
        outs = last[name]
        per[name] = {
            "times": [r["times"] for r in runs[name]],
            "samples": [score([o["inputs"][i] for o in outs]) for i in range(steps + 1)],
            "info": {"family": "jfb" if k == 0 else "ift", "backward_iters": k, "step_size": a},
            "stats": [o["stats"] for o in outs],
        }
    return per


def compare_samples(
    per: dict[str, dict[str, Any]],
    samples: dict[str, dict[str, Tensor]],
    jiio_times: dict[str, list[float]],
    keys: dict[str, tuple[str, bool]],
    start: dict[str, Tensor],
) -> dict[str, Any]:
    """:func:`compare` on per-sample dicts: ``keys`` maps a measure to (the samples' key,
    higher is stronger); ``per`` is :func:`collect`'s, ``samples[v]`` JIIO variant ``v``'s
    per-sample values, ``start`` the values before any step."""
    baselines = {
        b: {
            "times": d["times"],
            "curves": {m: [c[key] for c in d["samples"]] for m, (key, _) in keys.items()},
            "info": d["info"],
            "stats": d["stats"],
        }
        for b, d in per.items()
    }
    jiio = {
        v: {"times": jiio_times[v], "values": {m: s[key] for m, (key, _) in keys.items()}}
        for v, s in samples.items()
    }
    measures = {m: higher for m, (_, higher) in keys.items()}
    return compare(baselines, jiio, measures, {m: start[key] for m, (key, _) in keys.items()})


def _curve_summary(
    times: Sequence[Sequence[float]], curves: dict[str, Sequence[Tensor]], stats: list[Any]
) -> dict[str, Any]:
    n = len(next(iter(curves.values())))
    out: dict[str, Any] = {
        "seconds": [statistics.median(t[k] for t in times) for k in range(n)],
        "seconds_runs": [list(t) for t in times],
    }
    for key, c in curves.items():
        out[key] = [float(v.double().mean()) for v in c]
    if stats:  # warm runs: solve iterations per step, mean over the last pass's batches
        for key in ("forward_iters", "backward_iters"):
            out[key] = [statistics.fmean(s[key][k] for s in stats) for k in range(n - 1)]
    return out


def compare(
    baselines: dict[str, dict[str, Any]],
    jiio: dict[str, dict[str, Any]],
    measures: dict[str, bool],
    start: dict[str, Tensor],
    fractions: Sequence[float] = (0.9, 1.0),
) -> dict[str, Any]:
    """Every JIIO variant against the baselines, by every measure.

    ``baselines[b]``: ``{"times": [run][k], "curves": {measure: [k] per-sample}, "stats":
    [...]}``; ``jiio[v]``: ``{"times": [run], "values": {measure: per-sample}}``; ``measures``:
    name -> higher is stronger; ``start``: per-sample values before any step (the unattacked
    input, the zero latent). Returns ``baselines`` (per-step curves, median times),
    ``best_per_step`` (by each measure), ``versus`` (per variant and measure:
    :func:`~orchestrator.bench.measure.fastest_reaching`, without its candidates' detail
    beyond step and ratio) and ``targets``.
    """
    b_curves = {m: {b: d["curves"][m] for b, d in baselines.items()} for m in measures}
    b_times = {b: d["times"] for b, d in baselines.items()}
    out: dict[str, Any] = {
        "baselines": {
            b: {**d.get("info", {}), "curve": _curve_summary(d["times"], d["curves"], d.get("stats", []))}
            for b, d in baselines.items()
        },
        "best_per_step": {m: best_per_step(b_curves[m], h) for m, h in measures.items()},
        "versus": {},
        "targets": [],
    }
    for v, d in jiio.items():
        out["versus"][v] = {
            m: _slim(fastest_reaching(b_curves[m], b_times, d["times"], d["values"][m], h))
            for m, h in measures.items()
        }
    for m, higher in measures.items():
        last = {b: c[-1] for b, c in b_curves[m].items()}
        sign = 1.0 if higher else -1.0
        strongest = max(last, key=lambda b: sign * float(last[b].double().mean()))
        for f in fractions:
            ref = start[m].double() + f * (last[strongest].double() - start[m].double())
            out["targets"].append(_target(m, higher, f, strongest, ref, b_curves[m], b_times, jiio))
    return out


def _slim(r: dict[str, Any]) -> dict[str, Any]:
    """A :func:`fastest_reaching` result with each candidate cut to its step and ratio."""
    cands = {
        b: {"step": c["step"], "ratio": c["ratio"]["ratio"] if c["ratio"] else None}
        for b, c in r["candidates"].items()
    }
    return {**r, "candidates": cands}


def _target(
    measure: str,
    higher: bool,
    fraction: float,
    strongest: str,
    ref: Tensor,
    curves: dict[str, Sequence[Tensor]],
    times: dict[str, Sequence[Sequence[float]]],
    jiio: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Time to reach ``ref``: the fastest baseline and the fastest JIIO variant, paired."""
    hits = {v: reaches(d["values"][measure], ref, higher) for v, d in jiio.items()}
    reached = [v for v, h in hits.items() if h["reached"]]
    fastest_j = min(reached, key=lambda v: statistics.median(jiio[v]["times"])) if reached else None
    n_runs = len(next(iter(times.values())))
    # without a JIIO variant at the target, the ratio to a unit time still ranks the baselines
    j_times = jiio[fastest_j]["times"] if fastest_j else [1.0] * n_runs
    base = _slim(fastest_reaching(curves, times, j_times, ref, higher))
    b = base["baseline"]
    b_seconds = statistics.median(times[b][r][base["step"]] for r in range(n_runs)) if b is not None else None
    return {
        "measure": measure,
        "fraction": fraction,
        "set_by": strongest,
        "reference_mean": float(mean_interval(ref)["mean"]),
        "baseline": b,
        "baseline_step": base["step"],
        "baseline_seconds": b_seconds,
        "jiio": fastest_j,
        "jiio_seconds": statistics.median(jiio[fastest_j]["times"]) if fastest_j else None,
        "jiio_reached": {v: h["reached"] for v, h in hits.items()},
        "jiio_tied": {v: h["tied"] for v, h in hits.items()},
        "ratio": base["ratio"] if fastest_j else None,  # fastest baseline / fastest JIIO, paired
        "range": base["range"] if fastest_j else [None, None],
    }
