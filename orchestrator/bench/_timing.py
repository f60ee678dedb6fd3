"""Timing for ``jiio bench`` (:mod:`orchestrator.bench`): synchronised clocks, the per-call
clock that reads a baseline's per-step times off its model calls, and the interleaved loop
that times every method on every batch in turn."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from orchestrator.bench._common import _Log

__all__ = ["_CallClock", "_interleave", "_now", "_steps", "_sync", "_timed", "use_clock"]

#: the clock of every timed region: ``time.perf_counter`` (wall, the default) or
#: ``time.process_time`` (this process's CPU time: ``--clock cpu``, for a CPU shared with
#: other jobs, where the wall time also counts the waits for a core); see :func:`use_clock`
_CLOCK = {"now": time.perf_counter}


def use_clock(kind: str) -> None:
    """``"wall"`` or ``"cpu"``: the clock of the timed regions from now on."""
    if kind not in ("wall", "cpu"):
        raise ValueError(f"clock must be wall or cpu, got {kind!r}")
    _CLOCK["now"] = time.perf_counter if kind == "wall" else time.process_time


def _now() -> float:
    return _CLOCK["now"]()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    _sync(device)
    t0 = _now()
    out = fn()
    _sync(device)
    return _now() - t0, out


class _CallClock:
    """Wraps a model; records when each call starts (synchronised), relative to ``reset``,
    and a copy of the input of each call.

    A baseline that calls the model once per step (``pgd_attack``, ``adam_latent``) calls it
    the k-th time (0-based) exactly when its k-th iterate exists: ``starts[k]`` is the time
    it took to compute that iterate, ``inputs[k]`` the iterate itself.
    """

    def __init__(self, fn: Callable[[Tensor], Tensor], device: torch.device) -> None:
        self.fn, self.device = fn, device
        self.starts: list[float] = []
        self.inputs: list[Tensor] = []
        self.t0 = _now()

    def reset(self) -> None:
        _sync(self.device)
        self.starts, self.inputs, self.t0 = [], [], _now()

    def __call__(self, x: Tensor) -> Tensor:
        _sync(self.device)
        self.starts.append(_now() - self.t0)
        # a copy: an optimiser (adam_latent) updates its variable in place between calls
        self.inputs.append(x.detach().clone())
        return self.fn(x)


def _steps(k: int) -> list[int]:
    """The row counts shown for a budget of ``k`` steps: k/4, k/2 and k (deduplicated)."""
    return sorted({max(1, k // 4), max(1, k // 2), k})


def _interleave(
    variants: dict[str, Callable[[Tensor, Tensor], Any]],
    batches: list[tuple[Tensor, Tensor]],
    reps: int,
    log: _Log,
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, list[Any]]]:
    """Run every variant on every batch, in turn (a paired timing run per batch), ``reps``
    times over. Returns each variant's timings, one ``{"seconds", "times"?}`` per run in run
    order (``times``: a baseline's per-step clock), and its full outputs of the last pass
    (one per batch)."""
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in variants}
    last: dict[str, list[Any]] = {k: [] for k in variants}
    for r in range(reps):
        for b, (x, y) in enumerate(batches):
            for name, fn in variants.items():
                out = fn(x, y)
                runs[name].append({k: out[k] for k in ("seconds", "times") if k in out})
                if r == reps - 1:
                    last[name].append(out)
            shown = ", ".join(f"{k} {v[-1]['seconds']:.2f}s" for k, v in runs.items())
            log(f"pass {r + 1}/{reps}, batch {b + 1}/{len(batches)}: {shown}")
    return runs, last
