"""The baselines JIIO is measured against: PGD on a DEQ classifier, Adam on a DEQ's latent.

Both treat the model as a black box whose every call is a full DEQ forward solve, and
whose gradient w.r.t. the input is a full implicit backward solve: that is what each
of their steps costs, and what JIIO's single augmented fixed point avoids.
Neither touches the model parameters' ``.grad``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["AttackStats", "LatentStats", "adam_latent", "pgd_attack"]


@dataclass
class AttackStats:
    """Per-step mean loss, and each sample's loss at the returned input."""

    step_loss: list[float]
    final_loss: Tensor
    steps: int


@dataclass
class LatentStats:
    """Per-step mean reconstruction loss, and each sample's loss at the returned latent."""

    step_loss: list[float]
    final_loss: Tensor
    steps: int


def _bnorm(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1).norm(dim=1).view((-1,) + (1,) * (t.dim() - 1))


def pgd_attack(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    *,
    eps: float = 1.0,
    step_size: float = 0.6,
    steps: int = 20,
    normalize: bool = True,
    random_start: bool = False,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, AttackStats]:
    """L2 PGD: maximise ``loss_fn(model(x'), y)`` over ``|x' - x|_2 <= eps`` per sample.

    Each step: one forward and one backward through ``model`` (for a DEQ classifier: a
    forward fixed-point solve and an implicit backward solve), a step along the
    gradient (L2-normalised per sample when ``normalize``), and projection on the ball.
    ``loss_fn(logits, y)`` must return per-sample losses; default cross-entropy.

    Example:
        >>> import torch
        >>> lin = torch.nn.Linear(3, 2)
        >>> x, y = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
        >>> x_adv, st = pgd_attack(lin, x, y, eps=0.5, step_size=0.2, steps=5)
        >>> bool(((x_adv - x).norm(dim=1) <= 0.5 + 1e-6).all())
        True
    """
    if not (eps >= 0 and step_size > 0 and math.isfinite(eps) and math.isfinite(step_size)):
        raise ValueError(f"need finite eps >= 0 and step_size > 0; got eps={eps}, step_size={step_size}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    loss_fn = loss_fn if loss_fn is not None else (lambda out, t: F.cross_entropy(out, t, reduction="none"))
    x = x.detach()
    delta = torch.zeros_like(x)
    if random_start:
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
        delta = noise / _bnorm(noise).clamp_min(1e-12) * eps
    history: list[float] = []
    for _ in range(steps):
        x_adv = (x + delta).requires_grad_(True)
        with torch.enable_grad():
            loss = loss_fn(model(x_adv), y)
            (grad,) = torch.autograd.grad(loss.sum(), x_adv)
        history.append(float(loss.detach().mean()))
        step = grad / _bnorm(grad).clamp_min(1e-12) if normalize else grad
        delta = delta + step_size * step
        delta = delta * torch.clamp(eps / _bnorm(delta).clamp_min(1e-12), max=1.0)
    x_adv = (x + delta).detach()
    with torch.no_grad():
        final = loss_fn(model(x_adv), y).detach()
    return x_adv, AttackStats(step_loss=history, final_loss=final, steps=steps)


def adam_latent(
    decoder: Callable[[Tensor], Tensor],
    target: Tensor,
    x0: Tensor,
    *,
    steps: int = 40,
    lr: float = 0.1,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> tuple[Tensor, LatentStats]:
    """Adam over the latent input ``x`` of a decoder: minimise ``loss_fn(decoder(x), target)``.

    Each step is one forward and one backward through the decoder (for a DEQ decoder:
    two fixed-point solves). ``loss_fn`` returns per-sample losses; default: the summed
    squared error per sample (the paper's generative objective). Samples are
    independent: Adam's update is elementwise.

    Example:
        >>> import torch
        >>> dec = torch.nn.Linear(2, 4)
        >>> target = dec(torch.tensor([[0.3, -0.2]])).detach()
        >>> x, st = adam_latent(dec, target, torch.zeros(1, 2), steps=200, lr=0.05)
        >>> float(st.final_loss[0]) < 1e-4
        True
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    loss_fn = (
        loss_fn if loss_fn is not None else (lambda out, t: (out - t).pow(2).reshape(out.shape[0], -1).sum(1))
    )
    x = x0.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    history: list[float] = []
    for _ in range(steps):
        with torch.enable_grad():
            loss = loss_fn(decoder(x), target)
            (grad,) = torch.autograd.grad(loss.sum(), x)
        history.append(float(loss.detach().mean()))
        x.grad = grad
        opt.step()
    x = x.detach()
    with torch.no_grad():
        final = loss_fn(decoder(x), target).detach()
    return x, LatentStats(step_loss=history, final_loss=final, steps=steps)
