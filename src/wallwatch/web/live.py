"""The live pipeline: each accepted measurement through the batch pipeline's own code, within a second.

It runs as its own process (`python -m wallwatch.web.live`, started and watched by `serve`), so
that the collector's event loop and the pipeline's CPU work (verdict rules in Python, DuckDB
aggregates) each have a core and acknowledgements never wait for verdicts. One cycle:

1. **ingest** the sealed write-ahead-log segments (`web/wal.py`) with the batch ingest's
   `Ingester` (one long-lived instance: its stored-uid set is the deduplication), which commits
   measurements, observations and verdicts to the same datasets `wallwatch ingest` writes, with
   the raw text and each segment's ingest-ledger entry, batch by batch (`Store.transaction`,
   analysis/commitlog.py); then delete the segments;
2. **series**: rebuild the series of the countries the new verdicts touched with
   `series.build.build_for_countries`, each over its own window as a batch build does (whole
   when that window's first or last hour moved, else from the earliest day that can change),
   and rewrite only the dates whose rows changed, so the stored series are those `wallwatch
   series` would write;
3. **events**: the same detector and parameters as `wallwatch events` (`grouping.detect_events`
   over those countries' hourly series, `add_rule_evidence`), reconciled with the append-only log
   by `lifecycle.record_events`, which appends `opened`, `network_joined`,
   `network_comprehensive`, `extended` and `closed` as they happen; series and lifecycle entries
   are one commit;
4. **alerts**: the new log entries, once committed, to the webhooks (`web/alerts.py`);
5. **compaction** (`Store.compact`) once a partition has gained `COMPACT_AFTER_FILES` files, so
   a long-running observatory does not pile up thousands of small Parquet files.

At start (and after a crash) it catches up: ingests what the WAL still holds, rebuilds every
series against what is stored and runs the detector over all of it, so a restart is a no-op
when nothing was lost and completes what a crash interrupted otherwise (a kill mid-commit
leaves the store as its last commit had it, analysis/commitlog.py). The live result equals a
batch run over the same measurements (tests/web/test_live_equals_batch.py).

The pipeline is the data folder's one writer: it holds the store's writer lock
(`Store.writer()`, `_store/lock`, the lock `wallwatch ingest` takes) for its life, so a batch
ingest into the folder of a running `serve` waits or fails naming the pipeline's PID, and a
pipeline started while a batch ingest runs waits for it (the collector still acknowledges into
the WAL meanwhile). It dies with its parent (PR_SET_PDEATHSIG), so a `serve` killed with SIGKILL
and restarted never runs two.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from wallwatch.analysis.events.feeds import DEFAULT_TAG_AUTHORITY
from wallwatch.analysis.events.grouping import EVENT_LOG, add_rule_evidence, detect_events
from wallwatch.analysis.events.lifecycle import record_events
from wallwatch.analysis.ingest.pipeline import Ingester
from wallwatch.analysis.series import queries as series_queries
from wallwatch.analysis.series.build import (
    DAILY,
    HOURLY,
    SeriesRequest,
    build_for_countries,
    build_series,
    floor_to,
)
from wallwatch.analysis.store import Store, StoreLocked, Transaction
from wallwatch.analysis.tables import run_bounds
from wallwatch.web.alerts import AlertsConfig, DeliveryRecord, Dispatcher, load_alerts
from wallwatch.web.calendar import annotations_for, load_calendar
from wallwatch.web.wal import sealed_segments

log = logging.getLogger("wallwatch.live")

LIVE_DIR = "_live"  # the store lists no dataset whose name starts with "_"


def live_dir(data: Path) -> Path:
    return data / LIVE_DIR


def wal_dir(data: Path) -> Path:
    return live_dir(data) / "wal"


# Segments ingested in one cycle at most: under load the WAL seals faster than a cycle ends, and a
# cycle that takes what has piled up (up to this) keeps the number of Parquet files down.
MAX_SEGMENTS_PER_CYCLE = 64
POLL_SECONDS = 0.02
_GRAINS = (("hour", HOURLY), ("day", DAILY))
_CYCLE_LOG_MAX_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class PipelineConfig:
    data: Path
    alerts: Path | None = None
    calendar: Path | None = None
    tag_authority: str = DEFAULT_TAG_AUTHORITY
    poll_seconds: float = POLL_SECONDS

    def to_json(self) -> str:
        return orjson.dumps({k: (str(v) if isinstance(v, Path) else v)
                             for k, v in dataclasses.asdict(self).items()}).decode()

    @classmethod
    def from_json(cls, text: str) -> PipelineConfig:
        raw = orjson.loads(text)
        for name in ("data", "alerts", "calendar"):
            if raw.get(name) is not None:
                raw[name] = Path(raw[name])
        return cls(**raw)


@dataclass(frozen=True)
class Touched:
    """What a cycle's new verdicts cover: their series (with each one's earliest time) and, per
    country, their first and last measurement_start_time."""

    series: pa.Table  # probe_cc, probe_asn, service, feature, first_time (earliest measurement_start_time)
    spans: dict[Any, tuple[datetime, datetime]]

    @property
    def countries(self) -> set[str]:
        return set(self.spans)


class _RecordingStore(Store):
    """The store, noting which series and times each committed verdict write covered (what a
    cycle touched) and how many files each commit added per partition (when to compact).

    Writes inside a transaction (`Store.transaction`: the ingester commits each batch as one) are
    noted when that transaction commits, and forgotten if it is abandoned: a touched series is
    one whose verdicts a reader can see."""

    def __init__(self, root: Path, *, lock_wait: float = 0.0) -> None:
        super().__init__(root, lock_wait=lock_wait)
        self.verdict_keys: list[pa.Table] = []
        self.new_files: Counter[tuple[str, str]] = Counter()  # (dataset, partition) -> files committed
        self._pending: list[pa.Table] = []

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        outer = self._transaction is None
        try:
            with super().transaction() as transaction:
                yield transaction
        except BaseException:
            if outer:
                self._pending = []
            raise
        if outer:
            self.verdict_keys.extend(self._pending)
            self._pending = []
            for dataset in COMPACTED:
                for relpath in transaction.add.get(dataset, ()):
                    self.new_files[(dataset, relpath.rsplit("/", 1)[0])] += 1

    def write(self, dataset: str, table: pa.Table, partition_by: Sequence[str] | None = None, *,
              mode: Any = "replace") -> int:
        with self.transaction():
            written = super().write(dataset, table, partition_by, mode=mode)
            if dataset == "verdicts" and written:
                self._pending.append(table.select([*series_queries.SERIES_KEY, "measurement_start_time"]))
        return written

    def take_touched(self) -> Touched | None:
        keys, self.verdict_keys = self.verdict_keys, []
        if not keys:
            return None
        table = pa.concat_tables(keys)
        series = table.group_by(list(series_queries.SERIES_KEY)).aggregate([("measurement_start_time", "min")])
        series = series.rename_columns([*series_queries.SERIES_KEY, "first_time"])
        spans = table.group_by(["probe_cc"]).aggregate([("measurement_start_time", "min"),
                                                        ("measurement_start_time", "max")])
        return Touched(series, {cc: (lo, hi) for cc, lo, hi in zip(
            spans.column("probe_cc").to_pylist(), spans.column("measurement_start_time_min").to_pylist(),
            spans.column("measurement_start_time_max").to_pylist(), strict=True)})


class LiveSeries:
    """The hourly and daily series of the whole store, in memory, rewritten to the store by date."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.tables: dict[str, pa.Table | None] = {}
        # Per country, its first and last measurement: the window its series span (as in a batch
        # build, analysis/series/build.py); None until loaded.
        self.windows: dict[Any, tuple[datetime, datetime]] | None = None
        self.last_scope = ""  # what the last refresh rebuilt (cycles.jsonl)

    def load(self, connection: Any) -> None:
        """The stored series (what a previous run or a batch `series` left) and each country's window."""
        stored = set(self.store.datasets())
        self.tables = {grain: self.store.read(dataset) if dataset in stored else None for grain, dataset in _GRAINS}
        self._load_windows(connection)

    def _load_windows(self, connection: Any) -> None:
        self.windows = {cc: (lo, hi) for cc, lo, hi in connection.execute(series_queries.window_sql("1 = 1")).fetchall()}

    def refresh(self, connection: Any, touched: Touched | None) -> tuple[set[str], bool]:
        """Bring the series up to date after new verdicts (`touched`; None: rebuild everything);
        return (the countries rebuilt, whether that was all of them).

        A country's series depend only on its own verdicts and its window (its first and last
        measurement), so only touched countries are rebuilt, each in the narrowest scope that
        gives a whole rebuild's rows:

        * everything, when nothing is known yet (or a country code is not two letters);
        * a touched country whole, when its window's first or last hour moved (every one of its
          series' edges move), or one of its touched series is new or got data before its first;
        * else a touched country from a day on (the earliest such day of these countries): rows
          before each touched series' last measured bucket up to its new verdicts cannot change,
          and a grid started `REACH` earlier has the whole build's rows from that day on (a silence
          longer than the reach folds the same way whatever came before it).
        """
        if touched is None or self.windows is None or not all(_plain_cc(cc) for cc in touched.countries):
            return self._rebuild_everything(connection)
        windows = dict(self.windows)
        for cc, (lo, hi) in touched.spans.items():
            windows[cc] = (lo, hi) if cc not in windows else (min(windows[cc][0], lo), max(windows[cc][1], hi))
        moved = {cc for cc in touched.countries if cc not in self.windows or _edges(self.windows[cc]) != _edges(windows[cc])}
        self.windows = windows
        starts = self._unchanged_before(touched)
        whole = sorted(cc for cc, since in starts.items() if since is None or cc in moved)
        bounded = sorted(cc for cc in starts if cc not in whole)
        since = min((starts[cc] for cc in bounded), default=None)  # type: ignore[type-var]
        self.last_scope = " ".join(
            ([f"whole:{','.join(whole)}"] if whole else []) + ([f"since {since:%Y-%m-%d}:{','.join(bounded)}"]
                                                               if since else []))
        extracted: dict[tuple[tuple[str, ...], datetime | None], Any] = {}

        def scratch(group: list[str], first: datetime | None) -> Any:
            """The group's verdicts (from `first` on) read once into memory, for both grains: the
            live datasets are many small files, whose opening dominates a small cycle's cost."""
            key = (tuple(group), first)
            if key not in extracted:
                extracted[key] = _verdicts_of(connection, group, first)
            return extracted[key]

        try:
            for grain, dataset in _GRAINS:
                news, olds = [], []
                current = self.tables.get(grain)
                replaced = pa.array([False] * (current.num_rows if current is not None else 0), pa.bool_())
                if whole:
                    news.append(build_for_countries(scratch(whole, None), grain, {cc: windows[cc] for cc in whole}))
                    if current is not None:
                        mask = _in(current, whole)
                        olds.append(current.filter(mask))
                        replaced = pc.or_(replaced, mask)
                if bounded:
                    assert since is not None
                    day = pa.scalar(since.date(), pa.date32())
                    # The grid starts REACH before `since`, or at the country's own start if later.
                    grids = {cc: (max(since - REACH, windows[cc][0]), windows[cc][1]) for cc in bounded}
                    built = build_for_countries(scratch(bounded, min(lo for lo, _ in grids.values())), grain, grids)
                    news.append(built.filter(pc.greater_equal(built.column("date"), day)))
                    if current is not None:
                        mask = pc.and_(_in(current, bounded), pc.greater_equal(current.column("date"), day))
                        olds.append(current.filter(mask))
                        replaced = pc.or_(replaced, mask)
                kept = current.filter(pc.invert(replaced)) if current is not None else None
                self._merge(dataset, grain, kept, _concat_all(olds) if olds else None, _concat_all(news))
        finally:
            for held in extracted.values():
                held.close()
        return touched.countries, False

    def _rebuild_everything(self, connection: Any) -> tuple[set[str], bool]:
        """Every series, as `wallwatch series` builds them (each country over its own window)."""
        self._load_windows(connection)
        self.last_scope = "all"
        for grain, dataset in _GRAINS:
            self._merge(dataset, grain, None, self.tables.get(grain), build_series(connection, grain, SeriesRequest()))
        hourly = self.tables.get("hour")
        return (set(pc.unique(hourly.column("probe_cc")).to_pylist()) if hourly is not None else set()), True

    def _merge(self, dataset: str, grain: str, kept: pa.Table | None, old: pa.Table | None, new: pa.Table) -> None:
        """The grain's rows are `kept` plus `new` (which replace `old`): written for the dates that changed."""
        merged = new if kept is None or kept.num_rows == 0 else _concat(kept, new)
        changed = _changed_dates(_aligned(old, new.schema), new, grain)
        self.tables[grain] = merged
        self._write_dates(dataset, grain, merged, changed)

    def _unchanged_before(self, touched: Touched) -> dict[str, datetime | None]:
        """Per touched country, midnight of the earliest day its series can change on: for each touched
        series, its last measured hour at or before its new verdicts; None when a touched series has
        none (a new series, or data before its first, changes it from the window's start)."""
        countries = touched.series.column("probe_cc").to_pylist()
        hourly = self.tables.get("hour")
        if hourly is None or hourly.num_rows == 0:
            return dict.fromkeys(countries)
        connection = duckdb.connect(config={"threads": 1})
        try:
            connection.register("series_now", hourly.select([*series_queries.SERIES_KEY, "hour", "n_measurements"]))
            connection.register("touched", touched.series)
            lasts = [last for (last,) in connection.execute(_LAST_MEASURED_SQL).fetchall()]
        finally:
            connection.close()
        starts: dict[str, datetime | None] = {}
        for cc, last in zip(countries, lasts, strict=True):
            if cc in starts and starts[cc] is None:
                continue
            day = None if last is None else floor_to(last, "day")
            starts[cc] = day if cc not in starts or day is None else min(starts[cc], day)  # type: ignore[type-var]
        return starts

    def _write_dates(self, dataset: str, grain: str, merged: pa.Table, changed: set[Any]) -> None:
        if not changed:
            return
        dates = pa.array(sorted(changed), pa.date32())
        rows = merged.filter(pc.is_in(merged.column("date"), dates))
        rows = rows.sort_by([(col, "ascending") for col in (*series_queries.SERIES_KEY, grain)])
        emptied = changed - set(pc.unique(rows.column("date")).to_pylist())
        with self.store.transaction():  # the new dates and the dropped ones in one commit
            self.store.write(dataset, rows, ("date",))  # mode="replace": each changed date whole
            if emptied:
                self.store.drop_partitions(dataset, "date", sorted(emptied))

    def hourly(self, countries: set[str] | None) -> pa.Table | None:
        table = self.tables.get("hour")
        if table is None or countries is None:
            return table
        return _only(table, countries)


