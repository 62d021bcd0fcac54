"""The pipeline's commands: `ingest`, `series`, `events`, `report`, `export`.

Heavy imports (DuckDB, pyarrow, Altair) stay inside the commands so that
`wallwatch --help` stays fast. Conventions shared with the other parts' commands:
`--out` always names a folder (created if missing; the files written in it are
named in the help), choices are Enums (their values are listed in `--help`),
times are UTC written YYYY-MM-DD or YYYY-MM-DDTHH:MM, and long commands show a
progress bar on stderr (`wallwatch.progress`).
"""

from __future__ import annotations

import enum
import functools
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from wallwatch.analysis.report.exports import ExportFormat, write_export
from wallwatch.vocabulary import VERDICTS, Service

DataOption = Annotated[
    Path | None,
    typer.Option("--data", help="Data directory (default: $WALLWATCH_DATA or ./wallwatch-data)."),
]
CountryOption = Annotated[
    list[str] | None, typer.Option("--country", "-c", help="Only this country (ISO code); repeatable.")
]


ServiceOption = Annotated[
    list[Service] | None, typer.Option("--service", "-s", help="Only this service; repeatable.")
]
_TIME_FORMAT = "YYYY-MM-DD or YYYY-MM-DDTHH:MM (UTC)"


def parse_utc(text: str) -> datetime:
    """A UTC time from the command line: a day (2017-09-20), or a day and a time (2017-09-20T12:00,
    '2017-09-20 12:00', seconds and a 'Z' or '+00:00' allowed); anything else is refused with the
    format to use."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("z", "Z").removesuffix("Z"))
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a time: write {_TIME_FORMAT}, e.g. 2017-09-20 or "
                                 "2017-09-20T12:00") from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


def _time_option(help_text: str) -> Any:
    return typer.Option(parser=parse_utc, metavar="YYYY-MM-DD[THH:MM]", help=f"{help_text} Written {_TIME_FORMAT}.")


def _data_dir(data: Path | None) -> Path:
    return data or Path(os.environ.get("WALLWATCH_DATA") or "wallwatch-data")


def _store(data: Path | None):  # noqa: ANN202 - Store, imported lazily
    from wallwatch.analysis.store import Store

    root = _data_dir(data)
    if not root.is_dir():
        raise typer.BadParameter(f"no data directory at {root} (run `wallwatch ingest` first)", param_hint="--data")
    return Store(root)


def _countries(country: list[str] | None) -> tuple[str, ...]:
    return tuple(c.upper() for c in (country or ()))


def _ensure_series(store, countries: tuple[str, ...], rebuild: bool) -> None:  # noqa: ANN001
    from wallwatch.analysis.series.build import SeriesError, SeriesRequest, build_and_store

    if rebuild or "series_hourly" not in store.datasets():
        try:
            _build_series(store, SeriesRequest(countries=countries))
        except SeriesError as exc:
            raise typer.BadParameter(str(exc)) from exc


def _build_series(store, request):  # noqa: ANN001, ANN202 - Store, SeriesRequest; imported lazily
    from wallwatch.analysis.series.build import BUILD_STEPS, build_and_store
    from wallwatch.progress import progress

    with progress("series", len(BUILD_STEPS)) as step:
        return build_and_store(store, request, progress=lambda done: step(description=f"series: {done}"))


def series_command(
    data: DataOption = None,
    country: CountryOption = None,
    since: Annotated[datetime | None, _time_option("First hour (UTC).")] = None,
    until: Annotated[datetime | None, _time_option("Last hour (UTC), inclusive.")] = None,
    min_probes: Annotated[int, typer.Option(help="Fewest decisive probes for an hour to count.")] = 1,
    dense_gap_days: Annotated[float, typer.Option(
        help="Silences up to this many days stay hour by hour; longer ones fold into one gap row.")] = 14.0,
    limit: Annotated[int, typer.Option(help="Rows to print.")] = 40,
) -> None:
    """Build the dense hourly and daily series from the verdicts and print a summary per series."""
    from rich.console import Console
    from rich.table import Table

    from wallwatch.analysis.series.build import SeriesError, SeriesRequest, series_summary

    store = _store(data)
    try:
        hourly, _, build = _build_series(
            store, SeriesRequest(start=since, end=until, countries=_countries(country), min_probes=min_probes,
                                 max_dense_gap=timedelta(days=dense_gap_days),
                                 gap_margin=min(timedelta(hours=48), timedelta(days=dense_gap_days) / 2))
        )
    except SeriesError as exc:
        raise typer.BadParameter(str(exc)) from exc
    console = Console()
    if not build.n_series:
        console.print("no verdicts to build series from")
        return
    console.print(f"{build.n_series} series, {build.hourly_rows} series-hours, {build.daily_rows} series-days, "
                  f"{build.start:%Y-%m-%d %H:00} to {build.end:%Y-%m-%d %H:00} UTC")
    table = Table("country", "network", "service", "feature", "hours", "with data", "measurements",
                  "blocked h", "partial h", "throttled h", "down h", "max share", "last state")
    rows = series_summary(hourly)
    for row in rows[:limit]:
        network = f"AS{row['probe_asn']}" + (f" {row['probe_network_name']}" if row["probe_network_name"] else "")
        share = row["max_blocked_share"]
        table.add_row(row["probe_cc"], network, row["service"], row["feature"], str(row["buckets"]),
                      str(row["with_data"]), str(row["measurements"]), str(row["blocked"]), str(row["partial"]),
                      str(row["throttled"]), str(row["down"]), "-" if share is None else f"{share:.0%}", row["last_state"])
    console.print(table)
    if len(rows) > limit:
        console.print(f"... {len(rows) - limit} more series (--limit)")


class EventType(str, enum.Enum):
    blocking = "blocking"
    throttling = "throttling"
    volume_collapse = "volume_collapse"


class FeedFormat(str, enum.Enum):
    atom = "atom"


TagAuthorityOption = Annotated[
    str | None, typer.Option(help="Tag URI authority of feed ids, 'yourdomain.org,2025' (RFC 4151).")
]


def _network_part(network: Any, with_onset: bool, event_type: str = "blocking") -> str:
    """"AS4134 from Wed 20 Sep 12:00 (on and off, blocked 30 of 96 hours (31%), comprehensive from ...)";
    only a blocking event's networks have an extent (docs/analysis.md, "Event extents")."""
    text = f"AS{network.probe_asn}" + (f" from {network.onset:%a %d %b %H:00}" if with_onset else "")
    return text + (f" ({network.extent_text})" if event_type == "blocking" else "")


