"""Trial records: one small JSON file per started trial, ``pending/sweep=NAME/<id>.json``.

A record holds the trial's parameters and its attempt history (attempts, accumulated wall
time, earlier errors, host, device, versions) and its state (``running`` until the trial's
row is written, then ``finished``). It outlives the trial: it names every trial ever
started (so no started point is proposed again), lets a trial whose row was lost be
recomputed, and gives the rows the driver writes (pruned, error) the trial's provenance.
Mixed into :class:`orchestrator.storage.ResultStore`, whose ``put``, ``keys``,
``is_file``, ``get`` and ``report_corrupt`` it uses.
"""

from __future__ import annotations

import json
from typing import Any

from orchestrator.storage import layout

__all__ = ["TrialRecords"]


class TrialRecords:
    """Records of started trials (see the module docstring)."""

    def record_path(self, sweep: str, trial_id: str) -> str:
        """Where the record of ``trial_id`` is (``pending/sweep=NAME/<trial_id>.json``)."""
        return layout.record_file(self.base, sweep, trial_id)

    def write_record(self, sweep: str, trial_id: str, record: dict[str, Any]) -> None:
        """Write a trial's record (``params`` and its attempt history)."""
        self.put(self.record_path(sweep, trial_id), json.dumps(record, default=repr).encode())

    def record(self, sweep: str, trial_id: str) -> dict[str, Any] | None:
        """The trial's record, or None. Records of earlier versions (the bare parameters) are
        read as a running trial with those parameters; an unreadable one is quarantined."""
        path = self.record_path(sweep, trial_id)
        if not self.is_file(path):
            return None
        try:
            data = json.loads(self.get(path).decode())
        except (ValueError, OSError) as exc:
            self.report_corrupt(path, exc, "quarantine")
            return None
        if not isinstance(data, dict):
            self.report_corrupt(path, ValueError("not a JSON object"), "quarantine")
            return None
        if not isinstance(data.get("params"), dict):  # an earlier version's record: the parameters
            data = {"params": data, "trial_id": trial_id, "state": "running"}
        return data

    def records(self, sweep: str) -> dict[str, dict[str, Any]]:
        """Every started trial's record, by trial id."""
        out = {}
        for key in self.keys("pending", sweep):
            rec = self.record(sweep, key)
            if rec is not None:
                out[key] = rec
        return out

    def write_pending(self, sweep: str, trial_id: str, params: dict[str, Any]) -> None:
        """Record a started trial with these parameters (no attempt yet)."""
        self.write_record(sweep, trial_id, {"params": params, "trial_id": trial_id, "state": "running"})

    def pending(self, sweep: str) -> dict[str, dict[str, Any]]:
        """Started, unfinished trials: their parameters, by trial id."""
        return {k: r["params"] for k, r in self.records(sweep).items() if r.get("state") != "finished"}

    def mark_finished(self, sweep: str, trial_id: str) -> None:
        """Mark a trial's record finished (kept: it names every trial ever started)."""
        rec = self.record(sweep, trial_id)
        if rec is not None:
            rec["state"] = "finished"
            self.write_record(sweep, trial_id, rec)
