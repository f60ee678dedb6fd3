"""Implicit backward for a fixed point ``z* = f(z*, x)``, shared by the DEQ and JIIO.

:func:`attach_implicit_grad` evaluates ``f(z*, x)`` once with autograd on and returns a
tensor equal to ``z*`` whose gradient, when something downstream calls ``backward``,
reaches the parameters (and ``x``, if it requires grad) as ``u^T df/d(theta, x)`` with

- ``"ift"``: ``u = (I - J_z^T)^{-1} grad``, the implicit function theorem, solved as the
  fixed point ``u = J_z^T u + grad`` by one of the solvers;
- ``"jfb"``: ``u = grad`` (Jacobian-free backprop: one step, no solve);
- a *shortcut*: a callable that, given ``grad``, returns ``(u, use, residual)``: ``u`` is
  exact for the samples where ``use`` (JIIO's ``mu*`` reuse, paper eq. 19, with
  ``residual`` its relative residual there) and the warm start of the solve elsewhere;
  only the other samples take ``backward`` ("ift" or "jfb").

What the backward did is written into the ``stats`` dict that is passed in: ``mode``
("ift", "jfb"; with a shortcut also "mu" (every sample used it) or "mixed"),
``iterations`` (of the solve, 0 without one), ``residual`` (the largest relative residual
of the returned ``u`` over the samples that solved or used the shortcut; NaN when none
did, i.e. all JFB), and for a solve ``converged`` / ``diverged`` (fractions of the samples
solved) and ``rel_residual`` (largest over them); with a shortcut, ``mu_samples`` and
``mu_frac`` (how many samples used it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .mixers import make_mixer
from .solvers import SolverResult, solve

__all__ = ["attach_implicit_grad", "dual_shortcut"]

Shortcut = Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]
PARALLEL_TOL = 1e-4  # dual_shortcut: the outer gradient counts as a multiple of dl/dz


def _ift_solve(
    f: Callable[[Tensor, Tensor], Tensor],
    z_star: Tensor,
    x_fixed: Tensor,
    grad: Tensor,
    warm: Tensor | None,
    solver: str,
    max_iter: int,
    tol: float,
    anderson_m: int,
    anderson_lam: float,
) -> SolverResult:
    """Solve ``u = J_z f(z*, x)^T u + grad`` from ``warm`` (or ``grad``), ``x`` held fixed."""
    with torch.enable_grad():
        z_ = z_star.clone().requires_grad_(True)
        f_ = f(z_, x_fixed)

    def vjp_map(u: Tensor) -> Tensor:
        (jt_u,) = torch.autograd.grad(f_, z_, u, retain_graph=True)
        return jt_u + grad

    mixer = make_mixer(solver, m=anderson_m if solver == "anderson" else max_iter, lam=anderson_lam)
    return solve(vjp_map, warm if warm is not None else grad, mixer, max_iter=max_iter, tol=tol)


def attach_implicit_grad(
    f: Callable[[Tensor, Tensor], Tensor],
    z_star: Tensor,
    x: Tensor,
    *,
    backward: str = "ift",
    solver: str = "anderson",
    max_iter: int = 30,
    tol: float = 1e-5,
    anderson_m: int = 5,
    anderson_lam: float = 1e-5,
    shortcut: Shortcut | None = None,
    stats: dict[str, Any] | None = None,
) -> Tensor:
    """Return ``z*`` (same values) wired for the implicit gradient through ``f``.

    Costs one evaluation of ``f`` with autograd now; the backward solve runs only if a
    gradient arrives. When grad mode is off or nothing in ``f(z*, x)`` requires grad,
    ``z*`` is returned detached and nothing is built.

    Example:
        >>> import torch
        >>> w = torch.tensor(0.5, requires_grad=True)
        >>> f = lambda z, x: w * z + x          # z* = x / (1 - w)
        >>> x = torch.ones(1, 1)
        >>> z = attach_implicit_grad(f, torch.full((1, 1), 2.0), x, tol=1e-12, max_iter=100)
        >>> z.sum().backward()                  # dz*/dw = x / (1 - w)^2 = 4
        >>> round(float(w.grad), 6)
        4.0
    """
    stats = stats if stats is not None else {}
    z_star = z_star.detach()
    if not torch.is_grad_enabled():
        return z_star
    fz = f(z_star, x)
    if not fz.requires_grad:
        return z_star
    x_fixed = x.detach()

    def hook(grad: Tensor) -> Tensor:
        B = grad.shape[0]
        shape = (-1,) + (1,) * (grad.dim() - 1)
        warm: Tensor | None = None
        use = torch.zeros(B, dtype=torch.bool, device=grad.device)
        residuals: list[Tensor] = []
        if shortcut is not None:
            warm, use, short_res = shortcut(grad)
            n_use = int(use.sum())
            stats.update(mu_samples=n_use, mu_frac=n_use / B)
            if n_use == B:
                stats.update(mode="mu", iterations=0, residual=float(short_res.max()))
                return warm
            residuals.append(short_res[use])
        if backward == "jfb":
            u = grad
            stats.update(mode="jfb", iterations=0)
        else:
            res = _ift_solve(f, z_star, x_fixed, grad, warm, solver, max_iter, tol, anderson_m, anderson_lam)
            rest = ~use
            residuals.append(res.rel_residual[rest])
            stats.update(
                mode="ift",
                iterations=res.iterations,
                converged=float(res.converged[rest].float().mean()),
                rel_residual=float(res.rel_residual[rest].max()),
                diverged=float(res.diverged[rest].float().mean()),
            )
            # A sample whose backward solve diverged falls back to the JFB gradient.
            u = torch.where(res.diverged.view(shape), grad, res.x)
        if warm is not None and bool(use.any()):
            u = torch.where(use.view(shape), warm, u)
            stats["mode"] = "mixed"
        found = torch.cat(residuals) if residuals else grad.new_zeros(0)
        stats["residual"] = float(found.max()) if found.numel() else math.nan
        return u

    fz.register_hook(hook)
    return z_star + (fz - fz.detach())


def dual_shortcut(
    loss: Callable[[Tensor], Tensor], z_star: Tensor, mu_star: Tensor, mu_rel: Tensor, tol: float
) -> Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]:
    """The eq. 19 shortcut for :func:`attach_implicit_grad`, per sample.

    Given the incoming gradient ``g``, ``c = <g, dl/dz*> / |dl/dz*|^2`` per sample; ``u = c mu*``
    solves ``u = J_z^T u + g`` when ``g = c dl/dz*`` and ``mu* = J_z^T mu* + dl/dz*``. It is
    used (``use``) only where ``g`` is parallel to ``dl/dz*`` (``|g - c dl/dz*| <= t |g|``,
    ``t = min(tol, PARALLEL_TOL)``: a property of the outer loss, never loosened by a loose
    ``tol``) and mu*'s relative residual ``mu_rel`` (``|J_z^T mu* + dl/dz* - mu*| /
    |J_z^T mu* + dl/dz*|`` at the returned iterate) is ``<= tol``, or where ``g = 0``
    (``u = 0``); elsewhere ``c mu*`` is the warm start of the backward solve.
    Returns ``(u, use, residual)``, the residual of ``u`` per sample (``mu_rel``; 0 where
    ``g = 0``).
    """
    B = z_star.shape[0]
    tiny = torch.finfo(z_star.dtype).tiny

    def shortcut(grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        with torch.enable_grad():
            z_ = z_star.clone().requires_grad_(True)
            (dl,) = torch.autograd.grad(loss(z_).sum(), z_)
        g, d = grad.reshape(B, -1), dl.reshape(B, -1).to(grad.dtype)
        c = (g * d).sum(1) / (d * d).sum(1).clamp_min(tiny)
        g_norm = _row_norm(g)
        parallel = _row_norm(g - c[:, None] * d) <= min(tol, PARALLEL_TOL) * g_norm
        zero = g_norm == 0  # u = 0 exactly, whatever mu* (e.g. rows left out of the outer loss)
        use = (parallel & (mu_rel <= tol)) | zero
        u = (c[:, None] * mu_star.reshape(B, -1).to(grad.dtype)).view(grad.shape)
        return u, use, torch.where(zero, torch.zeros_like(mu_rel), mu_rel)

    return shortcut


def _row_norm(t: Tensor) -> Tensor:
    return t.norm(dim=1)