def events_command(
    data: DataOption = None,
    country: CountryOption = None,
    service: ServiceOption = None,
    event_type: Annotated[EventType | None, typer.Option("--type", help="Only this type.")] = None,
    rebuild: Annotated[bool, typer.Option("--rebuild/--no-rebuild", help="Rebuild the series first.")] = True,
    record: Annotated[bool, typer.Option("--record/--no-record", help="Append lifecycle entries to events.jsonl.")]
    = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the events as JSON lines.")] = False,
    feed: Annotated[FeedFormat | None, typer.Option("--feed", help="Also write the lifecycle log as a feed.")]
    = None,
    out: Annotated[Path | None, typer.Option(
        "--out", file_okay=False, help="Folder to write the feed into, as events.atom (default: DATA).")] = None,
    feed_url: Annotated[str | None, typer.Option(help="URL the feed will be served at (rel=self).")] = None,
    tag_authority: TagAuthorityOption = None,
) -> None:
    """Detect censorship events in the series, log their lifecycle, and list them (or write an Atom feed)."""
    import orjson
    from rich.console import Console
    from rich.table import Table

    from wallwatch.analysis.report.charts import when
    from wallwatch.analysis.events.grouping import add_rule_evidence, detect_events
    from wallwatch.analysis.events.lifecycle import record_events
    from wallwatch.analysis.series.build import read_series

    from wallwatch.progress import progress

    store = _store(data)
    countries = _countries(country)
    services = tuple(s.value for s in service or ())
    _ensure_series(store, countries, rebuild)
    hourly = read_series(store, "hour", countries)
    with progress("events: detecting, series by series") as step:
        found = detect_events(hourly, progress=lambda done, total: step(total=total))
    connection = store.connect()
    try:
        events = add_rule_evidence(connection, found)
    finally:
        connection.close()
    entries: list = []
    if record:
        events, entries = record_events(store, events)
    events = [e for e in events if (not services or e.service in services)
              and (event_type is None or e.type == event_type.value)]
    if feed is not None:
        path = (out or store.root) / "events.atom"
        count = _write_feed(store, path, countries, services,
                            (event_type.value,) if event_type else (), feed_url, tag_authority)
        typer.echo(f"wrote {path} ({count} feed entries)", err=as_json)
    if as_json:
        for event in events:
            typer.echo(orjson.dumps(event.to_record()).decode())
        return
    console = Console()
    table = Table("onset (UTC)", "end (UTC)", "type", "country", "service/feature", "networks", "method",
                  "peak", "event id", title=f"{len(events)} event(s)")
    for e in events:
        networks = ", ".join(_network_part(n, len(e.networks) > 1, e.type) for n in e.networks)
        table.add_row(when(e.onset), when(e.end), e.type, e.probe_cc, f"{e.service}/{e.feature}", networks,
                      ",".join(e.methods) or "-", f"{e.peak_blocked_share:.0%}" if e.type in ("blocking", "throttling") else "-",
                      e.event_id)
    console.print(table)
    if record:
        console.print(f"{len(entries)} new lifecycle entr{'y' if len(entries) == 1 else 'ies'} in "
                      f"{store.log_path('events')}")


