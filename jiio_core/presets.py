"""Named JIIO settings: the paper code's, and those that the project's solver sweeps found.

A preset is a base (one of :meth:`JIIOConfig.paper`'s tasks) plus the fields that differ
from it, and the measurement that justifies it (``source``: the sweep and the bench run, in
``docs/benchmarks.md``). :func:`preset` builds the :class:`JIIOConfig`; ``JIIOConfig.preset``
is the same function. Defined in :mod:`jiio_core.config` (beside :class:`JIIOConfig`, which
they build), re-exported here. Pure data: no file is read.

Example:
    >>> from jiio_core import JIIOConfig
    >>> JIIOConfig.preset("paper-mnist-adversarial") == JIIOConfig.paper("mnist_adversarial")
    True
    >>> [name for name in sorted(PRESETS) if name.startswith("paper-")]
    ['paper-celeba-generative', 'paper-cifar-adversarial', 'paper-mnist-adversarial']
"""

from __future__ import annotations

from .config import PRESETS, Preset, preset

__all__ = ["PRESETS", "Preset", "preset"]
