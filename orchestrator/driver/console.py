"""The sweep's console: one compact live display instead of Tune's tables.

Shows trials done (by status), running and left, the best so far with its parameters
and, where the trial reported how many samples its objective was measured on
(``eval_n``), its 95% Wilson interval; elapsed time and an ETA from the mean time per
finished trial. On a terminal it redraws in place (rich); in a log (no terminal) it
prints one line per finished trial. ``--verbose`` gives Tune's own tables back instead.
"""

from __future__ import annotations

import math
import time
from typing import Any

from ray.tune import Callback

from orchestrator.stats import wilson_for

__all__ = ["SweepConsole", "best_finished"]


def best_finished(rows, metric: str, mode: str, searched: tuple[str, ...]):
    """The best completed row of ``rows`` (a trials DataFrame) as the console's ``best``:
    ``(value, {trial_key, eval_n, searched params})``, or None."""
    if rows is None or not len(rows) or metric not in rows or "status" not in rows:
        return None
    done = rows[rows["status"] == "completed"]
    values = [
        (float(v), i)
        for i, v in zip(done.index, done[metric], strict=True)
        if isinstance(v, (int, float)) and math.isfinite(v)
    ]
    if not values:
        return None
    value, i = max(values) if mode == "max" else min(values)
    row = done.loc[i]
    info = {k: row.get(k) for k in searched}
    info["trial_key"] = row.get("trial_id", "?")
    if "eval_n" in row and isinstance(row["eval_n"], (int, float)) and math.isfinite(row["eval_n"]):
        info["eval_n"] = int(row["eval_n"])
    return value, info


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class SweepConsole(Callback):
    """A Tune callback drawing the sweep's progress (see the module docstring)."""

    def __init__(
        self,
        name: str,
        total: int,
        finished_before: int,
        metric: str,
        mode: str,
        searched: tuple[str, ...],
        live: bool | None = None,
        best: tuple[float, dict[str, Any]] | None = None,
    ) -> None:
        self.name, self.total, self.before = name, total, finished_before
        self.metric, self.mode, self.searched = metric, mode, searched
        self.live_wanted = live
        self.t0 = time.time()
        self.counts = {"completed": 0, "diverged": 0, "pruned": 0, "error": 0}
        self.running: set[str] = set()
        self.last: dict[str, dict[str, Any]] = {}
        # The best so far: on a resume, seeded with the best of the trials finished before.
        self.best: tuple[float, dict[str, Any]] | None = best
        self._live = None
        self._console = None
        self._drawn = 0.0

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its callbacks: no terminal state
        return {k: v for k, v in self.__dict__.items() if k not in ("_live", "_console")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _live=None, _console=None)

    @property
    def console(self):
        if self._console is None:
            from rich.console import Console

            self._console = Console()
        return self._console

    # --- what the display says ----------------------------------------------------------
    @property
    def done(self) -> int:
        return self.before + sum(self.counts.values())

    def _best_text(self) -> str:
        if self.best is None:
            return f"best {self.metric}: none yet"
        value, result = self.best
        n = result.get("eval_n")
        ci = ""
        if isinstance(n, (int, float)) and n > 0 and self.metric.endswith("acc"):
            lo, hi = wilson_for(value, int(n))
            ci = f" [{lo:.3f}, {hi:.3f}] (95% Wilson, n={int(n)})"
        params = " ".join(f"{k}={_fmt(result.get(k))}" for k in self.searched)
        return f"best {self.metric} {value:.4g}{ci}  trial {result.get('trial_key', '?')}: {params}"

    def summary(self) -> str:
        """Two lines: progress and the best so far."""
        elapsed = time.time() - self.t0
        ran = sum(self.counts.values())
        left = max(0, self.total - self.done)
        eta = elapsed / ran * left if ran else math.nan
        by = ", ".join(f"{v} {k}" for k, v in self.counts.items() if v)
        earlier = f" ({self.before} before this run)" if self.before else ""
        line = (
            f"sweep {self.name}: {self.done}/{self.total} done{earlier}"
            f"{' - ' + by if by else ''}; {len(self.running)} running, {left} left; "
            f"elapsed {_clock(elapsed)}, ETA {_clock(eta) if left else '0:00'}"
        )
        return line + "\n" + self._best_text()

    def _draw(self, force: bool = False) -> None:
        if self._live is None or (not force and time.time() - self._drawn < 0.5):
            return
        from rich.text import Text

        self._live.update(Text(self.summary()), refresh=True)
        self._drawn = time.time()

    # --- Tune's hooks ---------------------------------------------------------------------
    def setup(self, **info: Any) -> None:
        live = self.console.is_terminal if self.live_wanted is None else self.live_wanted
        if live:
            from rich.live import Live

            self._live = Live(console=self.console, auto_refresh=False, transient=False)
            self._live.start()
            self._draw(force=True)
        else:
            self.console.print(self.summary(), markup=False, highlight=False)  # wrapped to its width

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.running.add(trial.trial_id)
        self._draw()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.last[trial.trial_id] = dict(result, **{k: trial.config.get(k) for k in self.searched})
        if not result.get("final"):
            self._draw()
            return
        status = str(result.get("status", "completed"))
        self.counts[status] = self.counts.get(status, 0) + 1
        self.running.discard(trial.trial_id)
        value = result.get(self.metric)
        if status == "completed" and isinstance(value, (int, float)) and math.isfinite(value):
            best = self.best[0] if self.best is not None else None
            if best is None or (value > best if self.mode == "max" else value < best):
                self.best = (float(value), self.last[trial.trial_id])
        self._event(f"trial {result.get('trial_key', trial.trial_id)} {status}")

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        if trial.trial_id in self.running:  # ended without its final report: stopped by ASHA
            self.running.discard(trial.trial_id)
            self.counts["pruned"] += 1
            self._event(f"trial {trial.config.get('trial_id', trial.trial_id)} pruned")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.running.discard(trial.trial_id)
        self.counts["error"] += 1
        self._event(f"trial {trial.config.get('trial_id', trial.trial_id)} error (retries spent)")

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        self._event(f"trial {trial.config.get('trial_id', trial.trial_id)} failed; Tune retries it")

    def on_experiment_end(self, trials, **info) -> None:
        self.close()

    def _event(self, what: str) -> None:
        if self._live is not None:
            self._draw(force=True)
        else:
            self.console.print(f"{what}. {self.summary()}", markup=False, highlight=False)

    def close(self) -> None:
        if self._live is not None:
            self._draw(force=True)
            self._live.stop()
            self._live = None


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