def _write_feed(store, path: Path, countries: tuple[str, ...], services: tuple[str, ...],  # noqa: ANN001
                event_types: tuple[str, ...], feed_url: str | None, tag_authority: str | None) -> int:
    from wallwatch.analysis.events.feeds import DEFAULT_TAG_AUTHORITY, FeedError, FeedOptions, write_atom

    options = FeedOptions(countries=countries, services=services, event_types=event_types, self_url=feed_url,
                          tag_authority=tag_authority or DEFAULT_TAG_AUTHORITY)
    try:
        return write_atom(store, path, options)
    except FeedError as exc:
        raise typer.BadParameter(str(exc), param_hint="--tag-authority") from exc


def report_command(
    data: DataOption = None,
    out: Annotated[Path | None, typer.Option(
        "--out", file_okay=False,
        help="Folder to write the report into: index.html, charts/, exports/, events.atom (default: DATA/report)."),
    ] = None,
    country: CountryOption = None,
    service: ServiceOption = None,
    max_charts: Annotated[int, typer.Option(help="Most (country, service, feature) chart sections.")] = 12,
    png: Annotated[bool, typer.Option("--png/--no-png", help="Also write PNG charts.")] = True,
    exports: Annotated[bool, typer.Option("--exports/--no-exports", help="Write CSV/Parquet exports.")] = True,
    source: Annotated[str, typer.Option(help="Data source named on every chart.")] = "wallwatch measurements",
    rebuild: Annotated[bool, typer.Option("--rebuild/--no-rebuild", help="Rebuild the series first.")] = True,
    tag_authority: TagAuthorityOption = None,
) -> None:
    """Write an offline HTML report with charts (SVG/PNG), the event table, an Atom feed and CSV/Parquet exports."""
    from wallwatch.analysis.events.feeds import DEFAULT_TAG_AUTHORITY, FeedError
    from wallwatch.analysis.report.html import ReportOptions, build_report

    from wallwatch.progress import progress

    store = _store(data)
    target = out or (store.root / "report")
    try:
        with progress("report") as step:
            result = build_report(store, target, ReportOptions(
                countries=_countries(country), services=tuple(s.value for s in service or ()), max_groups=max_charts,
                png=png, exports=exports, source=source, rebuild_series=rebuild,
                tag_authority=tag_authority or DEFAULT_TAG_AUTHORITY),
                progress=lambda what, done, total: step(description=f"report: {what}", total=total))
    except FeedError as exc:
        raise typer.BadParameter(str(exc), param_hint="--tag-authority") from exc
    typer.echo(f"wrote {result.index} ({len(result.events)} events, {len(result.charts)} chart files, "
               f"{len(result.exports)} exports, {result.log_entries} new log entries)")


