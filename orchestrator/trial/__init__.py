"""What runs inside one trial, in a Ray Tune actor on a worker node.

:mod:`~orchestrator.trial.trainable` is the function Tune calls; it runs a training trial
(:mod:`~orchestrator.trial.train`, on several Ray Train workers with
:mod:`~orchestrator.trial.data_parallel`) or a solve trial (:mod:`~orchestrator.trial.solve`),
with the sweep's settings that every trial carries (:mod:`~orchestrator.trial.meta`).
A trial writes its rows, checkpoints and record to the store itself
(:mod:`orchestrator.storage`); the driver (:mod:`orchestrator.driver`) never waits on them.
"""

__all__: list[str] = []
