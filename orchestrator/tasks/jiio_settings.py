"""The paper code's JIIO settings for each task: what ``jiio train`` and the sweeps start from.

Why here: the settings belong to the tasks (which preset a task's inner problem uses), not
to the command lines that read them; ``jiio train``, ``sweeps/alpha.py`` and
``sweeps/solver.py`` all take them from this one function.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jiio_core import JIIOConfig

__all__ = ["paper_jiio"]


def paper_jiio(task: str, dataset: str) -> JIIOConfig:
    """The JIIO settings of the paper's released code (:meth:`jiio_core.JIIOConfig.paper`)
    for a task and dataset: the adversarial presets by dataset, the generative one for the
    latent tasks (generative, inpainting, denoising).

    Example:
        >>> paper_jiio("adversarial", "digits") == paper_jiio("adversarial", "mnist")
        True
    """
    from jiio_core import JIIOConfig

    if task == "adversarial":
        return JIIOConfig.paper("cifar_adversarial" if dataset == "cifar10" else "mnist_adversarial")
    return JIIOConfig.paper("celeba_generative")