EndpointOption = Annotated[str | None, typer.Option(
    "--endpoint-url", envvar="WALLWATCH_S3_ENDPOINT_URL", show_envvar=True,
    help="S3 endpoint of the archive (default: OONI's, https://s3.eu-central-1.amazonaws.com)."
)]
NoRawOption = Annotated[bool, typer.Option(
    "--no-raw", help="Do not keep a copy of the input files under <data>/raw/ (the raw JSON of each measurement)."
)]
WorkersOption = Annotated[int | None, typer.Option(
    "--workers", min=1, help="Processes reading files in parallel (default: one per CPU, at most one per file)."
)]
ClusterOption = Annotated[str | None, typer.Option(
    "--cluster", metavar="ADDRESS",
    help="Read the files on a Dask cluster: a scheduler's address (tcp://host:8786), its scheduler file "
    "(*.json), or 'local' (--workers processes on this machine). This process stays the one writer; "
    "with raw copies kept the workers must see the data folder (else --no-raw)."
)]
WaitOption = Annotated[float, typer.Option(
    "--wait", min=0, help="Seconds to wait for another writer of the data folder (default: stop at once)."
)]


def ingest_command(
    paths: Annotated[list[str], typer.Argument(
        help="Files or folders of OONI .json/.jsonl/.jsonl.gz measurements, or s3://bucket/prefix URLs "
        "(every measurement object under the prefix, read straight from the bucket).")],
    data: DataOption = None,
    no_raw: NoRawOption = False,
    workers: WorkersOption = None,
    wait: WaitOption = 0.0,
    max_line_mb: Annotated[float, typer.Option(
        "--max-line-mb", min=0.001, help="Longest line read whole, in MiB; a longer one is quarantined "
        "(or read element by element when it is a JSON array)."
    )] = 32.0,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", min=1, help="Measurements per commit: each batch becomes visible at once, or not at all."
    )] = 20_000,
    endpoint: EndpointOption = None,
    cluster: ClusterOption = None,
) -> None:
    """Read measurements, derive observations and per-feature verdicts, store them as Parquet."""
    from wallwatch.analysis.archive.bucket import endpoint_url, list_objects
    from wallwatch.analysis.ingest.pipeline import discover

    local = [Path(p) for p in paths if not p.startswith("s3://")]
    missing = [str(p) for p in local if not p.exists()]
    if missing:
        raise typer.BadParameter(f"no such file or folder: {', '.join(missing)}")
    sources: list[Any] = list(local)
    files = len(list(discover(local)))
    for url in (p for p in paths if p.startswith("s3://")):
        objects = list_objects(url, endpoint_url(endpoint))  # listed once, here
        if not objects:
            raise typer.BadParameter(f"no measurement object under {url}")
        sources.extend(objects)
        files += len(objects)
    _run_ingest(sources, files, data, keep_raw=not no_raw, workers=workers, lock_wait=wait,
                max_line_bytes=int(max_line_mb * 1024 * 1024), batch_size=batch_size, cluster=cluster)


