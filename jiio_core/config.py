"""Validated configurations of the DEQ solve and of the JIIO augmented solve.

Field names are the project's hyperparameter names: the same in code, sweep configs, CLI
flags and Parquet columns (``alpha_z``, ``alpha_mu``, ``alpha_x``, ``anderson_m``, ...).
Invalid values raise ``ValueError`` naming the field and its allowed range.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

__all__ = ["PRESETS", "SOLVERS", "DEQConfig", "JIIOConfig", "Preset", "preset"]

SOLVERS = ("anderson", "broyden", "fixed_point")
"""The fixed-point solver names, listed here only: the configs, ``make_mixer``, the task
config's ``deq_solver`` and the CLIs' choices all check against this tuple (its order is
that of the error messages)."""
_BACKWARDS = ("ift", "jfb")


def _check(ok: bool, field: str, allowed: str, value: Any) -> None:
    if not ok:
        raise ValueError(f"{field} must be {allowed}, got {value!r}")


def _in(value: Any, field: str, choices: tuple[str, ...]) -> None:
    _check(value in choices, field, "one of " + ", ".join(repr(c) for c in choices), value)


def _pos_int(value: Any, field: str) -> None:
    _check(
        isinstance(value, int) and not isinstance(value, bool) and value >= 1, field, "an integer >= 1", value
    )


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _at_least(value: Any, field: str, low: float, strict: bool = False) -> None:
    ok = _finite(value) and (value > low if strict else value >= low)
    _check(ok, field, f"a finite number {'>' if strict else '>='} {low:g}", value)


def _check_solve_fields(cfg: Any) -> None:
    """The fields DEQConfig and JIIOConfig share: solver, iterations, Anderson, backward."""
    _in(cfg.solver, "solver", SOLVERS)
    _pos_int(cfg.max_iter, "max_iter")
    _at_least(cfg.tol, "tol", 0)
    _pos_int(cfg.anderson_m, "anderson_m")
    _at_least(cfg.anderson_lam, "anderson_lam", 0)
    _in(cfg.backward, "backward", _BACKWARDS)
    _pos_int(cfg.backward_max_iter, "backward_max_iter")
    _at_least(cfg.backward_tol, "backward_tol", 0)
    _at_least(cfg.divergence_factor, "divergence_factor", 1, strict=True)


@dataclass(frozen=True)
class DEQConfig:
    """How a plain DEQ finds its fixed point and differentiates through it.

    ``backward="ift"`` solves ``u = J_f^T u + grad`` with the same solver
    (``backward_max_iter``, ``backward_tol``); ``"jfb"`` uses the Jacobian-free
    backward (``u = grad``, one step; Fung et al. 2022).

    Example:
        >>> DEQConfig(solver="broyden", max_iter=18).max_iter
        18
    """

    solver: str = "anderson"
    max_iter: int = 30
    tol: float = 1e-4
    anderson_m: int = 5
    anderson_lam: float = 1e-5
    backward: str = "ift"
    backward_max_iter: int = 30
    backward_tol: float = 1e-5
    divergence_factor: float = 1e4

    def __post_init__(self) -> None:
        _check_solve_fields(self)

    @classmethod
    def paper(cls) -> DEQConfig:
        """The plain-DEQ solves of the paper's baselines: Broyden, 18 forward and 18 backward steps."""
        return cls(solver="broyden", max_iter=18, backward_max_iter=18, tol=1e-4)


