"""Anderson acceleration with static shapes: the mixer of the CUDA-graph JIIO iteration.

What: :class:`StaticAndersonMixer` solves a fixed ``m``-unknown system every iteration
(empty history slots padded out, slot indices on the device, fallbacks applied by masks),
and :func:`batched_solve` solves its batched linear systems without a host
synchronisation. Why apart from :mod:`jiio_core.mixers`: only the static iteration
(:mod:`jiio_core.static_iteration`) uses it, and its constraints (no data-dependent shapes or
branches) are not the eager mixers'.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .mixers import AndersonMixer

__all__ = ["StaticAndersonMixer", "batched_solve"]


class StaticAndersonMixer:
    """:class:`AndersonMixer` with static shapes and no host synchronisation, for a step
    captured once in a CUDA graph and replayed.

    The same method (same ``m``, ``lam``, ``beta``, ``kind``, fallbacks), with every size
    and index fixed or on the device: the step counter is a device tensor, slots are
    written with ``index_copy_``, and the Anderson system always has ``m`` unknowns. Slots
    not yet filled get an identity row and column and no part in the sum-to-one
    constraint, so their weight is exactly zero and the others are those of the ``n``-slot
    system. With ``lam = 0`` the system and its ``FALLBACK_LAM`` retry are solved together
    in one batched call, and the retry is taken where the first failed. ``linsolve``:
    ``"lu"`` (``torch.linalg.solve_ex``, which does not synchronise) or ``"elimination"``
    (Gauss-Jordan with partial pivoting written in tensor operations: more kernels, each
    one certainly capturable). The history starts at zero. ``weights`` ``(B, m)`` is in
    slot order (zeros for empty slots); ``fallbacks`` is not counted (that needs a sync).
    """

    FALLBACK_LAM = AndersonMixer.FALLBACK_LAM

    def __init__(
        self, m: int = 5, lam: float = 1e-5, beta: float = 1.0, kind: str = "II", linsolve: str = "lu"
    ) -> None:
        AndersonMixer(m=m, lam=lam, beta=beta, kind=kind)  # the same argument checks
        if linsolve not in ("lu", "elimination"):
            raise ValueError(f"linsolve must be 'lu' or 'elimination', got {linsolve!r}")
        self.m, self.lam, self.beta, self.kind, self.linsolve = m, lam, beta, kind, linsolve
        self.count: Tensor | None = None  # steps taken, on the device
        self.weights: Tensor | None = None

    def _allocate(self, x: Tensor) -> None:
        B, D = x.shape
        m = self.m
        self.Y = x.new_zeros(B, m, D)
        self.G = x.new_zeros(B, m, D)
        self.W = x.new_zeros(B, 2, D)  # [g; x] of the current step
        self.P = x.new_zeros(B, m, m)
        self.out = x.new_empty(B, 1, D)
        self.count = torch.zeros((), dtype=torch.long, device=x.device)
        self.slots = torch.arange(m, device=x.device)
        self.eye = torch.eye(m, dtype=x.dtype, device=x.device)

    def step(self, x: Tensor, gx: Tensor, active: Tensor) -> Tensor:
        if self.count is None:
            self._allocate(x)
        assert self.count is not None
        Y, G, W, P, m = self.Y, self.G, self.W, self.P, self.m
        B = x.shape[0]
        slot = torch.remainder(self.count, m)
        at = slot.view(1)
        onehot = self.slots == slot  # (m,)
        valid = self.slots <= torch.clamp(self.count, max=m - 1)  # the n = min(k + 1, m) filled slots
        g = torch.sub(gx, x, out=W[:, 0])
        W[:, 1].copy_(x)
        y = gx if self.beta == 1.0 else torch.add(x, g, alpha=self.beta)
        G.index_copy_(1, at, g.unsqueeze(1))
        Y.index_copy_(1, at, y.unsqueeze(1))
        if self.kind == "II":
            row = torch.bmm(W[:, :1], G.transpose(1, 2))[:, 0]  # g . g_j
            col = row
        else:
            gg_xg = torch.bmm(W, G.transpose(1, 2))  # g . g_j, x . g_j
            row = gg_xg[:, 1]
            col = torch.bmm(W[:, :1], Y.transpose(1, 2))[:, 0] - self.beta * gg_xg[:, 0]  # x_i . g
        torch.where(onehot[None, :, None], row[:, None, :], P, out=P)  # P[slot, :] = row
        torch.where(onehot[None, None, :], col[:, :, None], P, out=P)  # P[:, slot] = col (wins)
        H = P if self.kind == "II" else P - P.index_select(1, at)  # type I: centred on x
        both = valid[:, None] & valid[None, :]
        H = torch.where(both, H, self.eye)  # empty slots: identity rows and columns
        if self.lam > 0:
            scale = torch.where(both, H, torch.zeros_like(H)).abs().amax(dim=(1, 2))
            Hr = H + (self.lam * scale + torch.finfo(H.dtype).tiny)[:, None, None] * self.eye
            rhs = valid.to(H.dtype).expand(B, m).unsqueeze(2)
            sol, failed = batched_solve(Hr, rhs, self.linsolve)
            alpha = sol[:, :, 0] / sol[:, :, 0].sum(dim=1, keepdim=True)
            bad = failed | ~torch.isfinite(alpha).all(dim=1)
        else:
            reg = self.eye * valid  # FALLBACK_LAM on the filled slots' diagonal only
            if self.kind == "I":  # centred (X G^T + lam I): lam (I - 1 e_slot^T)
                reg = reg - (valid[:, None] & onehot[None, :]).to(H.dtype)
            both_h = torch.cat([H, H + self.FALLBACK_LAM * reg])  # the system and its retry
            K = H.new_zeros(2 * B, m + 1, m + 1)
            border = valid.to(H.dtype)
            K[:, 0, 1:] = border
            K[:, 1:, 0] = border
            K[:, 1:, 1:] = both_h
            rhs = H.new_zeros(2 * B, m + 1, 1)
            rhs[:, 0] = 1.0
            sol, failed = batched_solve(K, rhs, self.linsolve)
            alphas = sol[:, 1:, 0]
            bads = failed | ~torch.isfinite(alphas).all(dim=1)
            alpha, retry = alphas[:B], alphas[B:]
            bad = bads[:B]
            alpha = torch.where(bad[:, None], retry, alpha)
            bad = bad & bads[B:]
        alpha = torch.where(bad[:, None], onehot.to(alpha.dtype).expand_as(alpha), alpha)  # plain step
        self.weights = alpha
        self.count += 1
        return torch.bmm(alpha.unsqueeze(1), Y, out=self.out).squeeze(1)


def batched_solve(A: Tensor, b: Tensor, method: str) -> tuple[Tensor, Tensor]:
    """``A x = b`` for a batch ``(N, s, s)``, ``(N, s, k)``; and where it failed ``(N,)``."""
    if method == "lu":
        sol, info = torch.linalg.solve_ex(A, b)
        return sol, info != 0
    N, s, _ = A.shape
    M = torch.cat([A, b], dim=2)  # Gauss-Jordan on [A | b], partial pivoting
    rows = torch.arange(s, device=A.device)
    failed = torch.zeros(N, dtype=torch.bool, device=A.device)
    width = M.shape[2]
    for j in range(s):
        col = torch.where(rows >= j, M[:, :, j].abs(), -1.0)
        p = col.argmax(dim=1).view(N, 1, 1).expand(N, 1, width)
        row_p = M.gather(1, p)
        row_j = M[:, j : j + 1].clone()
        M.scatter_(1, p, row_j)  # row p <- row j, then row j <- row p
        M[:, j : j + 1] = row_p
        pivot = M[:, j, j]
        failed |= pivot == 0
        M[:, j] /= torch.where(pivot == 0, torch.ones_like(pivot), pivot)[:, None]
        factor = M[:, :, j].clone()
        factor[:, j] = 0.0
        M -= factor[:, :, None] * M[:, j : j + 1]
    return M[:, :, s:], failed
