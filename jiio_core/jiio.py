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

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ._graph import check_graphable, static_loop
from ._mixers import AndersonMixer, make_mixer
from .config import JIIOConfig
from .implicit import attach_implicit_grad, dual_shortcut
from .solvers import forward_fill

__all__ = ["JIIOResult", "jiio_solve", "l2_ball"]

Projection = Callable[[Tensor], Tensor]
TRACE_KEYS = ("z_residual", "mu_residual", "x_step", "residual", "objective")


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


def _norm(t: Tensor) -> Tensor:
    return t.norm(dim=1)


_STEP_EPS = 1e-8  # the normalised x step divides by |J_x^T mu| + 1e-8, as the paper code
_SELECT_EPS = 1e-5  # select="paper": rel = |F - X| / (1e-5 + |F|), as the paper code
_SELECT_WARMUP = 10  # select="paper": iterates k < 10 are always kept


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
            z = _call_checked(f, z, x0, guessed)
    return z, guessed


def _call_checked(f: Callable[[Tensor, Tensor], Tensor], z: Tensor, x: Tensor, guessed: bool) -> Tensor:
    """``f(z, x)``, with a ValueError naming ``z0`` when z's shape is wrong for ``f``."""
    try:
        out = f(z, x)
    except RuntimeError as err:
        if not guessed:
            raise
        raise ValueError(
            f"z0 is needed: f has no init_z, so z0 was guessed as zeros shaped like x0 "
            f"{tuple(x.shape)}, and f(z0, x0) failed ({err}). Pass z0= a tensor shaped like "
            f"f's state z (e.g. torch.zeros(B, *state_shape)) or give f an init_z(x) method."
        ) from err
    if out.shape != z.shape:
        what = "z0 guessed as zeros shaped like x0 (f has no init_z)" if guessed else "z0"
        raise ValueError(
            f"z0 has the wrong shape: f(z0, x0) returned shape {tuple(out.shape)} for {what} of "
            f"shape {tuple(z.shape)}. Pass z0= a tensor shaped like f's state z (here "
            f"{tuple(out.shape)}) or give f an init_z(x) method."
        )
    return out


@dataclass
class _Loop:
    """The state of the augmented iteration between two evaluations (all ``(B, ...)``)."""

    v: Tensor
    v_prev: Tensor
    keep_v: Tensor
    keep_res: Tensor
    keep_obj: Tensor
    keep_mu: Tensor
    best_res: Tensor
    stopped: Tensor
    diverged: Tensor
    keep_buf: Tensor  # the kept iterate's own buffer (keep_v may refer to v instead: _keep)
    limit: Tensor | None = None


