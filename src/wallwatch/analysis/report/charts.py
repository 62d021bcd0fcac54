"""Charts for the report: Altair (Vega-Lite) specs, rendered offline to SVG and PNG with vl-convert.

Every chart carries what a reader needs when it is cut out of the page and
shared alone (OONI users ask for exactly this: ooni/explorer#624): country,
network names, service and feature in the title, times labelled UTC, and the
data source and wallwatch version in the footer line.

Specs are built from plain row dicts (no pandas) with inline data, so a spec
is a self-contained JSON document that tests can inspect.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import altair as alt

from wallwatch import __version__
from wallwatch.analysis.events.grouping import ANY, COMPREHENSIVE_FROM_SHARE, Event, iso

# Colours for hourly states, shared by the heatmap and the legend. Grey for
# "no data" so silence is visible and never mistaken for "ok".
STATE_COLOURS: Mapping[str, str] = {
    "blocked": "#c0392b",
    "blocked, on and off": "#f1948a",
    "partial": "#e67e22",
    "throttled": "#f4d03f",  # reachable but slowed: yellow, between blocked's reds and ok's green
    "down": "#8e44ad",
    "ok": "#27ae60",
    "insufficient": "#d5d8dc",
}
_UTC_AXIS = {"format": "%a %d %b", "labelAngle": 0, "title": "date (UTC)"}


@dataclass(frozen=True)
class ChartContext:
    """Labels every chart carries."""

    source: str = "wallwatch measurements"
    version: str = __version__

    def footer(self) -> str:
        return f"Source: {self.source} · wallwatch {self.version} · times in UTC"


def network_label(asn: int, name: str | None) -> str:
    return f"AS{asn} {name}" if name else f"AS{asn}"


def _utc_x(field: str, title: str = "date (UTC)") -> alt.X:
    return alt.X(f"{field}:T", scale=alt.Scale(type="utc"), axis=alt.Axis(**{**_UTC_AXIS, "title": title}))


def _title(text: str, context: ChartContext, extra: Sequence[str] = ()) -> alt.TitleParams:
    return alt.TitleParams(text=text, subtitle=[*extra, context.footer()], anchor="start")


def timeline_spec(rows: Sequence[Mapping[str, Any]], events: Sequence[Event], *, probe_cc: str, service: str,
                  feature: str, context: ChartContext = ChartContext(), grain: str = "hour") -> dict[str, Any]:
    """Share of probes seeing blocking per network over time, detected events shaded.

    `rows`: series rows of one (country, service, feature) at `grain` ('hour'
    or 'day') with keys hour|day, probe_asn, probe_network_name,
    n_probes_decisive, blocked_share and optionally n_buckets. Buckets without
    decisive probes are left out, never drawn as zero (a short silence holds
    the last value); a gap row (a folded silence of more than two weeks,
    `n_buckets` > 1) breaks the line.
    """
    points = [
        {"t": iso(row[grain]), "network": network_label(row["probe_asn"], row["probe_network_name"]),
         "blocked_share": row["blocked_share"] if row["n_probes_decisive"] else None,
         "probes": row["n_probes_decisive"]}
        for row in rows if row["n_probes_decisive"] or is_gap(row)
    ]
    end_of_data = max((covered_until(row, grain) for row in rows), default=None)
    bucket = "hour" if grain == "hour" else "day"
    line = alt.Chart(alt.Data(values=points)).mark_line(interpolate="step-after", strokeWidth=1.4).encode(
        x=_utc_x("t"),
        y=alt.Y("blocked_share:Q", title="share of probes seeing blocking", scale=alt.Scale(domain=[0, 1]),
                axis=alt.Axis(format="%")),
        color=alt.Color("network:N", title="network"),
        tooltip=[alt.Tooltip("t:T", title=f"{bucket} (UTC)", format="%Y-%m-%d %H:00"), "network:N",
                 alt.Tooltip("blocked_share:Q", format=".0%"), "probes:Q"],
    )
    blocking = [e for e in events if e.type != "throttling"]
    throttling = [e for e in events if e.type == "throttling"]
    layers = [*_event_bands(blocking, end_of_data, "#c0392b"), *_event_bands(throttling, end_of_data, "#f4d03f"),
              line]
    slowed = [{"t": iso(row[grain]), "network": network_label(row["probe_asn"], row["probe_network_name"]),
               "throttled_share": row.get("throttled_share") if row["n_probes_decisive"] else None}
              for row in rows if row["n_probes_decisive"] or is_gap(row)]
    if any(point["throttled_share"] for point in slowed):
        # Throttled (reachable, slowed) is its own state: a dashed line, never added to blocking.
        layers.append(alt.Chart(alt.Data(values=slowed)).mark_line(
            interpolate="step-after", strokeWidth=1.4, strokeDash=[4, 3]).encode(
            x=_utc_x("t"), y=alt.Y("throttled_share:Q"), color=alt.Color("network:N"),
            tooltip=[alt.Tooltip("t:T", title=f"{bucket} (UTC)", format="%Y-%m-%d %H:00"), "network:N",
                     alt.Tooltip("throttled_share:Q", title="share of probes seeing it slowed", format=".0%")]))
    shaded = [f"{len(events)} detected event(s) shaded (hour precision)"] if events else ["no detected events"]
    if throttling:
        shaded.append("dashed: share of probes seeing it throttled (reachable but slowed)")
    chart = alt.layer(*layers).properties(
        width=760, height=220,
        title=_title(f"{service} · {feature} in {probe_cc}: share of probes seeing blocking, per network and {bucket}",
                     context, shaded),
    )
    return chart.to_dict()


def heatmap_spec(rows: Sequence[Mapping[str, Any]], *, probe_cc: str, service: str, feature: str,
                 context: ChartContext = ChartContext()) -> dict[str, Any]:
    """Network x day, coloured by the day's state; `rows` are daily series rows of one group."""
    cells = [
        {"day": iso(row["day"]), "network": network_label(row["probe_asn"], row["probe_network_name"]),
         "state": _cell_state(row), "blocked_share": row["blocked_share"],
         "attempts_blocked": row.get("attempt_blocked_share"), "measurements": row["n_measurements"],
         "probes": row["n_probes"], "days": row.get("n_buckets") or 1}
        for row in rows
    ]
    states = list(STATE_COLOURS)
    chart = alt.Chart(alt.Data(values=cells)).mark_rect(stroke="white", strokeWidth=0.5).encode(
        x=alt.X("day:O", timeUnit="utcyearmonthdate", title="day (UTC)", axis=alt.Axis(format="%d %b", labelAngle=-45)),
        y=alt.Y("network:N", title=None),
        color=alt.Color("state:N", scale=alt.Scale(domain=states, range=[STATE_COLOURS[s] for s in states]),
                        title="state"),
        tooltip=[alt.Tooltip("day:T", title="day (UTC)", format="%Y-%m-%d"), "network:N", "state:N",
                 alt.Tooltip("blocked_share:Q", title="share of probes blocked", format=".0%"),
                 alt.Tooltip("attempts_blocked:Q", title="attempts blocked in blocked measurements", format=".0%"),
                 "measurements:Q", "probes:Q", alt.Tooltip("days:Q", title="days this cell covers")],
    ).properties(
        width=760, height=alt.Step(18),
        title=_title(f"{service} · {feature} in {probe_cc}: state per network and day", context,
                     ["blocked ≥ 50% of probes (on and off: the blocked measurements let over "
                      f"{1 - COMPREHENSIVE_FROM_SHARE:.0%} of attempts through), partial ≥ 20%, grey = no data; "
                      "a silence of more than two weeks is one grey cell"]),
    )
    return chart.to_dict()