# How far before the first date rebuilt the grid of a bounded rebuild starts: the longest silence
# kept dense plus the dense margin kept beside a folded one, and a day (SeriesRequest's defaults:
# 14 days and 48 hours). Beyond that a silence folds into a gap row whatever came before it.
REACH = SeriesRequest().max_dense_gap + SeriesRequest().gap_margin + timedelta(days=1)

# Per touched series: its last measured hour at or before the hour of its earliest new verdict.
_LAST_MEASURED_SQL = """
SELECT (SELECT max(s.hour) FROM series_now AS s
        WHERE s.probe_cc = t.probe_cc AND s.probe_asn = t.probe_asn AND s.service = t.service
          AND s.feature = t.feature AND s.n_measurements > 0 AND s.hour <= date_trunc('hour', t.first_time))
FROM touched AS t
"""


def _edges(window: tuple[datetime, datetime]) -> tuple[datetime, datetime]:
    """The first and last hour of the grid: when either moves, every series' leading or trailing rows do."""
    return floor_to(window[0], "hour"), floor_to(window[1], "hour")


def _plain_cc(cc: Any) -> bool:
    return isinstance(cc, str) and len(cc) == 2 and cc.isascii() and cc.isalpha() and cc.isupper()


def _verdicts_of(connection: Any, countries: Sequence[str], first: datetime | None) -> Any:
    """A DuckDB connection whose `verdicts` is these countries' verdicts (from `first` on), in memory."""
    clauses = ["probe_cc IN (" + ", ".join("?" for _ in countries) + ")"]
    params: list[Any] = list(countries)
    if first is not None:
        clauses.append("measurement_start_time >= ?")
        params.append(first)
    table = connection.sql(f"SELECT * FROM verdicts WHERE {' AND '.join(clauses)}", params=params).to_arrow_table()
    # One thread: these are small queries on a busy machine, where DuckDB's worker threads cost
    # more in coordination than they save (a bounded refresh measured 0.29 s with one, 0.45-0.55 s with two).
    held = duckdb.connect(config={"threads": 1})
    held.register("verdicts", table)
    return held


