"""JIIO: joint inference and input optimisation in a DEQ, as one augmented fixed point.

Minimises ``loss(z*(x))`` over ``x`` (optionally on a feasible set) by iterating paper
eq. (11) over ``v = (z, mu, x)``::

    z+  = (1 - a_z)  z  + a_z  f(z, x)
    mu+ = (1 - a_mu) mu + a_mu (J_z^T mu + dl/dz)
    x+  = P(x - a_x J_x^T mu)              (P: projection onto the feasible set)

accelerated by Anderson (or Broyden). One iteration costs one evaluation of ``f`` and
one backward pass through it (``J_z^T mu``, ``J_x^T mu`` and ``dl/dz`` in a single
``autograd.grad``). After every Anderson mix x is projected again, so the returned x is
feasible. At the solution ``mu*`` is the adjoint of the DEQ, which the backward reuses
(paper eq. 19) when the outer loss is a multiple of the inner one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .augmented import TRACE_KEYS, AugmentedMap, LoopState, Projection, call_checked
from .config import JIIOConfig
from .implicit import attach_implicit_grad, dual_shortcut
from .mixers import AndersonMixer, make_mixer
from .solvers import forward_fill
from .static_iteration import check_graphable, static_loop

__all__ = ["JIIOResult", "jiio_solve", "l2_ball"]


@dataclass
class JIIOResult:
    """The solution of the augmented DEQ, per sample where it says so.

    ``z`` carries the implicit gradient to the parameters of ``f``; ``x`` and ``mu`` are
    detached. ``residual`` is the relative residual ``|F(v) - v| / |F(v)|`` of the augmented
    map at the returned iterate and ``objective`` its inner loss; ``mu_residual`` the relative
    residual of mu there, ``|J_z^T mu + dl/dz - mu| / |J_z^T mu + dl/dz|`` (where it is at
    most ``backward_tol`` the backward reuses mu, paper eq. 19). ``trace`` maps
    ``"z_residual"``, ``"mu_residual"``, ``"x_step"`` (absolute norms), ``"residual"``,
    ``"objective"`` to ``(iterations, B)`` tensors. ``backward`` is filled once a gradient
    has flowed through ``z`` (see :func:`jiio_core.attach_implicit_grad`): ``mode`` ("mu":
    every sample reused mu; "ift" / "jfb": none did; "mixed": some did, the others took
    ``config.backward``), ``mu_samples`` / ``mu_frac`` (how many reused mu), ``residual``
    (the largest relative residual of the backward's solution over the samples it solved or
    reused mu for), ``iterations`` (of the backward solve, 0 without one) and solve stats.
    """

    x: Tensor
    z: Tensor
    mu: Tensor
    iterations: int
    converged: Tensor
    diverged: Tensor
    objective: Tensor
    residual: Tensor
    mu_residual: Tensor
    trace: dict[str, Tensor]
    backward: dict[str, Any] = field(default_factory=dict)


def l2_ball(center: Tensor, eps: float | Tensor) -> Projection:
    """Projection onto ``{x : |x - center|_2 <= eps}``, per sample (dim 0 is the batch).

    Example:
        >>> import torch
        >>> proj = l2_ball(torch.zeros(2, 3), 1.0)
        >>> proj(torch.tensor([[3.0, 4.0, 0.0], [0.1, 0.0, 0.0]])).tolist()
        [[0.6000000238418579, 0.800000011920929, 0.0], [0.10000000149011612, 0.0, 0.0]]
    """
    center = center.detach()
    eps_t = torch.as_tensor(eps, dtype=center.dtype, device=center.device).reshape(-1)
    if bool((eps_t < 0).any()):
        raise ValueError(f"eps must be >= 0, got {eps}")
    view = (-1,) + (1,) * (center.dim() - 1)

    def project(x: Tensor) -> Tensor:
        d = x - center
        n = d.reshape(d.shape[0], -1).norm(dim=1)
        scale = torch.clamp(eps_t / n.clamp_min(torch.finfo(d.dtype).tiny), max=1.0)
        return center + d * scale.view(view)

    return project


def _start(
    f: Callable[[Tensor, Tensor], Tensor], x0: Tensor, z0: Tensor | None, init: str
) -> tuple[Tensor, bool]:
    """The initial z and whether it was guessed shaped like ``x0`` (no ``z0``, no ``f.init_z``)."""
    if z0 is not None:
        return z0, False
    init_z = getattr(f, "init_z", None)
    guessed = not callable(init_z)
    z = torch.zeros_like(x0) if guessed else init_z(x0)
    if init == "cell_step":
        # One cell step: normalisation layers (GroupNorm) are near-singular at z = 0, and
        # their huge first input gradients would throw x far off.
        with torch.no_grad():
            z = call_checked(f, z, x0, guessed)
    return z, guessed


def jiio_solve(
    f: Callable[[Tensor, Tensor], Tensor],
    loss: Callable[[Tensor], Tensor],
    x0: Tensor,
    z0: Tensor | None = None,
    config: JIIOConfig | None = None,
    project: Projection | None = None,
    *,
    cuda_graph: bool = False,
) -> JIIOResult:
    """Jointly find ``z* = f(z*, x*)`` and ``x* = argmin_x loss(z*(x))`` (on ``project``'s set).

    ``f(z, x)``: the DEQ cell, batched on dim 0. ``loss(z)``: per-sample objective ``(B,)``
    to minimise (adversarial: pass the negated task loss). ``z0`` defaults to
    ``z_init = f.init_z(x0)`` when ``f`` has it, else zeros shaped like ``x0`` (a cell whose
    state has another shape needs ``z0`` or ``init_z``), followed by one cell step
    ``f(z_init, x0)`` when ``config.init == "cell_step"`` (not counted in ``iterations``).
    The tensors passed to ``f`` and ``loss`` are views of buffers the solver reuses: clone
    them to keep them.

    ``cuda_graph=True`` (CUDA tensors, solver "anderson" or "fixed_point"): iteration 0 and
    two more run as usual, then one iteration (``f``, its VJP, the Anderson step on a
    fixed-size system, the bookkeeping; the alpha_x schedule read on the device) is
    captured as a CUDA graph and replayed for the others; ``f``, ``loss`` and ``project``
    must be capturable (no host synchronisation, the same tensors every call). See
    :mod:`jiio_core.static_iteration`. What is tested: the same static iteration run without a graph
    on the CPU in float64 gives the eager path's iterates, trace, kept iterate and
    iteration count up to rounding (tests/jiio_core/test_static_iteration.py), and
    ``cuda_graph=True`` on CPU tensors raises ``ValueError``. The capture and replay on a
    GPU are untested: tests/jiio_core/test_cuda.py compares them with the eager path (and
    checks that "broyden" is refused) but is skipped without a CUDA device, and no GPU
    has run it, so equality with the eager path on a GPU is expected, not verified.

    Example (z*(x) = x + 1, so x* = 1 minimises (z* - 2)^2; found in one joint solve):
        >>> import torch
        >>> f = lambda z, x: 0.5 * z + 0.5 * (x + 1.0)      # z*(x) = x + 1
        >>> loss = lambda z: ((z - 2.0) ** 2).sum(1)          # minimised at x* = 1
        >>> res = jiio_solve(f, loss, torch.zeros(4, 1, dtype=torch.float64),
        ...                  config=JIIOConfig(alpha_x=0.2, tol=1e-10, max_iter=200))
        >>> round(float(res.x[0, 0]), 6), bool(res.converged.all())
        (1.0, True)
    """
    cfg = config if config is not None else JIIOConfig()
    if x0.dim() < 1 or x0.shape[0] == 0:
        raise ValueError(f"x0 must be batched on dim 0 with at least one sample, got shape {tuple(x0.shape)}")
    if cuda_graph:
        check_graphable(cfg, x0.device)
    B = x0.shape[0]
    x0 = x0.detach()
    if project is not None:
        x0 = project(x0)
    if z0 is not None and (z0.dim() < 1 or z0.shape[0] != B):
        raise ValueError(f"z0 has batch size {z0.shape[0] if z0.dim() else None} but x0 has {B}")
    z0, guessed = _start(f, x0, z0, cfg.init)
    z0 = z0.detach().to(dtype=x0.dtype)
    aug = AugmentedMap(f, loss, cfg, project, z0.shape, x0.shape, guessed, x0.dtype, x0.device)
    with torch.no_grad():
        st = aug.start(z0, x0)
        if cuda_graph:
            raw_t, ok_t = static_loop(aug, st, capture=True)
        else:
            raw_t, ok_t = _eager_loop(aug, st)
        keep_v = st.v if cfg.select == "last" else st.keep_v
        trace = dict(zip(TRACE_KEYS, forward_fill(raw_t, ok_t).unbind(1), strict=True))
    return _finish(aug, st, keep_v, trace, raw_t.shape[0])


def _eager_loop(aug: AugmentedMap, st: LoopState) -> tuple[Tensor, Tensor]:
    """The iteration, step by step; returns the raw trace ``(T, len(TRACE_KEYS), B)`` and ok ``(T, B)``."""
    cfg = aug.cfg
    m = cfg.anderson_m if cfg.solver == "anderson" else cfg.max_iter
    beta = cfg.anderson_beta if cfg.solver == "anderson" else 1.0  # damped: alpha_z / alpha_mu's job
    # fixed_point: the step returns F(v) itself (no copy), so F(v) cycles through 3 buffers
    mixer = make_mixer(cfg.solver, m=m, lam=cfg.anderson_lam, beta=beta, kind=cfg.anderson_type, copy=False)
    # Buffers reused across iterations (fresh (B, D) tensors cost page faults on a CPU):
    # F(v) goes into Anderson's history slot when it can, else into one of 3 buffers used in
    # turn (iteration k's v and v_prev may be the two before); the kept iterate has its own.
    ring: list[Tensor] = []
    raw: list[Tensor] = []  # per iteration, (len(TRACE_KEYS), B); forward-filled at the end
    oks: list[Tensor] = []
    # On CPU a host-side check is free and lets us skip work; on a GPU it stalls the
    # launch queue, so there we mask unconditionally and look for "all done" rarely.
    host = st.v.device.type == "cpu"
    for k in range(cfg.max_iter):
        out = mixer.image_out(st.v) if isinstance(mixer, AndersonMixer) else None
        if out is None:
            ring = ring or [torch.empty_like(st.v) for _ in range(3)]
            out = ring[k % 3]
        joint, blocks = aug.evaluate(st.v, k, out)
        row, ok = aug.record(st, out, joint, blocks, k, host)
        raw.append(row)
        oks.append(ok)
        if k == cfg.max_iter - 1:
            break
        active = ~(st.stopped | st.diverged)
        all_active = host and bool(active.all())
        if (host or k % 8 == 7) and not (all_active or bool(active.any())):
            break
        v_next = aug.project_in_place(mixer.step(st.v, out, active))
        st.v_prev = st.v
        st.v = v_next if all_active else torch.where(active[:, None], v_next, st.v)
    return torch.stack(raw), torch.stack(oks)


def _finish(
    aug: AugmentedMap, st: LoopState, keep_v: Tensor, trace: dict[str, Tensor], iterations: int
) -> JIIOResult:
    cfg, f, loss = aug.cfg, aug.f, aug.loss
    diverged, keep_res, keep_obj, keep_mu = st.diverged, st.keep_res, st.keep_obj, st.keep_mu
    unpack = aug.unpack
    z_star, mu_star, x_star = unpack(keep_v)
    z_star, mu_star, x_star = z_star.clone(), mu_star.clone(), x_star.clone()
    stats: dict[str, Any] = {}
    z_out = attach_implicit_grad(
        f,
        z_star,
        x_star,
        backward=cfg.backward,
        solver=cfg.solver,
        max_iter=cfg.backward_max_iter,
        tol=cfg.backward_tol,
        anderson_m=cfg.anderson_m,
        anderson_lam=cfg.anderson_lam,
        shortcut=dual_shortcut(loss, z_star, mu_star, keep_mu, cfg.backward_tol),
        stats=stats,
    )
    return JIIOResult(
        x=x_star,
        z=z_out,
        mu=mu_star,
        iterations=iterations,
        converged=(keep_res <= cfg.tol) & ~diverged,
        diverged=diverged,
        objective=keep_obj,
        residual=keep_res,
        mu_residual=keep_mu,
        trace=trace,
        backward=stats,
    )