def _cell_state(row: Mapping[str, Any]) -> str:
    """The day's state, with blocking that let attempts through told apart from comprehensive blocking."""
    share = row.get("attempt_blocked_share")
    if row["state"] == "blocked" and share is not None and share < COMPREHENSIVE_FROM_SHARE:
        return "blocked, on and off"
    return row["state"]


def volume_spec(rows: Sequence[Mapping[str, Any]], events: Sequence[Event], *, probe_cc: str,
                context: ChartContext = ChartContext()) -> dict[str, Any]:
    """Measurements per network and hour, volume-collapse events shaded.

    `rows`: keys hour, probe_asn, probe_network_name, n_measurements and
    optionally n_buckets (one row per network and hour); gap rows break the line.
    """
    points = [{"t": iso(row["hour"]), "network": network_label(row["probe_asn"], row["probe_network_name"]),
               "measurements": None if is_gap(row) else row["n_measurements"]} for row in rows]
    end_of_data = max((covered_until(row, "hour") for row in rows), default=None)
    layers = _event_bands(events, end_of_data, "#34495e")
    layers.append(alt.Chart(alt.Data(values=points)).mark_line(strokeWidth=1).encode(
        x=_utc_x("t"), y=alt.Y("measurements:Q", title="measurements per hour"),
        color=alt.Color("network:N", title="network"),
        tooltip=[alt.Tooltip("t:T", title="hour (UTC)", format="%Y-%m-%d %H:00"), "network:N", "measurements:Q"]))
    return alt.layer(*layers).properties(
        width=760, height=160,
        title=_title(f"Measurement volume in {probe_cc}, per network", context,
                     [f"{len(events)} volume collapse(s) shaded"] if events else []),
    ).to_dict()


