"""A searched hyperparameter (:class:`Dim`): no Ray, no torch, so a sweep script's flags
are read in a fraction of a second (``orchestrator.driver.search`` re-exports it)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["Dim"]


@dataclass(frozen=True)
class Dim:
    """One searched hyperparameter: ``loguniform``/``uniform`` (low, high), ``int`` (low, high,
    inclusive), or ``choice`` (choices).

    Example:
        >>> Dim("loguniform", 0.1, 1.0).contains(0.5), Dim("int", 1, 4).contains(5)
        (True, False)
    """

    kind: str
    low: float = 0.0
    high: float = 0.0
    choices: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ("loguniform", "uniform", "int", "choice"):
            raise ValueError(f"Dim kind must be loguniform, uniform, int or choice, got {self.kind!r}")
        if self.kind == "choice" and not self.choices:
            raise ValueError("Dim kind 'choice' needs choices")
        finite = all(isinstance(v, (int, float)) and math.isfinite(v) for v in (self.low, self.high))
        bad_range = not finite or not (self.low < self.high) or (self.kind == "loguniform" and self.low <= 0)
        if self.kind != "choice" and bad_range:
            raise ValueError(
                f"Dim {self.kind} needs finite 0 < low < high (low > 0 for loguniform), got {self}"
            )

    def contains(self, value: Any) -> bool:
        if self.kind == "choice":
            return value in self.choices
        return isinstance(value, (int, float)) and self.low <= value <= self.high

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "low": self.low, "high": self.high, "choices": list(self.choices)}

    def optuna(self):
        """The same dimension as an Optuna distribution (what OptunaSearch samples from)."""
        from optuna import distributions as d

        if self.kind == "loguniform":
            return d.FloatDistribution(self.low, self.high, log=True)
        if self.kind == "uniform":
            return d.FloatDistribution(self.low, self.high)
        if self.kind == "int":
            return d.IntDistribution(int(self.low), int(self.high))
        return d.CategoricalDistribution(list(self.choices))

    def tune(self):
        from ray import tune

        if self.kind == "loguniform":
            return tune.loguniform(self.low, self.high)
        if self.kind == "uniform":
            return tune.uniform(self.low, self.high)
        if self.kind == "int":
            return tune.randint(int(self.low), int(self.high) + 1)
        return tune.choice(list(self.choices))
