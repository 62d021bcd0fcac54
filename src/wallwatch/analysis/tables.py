"""Shapes shared by the pipeline's tables: row classes -> Arrow schemas, and where runs of rows begin.

A dataset's row is defined once, as a typed dataclass (`analysis/rows.py`), the
way oonidata's `models/observations.py` dataclasses are its ClickHouse tables.
Everything else is derived from that class here: the Arrow schema (column names,
order and types) and the row template the ingest hot path copies, which builds
rows as plain dicts because a dict copy is several times cheaper than making a
dataclass instance per row (~60 observation rows a measurement).

Python hints map to Arrow types as follows; a width other than the default is
written as an `Annotated` hint carrying the Arrow type (oonidata writes ClickHouse
types the same way, `Annotated[int, "UInt8"]`):

    str -> string       int -> int64         float -> float64      bool -> bool
    datetime -> timestamp[us] (UTC, stored without a zone)          date -> date32
    list[T] -> list<T>  Int32 -> int32       Float32 -> float32

`X | None` says the pipeline may leave the column null. Every column is nullable
in the Arrow schema all the same, as the stored Parquet always was: the hint
documents, the schema does not enforce (a non-nullable column would turn one odd
record's null into a failed write of its whole batch).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from datetime import date, datetime
from functools import cache
from typing import Annotated, Any

import pyarrow as pa
import pyarrow.compute as pc

Int32 = Annotated[int, pa.int32()]
Float32 = Annotated[float, pa.float32()]

_PLAIN_TYPES: dict[type, pa.DataType] = {
    str: pa.string(),
    int: pa.int64(),
    float: pa.float64(),
    bool: pa.bool_(),
    datetime: pa.timestamp("us"),
    date: pa.date32(),
}


def _arrow_type(hint: Any, where: str) -> pa.DataType:
    origin = typing.get_origin(hint)
    if origin is Annotated:
        declared = [extra for extra in hint.__metadata__ if isinstance(extra, pa.DataType)]
        return declared[0] if declared else _arrow_type(typing.get_args(hint)[0], where)
    if origin in (typing.Union, types.UnionType):
        kinds = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(kinds) != 1:
            raise TypeError(f"{where}: a column holds one type (or None), got {hint!r}")
        return _arrow_type(kinds[0], where)
    if origin is list:
        (element,) = typing.get_args(hint)
        return pa.list_(_arrow_type(element, where))
    if hint in _PLAIN_TYPES:
        return _PLAIN_TYPES[hint]
    raise TypeError(f"{where}: no Arrow type for {hint!r}")


@cache
def arrow_schema(row_class: type) -> pa.Schema:
    """The Arrow schema of a row dataclass: its fields, in order, typed by their hints."""
    hints = typing.get_type_hints(row_class, include_extras=True)
    return pa.schema([
        pa.field(field.name, _arrow_type(hints[field.name], f"{row_class.__name__}.{field.name}"))
        for field in dataclasses.fields(row_class)
    ])


def row_template(row_class: type) -> dict[str, Any]:
    """A row as a dict: every column of `row_class`, at its default or None. A fresh dict each
    call; the hot path keeps one and copies it per row."""
    template = {}
    for field in dataclasses.fields(row_class):
        if field.default is not dataclasses.MISSING:
            template[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            template[field.name] = field.default_factory()
        else:
            template[field.name] = None
    return template


def run_bounds(table: pa.Table, keys: Sequence[str]) -> list[tuple[int, int]]:
    """The (start, end) row ranges, in table order, over which none of the `keys` columns changes.

    A run ends where any key column differs from the row before. Nulls compare as
    values: two nulls in a row are the same key, a null next to a value is a change
    (as GROUP BY and a sort group them). An empty table has no runs; with no keys the
    whole table is one run. The table is not sorted here: a key that comes back after
    another starts a new run, so callers that want one run per key sort first.
    """
    rows = table.num_rows
    if rows == 0:
        return []
    changed = None
    for name in keys:
        column = table.column(name)
        after, before = column.slice(1), column.slice(0, rows - 1)
        differs = pc.not_equal(after, before)
        if column.null_count:
            # not_equal is null where either side is: a change exactly when one side is null.
            differs = pc.or_(pc.fill_null(differs, False), pc.xor(pc.is_null(after), pc.is_null(before)))
        changed = differs if changed is None else pc.or_(changed, differs)
    starts = [0]
    if changed is not None:
        starts.extend(index + 1 for index in pc.indices_nonzero(changed).to_pylist())
    return list(zip(starts, [*starts[1:], rows], strict=True))
