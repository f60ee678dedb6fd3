"""Data-parallel training: one averaged optimiser step per batch on every rank.

What: :class:`AveragedStepOptimizer` stands in for a task's optimiser when the Trainer runs
in a ``torch.distributed`` process group of more than one rank. A task's ``step()`` only
records that this rank wants to step; after the batch :meth:`~AveragedStepOptimizer.all_reduce_step`
averages the gradients of the ranks that stepped and takes the real step, once, on every
rank. Everything else (``zero_grad``, ``param_groups``, ``state_dict``...) is the wrapped
optimiser's.

Why a wrapper rather than replacing ``optimizer.step``: the learning-rate scheduler wraps
the real optimiser's ``step`` to check that it runs before ``scheduler.step()``; leaving that
method alone keeps the check (and its warning on a first step that made no update) exactly
as in a single process, with no torch-internal attribute set here. Nothing here imports Ray.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["AveragedStepOptimizer", "broadcast_parameters", "world_size"]


def world_size() -> int:
    """The number of ranks of the initialised ``torch.distributed`` group (1 without one)."""
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def broadcast_parameters(params: list[nn.Parameter]) -> None:
    """Copy rank 0's parameter values to every rank, so all ranks start from the same model."""
    for p in params:
        torch.distributed.broadcast(p.data, 0)


class AveragedStepOptimizer:
    """A task's optimiser under data parallelism: ``step()`` defers, the average steps.

    ``optimizer``: the real optimiser (the one the scheduler and the checkpoints use);
    ``world``: the number of ranks; ``device``: where the collective's flags live.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, world: int, device: torch.device) -> None:
        self.optimizer, self.world, self.device = optimizer, world, device
        self.wants_step = False

    def __getattr__(self, name: str) -> Any:
        """Everything but ``step`` is the real optimiser's (``zero_grad``, ``param_groups``...)."""
        if name == "optimizer":  # not set yet (a copy being built): no recursion
            raise AttributeError(name)
        return getattr(self.optimizer, name)

    def step(self, *args: Any, **kwargs: Any) -> None:
        """Record that this rank's task stepped; the averaged step comes after the batch."""
        self.wants_step = True

    def all_reduce_step(self, diverged: bool) -> bool:
        """Average the gradients of the ranks that stepped, then step once, on every rank.

        Every rank reaches this after every batch, so no collective can hang; a rank whose
        step diverged (or that did not step) contributes zero gradients and is not counted
        in the average. Returns whether the step counts as diverged: when more than half of
        the ranks' did.
        """
        dist = torch.distributed
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        for p in params:
            if p.grad is None or diverged or not self.wants_step:
                p.grad = torch.zeros_like(p)
        flags = torch.tensor([float(diverged), float(self.wants_step and not diverged)], device=self.device)
        dist.all_reduce(flags)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat)
        if flags[1] > 0:
            offset = 0
            for p in params:
                p.grad.copy_(flat[offset : offset + p.numel()].view_as(p) / flags[1])
                offset += p.numel()
            self.optimizer.step()
        self.wants_step = False
        return bool(flags[0] > self.world / 2)