def _run_ingest(sources: list[Any], files: int, data: Path | None, **options: Any) -> None:
    """Ingest with a progress bar, then print the summary; a busy store exits 3, a write error 4."""
    from rich.console import Console
    from rich.table import Table

    from wallwatch.analysis.commitlog import StoreLocked, is_no_space
    from wallwatch.analysis.ingest.cluster import ClusterError
    from wallwatch.analysis.ingest.pipeline import ingest
    from wallwatch.progress import progress

    console = Console()
    try:
        with progress("ingest: files", files) as step:
            summary = ingest(sources, _data_dir(data), **options,
                             on_file=lambda path, done: step(description=f"ingest: {done.read} measurements read"))
    except StoreLocked as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(3) from None
    except ClusterError as exc:
        console.print(f"[red]ingest stopped: {exc}. Everything stored before the last batch is intact.[/red]")
        raise typer.Exit(5) from None
    except OSError as exc:
        # A full disk or any other write error: what was committed before stays; the batch being
        # written is not visible. Running again reads the unfinished files again and stores what
        # is missing.
        remedy = "free some space and" if is_no_space(exc) else "fix the cause and"
        console.print(f"[red]ingest stopped: {exc.strerror or exc} ({exc.filename or _data_dir(data)}). Everything "
                      f"stored before the last batch is intact; {remedy} run the same command again to "
                      f"finish.[/red]")
        raise typer.Exit(4) from None
    table = Table(title=f"ingest into {_data_dir(data)}")
    table.add_column("count")
    table.add_column("value", justify="right")
    for key in ("files_seen", "files_skipped", "read", "stored", "duplicated", "quarantined", "observations",
                "verdicts"):
        table.add_row(key, str(getattr(summary, key)))
    for reason, count in sorted(summary.quarantine_reasons.items()):
        table.add_row(f"quarantined: {reason}", str(count))
    console.print(table)
    if summary.tests:
        from wallwatch.analysis.verdicts.rules import judgement_of

        tests = Table("test", "stored", "verdicts", title="stored measurements per test")
        for test_name, count in sorted(summary.tests.items()):
            tests.add_row(test_name, str(count), judgement_of(test_name))
        console.print(tests)
    if summary.unclassified_failures:
        console.print("failure strings the taxonomy does not class (never evidence until a maintainer classes them "
                      "in analysis/verdicts/data/failures.csv):", soft_wrap=True)
        unclassified = Table("failure", "verdicts")
        for failure, count in summary.unclassified_failures.most_common():
            unclassified.add_row(failure, str(count))
        console.print(unclassified)
    for line in summary.files_not_read:
        console.print(f"not read: {line}", highlight=False, soft_wrap=True)
    console.print(f"quarantine file: {summary.quarantine_file}"
                  + ("" if summary.quarantined else " (nothing quarantined by this run)"), highlight=False,
                  soft_wrap=True)


