"""One warm gradient evaluation on a DEQ: the step of the strong baselines
(:mod:`jiio_core.warm_baselines`).

- forward: ``z* = f(z*, x)`` solved from a given ``z0`` (the previous step's ``z*`` when
  warm), with an explicit solver, tolerance and iteration cap;
- backward: ``u = J_z^T u + dl/dz`` (``J_z = df/dz`` at ``z*``) run for at most
  ``backward_iters = k`` iterations (``k`` vector-Jacobian products) from a given ``u0``
  (the previous step's ``u`` when warm). ``k = 0`` is Jacobian-free backprop (JFB:
  ``u = dl/dz``, biased); a large ``k`` (with ``backward_tol``) gives the exact implicit
  gradient;
- the input injection of a cell with a separable one (:class:`~jiio_core.MDEQCell`:
  ``f(z, x) = step(z, inject(x))``) is computed once per evaluation, not once per
  iteration. A cell without ``inject``/``step`` is called as ``f(z, x)`` at every iteration.

The input's gradient is ``dl/dx = u^T df/dx`` at ``z*``. Parameters' ``.grad`` are never
touched. The solve settings are one frozen :class:`WarmSettings`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .config import SOLVERS
from .mixers import make_mixer
from .solvers import SolverResult, solve

__all__ = [
    "WarmGrad",
    "WarmSettings",
    "cell_maps",
    "finite_at_least",
    "initial_state",
    "int_at_least",
    "require",
    "solve_forward",
    "warm_input_grad",
]

Cell = Callable[[Tensor, Tensor], Tensor]


def require(ok: bool, msg: str) -> None:
    """Raise ``ValueError(msg)`` unless ``ok``: how the warm settings and attacks validate."""
    if not ok:
        raise ValueError(msg)


def finite_at_least(v: object, low: float, strict: bool) -> bool:
    """Whether ``v`` is a finite number (not a bool) ``> low`` (``strict``) or ``>= low``."""
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v < math.inf
    return ok and (v > low if strict else v >= low)  # type: ignore[operator]


def int_at_least(v: object, low: int) -> bool:
    """Whether ``v`` is an int (not a bool) ``>= low``."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


@dataclass(frozen=True)
class WarmSettings:
    """The solves of one warm gradient evaluation (checked on construction, ``ValueError``).

    Forward: ``solver`` (Anderson memory ``anderson_m``, ridge ``anderson_lam``) to the
    relative residual ``forward_tol`` or ``forward_max_iter`` cell evaluations. Backward:
    ``backward_iters`` iterations of ``backward_solver`` (0: JFB); a sample stops early once
    its residual is ``<= backward_tol``.

    Example:
        >>> WarmSettings(backward_iters=0).replace(backward_iters=4).backward_iters
        4
    """

    solver: str = "anderson"
    anderson_m: int = 5
    anderson_lam: float = 1e-5
    forward_tol: float = 1e-3
    forward_max_iter: int = 18
    backward_iters: int = 4
    backward_solver: str = "anderson"
    backward_tol: float = 0.0

    def __post_init__(self) -> None:
        for name in ("solver", "backward_solver"):
            s = getattr(self, name)
            require(s in SOLVERS, f"{name} must be one of {', '.join(SOLVERS)}; got {s!r}")
        m, fmax, k = self.anderson_m, self.forward_max_iter, self.backward_iters
        require(int_at_least(m, 1), f"anderson_m must be an int >= 1, got {m!r}")
        require(int_at_least(fmax, 1), f"forward_max_iter must be an int >= 1, got {fmax!r}")
        require(int_at_least(k, 0), f"backward_iters must be an int >= 0 (0: JFB), got {k!r}")
        for name in ("anderson_lam", "forward_tol", "backward_tol"):
            v = getattr(self, name)
            require(finite_at_least(v, 0, strict=False), f"{name} must be a finite number >= 0, got {v!r}")

    def replace(self, **changes: object) -> WarmSettings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


@dataclass
class WarmGrad:
    """One warm gradient evaluation: ``grad`` is ``d sum(loss(z*(x))) / dx``.

    ``loss`` per sample at ``z``; ``u`` the backward solution (``dl/dz`` for ``k = 0``);
    ``forward_iters`` cell evaluations of the forward solve, ``forward_residual`` its
    relative residual per sample; ``backward_iters`` VJPs run, ``backward_residual`` the
    relative residual ``|J^T u + g - u| / |J^T u + g|`` per sample at the last VJP (of the
    iterate before the last update; NaN for ``k = 0``).
    """

    grad: Tensor
    loss: Tensor
    z: Tensor
    u: Tensor
    forward_iters: int
    forward_residual: Tensor
    backward_iters: int
    backward_residual: Tensor


def cell_maps(cell: Cell, x: Tensor) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    """(``z -> f(z, x)`` on a detached ``x`` for the forward solve, the same wired to ``x``)."""
    inject, step = getattr(cell, "inject", None), getattr(cell, "step", None)
    if callable(inject) and callable(step):
        inj = inject(x)  # once per step; the forward solve uses a detached copy
        inj_d = [t.detach() for t in inj]
        return (lambda z: step(z, inj_d)), (lambda z: step(z, inj))
    x_d = x.detach()
    return (lambda z: cell(z, x_d)), (lambda z: cell(z, x))


def initial_state(cell: Cell, x: Tensor) -> Tensor:
    """The cold start of the forward solve: ``cell.init_z(x)`` when the cell has it, else zeros."""
    init = getattr(cell, "init_z", None)
    return init(x).detach() if callable(init) else torch.zeros_like(x)


