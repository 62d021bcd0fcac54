"""Series: a sparse-aware dense hourly and daily grid per (country, ASN, service, feature).

An hour with no measurements is a row in state 'insufficient' rather than a
missing row: the detector and the charts both need to see silence (ooni/data
docs/implementation-plan.md §3.10 asks for the same "dense hour grid"). But a
series silent for months must not cost millions of rows (the real OONI
samples span 2016-2025: 1.5 M series-hours for 21 series), so the grid is
dense only where there is data:

* every bucket between two measured buckets of a series at most
  `max_dense_gap` apart (14 days) is a row;
* a longer silence keeps `gap_margin` (48 h) of dense rows next to each
  measured bucket, and the rest of it is ONE *gap row*: state 'insufficient',
  all counts zero, `n_buckets` = how many buckets it stands for, placed at
  the first bucket it covers. Leading and trailing silences of the window are
  treated the same way, so for every series `sum(n_buckets)` is the number of
  buckets in the window: no silence is ever missing, it is only folded.

The window is the country's: from its first to its last measurement (or the
request's `start`/`end` when given), so a country's series, and the events
detected on them, never depend on another country's data in the same folder.

Readers that need the fully dense grid unfold gap rows (`n_buckets` > 1);
the detector needs nothing (empty buckets carry no evidence; it measures
silences by the hour numbers), the charts break their lines at gap rows.

Columns of `series_hourly` (`hour`) and `series_daily` (`day`), partitioned by `date`:
probe_cc, probe_asn, probe_network_name, service, feature, hour|day, date,
n_measurements, n_probes, n_probes_decisive, n_probes_blocked, n_probes_throttled,
n_probes_ok, n_probes_down, n_ok, n_blocked, n_throttled, n_down, n_unknown,
blocked_<method> for each method in `wallwatch.vocabulary.METHODS` plus
blocked_other, throttled_<kind> for each kind in `THROTTLINGS`, blocked_weight (sum over
decisive probes of each one's blocked share of its measurements), throttled_weight
(the same for throttled measurements), example_blocked_uid, example_throttled_uid,
blocked_share (blocked_weight / decisive probes, null when none), throttled_share
(likewise), attempt_share_weight (sum over blocked measurements of the share of their
attempts blocked), attempt_blocked_share (attempt_share_weight / n_blocked, null
when nothing was blocked: below 1 the blocking let some attempts through, "on and
off"), state (insufficient|down|blocked|partial|throttled|ok), n_buckets (1, or for a
gap row the number of silent buckets it stands for). Probe counts are distinct
`probe_key`s ("n_probes_blocked": saw blocking at least once); measurement
counts are distinct `measurement_uid`s, a measurement taking the strongest of
its targets' verdicts (blocked > throttled > ok > down > unknown). A probe is
decisive when it saw the feature work, throttled or blocked.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from wallwatch.analysis.series import queries as q
from wallwatch.analysis.tables import run_bounds

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
    # Silences up to this long stay dense; two weeks keeps every silence that
    # fits in the detectors' one-week baselines (IODA's probing window, our
    # volume median) visible hour by hour.
    max_dense_gap: timedelta = timedelta(days=14)
    # Dense buckets kept next to data on each side of a longer silence: the
    # 48 h of OONI's detector gap half-life (ooni/data analysis/detector.py),
    # enough for a volume collapse to open (VolumeParams: <= ~17 h at 1/h).
    gap_margin: timedelta = timedelta(hours=48)

    def where(self) -> tuple[str, list[object]]:
        clauses, params = ["1 = 1"], []
        if self.start is not None:
            clauses.append("measurement_start_time >= ?")
            params.append(_naive_utc(self.start))
        if self.end is not None:
            clauses.append("measurement_start_time <= ?")
            params.append(_naive_utc(self.end))
        if self.max_dense_gap < 2 * self.gap_margin:
            raise SeriesError(f"max_dense_gap ({self.max_dense_gap}) must be at least twice gap_margin "
                              f"({self.gap_margin})")
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


def build_series(
    connection: duckdb.DuckDBPyConnection, grain: str, request: SeriesRequest = SeriesRequest()
) -> pa.Table:
    """The sparse-aware dense grid at `grain` ('hour' or 'day') from the `verdicts` view of `connection`."""
    if grain not in _GRAINS:
        raise SeriesError(f"grain must be 'hour' or 'day', got {grain!r}")
    where, params = request.where()
    if request.start is not None and request.end is not None and _naive_utc(request.end) < _naive_utc(request.start):
        raise SeriesError(f"series window ends ({request.end}) before it starts ({request.start})")
    # Each country's series span that country's own data (or the request's window): with the
    # folder's window, a country's trailing silence would run to another country's last
    # measurement and the detector would close its blocks for a silence that is not its own.
    # A window given whole needs no query: every country the aggregate finds spans it.
    windows = None if request.start is not None and request.end is not None else {
        cc: (request.start if request.start is not None else lo, request.end if request.end is not None else hi)
        for cc, lo, hi in connection.execute(q.window_sql(where), params).fetchall()}
    return _build(connection, grain, request, where, params, windows)


def build_for_countries(connection: duckdb.DuckDBPyConnection, grain: str,
                        windows: Mapping[str, tuple[datetime, datetime]],
                        request: SeriesRequest = SeriesRequest()) -> pa.Table:
    """The rows of the countries in `windows` that `build_series(connection, grain, request)`
    makes when country cc's verdicts span `windows[cc]` (its first and last
    measurement_start_time, or a later start: the grid then begins there), with no window query.

    A series' rows depend only on its own verdicts and its country's window (the aggregate and
    the grid plan are per series), so the live pipeline (`web/live.py`) rebuilds only the
    countries a batch of measurements touched, each over the window it keeps for it, and gets
    the rows a whole rebuild would. tests/analysis/test_series.py holds the two equal.
    """
    if not windows:
        raise SeriesError("build_for_countries needs at least one country")
    base, params = replace(request, start=None, end=None, countries=tuple(sorted(windows))).where()
    clauses = []
    for cc, (start, end) in sorted(windows.items()):
        if _naive_utc(end) < _naive_utc(start):
            raise SeriesError(f"{cc}: series window ends ({end}) before it starts ({start})")
        clauses.append("(probe_cc = ? AND measurement_start_time >= ? AND measurement_start_time <= ?)")
        params.extend([cc, _naive_utc(start), _naive_utc(end)])
    where = f"{base} AND ({' OR '.join(clauses)})"
    return _build(connection, grain, request, where, params, dict(sorted(windows.items())))


def _build(connection: duckdb.DuckDBPyConnection, grain: str, request: SeriesRequest, where: str,
           params: list[object], windows: Mapping[str, tuple[datetime, datetime]] | None) -> pa.Table:
    """The grid of the verdicts `where` selects; `windows`: each country's window (None: the
    request's whole window for every country the aggregate finds)."""
    columns = {row[0] for row in connection.execute("DESCRIBE verdicts").fetchall()}
    sql = q.aggregate_sql(grain, where, with_attempt_share="blocked_share" in columns)
    sparse = connection.sql(sql, params=params).to_arrow_table()
    if windows is None:
        assert request.start is not None and request.end is not None
        windows = {cc: (request.start, request.end)
                   for cc in sorted(pc.unique(sparse.column("probe_cc")).drop_null().to_pylist())}
    plans = [grid_plan(sparse.filter(pc.equal(sparse.column("probe_cc"), cc)), floor_to(start, grain),
                       floor_to(end, grain), grain, request)
             for cc, (start, end) in windows.items()]
    plan = pa.concat_tables(plans) if plans else grid_plan(sparse, datetime(1970, 1, 1), datetime(1970, 1, 1),
                                                           grain, request)
    connection.register("series_sparse", sparse)
    connection.register("series_plan", plan)
    try:
        table = connection.sql(q.dense_sql(request.min_probes)).to_arrow_table()
    finally:
        connection.unregister("series_sparse")
        connection.unregister("series_plan")
    return _finish(table, grain)


