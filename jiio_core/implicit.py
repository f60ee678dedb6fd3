"""Implicit backward for a fixed point ``z* = f(z*, x)``, shared by the DEQ and JIIO.

:func:`attach_implicit_grad` evaluates ``f(z*, x)`` once with autograd on and returns a
tensor equal to ``z*`` whose gradient, when something downstream calls ``backward``,
reaches the parameters (and ``x``, if it requires grad) as ``u^T df/d(theta, x)`` with

- ``"ift"``: ``u = (I - J_z^T)^{-1} grad``, the implicit function theorem, solved as the
  fixed point ``u = J_z^T u + grad`` by one of the solvers;
- ``"jfb"``: ``u = grad`` (Jacobian-free backprop: one step, no solve);
- a *shortcut*: a callable that, given ``grad``, returns the exact ``u`` without a solve
  when it can (JIIO's ``mu*`` reuse, paper eq. 19), or ``None`` and a warm start.

What the backward did is written into the ``stats`` dict that is passed in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ._mixers import make_mixer
from .solvers import solve

__all__ = ["attach_implicit_grad"]

Shortcut = Callable[[Tensor], tuple[Tensor | None, Tensor | None]]


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
        warm: Tensor | None = None
        if shortcut is not None:
            u, warm = shortcut(grad)
            if u is not None:
                stats.update(mode="mu", iterations=0)
                return u
        if backward == "jfb":
            stats.update(mode="jfb", iterations=0)
            return grad
        with torch.enable_grad():
            z_ = z_star.clone().requires_grad_(True)
            f_ = f(z_, x_fixed)

        def vjp_map(u: Tensor) -> Tensor:
            (jt_u,) = torch.autograd.grad(f_, z_, u, retain_graph=True)
            return jt_u + grad

        mixer = make_mixer(solver, m=anderson_m if solver == "anderson" else max_iter, lam=anderson_lam)
        res = solve(vjp_map, warm if warm is not None else grad, mixer, max_iter=max_iter, tol=tol)
        stats.update(
            mode="ift",
            iterations=res.iterations,
            converged=float(res.converged.float().mean()),
            rel_residual=float(res.rel_residual.max()),
            diverged=float(res.diverged.float().mean()),
        )
        # A sample whose backward solve diverged falls back to the JFB gradient.
        shape = (-1,) + (1,) * (grad.dim() - 1)
        return torch.where(res.diverged.view(shape), grad, res.x)

    fz.register_hook(hook)
    return z_star + (fz - fz.detach())
