"""Acceleration rules for fixed-point iterations: given x_k and g(x_k), propose x_{k+1}.

A *mixer* holds the history one acceleration method needs and nothing else. The solvers
in :mod:`jiio_core.solvers` and the augmented JIIO iteration in :mod:`jiio_core.jiio` share
these, so Anderson means the same thing everywhere. Every tensor is flat and batched,
shape ``(B, D)``; every sample has its own history and its own least-squares problem.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .config import SOLVERS

__all__ = ["AndersonMixer", "BroydenMixer", "DampedMixer", "make_mixer"]


class DampedMixer:
    """Damped (Krasnoselskii-Mann) iteration: ``x+ = x + beta (g(x) - x)``.

    ``copy=False`` (a caller that owns ``g(x)`` and never writes to it): with ``beta = 1``
    the step returns ``g(x)`` itself instead of a copy.
    """

    def __init__(self, beta: float = 1.0, copy: bool = True) -> None:
        self.beta, self.copy = beta, copy

    def step(self, x: Tensor, gx: Tensor, active: Tensor) -> Tensor:
        if self.beta == 1.0:
            return gx.clone() if self.copy else gx
        return torch.lerp(x, gx, self.beta)


class AndersonMixer:
    """Anderson acceleration with memory ``m``, per sample, O(m D) work per step.

    Finds, for each sample, weights ``alpha`` with ``sum(alpha) = 1`` and ``H alpha = c 1``
    and returns ``sum_i alpha_i (x_i + beta g_i)`` with residuals ``g_i = g(x_i) - x_i``.

    - ``kind="II"`` ("bad" Anderson, the DEQ default): ``H = G G^T`` (least squares).
    - ``kind="I"`` ("good" Anderson, the JIIO paper code's ``H = X G^T``): the iterates
      are centred on the newest one first, which leaves ``alpha`` unchanged (the centring
      subtracts a row vector from every row of ``H``) and keeps the entries at the scale of
      the differences.

    ``lam > 0``: a relative ridge, ``(H + lam s_H I) s = 1``, ``alpha = s / sum(s)`` with
    ``s_H`` the largest entry of ``|H|`` of that sample (scale-free: the method behaves
    the same when all residuals are scaled by 1e-8 or 1e+3). ``lam = 0``: no ridge, the
    bordered system ``[[0, 1^T], [1, H]] [-c; alpha] = [1; 0]`` (as the paper code); only
    a sample whose solve fails gets ``FALLBACK_LAM`` added to the diagonal of ``H`` (for
    type I: of the uncentred ``X G^T``, exactly the paper code's retry) and is solved
    again. A sample whose solve still fails takes the plain damped step. ``weights``
    holds the last step's ``alpha`` ``(B, n)``; ``fallbacks`` counts (regularised retries,
    plain steps) over all steps and samples.

    Memory traffic, which is what a step costs when ``f`` is cheap. ``H`` is updated one
    row and column per step, never recomputed. The history lives in preallocated ring
    buffers (slot ``t % m`` holds iterate ``t``), written in place and never concatenated,
    stacked or cloned: ``Y`` ``(B, m, D)`` holds the images ``y_i = x_i + beta g_i`` and
    ``G`` ``(B, m + 2, D)`` the residuals, plus two scratch rows for ``x`` (type I). Every
    product is one batched matrix product against the ``(m, D)`` history of each sample:

    - type II: ``g . g_j`` (one read of ``G``), then the mix ``Y^T alpha`` (one read of
      ``Y``): ``2 m D`` values per sample, the two-pass minimum;
    - type I: ``[g; x] . g_j`` (one read of ``G``: both vectors in one product, which is
      why ``x`` is copied next to the residuals), ``g . y_i`` (one read of ``Y``), then the
      mix (``Y`` again): ``3 m D`` values. The Gram row needs the new vectors against both
      the iterates and the residuals, and the mix needs the weights that row gives, so the
      third read can only be saved by a cache: ``chunk`` (samples per chunk) processes the
      batch in chunks whose ``Y`` may still be cached when the mix re-reads it. Off by
      default: on the shared 2-core development machine it was slower (docs/benchmarks.md).

    The returned tensor is one of two output buffers, used in turn: it is overwritten by
    the step after next (the solvers keep at most the previous iterate). By default these
    are contiguous ``(B, D)`` tensors of their own; ``out_in_history=True`` (for a caller
    whose iterates may be strided views, as :func:`~jiio_core.jiio_solve`) makes them the
    two scratch rows of ``G``, so that the next step finds ``x`` already next to the
    residuals (type I: no copy of ``x``). ``image_out`` hands out the history slot where
    the next ``g(x)`` may be written directly when ``beta = 1``, which saves copying it
    into the history.
    """

    FALLBACK_LAM = 1e-3  # the paper code: lam = 1e-4, multiplied by 10 before its first use

    def __init__(
        self,
        m: int = 5,
        lam: float = 1e-5,
        beta: float = 1.0,
        kind: str = "II",
        chunk: int | None = None,
        out_in_history: bool = False,
    ) -> None:
        if m < 1:
            raise ValueError(f"anderson m must be >= 1, got {m}")
        if kind not in ("I", "II"):
            raise ValueError(f"anderson kind must be 'I' or 'II', got {kind!r}")
        if not lam >= 0:
            raise ValueError(f"anderson lam must be >= 0, got {lam}")
        if chunk is not None and chunk < 1:
            raise ValueError(f"anderson chunk must be >= 1 or None, got {chunk}")
        self.m, self.lam, self.beta, self.kind, self.chunk = m, lam, beta, kind, chunk
        self.out_in_history = out_in_history
        self.k = 0
        self.Y: Tensor | None = None  # (B, m, D): x_i + beta g_i, the damped images
        self.G: Tensor | None = None  # (B, m + 2, D): residuals g_i; rows m, m + 1: x (type I)
        self.P: Tensor | None = None  # (B, m, m): g_i . g_j (II) or x_i . g_j (I)
        self.out: tuple[Tensor, Tensor] | None = None  # the step's output, two in turn
        self.weights: Tensor | None = None
        self.fallbacks = [0, 0]

    def _allocate(self, x: Tensor) -> None:
        B, D = x.shape
        # empty, not zeros: only slots already written are read (no zero-filling pass)
        self.Y = x.new_empty(B, self.m, D)
        self.G = x.new_empty(B, self.m + 2, D)
        self.P = x.new_zeros(B, self.m, self.m)
        if self.out_in_history:  # step k reads x from row m + k % 2 and writes the other
            self.out = (self.G[:, self.m + 1], self.G[:, self.m])
        else:
            self.out = (x.new_empty(B, D), x.new_empty(B, D))

    def image_out(self, x: Tensor) -> Tensor | None:
        """Where the caller may write ``g(x)`` before the next :meth:`step` with this ``x``
        (with ``beta = 1`` the image is ``g(x)`` itself: its history slot), or None."""
        if self.beta != 1.0:
            return None
        if self.Y is None:
            self._allocate(x)
        assert self.Y is not None
        return self.Y[:, self.k % self.m]

    def chunk_size(self, x: Tensor) -> int:
        """Samples per chunk: ``chunk``, or the whole batch."""
        return x.shape[0] if self.chunk is None else min(self.chunk, x.shape[0])

    def step(self, x: Tensor, gx: Tensor, active: Tensor) -> Tensor:
        B, D = x.shape
        if self.Y is None:
            self._allocate(x)
        Y, G, P, m = self.Y, self.G, self.P, self.m
        assert Y is not None and G is not None and P is not None and self.out is not None
        slot, scratch = self.k % m, m + self.k % 2  # scratch: the row of G that holds x
        out = self.out[self.k % 2]
        self.k += 1
        n = min(self.k, m)
        torch.sub(gx, x, out=G[:, slot])
        y = Y[:, slot]
        if self.beta == 1.0:
            if not _same_view(gx, y):
                y.copy_(gx)
        else:
            torch.add(x, G[:, slot], alpha=self.beta, out=y)
        if self.kind == "I" and not _same_view(x, G[:, scratch]):
            G[:, scratch].copy_(x)
        # [g; x] as one (B, 2, D) operand: rows `slot` and `scratch` of G, a fixed stride apart
        gx_rows = G.as_strided(
            (B, 2, D), (G.stride(0), (scratch - slot) * D, 1), G.storage_offset() + slot * D
        )
        weights = x.new_empty(B, n)
        c = self.chunk_size(x)
        for s in range(0, B, c):
            sl = slice(s, min(B, s + c))
            weights[sl] = self._chunk(sl, slot, n, gx_rows[sl], out[sl])
        self.weights = weights
        return out

    def _chunk(self, sl: slice, slot: int, n: int, gx_rows: Tensor, out: Tensor) -> Tensor:
        """One chunk of samples: P's new row and column, then alpha, then the mix into ``out``."""
        assert self.Y is not None and self.G is not None and self.P is not None
        Y, G, P = self.Y[sl], self.G[sl], self.P[sl]
        if self.kind == "II":
            row = torch.bmm(gx_rows[:, :1], G[:, :n].transpose(1, 2))[:, 0]  # g . g_j: one read of G
            P[:, slot, :n] = row
            P[:, :n, slot] = row
        else:  # P_ij = x_i . g_j, with x_i = y_i - beta g_i: one read of G and one of Y
            gg_xg = torch.bmm(gx_rows, G[:, :n].transpose(1, 2))  # (b, 2, n): g . g_j, x . g_j
            yg = torch.bmm(gx_rows[:, :1], Y[:, :n].transpose(1, 2))[:, 0]  # g . y_i
            P[:, slot, :n] = gg_xg[:, 1]
            P[:, :n, slot] = yg - self.beta * gg_xg[:, 0]
        if n == 1:  # a plain step; H's first entry is kept for the next steps
            out.copy_(Y[:, slot])
            return torch.ones_like(P[:, 0, :1])
        H = P[:, :n, :n]
        if self.kind == "I":
            H = H - P[:, slot : slot + 1, :n]  # (x_i - x) . g_j
        host = H.device.type == "cpu"
        if self.lam > 0:
            alpha, bad = _ridge_weights(H, self.lam)
        else:
            alpha, bad = _bordered_weights(H)
            if not host or bool(bad.any()):  # no host sync on a GPU: retry unconditionally there
                reg = torch.eye(n, dtype=H.dtype, device=H.device)
                if self.kind == "I":  # centred (X G^T + lam I): lam (I - 1 e_slot^T)
                    reg[:, slot] -= 1.0
                retry, still = _bordered_weights(H + self.FALLBACK_LAM * reg)
                alpha = torch.where(bad[:, None], retry, alpha)
                if host:
                    self.fallbacks[0] += int(bad.sum())
                bad = bad & still
        if not host or bool(bad.any()):  # no host sync on a GPU
            if host:
                self.fallbacks[1] += int(bad.sum())
            plain = torch.zeros_like(alpha)
            plain[:, slot] = 1.0
            alpha = torch.where(bad[:, None], plain, alpha)
        torch.bmm(alpha.unsqueeze(1), Y[:, :n], out=out.unsqueeze(1))  # sum_i alpha_i y_i: one read of Y
        return alpha


def _same_view(a: Tensor, b: Tensor) -> bool:
    """Whether ``a`` and ``b`` are the same elements (same memory, shape and strides)."""
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()


def _ridge_weights(H: Tensor, lam: float) -> tuple[Tensor, Tensor]:
    """``alpha = s / sum(s)``, ``(H + lam max|H| I) s = 1``, per sample; and where it failed."""
    Hr = H.clone()
    scale = H.abs().amax(dim=(1, 2), keepdim=True).squeeze(2)
    Hr.diagonal(dim1=1, dim2=2).add_(lam * scale + torch.finfo(H.dtype).tiny)
    sol, info = torch.linalg.solve_ex(Hr, torch.ones_like(Hr[:, :, :1]))
    alpha = sol[:, :, 0] / sol[:, :, 0].sum(dim=1, keepdim=True)
    return alpha, (info != 0) | ~torch.isfinite(alpha).all(dim=1)


def _bordered_weights(H: Tensor) -> tuple[Tensor, Tensor]:
    """Solve ``[[0, 1^T], [1, H]] [-c; alpha] = [1; 0]`` per sample: ``sum(alpha) = 1`` and
    ``H alpha = c 1``. Returns ``alpha`` ``(B, n)`` and where the solve failed.

    Example (H = diag(1, 2): alpha proportional to (1, 1/2)):
        >>> import torch
        >>> H = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]], dtype=torch.float64)
        >>> alpha, failed = _bordered_weights(H)
        >>> [round(a, 12) for a in alpha[0].tolist()], bool(failed[0])
        ([0.666666666667, 0.333333333333], False)
    """
    B, n, _ = H.shape
    K = H.new_zeros(B, n + 1, n + 1)
    K[:, 0, 1:] = 1.0
    K[:, 1:, 0] = 1.0
    K[:, 1:, 1:] = H
    rhs = H.new_zeros(B, n + 1, 1)
    rhs[:, 0] = 1.0
    sol, info = torch.linalg.solve_ex(K, rhs)
    alpha = sol[:, 1:, 0]
    return alpha, (info != 0) | ~torch.isfinite(alpha).all(dim=1)


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
    solver: str, *, m: int, lam: float = 1e-5, beta: float = 1.0, kind: str = "II", copy: bool = True
) -> AndersonMixer | BroydenMixer | DampedMixer:
    """The mixer for a solver name, one of :data:`~jiio_core.config.SOLVERS`.
    ``copy=False``: the caller owns ``g(x)`` and takes strided iterates (DampedMixer's
    ``copy``, AndersonMixer's ``out_in_history``)."""
    if solver == "anderson":
        return AndersonMixer(m=m, lam=lam, beta=beta, kind=kind, out_in_history=not copy)
    if solver == "broyden":
        return BroydenMixer(m=m)
    if solver == "fixed_point":
        return DampedMixer(beta=beta, copy=copy)
    choices = ", ".join(repr(s) for s in SOLVERS[:-1]) + f" or {SOLVERS[-1]!r}"
    raise ValueError(f"solver must be {choices}, got {solver!r}")
