"""What every training task shares: the config, the step reports, the training loop.

A task is a :class:`Trainer` subclass that implements ``train_step`` (one optimiser step on
a batch, returning its metrics and whether the inner solve diverged) and ``evaluate``.
The loop here owns epochs, the cosine learning-rate decay, the divergence rule, wall time
and reporting; the orchestrator turns the reports into Ray Tune reports and Parquet rows,
and checkpoints through ``state_dict`` / ``load_state_dict``. Nothing here imports Ray.

Divergence rule: a step whose inner solve diverged for more than half the batch, or whose
loss is not finite, is reported with ``diverged_step=True`` and makes no parameter update;
``diverged_patience`` such steps in a row end the run with status ``"diverged"``.

Evaluation contract (what ``evaluate`` returns, what the eval step rows and a trial's final
metrics hold): the metrics, plus ``eval_n`` (int, the number of held-out samples they were
computed on; a metric computed on another count would carry its own ``<metric>_n``), plus,
for every mean metric that is not a proportion (PSNR, losses), ``<metric>_samples``: its
per-sample values (a list of floats whose mean is the metric), so the analysis can
bootstrap an interval; a proportion (an accuracy, a diverged fraction) times ``eval_n`` is
the count of samples. Lists reach the eval rows of the ``steps`` table (list<double>
columns); the Tune reports and the ``trials`` row keep numbers only, so they get
``eval_n`` but not the lists.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor, nn

from jiio_core import JIIOConfig, JIIOResult, MDEQConfig
from orchestrator.data import DatasetSplits, make_loader

__all__ = [
    "MODES",
    "TASKS",
    "Callback",
    "StepOutcome",
    "TaskConfig",
    "TaskResult",
    "Trainer",
    "backward_stats",
    "jacobian_penalty",
    "jiio_stats",
    "mdeq_config",
    "mean_trace",
    "samples_metric",
]

TASKS = ("adversarial", "generative", "inpainting", "denoising")
MODES = {"adversarial": ("clean", "pgd", "jiio"), "generative": ("jiio", "adam")}
MODES["inpainting"] = MODES["denoising"] = MODES["generative"]
_JIIO_FIELDS = {f.name for f in fields(JIIOConfig)}

Callback = Callable[[dict[str, Any]], None]


def _need(ok: bool, field_: str, allowed: str, value: Any) -> None:
    if not ok:
        raise ValueError(f"{field_} must be {allowed}, got {value!r}")


@dataclass(frozen=True)
class TaskConfig:
    """One training run. Flat names (``alpha_z``...) are those of the sweeps and Parquet.

    ``jiio`` holds the augmented solver's settings; :meth:`from_flat` / :meth:`to_flat`
    map between this nested form and a flat dict of hyperparameters.

    Example:
        >>> cfg = TaskConfig.from_flat({"task": "adversarial", "mode": "jiio", "alpha_x": 0.3})
        >>> cfg.jiio.alpha_x, cfg.to_flat()["alpha_x"]
        (0.3, 0.3)
    """

    task: str = "adversarial"
    mode: str = "jiio"
    model_size: str = "tiny"
    epochs: int = 2
    max_steps_per_epoch: int | None = None
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.0
    seed: int = 0
    jac_reg: float = 0.0
    jac_reg_probes: int = 2
    deq_solver: str = "anderson"
    deq_max_iter: int = 30
    deq_tol: float = 1e-3
    deq_backward_max_iter: int = 20
    eps: float = 1.0
    pgd_steps: int = 20
    pgd_step_size: float = 0.6
    # The strong PGD of training (mode "pgd"): forward solves warm-started from the previous
    # step's z* (Anderson m=5, deq_tol, at most deq_max_iter) and at most
    # pgd_warm_backward_iters backward iterations warm-started from the previous step's u
    # (0: Jacobian-free) instead of the paper's full solves every step; the evaluation's PGD
    # stays the paper's. See jiio_core.pgd_attack_warm.
    pgd_warm: bool = False
    pgd_warm_backward_iters: int = 4
    latent_dim: int = 16
    adam_steps: int = 40
    adam_lr: float = 0.1
    noise_sigma: float = 0.2
    supervised: bool = False
    eval_batches: int | None = 4
    # The evaluation's attack budget (None: the training attack's, pgd_steps / jiio.max_iter);
    # stated beside every robust accuracy as ``eval_attack``.
    eval_pgd_steps: int | None = None
    eval_jiio_max_iter: int | None = None
    diverged_patience: int = 3
    trace_every: int = 0
    device: str = "cpu"
    jiio: JIIOConfig = field(default_factory=JIIOConfig)

    def __post_init__(self) -> None:
        _need(self.task in TASKS, "task", "one of " + ", ".join(TASKS), self.task)
        _need(
            self.mode in MODES[self.task],
            "mode",
            f"one of {MODES[self.task]} for task {self.task!r}",
            self.mode,
        )
        _need(self.model_size in ("tiny", "paper"), "model_size", "'tiny' or 'paper'", self.model_size)
        for name in (
            "epochs",
            "batch_size",
            "jac_reg_probes",
            "deq_max_iter",
            "deq_backward_max_iter",
            "pgd_steps",
            "latent_dim",
            "adam_steps",
            "diverged_patience",
        ):
            v = getattr(self, name)
            _need(isinstance(v, int) and not isinstance(v, bool) and v >= 1, name, "an integer >= 1", v)
        for name in ("max_steps_per_epoch", "eval_batches", "eval_pgd_steps", "eval_jiio_max_iter"):
            v = getattr(self, name)
            _need(v is None or (isinstance(v, int) and v >= 1), name, "None or an integer >= 1", v)
        for name in ("lr", "pgd_step_size", "adam_lr", "deq_tol"):
            v = getattr(self, name)
            _need(isinstance(v, (int, float)) and math.isfinite(v) and v > 0, name, "a finite number > 0", v)
        for name in ("weight_decay", "jac_reg", "eps", "noise_sigma"):
            v = getattr(self, name)
            _need(
                isinstance(v, (int, float)) and math.isfinite(v) and v >= 0, name, "a finite number >= 0", v
            )
        _need(
            isinstance(self.trace_every, int) and self.trace_every >= 0,
            "trace_every",
            "an integer >= 0",
            self.trace_every,
        )
        _need(
            self.deq_solver in ("anderson", "broyden", "fixed_point"),
            "deq_solver",
            "'anderson', 'broyden' or 'fixed_point'",
            self.deq_solver,
        )
        _need(isinstance(self.jiio, JIIOConfig), "jiio", "a JIIOConfig", self.jiio)
        _need(isinstance(self.pgd_warm, bool), "pgd_warm", "true or false", self.pgd_warm)
        k = self.pgd_warm_backward_iters
        _need(
            isinstance(k, int) and not isinstance(k, bool) and k >= 0,
            "pgd_warm_backward_iters",
            "an integer >= 0 (0: Jacobian-free)",
            k,
        )

    @classmethod
    def from_flat(cls, params: dict[str, Any]) -> TaskConfig:
        """Build from one flat dict; JIIOConfig field names go to ``jiio``, unknown keys raise."""
        own = {f.name for f in fields(cls)} - {"jiio"}
        unknown = set(params) - own - _JIIO_FIELDS
        if unknown:
            raise ValueError(
                f"unknown hyperparameters {sorted(unknown)}; known: {sorted(own | _JIIO_FIELDS)}"
            )
        jiio = JIIOConfig(**{k: v for k, v in params.items() if k in _JIIO_FIELDS})
        return cls(**{k: v for k, v in params.items() if k in own}, jiio=jiio)

    def to_flat(self) -> dict[str, Any]:
        flat = {k: v for k, v in asdict(self).items() if k != "jiio"}
        flat.update(self.jiio.to_dict())
        return flat

    def replace(self, **changes: Any) -> TaskConfig:
        return replace(self, **changes)


@dataclass
class StepOutcome:
    """What ``train_step`` returns: metrics of the step and whether its solve diverged."""

    metrics: dict[str, float]
    diverged: bool = False
    trace: dict[str, list[float]] | None = None


@dataclass
class TaskResult:
    status: str  # "completed" | "diverged"
    metrics: dict[str, Any]  # numbers, plus the last evaluation's ``<metric>_samples`` lists
    steps: int
    wall_s: float


def jiio_stats(res: JIIOResult, seconds: float) -> dict[str, float]:
    """The per-step solver stats every task reports (names are Parquet columns)."""
    return {
        "solver_iterations": float(res.iterations),
        "solver_converged": float(res.converged.float().mean()),
        "solver_diverged": float(res.diverged.float().mean()),
        "solver_residual": float(res.residual[~res.diverged].mean())
        if bool((~res.diverged).any())
        else math.inf,
        "solve_s": seconds,
    }


def backward_stats(res: JIIOResult) -> dict[str, float | str]:
    """Which backward the step's outer gradient took through ``res.z`` (Parquet columns).

    ``backward_mode``: "mu" (every sample reused mu*, paper eq. 19), "ift" / "jfb" (none
    did), "mixed" (some did), "none" (no gradient flowed through ``res.z``);
    ``backward_mu_frac``: the fraction of samples that reused mu*; ``backward_residual``:
    the largest relative residual of the backward's solution (NaN for JFB or none);
    ``backward_iterations``: of the backward solve (0 without one).

    Example (3 iterations: mu* has not converged, so the outer gradient solves):
        >>> from jiio_core import jiio_solve
        >>> w = torch.tensor(0.5, requires_grad=True)
        >>> res = jiio_solve(lambda z, x: w * z + x, lambda z: z.pow(2).sum(1), torch.ones(2, 1),
        ...                  config=JIIOConfig(max_iter=3, alpha_x=0.1))
        >>> backward_stats(res)["backward_mode"]    # nothing flowed back yet
        'none'
        >>> res.z.pow(2).sum().backward()
        >>> stats = backward_stats(res)
        >>> stats["backward_mode"], stats["backward_mu_frac"], stats["backward_residual"] <= 1e-5
        ('ift', 0.0, True)
    """
    b = res.backward
    return {
        "backward_mode": str(b.get("mode", "none")),
        "backward_mu_frac": float(b.get("mu_frac", math.nan)),
        "backward_residual": float(b.get("residual", math.nan)),
        "backward_iterations": float(b.get("iterations", 0)),
    }


def jacobian_penalty(f: Callable[[Tensor, Tensor], Tensor], z: Tensor, x: Tensor, probes: int = 2) -> Tensor:
    """Hutchinson estimate of ``|J_z f(z, x)|_F^2 / dim(z)`` (Bai et al. 2021), differentiable.

    Example:
        >>> f = lambda z, x: 0.5 * z + x               # J = 0.5 I: |J|_F^2 / d = 0.25
        >>> z = torch.zeros(4096, 3)
        >>> abs(float(jacobian_penalty(f, z, z, probes=8)) - 0.25) < 0.02
        True
    """
    z = z.detach().requires_grad_(True)
    fz = f(z, x)
    total = z.new_zeros(())
    for _ in range(probes):
        v = torch.randn_like(fz)
        (vj,) = torch.autograd.grad(fz, z, v, create_graph=True, retain_graph=True)
        total = total + vj.pow(2).sum() / fz.numel()
    return total / probes


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


class Trainer(ABC):
    """Base of the tasks: owns the loop; subclasses build modules and implement the steps."""

    def __init__(self, config: TaskConfig, data: DatasetSplits) -> None:
        self.config, self.data = config, data
        self.device = torch.device(config.device)
        torch.manual_seed(config.seed)
        self.modules: dict[str, nn.Module] = self.build()
        for m in self.modules.values():
            m.to(self.device)
        params = [p for m in self.modules.values() for p in m.parameters()]
        self.optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
        dist = torch.distributed
        self.world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if self.world > 1:  # data parallel: same start everywhere, one averaged step per batch
            for p in params:
                dist.broadcast(p.data, 0)
        steps_per_epoch = math.ceil(len(data.train) / config.batch_size)
        if config.max_steps_per_epoch is not None:
            steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
        self.steps_per_epoch = steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=max(1, config.epochs * steps_per_epoch)
        )
        if self.world > 1:  # tasks call optimizer.step(); the real, averaged step comes after the batch
            self._step, self._wants_step = self.optimizer.step, False

            def deferred(*args: Any, **kwargs: Any) -> None:
                self._wants_step = True
                self.optimizer._opt_called = True  # what the LR scheduler checks

            deferred._wrapped_by_lr_sched = True  # type: ignore[attr-defined]
            self.optimizer.step = deferred  # type: ignore[method-assign]
        self.epoch = 0
        self.global_step = 0
        self.last_metrics: dict[str, Any] = {}  # of the last evaluate(): a resumed, finished run has them

    # --- for subclasses -------------------------------------------------------------
    @abstractmethod
    def build(self) -> dict[str, nn.Module]:
        """The task's modules by name (moved to the device and optimised by the base)."""

    @abstractmethod
    def train_step(self, x: Tensor, y: Tensor) -> StepOutcome:
        """One optimiser step on a batch (the base counts steps and decays the rate)."""

    @abstractmethod
    def evaluate(self) -> dict[str, Any]:
        """Held-out metrics at the end of an epoch (modules in eval mode), with ``eval_n`` and
        ``<metric>_samples`` as the module docstring says."""

    # --- shared ---------------------------------------------------------------------
    def eval_batches(self, split: str = "test"):
        """The first ``eval_batches`` batches of a split (all of it when ``None``), in a fixed
        order, on the device: ``min(eval_batches * batch_size, len(split))`` samples."""
        loader = make_loader(getattr(self.data, split), self.config.batch_size, shuffle=False)
        for i, (x, y) in enumerate(loader):
            if self.config.eval_batches is not None and i >= self.config.eval_batches:
                break
            yield x.to(self.device), y.to(self.device)

    def state_dict(self) -> dict[str, Any]:
        return {
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "last_metrics": dict(self.last_metrics),
            "config": self.config.to_flat(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, m in self.modules.items():
            m.load_state_dict(state["modules"][k])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.global_step = int(state["epoch"]), int(state["global_step"])
        self.last_metrics = dict(state.get("last_metrics", {}))

    def fit(self, callback: Callback | None = None) -> TaskResult:
        """Train from ``self.epoch`` to ``config.epochs``, reporting every step and epoch."""
        cfg, report = self.config, callback or (lambda r: None)
        t_start, bad_run, metrics = time.perf_counter(), 0, dict(self.last_metrics)
        while self.epoch < cfg.epochs:
            loader = make_loader(
                self.data.train, cfg.batch_size, shuffle=True, seed=cfg.seed * 1000 + self.epoch
            )
            for i, (x, y) in enumerate(loader):
                if i >= self.steps_per_epoch:
                    break
                for m in self.modules.values():
                    m.train()
                out = self.train_step(x.to(self.device), y.to(self.device))
                if self.world > 1:
                    out.diverged = self._all_reduce_step(out.diverged)
                bad_run = bad_run + 1 if out.diverged else 0
                self.global_step += 1
                self.scheduler.step()
                row = {
                    "step": self.global_step,
                    "epoch": self.epoch,
                    "phase": "train",
                    "diverged_step": out.diverged,
                    "lr": self.scheduler.get_last_lr()[0],
                    **out.metrics,
                }
                if out.trace is not None:
                    row["trace"] = out.trace
                report(row)
                if bad_run >= cfg.diverged_patience:
                    return TaskResult(
                        "diverged",
                        {**metrics, **out.metrics},
                        self.global_step,
                        time.perf_counter() - t_start,
                    )
            self.epoch += 1
            for m in self.modules.values():
                m.eval()
            metrics = self.last_metrics = self.evaluate()
            report(
                {"step": self.global_step, "epoch": self.epoch, "phase": "eval", "epoch_end": True, **metrics}
            )
        return TaskResult("completed", metrics, self.global_step, time.perf_counter() - t_start)

    def _all_reduce_step(self, diverged: bool) -> bool:
        """Data parallel: average the gradients of the ranks that stepped, then step once, on
        every rank (each reaches this after every batch, so no collective can hang). The step
        counts as diverged when more than half of the ranks' did."""
        dist = torch.distributed
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        for p in params:
            if p.grad is None or diverged or not self._wants_step:
                p.grad = torch.zeros_like(p)
        flags = torch.tensor([float(diverged), float(self._wants_step and not diverged)], device=self.device)
        dist.all_reduce(flags)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat)
        if flags[1] > 0:
            offset = 0
            for p in params:
                p.grad.copy_(flat[offset : offset + p.numel()].view_as(p) / flags[1])
                offset += p.numel()
            self._step()
        self._wants_step = False
        return bool(flags[0] > self.world / 2)

    def want_trace(self) -> bool:
        return self.config.trace_every > 0 and (self.global_step + 1) % self.config.trace_every == 0


def samples_metric(name: str, values: Tensor | list[Tensor]) -> dict[str, Any]:
    """``{name: mean, name + "_samples": per-sample values}`` for a mean metric (not a proportion).

    ``values``: per-sample values, one tensor or a list of per-batch tensors. The mean is
    that of the listed floats (NaN when there are none, or when one is NaN), so
    ``mean(out[name + "_samples"]) == out[name]`` holds for whoever reads the list back.

    Example:
        >>> samples_metric("test_psnr", [torch.tensor([20.0, 22.0]), torch.tensor([24.0])])
        {'test_psnr': 22.0, 'test_psnr_samples': [20.0, 22.0, 24.0]}
    """
    if isinstance(values, (list, tuple)):
        values = torch.cat([v.detach().reshape(-1).cpu() for v in values]) if values else torch.zeros(0)
    listed = [float(v) for v in values.detach().reshape(-1).cpu().double().tolist()]
    try:
        mean = math.fsum(listed) / len(listed) if listed else math.nan
    except (ValueError, OverflowError):  # inf - inf
        mean = math.nan
    return {name: mean, f"{name}_samples": listed}


def mean_trace(res: JIIOResult) -> dict[str, list[float]]:
    """Per-iteration batch means of a JIIO trace (what the traces table stores)."""
    return {k: [float(v) for v in t.mean(dim=1)] for k, t in res.trace.items()}
