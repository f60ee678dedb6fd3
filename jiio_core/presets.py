"""Named JIIO settings: the paper code's, and those that the project's solver sweeps found.

A preset is a base (one of :meth:`JIIOConfig.paper`'s tasks) plus the fields that differ
from it, and the measurement that justifies it (``source``: the sweep and the bench run, in
``docs/benchmarks.md``). :func:`preset` builds the :class:`JIIOConfig`; ``JIIOConfig.preset``
is the same function. Pure data: no file is read.

Example:
    >>> from jiio_core import JIIOConfig
    >>> JIIOConfig.preset("paper-mnist-adversarial") == JIIOConfig.paper("mnist_adversarial")
    True
    >>> [name for name in sorted(PRESETS) if name.startswith("paper-")]
    ['paper-celeba-generative', 'paper-cifar-adversarial', 'paper-mnist-adversarial']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .config import JIIOConfig

__all__ = ["PRESETS", "Preset", "preset"]


@dataclass(frozen=True)
class Preset:
    """``base``: a :meth:`JIIOConfig.paper` task; ``changes``: fields set on top of it;
    ``source``: where the settings come from and what was measured."""

    base: str
    changes: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def config(self) -> JIIOConfig:
        return JIIOConfig.paper(self.base).replace(**self.changes)


_PAPER = "the paper's released code (JIIO, Gurumurthy et al., NeurIPS 2021)"

PRESETS: dict[str, Preset] = {
    "paper-mnist-adversarial": Preset("mnist_adversarial", source=_PAPER),
    "paper-cifar-adversarial": Preset("cifar_adversarial", source=_PAPER),
    "paper-celeba-generative": Preset("celeba_generative", source=_PAPER),
    # Pareto front of sweeps/solver.py --name solver-adv-pgd (48 trials) on the PGD-trained
    # tiny digits MDEQ, trial 89458b723fdb; re-measured with benchmarks/solver_front.py and on
    # the JIIO-trained model it was not found on (docs/benchmarks.md, "The headline").
    "adversarial-fast": Preset(
        "mnist_adversarial",
        dict(
            anderson_m=7,
            max_iter=36,
            alpha_z=0.6708,
            alpha_mu=0.7972,
            alpha_x=0.6498,
            init="cell_step",
            anderson_type="I",
        ),
        source="sweeps/solver.py solver-adv-pgd trial 89458b723fdb (docs/benchmarks.md): 2.7x faster "
        "than the paper's JIIO-80 at 0.3% lower attack cross-entropy, PGD-19's strength",
    ),
    # Pareto front of sweeps/solver.py --task generative --name solver-gen-jiio on the tiny
    # digits MDEQ decoder trained with JIIO in the loop, trial 7b5f0abc1658.
    "generative-fast": Preset(
        "celeba_generative",
        dict(
            anderson_m=5,
            max_iter=49,
            alpha_z=0.2953,
            alpha_mu=0.7599,
            alpha_x=0.004982,
            init="cell_step",
            anderson_type="I",
        ),
        source="sweeps/solver.py solver-gen-jiio trial 7b5f0abc1658 (docs/benchmarks.md): 3x faster "
        "than the paper's JIIO-100 at 44% lower reconstruction loss; Adam-25's loss 10x faster",
    ),
}


def preset(name: str) -> JIIOConfig:
    """The :class:`JIIOConfig` of the preset ``name`` (see :data:`PRESETS`).

    Example:
        >>> preset("paper-celeba-generative").alpha_x
        0.01
    """
    if name not in PRESETS:
        raise ValueError(f"unknown JIIO preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return PRESETS[name].config()
