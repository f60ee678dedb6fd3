"""The sweep driver: the process that runs a sweep, on the machine where it is started.

It plans what is left to run from the store (:mod:`~orchestrator.driver.state`), holds the
sweep's lock, and runs one Ray Tune experiment of the missing trials
(:mod:`~orchestrator.driver.sweep`, :mod:`~orchestrator.driver.tuner`), with the
searcher (:mod:`~orchestrator.driver.search`, :mod:`~orchestrator.driver.space`), the
background writer of its decisions (:mod:`~orchestrator.driver.background_writes`), the
live console (:mod:`~orchestrator.driver.console`), the cluster's settings
(:mod:`~orchestrator.driver.cluster_settings`), the fixed model of a solve sweep
(:mod:`~orchestrator.driver.fixed_model`) and the command hints it prints
(:mod:`~orchestrator.driver.hints`). Trials run elsewhere: :mod:`orchestrator.trial`.
Modules are imported one by one (Ray and torch only where a sweep runs).
"""

__all__: list[str] = []
