"""The defaults of the cluster a sweep runs on, read from its launcher config.

A cluster config (``cluster/gpu.yaml``) carries the settings that differ per cluster
under Ray's free-form ``metadata`` key, which the launcher copies to the head as
``~/ray_bootstrap_config.yaml``::

    metadata:
      jiio:
        storage: s3://BUCKET/jiio     # where every node writes its rows and checkpoints
        gpus_per_trial: 0.25
        model_size: paper
        data_root: ~/data             # on every worker
        trial_limits:                 # optional: upper bounds on every trial (TaskConfig fields)
          max_steps_per_epoch: 2
          eval_batches: 1

The sweep command line resolves each setting as: its flag, else the cluster's setting,
else the built-in default, and prints which it used (:func:`resolve`). ``trial_limits``
bounds the sweep script's fixed settings instead (:meth:`ClusterSettings.limit`): each
limit is an upper bound on the TaskConfig field of that name (``epochs``,
``max_steps_per_epoch``, ``eval_batches``; a setting of None, no limit, takes it), the same
for every model size, except where the sweep's own flag of that name was given.

Example:
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "c.yaml")
    >>> _ = open(path, "w").write("metadata:\\n  jiio:\\n    gpus_per_trial: 0.5\\n")
    >>> s = ClusterSettings.load(path)
    >>> value, source = s.resolve("gpus_per_trial", None, 0.0)
    >>> value, source.startswith("cluster")
    (0.5, True)
    >>> _ = open(path, "w").write("metadata: {jiio: {trial_limits: {max_steps_per_epoch: 2, epochs: 1}}}")
    >>> s = ClusterSettings.load(path)
    >>> s.limit({"epochs": 3, "max_steps_per_epoch": None}, defaults={}, flags={"epochs": None})
    ({'epochs': 1, 'max_steps_per_epoch': 2}, {'epochs': 1, 'max_steps_per_epoch': 2})
    >>> s.limit({"epochs": 3}, defaults={"max_steps_per_epoch": None}, flags={"epochs": 5})  # --epochs 5
    ({'epochs': 3, 'max_steps_per_epoch': 2}, {'max_steps_per_epoch': 2})
    >>> _ = open(path, "w").write("metadata: {jiio: {trial_limits: {steps: 2}}}")
    >>> try:
    ...     ClusterSettings.load(path)
    ... except ClusterSettingsError as exc:
    ...     print(str(exc).split(": ", 1)[1])
    metadata.jiio.trial_limits.steps is not a limit; known: epochs, max_steps_per_epoch, eval_batches
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BOOTSTRAP", "KEYS", "TRIAL_LIMITS", "ClusterSettings", "ClusterSettingsError"]

BOOTSTRAP = "~/ray_bootstrap_config.yaml"  # written on the head by `ray up`
KEYS: dict[str, type] = {
    "storage": str,
    "gpus_per_trial": float,
    "model_size": str,
    "data_root": str,
    "trial_limits": dict,
}
# The TaskConfig fields metadata.jiio.trial_limits may bound (positive integers).
TRIAL_LIMITS = ("epochs", "max_steps_per_epoch", "eval_batches")
PLACEHOLDER = "BUCKET"


class ClusterSettingsError(ValueError):
    """The cluster config's ``metadata.jiio`` section is wrong; the message says what to fix."""


