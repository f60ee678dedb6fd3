"""Training tasks that trials run: adversarial, generative, inverse problems. No Ray here."""

from .common import (
    MODES,
    TASKS,
    StepOutcome,
    TaskConfig,
    TaskResult,
    Trainer,
    backward_stats,
    jacobian_penalty,
    jiio_stats,
)

__all__ = [
    "MODES",
    "TASKS",
    "StepOutcome",
    "TaskConfig",
    "TaskResult",
    "Trainer",
    "backward_stats",
    "jacobian_penalty",
    "jiio_stats",
]
