"""Fixed-point solvers on a generic batched map ``g``: Anderson, Broyden, damped iteration.

Each solver finds ``x* = g(x*)`` for a batch (dim 0) of independent problems of any
trailing shape, and stops each sample on its own: a sample whose residual reached ``tol``
stops changing while the others go on; a sample whose residual becomes non-finite or
explodes is flagged ``diverged`` and returned at its last good iterate (never NaN).

``g`` is called under ``torch.no_grad()``; a map that needs autograd inside (a
vector-Jacobian product) turns it back on itself. The solvers are not differentiable:
use :class:`jiio_core.DEQ` for implicit gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .mixers import AndersonMixer, BroydenMixer, DampedMixer

__all__ = ["SolverResult", "anderson", "batch_norm", "broyden", "fixed_point", "solve"]


@dataclass
class SolverResult:
    """What a fixed-point solve found, per sample where it says so.

    ``iterations`` counts evaluations of ``g``; ``nstep`` counts, per sample, the
    evaluations until that sample stopped. ``trace_abs`` / ``trace_rel`` have shape
    ``(iterations, B)``: the absolute and relative residual of each sample at each
    evaluation (a stopped sample repeats its last value).
    """

    x: Tensor
    iterations: int
    nstep: Tensor
    converged: Tensor
    diverged: Tensor
    abs_residual: Tensor
    rel_residual: Tensor
    trace_abs: Tensor
    trace_rel: Tensor


def batch_norm(t: Tensor) -> Tensor:
    """Per-sample L2 norm of a batched tensor: shape ``(B,)``."""
    return t.reshape(t.shape[0], -1).norm(dim=1)


def forward_fill(values: Tensor, ok: Tensor, fill: float = float("inf")) -> Tensor:
    """Trace of per-iteration ``values`` ``(T, ..., B)`` where entries with ``ok`` ``(T, B)``
    False repeat the last ok value of that sample (``fill`` before its first one)."""
    T = ok.shape[0]
    steps = torch.arange(T, device=ok.device).view(T, 1).expand_as(ok)
    last = torch.where(ok, steps, torch.full_like(steps, -1)).cummax(dim=0).values
    index = last.clamp_min(0).view((T,) + (1,) * (values.dim() - 2) + (-1,)).expand_as(values)
    filled = values.gather(0, index)
    seen = (last >= 0).view(index.shape[:1] + (1,) * (values.dim() - 2) + index.shape[-1:])
    return torch.where(seen, filled, torch.full_like(filled, fill))


def solve(
    g: Callable[[Tensor], Tensor],
    x0: Tensor,
    mixer: AndersonMixer | BroydenMixer | DampedMixer,
    *,
    max_iter: int = 50,
    tol: float = 1e-5,
    stop_mode: str = "rel",
    divergence_factor: float = 1e4,
) -> SolverResult:
    """Run the fixed-point iteration of ``g`` from ``x0``, accelerated by ``mixer``.

    Stops a sample when its residual (``stop_mode`` "rel": ``|g(x)-x| / |g(x)|``,
    "abs": ``|g(x)-x|``) is at most ``tol``; ``tol=0`` runs all ``max_iter`` steps.
    A sample diverges when its residual or ``|g(x)|`` is non-finite or exceeds
    ``divergence_factor`` times the larger of its first residual and ``|g(x0)|``.
    """
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    if stop_mode not in ("rel", "abs"):
        raise ValueError(f"stop_mode must be 'rel' or 'abs', got {stop_mode!r}")
    shape, B = x0.shape, x0.shape[0]
    tiny = torch.finfo(x0.dtype).tiny
    host = x0.device.type == "cpu"  # see jiio_solve: no host syncs per step on a GPU
    with torch.no_grad():
        x = x0.detach().reshape(B, -1).clone()
        x_prev = x
        converged = torch.zeros(B, dtype=torch.bool, device=x.device)
        diverged = torch.zeros_like(converged)
        limit: Tensor | None = None
        raw: list[Tensor] = []
        oks: list[Tensor] = []
        for k in range(max_iter):
            gx = g(x.view(shape)).reshape(B, -1)
            a, gn = (gx - x).norm(dim=1), gx.norm(dim=1)
            rel = a / (gn + tiny)
            active = ~(converged | diverged)
            if limit is None:
                limit = divergence_factor * torch.maximum(a, gn).nan_to_num(0.0) + tiny
            bad = active & ~((a <= limit) & (gn <= limit))  # also catches NaN
            if not host or bool(bad.any()):
                x = torch.where(bad[:, None], x_prev, x)
                diverged |= bad
            ok = active & ~bad
            converged |= ok & ((rel if stop_mode == "rel" else a) <= tol)
            raw.append(torch.stack([a, rel]))
            oks.append(ok)
            if k == max_iter - 1:
                break
            active = ~(converged | diverged)
            all_active = host and bool(active.all())
            if (host or k % 8 == 7) and not (all_active or bool(active.any())):
                break
            x_next = mixer.step(x, gx, active)
            x_prev = x
            x = x_next if all_active else torch.where(active[:, None], x_next, x)
        ok_t = torch.stack(oks)
        trace = forward_fill(torch.stack(raw), ok_t)
    return SolverResult(
        x=x.view(shape),
        iterations=len(raw),
        nstep=ok_t.sum(0),
        converged=converged,
        diverged=diverged,
        abs_residual=trace[-1, 0],
        rel_residual=trace[-1, 1],
        trace_abs=trace[:, 0],
        trace_rel=trace[:, 1],
    )


def anderson(
    g: Callable[[Tensor], Tensor],
    x0: Tensor,
    *,
    m: int = 5,
    lam: float = 1e-5,
    beta: float = 1.0,
    kind: str = "II",
    max_iter: int = 50,
    tol: float = 1e-5,
    stop_mode: str = "rel",
    divergence_factor: float = 1e4,
) -> SolverResult:
    """Anderson acceleration (memory ``m``, relative regularisation ``lam``, damping ``beta``).

    Example:
        >>> import torch
        >>> A = torch.tensor([[0.5, 0.2], [0.1, 0.3]], dtype=torch.float64)
        >>> b = torch.tensor([1.0, 2.0], dtype=torch.float64)
        >>> res = anderson(lambda x: x @ A.T + b, torch.zeros(3, 2, dtype=torch.float64), tol=1e-12)
        >>> bool(torch.allclose(res.x[0], torch.linalg.solve(torch.eye(2) - A, b)))
        True
    """
    mixer = AndersonMixer(m=m, lam=lam, beta=beta, kind=kind)
    return solve(
        g,
        x0,
        mixer,
        max_iter=max_iter,
        tol=tol,
        stop_mode=stop_mode,
        divergence_factor=divergence_factor,
    )


def broyden(
    g: Callable[[Tensor], Tensor],
    x0: Tensor,
    *,
    m: int | None = None,
    max_iter: int = 50,
    tol: float = 1e-5,
    stop_mode: str = "rel",
    divergence_factor: float = 1e4,
) -> SolverResult:
    """Limited-memory Broyden's ("good") method on ``g(x) - x = 0``; memory ``m`` (default: ``max_iter``).

    Example:
        >>> import torch
        >>> res = broyden(lambda x: 0.5 * torch.cos(x), torch.zeros(2, 1, dtype=torch.float64), tol=1e-12)
        >>> round(float(res.x[0, 0]), 6)
        0.450184
    """
    mixer = BroydenMixer(m=m if m is not None else max_iter)
    return solve(
        g,
        x0,
        mixer,
        max_iter=max_iter,
        tol=tol,
        stop_mode=stop_mode,
        divergence_factor=divergence_factor,
    )


def fixed_point(
    g: Callable[[Tensor], Tensor],
    x0: Tensor,
    *,
    beta: float = 1.0,
    max_iter: int = 50,
    tol: float = 1e-5,
    stop_mode: str = "rel",
    divergence_factor: float = 1e4,
) -> SolverResult:
    """Damped fixed-point iteration ``x+ = (1 - beta) x + beta g(x)``.

    Example:
        >>> import torch
        >>> res = fixed_point(lambda x: 0.5 * x + 1.0, torch.zeros(4, 3), tol=1e-6, max_iter=100)
        >>> bool(torch.allclose(res.x, torch.full((4, 3), 2.0), atol=1e-5))
        True
    """
    return solve(
        g,
        x0,
        DampedMixer(beta=beta),
        max_iter=max_iter,
        tol=tol,
        stop_mode=stop_mode,
        divergence_factor=divergence_factor,
    )
