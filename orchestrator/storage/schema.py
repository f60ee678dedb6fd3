"""Arrow schemas of the rows the store writes, and how files with differing schemas combine.

Why: a row is a dict of Python values, and a column that is ``None`` in every row of one
file carries no type. Written as Arrow's ``null`` type it would fail to combine with a file
where the column has values, so such columns get their declared type (:func:`declared_types`);
read back, a column that is all-null in a file is typed ``null`` again
(:func:`untyped_nulls`), so another file's values decide the column's type.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from typing import Any

import pyarrow as pa

__all__ = ["KEYS", "arrow_schema", "as_text", "clean_value", "declared_types", "untyped_nulls"]

KEYS = {
    "trials": ["trial_id"],
    "steps": ["trial_id", "step", "phase"],
    "traces": ["trial_id", "step", "iteration"],
    "pareto": ["trial_id"],
}
"""The key of each table: rows are deduplicated on it (the last one read wins)."""

# Optional columns that are not JIIOConfig fields: the trial's own settings and outcome.
_OTHER_OPTIONAL: dict[str, pa.DataType] = {
    "alpha_x_after": pa.float64(),  # results of earlier versions
    "error_history": pa.string(),
    "max_steps_per_epoch": pa.int64(),
    "eval_batches": pa.int64(),
    "error": pa.string(),
    "git_sha": pa.string(),
    "data_root": pa.string(),
}
_ARROW = {int: pa.int64(), float: pa.float64(), str: pa.string(), bool: pa.bool_()}


@functools.cache
def declared_types() -> dict[str, pa.DataType]:
    """Declared types of columns that can be None in every row of a file (optional settings).

    The solver's optional settings are derived from the fields of
    :class:`jiio_core.JIIOConfig` typed ``X | None`` (so a new solver field needs no edit
    here); the others are listed above. Computed on first use: ``jiio_core`` imports torch,
    which a reader of results does not need.
    """
    from jiio_core import JIIOConfig

    hints = typing.get_type_hints(JIIOConfig)
    out: dict[str, pa.DataType] = {}
    for f in dataclasses.fields(JIIOConfig):
        hint = hints[f.name]
        if typing.get_origin(hint) not in (typing.Union, types.UnionType):
            continue
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and args[0] in _ARROW:
            out[f.name] = _ARROW[args[0]]
    return {**out, **_OTHER_OPTIONAL}


def _arrow_type(name: str, values: list[Any]) -> pa.DataType:
    present = [v for v in values if v is not None]
    if not present:
        return declared_types().get(name, pa.float64())
    if all(isinstance(v, bool) for v in present):
        return pa.bool_()
    if all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return declared_types().get(name, pa.int64())
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pa.float64()
    if all(isinstance(v, (list, tuple)) for v in present):
        return pa.list_(pa.float64())
    return pa.string()


def arrow_schema(rows: list[dict[str, Any]]) -> pa.Schema:
    """An explicit schema for ``rows`` (column order: first appearance)."""
    names: list[str] = []
    for row in rows:
        names.extend(k for k in row if k not in names)
    return pa.schema([pa.field(n, _arrow_type(n, [r.get(n) for r in rows])) for n in names])


def as_text(value: Any) -> str:
    """A value of a column typed string (mixed kinds): lists and booleans as JSON."""
    return json.dumps(value) if isinstance(value, (list, bool)) else str(value)


def untyped_nulls(t: pa.Table) -> pa.Table:
    """Columns that are None in every row of a file carry no type information: read them as
    Arrow's null type, so another file's values of any type decide the column's type."""
    for i, f in enumerate(t.schema):
        if t.num_rows and t.column(i).null_count == t.num_rows and f.type != pa.null():
            t = t.set_column(i, pa.field(f.name, pa.null()), pa.nulls(t.num_rows))
    return t


def clean_value(value: Any) -> Any:
    """A row value as the store writes it: lists of floats, scalars, else its ``str``."""
    if isinstance(value, (list, tuple)):
        return [float(v) for v in value]
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    return str(value)
