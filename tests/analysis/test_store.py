"""The store: hive-partitioned Parquet written with pyarrow, read back through DuckDB views."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet  # noqa: F401 - pa.parquet
import pytest

from wallwatch.analysis.store import VERDICTS_SCHEMA, Store, StoreError


def _verdict_rows(day: dt.date, n: int, verdict: str = "ok") -> pa.Table:
    start = dt.datetime.combine(day, dt.time(12, 0))
    rows = {
        "measurement_uid": [f"{day}-{i}" for i in range(n)],
        "measurement_start_time": [start] * n,
        "date": [day] * n,
        "probe_cc": ["IT"] * n,
        "probe_asn": [30722] * n,
        "probe_network_name": [None] * n,
        "probe_key": [f"r{i}" for i in range(n)],
        "test_name": ["whatsapp"] * n,
        "software_name": ["wallwatch"] * n,
        "service": ["whatsapp"] * n,
        "feature": ["text"] * n,
        "target": [None] * n,
        "verdict": [verdict] * n,
        "method": [None] * n,
        "confidence": [0.9] * n,
        "rule_id": ["r"] * n,
        "rules_version": ["v1"] * n,
        "blocked_share": [None] * n,
        "confirmed": [False] * n,
        **{name: [None] * n for name in ("fingerprint", "fingerprint_scope", "fingerprint_location",
                                         "fingerprint_found_in", "probe_fault", "unclassified_failure")},
    }
    return pa.table(rows, schema=VERDICTS_SCHEMA)


def test_empty_store_has_typed_views(tmp_path: Path) -> None:
    connection = Store(tmp_path / "none").connect()
    assert connection.execute("SELECT count(*) FROM verdicts").fetchone() == (0,)
    kinds = {row[0]: row[1] for row in connection.execute("DESCRIBE verdicts").fetchall()}
    assert kinds["date"] == "DATE" and kinds["probe_asn"] == "INTEGER"


def test_write_replace_is_idempotent_per_partition(tmp_path: Path) -> None:
    store = Store(tmp_path)
    day1, day2 = dt.date(2024, 1, 1), dt.date(2024, 1, 2)
    store.write("verdicts", pa.concat_tables([_verdict_rows(day1, 3), _verdict_rows(day2, 2)]))
    store.write("verdicts", _verdict_rows(day1, 4, verdict="blocked"))  # replaces day1 only
    counts = dict(
        store.connect()
        .execute("SELECT date, count(*) FROM verdicts GROUP BY date ORDER BY date")
        .fetchall()
    )
    assert counts == {day1: 4, day2: 2}
    table = store.read("verdicts", where="verdict = 'blocked'")
    assert table.num_rows == 4
    assert (tmp_path / "verdicts" / "date=2024-01-01").is_dir()


def test_append_adds_files(tmp_path: Path) -> None:
    store = Store(tmp_path)
    day = dt.date(2024, 3, 1)
    store.write("verdicts", _verdict_rows(day, 3), mode="append")
    store.write("verdicts", _verdict_rows(day, 3), mode="append")
    assert store.read("verdicts").num_rows == 6


def test_other_datasets_and_logs(tmp_path: Path) -> None:
    store = Store(tmp_path)
    table = pa.table({"date": [dt.date(2024, 1, 1)], "probe_cc": ["IR"], "n": [5]})
    store.write("series_daily", table, partition_by=("date", "probe_cc"))
    assert store.datasets() == ["series_daily"]
    assert store.connect().execute("SELECT probe_cc, n FROM series_daily").fetchall() == [("IR", 5)]
    assert store.append_jsonl("events", [{"a": 1}, {"a": 2}]) == 2
    store.append_jsonl("events", [{"a": 3}])
    assert [row["a"] for row in store.read_jsonl("events")] == [1, 2, 3]
    with pytest.raises(StoreError):
        store.write("x;drop", table)
    with pytest.raises(StoreError):
        store.write("series_daily", table, partition_by=("nope",))
    with pytest.raises(StoreError):
        store.read("missing")


def test_partitioned_write_puts_every_row_in_its_partition(tmp_path: Path) -> None:
    store = Store(tmp_path)
    days = [dt.date(2024, 1, 1 + i % 3) for i in range(30)]
    ccs = ["IR", "RU", "C N"][::-1] * 10  # a space must be URI-encoded in the path, as pyarrow does
    table = pa.table({"date": days, "probe_cc": ccs, "n": list(range(30))})
    store.write("series_x", table, partition_by=("date", "probe_cc"))
    got = store.connect().execute("SELECT date, probe_cc, n FROM series_x ORDER BY n").fetchall()
    assert got == list(zip(days, ccs, range(30)))
    leaves = {p.parent.relative_to(tmp_path / "series_x").as_posix() for p in (tmp_path / "series_x").rglob("*.parquet")}
    assert "date=2024-01-01/probe_cc=C%20N" in leaves and len(leaves) == 3
    # Replacing one partition leaves the others alone.
    store.write("series_x", table.slice(0, 1), partition_by=("date", "probe_cc"))
    assert store.connect().execute("SELECT count(*) FROM series_x").fetchone() == (30 - 10 + 1,)


@pytest.mark.parametrize("layout", ["grouped", "interleaved"])
def test_partition_files_keep_table_order(tmp_path: Path, layout: str) -> None:
    # Grouped runs are sliced without a sort, interleaved rows are sorted first (stable): either
    # way each partition's file holds its rows in table order.
    days = [dt.date(2024, 1, 1) + dt.timedelta(days=d) for d in range(3)]
    parts = [_verdict_rows(day, 200) for day in days]
    if layout == "grouped":  # a few runs per day, as ingest batches arrive
        table = pa.concat_tables([part.slice(s, 100) for s in (0, 100) for part in parts])
    else:  # one run per row
        table = pa.concat_tables([part.slice(i, 1) for i in range(200) for part in parts])
    Store(tmp_path).write("verdicts", table, mode="append")
    for day in days:
        files = list((tmp_path / "verdicts" / f"date={day}").glob("*.parquet"))
        assert len(files) == 1
        uids = pa.parquet.read_table(files[0]).column("measurement_uid").to_pylist()
        assert uids == [f"{day}-{i}" for i in range(200)]
