"""Inverse problems (inpainting, denoising) with a DEQ decoder (paper eq. 21-24).

The measurement of a clean image ``y`` is ``y_hat = A y`` with ``A`` a pixel mask
(inpainting: a random square window zeroed) or ``y_hat = y + noise`` (denoising, mask all
ones). The inner problem finds the latent minimising the measurement loss
``|mask * (head(z*(x)) - y_hat)|^2`` (eq. 22); the reconstruction ``head(z*)`` is scored by
PSNR against the CLEAN image (Table 4 reports the median).

- Unsupervised (``supervised=False``, sec. 4.2.1): the decoder is trained as a generative
  model on clean images; only evaluation solves the inverse problem.
- Supervised (``supervised=True``, eq. 24): training solves the inner problem on the
  corrupted image and trains on the error against the clean one. That outer loss is not
  a multiple of the inner loss, so JIIO's backward is the IFT solve with ``x*`` fixed
  (reported as ``backward_mode`` "ift").

Example::

    cfg = TaskConfig(task="inpainting", mode="jiio", supervised=False)
    result, trainer = train_inverse(cfg, DataConfig("digits"))
    result.metrics["test_psnr_median"]
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from orchestrator.data import DataConfig, DatasetSplits, load_dataset
from orchestrator.tasks.generative import GenerativeTrainer
from orchestrator.tasks.task_config import TaskConfig
from orchestrator.tasks.trainer import Callback, TaskResult

__all__ = ["INVERSE_TASKS", "InverseTrainer", "corrupt", "inpainting_window", "train_inverse"]

INVERSE_TASKS = ("inpainting", "denoising")


def inpainting_window(size: int) -> int:
    """Side of the masked square: the paper's 20 px on 64 px images, scaled to ``size``."""
    return max(1, min(size, round(20 / 64 * size)))


def corrupt(
    images: Tensor, task: str, generator: torch.Generator | None = None, noise_sigma: float = 0.2
) -> tuple[Tensor, Tensor]:
    """Corrupt a batch ``(B, C, H, W)``; returns ``(corrupted, mask)``, mask 1 where observed.

    ``"inpainting"``: per image, a square window of side ``inpainting_window(H)`` at a
    random position fully inside the image is set to 0 (in every channel).
    ``"denoising"``: ``N(0, noise_sigma^2)`` noise added to every pixel (not clipped);
    the mask is all ones. Randomness comes from ``generator`` (a CPU generator), so the
    result depends on it alone, whatever the device of ``images``.

    Example:
        >>> imgs = torch.ones(2, 1, 16, 16)
        >>> bad, mask = corrupt(imgs, "inpainting", torch.Generator().manual_seed(0))
        >>> (bad == 0).flatten(1).sum(1).tolist()
        [25, 25]
    """
    if images.dim() != 4:
        raise ValueError(f"images must have shape (B, C, H, W), got {tuple(images.shape)}")
    B, _, H, W = images.shape
    if task == "denoising":
        if not noise_sigma >= 0:
            raise ValueError(f"noise_sigma must be >= 0, got {noise_sigma!r}")
        noise = torch.randn(images.shape, generator=generator, dtype=images.dtype)
        return images + noise_sigma * noise.to(images.device), torch.ones_like(images)
    if task != "inpainting":
        raise ValueError(f"task must be one of {INVERSE_TASKS}, got {task!r}")
    side = inpainting_window(min(H, W))
    top = torch.randint(0, H - side + 1, (B,), generator=generator)
    left = torch.randint(0, W - side + 1, (B,), generator=generator)
    rows, cols = torch.arange(H)[None, :], torch.arange(W)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + side)  # (B, H)
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + side)  # (B, W)
    hole = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # (B, 1, H, W)
    mask = (~hole).to(dtype=images.dtype, device=images.device).expand_as(images).contiguous()
    return images * mask, mask


class InverseTrainer(GenerativeTrainer):
    """Inpainting / denoising: a generative decoder evaluated (and, supervised, trained) on
    corrupted measurements. Evaluation adds ``corrupted_psnr`` (and ``corrupted_psnr_samples``)
    to the generative metrics."""

    def __init__(self, config: TaskConfig, data: DatasetSplits) -> None:
        if config.task not in INVERSE_TASKS:
            raise ValueError(f"InverseTrainer needs task in {INVERSE_TASKS}, got {config.task!r}")
        super().__init__(config, data)
        self.train_generator = torch.Generator().manual_seed(config.seed * 104_729 + 3)

    def _corrupt(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        return corrupt(images, self.config.task, generator, self.config.noise_sigma)

    def train_problem(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """Supervised: the corrupted image and its mask; unsupervised: the clean image."""
        if not self.config.supervised:
            return images, None
        return self._corrupt(images, self.train_generator)

    def eval_problem(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor | None]:
        """Always the corrupted image (the same corruptions at every evaluation)."""
        return self._corrupt(images, generator)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["train_generator"] = self.train_generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "train_generator" in state:
            self.train_generator.set_state(state["train_generator"])


def train_inverse(
    config: TaskConfig, data_config: DataConfig, callback: Callback | None = None
) -> tuple[TaskResult, InverseTrainer]:
    """Load the data, build an :class:`InverseTrainer` and train it; returns both."""
    trainer = InverseTrainer(config, load_dataset(data_config))
    return trainer.fit(callback), trainer