def _in(table: pa.Table, countries: Sequence[str]) -> pa.Array:
    return pc.is_in(table.column("probe_cc"), pa.array(sorted(countries), pa.string()))


def _concat_all(tables: list[pa.Table]) -> pa.Table:
    first, *rest = tables
    for table in rest:
        first = _concat(first, table)
    return first


def _only(table: pa.Table, countries: set[str]) -> pa.Table:
    return table.filter(pc.is_in(table.column("probe_cc"), pa.array(sorted(countries), pa.string())))


def _concat(a: pa.Table, b: pa.Table) -> pa.Table:
    aligned = _aligned(a, b.schema)
    if aligned is None:  # the stored rows have other columns (an older build): the new ones win
        return b
    return pa.concat_tables([aligned, b])


def _aligned(table: pa.Table | None, schema: pa.Schema) -> pa.Table | None:
    """`table` with `schema`'s columns and types, or None when it cannot have them (compare as all changed)."""
    if table is None:
        return schema.empty_table()
    if set(table.column_names) != set(schema.names):
        return None
    try:
        return table.select(schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None


def _by_date(table: pa.Table, grain: str) -> dict[Any, pa.Table]:
    if table.num_rows == 0:
        return {}
    ordered = table.sort_by([("date", "ascending"), *((col, "ascending") for col in series_queries.SERIES_KEY),
                             (grain, "ascending")])
    bounds = run_bounds(ordered, ["date"])
    dates = ordered.column("date").take([lo for lo, _ in bounds]).to_pylist()
    return {day: ordered.slice(lo, hi - lo) for day, (lo, hi) in zip(dates, bounds, strict=True)}


def _changed_dates(old: pa.Table | None, new: pa.Table, grain: str) -> set[Any]:
    """Dates whose rows differ between `old` (None: unknown, so every date) and `new`."""
    new_parts = _by_date(new, grain)
    if old is None:
        return set(new_parts)
    old_parts = _by_date(old, grain)
    return {day for day in old_parts.keys() | new_parts.keys()
            if day not in old_parts or day not in new_parts or not old_parts[day].equals(new_parts[day])}


@dataclass
class CycleStats:
    """Where one cycle's time went (appended to `_live/cycles.jsonl`; bench/bench_live.py reads it)."""

    started: float
    segments: int = 0
    stored: int = 0
    countries: int = 0
    all_countries: bool = False
    scope: str = ""
    ingest_s: float = 0.0
    series_s: float = 0.0
    events_s: float = 0.0
    entries: int = 0
    compacted: int = 0  # small Parquet files merged away this cycle
    compact_s: float = 0.0


# The datasets every cycle appends files to (one per partition it touches); the series are
# rewritten date by date (one file per date) and need no compaction.
COMPACTED = ("measurements", "observations", "verdicts")
# Compact once some partition has gained this many files since the last compaction: each cycle adds
# at most one file per partition it touches, so a partition never holds more than about this many
# small files (plus the merged ones, each up to Store.compact's max_bytes), however long serve runs.
COMPACT_AFTER_FILES = 16


class LivePipeline:
    """One data folder's live pipeline; `catch_up()` once, then `step()` until stopped.

    The caller holds the data folder's writer lock (`Store.writer()`) for the pipeline's life:
    the pipeline is the folder's one writer, so what it keeps in memory (the stored uids, the
    series, each country's window) stays what the store holds."""

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        self.store = _RecordingStore(config.data)
        self.wal = wal_dir(config.data)
        # workers=1: segments are read in this process (a fork per cycle would cost more than it saves).
        self.ingester = Ingester(self.store, workers=1, resident=True)
        self.series = LiveSeries(self.store)
        self.calendar = load_calendar(config.calendar) if config.calendar else []
        alerts = load_alerts(config.alerts) if config.alerts else AlertsConfig()
        state = live_dir(config.data) / "alerts"
        self.dispatcher = Dispatcher(alerts, DeliveryRecord(state / "state.jsonl"), state / "dead-letter.jsonl",
                                     tag_authority=config.tag_authority, annotate=self._annotate)
        self.cycle_log = live_dir(config.data) / "cycles.jsonl"

    def _annotate(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        return [a.to_record() for a in annotations_for(event, self.calendar)]

    def catch_up(self) -> None:
        """Ingest what the WAL holds, rebuild every series, detect over everything, start the alerts."""
        self.cycle_log.parent.mkdir(parents=True, exist_ok=True)
        self.cycle_log.write_bytes(b"")
        self.dispatcher.start(self.store.read_jsonl(EVENT_LOG))
        stats = CycleStats(time.time())
        segments = sealed_segments(self.wal)
        self._ingest(segments, stats)
        self.store.take_touched()
        with contextlib.closing(self.store.connect()) as connection:
            self.series.load(connection)
        self._derive(None, stats)
        self._compact(stats)
        if segments:  # what a waiting pipeline found on start is through it too (`/api/v1/status`)
            write_progress(self.config.data, segments[-1].name)

    def step(self) -> bool:
        """One cycle if segments wait; False when there was nothing to do."""
        segments = sealed_segments(self.wal)[:MAX_SEGMENTS_PER_CYCLE]
        if not segments:
            return False
        stats = CycleStats(time.time())
        self._ingest(segments, stats)
        touched = self.store.take_touched()
        if touched is not None:
            self._derive(touched, stats)
        if max(self.store.new_files.values(), default=0) >= COMPACT_AFTER_FILES:
            self._compact(stats)
        self._log_cycle(stats)
        write_progress(self.config.data, segments[-1].name)
        return True

    def close(self) -> None:
        self.dispatcher.stop()

    def _ingest(self, segments: list[Path], stats: CycleStats) -> None:
        if not segments:
            return
        started = time.monotonic()
        before = self.ingester.summary.stored
        # Each measurement is stamped with the time its cycle ingested it, as a batch run stamps its own.
        self.ingester.config = dataclasses.replace(
            self.ingester.config, ingested_at=datetime.now(UTC).replace(tzinfo=None, microsecond=0))
        self.ingester.ingest_paths(segments)  # each batch one commit, with its segments' ledger entries
        for segment in segments:  # rows committed and ledgered: the WAL no longer needs them
            segment.unlink(missing_ok=True)
        # Gone for good (segment names are never reused): the ledger need not be held in memory for them.
        self.ingester.forget_files(segments)
        stats.segments, stats.stored = len(segments), self.ingester.summary.stored - before
        stats.ingest_s = time.monotonic() - started

    def _derive(self, touched: Touched | None, stats: CycleStats) -> None:
        """The series and events the new verdicts change, and their lifecycle entries, in one commit;
        the alerts once it is made (a reader never sees a series without the events it implies)."""
        started = time.monotonic()
        entries: list[dict[str, Any]] = []
        with self.store.transaction(), contextlib.closing(self.store.connect()) as connection:
            rebuilt, everything = self.series.refresh(connection, touched)
            stats.series_s = time.monotonic() - started
            stats.countries, stats.all_countries = len(rebuilt), everything
            stats.scope = self.series.last_scope
            hourly = self.series.hourly(None if everything else rebuilt)
            if hourly is not None and hourly.num_rows:
                started = time.monotonic()
                events = add_rule_evidence(connection, detect_events(hourly))
                _, entries = record_events(self.store, events)
                stats.events_s, stats.entries = time.monotonic() - started, len(entries)
        if entries:
            self.dispatcher.submit(entries)

    def _compact(self, stats: CycleStats) -> None:
        """Merge the small files the cycles left (Store.compact: one commit per dataset)."""
        started = time.monotonic()
        for dataset in COMPACTED:
            stats.compacted += self.store.compact(dataset)
        self.store.new_files.clear()
        stats.compact_s = time.monotonic() - started

    def _log_cycle(self, stats: CycleStats) -> None:
        try:
            if self.cycle_log.exists() and self.cycle_log.stat().st_size > _CYCLE_LOG_MAX_BYTES:
                self.cycle_log.write_bytes(b"")  # diagnostics only: keep the last few MB
            with self.cycle_log.open("ab") as handle:
                handle.write(orjson.dumps(dataclasses.asdict(stats)) + b"\n")
        except OSError as exc:
            log.warning("cannot write %s: %s", self.cycle_log, exc)


def progress_path(data: Path) -> Path:
    return live_dir(data) / "pipeline.progress"


def write_progress(data: Path, last_segment: str) -> None:
    """After a cycle has derived everything from its segments: the newest of them (what `serve`'s
    status reports, so a client can tell when what it submitted has become events)."""
    path = progress_path(data)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(orjson.dumps({"last_segment": last_segment, "at": time.time()}))
    partial.replace(path)


def read_progress(data: Path) -> dict[str, Any] | None:
    try:
        return orjson.loads(progress_path(data).read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None


# -- the process --------------------------------------------------------------------


PIPELINE_NICENESS = 5
_PR_SET_PDEATHSIG = 1
# The directory holding this `wallwatch` package: the child imports the same code as its parent.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


def die_with_parent(parent: int) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (prctl(2) PR_SET_PDEATHSIG), so a
    killed `serve` leaves no pipeline behind to race its successor."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def run(config: PipelineConfig, stop: threading.Event, ready: Path | None = None) -> None:
    """Hold the data folder's writer lock (the one `wallwatch ingest` takes) for the pipeline's life,
    waiting while another writer has it; then catch up and run cycles until `stop`."""
    store = Store(config.data)
    with contextlib.ExitStack() as held:
        waiting = False
        while True:
            try:
                held.enter_context(store.writer(wait=0 if not waiting else 1.0))
                break
            except StoreLocked as exc:
                if not waiting:
                    log.warning("%s; the live pipeline waits for it (submissions are still accepted)", exc)
                    waiting = True
                if stop.is_set():
                    return
        if waiting:
            log.warning("the data folder's writer lock is free: the live pipeline starts")
        pipeline = LivePipeline(config)
        pipeline.catch_up()
        if ready is not None:
            ready.write_text(str(os.getpid()))
        try:
            while not stop.is_set():
                if not pipeline.step():
                    stop.wait(config.poll_seconds)
        finally:
            pipeline.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m wallwatch.web.live", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="PipelineConfig as JSON")
    parser.add_argument("--parent", type=int, required=True, help="pid of the serve process")
    parser.add_argument("--ready", type=Path, help="file written once caught up")
    args = parser.parse_args(argv)
    die_with_parent(args.parent)
    config = PipelineConfig.from_json(args.config)
    # The writer lock names its holder by its command line (a second writer's message shows it):
    # say what this is rather than show the JSON of --config.
    sys.argv = ["wallwatch serve (live pipeline)", "--data", str(config.data)]
    # Acknowledgements are the latency-critical path, the pipeline is throughput: when both want the
    # CPU, the collector (this process's parent) goes first and the pipeline catches up in the slack.
    os.nice(PIPELINE_NICENESS)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    run(config, stop, args.ready)


class PipelineSupervisor:
    """Starts the pipeline process, restarts it if it dies, stops it with SIGTERM (used by `serve`)."""

    def __init__(self, config: PipelineConfig, *, restart_delay: float = 1.0) -> None:
        self.config = config
        self.restart_delay = restart_delay
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.ready_file = live_dir(config.data) / "pipeline.ready"
        self._stopping = False

    def start(self) -> None:
        self.ready_file.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "wallwatch.web.live", "--config", self.config.to_json(),
             "--parent", str(os.getpid()), "--ready", str(self.ready_file)],
            env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (_PACKAGE_ROOT, os.environ.get("PYTHONPATH"))))})

    @property
    def ready(self) -> bool:
        return self.ready_file.exists()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check(self) -> None:
        """Restart a pipeline that died (the WAL kept everything it had not finished)."""
        if self._stopping or self.alive():
            return
        code = self.process.returncode if self.process else None
        log.error("the live pipeline exited (code %s); restarting it", code)
        self.restarts += 1
        self.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stopping = True
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def status(self) -> dict[str, Any]:
        progress = read_progress(self.config.data)
        return {"alive": self.alive(), "ready": self.ready, "restarts": self.restarts,
                "pid": self.process.pid if self.process else None,
                "last_segment": progress["last_segment"] if progress else None}


if __name__ == "__main__":
    main()
