"""Shapes shared by the pipeline's tables."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc


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
