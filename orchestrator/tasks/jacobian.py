"""The Jacobian regulariser of DEQ training (Bai et al. 2021): a Hutchinson estimate.

What: :func:`jacobian_penalty`, ``|J_z f(z, x)|_F^2 / dim(z)`` estimated with random probes
and differentiable in the parameters of ``f``. Why: tasks add ``jac_reg`` times it to their
outer loss to keep the fixed point well conditioned (``TaskConfig.jac_reg``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["jacobian_penalty"]


def jacobian_penalty(f: Callable[[Tensor, Tensor], Tensor], z: Tensor, x: Tensor, probes: int = 2) -> Tensor:
    """Hutchinson estimate of ``|J_z f(z, x)|_F^2 / dim(z)`` (Bai et al. 2021), differentiable.

    Example:
        >>> f = lambda z, x: 0.5 * z + x               # J = 0.5 I: |J|_F^2 / d = 0.25
        >>> z = torch.zeros(4096, 3)
        >>> abs(float(jacobian_penalty(f, z, z, probes=8)) - 0.25) < 0.02
        True
    """
    z = z.detach().requires_grad_(True)
    fz = f(z, x)
    total = z.new_zeros(())
    for _ in range(probes):
        v = torch.randn_like(fz)
        (vj,) = torch.autograd.grad(fz, z, v, create_graph=True, retain_graph=True)
        total = total + vj.pow(2).sum() / fz.numel()
    return total / probes
