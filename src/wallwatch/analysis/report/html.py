"""`wallwatch report`: one offline HTML page, SVG/PNG charts, an Atom feed and CSV/Parquet exports.

The page embeds its SVG charts (no CDN, no script from elsewhere: it opens
from a USB stick), lists every detected event with its evidence, and carries
the labels a journalist needs to quote it: country, network names, service,
feature, dates in UTC, data source and wallwatch version.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from wallwatch import __version__
from wallwatch.analysis.report import charts
from wallwatch.analysis.report.exports import ExportFormat, write_export
from wallwatch.analysis.events.grouping import (
    ANY,
    BLOCKING,
    THROTTLING,
    DetectionParams,
    Event,
    add_rule_evidence,
    detect_events,
    events_table,
    iso,
)
from wallwatch.analysis.events.detector import BlockingParams, minimum_evidence, minimum_evidence_brief
from wallwatch.analysis.events.lifecycle import record_events
from wallwatch.analysis.events.feeds import FeedOptions, write_atom
from wallwatch.analysis.series.build import SeriesRequest, build_and_store, read_series
from wallwatch.analysis.series.queries import network_volume_sql
from wallwatch.vocabulary import describe_circumvention, qualifier_plain


_HOURLY_TIMELINE_MAX = 7 * 24


@dataclass(frozen=True)
class ReportOptions:
    countries: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    # Chart sections: every (country, service, feature) with an event first,
    # then the most-measured others, up to this many.
    max_groups: int = 12
    png: bool = True
    exports: bool = True
    source: str = "wallwatch measurements"
    rebuild_series: bool = True
    record: bool = True  # append lifecycle entries to the event log
    # Tag URI authority of the Atom feed's ids (feeds.py); the feed is written as events.atom.
    tag_authority: str = "wallwatch.invalid,2025"


@dataclass(frozen=True)
class ReportResult:
    index: Path
    events: list[Event]
    feed: Path | None = None
    charts: list[Path] = field(default_factory=list)
    exports: list[Path] = field(default_factory=list)
    log_entries: int = 0


# Progress: (what was just done, units done, units in all); the chart sections' count is known late.
Progress = Callable[[str, int, int], None]


def build_report(store: Any, out_dir: Path, options: ReportOptions = ReportOptions(),
                 params: DetectionParams = DetectionParams(), progress: Progress | None = None) -> ReportResult:
    """Series -> events -> charts -> page (+ exports) under `out_dir`; returns what was written.

    `progress(step, done, total)` is called as each step and each chart section is done."""
    counter = _Counter(progress, total=4 + options.max_groups)
    out_dir.mkdir(parents=True, exist_ok=True)
    if options.rebuild_series or "series_hourly" not in store.datasets():
        build_and_store(store, SeriesRequest(countries=options.countries))
    hourly = _only_services(read_series(store, "hour", options.countries), options.services)
    daily = _only_services(read_series(store, "day", options.countries), options.services)
    counter.done("series")
    connection = store.connect()
    try:
        events = add_rule_evidence(connection, detect_events(hourly, params))
    finally:
        connection.close()
    log_entries = 0
    if options.record:
        events, entries = record_events(store, events, params.grouping.merge_gap_hours)
        log_entries = len(entries)
    counter.done("events")
    context = charts.ChartContext(source=options.source)
    sections, written = _chart_sections(hourly, daily, events, out_dir / "charts", options, context,
                                         params.blocking, counter)
    exports = _exports(store, hourly, daily, events, out_dir / "exports") if options.exports else []
    counter.done("exports")
    feed = out_dir / "events.atom"
    write_atom(store, feed, FeedOptions(countries=options.countries, services=options.services,
                                        tag_authority=options.tag_authority))
    index = out_dir / "index.html"
    index.write_text(_render_page(hourly, events, sections, exports, out_dir, options, context,
                                  minimum_evidence(params.blocking), what_still_works(store, options.countries)))
    counter.done("page")
    return ReportResult(index=index, events=events, feed=feed, charts=written, exports=exports,
                        log_entries=log_entries)


class _Counter:
    """Units of report work done, for `build_report`'s progress callback."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress, self.total, self.count = progress, total, 0

    def expect(self, units: int) -> None:
        """The chart sections are counted once known: the total becomes exact."""
        self.total = self.count + units + 2  # + exports and page

    def done(self, step: str) -> None:
        self.count += 1
        if self.progress is not None:
            self.progress(step, self.count, self.total)


def _only_services(table: pa.Table, services: Sequence[str]) -> pa.Table:
    if not services:
        return table
    return table.filter(pc.is_in(table.column("service"), value_set=pa.array(list(services))))


@dataclass
class _Section:
    key: str
    probe_cc: str
    service: str
    feature: str
    title: str
    networks: list[str]
    events: list[Event]
    charts: list[charts.RenderedChart]


