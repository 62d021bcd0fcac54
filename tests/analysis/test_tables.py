"""Shapes shared by the tables: the run-boundary scan (store partitions, series, events)."""

from __future__ import annotations

import itertools
import random

import pyarrow as pa
import pytest

from wallwatch.analysis.tables import run_bounds


def _bounds_by_hand(rows: list[tuple[object, ...]]) -> list[tuple[int, int]]:
    """Runs of equal consecutive keys, Python equality (None == None): what run_bounds promises."""
    bounds, start = [], 0
    for _, group in itertools.groupby(rows):
        size = len(list(group))
        bounds.append((start, start + size))
        start += size
    return bounds


def test_runs_end_where_any_key_changes() -> None:
    table = pa.table({"cc": ["IR", "IR", "IR", "RU", "RU", "IR"], "asn": [1, 1, 2, 2, 2, 2], "x": range(6)})
    assert run_bounds(table, ["cc", "asn"]) == [(0, 2), (2, 3), (3, 5), (5, 6)]
    assert run_bounds(table, ["cc"]) == [(0, 3), (3, 5), (5, 6)]  # not sorted: IR again is a new run


def test_empty_table_has_no_runs_and_no_keys_is_one_run() -> None:
    empty = pa.table({"cc": pa.array([], pa.string())})
    assert run_bounds(empty, ["cc"]) == []
    assert run_bounds(empty, []) == []
    assert run_bounds(pa.table({"cc": ["IR"]}), ["cc"]) == [(0, 1)]
    assert run_bounds(pa.table({"cc": ["IR", "RU", "CN"]}), []) == [(0, 3)]


def test_nulls_are_one_key_and_differ_from_values() -> None:
    table = pa.table({"cc": [None, None, "IR", None, "IR", "IR"], "asn": [1, 1, 1, 1, None, None]})
    assert run_bounds(table, ["cc"]) == [(0, 2), (2, 3), (3, 4), (4, 6)]
    assert run_bounds(table, ["cc", "asn"]) == [(0, 2), (2, 3), (3, 4), (4, 6)]
    assert run_bounds(table, ["asn"]) == [(0, 4), (4, 6)]


def test_chunked_columns_and_types_match_python_grouping() -> None:
    rng = random.Random(8)
    rows = []
    while len(rows) < 500:  # runs of 1 to 40 equal rows
        key = (rng.choice(["IR", "RU", None]), rng.choice([1, 2, None]), rng.choice([True, False]))
        rows.extend([key] * rng.randint(1, 40))
    names = ["cc", "asn", "flag"]
    columns = {name: [row[i] for row in rows] for i, name in enumerate(names)}
    whole = pa.table(columns)
    # The same rows in chunks of odd sizes (a concatenation of batches, as the store gets them).
    chunked = pa.concat_tables([whole.slice(start, 37) for start in range(0, len(rows), 37)])
    assert chunked.column("cc").num_chunks > 1
    expected = _bounds_by_hand(rows)
    assert run_bounds(whole, names) == expected
    assert run_bounds(chunked, names) == expected


def test_unknown_key_column_is_an_error() -> None:
    with pytest.raises(KeyError):
        run_bounds(pa.table({"cc": ["IR"]}), ["asn"])
