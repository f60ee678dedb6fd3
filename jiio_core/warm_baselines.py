"""Strong baselines: PGD and Adam on a DEQ with warm-started forward and backward solves.

The paper's (cold) baseline (:func:`~jiio_core.pgd_attack`, :func:`~jiio_core.adam_latent`)
runs, at every step, a full forward fixed-point solve from ``z = 0`` and a full implicit
backward solve from ``u = dl/dz``. Between two steps the input moves little, so a DEQ
engineer reuses both solutions:

- forward: ``z* = f(z*, x)`` solved from the previous step's ``z*`` (``warm_forward``),
  with an explicit solver, tolerance and iteration cap;
- backward: ``u = J_z^T u + dl/dz`` (``J_z = df/dz`` at ``z*``) run for exactly
  ``backward_iters = k`` iterations (``k`` vector-Jacobian products) from the previous
  step's ``u`` (``warm_backward``). ``k = 0`` is Jacobian-free backprop (JFB: ``u = dl/dz``,
  biased); a large ``k`` (with ``backward_tol``) gives the exact implicit gradient;
- the input injection of a cell with a separable one (:class:`~jiio_core.MDEQCell`:
  ``f(z, x) = step(z, inject(x))``) is computed once per step, not once per iteration.
  A cell without ``inject``/``step`` is called as ``f(z, x)`` at every iteration.

The input's gradient is ``dl/dx = u^T df/dx`` at ``z*``. Parameters' ``.grad`` are never
touched. With both warm starts off and an exact backward, the iterates equal the cold
baseline's (tested).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ._mixers import make_mixer
from .config import SOLVERS
from .solvers import SolverResult, solve

__all__ = ["WarmGrad", "WarmStats", "adam_latent_warm", "pgd_attack_warm", "warm_input_grad"]

Cell = Callable[[Tensor, Tensor], Tensor]
StepSize = float | Sequence[float] | Callable[[int], float]


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


@dataclass
class WarmStats:
    """Per step (as :class:`~jiio_core.AttackStats` / ``LatentStats``, plus the solves' costs).

    ``step_loss``: mean loss at the step's input; ``forward_iters`` / ``backward_iters``:
    cell evaluations / VJPs of the step; ``forward_residual`` / ``backward_residual``: the
    largest relative residual over the batch; ``step_sizes``: step size (PGD) or ``lr``
    (Adam) used; ``iterates``: the input after each step when ``record_iterates``.
    """

    step_loss: list[float]
    final_loss: Tensor
    steps: int
    forward_iters: list[int] = field(default_factory=list)
    backward_iters: list[int] = field(default_factory=list)
    forward_residual: list[float] = field(default_factory=list)
    backward_residual: list[float] = field(default_factory=list)
    step_sizes: list[float] = field(default_factory=list)
    iterates: list[Tensor] = field(default_factory=list)


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ValueError(msg)


def _num(v: object, low: float, strict: bool) -> bool:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v < math.inf
    return ok and (v > low if strict else v >= low)  # type: ignore[operator]


def _int(v: object, low: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _opts(
    solver: str,
    anderson_m: int,
    anderson_lam: float,
    forward_tol: float,
    forward_max_iter: int,
    backward_iters: int,
    backward_solver: str,
    backward_tol: float,
) -> dict[str, Any]:
    """Check the solve settings; return them as keyword arguments of :func:`warm_input_grad`."""
    for name, s in (("solver", solver), ("backward_solver", backward_solver)):
        _check(s in SOLVERS, f"{name} must be one of {', '.join(SOLVERS)}; got {s!r}")
    _check(_int(anderson_m, 1), f"anderson_m must be an int >= 1, got {anderson_m!r}")
    _check(_int(forward_max_iter, 1), f"forward_max_iter must be an int >= 1, got {forward_max_iter!r}")
    _check(_int(backward_iters, 0), f"backward_iters must be an int >= 0 (0: JFB), got {backward_iters!r}")
    for name, v in (
        ("anderson_lam", anderson_lam),
        ("forward_tol", forward_tol),
        ("backward_tol", backward_tol),
    ):
        _check(_num(v, 0, strict=False), f"{name} must be a finite number >= 0, got {v!r}")
    return {
        "solver": solver,
        "anderson_m": anderson_m,
        "anderson_lam": anderson_lam,
        "forward_tol": forward_tol,
        "forward_max_iter": forward_max_iter,
        "backward_iters": backward_iters,
        "backward_solver": backward_solver,
        "backward_tol": backward_tol,
    }


def _maps(cell: Cell, x: Tensor) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    """(``z -> f(z, x)`` on a detached ``x`` for the forward solve, the same wired to ``x``)."""
    inject, step = getattr(cell, "inject", None), getattr(cell, "step", None)
    if callable(inject) and callable(step):
        inj = inject(x)  # once per step; the forward solve uses a detached copy
        inj_d = [t.detach() for t in inj]
        return (lambda z: step(z, inj_d)), (lambda z: step(z, inj))
    x_d = x.detach()
    return (lambda z: cell(z, x_d)), (lambda z: cell(z, x))


def _init_z(cell: Cell, x: Tensor) -> Tensor:
    init = getattr(cell, "init_z", None)
    return init(x).detach() if callable(init) else torch.zeros_like(x)


def _forward(f: Callable[[Tensor], Tensor], z0: Tensor, o: dict[str, Any]) -> SolverResult:
    m = o["anderson_m"] if o["solver"] == "anderson" else o["forward_max_iter"]
    mixer = make_mixer(o["solver"], m=m, lam=o["anderson_lam"])
    return solve(f, z0.detach(), mixer, max_iter=o["forward_max_iter"], tol=o["forward_tol"])


def _backward(
    fz: Tensor, z: Tensor, g: Tensor, u0: Tensor | None, o: dict[str, Any]
) -> tuple[Tensor, int, Tensor]:
    """``backward_iters`` iterations on ``u = J^T u + g`` from ``u0`` (or ``g``): ``(u, VJPs, rel)``."""
    k, shape, B = o["backward_iters"], g.shape, g.shape[0]
    g_flat = g.reshape(B, -1)
    rel = torch.full((B,), math.nan, dtype=g.dtype, device=g.device)
    if k == 0:
        return g, 0, rel
    u = (g_flat if u0 is None else u0.detach().reshape(B, -1)).clone()
    m = o["anderson_m"] if o["backward_solver"] == "anderson" else k
    mixer = make_mixer(o["backward_solver"], m=m, lam=o["anderson_lam"])
    active = torch.ones(B, dtype=torch.bool, device=g.device)
    tiny, done = torch.finfo(g.dtype).tiny, 0
    for _ in range(k):
        (jt_u,) = torch.autograd.grad(fz, z, u.view(shape), retain_graph=True)
        gu = jt_u.reshape(B, -1) + g_flat
        rel = torch.where(active, (gu - u).norm(dim=1) / (gu.norm(dim=1) + tiny), rel)
        done += 1
        active = active & (rel > o["backward_tol"])
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
) -> WarmGrad:
    """Gradient of ``sum(loss(z*(x)))`` w.r.t. ``x``: forward from ``z0``, ``k``-step backward from ``u0``.

    The forward: ``solver`` (Anderson memory ``anderson_m``, ridge ``anderson_lam``) to the
    relative residual ``forward_tol`` or ``forward_max_iter`` cell evaluations, from ``z0``
    (default ``cell.init_z(x)``, else zeros like ``x``). The backward: ``backward_iters``
    iterations of ``backward_solver`` from ``u0`` (default ``dl/dz``); a sample stops early
    once its residual is ``<= backward_tol``; a sample whose ``u`` is not finite falls
    back to JFB. The step that :func:`pgd_attack_warm` and :func:`adam_latent_warm` take.

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
    o = _opts(
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
        f_solve, f_wired = _maps(cell, x_req)
        res = _forward(f_solve, _init_z(cell, x) if z0 is None else z0, o)
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


def _run(
    cell: Cell,
    loss: Callable[[Tensor], Tensor],
    x_first: Tensor,
    update: Callable[[Tensor, float], Tensor],
    sizes: list[float],
    o: dict[str, Any],
    z0: Tensor | None,
    warm: tuple[bool, bool],
    record_iterates: bool,
    callback: Callable[[int, Tensor], None] | None,
) -> tuple[Tensor, WarmStats]:
    """The loop both baselines share: gradient at ``x_t``, ``x_{t+1} = update(grad, size)``."""
    z_cold = _init_z(cell, x_first) if z0 is None else z0.detach()
    z_w, u_w, x_t = z_cold, None, x_first
    st = WarmStats(step_loss=[], final_loss=x_first.new_zeros(0), steps=len(sizes))
    for t, size in enumerate(sizes):
        wg = warm_input_grad(cell, loss, x_t, z0=z_w, u0=u_w, **o)
        st.step_loss.append(float(wg.loss.mean()))
        st.forward_iters.append(wg.forward_iters)
        st.backward_iters.append(wg.backward_iters)
        st.forward_residual.append(float(wg.forward_residual.max()))
        st.backward_residual.append(float(wg.backward_residual.max()))
        st.step_sizes.append(size)
        z_w = wg.z if warm[0] else z_cold
        u_w = wg.u if warm[1] else None
        x_t = update(wg.grad, size).detach()
        if record_iterates:
            st.iterates.append(x_t)
        if callback is not None:
            callback(t, x_t)
    with torch.no_grad():  # the returned input's loss, its forward solved as the steps' were
        st.final_loss = loss(_forward(_maps(cell, x_t)[0], z_w, o).x).detach()
    return x_t, st


def _bnorm(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1).norm(dim=1).view((-1,) + (1,) * (t.dim() - 1))


def _step_sizes(step_size: StepSize, steps: int) -> list[float]:
    if callable(step_size):
        sizes = [step_size(t) for t in range(steps)]
    elif isinstance(step_size, Sequence):
        sizes = list(step_size)
        _check(len(sizes) == steps, f"step_size schedule has {len(sizes)} entries for steps={steps}")
    else:
        sizes = [step_size] * steps
    for t, a in enumerate(sizes):
        _check(_num(a, 0, strict=True), f"step_size must be a finite number > 0, got {a!r} at step {t}")
    return [float(a) for a in sizes]


def pgd_attack_warm(
    cell: Cell,
    head: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    *,
    eps: float = 1.0,
    step_size: StepSize = 0.6,
    steps: int = 20,
    normalize: bool = True,
    random_start: bool = False,
    clip: tuple[float, float] | None = None,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    generator: torch.Generator | None = None,
    solver: str = "anderson",
    anderson_m: int = 5,
    anderson_lam: float = 1e-5,
    forward_tol: float = 1e-3,
    forward_max_iter: int = 18,
    backward_iters: int = 4,
    backward_solver: str = "anderson",
    backward_tol: float = 0.0,
    warm_forward: bool = True,
    warm_backward: bool = True,
    z0: Tensor | None = None,
    record_iterates: bool = False,
    callback: Callable[[int, Tensor], None] | None = None,
) -> tuple[Tensor, WarmStats]:
    """L2 PGD on the DEQ classifier ``head(z*(x))``, warm-started across steps.

    The steps of the paper's (cold) baseline :func:`~jiio_core.pgd_attack`: the gradient
    (L2-normalised per sample when ``normalize``) times the step size is added to the
    perturbation, which is then scaled back onto the ``eps`` ball. ``step_size``: a number,
    a sequence of ``steps`` numbers, or a function of the step index (a schedule).
    ``clip=(lo, hi)`` then clamps ``x + delta`` to the box (for ``x`` inside it the result
    stays in the ball); ``None`` (default) clamps nothing, as ``pgd_attack``. The solves:
    :func:`warm_input_grad`; ``warm_forward`` / ``warm_backward`` off start every step
    from ``z0`` (default ``cell.init_z(x)``) / ``dl/dz``. ``callback(t, x_t)`` receives the
    input after step ``t``; ``record_iterates`` keeps them in ``stats.iterates``.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> lin, head = torch.nn.Linear(4, 4), torch.nn.Linear(4, 3)
        >>> cell = lambda z, x: torch.tanh(0.5 * lin(z) + x)
        >>> x, y = torch.rand(5, 4), torch.tensor([0, 1, 2, 0, 1])
        >>> x_adv, st = pgd_attack_warm(cell, head, x, y, eps=0.5, step_size=0.2, steps=5)
        >>> bool(((x_adv - x).norm(dim=1) <= 0.5 + 1e-6).all()), len(st.forward_iters)
        (True, 5)
    """
    _check(_num(eps, 0, strict=False), f"eps must be a finite number >= 0, got {eps!r}")
    _check(_int(steps, 1), f"steps must be an int >= 1, got {steps!r}")
    _check(
        clip is None or (len(clip) == 2 and clip[0] < clip[1]),
        f"clip must be None or (lo, hi), lo < hi; got {clip!r}",
    )
    sizes = _step_sizes(step_size, steps)
    o = _opts(
        solver,
        anderson_m,
        anderson_lam,
        forward_tol,
        forward_max_iter,
        backward_iters,
        backward_solver,
        backward_tol,
    )
    loss_fn = loss_fn if loss_fn is not None else (lambda out, t: F.cross_entropy(out, t, reduction="none"))
    x = x.detach()
    delta = torch.zeros_like(x)
    if random_start:
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
        delta = noise / _bnorm(noise).clamp_min(1e-12) * eps

    def update(grad: Tensor, size: float) -> Tensor:
        nonlocal delta
        step = grad / _bnorm(grad).clamp_min(1e-12) if normalize else grad
        delta = delta + size * step
        delta = delta * torch.clamp(eps / _bnorm(delta).clamp_min(1e-12), max=1.0)
        if clip is not None:
            delta = (x + delta).clamp(clip[0], clip[1]) - x
        return x + delta

    loss = lambda z: loss_fn(head(z), y)  # noqa: E731
    warm = (warm_forward, warm_backward)
    return _run(cell, loss, x + delta, update, sizes, o, z0, warm, record_iterates, callback)


def adam_latent_warm(
    cell: Cell,
    head: Callable[[Tensor], Tensor],
    target: Tensor,
    x0: Tensor,
    *,
    steps: int = 40,
    lr: float = 0.1,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    solver: str = "anderson",
    anderson_m: int = 5,
    anderson_lam: float = 1e-5,
    forward_tol: float = 1e-3,
    forward_max_iter: int = 18,
    backward_iters: int = 4,
    backward_solver: str = "anderson",
    backward_tol: float = 0.0,
    warm_forward: bool = True,
    warm_backward: bool = True,
    z0: Tensor | None = None,
    record_iterates: bool = False,
    callback: Callable[[int, Tensor], None] | None = None,
) -> tuple[Tensor, WarmStats]:
    """Adam over the latent ``x`` of the DEQ decoder ``head(z*(x))``, warm-started across steps.

    The Adam of the paper's (cold) baseline :func:`~jiio_core.adam_latent`
    (``torch.optim.Adam`` with ``lr`` and default betas; ``loss_fn`` per sample, default
    the summed squared error). The solves, warm starts, ``callback`` and
    ``record_iterates``: as :func:`pgd_attack_warm`.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> lin, head = torch.nn.Linear(4, 4), torch.nn.Linear(4, 6)
        >>> cell = lambda z, x: torch.tanh(0.5 * lin(z) + x)
        >>> target = head(cell(torch.zeros(2, 4), torch.full((2, 4), 0.3))).detach()
        >>> x, st = adam_latent_warm(cell, head, target, torch.zeros(2, 4), steps=30, lr=0.05)
        >>> bool(st.final_loss.mean() < st.step_loss[0]), st.backward_iters[0]
        (True, 4)
    """
    _check(_int(steps, 1), f"steps must be an int >= 1, got {steps!r}")
    _check(_num(lr, 0, strict=True), f"lr must be a finite number > 0, got {lr!r}")
    o = _opts(
        solver,
        anderson_m,
        anderson_lam,
        forward_tol,
        forward_max_iter,
        backward_iters,
        backward_solver,
        backward_tol,
    )
    loss_fn = (
        loss_fn if loss_fn is not None else (lambda out, t: (out - t).pow(2).reshape(out.shape[0], -1).sum(1))
    )
    x = x0.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)

    def update(grad: Tensor, size: float) -> Tensor:
        x.grad = grad
        opt.step()
        return x.detach().clone()

    loss = lambda z: loss_fn(head(z), target)  # noqa: E731
    warm = (warm_forward, warm_backward)
    return _run(
        cell, loss, x.detach().clone(), update, [float(lr)] * steps, o, z0, warm, record_iterates, callback
    )
