"""The MDEQ sizes a task can train: ``"tiny"`` (fast, for tests and CPU sweeps) or the paper's.

What: :func:`mdeq_config` maps ``TaskConfig.model_size`` and a dataset's image shape to an
:class:`~jiio_core.MDEQConfig`. Why one place: the tasks, the benchmarks and the bench
command must build the same network for a checkpoint to load.
"""

from __future__ import annotations

from jiio_core import MDEQConfig

__all__ = ["mdeq_config"]


def mdeq_config(model_size: str, image_size: int, channels: int, latent_dim: int | None = None) -> MDEQConfig:
    """The MDEQ for a dataset: "tiny" (8/16 channels, 2 branches) or the paper's sizes.

    Paper: classifiers 2 branches x 24 channels at (s, s/2); decoders (latent injected)
    4 branches [32, 64, 128, 256] at (s, s/2, s/4, s/8).
    """
    if model_size == "tiny":
        return MDEQConfig(
            channels=(8, 16),
            resolutions=(image_size, image_size // 2),
            in_channels=channels,
            latent_dim=latent_dim,
        )
    if latent_dim is None:
        return MDEQConfig(channels=(24, 24), resolutions=(image_size, image_size // 2), in_channels=channels)
    res = tuple(max(1, image_size // 2**i) for i in range(4))
    return MDEQConfig(
        channels=(32, 64, 128, 256), resolutions=res, in_channels=channels, latent_dim=latent_dim
    )