class _Augmented:
    """The map F of paper eq. (11) on the flat state ``v = (z, mu, x)`` ``(B, D)`` and the
    per-iteration bookkeeping shared by the eager loop and the static (CUDA graph) one."""

    def __init__(
        self,
        f: Callable[[Tensor, Tensor], Tensor],
        loss: Callable[[Tensor], Tensor],
        cfg: JIIOConfig,
        project: Projection | None,
        z_shape: torch.Size,
        x_shape: torch.Size,
        guessed: bool,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.f, self.loss, self.cfg, self.project, self.guessed = f, loss, cfg, project, guessed
        self.z_shape, self.x_shape = z_shape, x_shape
        self.B, self.nz, self.nx = x_shape[0], math.prod(z_shape[1:]), math.prod(x_shape[1:])
        self.tiny = torch.finfo(dtype).tiny
        self.damp = torch.tensor([cfg.alpha_z, cfg.alpha_mu, 1.0], dtype=dtype, device=device)[:, None]

    def unpack(self, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        nz = self.nz
        return (
            v[:, :nz].view(self.z_shape),
            v[:, nz : 2 * nz].view(self.z_shape),
            v[:, 2 * nz :].view(self.x_shape),
        )

    def evaluate(
        self, v: Tensor, k: int, Fv: Tensor, alpha_x: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """F(v) written into ``Fv`` (a buffer distinct from v); returns ``|F(v) - v|`` and the
        block norms and loss. ``alpha_x``: the x step as a device scalar (else from k)."""
        cfg, B, nz, nx, f = self.cfg, self.B, self.nz, self.nx, self.f
        z, mu, x = self.unpack(v)
        with torch.enable_grad():
            z_ = z.detach().requires_grad_(True)
            x_ = x.detach().requires_grad_(True)
            fz = _call_checked(f, z_, x_, self.guessed) if k == 0 else f(z_, x_)
            obj = self.loss(z_)
            gz, gx = torch.autograd.grad((fz * mu).sum() + obj.sum(), (z_, x_), allow_unused=True)
        fz, obj = fz.detach().reshape(B, -1), obj.detach().reshape(B)
        gz = torch.zeros_like(fz) if gz is None else gz.reshape(B, -1)
        gx = torch.zeros(B, nx, dtype=v.dtype, device=v.device) if gx is None else gx.reshape(B, -1)
        if cfg.x_step == "normalized":
            gx = gx / (_norm(gx)[:, None] + _STEP_EPS)
        z_flat, mu_flat, x_flat = v[:, :nz], v[:, nz : 2 * nz], v[:, 2 * nz :]
        # written block by block into Fv, the differences first (no temporaries, no concatenation)
        Fz, Fmu, Fx = Fv[:, :nz], Fv[:, nz : 2 * nz], Fv[:, 2 * nz :]
        if alpha_x is None:
            torch.add(x_flat, gx, alpha=-cfg.alpha_x_at(k), out=Fx)
        else:
            torch.addcmul(x_flat, gx, alpha_x, value=-1.0, out=Fx)
        if self.project is not None:
            Fx.copy_(self.project(Fx.view(self.x_shape)).reshape(B, -1))
        dz = torch.sub(fz, z_flat, out=Fz)  # f(z, x) - z
        dmu = torch.sub(gz, mu_flat, out=Fmu)  # (J_z^T mu + dl/dz) - mu
        blocks = dict(z_residual=_norm(dz), mu_residual=_norm(dmu), x_step=_norm(Fx - x_flat), objective=obj)
        blocks["mu_rel"] = blocks["mu_residual"] / (_norm(gz) + self.tiny)
        torch.add(z_flat, dz, alpha=cfg.alpha_z, out=Fz)
        torch.add(mu_flat, dmu, alpha=cfg.alpha_mu, out=Fmu)
        # |F(v) - v| from the block norms of (a_z dz, a_mu dmu, dx): no pass over the state
        stacked = torch.stack([blocks["z_residual"], blocks["mu_residual"], blocks["x_step"]])
        return (stacked * self.damp).norm(dim=0), blocks

    def project_in_place(self, v: Tensor) -> Tensor:
        if self.project is not None:
            nz2 = 2 * self.nz
            v[:, nz2:] = self.project(v[:, nz2:].reshape(self.x_shape)).reshape(self.B, -1)
        return v

    def start(self, z0: Tensor, x0: Tensor) -> _Loop:
        B = self.B
        v = torch.cat(
            [z0.reshape(B, -1), torch.zeros(B, self.nz, dtype=x0.dtype, device=x0.device), x0.reshape(B, -1)],
            dim=1,
        )
        inf = torch.full((B,), float("inf"), dtype=v.dtype, device=v.device)
        stopped = torch.zeros(B, dtype=torch.bool, device=v.device)
        keep_v = v if self.cfg.select == "last" else v.clone()
        return _Loop(
            v=v,
            v_prev=v,
            keep_v=keep_v,
            keep_res=inf.clone(),
            keep_obj=inf.clone(),
            keep_mu=inf.clone(),
            best_res=inf.clone(),
            stopped=stopped,
            diverged=torch.zeros_like(stopped),
            keep_buf=keep_v,
        )

    def record(
        self,
        st: _Loop,
        Fv: Tensor,
        joint: Tensor,
        blocks: dict[str, Tensor],
        k: int | Tensor,
        host: bool,
        static: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """Divergence check, rollback, kept iterate and stopping after evaluating ``st.v``;
        returns the trace row ``(len(TRACE_KEYS), B)`` and which samples were ok. ``host``:
        host-side checks allowed (they skip work); otherwise every mask is applied.
        ``static``: ``st.v`` is rolled back in place (its buffer stays the same)."""
        cfg, tiny = self.cfg, self.tiny
        size = _norm(Fv)
        rel, obj = joint / (size + tiny), blocks["objective"]
        blocks["residual"] = rel
        if st.limit is None:
            st.limit = cfg.divergence_factor * torch.maximum(joint, size).nan_to_num(0.0) + tiny
        active = ~(st.stopped | st.diverged)
        # A non-finite entry makes its norm non-finite, so the norms are all we check
        # (obj * 0 is NaN exactly when obj is not finite).
        bad = active & ~(torch.maximum(joint, size) + obj * 0 <= st.limit)
        if not host or bool(bad.any()):
            st.diverged |= bad
            st.v = torch.where(bad[:, None], st.v_prev, st.v, out=st.v if static else None)
        ok = active & ~bad
        if cfg.select == "last":  # the final v is each sample's last good iterate
            take = ok
        else:
            if cfg.select == "residual":
                take = ok & (rel < st.keep_res)
            elif cfg.select == "objective":
                st.best_res = torch.where(ok, torch.minimum(st.best_res, rel), st.best_res)
                near = rel <= cfg.select_slack * st.best_res
                take = ok & near & ((obj < st.keep_obj) | (st.keep_res > cfg.select_slack * st.best_res))
            else:  # "paper"
                sel = joint / (_SELECT_EPS + size)
                reset = ok & ((sel < st.best_res) | (k < _SELECT_WARMUP))
                take = reset | (ok & (obj < st.keep_obj) & (sel < cfg.select_slack * st.best_res))
                st.best_res = torch.where(reset, sel, st.best_res)
            self._keep(st, take, host)
        st.keep_res = torch.where(take, rel, st.keep_res)
        st.keep_obj = torch.where(take, obj, st.keep_obj)
        st.keep_mu = torch.where(take, blocks["mu_rel"], st.keep_mu)
        if cfg.early_stop:
            st.stopped |= ok & (rel <= cfg.tol)
        return torch.stack([blocks[name] for name in TRACE_KEYS]), ok

    @staticmethod
    def _keep(st: _Loop, take: Tensor, host: bool) -> None:
        """``keep_v = where(take, v, keep_v)``. On the host, when every sample takes v,
        ``keep_v`` just refers to ``v`` (no copy); that reference is resolved (re-pointed,
        or copied into ``keep_buf``) at the next iteration, before the solver's step can
        overwrite the buffer behind it (the mixers' buffers live at least two steps)."""
        if not host:
            torch.where(take[:, None], st.v, st.keep_v, out=st.keep_v)
            return
        aliased = st.keep_v is not st.keep_buf
        if bool(take.all()):
            st.keep_v = st.v
        elif bool(take.any()):
            torch.where(take[:, None], st.v, st.keep_v, out=st.keep_buf)
            st.keep_v = st.keep_buf
        elif aliased:
            st.keep_buf.copy_(st.keep_v)
            st.keep_v = st.keep_buf


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
    :mod:`jiio_core._graph`. What is tested: the same static iteration run without a graph
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
    aug = _Augmented(f, loss, cfg, project, z0.shape, x0.shape, guessed, x0.dtype, x0.device)
    with torch.no_grad():
        st = aug.start(z0, x0)
        if cuda_graph:
            raw_t, ok_t = static_loop(aug, st, capture=True)
        else:
            raw_t, ok_t = _eager_loop(aug, st)
        keep_v = st.v if cfg.select == "last" else st.keep_v
        trace = dict(zip(TRACE_KEYS, forward_fill(raw_t, ok_t).unbind(1), strict=True))
    return _finish(aug, st, keep_v, trace, raw_t.shape[0])


def _eager_loop(aug: _Augmented, st: _Loop) -> tuple[Tensor, Tensor]:
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
    aug: _Augmented, st: _Loop, keep_v: Tensor, trace: dict[str, Tensor], iterations: int
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