@dataclass(frozen=True)
class ClusterSettings:
    """``metadata.jiio`` of a cluster config (empty off a cluster)."""

    path: str | None = None
    values: dict[str, Any] = field(default_factory=dict)
    launcher: bool = False  # the config is a launcher's (an autoscaling, multi-node cluster)

    @classmethod
    def load(cls, path: str | None = None) -> ClusterSettings:
        """From ``path``, else ``$JIIO_CLUSTER_CONFIG``, else the head's bootstrap config."""
        explicit = path or os.environ.get("JIIO_CLUSTER_CONFIG")
        path = os.path.expanduser(explicit or BOOTSTRAP)
        if not os.path.isfile(path):
            if explicit:
                raise ClusterSettingsError(f"cluster config {path!r} (JIIO_CLUSTER_CONFIG) does not exist")
            return cls()
        import yaml

        try:
            with open(path) as f:
                doc = yaml.safe_load(f) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ClusterSettingsError(f"cannot read cluster config {path}: {exc}") from exc
        section = ((doc.get("metadata") or {}).get("jiio") or {}) if isinstance(doc, dict) else {}
        if not isinstance(section, dict):
            raise ClusterSettingsError(f"{path}: metadata.jiio must be a mapping, got {section!r}")
        values = {k: _check(path, k, v) for k, v in section.items() if v is not None}
        return cls(path, values, launcher=isinstance(doc, dict) and "provider" in doc)

    def resolve(self, key: str, flag: Any, default: Any) -> tuple[Any, str]:
        """``(value, source)``: the flag if given, else this cluster's setting, else ``default``."""
        if flag is not None:
            return flag, "flag"
        if key in self.values:
            value = self.values[key]
            if key == "storage" and PLACEHOLDER in value:
                raise ClusterSettingsError(
                    f"{self.path}: metadata.jiio.storage is still the placeholder {value!r}: put your bucket "
                    "there in cluster/gpu.yaml (then `ray up` again), or pass --storage s3://YOUR-BUCKET/PREFIX"
                )
            return value, f"cluster {self.path}"
        return default, "default"

    def limit(
        self, fixed: dict[str, Any], defaults: dict[str, Any], flags: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(fixed with this cluster's trial_limits applied, the limits applied)``. A limit
        lowers the fixed setting of its name (or, where ``fixed`` has none, the default in
        ``defaults``, TaskConfig's) to at most its value; None (no limit) counts as above
        every limit. Skipped where ``flags`` holds a value for that name: a flag wins."""
        out, applied = dict(fixed), {}
        limits = self.values.get("trial_limits") or {}
        for key in TRIAL_LIMITS:  # one order, whatever the config's
            cap = limits.get(key)
            if cap is None or flags.get(key) is not None:
                continue
            current = out.get(key, defaults.get(key))
            out[key] = cap if current is None else min(current, cap)
            applied[key] = cap
        return out, applied


def _check(path: str, key: str, value: Any) -> Any:
    if key not in KEYS:
        raise ClusterSettingsError(f"{path}: metadata.jiio.{key} is not a setting; known: {', '.join(KEYS)}")
    kind = KEYS[key]
    if kind is dict:
        if not isinstance(value, dict) or not value:
            raise ClusterSettingsError(
                f"{path}: metadata.jiio.{key} must be a mapping such as "
                f"{{max_steps_per_epoch: 2, eval_batches: 1}}, got {value!r}"
            )
        for name, n in value.items():
            if name not in TRIAL_LIMITS:
                raise ClusterSettingsError(
                    f"{path}: metadata.jiio.{key}.{name} is not a limit; known: {', '.join(TRIAL_LIMITS)}"
                )
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise ClusterSettingsError(
                    f"{path}: metadata.jiio.{key}.{name} must be an integer >= 1, got {n!r}"
                )
        return dict(value)
    if kind is float:
        ok = (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
            and value >= 0
        )
        if not ok:
            raise ClusterSettingsError(
                f"{path}: metadata.jiio.{key} must be a finite number >= 0, got {value!r}"
            )
        return float(value)
    if not isinstance(value, str) or not value:
        raise ClusterSettingsError(f"{path}: metadata.jiio.{key} must be a non-empty string, got {value!r}")
    if key == "model_size" and value not in ("tiny", "paper"):
        raise ClusterSettingsError(
            f"{path}: metadata.jiio.model_size must be 'tiny' or 'paper', got {value!r}"
        )
    return value
