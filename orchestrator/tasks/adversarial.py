"""Adversarial training of an MDEQ classifier: clean, PGD or JIIO (paper section 4.3, eq. 25-26).

What: :class:`AdversarialTrainer` trains ``head(DEQ(cell)(x))`` on clean inputs (``"clean"``),
on L2 PGD adversarial examples (``"pgd"``: every PGD step a forward DEQ solve and an implicit
backward solve) or on JIIO adversarial examples (``"jiio"``: one augmented fixed point in
``(z, mu, x)`` maximises the cross-entropy over the eps-ball while solving the DEQ). Its
:meth:`~AdversarialTrainer.evaluate` measures clean accuracy and accuracy under both attacks,
and :func:`attack_table` / :func:`format_table` assemble the paper's 3x3 table (Table 5).

Why: the JIIO inner objective is the negated outer one, so the outer backward reuses the
dual ``mu*`` (paper eq. 19) instead of a second fixed-point solve; that only holds when the
head inside the inner loss is the very function of the outer loss (GroupNorm only, no
dropout, no batch statistics), which is how both are built here.

Example::

    from orchestrator.data import DataConfig
    from orchestrator.tasks.adversarial import train_adversarial
    from orchestrator.tasks import TaskConfig

    result, trainer = train_adversarial(
        TaskConfig(mode="jiio", epochs=1, max_steps_per_epoch=2, eval_batches=1),
        DataConfig(dataset="digits", limit_train=128, limit_test=64),
    )
    print(result.status, result.metrics["jiio_acc"])
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jiio_core import (
    DEQ,
    ClassifierHead,
    DEQConfig,
    JIIOResult,
    MDEQCell,
    WarmSettings,
    jiio_solve,
    l2_ball,
    pgd_attack,
    pgd_attack_warm,
)
from orchestrator.data import DataConfig, DatasetSplits, load_dataset
from orchestrator.tasks.jacobian import jacobian_penalty
from orchestrator.tasks.model_sizes import mdeq_config
from orchestrator.tasks.step_metrics import backward_stats, jiio_stats, mean_trace, samples_metric
from orchestrator.tasks.task_config import TaskConfig
from orchestrator.tasks.trainer import Callback, StepOutcome, TaskResult, Trainer

__all__ = ["ATTACKS", "AdversarialTrainer", "attack_table", "format_table", "train_adversarial"]

ATTACKS = ("clean", "pgd", "jiio")  # the columns of the attack table (and its usual rows)
_TITLES = {"clean": "clean", "pgd": "PGD", "jiio": "JIIO"}


@contextmanager
def _frozen(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Parameters of ``modules`` do not require grad inside; their flags are restored after.

    Why: an attack differentiates w.r.t. the input only; frozen parameters keep their graph
    out of every DEQ solve (and guarantee that no ``.grad`` is touched).
    """
    params = [p for m in modules for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)


def _correct(logits: Tensor, y: Tensor) -> int:
    return int((logits.argmax(dim=1) == y).sum())


