"""The numbers a training step or an evaluation reports, in the names the Parquet columns use.

What: the inner solve's statistics (:func:`jiio_stats`), which backward the outer gradient
took (:func:`backward_stats`), a mean metric with its per-sample values
(:func:`samples_metric`) and a solve's per-iteration trace (:func:`mean_trace`).
Why one module: every task and the solve trials report the same columns, so the analysis
can compare them across tasks and modes.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from jiio_core import JIIOResult

__all__ = ["backward_stats", "jiio_stats", "mean_trace", "samples_metric"]


def jiio_stats(res: JIIOResult, seconds: float) -> dict[str, float]:
    """The per-step solver stats every task reports (names are Parquet columns)."""
    return {
        "solver_iterations": float(res.iterations),
        "solver_converged": float(res.converged.float().mean()),
        "solver_diverged": float(res.diverged.float().mean()),
        "solver_residual": float(res.residual[~res.diverged].mean())
        if bool((~res.diverged).any())
        else math.inf,
        "solve_s": seconds,
    }


def backward_stats(res: JIIOResult) -> dict[str, float | str]:
    """Which backward the step's outer gradient took through ``res.z`` (Parquet columns).

    ``backward_mode``: "mu" (every sample reused mu*, paper eq. 19), "ift" / "jfb" (none
    did), "mixed" (some did), "none" (no gradient flowed through ``res.z``);
    ``backward_mu_frac``: the fraction of samples that reused mu*; ``backward_residual``:
    the largest relative residual of the backward's solution (NaN for JFB or none);
    ``backward_iterations``: of the backward solve (0 without one).

    Example (3 iterations: mu* has not converged, so the outer gradient solves):
        >>> from jiio_core import JIIOConfig, jiio_solve
        >>> w = torch.tensor(0.5, requires_grad=True)
        >>> res = jiio_solve(lambda z, x: w * z + x, lambda z: z.pow(2).sum(1), torch.ones(2, 1),
        ...                  config=JIIOConfig(max_iter=3, alpha_x=0.1))
        >>> backward_stats(res)["backward_mode"]    # nothing flowed back yet
        'none'
        >>> res.z.pow(2).sum().backward()
        >>> stats = backward_stats(res)
        >>> stats["backward_mode"], stats["backward_mu_frac"], stats["backward_residual"] <= 1e-5
        ('ift', 0.0, True)
    """
    b = res.backward
    return {
        "backward_mode": str(b.get("mode", "none")),
        "backward_mu_frac": float(b.get("mu_frac", math.nan)),
        "backward_residual": float(b.get("residual", math.nan)),
        "backward_iterations": float(b.get("iterations", 0)),
    }


def samples_metric(name: str, values: Tensor | list[Tensor]) -> dict[str, Any]:
    """``{name: mean, name + "_samples": per-sample values}`` for a mean metric (not a proportion).

    ``values``: per-sample values, one tensor or a list of per-batch tensors. The mean is
    that of the listed floats (NaN when there are none, or when one is NaN), so
    ``mean(out[name + "_samples"]) == out[name]`` holds for whoever reads the list back.

    Example:
        >>> samples_metric("test_psnr", [torch.tensor([20.0, 22.0]), torch.tensor([24.0])])
        {'test_psnr': 22.0, 'test_psnr_samples': [20.0, 22.0, 24.0]}
    """
    if isinstance(values, (list, tuple)):
        values = torch.cat([v.detach().reshape(-1).cpu() for v in values]) if values else torch.zeros(0)
    listed = [float(v) for v in values.detach().reshape(-1).cpu().double().tolist()]
    try:
        mean = math.fsum(listed) / len(listed) if listed else math.nan
    except (ValueError, OverflowError):  # inf - inf
        mean = math.nan
    return {name: mean, f"{name}_samples": listed}


def mean_trace(res: JIIOResult) -> dict[str, list[float]]:
    """Per-iteration batch means of a JIIO trace (what the traces table stores)."""
    return {k: [float(v) for v in t.mean(dim=1)] for k, t in res.trace.items()}