def sync_command(
    since: Annotated[datetime, _time_option("Start of the window of upload hours (inclusive).")],
    until: Annotated[datetime, _time_option("End of the window (exclusive: --until 2024-02-01 ends with "
                                            "January).")],
    dest: Annotated[Path | None, typer.Argument(
        help="Folder to download into, laid out like the bucket (DEST/raw/YYYYMMDD/HH/CC/test/...); "
        "optional with --ingest (then nothing is kept but the store's raw copies).")] = None,
    country: CountryOption = None,
    test: Annotated[list[str] | None, typer.Option(
        "--test", "-t", help="Only this test (web_connectivity, whatsapp, ...); repeatable.")] = None,
    endpoint: EndpointOption = None,
    bucket: Annotated[str, typer.Option("--bucket", help="The archive's bucket.")] = "ooni-data-eu-fra",
    threads: Annotated[int, typer.Option("--threads", min=1, help="Files downloaded at once.")] = 4,
    into_store: Annotated[bool, typer.Option(
        "--ingest", help="Then ingest what was selected into --data (straight from the bucket without DEST).")] = False,
    data: DataOption = None,
    no_raw: NoRawOption = False,
    workers: WorkersOption = None,
    wait: WaitOption = 0.0,
    cluster: ClusterOption = None,
) -> None:
    """Fetch part of OONI's public archive (uploads in [--since, --until)), resumably: a file fetched
    whole is never fetched again, an interrupted one is resumed."""
    from wallwatch.analysis.archive.bucket import Selection, endpoint_url, list_archive
    from wallwatch.analysis.archive.sync import SyncError, sync
    from wallwatch.progress import progress

    if dest is None and not into_store:
        raise typer.BadParameter("give a DEST folder, --ingest, or both")
    try:
        selection = Selection.of(since, until, country or (), test or ())
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--until") from None
    objects = list_archive(selection, endpoint=endpoint_url(endpoint), bucket=bucket)
    total = sum(obj.size for obj in objects)
    typer.echo(f"{len(objects)} files, {total / 1e6:.1f} MB in s3://{bucket} for the selection", err=True)
    if dest is not None:
        try:
            with progress("sync: MB", round(total / 1e6, 1)) as step:
                summary = sync(objects, dest, threads=threads,
                               on_file=lambda obj, outcome, fetched: step(obj.size / 1e6))
        except SyncError as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(3) from None
        typer.echo(f"{dest}: {summary.fetched} fetched, {summary.resumed} resumed, {summary.present} already "
                   f"there, {summary.bytes_fetched / 1e6:.1f} MB read")
        for failure in summary.failed:
            typer.echo(f"not fetched: {failure}", err=True)
        if summary.failed:
            raise typer.Exit(1)
        sources: list[Any] = summary.paths
    else:
        sources = objects
    if into_store and sources:
        _run_ingest(sources, len(sources), data, keep_raw=not no_raw, workers=workers, lock_wait=wait,
                    cluster=cluster)


class ExportDataset(str, enum.Enum):
    """Every dataset `export` writes: the stored facts and judgments, the series, the detected events."""

    measurements = "measurements"
    observations = "observations"
    verdicts = "verdicts"
    hourly = "hourly"
    daily = "daily"
    events = "events"


def export_command(
    datasets: Annotated[list[ExportDataset], typer.Argument(
        help="Datasets to export: the stored measurements, observations and verdicts, the hourly and daily "
             "series, or the detected events.", show_default=False)],
    out: Annotated[Path | None, typer.Option(
        "--out", file_okay=False,
        help="Folder to write into, one file per dataset named DATASET.csv or DATASET.parquet "
             "(default: DATA/exports).")] = None,
    format: Annotated[ExportFormat, typer.Option("--format", help="File format.")] = ExportFormat.csv,
    data: DataOption = None,
    country: CountryOption = None,
) -> None:
    """Export datasets as CSV or Parquet files, one per dataset, into one folder."""
    from wallwatch.analysis.events.grouping import detect_events, events_table
    from wallwatch.analysis.series.build import read_series

    store = _store(data)
    countries = _countries(country)
    folder = out or (store.root / "exports")
    for dataset in dict.fromkeys(datasets):
        if dataset in (ExportDataset.measurements, ExportDataset.observations, ExportDataset.verdicts):
            where = ("probe_cc IN (" + ", ".join(f"'{cc}'" for cc in countries) + ")") if countries else None
            table = store.read(dataset.value, where)
        else:
            _ensure_series(store, countries, rebuild=False)
            if dataset is ExportDataset.events:
                table = events_table(detect_events(read_series(store, "hour", countries)))
            else:
                table = read_series(store, "hour" if dataset is ExportDataset.hourly else "day", countries)
        path = folder / f"{dataset.value}.{format.value}"
        write_export(table, path, format)
        typer.echo(f"wrote {table.num_rows} {dataset.value} rows to {path}")


fingerprints_app = typer.Typer(help="OONI's blocking fingerprints: list them, check a measurement, update the data.",
                               no_args_is_help=True)