class AdversarialTrainer(Trainer):
    """Clean / PGD / JIIO adversarial training of an MDEQ classifier (``config.mode``).

    Modules: ``"cell"`` (:class:`MDEQCell`) and ``"head"`` (:class:`ClassifierHead`). A plain
    :class:`DEQ` on the cell (``config.deq_*``) serves clean training, PGD and evaluation;
    JIIO runs the cell itself inside its augmented solve. The threat model is the L2 ball of
    radius ``config.eps`` around each input (inputs are not clipped to [0, 1], as in the paper).
    """

    def __init__(self, config: TaskConfig, data: DatasetSplits) -> None:
        if config.task != "adversarial":
            raise ValueError(f"AdversarialTrainer needs task='adversarial', got {config.task!r}")
        if data.num_classes < 2:
            raise ValueError(f"adversarial training needs a labelled dataset, got {data.name!r}")
        super().__init__(config, data)
        self.deq = DEQ(
            self.modules["cell"],
            DEQConfig(
                solver=config.deq_solver,
                max_iter=config.deq_max_iter,
                tol=config.deq_tol,
                backward_max_iter=config.deq_backward_max_iter,
            ),
        )

    def build(self) -> dict[str, nn.Module]:
        cfg = mdeq_config(self.config.model_size, self.data.image_size, self.data.channels)
        return {"cell": MDEQCell(cfg), "head": ClassifierHead(cfg, self.data.num_classes)}

    @property
    def cell(self) -> nn.Module:
        return self.modules["cell"]

    @property
    def head(self) -> nn.Module:
        return self.modules["head"]

    # --- the model and its two adversaries ------------------------------------------------
    def logits(self, x: Tensor) -> Tensor:
        """The classifier: ``head(z*(x))`` with ``z*`` the plain DEQ's fixed point."""
        z, _ = self.deq(x)
        return self.head(z)

    def attack_pgd(self, x: Tensor, y: Tensor, steps: int | None = None, warm: bool | None = None) -> Tensor:
        """L2 PGD examples (``steps``, default ``config.pgd_steps``, of ``pgd_step_size``),
        parameters frozen. ``warm`` (default ``config.pgd_warm``): the strong PGD
        (:func:`~jiio_core.pgd_attack_warm`: forward from the previous step's ``z*``, Anderson
        m=5 to ``deq_tol`` or ``deq_max_iter``; at most ``pgd_warm_backward_iters`` backward
        iterations from the previous step's ``u``, 0: Jacobian-free); else the paper's
        (every step a full forward solve and implicit backward with the plain DEQ)."""
        cfg = self.config
        steps = steps or cfg.pgd_steps
        with _frozen(self.modules.values()):
            if cfg.pgd_warm if warm is None else warm:
                settings = WarmSettings(
                    forward_tol=cfg.deq_tol,
                    forward_max_iter=cfg.deq_max_iter,
                    backward_iters=cfg.pgd_warm_backward_iters,
                    backward_tol=cfg.deq_tol,
                )
                x_adv, _ = pgd_attack_warm(
                    self.cell,
                    self.head,
                    x,
                    y,
                    eps=cfg.eps,
                    step_size=cfg.pgd_step_size,
                    steps=steps,
                    settings=settings,
                )
            else:
                x_adv, _ = pgd_attack(
                    self.logits, x, y, eps=cfg.eps, step_size=cfg.pgd_step_size, steps=steps
                )
        return x_adv

    def eval_attack(self) -> str:
        """The evaluation's attack budget in words, the column ``eval_attack`` beside every
        robust accuracy (a robust accuracy means nothing without the attack behind it).

        Example:
            >>> from orchestrator.tasks import TaskConfig
            >>> cfg = TaskConfig(eval_pgd_steps=10, pgd_step_size=0.5, eps=1.0)
            >>> AdversarialTrainer.describe_attack(cfg)
            'L2 eps 1: PGD-10 (step 0.5, DEQ anderson fwd<=30 bwd<=20), JIIO-80'
        """
        return self.describe_attack(self.config)

    @staticmethod
    def describe_attack(cfg: TaskConfig) -> str:
        pgd = cfg.eval_pgd_steps or cfg.pgd_steps
        jiio = cfg.eval_jiio_max_iter or cfg.jiio.max_iter
        return (
            f"L2 eps {cfg.eps:g}: PGD-{pgd} (step {cfg.pgd_step_size:g}, DEQ {cfg.deq_solver} "
            f"fwd<={cfg.deq_max_iter} bwd<={cfg.deq_backward_max_iter}), JIIO-{jiio}"
        )

    def attack_jiio(self, x: Tensor, y: Tensor, max_iter: int | None = None) -> JIIOResult:
        """JIIO examples: minimise ``-CE(head(z*(x')), y)`` over the eps-ball, jointly with ``z*``.

        Under grad mode ``res.z`` carries the implicit gradient to the parameters; with
        ``outer = CE(head(res.z), y)`` (a per-sample multiple of the inner loss) its backward
        is ``mu*`` reused, no solve. Under ``torch.no_grad`` nothing is attached.
        """
        head = self.head

        def inner(z: Tensor) -> Tensor:
            return -F.cross_entropy(head(z), y, reduction="none")

        config = self.config.jiio if max_iter is None else self.config.jiio.replace(max_iter=max_iter)
        return jiio_solve(self.cell, inner, x, config=config, project=l2_ball(x, self.config.eps))

    def _clock(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    # --- training -------------------------------------------------------------------------
    def train_step(self, x: Tensor, y: Tensor) -> StepOutcome:
        """One optimiser step on the batch built by ``config.mode``; see the module docstring.

        JIIO: samples whose augmented solve diverged are left out of the outer loss (their
        returned ``z`` is the last good iterate, finite, but not a solution); more than half
        diverged, or a non-finite loss or gradient, makes the step a diverged step with no
        update. ``jac_reg > 0`` adds the Hutchinson Jacobian penalty at the final ``(z, x)``
        of the step (the paper's code takes a random JIIO iterate; the final one is as valid
        a point of the trajectory and costs nothing extra to pick). The row reports which
        backward ran (:func:`~orchestrator.tasks.step_metrics.backward_stats`: ``backward_mode``
        "mu" when every sample reused ``mu*``, "ift" / "mixed" when some had to solve because
        their ``mu*`` had not met ``backward_tol``, "none" when no backward ran).
        """
        cfg = self.config
        t0 = self._clock()
        self.optimizer.zero_grad(set_to_none=True)
        metrics: dict[str, float] = {}
        res: JIIOResult | None = None
        too_many_diverged = False
        if cfg.mode == "jiio":
            res = self.attack_jiio(x, y)
            metrics.update(jiio_stats(res, self._clock() - t0))
            keep = ~res.diverged
            too_many_diverged = float(res.diverged.float().mean()) > 0.5
            x_used, z = res.x[keep], res.z[keep]
            metrics["inner_loss"] = float(-res.objective[keep].mean()) if bool(keep.any()) else math.nan
        else:
            x_used = x
            if cfg.mode == "pgd":
                t_attack = self._clock()
                x_used = self.attack_pgd(x, y)
                metrics["attack_s"] = self._clock() - t_attack
            z, _ = self.deq(x_used)
            keep = torch.ones_like(y, dtype=torch.bool)
        y_used = y[keep]
        logits = self.head(z)
        loss = F.cross_entropy(logits, y_used) if len(y_used) else logits.new_tensor(math.nan)
        if cfg.jac_reg > 0 and len(y_used):
            jac = jacobian_penalty(self.cell, z, x_used, probes=cfg.jac_reg_probes)
            metrics["jac_penalty"] = float(jac.detach())
            loss = loss + cfg.jac_reg * jac
        metrics["loss"] = float(loss.detach())
        metrics["train_acc"] = _correct(logits, y_used) / len(y_used) if len(y_used) else math.nan
        diverged = too_many_diverged or not math.isfinite(metrics["loss"])
        if not diverged:
            loss.backward()
            diverged = not self._grads_finite()
            if diverged:
                self.optimizer.zero_grad(set_to_none=True)
            else:
                self.optimizer.step()
        if res is not None:
            metrics.update(backward_stats(res))
        metrics["step_s"] = self._clock() - t0
        trace = mean_trace(res) if res is not None and self.want_trace() else None
        return StepOutcome(metrics, diverged=diverged, trace=trace)

    def _grads_finite(self) -> bool:
        """Whether every gradient entry is finite (one host sync for all parameters)."""
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        return not params or bool(torch.stack([torch.isfinite(p.grad).all() for p in params]).all())

    # --- evaluation -----------------------------------------------------------------------
    def evaluate(self) -> dict[str, Any]:
        """Test accuracy clean, under PGD and under JIIO (same eps), with attack times.

        Accuracy under JIIO is that of the classifier (plain DEQ) at the returned ``x*``,
        which is always in the eps-ball (also for samples whose solve diverged: their last
        good iterate). ``*_loss`` are mean cross-entropies at the attacked inputs, with
        their per-sample values in ``pgd_loss_samples`` / ``jiio_loss_samples``; ``eval_n``
        is the number of test samples every metric was computed on (accuracies and
        ``jiio_attack_diverged`` are counts over it). Attack times are totals.
        """
        n = clean = pgd = jiio = diverged = 0
        pgd_s = jiio_s = 0.0
        pgd_losses: list[Tensor] = []
        jiio_losses: list[Tensor] = []
        with _frozen(self.modules.values()):
            for x, y in self.eval_batches("test"):
                n += len(y)
                with torch.no_grad():
                    clean += _correct(self.logits(x), y)
                t = self._clock()
                x_pgd = self.attack_pgd(x, y, self.config.eval_pgd_steps, warm=False)  # the paper's PGD
                pgd_s += self._clock() - t
                t = self._clock()
                with torch.no_grad():
                    res = self.attack_jiio(x, y, self.config.eval_jiio_max_iter)
                jiio_s += self._clock() - t
                with torch.no_grad():
                    out = self.logits(x_pgd)
                    pgd += _correct(out, y)
                    pgd_losses.append(F.cross_entropy(out, y, reduction="none"))
                    out = self.logits(res.x)
                    jiio += _correct(out, y)
                    jiio_losses.append(F.cross_entropy(out, y, reduction="none"))
                diverged += int(res.diverged.sum())
        m = n if n else math.nan
        return {
            "eval_n": n,
            "clean_acc": clean / m,
            "pgd_acc": pgd / m,
            "jiio_acc": jiio / m,
            **samples_metric("pgd_loss", pgd_losses),
            **samples_metric("jiio_loss", jiio_losses),
            "pgd_attack_s": pgd_s,
            "jiio_attack_s": jiio_s,
            "jiio_attack_diverged": diverged / m,
            "eval_attack": self.eval_attack(),
        }


def attack_table(
    trainers: Mapping[str, AdversarialTrainer | Mapping[str, Any]],
) -> dict[str, dict[str, float]]:
    """The paper's Table 5: ``{row: {"clean": acc, "pgd": acc, "jiio": acc}}``.

    Rows are the keys of ``trainers`` (by convention how each was trained: clean, pgd,
    jiio); a value is a trainer (evaluated now, modules in eval mode) or the metrics of an
    :meth:`AdversarialTrainer.evaluate` already run (e.g. ``TaskResult.metrics``).
    """
    table: dict[str, dict[str, float]] = {}
    for name, src in trainers.items():
        if isinstance(src, AdversarialTrainer):
            for m in src.modules.values():
                m.eval()
            src = src.evaluate()
        table[name] = {a: float(src[f"{a}_acc"]) for a in ATTACKS}
    return table


def format_table(table: Mapping[str, Mapping[str, float]]) -> str:
    """Plain-text aligned table of accuracies in percent; rows trained-by, columns attack."""
    corner = "trained \\ attack"
    width = max([len(corner), *(len(r) for r in table)])
    lines = [corner.ljust(width) + "".join(f"{_TITLES[a]:>8}" for a in ATTACKS)]
    for row, accs in table.items():
        lines.append(row.ljust(width) + "".join(f"{100 * accs[a]:>7.1f}%" for a in ATTACKS))
    return "\n".join(lines)


def train_adversarial(
    config: TaskConfig, data_config: DataConfig, callback: Callback | None = None
) -> tuple[TaskResult, AdversarialTrainer]:
    """Load the data, build an :class:`AdversarialTrainer` and ``fit`` it: ``(result, trainer)``."""
    trainer = AdversarialTrainer(config, load_dataset(data_config))
    return trainer.fit(callback), trainer