def grid_plan(sparse: pa.Table, first: datetime, last: datetime, grain: str,
              request: SeriesRequest = SeriesRequest()) -> pa.Table:
    """Which buckets of each series become rows: (series key..., bucket, n_buckets).

    `sparse` holds the measured buckets (series key columns and `bucket`);
    `first`..`last` (inclusive, floored) is the window. The work is
    proportional to the rows planned, not to the window.
    """
    _, step = _GRAINS[grain]
    step_us = step // timedelta(microseconds=1)
    max_gap = max(1, request.max_dense_gap // step)
    margin = max(0, min(request.gap_margin // step, (max_gap - 1) // 2))
    keys = list(q.SERIES_KEY)
    schema = pa.schema([*(sparse.schema.field(k) for k in keys), ("bucket", pa.timestamp("us")),
                        ("n_buckets", pa.int32())])
    if sparse.num_rows == 0:
        return schema.empty_table()
    ordered = sparse.select([*keys, "bucket"]).sort_by([(k, "ascending") for k in (*keys, "bucket")])
    origin = _micros(first)
    width = (_micros(last) - origin) // step_us + 1
    micros = ordered.column("bucket").cast(pa.timestamp("us")).cast(pa.int64()).to_pylist()
    owners: list[int] = []  # the row of `ordered` whose series key each planned bucket takes
    at: list[int] = []  # bucket number within the window
    spans: list[int] = []

    def dense(owner: int, lo: int, hi: int) -> None:
        owners.extend([owner] * (hi - lo + 1))
        at.extend(range(lo, hi + 1))
        spans.extend([1] * (hi - lo + 1))

    def gap(owner: int, lo: int, n: int) -> None:
        owners.append(owner)
        at.append(lo)
        spans.append(n)

    for lo, hi in run_bounds(ordered, keys):
        measured = [(m - origin) // step_us for m in micros[lo:hi]]
        head = measured[0]
        if head <= max_gap:
            dense(lo, 0, head - 1)
        else:
            gap(lo, 0, head - margin)
            dense(lo, head - margin, head - 1)
        for this, following in zip(measured, [*measured[1:], None], strict=True):
            silence = (width if following is None else following) - this - 1
            if silence <= max_gap:
                dense(lo, this, this + silence)
            elif following is None:
                dense(lo, this, this + margin)
                gap(lo, this + margin + 1, silence - margin)
            else:
                dense(lo, this, this + margin)
                gap(lo, this + margin + 1, silence - 2 * margin)
                dense(lo, following - margin, following - 1)
    plan = ordered.select(keys).take(pa.array(owners, pa.int64()))
    buckets = pa.array([origin + n * step_us for n in at], pa.int64()).cast(pa.timestamp("us"))
    plan = plan.append_column("bucket", buckets).append_column("n_buckets", pa.array(spans, pa.int32()))
    return plan.cast(schema)


def _micros(moment: datetime) -> int:
    return (_naive_utc(moment) - datetime(1970, 1, 1)) // timedelta(microseconds=1)


def _finish(table: pa.Table, grain: str) -> pa.Table:
    bucket = table.column("bucket").cast(pa.timestamp("us"))
    table = table.set_column(table.schema.get_field_index("bucket"), grain, bucket)
    table = table.append_column("date", pc.cast(bucket, pa.date32()))
    ints = {name for name in table.column_names
            if name.startswith(("n_", "blocked_", "throttled_"))
            and name not in ("blocked_share", "blocked_weight", "throttled_share", "throttled_weight")}
    for name in ints:
        index = table.schema.get_field_index(name)
        table = table.set_column(index, name, table.column(name).cast(pa.int32()))
    table = table.set_column(
        table.schema.get_field_index("probe_asn"), "probe_asn", table.column("probe_asn").cast(pa.int32())
    )
    return table



@dataclass(frozen=True)
class SeriesBuild:
    """What `build_and_store` wrote."""

    hourly_rows: int
    daily_rows: int
    n_series: int
    start: datetime | None
    end: datetime | None


# The steps of `build_and_store`, for a progress bar.
BUILD_STEPS = ("hourly grid", "daily grid", "writing hourly", "writing daily")


def build_and_store(store: object, request: SeriesRequest = SeriesRequest(),
                    progress: Callable[[str], None] | None = None) -> tuple[pa.Table, pa.Table, SeriesBuild]:
    """Build both grains from `store`'s verdicts and write `series_hourly` and `series_daily`.

    The store replaces every date partition it writes, so rebuilding is idempotent.
    A partial rebuild (a narrower window or fewer countries) replaces whole
    dates, so rebuild whole days for all countries unless that is intended.
    `progress` is called with each of BUILD_STEPS as it is done.
    """
    done = progress or (lambda step: None)
    connection = store.connect()  # type: ignore[attr-defined]
    try:
        hourly = build_series(connection, "hour", request)
        done(BUILD_STEPS[0])
        daily = build_series(connection, "day", request)
        done(BUILD_STEPS[1])
    finally:
        connection.close()
    # One commit for both grains: a reader never sees new hourly rows next to old daily ones.
    with store.transaction():  # type: ignore[attr-defined]
        _write_by_dates(store, HOURLY, hourly)
        done(BUILD_STEPS[2])
        _write_by_dates(store, DAILY, daily)
        done(BUILD_STEPS[3])
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
