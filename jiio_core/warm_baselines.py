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

One step's gradient is :func:`~jiio_core.warm_solve.warm_input_grad` (its solve settings
one frozen :class:`~jiio_core.warm_solve.WarmSettings`). Parameters' ``.grad`` are never
touched. With both warm starts off and an exact backward, the iterates equal the cold
baseline's (tested).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from .warm_solve import (
    WarmGrad,
    WarmSettings,
    cell_maps,
    finite_at_least,
    initial_state,
    int_at_least,
    require,
    solve_forward,
    warm_input_grad,
)

__all__ = [
    "WarmGrad",
    "WarmSettings",
    "WarmStats",
    "adam_latent_warm",
    "pgd_attack_warm",
    "warm_input_grad",
]

Cell = Callable[[Tensor, Tensor], Tensor]
StepSize = float | Sequence[float] | Callable[[int], float]


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


def _run(
    cell: Cell,
    loss: Callable[[Tensor], Tensor],
    x_first: Tensor,
    update: Callable[[Tensor, float], Tensor],
    sizes: list[float],
    o: WarmSettings,
    z0: Tensor | None,
    warm: tuple[bool, bool],
    record_iterates: bool,
    callback: Callable[[int, Tensor], None] | None,
) -> tuple[Tensor, WarmStats]:
    """The loop both baselines share: gradient at ``x_t``, ``x_{t+1} = update(grad, size)``."""
    z_cold = initial_state(cell, x_first) if z0 is None else z0.detach()
    z_w, u_w, x_t = z_cold, None, x_first
    st = WarmStats(step_loss=[], final_loss=x_first.new_zeros(0), steps=len(sizes))
    for t, size in enumerate(sizes):
        wg = warm_input_grad(cell, loss, x_t, z0=z_w, u0=u_w, settings=o)
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
        st.final_loss = loss(solve_forward(cell_maps(cell, x_t)[0], z_w, o).x).detach()
    return x_t, st


def _bnorm(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1).norm(dim=1).view((-1,) + (1,) * (t.dim() - 1))


def _step_sizes(step_size: StepSize, steps: int) -> list[float]:
    if callable(step_size):
        sizes = [step_size(t) for t in range(steps)]
    elif isinstance(step_size, Sequence):
        sizes = list(step_size)
        require(len(sizes) == steps, f"step_size schedule has {len(sizes)} entries for steps={steps}")
    else:
        sizes = [step_size] * steps
    for t, a in enumerate(sizes):
        require(
            finite_at_least(a, 0, strict=True),
            f"step_size must be a finite number > 0, got {a!r} at step {t}",
        )
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
    settings: WarmSettings | None = None,
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
    :func:`warm_input_grad` with the solve keywords, or ``settings`` (a
    :class:`WarmSettings`) in their place; ``warm_forward`` / ``warm_backward`` off start every step
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
    require(finite_at_least(eps, 0, strict=False), f"eps must be a finite number >= 0, got {eps!r}")
    require(int_at_least(steps, 1), f"steps must be an int >= 1, got {steps!r}")
    require(
        clip is None or (len(clip) == 2 and clip[0] < clip[1]),
        f"clip must be None or (lo, hi), lo < hi; got {clip!r}",
    )
    sizes = _step_sizes(step_size, steps)
    o = settings or WarmSettings(
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
    settings: WarmSettings | None = None,
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
    require(int_at_least(steps, 1), f"steps must be an int >= 1, got {steps!r}")
    require(finite_at_least(lr, 0, strict=True), f"lr must be a finite number > 0, got {lr!r}")
    o = settings or WarmSettings(
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
