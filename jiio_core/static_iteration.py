"""One JIIO iteration with static shapes, captured as a CUDA graph and replayed.

On a GPU at the paper's sizes an iteration is launch-bound: f, its VJP, Anderson's step
and the bookkeeping are some hundreds of small kernels, each issued by the CPU. Capturing
one iteration as a CUDA graph and replaying it issues them all at once. That needs every
shape, address and branch of the iteration fixed; what changes from one iteration to the
next lives on the device:

- the state ``v``, ``v_prev``, ``F(v)``, the kept iterate: static buffers written in place;
- the alpha_x schedule: a ``(max_iter,)`` tensor indexed by a device step counter;
- Anderson: :class:`~jiio_core.static_anderson.StaticAndersonMixer` (a fixed ``m``-unknown system,
  empty slots padded out, slot indices on the device, fallbacks applied by masks);
- the trace: ``(max_iter, ...)`` buffers written at the counter.

Iteration 0 runs eagerly (it checks ``f``'s output shape and sets the divergence limit),
as do the next two (warm-up: lazy initialisation must not happen during capture); the
rest replay the graph. As in the eager path on a GPU, the host looks for "every sample
stopped" only every 8 iterations. ``static_loop(..., capture=False)`` runs the same static
iteration without a graph, on any device: the CPU tests compare it with the eager loop.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .mixers import DampedMixer
from .static_anderson import StaticAndersonMixer

if TYPE_CHECKING:
    from .augmented import AugmentedMap, LoopState
    from .config import JIIOConfig

__all__ = ["check_graphable", "static_loop"]

WARMUP = 2  # eager iterations after iteration 0, before the capture
LINSOLVE = "lu"  # StaticAndersonMixer's linsolve: "lu" (solve_ex) or "elimination"


def check_graphable(cfg: JIIOConfig, device: torch.device) -> None:
    """ValueError unless ``jiio_solve(..., cuda_graph=True)`` can run this configuration."""
    if device.type != "cuda":
        raise ValueError(f"cuda_graph=True needs CUDA tensors, got x0 on {device.type!r}")
    if cfg.solver not in ("anderson", "fixed_point"):
        raise ValueError(f"cuda_graph=True supports solver 'anderson' or 'fixed_point', got {cfg.solver!r}")


def static_loop(aug: AugmentedMap, st: LoopState, capture: bool) -> tuple[Tensor, Tensor]:
    """Run ``aug``'s iteration from ``st`` with static shapes; returns the raw trace
    ``(T, len(TRACE_KEYS), B)`` and ok ``(T, B)``. ``capture``: replay a CUDA graph of one
    iteration after the warm-up (CUDA only)."""
    cfg = aug.cfg
    T = cfg.max_iter
    v0 = st.v
    device, dtype, _B = v0.device, v0.dtype, v0.shape[0]
    host = device.type == "cpu"
    if cfg.solver == "anderson":
        mixer: StaticAndersonMixer | DampedMixer = StaticAndersonMixer(
            m=cfg.anderson_m,
            lam=cfg.anderson_lam,
            beta=cfg.anderson_beta,
            kind=cfg.anderson_type,
            linsolve=LINSOLVE,
        )
    elif cfg.solver == "fixed_point":
        mixer = DampedMixer(beta=1.0, copy=False)
    else:
        raise ValueError(f"static iteration supports solver 'anderson' or 'fixed_point', got {cfg.solver!r}")
    st.v = v0.clone()  # every piece of state in a buffer of its own, updated in place
    st.v_prev = v0.clone()
    Fv = torch.empty_like(v0)
    schedule = torch.tensor([cfg.alpha_x_at(k) for k in range(T)], dtype=dtype, device=device)
    counter = torch.zeros((), dtype=torch.long, device=device)  # the iteration being evaluated

    # iteration 0, eagerly
    joint, blocks = aug.evaluate(st.v, 0, Fv)
    row0, ok0 = aug.record(st, Fv, joint, blocks, 0, host=False, static=True)
    raw = row0.new_zeros((T, *row0.shape))
    oks = ok0.new_zeros((T, *ok0.shape))
    raw[0], oks[0] = row0, ok0
    # the same tensors every iteration (the graph reads and writes these addresses)
    for name in ("keep_res", "keep_obj", "keep_mu", "best_res", "stopped", "diverged"):
        setattr(st, name, getattr(st, name).clone())
    assert st.limit is not None
    fixed = {
        name: getattr(st, name)
        for name in ("keep_res", "keep_obj", "keep_mu", "best_res", "stopped", "diverged")
    }

    def iteration() -> None:
        """Mix from the last evaluation, then evaluate and record iteration ``counter``."""
        active = ~(st.stopped | st.diverged)
        v_next = aug.project_in_place(mixer.step(st.v, Fv, active))
        st.v_prev.copy_(st.v)
        torch.where(active[:, None], v_next, st.v, out=st.v)
        counter.add_(1)
        k = counter.view(1)
        joint, blocks = aug.evaluate(st.v, 1, Fv, alpha_x=schedule.index_select(0, k))
        row, ok = aug.record(st, Fv, joint, blocks, k, host=False, static=True)
        for name, buf in fixed.items():  # record() rebinds some fields: write them back
            if getattr(st, name) is not buf:
                buf.copy_(getattr(st, name))
                setattr(st, name, buf)
        raw.index_copy_(0, k, row.unsqueeze(0))
        oks.index_copy_(0, k, ok.unsqueeze(0))

    def all_stopped(k: int) -> bool:
        return (host or k % 8 == 7) and not bool((~(st.stopped | st.diverged)).any())

    iterations = 1
    graph = None
    # With a graph: warm-up, capture and replays all on one side stream (as torch.cuda.graphs
    # asks), ordered after iteration 0 and before whatever the caller does next.
    stream = torch.cuda.Stream(device) if capture else None
    if stream is not None:
        stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
        k = 0
        while k < T - 1 and not all_stopped(k):
            k += 1
            if graph is not None:
                graph.replay()
            elif stream is not None and k > WARMUP:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=stream):
                    iteration()  # recorded, not run
                graph.replay()
            else:
                iteration()
            iterations = k + 1
    if stream is not None:
        torch.cuda.current_stream(device).wait_stream(stream)
    return raw[:iterations], oks[:iterations]
