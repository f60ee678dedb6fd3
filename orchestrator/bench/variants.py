"""``--jiio-config`` of ``jiio bench`` (:mod:`orchestrator.bench`): extra JIIO variants, by
preset name, by fields, or both, each under a label."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from jiio_core import JIIOConfig
from orchestrator.bench.setup import BenchInputError

__all__ = ["jiio_variant", "jiio_variants"]


def jiio_variants(specs: list[str], base: JIIOConfig) -> dict[str, JIIOConfig]:
    """The ``--jiio-config`` variants by label: ``LABEL@SPEC`` names one, else the spec is its
    own label."""
    out: dict[str, JIIOConfig] = {}
    for spec in specs:
        label, at, body = spec.partition("@")
        label, body = (label.strip(), body) if at else (spec, spec)
        if not label or label in out or label.startswith(("jiio-", "pgd-", "adam-")):
            raise BenchInputError(f"--jiio-config {spec}: the label {label!r} is empty, repeated or reserved")
        out[label] = jiio_variant(body, base)
    return out


def jiio_variant(spec: str, base: JIIOConfig) -> JIIOConfig:
    """``--jiio-config``: a preset name (:data:`jiio_core.PRESETS`), ``NAME=VALUE,...`` fields
    set on ``base`` (the bench's own JIIO settings), or ``PRESET:NAME=VALUE,...`` (fields set
    on a preset)."""
    head, colon, rest = spec.partition(":") if ":" in spec else ("", "", spec)
    if head or "=" not in rest:
        try:
            base = JIIOConfig.preset(head or rest)
        except ValueError as err:
            raise BenchInputError(f"--jiio-config {spec}: {err}") from None
        if not colon:
            return base
    changes: dict[str, Any] = {}
    for item in rest.split(","):
        name, eq, text = item.partition("=")
        name = name.strip()
        if not eq or name not in {f.name for f in dataclasses.fields(JIIOConfig)}:
            raise BenchInputError(f"--jiio-config {spec}: {name!r} is not a JIIOConfig field (NAME=VALUE)")
        try:
            changes[name] = json.loads(text)
        except json.JSONDecodeError:
            changes[name] = text.strip()
    try:
        return base.replace(**changes)
    except (ValueError, TypeError) as err:
        raise BenchInputError(f"--jiio-config {spec}: {err}") from None