def _chart_sections(hourly: pa.Table, daily: pa.Table, events: list[Event], chart_dir: Path,
                    options: ReportOptions, context: charts.ChartContext,
                    blocking: BlockingParams = BlockingParams(),
                    counter: _Counter | None = None) -> tuple[list[_Section], list[Path]]:
    hourly_by = _group_rows(hourly)
    daily_by = _group_rows(daily)
    volume = defaultdict(int)
    for key, rows in hourly_by.items():
        volume[key] = sum(row["n_measurements"] for row in rows)
    event_groups = [(e.probe_cc, e.service, e.feature) for e in events if e.type in (BLOCKING, THROTTLING)]
    ordered = list(dict.fromkeys(key for key in event_groups if key in hourly_by))
    ordered += [key for key in sorted(volume, key=lambda k: -volume[k]) if key not in ordered]
    spans = country_spans(hourly_by.items())
    sections, written = [], []
    collapsed = sorted({e.probe_cc for e in events if e.service == ANY})
    counter = counter or _Counter(None, 0)
    counter.expect(len(ordered[: options.max_groups]) + len(collapsed))
    for cc, service, feature in ordered[: options.max_groups]:
        group_events = [e for e in events if (e.probe_cc, e.service, e.feature) == (cc, service, feature)]
        name = charts.slug(cc, service, feature)
        grain = timeline_grain(spans.get(cc))
        timeline_rows = hourly_by[(cc, service, feature)] if grain == "hour" else daily_by.get((cc, service, feature), [])
        span = spans.get(cc)
        if span is not None and grain == "day":
            span = (span[0].replace(hour=0), span[1].replace(hour=0))
        rendered = [
            charts.render(charts.timeline_spec(timeline_rows, group_events, probe_cc=cc, service=service,
                                               feature=feature, context=context, grain=grain, span=span),
                          chart_dir, f"{name}-timeline", png=options.png),
            charts.render(charts.heatmap_spec(daily_by.get((cc, service, feature), []), probe_cc=cc,
                                              service=service, feature=feature, context=context,
                                              events=group_events, minimum_evidence=minimum_evidence_brief(blocking)),
                          chart_dir, f"{name}-heatmap", png=options.png),
        ]
        networks = sorted({charts.network_label(r["probe_asn"], r["probe_network_name"])
                           for r in hourly_by[(cc, service, feature)]})
        sections.append(_Section(name, cc, service, feature, f"{service} · {feature} in {cc}", networks,
                                 group_events, rendered))
        counter.done(f"charts of {service} {feature} in {cc}")
    for cc in collapsed:
        collapse = [e for e in events if e.probe_cc == cc and e.service == ANY]
        rows = _network_volume(hourly, cc)
        rendered = [charts.render(charts.volume_spec(rows, collapse, probe_cc=cc, context=context, span=spans.get(cc)),
                                  chart_dir, charts.slug(cc, "volume"), png=options.png)]
        networks = sorted({charts.network_label(r["probe_asn"], r["probe_network_name"]) for r in rows})
        sections.append(_Section(charts.slug(cc, "volume"), cc, ANY, ANY, f"measurement volume in {cc}",
                                 networks, collapse, rendered))
        counter.done(f"volume chart of {cc}")
    for section in sections:
        for chart in section.charts:
            written.extend(p for p in (chart.svg_path, chart.png_path, chart.spec_path) if p is not None)
    return sections, written


def country_spans(groups: Iterable[tuple[tuple[str, str, str], list[dict[str, Any]]]]
                  ) -> dict[str, tuple[datetime, datetime]]:
    """Each country's first and last measured hour, from its hourly rows grouped per (cc, service, feature).

    A country's charts span these, not the whole folder's dates."""
    spans: dict[str, tuple[datetime, datetime]] = {}
    for (cc, _, _), rows in groups:
        span = charts.data_span(rows, "hour")
        if span is None:
            continue
        known = spans.get(cc)
        spans[cc] = span if known is None else (min(known[0], span[0]), max(known[1], span[1]))
    return spans


def timeline_grain(span: tuple[datetime, datetime] | None) -> str:
    """Hourly lines are readable for a week of data; beyond that, daily shares (events keep hour precision)."""
    if span is None or span[1] - span[0] <= timedelta(hours=_HOURLY_TIMELINE_MAX):
        return "hour"
    return "day"


def _group_rows(table: pa.Table) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    grouped: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    wanted = [c for c in ("probe_cc", "probe_asn", "probe_network_name", "service", "feature", "hour", "day",
                          "n_measurements", "n_probes", "n_probes_decisive", "n_probes_blocked", "blocked_share",
                          "attempt_blocked_share", "throttled_share", "state", "n_buckets") if c in table.column_names]
    for row in table.select(wanted).to_pylist():
        grouped[(row["probe_cc"], row["service"], row["feature"])].append(row)
    return grouped


