"""The configuration of one training run (:class:`TaskConfig`) and the tasks and modes it names.

What: a frozen, validated dataclass whose flat field names are those of the sweeps, the
CLI and the Parquet columns, with the augmented solver's settings nested in ``jiio``.
Why here, apart from the training loop: the orchestrator's driver side (sweep specs,
checkpoint metadata, the solve trials) reads and validates configs without needing the
loop; an invalid value raises ``ValueError`` naming the field and what it allows.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from jiio_core import SOLVERS, JIIOConfig

__all__ = ["MODES", "TASKS", "TaskConfig"]

TASKS = ("adversarial", "generative", "inpainting", "denoising")
MODES = {"adversarial": ("clean", "pgd", "jiio"), "generative": ("jiio", "adam")}
MODES["inpainting"] = MODES["denoising"] = MODES["generative"]
_JIIO_FIELDS = {f.name for f in fields(JIIOConfig)}


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
            self.deq_solver in SOLVERS,
            "deq_solver",
            ", ".join(repr(s) for s in SOLVERS[:-1]) + f" or {SOLVERS[-1]!r}",
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
        """The flat dict of hyperparameters (``jiio``'s fields inlined): :meth:`from_flat`'s inverse."""
        flat = {k: v for k, v in asdict(self).items() if k != "jiio"}
        flat.update(self.jiio.to_dict())
        return flat

    def replace(self, **changes: Any) -> TaskConfig:
        """A copy with ``changes`` applied (and validated again)."""
        return replace(self, **changes)
