"""Timing for ``jiio bench`` (:mod:`orchestrator.bench`): synchronised clocks, the per-call
clock that reads a baseline's per-step times off its model calls, and the interleaved loop
that times every method on every batch in turn."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["CallClock", "clock_now", "interleave", "step_counts", "sync_device", "time_call", "use_clock"]

#: the clock of every timed region: ``time.perf_counter`` (wall, the default) or
#: ``time.process_time`` (this process's CPU time: ``--clock cpu``, for a CPU shared with
#: other jobs, where the wall time also counts the waits for a core); see :func:`use_clock`
_CLOCK = {"now": time.perf_counter}


def use_clock(kind: str) -> None:
    """``"wall"`` or ``"cpu"``: the clock of the timed regions from now on."""
    if kind not in ("wall", "cpu"):
        raise ValueError(f"clock must be wall or cpu, got {kind!r}")
    _CLOCK["now"] = time.perf_counter if kind == "wall" else time.process_time


def clock_now() -> float:
    """The current reading of the bench's clock (see :func:`use_clock`)."""
    return _CLOCK["now"]()


def sync_device(device: torch.device) -> None:
    """Wait for the GPU's queued work (no-op on the CPU), so a clock reading includes it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Seconds ``fn()`` took, synchronised on both ends, and its result."""
    sync_device(device)
    t0 = clock_now()
    out = fn()
    sync_device(device)
    return clock_now() - t0, out


class CallClock:
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
        self.t0 = clock_now()

    def reset(self) -> None:
        sync_device(self.device)
        self.starts, self.inputs, self.t0 = [], [], clock_now()

    def __call__(self, x: Tensor) -> Tensor:
        sync_device(self.device)
        self.starts.append(clock_now() - self.t0)
        # a copy: an optimiser (adam_latent) updates its variable in place between calls
        self.inputs.append(x.detach().clone())
        return self.fn(x)


def step_counts(k: int) -> list[int]:
    """The row counts shown for a budget of ``k`` steps: k/4, k/2 and k (deduplicated)."""
    return sorted({max(1, k // 4), max(1, k // 2), k})


def interleave(
    variants: dict[str, Callable[[Tensor, Tensor], Any]],
    batches: list[tuple[Tensor, Tensor]],
    reps: int,
    log: Callable[[str], None],
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