@fingerprints_app.command("list")
def fingerprints_list_command(
    scope: Annotated[list[str] | None, typer.Option("--scope", help="Only this scope (nat, isp, prod, fp, ...).")]
    = None,
    country: Annotated[str | None, typer.Option("--country", "-c", help="Only rows expected in this country.")]
    = None,
    location: Annotated[str | None, typer.Option(help="Only this location (dns, body, header.location, ...).")]
    = None,
) -> None:
    """Print the shipped fingerprint rows (name, scope, location, pattern type, pattern, countries)."""
    from wallwatch.analysis.verdicts.fingerprints import load_fingerprints, read_manifest

    db = load_fingerprints()
    manifest = read_manifest()
    rows = [row for row in db.rows if (not scope or row.scope in scope)
            and (country is None or country.upper() in row.expected_countries)
            and (location is None or row.location_found == location)]
    for row in rows:
        typer.echo("\t".join((row.name, row.scope, row.location_found, row.pattern_type, row.pattern,
                              ",".join(row.expected_countries))))
    typer.echo(f"{len(rows)} of {len(db.dns)} DNS + {len(db.http)} HTTP rows; version {db.version} "
               f"({manifest.get('source')})", err=True)


@fingerprints_app.command("check")
def fingerprints_check_command(
    measurements: Annotated[list[Path], typer.Argument(help="OONI measurement files (.json, .jsonl, .jsonl.gz).")],
) -> None:
    """Every fingerprint each measurement's DNS answers and HTTP responses match, and what it means there."""
    from wallwatch.analysis.compare import iter_records
    from wallwatch.analysis.ingest.header import RecordError, read_header
    from wallwatch.analysis.verdicts.fingerprints import load_fingerprints
    from wallwatch.analysis.verdicts.observations import fingerprint_matches

    db = load_fingerprints()
    total = 0
    for path in measurements:
        for record in iter_records(path):
            try:
                header, meta, test_keys = read_header(record)
            except RecordError as exc:
                typer.echo(f"{path}: not a measurement ({exc})")
                continue
            found = fingerprint_matches(test_keys, db)
            total += len(found)
            typer.echo(f"{path}: {header.test_name} {meta.get('input') or ''} probe {header.probe_cc} "
                       f"AS{header.probe_asn}: {len(found)} match(es)")
            for match in found:
                row = match.fingerprint
                meaning = ("known false positive" if row.false_positive else "vague blocking word" if row.vague
                           else "confirmed blocking" if row.expected_in(header.probe_cc)
                           else f"evidence (expected in {','.join(row.expected_countries)})")
                typer.echo(f"  {row.name} [{row.scope}] {match.location} {row.pattern_type} {row.pattern!r} "
                           f"in {match.where}: {meaning}")
    if not total:
        typer.echo("no fingerprint matched")


@fingerprints_app.command("update")
def fingerprints_update_command(
    csv_files: Annotated[list[Path], typer.Argument(help="fingerprints_dns.csv and/or fingerprints_http.csv.")],
    version: Annotated[str, typer.Option(help="The new data version, e.g. ooni-blocking-fingerprints-<commit>.")],
    source: Annotated[str, typer.Option(help="Where the files come from: repository @ commit (date).")],
    note: Annotated[str, typer.Option(help="A line for PROVENANCE.md.")] = "",
    directory: Annotated[Path | None, typer.Option(
        "--dir", help="Data directory to update (default: the shipped data in the installed package).")] = None,
) -> None:
    """Validate upstream CSVs and replace the shipped fingerprint data with them, keeping the provenance."""
    from wallwatch.analysis.verdicts.fingerprints import FILES, FingerprintError, shipped_directory, update

    by_kind: dict[str, Path] = {}
    for path in csv_files:
        kind = next((k for k, name in FILES.items() if path.name == name), None)
        if kind is None:
            raise typer.BadParameter(f"{path.name}: name it {' or '.join(FILES.values())} (as upstream does)")
        by_kind[kind] = path
    try:
        manifest = update(directory or shipped_directory(), by_kind.get("dns"), by_kind.get("http"),
                          version=version, source=source, note=note)
    except FingerprintError as exc:
        raise typer.BadParameter(str(exc)) from exc
    rows = ", ".join(f"{name}: {entry['rows']} rows" for name, entry in manifest["files"].items())
    typer.echo(f"fingerprints now version {manifest['version']} ({rows})")


