"""Which Trainer runs which task: the one place that maps a ``TaskConfig.task`` to its class.

Example:
    >>> from orchestrator.data import DataConfig, load_dataset
    >>> from orchestrator.tasks import TaskConfig
    >>> cfg = TaskConfig.from_flat({"task": "adversarial", "mode": "clean"})
    >>> data = load_dataset(DataConfig(dataset="digits", limit_train=16, limit_test=8))
    >>> type(make_trainer(cfg, data)).__name__
    'AdversarialTrainer'
"""

from __future__ import annotations

from orchestrator.data import DatasetSplits
from orchestrator.tasks.task_config import TaskConfig

__all__ = ["make_trainer"]


def make_trainer(config: TaskConfig, data: DatasetSplits):
    """The Trainer subclass for ``config.task``, built on ``data`` (a ``DatasetSplits``)."""
    if config.task == "adversarial":
        from orchestrator.tasks.adversarial import AdversarialTrainer

        return AdversarialTrainer(config, data)
    if config.task == "generative":
        from orchestrator.tasks.generative import GenerativeTrainer

        return GenerativeTrainer(config, data)
    from orchestrator.tasks.inverse import InverseTrainer

    return InverseTrainer(config, data)
