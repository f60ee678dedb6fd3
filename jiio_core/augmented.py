"""The augmented fixed-point map of JIIO (paper eq. 11) and the state of its iteration.

What: :class:`AugmentedMap` is ``F`` on the flat state ``v = (z, mu, x)`` with the
per-iteration bookkeeping (residuals, the kept iterate, divergence); :class:`LoopState` is
what an iteration carries to the next. Why a module of its own: the eager loop
(:func:`jiio_core.jiio_solve`) and the static, CUDA-graph one (:mod:`jiio_core.static_iteration`)
iterate the same map, and neither should reach into the other's internals.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .config import JIIOConfig

__all__ = ["TRACE_KEYS", "AugmentedMap", "LoopState", "Projection", "call_checked"]


#: a projection onto the feasible set of ``x``, batched on dim 0 (see :func:`jiio_core.l2_ball`)
Projection = Callable[[Tensor], Tensor]


TRACE_KEYS = ("z_residual", "mu_residual", "x_step", "residual", "objective")


def _norm(t: Tensor) -> Tensor:
    return t.norm(dim=1)


_STEP_EPS = 1e-8  # the normalised x step divides by |J_x^T mu| + 1e-8, as the paper code


_SELECT_EPS = 1e-5  # select="paper": rel = |F - X| / (1e-5 + |F|), as the paper code


_SELECT_WARMUP = 10  # select="paper": iterates k < 10 are always kept


def call_checked(f: Callable[[Tensor, Tensor], Tensor], z: Tensor, x: Tensor, guessed: bool) -> Tensor:
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
class LoopState:
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


class AugmentedMap:
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
            fz = call_checked(f, z_, x_, self.guessed) if k == 0 else f(z_, x_)
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

    def start(self, z0: Tensor, x0: Tensor) -> LoopState:
        B = self.B
        v = torch.cat(
            [z0.reshape(B, -1), torch.zeros(B, self.nz, dtype=x0.dtype, device=x0.device), x0.reshape(B, -1)],
            dim=1,
        )
        inf = torch.full((B,), float("inf"), dtype=v.dtype, device=v.device)
        stopped = torch.zeros(B, dtype=torch.bool, device=v.device)
        keep_v = v if self.cfg.select == "last" else v.clone()
        return LoopState(
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
        st: LoopState,
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
    def _keep(st: LoopState, take: Tensor, host: bool) -> None:
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
