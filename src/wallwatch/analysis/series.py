"""Series: a dense hourly and daily grid per (country, ASN, service, feature).

Every series covers every bucket of the window, so an hour with no
measurements is a row in state 'insufficient' rather than a missing row: the
detector and the charts both need to see silence (ooni/data
docs/implementation-plan.md §3.10 asks for the same "dense hour grid").

Columns of `series_hourly` (`hour`) and `series_daily` (`day`), partitioned by `date`:
probe_cc, probe_asn, probe_network_name, service, feature, hour|day, date,
n_measurements, n_probes, n_probes_decisive, n_probes_blocked, n_probes_ok,
n_probes_down, n_ok, n_blocked, n_down, n_unknown, blocked_<method> for each
method in `series_queries.METHODS` plus blocked_other, blocked_weight (sum over
decisive probes of each one's blocked share of its measurements),
example_blocked_uid, blocked_share (blocked_weight / decisive probes, null when
none), state (insufficient|down|blocked|partial|ok). Probe counts are distinct
`probe_key`s ("n_probes_blocked": saw blocking at least once); measurement
counts are distinct `measurement_uid`s, a measurement taking the strongest of
its targets' verdicts (blocked > ok > down > unknown).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from wallwatch.analysis import series_queries as q

HOURLY = "series_hourly"
DAILY = "series_daily"
_GRAINS = {"hour": (HOURLY, timedelta(hours=1)), "day": (DAILY, timedelta(days=1))}
_CC = re.compile(r"^[A-Z]{2}$")


class SeriesError(ValueError):
    """Bad series request (unknown grain, malformed country code, empty window)."""


@dataclass(frozen=True)
class SeriesRequest:
    """Which verdicts become series. Times are UTC; naive datetimes are taken as UTC."""

    start: datetime | None = None
    end: datetime | None = None  # inclusive: the bucket holding `end` is the last one
    countries: tuple[str, ...] = ()
    # Fewest decisive distinct probes for a bucket to say anything (else 'insufficient').
    min_probes: int = 1

    def where(self) -> tuple[str, list[object]]:
        clauses, params = ["1 = 1"], []
        if self.start is not None:
            clauses.append("measurement_start_time >= ?")
            params.append(_naive_utc(self.start))
        if self.end is not None:
            clauses.append("measurement_start_time <= ?")
            params.append(_naive_utc(self.end))
        if self.countries:
            for cc in self.countries:
                if not _CC.match(cc):
                    raise SeriesError(f"country must be two upper-case letters, got {cc!r}")
            clauses.append("probe_cc IN (" + ", ".join("?" for _ in self.countries) + ")")
            params.extend(self.countries)
        return " AND ".join(clauses), params


def _naive_utc(moment: datetime) -> datetime:
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


def floor_to(moment: datetime, grain: str) -> datetime:
    moment = _naive_utc(moment).replace(minute=0, second=0, microsecond=0)
    return moment.replace(hour=0) if grain == "day" else moment


def calendar(start: datetime, end: datetime, grain: str) -> pa.Table:
    """Every bucket from the one holding `start` to the one holding `end`, inclusive."""
    _, step = _GRAINS[grain]
    first, last = floor_to(start, grain), floor_to(end, grain)
    buckets = []
    while first <= last:
        buckets.append(first)
        first += step
    return pa.table({"bucket": pa.array(buckets, pa.timestamp("us"))})


def build_series(
    connection: duckdb.DuckDBPyConnection, grain: str, request: SeriesRequest = SeriesRequest()
) -> pa.Table:
    """The dense grid at `grain` ('hour' or 'day') from the `verdicts` view of `connection`."""
    if grain not in _GRAINS:
        raise SeriesError(f"grain must be 'hour' or 'day', got {grain!r}")
    where, params = request.where()
    lo, hi = connection.execute(q.window_sql(where), params).fetchall()[0]
    start = request.start if request.start is not None else lo
    end = request.end if request.end is not None else hi
    if start is None or end is None:
        return _empty(grain)
    if _naive_utc(end) < _naive_utc(start):
        raise SeriesError(f"series window ends ({end}) before it starts ({start})")
    connection.register("series_calendar", calendar(start, end, grain))
    try:
        sql = q.dense_sql(q.aggregate_sql(grain, where), request.min_probes)
        table = connection.sql(sql, params=params).to_arrow_table()
    finally:
        connection.unregister("series_calendar")
    return _finish(table, grain)


def _finish(table: pa.Table, grain: str) -> pa.Table:
    bucket = table.column("bucket").cast(pa.timestamp("us"))
    table = table.set_column(table.schema.get_field_index("bucket"), grain, bucket)
    table = table.append_column("date", pc.cast(bucket, pa.date32()))
    ints = {name for name in table.column_names
            if name.startswith(("n_", "blocked_")) and name not in ("blocked_share", "blocked_weight")}
    for name in ints:
        index = table.schema.get_field_index(name)
        table = table.set_column(index, name, table.column(name).cast(pa.int32()))
    table = table.set_column(
        table.schema.get_field_index("probe_asn"), "probe_asn", table.column("probe_asn").cast(pa.int32())
    )
    return table


def _empty(grain: str) -> pa.Table:
    connection = duckdb.connect()
    try:
        from wallwatch.analysis.store import VERDICTS_SCHEMA

        connection.register("verdicts", VERDICTS_SCHEMA.empty_table())
        connection.register("series_calendar", pa.table({"bucket": pa.array([], pa.timestamp("us"))}))
        return _finish(connection.sql(q.dense_sql(q.aggregate_sql(grain, "1 = 1"), 1)).to_arrow_table(), grain)
    finally:
        connection.close()


@dataclass(frozen=True)
class SeriesBuild:
    """What `build_and_store` wrote."""

    hourly_rows: int
    daily_rows: int
    n_series: int
    start: datetime | None
    end: datetime | None


def build_and_store(store: object, request: SeriesRequest = SeriesRequest()) -> tuple[pa.Table, pa.Table, SeriesBuild]:
    """Build both grains from `store`'s verdicts and write `series_hourly` and `series_daily`.

    The store replaces every date partition it writes, so rebuilding is idempotent.
    A partial rebuild (a narrower window or fewer countries) replaces whole
    dates, so rebuild whole days for all countries unless that is intended.
    """
    connection = store.connect()  # type: ignore[attr-defined]
    try:
        hourly = build_series(connection, "hour", request)
        daily = build_series(connection, "day", request)
    finally:
        connection.close()
    _write_by_dates(store, HOURLY, hourly)
    _write_by_dates(store, DAILY, daily)
    keys = {tuple(row.values()) for row in hourly.select(list(q.SERIES_KEY)).to_pylist()}
    hours = hourly.column("hour")
    start = pc.min(hours).as_py() if hourly.num_rows else None
    end = pc.max(hours).as_py() if hourly.num_rows else None
    return hourly, daily, SeriesBuild(hourly.num_rows, daily.num_rows, len(keys), start, end)


# pyarrow's write_dataset refuses more than 1024 partitions per call; a
# multi-year grid has one per day, so write it a few hundred days at a time.
_DATES_PER_WRITE = 500


def _write_by_dates(store: object, dataset: str, table: pa.Table) -> None:
    dates = sorted(pc.unique(table.column("date")).to_pylist()) if table.num_rows else []
    for first in range(0, len(dates), _DATES_PER_WRITE):
        chunk = dates[first : first + _DATES_PER_WRITE]
        mask = pc.and_(pc.greater_equal(table.column("date"), pa.scalar(chunk[0], pa.date32())),
                       pc.less_equal(table.column("date"), pa.scalar(chunk[-1], pa.date32())))
        store.write(dataset, table.filter(mask), ("date",))  # type: ignore[attr-defined]


def series_summary(table: pa.Table, grain: str = "hour") -> list[dict[str, object]]:
    """One row per series: buckets, how many had data, blocked/partial/insufficient counts, last state."""
    connection = duckdb.connect()
    try:
        connection.register("series_grid", table)
        return [
            dict(zip(q.SUMMARY_COLUMNS, row, strict=True))
            for row in connection.execute(q.summary_sql(grain)).fetchall()
        ]
    finally:
        connection.close()


def read_series(store: object, grain: str = "hour", countries: Sequence[str] = ()) -> pa.Table:
    """A stored grain, optionally for some countries only, sorted by series and time."""
    dataset, _ = _GRAINS[grain]
    for cc in countries:
        if not _CC.match(cc):
            raise SeriesError(f"country must be two upper-case letters, got {cc!r}")
    where = ("probe_cc IN (" + ", ".join(f"'{cc}'" for cc in countries) + ")") if countries else None
    table = store.read(dataset, where)  # type: ignore[attr-defined]
    return table.sort_by([(col, "ascending") for col in (*q.SERIES_KEY, grain)])
