"""Decoder-only generative model trained through its latent inner problem (paper eq. 20).

The decoder is a DEQ: a latent ``x`` (B, latent_dim) is injected into an MDEQ cell,
``z* = cell(z*, x)``, and the image is ``head(z*)`` in [0, 1]. There is no encoder: the
latent of an image ``y`` is found by minimising the summed squared error
``|head(z*(x)) - y|^2`` over ``x`` from ``x0 = 0``, either jointly with the fixed point by
JIIO (mode ``"jiio"``) or by Adam over a plain DEQ decoder (mode ``"adam"``). The
parameters are then trained on the same reconstruction error at the found latent; in
JIIO mode that outer loss is a multiple of the inner one, so its gradient reuses mu*
(paper eq. 19) for every sample whose mu* met ``backward_tol``, the others solve (reported
per step as ``backward_mode``, ``backward_mu_frac``, ``backward_residual``). After training, a full-covariance
Gaussian fitted to training latents turns the decoder into a sampler (as in RAEs).

Example::

    import torch
    from orchestrator.data import DataConfig
    from orchestrator.tasks import TaskConfig
    from orchestrator.tasks.generative import train_generative

    result, trainer = train_generative(TaskConfig(task="generative", epochs=1), DataConfig("digits"))
    trainer.fit_latent_density(n_batches=4)
    images = trainer.sample(64, torch.Generator().manual_seed(0))
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from jiio_core import DEQ, DEQConfig, ImageHead, JIIOResult, MDEQCell, adam_latent, jiio_solve
from orchestrator.data import DataConfig, DatasetSplits, load_dataset, make_loader
from orchestrator.tasks.jacobian import jacobian_penalty
from orchestrator.tasks.model_sizes import mdeq_config
from orchestrator.tasks.step_metrics import backward_stats, jiio_stats, mean_trace, samples_metric
from orchestrator.tasks.task_config import TaskConfig
from orchestrator.tasks.trainer import Callback, StepOutcome, TaskResult, Trainer

__all__ = ["GenerativeTrainer", "LatentSolve", "psnr", "save_grid", "sq_error", "train_generative"]

_RIDGE = 1e-4  # added to the latent covariance's diagonal (relative to its mean variance)


def sq_error(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Per-sample summed squared error ``|mask * (pred - target)|^2``, shape ``(B,)``."""
    d = pred - target
    if mask is not None:
        d = d * mask
    return d.pow(2).flatten(1).sum(1)


def psnr(pred: Tensor, target: Tensor) -> Tensor:
    """Per-image PSNR in dB of images in [0, 1]: ``10 log10(1 / mse_i)``, shape ``(B,)``.

    Example:
        >>> a = torch.zeros(2, 1, 4, 4)
        >>> psnr(a + 0.1, a).round().tolist()
        [20.0, 20.0]
    """
    mse = (pred - target).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(1e-12))


def save_grid(images: Tensor, path: str | os.PathLike[str], nrow: int = 8) -> None:
    """Write ``images`` (N, C, H, W) in [0, 1] as one PNG grid (parent folders created)."""
    from torchvision.utils import save_image

    folder = os.path.dirname(os.fspath(path))
    if folder:
        os.makedirs(folder, exist_ok=True)
    save_image(images.detach().float().clamp(0, 1).cpu(), os.fspath(path), nrow=nrow)


@dataclass
class LatentSolve:
    """One inner solve: latent ``x`` (detached), state ``z`` (carrying the implicit
    gradient when grad mode was on), per-sample ``diverged``, the JIIO result (jiio mode)
    and metrics of the solve."""

    x: Tensor
    z: Tensor
    diverged: Tensor
    res: JIIOResult | None
    metrics: dict[str, float]


