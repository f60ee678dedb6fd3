"""Acceleration rules for fixed-point iterations: given x_k and g(x_k), propose x_{k+1}.

A *mixer* holds the history one acceleration method needs and nothing else. The solvers
in :mod:`jiio_core.solvers` and the augmented JIIO iteration in :mod:`jiio_core.jiio` share
these, so Anderson means the same thing everywhere. Every tensor is flat and batched,
shape ``(B, D)``; every sample has its own history and its own least-squares problem.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["AndersonMixer", "BroydenMixer", "DampedMixer", "make_mixer"]


class DampedMixer:
    """Damped (Krasnoselskii-Mann) iteration: ``x+ = x + beta (g(x) - x)``."""

    def __init__(self, beta: float = 1.0) -> None:
        self.beta = beta

    def step(self, x: Tensor, gx: Tensor, active: Tensor) -> Tensor:
        return gx.clone() if self.beta == 1.0 else torch.lerp(x, gx, self.beta)


class AndersonMixer:
    """Anderson acceleration with memory ``m``, per sample, O(m D) work per step.

    Solves, for each sample, ``min_alpha alpha^T H alpha  s.t.  sum(alpha) = 1`` as
    ``alpha = s / sum(s)`` with ``(H + lam s_H I) s = 1`` and returns
    ``sum_i alpha_i (x_i + beta g_i)`` with residuals ``g_i = g(x_i) - x_i``.

    - ``kind="II"`` ("bad" Anderson, the DEQ default): ``H = G G^T``.
    - ``kind="I"`` ("good" Anderson, the JIIO paper code's ``H = X G^T``): the iterates
      are centred on the newest one first, which leaves the solution unchanged and makes
      the regularisation meaningful.

    The regularisation is relative: ``s_H`` is the largest entry of ``|H|`` of that sample,
    so the method behaves identically when all residuals are scaled by 1e-8 or 1e+3 (an
    absolute ``lam`` would turn Anderson into plain averaging once residuals are small).
    A singular or non-finite solve falls back to the plain damped step for that sample.
    ``H`` is updated one row and column per step rather than recomputed, and the history
    is read as few times as possible (it dominates the cost when ``f`` is cheap).
    """

    def __init__(self, m: int = 5, lam: float = 1e-5, beta: float = 1.0, kind: str = "II") -> None:
        if m < 1:
            raise ValueError(f"anderson m must be >= 1, got {m}")
        if kind not in ("I", "II"):
            raise ValueError(f"anderson kind must be 'I' or 'II', got {kind!r}")
        self.m, self.lam, self.beta, self.kind = m, lam, beta, kind
        self.k = 0
        self.Y: Tensor | None = None  # x_i + beta g_i, the damped images
        self.G: Tensor | None = None  # residuals g_i = g(x_i) - x_i
        self.P: Tensor | None = None

    def step(self, x: Tensor, gx: Tensor, active: Tensor) -> Tensor:
        B, D = x.shape
        if self.Y is None:
            self.Y = x.new_zeros(B, self.m, D)
            self.G = x.new_zeros(B, self.m, D)
            self.P = x.new_zeros(B, self.m, self.m)
        Y, G, P = self.Y, self.G, self.P
        assert G is not None and P is not None
        slot = self.k % self.m
        self.k += 1
        n = min(self.k, self.m)
        g = torch.sub(gx, x, out=G[:, slot])
        if self.beta == 1.0:
            Y[:, slot] = gx
        else:
            torch.add(x, g, alpha=self.beta, out=Y[:, slot])
        if n == 1:
            return Y[:, slot].clone()
        if self.kind == "II":
            row = torch.bmm(G[:, :n], g.unsqueeze(2)).squeeze(2)  # (B, n): g_j . g
            P[:, slot, :n] = row
            P[:, :n, slot] = row
            H = P[:, :n, :n]
        else:  # P_ij = x_i . g_j, with x_i = y_i - beta g_i: one pass over G and one over Y
            xg = torch.bmm(G[:, :n], torch.stack([x, g], dim=2))  # (B, n, 2): g_j . x, g_i . g
            yg = torch.bmm(Y[:, :n], g.unsqueeze(2)).squeeze(2)  # y_i . g
            P[:, slot, :n] = xg[:, :, 0]
            P[:, :n, slot] = yg - self.beta * xg[:, :, 1]
            H = P[:, :n, :n] - P[:, slot : slot + 1, :n]  # (x_i - x) . g_j
        # min alpha^T H alpha s.t. sum(alpha) = 1  <=>  alpha = s / sum(s) with H s = 1
        # (for type I, H alpha = c 1 is exactly the type-I condition). Relative ridge on H.
        Hr = H.clone()
        scale = H.abs().amax(dim=(1, 2), keepdim=True).squeeze(2)
        Hr.diagonal(dim1=1, dim2=2).add_(self.lam * scale + torch.finfo(x.dtype).tiny)
        sol, info = torch.linalg.solve_ex(Hr, torch.ones_like(Hr[:, :, :1]))
        alpha = sol[:, :, 0] / sol[:, :, 0].sum(dim=1, keepdim=True)
        bad = (info != 0) | ~torch.isfinite(alpha).all(dim=1)
        if x.device.type != "cpu" or bool(bad.any()):  # no host sync on a GPU
            plain = torch.zeros_like(alpha)
            plain[:, slot] = 1.0
            alpha = torch.where(bad[:, None], plain, alpha)
        return torch.bmm(alpha.unsqueeze(1), Y[:, :n]).squeeze(1)  # sum_i alpha_i (x_i + beta g_i)


class BroydenMixer:
    """Limited-memory "good" Broyden on the root problem ``r(x) = g(x) - x = 0``.

    Keeps ``J^{-1} ~ -I + U V^T`` (rank ``m``, oldest update dropped first) and steps
    ``x+ = x - J^{-1} r``. A sample whose step was zero (it stopped) makes no update.
    """

    def __init__(self, m: int = 30) -> None:
        if m < 1:
            raise ValueError(f"broyden memory m must be >= 1, got {m}")
        self.m = m
        self.k = 0
        self.U: Tensor | None = None
        self.VT: Tensor | None = None
        self.prev: tuple[Tensor, Tensor] | None = None

    def _matvec(self, v: Tensor, n: int) -> Tensor:  # J^{-1} v
        assert self.U is not None and self.VT is not None
        if n == 0:
            return -v
        return -v + torch.bmm(self.U[:, :, :n], torch.bmm(self.VT[:, :n], v.unsqueeze(2))).squeeze(2)

    def _rmatvec(self, v: Tensor, n: int) -> Tensor:  # v^T J^{-1}
        assert self.U is not None and self.VT is not None
        if n == 0:
            return -v
        uv = torch.bmm(self.U[:, :, :n].transpose(1, 2), v.unsqueeze(2))
        return -v + torch.bmm(self.VT[:, :n].transpose(1, 2), uv).squeeze(2)

    def step(self, x: Tensor, gx: Tensor, active: Tensor) -> Tensor:
        B, D = x.shape
        if self.U is None:
            self.U = x.new_zeros(B, D, self.m)
            self.VT = x.new_zeros(B, self.m, D)
        assert self.VT is not None
        r = gx - x
        n = min(self.k, self.m)
        if self.prev is not None:
            dx, dr = x - self.prev[0], r - self.prev[1]
            vT = self._rmatvec(dx, n)
            denom = (vT * dr).sum(dim=1)
            size = vT.norm(dim=1) * dr.norm(dim=1)
            ok = active & (denom.abs() > 1e-12 * size) & (size > 0)
            u = (dx - self._matvec(dr, n)) / torch.where(ok, denom, torch.ones_like(denom))[:, None]
            slot = self.k % self.m
            self.U[:, :, slot] = torch.where(ok[:, None], u, torch.zeros_like(u))
            self.VT[:, slot] = torch.where(ok[:, None], vT, torch.zeros_like(vT))
            self.k += 1
            n = min(self.k, self.m)
        self.prev = (x, r)
        return x - self._matvec(r, n)


def make_mixer(
    solver: str, *, m: int, lam: float = 1e-5, beta: float = 1.0, kind: str = "II"
) -> AndersonMixer | BroydenMixer | DampedMixer:
    """The mixer for a solver name: ``"anderson"``, ``"broyden"`` or ``"fixed_point"``."""
    if solver == "anderson":
        return AndersonMixer(m=m, lam=lam, beta=beta, kind=kind)
    if solver == "broyden":
        return BroydenMixer(m=m)
    if solver == "fixed_point":
        return DampedMixer(beta=beta)
    raise ValueError(f"solver must be 'anderson', 'broyden' or 'fixed_point', got {solver!r}")