@dataclass(frozen=True)
class JIIOConfig:
    """Hyperparameters of the augmented (z, mu, x) iteration, paper eq. (11).

    - ``alpha_z``, ``alpha_mu`` in (0, 1]: damping of the z and mu updates.
    - ``alpha_x`` > 0: step size on x. ``alpha_x_drop`` (a ratio, or None): from iteration
      :meth:`alpha_x_switch` on the step is ``alpha_x * alpha_x_drop`` (the paper code's
      one-time drop: 0.6 -> 0.2 is 1/3). ``alpha_x_switch_iter`` is the 0-based iteration
      where the dropped value is first used; None means the paper's rule
      ``max(50, 5 * max_iter // 8) - 1`` (no drop when that is >= ``max_iter``), which
      follows ``max_iter`` when a sweep searches it.
    - ``x_step``: ``"gradient"`` steps along ``J_x^T mu``; ``"normalized"`` along
      ``J_x^T mu / (|J_x^T mu| + 1e-8)`` per sample (the paper's adversarial setting).
    - ``init``: the start of z when no ``z0`` is passed: ``"cell_step"`` (one cell step from
      ``f.init_z(x0)`` or zeros, not counted; the default) or ``"zero"`` (``f.init_z(x0)`` or
      zeros, the paper code's start). mu and x - x0 always start at zero.
    - ``solver``: acceleration of the joint iteration; ``anderson_m``, ``anderson_type``
      ("I": ``H = X G^T`` as in the paper code, "II": ``H = G G^T``), ``anderson_lam``
      (relative ridge; 0: the bordered sum-to-one system without ridge, 1e-3 added only
      where that solve fails, as the paper code), ``anderson_beta`` (mixing; the paper's 1).
      Anderson's first step is a plain step, so it first mixes at the third iterate (the
      paper code's two plain evaluations).
    - ``max_iter``; ``tol`` on the relative residual ``|F(v) - v| / |F(v)|`` of the
      augmented map decides ``converged``; ``early_stop`` stops a sample once converged
      (the paper code runs all iterations).
    - ``select``: which iterate each sample returns: ``"last"``, ``"residual"`` (lowest
      residual), ``"objective"`` (lowest objective among iterates whose residual is within
      ``select_slack`` times the lowest seen), ``"paper"`` (the paper code's rule, with
      ``rel = |F - X| / (1e-5 + |F|)``: an iterate is kept while k < 10, or when its rel is
      a new minimum, or when its objective is below the kept one's with rel below
      ``select_slack`` times the minimum; the minimum is reset to each rel while k < 10).
    - ``backward``: gradient for outer losses other than +/- the inner loss, and for samples
      whose mu* did not meet ``backward_tol`` (which reuse mu* otherwise, paper eq. 19):
      ``"ift"`` (solve warm-started from the scaled mu*, x* fixed) or ``"jfb"``.

    Example:
        >>> cfg = JIIOConfig.paper("mnist_adversarial")
        >>> (cfg.alpha_x, cfg.alpha_x_drop, cfg.alpha_x_switch(), cfg.max_iter)
        (0.6, 0.33333333333333337, 49, 80)
        >>> cfg.alpha_x_at(48), cfg.alpha_x_at(49)
        (0.6, 0.2)
        >>> cfg.replace(max_iter=40).alpha_x_switch() is None   # 49 >= 40: no drop
        True
    """

    alpha_z: float = 0.8
    alpha_mu: float = 0.6
    alpha_x: float = 0.1
    solver: str = "anderson"
    anderson_m: int = 20
    max_iter: int = 80
    tol: float = 1e-4
    early_stop: bool = True
    alpha_x_switch_iter: int | None = None
    alpha_x_drop: float | None = None
    x_step: str = "gradient"
    init: str = "cell_step"
    select: str = "last"
    select_slack: float = 1.3
    anderson_type: str = "II"
    anderson_lam: float = 1e-5
    anderson_beta: float = 1.0
    backward: str = "ift"
    backward_max_iter: int = 30
    backward_tol: float = 1e-5
    divergence_factor: float = 1e4

    def __post_init__(self) -> None:
        for name in ("alpha_z", "alpha_mu", "anderson_beta"):
            v = getattr(self, name)
            _check(_finite(v) and 0 < v <= 1, name, "in (0, 1]", v)
        _at_least(self.alpha_x, "alpha_x", 0, strict=True)
        _check_solve_fields(self)
        _check(isinstance(self.early_stop, bool), "early_stop", "a bool", self.early_stop)
        if self.alpha_x_drop is not None:
            _at_least(self.alpha_x_drop, "alpha_x_drop", 0, strict=True)
        if self.alpha_x_switch_iter is not None:
            _check(
                self.alpha_x_drop is not None,
                "alpha_x_switch_iter",
                "None unless alpha_x_drop is set (the switch iteration of the drop)",
                self.alpha_x_switch_iter,
            )
            _pos_int(self.alpha_x_switch_iter, "alpha_x_switch_iter")
        _in(self.x_step, "x_step", ("gradient", "normalized"))
        _in(self.init, "init", ("cell_step", "zero"))
        _in(self.select, "select", ("last", "residual", "objective", "paper"))
        _at_least(self.select_slack, "select_slack", 1)
        _in(self.anderson_type, "anderson_type", ("I", "II"))

    def alpha_x_switch(self) -> int | None:
        """The 0-based iteration where ``alpha_x * alpha_x_drop`` is first used, or None.

        ``alpha_x_switch_iter`` when set, else the paper code's rule: it sets the new value
        when ``(it + 1) % max(50, 5 T // 8) == 0``, i.e. first at ``max(50, 5 T // 8) - 1``;
        None when there is no drop or it would come at or after ``max_iter``.
        """
        if self.alpha_x_drop is None:
            return None
        if self.alpha_x_switch_iter is not None:
            at = self.alpha_x_switch_iter
        else:
            at = max(50, 5 * self.max_iter // 8) - 1
        return at if at < self.max_iter else None

    def alpha_x_at(self, iteration: int) -> float:
        """The x step size in use at (0-based) ``iteration``."""
        at = self.alpha_x_switch()
        if at is not None and iteration >= at:
            assert self.alpha_x_drop is not None
            return self.alpha_x * self.alpha_x_drop
        return self.alpha_x

    def replace(self, **changes: Any) -> JIIOConfig:
        """A copy with ``changes`` applied (and validated)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def preset(cls, name: str) -> JIIOConfig:
        """A named setting of :data:`jiio_core.presets.PRESETS` (the paper's, and those the
        project's solver sweeps found, each with its source), e.g.
        ``JIIOConfig.preset("paper-mnist-adversarial")``."""
        return preset(name)

    @classmethod
    def paper(cls, task: str) -> JIIOConfig:
        """The settings of the paper's released code (JIIO, Gurumurthy et al., NeurIPS 2021) for ``task``.

        ``task``: ``"mnist_adversarial"``, ``"cifar_adversarial"`` or ``"celeba_generative"``.
        Start z = 0, mu = 0, x = x0 (``init="zero"``); Anderson type I, ``beta = 1``, no ridge
        (``anderson_lam=0``); no early stop; the paper's kept iterate (``select="paper"``);
        the alpha_x drop by the paper's rule (``alpha_x_switch_iter=None``). One project
        change is kept: x is projected again after every Anderson mix.
        """
        common: dict[str, Any] = dict(
            alpha_z=0.8,
            alpha_mu=0.6,
            solver="anderson",
            anderson_type="I",
            anderson_lam=0.0,
            anderson_beta=1.0,
            init="zero",
            early_stop=False,
            select="paper",
            select_slack=1.3,
            tol=1e-3,
        )
        if task == "mnist_adversarial":  # 0.6 -> 0.2 (0.2 / 0.6 so that 0.6 * drop == 0.2 exactly)
            return cls(
                **common, alpha_x=0.6, alpha_x_drop=0.2 / 0.6, x_step="normalized", max_iter=80, anderson_m=20
            )
        if task == "cifar_adversarial":
            return cls(**common, alpha_x=0.1, x_step="normalized", max_iter=80, anderson_m=20)
        if task == "celeba_generative":  # 0.01 -> 0.003
            return cls(
                **common, alpha_x=0.01, alpha_x_drop=0.3, x_step="gradient", max_iter=100, anderson_m=40
            )
        raise ValueError(
            f"task must be one of 'mnist_adversarial', 'cifar_adversarial', 'celeba_generative', got {task!r}"
        )


# --- presets (re-exported by jiio_core.presets, whose docstring says what they are) ---


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
        "than the paper's JIIO-80 at 0.3% lower attack cross-entropy, PGD-19's strength; against the "
        "strong (warm-started) PGD only 1.6x at equal cross-entropy and tied at equal accuracy",
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
        "than the paper's JIIO-100 at 44% lower reconstruction loss; Adam-25's loss 10x faster; "
        "against the strong (warm-started) Adam 1.55x",
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
