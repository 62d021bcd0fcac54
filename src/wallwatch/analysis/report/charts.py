"""Charts for the report and the dashboard: Altair (Vega-Lite) specs, one definition of each chart.

The offline report renders them to SVG and PNG with vl-convert; the dashboard
embeds the same specs with its vendored vega-embed (and renders PNG downloads
with vl-convert). Every chart carries what a reader needs when it is cut out
of the page and shared alone (OONI users ask for exactly this:
ooni/explorer#624): country, network names, service and feature in the title,
dates with their year, times labelled UTC, and the data source and wallwatch
version in the footer line.

Nothing is told by colour alone (WCAG 2.1 success criterion 1.4.1, "Use of
Color", [WCAG21]): each state of a cell also has a glyph drawn in it and
named in the legend, events are labelled where they are shaded, and network
lines differ in dash as well as colour.

A country's charts span that country's data (`data_span`): never the dates
of the whole data folder, so an event still on at the country's last
measurement is shaded to that measurement, not to another country's.

Specs are built from plain row dicts (no pandas) with inline data, so a spec
is a self-contained JSON document that tests can inspect.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import altair as alt

from wallwatch import __version__
from wallwatch.analysis.events.grouping import ANY, BLOCKING, COMPREHENSIVE_FROM_SHARE, THROTTLING, Event, iso
from wallwatch.vocabulary import State, service_plain

# Colours for a bucket's state, shared by the heatmap, the legend and the dashboard. Grey for
# "no data" so silence is visible and never mistaken for "ok".
STATE_COLOURS: Mapping[str, str] = {
    State.BLOCKED: "#c0392b",
    State.BLOCKED_ON_AND_OFF: "#f1948a",
    State.PARTIAL: "#e67e22",
    State.THROTTLED: "#f4d03f",  # reachable but slowed: yellow, between blocked's reds and ok's green
    State.DOWN: "#8e44ad",
    State.OK: "#27ae60",
    State.INSUFFICIENT: "#d5d8dc",
}
# ... and a glyph for each, drawn in every cell, so a state is never told by colour alone.
STATE_GLYPHS: Mapping[str, str] = {
    State.BLOCKED: "✕",
    State.BLOCKED_ON_AND_OFF: "≈",
    State.PARTIAL: "◐",
    State.THROTTLED: "◷",  # a clock face: it still works, slowly
    State.DOWN: "↓",
    State.OK: "✓",
    State.INSUFFICIENT: "·",
}
# Glyph colour readable on each fill.
_DARK_INK_STATES = (State.BLOCKED_ON_AND_OFF, State.THROTTLED, State.INSUFFICIENT)
GLYPH_INK: Mapping[str, str] = {state: ("#1c2833" if state in _DARK_INK_STATES else "white")
                                 for state in STATE_COLOURS}
# A throttling event's band: darker than the throttled cells' yellow, so its tag reads on white.
_THROTTLING_BAND = "#b7950b"
# Marks a blocked, partial or throttled day that no detected event covers (too little evidence).
NO_EVENT_MARK = "*"
_BLOCKING_STATES = (State.BLOCKED, State.BLOCKED_ON_AND_OFF, State.PARTIAL)
# The states a detected event should explain, and the type of event that does (the detector runs on
# throttled shares as on blocked ones: analysis/events/grouping.py).
_EVENT_TYPE_OF_STATE: Mapping[str, str] = {**{state: BLOCKING for state in _BLOCKING_STATES},
                                           State.THROTTLED: THROTTLING}

# Dates always carry their year (a chart cut out of the page must say which September), and
# hourly ticks say the hour; Vega's multi-format picks the one that fits the tick.
_DAY_FORMAT = "%d %b %Y"
_TIME_FORMATS = {"year": "%Y", "quarter": "%b %Y", "month": "%b %Y", "week": _DAY_FORMAT, "date": _DAY_FORMAT,
                 "hours": "%d %b %Y %H:%M", "minutes": "%d %b %Y %H:%M", "seconds": "%d %b %Y %H:%M",
                 "milliseconds": "%d %b %Y %H:%M"}
_WIDTH = 760
# DejaVu Sans first: it has every state glyph, so a label is not drawn in a fallback serif font
# (vl-convert falls back per text run); browsers take the first font they have.
FONT = "DejaVu Sans, Liberation Sans, Arial, Helvetica, sans-serif"
# Network names are long ("China Mobile Communications Group Co., Ltd."): never cut a label.
_NO_LIMIT = 0


@dataclass(frozen=True)
class ChartContext:
    """Labels every chart carries."""

    source: str = "wallwatch measurements"
    version: str = __version__

    def footer(self) -> str:
        return f"Source: {self.source} · wallwatch {self.version} · times in UTC"


@dataclass(frozen=True)
class Annotation:
    """A dated note drawn on timelines and listed beside events ("19th Party Congress opens").

    The dashboard's calendar (a YAML file of `date`, `title`, optional `url`) becomes these.
    """

    date: date
    title: str
    url: str | None = None

    @classmethod
    def coerce(cls, item: Any) -> Annotation:
        """An `Annotation` from itself, a mapping or any object with `date`, `title` (and `url`)."""
        if isinstance(item, Annotation):
            return item
        get = item.get if isinstance(item, Mapping) else (lambda key, default=None: getattr(item, key, default))
        moment = get("date")
        if isinstance(moment, str):
            moment = date.fromisoformat(moment[:10])
        if isinstance(moment, datetime):
            moment = moment.date()
        if not isinstance(moment, date) or not get("title"):
            raise ValueError(f"an annotation needs a date and a title, got {item!r}")
        return cls(moment, str(get("title")), get("url") or None)


def coerce_annotations(items: Iterable[Any] | None) -> list[Annotation]:
    return sorted((Annotation.coerce(item) for item in items or ()), key=lambda a: (a.date, a.title))


def network_label(asn: int, name: str | None) -> str:
    return f"AS{asn} {name}" if name else f"AS{asn}"


def state_label(state: str) -> str:
    """'✕ blocked': the glyph and the word, as legends and tables show a state."""
    return f"{STATE_GLYPHS.get(state, '')} {state}".strip()


def _step(grain: str) -> timedelta:
    return timedelta(hours=1) if grain == "hour" else timedelta(days=1)


def data_span(rows: Iterable[Mapping[str, Any]], grain: str) -> tuple[datetime, datetime] | None:
    """First and last bucket that hold measurements: the span a chart of these rows should cover.

    Gap rows and empty buckets before the first or after the last measurement are
    silence, not data: a chart (and an ongoing event's shading) ends at the last
    measurement."""
    buckets = [row[grain] for row in rows if row.get("n_measurements")]
    return (min(buckets), max(buckets)) if buckets else None


def _utc_x(field: str, domain: tuple[datetime, datetime] | None, title: str = "date (UTC)") -> alt.X:
    scale = alt.Scale(type="utc", domain=[iso(domain[0]), iso(domain[1])]) if domain else alt.Scale(type="utc")
    return alt.X(f"{field}:T", scale=scale, title=title,
                 axis=alt.Axis(format=_TIME_FORMATS, formatType="time", labelAngle=0, labelOverlap=True,
                               labelLimit=_NO_LIMIT))


def _title(text: str, context: ChartContext, extra: Sequence[str] = ()) -> alt.TitleParams:
    return alt.TitleParams(text=text, subtitle=[*extra, context.footer()], anchor="start")


def _legend(title: str) -> alt.Legend:
    # Below the plot, labels uncut: a legend on the right takes width from the plot and Vega
    # cuts labels longer than 160 px ("AS9808 China Mobile Communic…").
    return alt.Legend(title=title, orient="bottom", direction="vertical", labelLimit=_NO_LIMIT)


def timeline_spec(rows: Sequence[Mapping[str, Any]], events: Sequence[Event], *, probe_cc: str, service: str,
                  feature: str, context: ChartContext = ChartContext(), grain: str = "hour",
                  span: tuple[datetime, datetime] | None = None,
                  annotations: Sequence[Annotation] = ()) -> dict[str, Any]:
    """Share of probes seeing blocking per network over time, detected events shaded and labelled.

    `rows`: series rows of one (country, service, feature) at `grain` ('hour'
    or 'day') with keys hour|day, probe_asn, probe_network_name,
    n_probes_decisive, blocked_share and optionally n_buckets and
    n_measurements. Buckets without decisive probes are left out, never drawn
    as zero (a short silence holds the last value); a gap row (a folded
    silence of more than two weeks, `n_buckets` > 1) breaks the line.
    `span`: the first and last bucket of the country's data (default: these
    rows' own, `data_span`); the x axis covers it and an ongoing event is
    shaded to its end. `annotations` inside the span are drawn as dated rules.
    """
    step = _step(grain)
    span = span or data_span(rows, grain)
    domain = (span[0], span[1] + step) if span else None
    inside = [row for row in rows if domain is None or domain[0] <= row[grain] < domain[1]]
    points = [
        {"t": iso(row[grain]), "network": network_label(row["probe_asn"], row["probe_network_name"]),
         "blocked_share": row["blocked_share"] if row["n_probes_decisive"] else None,
         "probes": row["n_probes_decisive"]}
        for row in inside if row["n_probes_decisive"] or is_gap(row)
    ]
    bucket = "hour" if grain == "hour" else "day"
    line = alt.Chart(alt.Data(values=points)).mark_line(interpolate="step-after", strokeWidth=1.6).encode(
        x=_utc_x("t", domain),
        y=alt.Y("blocked_share:Q", title="share of probes seeing blocking", scale=alt.Scale(domain=[0, 1]),
                axis=alt.Axis(format="%")),
        color=alt.Color("network:N", legend=_legend("network")),
        strokeDash=alt.StrokeDash("network:N", legend=_legend("network")),
        tooltip=[alt.Tooltip("t:T", title=f"{bucket} (UTC)", format="%Y-%m-%d %H:00"), "network:N",
                 alt.Tooltip("blocked_share:Q", format=".0%"), "probes:Q"],
    )
    shown = [e for e in events if domain is None or (e.onset < domain[1] and (e.end or domain[1]) > domain[0])]
    blocking = [e for e in shown if e.type != THROTTLING]
    throttling = [e for e in shown if e.type == THROTTLING]
    layers = [*_event_bands(blocking, domain, STATE_COLOURS[State.BLOCKED]),
              *_event_bands(throttling, domain, _THROTTLING_BAND), line]
    slowed = [{"t": iso(row[grain]), "network": network_label(row["probe_asn"], row["probe_network_name"]),
               "throttled_share": row["throttled_share"], "glyph": STATE_GLYPHS[State.THROTTLED]}
              for row in inside if row["n_probes_decisive"] and row.get("throttled_share")]
    if slowed:
        # Throttled (reachable, slowed) is its own state, never added to blocking: its share is drawn
        # as the state's glyph per bucket, in the network's colour, so no line dash is read twice.
        layers.append(alt.Chart(alt.Data(values=slowed)).mark_text(fontSize=11).encode(
            x=_utc_x("t", domain), y=alt.Y("throttled_share:Q"), text="glyph:N", color=alt.Color("network:N"),
            tooltip=[alt.Tooltip("t:T", title=f"{bucket} (UTC)", format="%Y-%m-%d %H:00"), "network:N",
                     alt.Tooltip("throttled_share:Q", title="share of probes seeing it slowed", format=".0%")]))
    layers += _annotation_rules(annotations, domain)
    shaded = [f"{len(shown)} detected event(s) shaded and labelled (hour precision)"] if shown else [
        "no detected events"]
    if slowed:
        shaded.append(f"{STATE_GLYPHS[State.THROTTLED]}: share of probes seeing it throttled (reachable but slowed)")
    chart = alt.layer(*layers).properties(
        width=_WIDTH, height=220,
        title=_title(f"{service_plain(service)} · {feature} in {probe_cc}: share of probes seeing blocking, per network and {bucket}",
                     context, shaded),
    )
    return _finish(chart)


def heatmap_spec(rows: Sequence[Mapping[str, Any]], *, probe_cc: str, service: str, feature: str,
                 context: ChartContext = ChartContext(), events: Sequence[Event] = (),
                 row_label: Callable[[Mapping[str, Any]], str] | None = None, title: str | None = None,
                 minimum_evidence: str | None = None) -> dict[str, Any]:
    """Rows (networks, or a network's features with `row_label`) x day, each cell a state in colour
    and glyph; a blocked or partial day that no event in `events` covers is marked `*`.

    `rows` are daily series rows (keys day, probe_asn, probe_network_name, service, feature,
    state, blocked_share, n_measurements, n_probes, and optionally n_buckets,
    attempt_blocked_share). `minimum_evidence` (the detector's, briefly: "an event needs at least 5
    blocked probe-hours on a network") explains the `*` in the subtitle.
    """
    label = row_label or (lambda row: network_label(row["probe_asn"], row["probe_network_name"]))
    cells = []
    for row in rows:
        state = cell_state(row)
        unexplained = state in _EVENT_TYPE_OF_STATE and not covered_by_event(
            row, events, event_type=_EVENT_TYPE_OF_STATE[state])
        cells.append({
            "day": iso(row["day"]), "row": label(row), "state": state,
            "glyph": STATE_GLYPHS[state] + (NO_EVENT_MARK if unexplained else ""),
            "ink": GLYPH_INK[state], "in_event": "no event: too little evidence" if unexplained else (
                "yes" if state in _EVENT_TYPE_OF_STATE else "-"),
            "blocked_share": row["blocked_share"], "attempts_blocked": row.get("attempt_blocked_share"),
            "measurements": row["n_measurements"], "probes": row["n_probes"], "days": row.get("n_buckets") or 1,
        })
    states = list(STATE_COLOURS)
    labels = "{" + ", ".join(f"{json.dumps(s)}: {json.dumps(state_label(s), ensure_ascii=False)}" for s in states) + "}"
    base = alt.Chart(alt.Data(values=cells)).encode(
        x=alt.X("day:O", timeUnit="utcyearmonthdate", title="day (UTC)",
                axis=alt.Axis(format=_DAY_FORMAT, formatType="time", labelAngle=-45, labelLimit=_NO_LIMIT)),
        y=alt.Y("row:N", title=None, axis=alt.Axis(labelLimit=_NO_LIMIT)),
    )
    tooltip = [alt.Tooltip("day:T", title="day (UTC)", format="%Y-%m-%d"), alt.Tooltip("row:N", title="series"),
               "state:N", alt.Tooltip("in_event:N", title="in a detected event"),
               alt.Tooltip("blocked_share:Q", title="share of probes blocked", format=".0%"),
               alt.Tooltip("attempts_blocked:Q", title="attempts blocked in blocked measurements", format=".0%"),
               "measurements:Q", "probes:Q", alt.Tooltip("days:Q", title="days this cell covers")]
    rects = base.mark_rect(stroke="white", strokeWidth=0.5).encode(
        color=alt.Color("state:N", scale=alt.Scale(domain=states, range=[STATE_COLOURS[s] for s in states]),
                        legend=alt.Legend(title="state", orient="bottom", direction="horizontal", columns=3,
                                          labelExpr=f"{labels}[datum.label] || datum.label",
                                          labelLimit=_NO_LIMIT)),
        tooltip=tooltip,
    )
    glyphs = base.mark_text(fontSize=11, fontWeight="bold").encode(
        text="glyph:N", color=alt.Color("ink:N", scale=None), tooltip=tooltip)
    notes = [f"✕ blocked ≥ 50% of probes (≈ on and off: the blocked measurements let over "
             f"{1 - COMPREHENSIVE_FROM_SHARE:.0%} of attempts through), ◐ partial ≥ 20%, "
             f"{STATE_GLYPHS[State.THROTTLED]} throttled (not blocked, slowed for ≥ 50%), · grey = no data; "
             "a silence of more than two weeks is one grey cell"]
    if any(NO_EVENT_MARK in cell["glyph"] for cell in cells):
        notes.append(f"{NO_EVENT_MARK} blocked (or throttled) on a day that no detected event covers: too little "
                     "evidence "
                     f"for the detector{f' ({minimum_evidence})' if minimum_evidence else ''}")
    chart = alt.layer(rects, glyphs).properties(
        width=alt.Step(18), height=alt.Step(20),
        title=_title(title or f"{service_plain(service)} · {feature} in {probe_cc}: state per network and day", context, notes),
    )
    return _finish(chart)


def cell_state(row: Mapping[str, Any]) -> str:
    """The bucket's state, with blocking that let attempts through told apart from comprehensive blocking."""
    share = row.get("attempt_blocked_share")
    if row["state"] == State.BLOCKED and share is not None and share < COMPREHENSIVE_FROM_SHARE:
        return State.BLOCKED_ON_AND_OFF
    return row["state"]


def covered_by_event(row: Mapping[str, Any], events: Sequence[Event], grain: str = "day",
                     event_type: str = BLOCKING) -> bool:
    """Whether a detected event of `event_type` (blocking, or throttling for a throttled bucket) covers
    this bucket of this network (and service/feature, when the row names them): the bucket overlaps
    one of the network's periods in the event."""
    start = row[grain]
    stop = covered_until(row, grain) + _step(grain)
    for event in events:
        if event.type != event_type:
            continue
        if "service" in row and (event.service, event.feature) != (row["service"], row["feature"]) and \
                event.feature != ANY:
            continue
        for network in event.networks:
            if network.probe_asn != row["probe_asn"]:
                continue
            for onset, end in network.periods or ((network.onset, network.end),):
                if onset < stop and (end is None or end > start):
                    return True
    return False


def volume_spec(rows: Sequence[Mapping[str, Any]], events: Sequence[Event], *, probe_cc: str,
                context: ChartContext = ChartContext(),
                span: tuple[datetime, datetime] | None = None) -> dict[str, Any]:
    """Measurements per network and hour, volume-collapse events shaded.

    `rows`: keys hour, probe_asn, probe_network_name, n_measurements and
    optionally n_buckets (one row per network and hour); gap rows break the line.
    """
    span = span or data_span(rows, "hour")
    domain = (span[0], span[1] + _step("hour")) if span else None
    points = [{"t": iso(row["hour"]), "network": network_label(row["probe_asn"], row["probe_network_name"]),
               "measurements": None if is_gap(row) else row["n_measurements"]}
              for row in rows if domain is None or domain[0] <= row["hour"] < domain[1]]
    layers = _event_bands(events, domain, "#34495e")
    layers.append(alt.Chart(alt.Data(values=points)).mark_line(strokeWidth=1.2).encode(
        x=_utc_x("t", domain), y=alt.Y("measurements:Q", title="measurements per hour"),
        color=alt.Color("network:N", legend=_legend("network")),
        strokeDash=alt.StrokeDash("network:N", legend=_legend("network")),
        tooltip=[alt.Tooltip("t:T", title="hour (UTC)", format="%Y-%m-%d %H:00"), "network:N", "measurements:Q"]))
    return _finish(alt.layer(*layers).properties(
        width=_WIDTH, height=160,
        title=_title(f"Measurement volume in {probe_cc}, per network", context,
                     [f"{len(events)} volume collapse(s) shaded and labelled"] if events else []),
    ))


def _finish(chart: alt.TopLevelMixin) -> dict[str, Any]:
    return chart.configure(font=FONT).to_dict()


def _event_bands(events: Sequence[Event], domain: tuple[datetime, datetime] | None, colour: str) -> list[alt.Chart]:
    """Detected events as shaded, labelled bands (hour precision), clipped to the chart's span; an
    ongoing one runs to the end of the span (the country's last data); none when nothing to shade."""
    bands = []
    for event in events:
        start, end = event.onset, event.end or (domain[1] if domain else None)
        if end is None:
            continue
        if domain is not None:
            start, end = max(start, domain[0]), min(end, domain[1])
            if start >= end:
                continue
        what = "volume collapse" if event.service == ANY else "throttled" if event.type == THROTTLING else "blocked"
        bands.append({"start": iso(start), "end": iso(end), "label": _event_label(event),
                      "tag": f"{what}{', ongoing' if event.end is None else ''} (event)"})
    if not bands:
        return []
    data = alt.Data(values=bands)
    rect = alt.Chart(data).mark_rect(opacity=0.15, color=colour).encode(
        x=alt.X("start:T", scale=alt.Scale(type="utc")), x2="end:T", tooltip=["label:N"])
    # The tag sits inside the band's right end: an ongoing event ends at the chart's right edge,
    # and a tag there must not run off the plot.
    tag = alt.Chart(data).mark_text(align="right", baseline="top", dx=-3, dy=3, fontSize=10, color=colour,
                                    fontWeight="bold").encode(x="end:T", y=alt.value(0), text="tag:N",
                                                              tooltip=["label:N"])
    return [rect, tag]


def _annotation_rules(annotations: Sequence[Annotation], domain: tuple[datetime, datetime] | None) -> list[alt.Chart]:
    """Calendar annotations inside the span: a dashed rule at the date and its title beside it, on
    the rule's right in the chart's left half and on its left in the right half, so no title runs
    off the plot."""
    notes = []
    for index, note in enumerate(annotations):
        moment = datetime.combine(note.date, datetime.min.time())
        if domain is not None and not domain[0] <= moment < domain[1]:
            continue
        late = domain is not None and (moment - domain[0]) > (domain[1] - domain[0]) * 0.55
        # Pixels from the top: near the bottom of the plot, staggered so close dates do not overlap.
        notes.append({"t": iso(moment), "title": note.title, "y": 212 - 13 * (index % 3), "late": late})
    if not notes:
        return []
    rule = alt.Chart(alt.Data(values=notes)).mark_rule(color="#1c2833", strokeDash=[2, 3], strokeWidth=1).encode(
        x="t:T", tooltip=[alt.Tooltip("t:T", title="date", format="%d %b %Y"), "title:N"])
    layers = [rule]
    for late in (False, True):
        chosen = [n for n in notes if n["late"] is late]
        if chosen:
            layers.append(alt.Chart(alt.Data(values=chosen)).mark_text(
                align="right" if late else "left", baseline="bottom", dx=-3 if late else 3, fontSize=10,
                color="#1c2833").encode(
                x="t:T", y=alt.Y("y:Q", scale=None), text="title:N"))
    return layers


def is_gap(row: Mapping[str, Any]) -> bool:
    """A gap row: one row standing for a silence of more than two weeks (`series.py`)."""
    return (row.get("n_buckets") or 1) > 1


def covered_until(row: Mapping[str, Any], grain: str) -> datetime:
    """The last bucket a row covers (a gap row covers `n_buckets` of them)."""
    return row[grain] + _step(grain) * ((row.get("n_buckets") or 1) - 1)


def _event_label(event: Event) -> str:
    state = "throttled" if event.type == THROTTLING else "blocked"
    what = "volume collapse" if event.service == ANY else f"{service_plain(event.service)}/{event.feature} {state}"
    end = iso(event.end) or "ongoing"
    return f"{what}: {iso(event.onset)} → {end}, {len(event.networks)} network(s)"


@dataclass(frozen=True)
class RenderedChart:
    name: str
    svg: str
    spec_path: Path
    svg_path: Path
    png_path: Path | None


def to_png(spec: Mapping[str, Any], scale: float = 2) -> bytes:
    """A spec as PNG bytes, rendered offline by vl-convert (the report's files, the dashboard's downloads)."""
    import vl_convert as vlc

    return vlc.vegalite_to_png(json.dumps(spec), scale=scale)


def render(spec: Mapping[str, Any], out_dir: Path, name: str, png: bool = True) -> RenderedChart:
    """Write `<name>.vl.json`, `<name>.svg` and (optionally) `<name>.png` under `out_dir`."""
    import vl_convert as vlc

    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(spec)
    spec_path = out_dir / f"{name}.vl.json"
    spec_path.write_text(text)
    svg = vlc.vegalite_to_svg(text)
    svg_path = out_dir / f"{name}.svg"
    svg_path.write_text(svg)
    png_path = None
    if png:
        png_path = out_dir / f"{name}.png"
        png_path.write_bytes(to_png(spec))
    return RenderedChart(name, svg, spec_path, svg_path, png_path)


def slug(*parts: object) -> str:
    text = "-".join(str(p) for p in parts if p not in (None, ""))
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in text).strip("_").lower() or "chart"


def when(moment: datetime | None) -> str:
    """A reader's date: 'Wed 06 Mar 2024 08:00 UTC'."""
    return "ongoing" if moment is None else moment.strftime("%a %d %b %Y %H:%M UTC")
