"""Command lines: what a user types, parsed and checked, handed to the driver or analysis.

``jiio`` (:mod:`orchestrator.cli`) dispatches to :mod:`~orchestrator.commands.train`
(``jiio train``), :mod:`~orchestrator.commands.confirm` (``jiio confirm``) and
:mod:`~orchestrator.commands.export` (``jiio export``); the sweep scripts in ``sweeps/``
call :func:`orchestrator.commands.sweep.main` (flags in
:mod:`~orchestrator.commands.sweep_flags`, the closing analysis in
:mod:`~orchestrator.commands.sweep_analysis`). Flags are read before anything heavy is
imported, so ``--help`` and a bad flag answer at once.
"""

__all__: list[str] = []