def _event_bands(events: Sequence[Event], end_of_data: datetime | None, colour: str) -> list[alt.Chart]:
    """Detected events as shaded bands (hour precision), an ongoing one up to the end of the data;
    none when there is nothing to shade."""
    bands = [{"start": iso(e.onset), "end": iso(e.end or end_of_data), "label": _event_label(e)}
             for e in events if e.end or end_of_data]
    if not bands:
        return []
    return [alt.Chart(alt.Data(values=bands)).mark_rect(opacity=0.15, color=colour).encode(
        x=alt.X("start:T", scale=alt.Scale(type="utc")), x2="end:T", tooltip=["label:N"])]


def is_gap(row: Mapping[str, Any]) -> bool:
    """A gap row: one row standing for a silence of more than two weeks (`series.py`)."""
    return (row.get("n_buckets") or 1) > 1


def covered_until(row: Mapping[str, Any], grain: str) -> datetime:
    """The last bucket a row covers (a gap row covers `n_buckets` of them)."""
    step = timedelta(hours=1) if grain == "hour" else timedelta(days=1)
    return row[grain] + step * ((row.get("n_buckets") or 1) - 1)


def _event_label(event: Event) -> str:
    state = "throttled" if event.type == "throttling" else "blocked"
    what = "volume collapse" if event.service == ANY else f"{event.service}/{event.feature} {state}"
    end = iso(event.end) or "ongoing"
    return f"{what}: {iso(event.onset)} → {end}, {len(event.networks)} network(s)"


@dataclass(frozen=True)
class RenderedChart:
    name: str
    svg: str
    spec_path: Path
    svg_path: Path
    png_path: Path | None


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
        png_path.write_bytes(vlc.vegalite_to_png(text, scale=2))
    return RenderedChart(name, svg, spec_path, svg_path, png_path)


def slug(*parts: object) -> str:
    text = "-".join(str(p) for p in parts if p not in (None, ""))
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in text).strip("_").lower() or "chart"


def when(moment: datetime | None) -> str:
    """A reader's date: 'Wed 06 Mar 2024 08:00 UTC'."""
    return "ongoing" if moment is None else moment.strftime("%a %d %b %Y %H:%M UTC")
