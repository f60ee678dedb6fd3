"""jiio_core: fixed-point solvers, DEQ layers and JIIO (joint inference and input optimisation).

Pure PyTorch: no Ray, no file I/O. The public contract is this package's ``__all__``;
docs/architecture.md places it in the project.

Example:
    >>> import torch
    >>> from jiio_core import JIIOConfig, jiio_solve, l2_ball
    >>> f = lambda z, x: 0.5 * z + x                         # z*(x) = 2 x
    >>> loss = lambda z: ((z - 4.0) ** 2).sum(1)              # wants x = 2: outside ...
    >>> x0 = torch.zeros(2, 3, dtype=torch.float64)
    >>> res = jiio_solve(f, loss, x0, config=JIIOConfig(alpha_x=0.1, tol=1e-9, max_iter=300),
    ...                  project=l2_ball(torch.zeros(2, 3, dtype=torch.float64), 1.0))
    >>> round(float(res.x.norm(dim=1).max()), 6)              # ... so x* is on the unit ball
    1.0
"""

from .baselines import AttackStats, LatentStats, adam_latent, pgd_attack
from .config import SOLVERS, DEQConfig, JIIOConfig
from .deq import DEQ, DEQInfo
from .implicit import attach_implicit_grad
from .jiio import JIIOResult, jiio_solve, l2_ball
from .models import ClassifierHead, ImageHead, MDEQCell, MDEQConfig, count_parameters
from .presets import PRESETS, Preset, preset
from .solvers import SolverResult, anderson, batch_norm, broyden, fixed_point, solve
from .warm_baselines import (
    WarmGrad,
    WarmSettings,
    WarmStats,
    adam_latent_warm,
    pgd_attack_warm,
    warm_input_grad,
)

__all__ = [
    "DEQ",
    "PRESETS",
    "SOLVERS",
    "AttackStats",
    "ClassifierHead",
    "DEQConfig",
    "DEQInfo",
    "ImageHead",
    "JIIOConfig",
    "JIIOResult",
    "LatentStats",
    "MDEQCell",
    "MDEQConfig",
    "Preset",
    "SolverResult",
    "WarmGrad",
    "WarmSettings",
    "WarmStats",
    "adam_latent",
    "adam_latent_warm",
    "anderson",
    "attach_implicit_grad",
    "batch_norm",
    "broyden",
    "count_parameters",
    "fixed_point",
    "jiio_solve",
    "l2_ball",
    "pgd_attack",
    "pgd_attack_warm",
    "preset",
    "solve",
    "warm_input_grad",
]
