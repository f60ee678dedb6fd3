"""Training tasks that trials run: adversarial, generative, inverse problems. No Ray here.

Modules: :mod:`~orchestrator.tasks.task_config` (the validated run config),
:mod:`~orchestrator.tasks.trainer` (the shared training loop),
:mod:`~orchestrator.tasks.data_parallel_step` (its averaged step across ranks),
:mod:`~orchestrator.tasks.step_metrics` (what steps and evaluations report),
:mod:`~orchestrator.tasks.jacobian` (the Jacobian regulariser),
:mod:`~orchestrator.tasks.model_sizes` (the MDEQ sizes), the tasks themselves
(:mod:`~orchestrator.tasks.adversarial`, :mod:`~orchestrator.tasks.generative`,
:mod:`~orchestrator.tasks.inverse`) and :mod:`~orchestrator.tasks.registry` (which runs which).
"""

from .jacobian import jacobian_penalty
from .model_sizes import mdeq_config
from .step_metrics import backward_stats, jiio_stats, mean_trace, samples_metric
from .task_config import MODES, TASKS, TaskConfig
from .trainer import Callback, StepOutcome, TaskResult, Trainer

__all__ = [
    "MODES",
    "TASKS",
    "Callback",
    "StepOutcome",
    "TaskConfig",
    "TaskResult",
    "Trainer",
    "backward_stats",
    "jacobian_penalty",
    "jiio_stats",
    "mdeq_config",
    "mean_trace",
    "samples_metric",
]