def compare_command(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders of OONI measurements.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON line per (measurement, feature).")] = False,
) -> None:
    """wallwatch's verdict next to OONI's own flags, per measurement: a confusion table and every disagreement."""
    import orjson
    from rich.console import Console
    from rich.table import Table

    from wallwatch.analysis.compare import OONI_BLOCKING, OONI_NONE, OONI_OK, compare_paths, confusion

    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise typer.BadParameter(f"no such file or folder: {', '.join(missing)}")
    comparisons = compare_paths(paths, paths[0] if len(paths) == 1 and paths[0].is_dir() else None)
    if as_json:
        for comparison in comparisons:
            typer.echo(orjson.dumps(comparison.to_record()).decode())
        return
    counts = confusion(comparisons)
    flags = (OONI_BLOCKING, OONI_OK, OONI_NONE)
    table = Table("wallwatch \\ OONI", *flags, title=f"{len(comparisons)} (measurement, feature) pairs, "
                  f"{sum(c.agree for c in comparisons)} agree")
    for verdict in VERDICTS:
        table.add_row(verdict, *(str(counts.get((verdict, flag), 0)) for flag in flags))
    console = Console()
    console.print(table)
    disagreements = [c for c in comparisons if not c.agree]
    listing = Table("measurement", "feature", "wallwatch", "OONI", "reason", title=f"{len(disagreements)} "
                    "disagreement(s)")
    for c in disagreements:
        listing.add_row(f"{c.source} {c.input or ''}".strip(), c.feature, f"{c.verdict} ({c.rule_id})",
                        c.ooni_detail, c.reason or "")
    console.print(listing)


def compact_command(
    data: DataOption = None,
    dataset: Annotated[list[str] | None, typer.Option(
        "--dataset", help="Only this dataset; repeatable (default: every dataset).")] = None,
    min_files: Annotated[int, typer.Option(
        "--min-files", min=2, help="Merge a partition's small files once it has this many.")] = 8,
) -> None:
    """Merge each partition's small Parquet files into one (after many small ingest batches)."""
    store = _store(data)
    for name in dataset or store.datasets():
        removed = store.compact(name, min_files=min_files)
        typer.echo(f"{name}: {removed} files merged" if removed else f"{name}: nothing to merge")


def _store_errors_said_plainly(command: Callable[..., None]) -> Callable[..., None]:
    """A command that writes the store: another writer holding it (exit 3) or a full disk (exit 4)
    is said in one line, not a traceback; the store is as its last commit left it either way."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        from wallwatch.analysis.commitlog import StoreLocked, is_no_space

        try:
            command(*args, **kwargs)
        except StoreLocked as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(3) from None
        except OSError as exc:
            if not is_no_space(exc):
                raise
            typer.echo(f"stopped: {exc.strerror} ({exc.filename or 'the data folder'}); nothing half-written "
                       f"is visible: free some space and run again", err=True)
            raise typer.Exit(4) from None

    return run


def register(app: typer.Typer) -> None:
    app.command("compare")(compare_command)
    app.add_typer(fingerprints_app, name="fingerprints")
    app.command("ingest")(ingest_command)
    app.command("sync")(sync_command)
    app.command("export")(export_command)
    app.command("series")(_store_errors_said_plainly(series_command))
    app.command("events")(_store_errors_said_plainly(events_command))
    app.command("report")(_store_errors_said_plainly(report_command))
    app.command("compact")(_store_errors_said_plainly(compact_command))
