"""The deep equilibrium layer: ``z* = f(z*, x)`` forward, implicit gradient backward.

The forward solve runs without autograd (no iteration graph is stored: memory does not
grow with the number of iterations); the backward is the implicit function theorem
(a second fixed-point solve on the vector-Jacobian product) or JFB (one step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .config import DEQConfig
from .implicit import attach_implicit_grad
from .mixers import make_mixer
from .solvers import solve

__all__ = ["DEQ", "DEQInfo"]


@dataclass
class DEQInfo:
    """Stats of one DEQ forward (and, once ``backward`` ran, of its backward)."""

    iterations: int
    converged: Tensor
    diverged: Tensor
    rel_residual: Tensor
    trace_rel: Tensor
    backward: dict[str, Any]


class DEQ(nn.Module):
    """Wrap a cell ``f(z, x) -> z`` as an implicit layer.

    ``forward(x, z0=None)`` returns ``(z*, info)``. ``z0`` defaults to ``f.init_z(x)``
    when the cell has it, else zeros shaped like ``x``. Gradients reach the parameters
    of ``f`` and ``x`` (when it requires grad).

    Example:
        >>> import torch
        >>> class Cell(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.lin = torch.nn.Linear(4, 4)
        ...     def forward(self, z, x):
        ...         return torch.tanh(0.5 * self.lin(z) + x)
        >>> deq = DEQ(Cell(), DEQConfig(tol=1e-6))
        >>> z, info = deq(torch.randn(8, 4))
        >>> bool(info.converged.all())
        True
        >>> z.pow(2).sum().backward()
    """

    def __init__(self, f: nn.Module, config: DEQConfig | None = None) -> None:
        super().__init__()
        self.f = f
        self.config = config if config is not None else DEQConfig()

    def init_z(self, x: Tensor) -> Tensor:
        init = getattr(self.f, "init_z", None)
        return init(x) if callable(init) else torch.zeros_like(x)

    def forward(self, x: Tensor, z0: Tensor | None = None) -> tuple[Tensor, DEQInfo]:
        cfg = self.config
        z0 = self.init_z(x) if z0 is None else z0
        x_in = x.detach()
        m = cfg.anderson_m if cfg.solver == "anderson" else cfg.max_iter
        res = solve(
            lambda z: self.f(z, x_in),
            z0,
            make_mixer(cfg.solver, m=m, lam=cfg.anderson_lam),
            max_iter=cfg.max_iter,
            tol=cfg.tol,
            divergence_factor=cfg.divergence_factor,
        )
        backward_stats: dict[str, Any] = {}
        z = attach_implicit_grad(
            self.f,
            res.x,
            x,
            backward=cfg.backward,
            solver=cfg.solver,
            max_iter=cfg.backward_max_iter,
            tol=cfg.backward_tol,
            anderson_m=cfg.anderson_m,
            anderson_lam=cfg.anderson_lam,
            stats=backward_stats,
        )
        info = DEQInfo(
            iterations=res.iterations,
            converged=res.converged,
            diverged=res.diverged,
            rel_residual=res.rel_residual,
            trace_rel=res.trace_rel,
            backward=backward_stats,
        )
        return z, info