def solve_forward(f: Callable[[Tensor], Tensor], z0: Tensor, o: WarmSettings) -> SolverResult:
    """``z* = f(z*)`` from ``z0`` with the settings' solver, memory, tolerance and budget."""
    m = o.anderson_m if o.solver == "anderson" else o.forward_max_iter
    mixer = make_mixer(o.solver, m=m, lam=o.anderson_lam)
    return solve(f, z0.detach(), mixer, max_iter=o.forward_max_iter, tol=o.forward_tol)


def _backward(
    fz: Tensor, z: Tensor, g: Tensor, u0: Tensor | None, o: WarmSettings
) -> tuple[Tensor, int, Tensor]:
    """``backward_iters`` iterations on ``u = J^T u + g`` from ``u0`` (or ``g``): ``(u, VJPs, rel)``."""
    k, shape, B = o.backward_iters, g.shape, g.shape[0]
    g_flat = g.reshape(B, -1)
    rel = torch.full((B,), math.nan, dtype=g.dtype, device=g.device)
    if k == 0:
        return g, 0, rel
    u = (g_flat if u0 is None else u0.detach().reshape(B, -1)).clone()
    m = o.anderson_m if o.backward_solver == "anderson" else k
    mixer = make_mixer(o.backward_solver, m=m, lam=o.anderson_lam)
    active = torch.ones(B, dtype=torch.bool, device=g.device)
    tiny, done = torch.finfo(g.dtype).tiny, 0
    for _ in range(k):
        (jt_u,) = torch.autograd.grad(fz, z, u.view(shape), retain_graph=True)
        gu = jt_u.reshape(B, -1) + g_flat
        rel = torch.where(active, (gu - u).norm(dim=1) / (gu.norm(dim=1) + tiny), rel)
        done += 1
        active = active & (rel > o.backward_tol)
        if not bool(active.any()):
            break
        u = torch.where(active[:, None], mixer.step(u, gu, active), u)
    u = torch.where(torch.isfinite(u).all(dim=1, keepdim=True), u, g_flat)  # not finite: JFB
    return u.view(shape).clone(), done, rel


def warm_input_grad(
    cell: Cell,
    loss: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    z0: Tensor | None = None,
    u0: Tensor | None = None,
    solver: str = "anderson",
    anderson_m: int = 5,
    anderson_lam: float = 1e-5,
    forward_tol: float = 1e-3,
    forward_max_iter: int = 18,
    backward_iters: int = 4,
    backward_solver: str = "anderson",
    backward_tol: float = 0.0,
    settings: WarmSettings | None = None,
) -> WarmGrad:
    """Gradient of ``sum(loss(z*(x)))`` w.r.t. ``x``: forward from ``z0``, ``k``-step backward from ``u0``.

    The forward: ``solver`` (Anderson memory ``anderson_m``, ridge ``anderson_lam``) to the
    relative residual ``forward_tol`` or ``forward_max_iter`` cell evaluations, from ``z0``
    (default ``cell.init_z(x)``, else zeros like ``x``). The backward: ``backward_iters``
    iterations of ``backward_solver`` from ``u0`` (default ``dl/dz``); a sample stops early
    once its residual is ``<= backward_tol``; a sample whose ``u`` is not finite falls
    back to JFB. ``settings`` (a :class:`WarmSettings`), when given, replaces the solve
    keywords. The step that :func:`~jiio_core.pgd_attack_warm` and
    :func:`~jiio_core.adam_latent_warm` take.

    Example:
        >>> import torch
        >>> f = lambda z, x: 0.5 * z + x                 # z* = 2 x, J_z = 0.5 I
        >>> x = torch.ones(2, 3, dtype=torch.float64)
        >>> wg = warm_input_grad(f, lambda z: z.sum(1), x, forward_tol=1e-12, forward_max_iter=50,
        ...                      backward_iters=60, backward_tol=1e-12)
        >>> [round(float(v), 6) for v in wg.grad[0]]      # dz*/dx = 2
        [2.0, 2.0, 2.0]
        >>> float(warm_input_grad(f, lambda z: z.sum(1), x, backward_iters=0).grad[0, 0])  # JFB
        1.0
    """
    o = settings or WarmSettings(
        solver,
        anderson_m,
        anderson_lam,
        forward_tol,
        forward_max_iter,
        backward_iters,
        backward_solver,
        backward_tol,
    )
    x_req = x.detach().requires_grad_(True)
    with torch.enable_grad():
        f_solve, f_wired = cell_maps(cell, x_req)
        res = solve_forward(f_solve, initial_state(cell, x) if z0 is None else z0, o)
        z_star = res.x.detach().clone()
        z_l = z_star.clone().requires_grad_(True)
        loss_v = loss(z_l)
        (g,) = torch.autograd.grad(loss_v.sum(), z_l)
        z_f = z_star.clone().requires_grad_(True)
        fz = f_wired(z_f)
        u, done, rel = _backward(fz, z_f, g, u0, o)
        (grad,) = torch.autograd.grad(fz, x_req, u, allow_unused=True)
    return WarmGrad(
        grad=torch.zeros_like(x_req) if grad is None else grad.detach(),
        loss=loss_v.detach(),
        z=z_star,
        u=u.detach(),
        forward_iters=res.iterations,
        forward_residual=res.rel_residual,
        backward_iters=done,
        backward_residual=rel,
    )
