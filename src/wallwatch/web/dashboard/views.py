"""One function per dashboard page: the tables and charts it shows, so a page and its downloads agree.

A `View` holds what a page shows: its tables (downloaded as CSV or Parquet,
the same rows the page lists), its charts (Vega-Lite specs from the report's
`charts` module: one definition of each chart; embedded in the page,
downloaded as PNG through vl-convert) and the template's other values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
import pyarrow as pa

from wallwatch.analysis.events.detector import BlockingParams, minimum_evidence, minimum_evidence_brief
from wallwatch.analysis.events.grouping import ANY, THROTTLING, Event
from wallwatch.analysis.report import charts
from wallwatch.analysis.report.html import timeline_grain
from wallwatch.analysis.store import Store
from wallwatch.vocabulary import service_plain
from wallwatch.web.dashboard import data
from wallwatch.web.dashboard.data import Filters, NoSeries

# An event's annotations: calendar entries from a week before its onset to a week after its end.
_ANNOTATION_MARGIN = timedelta(days=7)


class NotFound(LookupError):
    """The page names something the data folder does not hold (an event id, a measurement uid, ...)."""


@dataclass
class Chart:
    key: str
    caption: str  # what the chart shows, in a sentence (also its text alternative)
    spec: dict[str, Any]

    def spec_json(self) -> str:
        # Safe inside <script type="application/json">: no "</" can close the element early.
        return orjson.dumps(self.spec).decode().replace("</", "<\\/")


@dataclass
class View:
    page: str
    title: str
    filters: Filters
    tables: dict[str, pa.Table] = field(default_factory=dict)
    charts: list[Chart] = field(default_factory=list)
    context: dict[str, Any] = field(default_factory=dict)


def _context(source: str = "wallwatch data folder") -> charts.ChartContext:
    return charts.ChartContext(source=source)


def _require_series(store: Store) -> None:
    if not data.has_series(store):
        raise NoSeries(f"no series in {store.root}")


def _span_for(spans: dict[str, tuple[datetime, datetime]], filters: Filters,
              cc: str) -> tuple[datetime, datetime] | None:
    """The country's data span, narrowed to the filters' since/until."""
    span = spans.get(cc)
    if span is None:
        return None
    start, stop = filters.window()
    first = max(span[0], start) if start else span[0]
    last = min(span[1], stop - timedelta(hours=1)) if stop else span[1]
    return (first, last) if first <= last else None


def _event_window(event: Any, span: tuple[datetime, datetime] | None) -> tuple[datetime, datetime] | None:
    """The dates an event's chart shows: the event with room either side (as long as half the event,
    at least a week), within the country's data. The whole country span squeezed a week-long event
    into a sliver of a chart that began months before it."""
    if span is None:
        return None
    end = event.end or span[1]
    pad = max(_ANNOTATION_MARGIN, (end - event.onset) / 2)
    return max(span[0], event.onset - pad), min(span[1], end + pad)


def _day_span(span: tuple[datetime, datetime] | None) -> tuple[datetime, datetime] | None:
    return None if span is None else (span[0].replace(hour=0), span[1].replace(hour=0))


def overview(store: Store, filters: Filters) -> View:
    """What is blocked (or slowed) now: country x service x feature, with the method, since when and where."""
    _require_series(store)
    logged = data.events(store)
    connection = data.connect(store)
    try:
        rows = data.now_rows(connection, logged, filters)
        spans = data.country_spans(connection)
        choices = data.choices(connection)
    finally:
        connection.close()
    recent = sorted(data.matching_events(logged, Filters(cc=filters.cc, service=filters.service,
                                                         feature=filters.feature)),
                    key=lambda e: e.onset, reverse=True)
    return View("overview", "What is blocked now", filters,
                tables={"now": data.now_table(rows), "events": data.events_table(recent)},
                context={"rows": rows, "spans": spans, "events": recent, "choices": choices,
                         "evidence_floor": minimum_evidence(BlockingParams())})


def country(store: Store, cc: str, filters: Filters) -> View:
    _require_series(store)
    logged = data.events(store)
    connection = data.connect(store)
    try:
        spans = data.country_spans(connection)
        if cc not in spans:
            raise NotFound(f"no measurements from {cc}")
        scoped = Filters(cc=cc, service=filters.service, feature=filters.feature, since=filters.since,
                         until=filters.until)
        rows = data.now_rows(connection, logged, Filters(cc=cc, service=filters.service, feature=filters.feature))
        daily = data.series(connection, "day", scoped)
        networks = data.networks(connection, cc)
        choices = data.choices(connection)
    finally:
        connection.close()
    events = data.matching_events(logged, scoped)
    span = _day_span(_span_for(spans, filters, cc))
    spec = charts.heatmap_spec(
        _rows_in(daily.to_pylist(), "day", span), probe_cc=cc, service="", feature="", context=_context(),
        events=events, row_label=lambda r: f"{r['service']} · {r['feature']} · "
                                           f"{charts.network_label(r['probe_asn'], r['probe_network_name'])}",
        title=f"{cc}: state per service, feature, network and day", minimum_evidence=minimum_evidence_brief())
    return View("country", f"{cc}: what is blocked, where and since when", filters,
                tables={"now": data.now_table(rows), "events": data.events_table(events), "daily": daily},
                charts=[Chart("heatmap", f"State of every service, feature and network in {cc}, day by day.", spec)],
                context={"cc": cc, "rows": rows, "events": events, "networks": networks, "span": spans[cc],
                         "choices": choices, "evidence_floor": minimum_evidence(BlockingParams())})


def network(store: Store, cc: str, asn: int, filters: Filters) -> View:
    _require_series(store)
    logged = data.events(store)
    connection = data.connect(store)
    try:
        spans = data.country_spans(connection)
        known = {n["probe_asn"]: n for n in data.networks(connection, cc)} if cc in spans else {}
        if asn not in known:
            raise NotFound(f"no measurements from AS{asn} in {cc}")
        scoped = Filters(cc=cc, asn=asn, service=filters.service, feature=filters.feature, since=filters.since,
                         until=filters.until)
        rows = data.now_rows(connection, logged, Filters(cc=cc, asn=asn, service=filters.service,
                                                         feature=filters.feature))
        daily = data.series(connection, "day", scoped)
        choices = data.choices(connection)
    finally:
        connection.close()
    info = known[asn]
    label = charts.network_label(asn, info["probe_network_name"])
    events = data.matching_events(logged, scoped, include_volume=True)
    span = _day_span(_span_for(spans, filters, cc))
    spec = charts.heatmap_spec(
        _rows_in(daily.to_pylist(), "day", span), probe_cc=cc, service="", feature="", context=_context(),
        events=events, row_label=lambda r: f"{r['service']} · {r['feature']}",
        title=f"{label} in {cc}: state per service, feature and day", minimum_evidence=minimum_evidence_brief())
    return View("network", f"{label} ({cc})", filters,
                tables={"now": data.now_table(rows), "events": data.events_table(events), "daily": daily},
                charts=[Chart("heatmap", f"State of every service and feature on {label}, day by day.", spec)],
                context={"cc": cc, "asn": asn, "label": label, "info": info, "rows": rows, "events": events,
                         "choices": choices, "evidence_floor": minimum_evidence(BlockingParams())})


def timeline(store: Store, filters: Filters, annotations: Sequence[charts.Annotation]) -> View:
    """The share of probes seeing blocking per network for one (country, service, feature), events
    shaded, calendar annotations drawn; without a full choice, the form to make one."""
    _require_series(store)
    connection = data.connect(store)
    try:
        choices = data.choices(connection)
        spans = data.country_spans(connection)
        if not (filters.cc and filters.service and filters.feature):
            return View("timeline", "Timeline", filters, context={"choices": choices, "incomplete": True})
        span = _span_for(spans, filters, filters.cc)
        grain = timeline_grain(span)
        rows = data.series(connection, grain, filters)
    finally:
        connection.close()
    if not rows.num_rows:
        raise NotFound(f"no series for {filters.service} {filters.feature} in {filters.cc}")
    if grain == "day":
        span = _day_span(span)
    events = [e for e in data.matching_events(data.events(store), filters, include_volume=False)
              if e.feature == filters.feature]
    shown = _rows_in(rows.to_pylist(), grain, span)
    notes = [a for a in annotations if span is None or span[0].date() <= a.date <= span[1].date()]
    spec = charts.timeline_spec(shown, events, probe_cc=filters.cc, service=filters.service,
                                feature=filters.feature, context=_context(), grain=grain, span=span,
                                annotations=notes)
    title = f"{service_plain(filters.service)} · {filters.feature} in {filters.cc}"
    return View("timeline", f"Timeline: {title}", filters,
                tables={"series": _table(shown, rows.schema), "events": data.events_table(events)},
                charts=[Chart("timeline", f"Share of probes seeing blocking of {title}, per network and {grain}; "
                                          "detected events shaded.", spec)],
                context={"choices": choices, "events": events, "annotations": notes, "grain": grain,
                         "rows": shown, "span": span})


def heatmap(store: Store, filters: Filters) -> View:
    _require_series(store)
    connection = data.connect(store)
    try:
        choices = data.choices(connection)
        spans = data.country_spans(connection)
        if not (filters.cc and filters.service and filters.feature):
            return View("heatmap", "Heatmap", filters, context={"choices": choices, "incomplete": True})
        rows = data.series(connection, "day", filters)
    finally:
        connection.close()
    if not rows.num_rows:
        raise NotFound(f"no series for {filters.service} {filters.feature} in {filters.cc}")
    events = [e for e in data.matching_events(data.events(store), filters, include_volume=False)
              if e.feature == filters.feature]
    shown = _rows_in(rows.to_pylist(), "day", _day_span(_span_for(spans, filters, filters.cc)))
    spec = charts.heatmap_spec(shown, probe_cc=filters.cc, service=filters.service, feature=filters.feature,
                               context=_context(), events=events, minimum_evidence=minimum_evidence_brief())
    title = f"{service_plain(filters.service)} · {filters.feature} in {filters.cc}"
    return View("heatmap", f"Heatmap: {title}", filters,
                tables={"daily": _table(shown, rows.schema), "events": data.events_table(events)},
                charts=[Chart("heatmap", f"State of {title} per network and day.", spec)],
                context={"choices": choices, "events": events, "rows": shown,
                         "evidence_floor": minimum_evidence(BlockingParams())})


def event(store: Store, event_id: str, annotations: Sequence[charts.Annotation]) -> View:
    """One event: what, where, since when, how, the measurements behind it, and the dates around it."""
    logged = data.events(store)
    found = next((e for e in logged if e.event_id == event_id), None)
    if found is None:
        raise NotFound(f"no event {event_id}")
    filters = Filters(cc=found.probe_cc, service=None if found.service == ANY else found.service,
                      feature=None if found.feature == ANY else found.feature)
    connection = data.connect(store)
    try:
        evidence, total = data.event_evidence(connection, found)
        spans = data.country_spans(connection) if data.has_series(store) else {}
        span = _event_window(found, spans.get(found.probe_cc))
        grain = timeline_grain(span)
        rows = data.series(connection, grain, filters) if data.has_series(store) and found.service != ANY else None
    finally:
        connection.close()
    window_end = (found.end or (span[1] if span else found.onset)) + _ANNOTATION_MARGIN
    notes = [a for a in annotations if found.onset - _ANNOTATION_MARGIN <= datetime.combine(a.date, datetime.min.time())
             <= window_end]
    chart_list = []
    if rows is not None and rows.num_rows:
        chart_span = _day_span(span) if grain == "day" else span
        in_span = [a for a in annotations if chart_span is None or chart_span[0].date() <= a.date <= chart_span[1].date()]
        spec = charts.timeline_spec(_rows_in(rows.to_pylist(), grain, chart_span), [found], probe_cc=found.probe_cc,
                                    service=found.service, feature=found.feature, context=_context(), grain=grain,
                                    span=chart_span, annotations=in_span)
        chart_list.append(Chart("timeline", "The event shaded on the share of probes seeing blocking, per network.",
                                spec))
    state = "throttled" if found.type == THROTTLING else "blocked"
    what = "volume collapse" if found.service == ANY else f"{service_plain(found.service)} {found.feature} {state}"
    return View("event", f"{what} in {found.probe_cc}", filters,
                tables={"evidence": evidence, "event": data.events_table([found])}, charts=chart_list,
                context={"event": found, "evidence": evidence.to_pylist(), "total": total, "annotations": notes,
                         "limit": data.EVIDENCE_ROWS, "evidence_floor": minimum_evidence(BlockingParams())})


def measurement(store: Store, uid: str) -> View:
    """One measurement: where and when, the verdicts drawn from it, and its raw JSON."""
    from wallwatch.analysis.ingest.pipeline import read_raw

    connection = data.connect(store)
    try:
        row = data.measurement(connection, uid)
        verdicts = data.measurement_verdicts(connection, uid)
    finally:
        connection.close()
    if row is None and not verdicts.num_rows:
        raise NotFound(f"no measurement {uid}")
    evidence: dict[str, list[str]] = {}
    try:
        document = orjson.loads(read_raw(store, uid))
        pretty = orjson.dumps(document, option=orjson.OPT_INDENT_2).decode()
        evidence = _probe_evidence(document)
    except KeyError:
        pretty = None
    cited = data.events_citing(data.events(store), verdicts.to_pylist())
    return View("measurement", f"Measurement {uid}", Filters(),
                tables={"verdicts": verdicts},
                context={"uid": uid, "row": row or verdicts.to_pylist()[0], "verdicts": verdicts.to_pylist(),
                         "raw": pretty, "events": cited, "evidence": evidence})


def _probe_evidence(document: Any) -> dict[str, list[str]]:
    """What wallwatch's probe wrote in words for each feature ("32 of 32 targets worked", "reset
    after the WhatsApp header"): facts beside the verdict's rule id (probe/verdicts.py)."""
    features = ((document.get("test_keys") or {}).get("x_wallwatch") or {}).get("features") \
        if isinstance(document, dict) else None
    if not isinstance(features, dict):
        return {}
    return {name: [str(line) for line in (feature.get("evidence") or [])[:3]]
            for name, feature in features.items() if isinstance(feature, dict)}


def _rows_in(rows: list[dict[str, Any]], grain: str, span: tuple[datetime, datetime] | None) -> list[dict[str, Any]]:
    """Rows whose buckets fall in the span (a gap row reaching into it counts)."""
    if span is None:
        return rows
    step = timedelta(hours=1) if grain == "hour" else timedelta(days=1)
    return [row for row in rows if row[grain] <= span[1] and charts.covered_until(row, grain) + step > span[0]]


def _table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema)