class GenerativeTrainer(Trainer):
    """MDEQ decoder trained on reconstruction at the latent found by JIIO or Adam."""

    def __init__(self, config: TaskConfig, data: DatasetSplits) -> None:
        super().__init__(config, data)
        c = config
        self.deq = DEQ(
            self.cell,
            DEQConfig(
                solver=c.deq_solver,
                max_iter=c.deq_max_iter,
                tol=c.deq_tol,
                backward_max_iter=c.deq_backward_max_iter,
            ),
        )
        self.latent_mean: Tensor | None = None
        self.latent_cov: Tensor | None = None

    # --- modules and problem ------------------------------------------------------------
    def build(self) -> dict[str, nn.Module]:
        cfg = mdeq_config(
            self.config.model_size,
            self.data.image_size,
            self.data.channels,
            latent_dim=self.config.latent_dim,
        )
        return {"cell": MDEQCell(cfg), "head": ImageHead(cfg)}

    @property
    def cell(self) -> MDEQCell:
        return self.modules["cell"]  # type: ignore[return-value]

    @property
    def head(self) -> ImageHead:
        return self.modules["head"]  # type: ignore[return-value]

    def decode(self, x: Tensor) -> Tensor:
        """Images ``head(z*(x))`` from latents by a plain DEQ solve."""
        return self.head(self.deq(x)[0])

    def latent_init(self, batch: int) -> Tensor:
        """The inner solve's start: ``x0 = 0``."""
        return torch.zeros(batch, self.config.latent_dim, device=self.device)

    def train_problem(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(target, mask)`` of the inner problem when training: the clean image."""
        return images, None

    def eval_problem(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor | None]:
        """``(target, mask)`` of the inner problem at evaluation: the clean image."""
        return images, None

    def solve_latent(self, target: Tensor, mask: Tensor | None = None) -> LatentSolve:
        """Minimise ``|mask * (head(z*(x)) - target)|^2`` over ``x`` by the configured mode."""
        cfg = self.config
        x0 = self.latent_init(target.shape[0])
        t0 = time.perf_counter()
        if cfg.mode == "jiio":
            res = jiio_solve(self.cell, lambda z: sq_error(self.head(z), target, mask), x0, config=cfg.jiio)
            seconds = time.perf_counter() - t0
            metrics = {
                "inner_s": seconds,
                "inner_loss": float(res.objective.mean()),
                **jiio_stats(res, seconds),
            }
            return LatentSolve(res.x, res.z, res.diverged, res, metrics)
        x, st = adam_latent(
            self.decode,
            target,
            x0,
            steps=cfg.adam_steps,
            lr=cfg.adam_lr,
            loss_fn=lambda out, t: sq_error(out, t, mask),
        )
        z, info = self.deq(x)
        seconds = time.perf_counter() - t0
        diverged = info.diverged | ~torch.isfinite(st.final_loss)
        metrics = {
            "inner_s": seconds,
            "inner_loss": float(st.final_loss.mean()),
            "solver_diverged": float(diverged.float().mean()),
            "solver_converged": float(info.converged.float().mean()),
        }
        return LatentSolve(x, z, diverged, None, metrics)

    # --- training -------------------------------------------------------------------------
    def train_step(self, x: Tensor, y: Tensor) -> StepOutcome:
        """Inner solve on the batch's images ``x``, then one step on the reconstruction loss."""
        t0, cfg = time.perf_counter(), self.config
        clean = x
        target, mask = self.train_problem(clean)
        sol = self.solve_latent(target, mask)
        per = sq_error(self.head(sol.z), clean)
        keep = ~sol.diverged & torch.isfinite(per)
        n_bad = int((~keep).sum())
        metrics = dict(sol.metrics)
        metrics["diverged_rows"] = float(n_bad)
        if sol.res is not None:  # "none" until a backward has run (diverged steps never do)
            metrics.update(backward_stats(sol.res))
        pix = clean[0].numel()
        trace = mean_trace(sol.res) if sol.res is not None and self.want_trace() else None
        self.optimizer.zero_grad(set_to_none=True)
        if 2 * n_bad > clean.shape[0]:
            metrics.update(loss=math.nan, mse=math.nan, psnr=math.nan, step_s=time.perf_counter() - t0)
            return StepOutcome(metrics, diverged=True, trace=trace)
        rec = per[keep].mean()
        total = rec
        if cfg.jac_reg > 0:
            jac = jacobian_penalty(self.cell, sol.z[keep], sol.x[keep], probes=cfg.jac_reg_probes)
            total = total + cfg.jac_reg * jac
            metrics["jac_reg_loss"] = float(jac.detach())
        mse_i = per.detach()[keep] / pix
        metrics.update(
            loss=float(rec.detach()),
            mse=float(mse_i.mean()),
            psnr=float((10.0 * torch.log10(1.0 / mse_i.clamp_min(1e-12))).mean()),
        )
        if not bool(torch.isfinite(total.detach())):
            metrics["step_s"] = time.perf_counter() - t0
            return StepOutcome(metrics, diverged=True, trace=trace)
        total.backward()
        if sol.res is not None:
            metrics.update(backward_stats(sol.res))
        grads = [p.grad for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        if grads and not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
            self.optimizer.zero_grad(set_to_none=True)
            metrics["step_s"] = time.perf_counter() - t0
            return StepOutcome(metrics, diverged=True, trace=trace)
        self.optimizer.step()
        metrics["step_s"] = time.perf_counter() - t0
        return StepOutcome(metrics, trace=trace)

    # --- evaluation -----------------------------------------------------------------------
    def _eval_generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.config.seed * 7919 + 17)

    def evaluate(self) -> dict[str, Any]:
        """Held-out reconstruction by the inner solve, parameters untouched.

        Reports ``test_mse``, ``test_psnr`` (mean over images), ``test_psnr_median``,
        ``test_diverged`` and ``inner_s`` (total seconds); when the inner problem sees a
        corrupted image, also ``corrupted_psnr`` (PSNR of that corrupted input against the
        clean image). ``eval_n``: the number of test images all of them were computed on;
        per-image values: ``test_mse_samples``, ``test_psnr_samples`` (also those behind
        ``test_psnr_median``) and ``corrupted_psnr_samples``.
        """
        gen = self._eval_generator()
        mses, psnrs, corrupted, diverged, seconds = [], [], [], [], 0.0
        for images, _ in self.eval_batches("test"):
            target, mask = self.eval_problem(images, gen)
            with torch.no_grad():
                sol = self.solve_latent(target, mask)
                recon = self.head(sol.z)
            seconds += sol.metrics["inner_s"]
            mses.append((recon - images).pow(2).flatten(1).mean(1).cpu())
            psnrs.append(psnr(recon, images).cpu())
            diverged.append(sol.diverged.float().cpu())
            if target is not images:
                corrupted.append(psnr(target, images).cpu())
        p = torch.cat(psnrs)
        out = {
            "eval_n": int(p.numel()),
            **samples_metric("test_mse", mses),
            **samples_metric("test_psnr", psnrs),
            "test_psnr_median": float(p.median()),
            "test_diverged": float(torch.cat(diverged).mean()),
            "inner_s": seconds,
        }
        if corrupted:
            out.update(samples_metric("corrupted_psnr", corrupted))
        return out

    # --- sampling -------------------------------------------------------------------------
    def fit_latent_density(self, n_batches: int) -> None:
        """Fit a full-covariance Gaussian to the latents of ``n_batches`` training batches."""
        loader = make_loader(self.data.train, self.config.batch_size, shuffle=False)
        latents = []
        for i, (images, _) in enumerate(loader):
            if i >= n_batches:
                break
            with torch.no_grad():
                sol = self.solve_latent(images.to(self.device))
            latents.append(sol.x[~sol.diverged].double())
        xs = torch.cat(latents)
        if xs.shape[0] < 2:
            raise ValueError(f"need at least 2 non-diverged latents to fit a Gaussian, got {xs.shape[0]}")
        mean = xs.mean(0)
        cov = torch.cov(xs.T).reshape(xs.shape[1], xs.shape[1])
        ridge = _RIDGE * float(cov.diagonal().mean().clamp_min(1e-12))
        self.latent_mean = mean
        self.latent_cov = cov + ridge * torch.eye(xs.shape[1], dtype=cov.dtype, device=cov.device)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` images decoded from the fitted Gaussian (``generator``: a CPU generator)."""
        if self.latent_mean is None or self.latent_cov is None:
            raise RuntimeError("call fit_latent_density() before sample()")
        chol = torch.linalg.cholesky(self.latent_cov.cpu())
        eps = torch.randn(n, chol.shape[0], generator=generator, dtype=chol.dtype)
        x = (self.latent_mean.cpu() + eps @ chol.T).float().to(self.device)
        with torch.no_grad():
            return self.decode(x)

    save_grid = staticmethod(save_grid)

    # --- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.latent_mean is not None:
            state["latent_density"] = {"mean": self.latent_mean, "cov": self.latent_cov}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        density = state.get("latent_density")
        if density is not None:
            self.latent_mean = density["mean"].to(self.device)
            self.latent_cov = density["cov"].to(self.device)


def train_generative(
    config: TaskConfig, data_config: DataConfig, callback: Callback | None = None
) -> tuple[TaskResult, GenerativeTrainer]:
    """Load the data, build a :class:`GenerativeTrainer` and train it; returns both."""
    if config.task != "generative":
        raise ValueError(f"train_generative needs task 'generative', got {config.task!r}")
    trainer = GenerativeTrainer(config, load_dataset(data_config))
    return trainer.fit(callback), trainer