def _network_volume(hourly: pa.Table, cc: str) -> list[dict[str, Any]]:
    import duckdb

    connection = duckdb.connect()
    try:
        connection.register("series_grid", hourly.filter(pc.equal(hourly.column("probe_cc"), cc)))
        return connection.sql(network_volume_sql()).to_arrow_table().to_pylist()
    finally:
        connection.close()


def _exports(store: Any, hourly: pa.Table, daily: pa.Table, events: list[Event], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    tables = {"verdicts": store.read("verdicts"), "series_hourly": hourly, "series_daily": daily,
              "events": events_table(events)}
    written = []
    for name, table in tables.items():
        for format in ExportFormat:
            path = out / f"{name}.{format.value}"
            write_export(table, path, format)
            written.append(path)
    import orjson

    path = out / "events.json"
    path.write_bytes(orjson.dumps([e.to_record() for e in events], option=orjson.OPT_INDENT_2))
    written.append(path)
    return written


@dataclass(frozen=True)
class StillWorks:
    """What the circumvention nettest found from one network on one day (its last measurement that day)."""

    probe_cc: str
    probe_asn: int
    probe_network_name: str | None
    day: date
    sentence: str


def what_still_works(store: Any, countries: Sequence[str] = ()) -> list[StillWorks]:
    """Which ways around the censor worked from each network, on the first day measured and on each
    day the answer changed ("from AS4134 on 25 Sep: Shadowsocks and obfs4 worked; OpenVPN and
    WireGuard were blocked by protocol fingerprint"), from the circumvention nettest's verdicts."""
    if "verdicts" not in store.datasets():
        return []
    where = "service = 'circumvention'"
    if countries:
        where += " AND probe_cc IN (" + ", ".join("'" + c.replace("'", "") + "'" for c in countries) + ")"
    rows = store.read("verdicts", where=where).select(
        ["probe_cc", "probe_asn", "probe_network_name", "date", "measurement_start_time", "measurement_uid",
         "feature", "verdict", "method"]).to_pylist()
    latest: dict[tuple[str, int, date], tuple[Any, str]] = {}
    results: dict[str, dict[str, tuple[str, str | None]]] = defaultdict(dict)
    names: dict[tuple[str, int], str | None] = {}
    for row in rows:
        key = (row["probe_cc"], row["probe_asn"], row["date"])
        names[key[:2]] = row["probe_network_name"] or names.get(key[:2])
        results[row["measurement_uid"]][row["feature"]] = (row["verdict"], row["method"])
        if key not in latest or row["measurement_start_time"] > latest[key][0]:
            latest[key] = (row["measurement_start_time"], row["measurement_uid"])
    found: list[StillWorks] = []
    previous: dict[tuple[str, int], str] = {}
    for (cc, asn, day), (_, uid) in sorted(latest.items()):
        sentence = describe_circumvention(results[uid])
        if previous.get((cc, asn)) != sentence:  # each change of the answer, not every day
            found.append(StillWorks(cc, asn, names[(cc, asn)], day, sentence))
            previous[(cc, asn)] = sentence
    return found


def _render_page(hourly: pa.Table, events: list[Event], sections: list[_Section], exports: list[Path],
                 out_dir: Path, options: ReportOptions, context: charts.ChartContext, evidence_floor: str,
                 still_works: Sequence[StillWorks] = ()) -> str:
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("wallwatch.analysis.report", "templates"),
                      autoescape=select_autoescape(["html"]))
    env.filters["when"] = charts.when
    env.filters["iso"] = iso
    # Words a journalist can print beside each method's code (a Method's or a Throttling kind's plain).
    env.filters["plain_method"] = lambda m: qualifier_plain(m) or ""
    hours = hourly.column("hour") if hourly.num_rows else None
    start = pc.min(hours).as_py() if hours is not None else None
    end = pc.max(hours).as_py() if hours is not None else None
    names = {(r["probe_asn"]): r["probe_network_name"]
             for r in hourly.select(["probe_asn", "probe_network_name"]).to_pylist() if r["probe_network_name"]}
    return env.get_template("report.html").render(
        generated=datetime.now(UTC).replace(tzinfo=None, microsecond=0),
        start=start, end=end, events=events, sections=sections, context=context, version=__version__,
        countries=sorted(set(hourly.column("probe_cc").to_pylist())) if hourly.num_rows else [],
        services=sorted({e.service for e in events} | set(hourly.column("service").to_pylist()
                                                          if hourly.num_rows else [])),
        n_series=len({(r["probe_cc"], r["probe_asn"], r["service"], r["feature"]) for r in
                      hourly.select(["probe_cc", "probe_asn", "service", "feature"]).to_pylist()}),
        n_measurements=pc.sum(hourly.column("n_measurements")).as_py() if hourly.num_rows else 0,
        network_names=names, exports=[p.relative_to(out_dir).as_posix() for p in exports],
        any_marker=ANY, options=options, evidence_floor=evidence_floor,
        no_event_mark=charts.NO_EVENT_MARK, still_works=still_works,
    )
