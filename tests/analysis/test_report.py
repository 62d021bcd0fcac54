"""The report (real Altair specs rendered by vl-convert) and the series/events/report CLI."""

from __future__ import annotations

import json
import random
import re
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from wallwatch import __version__
from wallwatch.analysis.report.exports import ExportFormat, write_export
from wallwatch.analysis.report.html import ReportOptions, build_report
from wallwatch.analysis.store import VERDICTS_SCHEMA, Store
from wallwatch.cli import app

T0 = datetime(2024, 3, 4)
JOINS = {64500: 3 * 24 + 9, 64501: 6 * 24 + 8}  # Thursday 09:00, Sunday 08:00


def _verdicts(hours: int = 12 * 24) -> pa.Table:
    rng = random.Random(4)
    rows = []
    for asn in (64500, 64501, 64502):
        for probe in range(3):
            for hour in range(hours):
                if asn == 64502 and 150 <= hour < 180:  # AS64502 goes silent for 30 hours
                    continue
                moment = T0 + timedelta(hours=hour, minutes=rng.randrange(60))
                blocked = JOINS.get(asn, 10**6) <= hour < 10 * 24
                for feature in ("text", "media"):
                    is_blocked = blocked and feature == "text"
                    rows.append({
                        "measurement_uid": f"u-{asn}-{probe}-{hour}", "measurement_start_time": moment,
                        "date": moment.date(), "probe_cc": "XA", "probe_asn": asn,
                        "probe_network_name": {64500: "Alpha Telecom", 64501: "Beta Mobile"}.get(asn),
                        "probe_key": f"{asn}-{probe}", "test_name": "whatsapp", "software_name": "wallwatch",
                        "service": "whatsapp", "feature": feature, "target": None,
                        "verdict": "blocked" if is_blocked else "ok", "method": "dns" if is_blocked else None,
                        "confidence": 0.9, "rule_id": "wa.dns-nxdomain" if is_blocked else "wa.ok",
                        "rules_version": "1",
                    })
    return pa.Table.from_pylist(rows, schema=VERDICTS_SCHEMA)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    result = Store(tmp_path_factory.mktemp("report") / "data")
    result.write("verdicts", _verdicts())
    return result


@pytest.fixture(scope="module")
def report(store: Store, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("out")
    return out, build_report(store, out, ReportOptions(max_groups=2, source="synthetic test data"))


def test_report_page_lists_events_with_networks_and_evidence(report) -> None:
    out, result = report
    kinds = sorted((e.type, e.service, e.feature) for e in result.events)
    assert kinds == [("blocking", "whatsapp", "text"), ("volume_collapse", "*", "*")]
    page = re.sub(r"\s+", " ", result.index.read_text())
    assert "AS64500 Alpha Telecom: from Thu 07 Mar 2024 09:00 UTC to Thu 14 Mar 2024 00:00 UTC" in page
    assert "AS64501 Beta Mobile: from Sun 10 Mar 2024 08:00 UTC" in page
    assert "wa.dns-nxdomain" in page and "<code>dns</code> (" in page
    assert re.search(r"<code>dns</code> \(\d+\): <span class=\"note\">the name was answered with a false address", page)
    assert f"wallwatch {__version__}" in page and "synthetic test data" in page
    # Offline: no script, style or image from anywhere else.
    assert not re.search(r"""(src|href)=["']https?://""", page)
    assert page.count("<svg") == 5  # timeline + heatmap for two groups, and the volume chart


def test_charts_are_rendered_and_labelled(report) -> None:
    out, result = report
    pngs = [p for p in result.charts if p.suffix == ".png"]
    assert len(pngs) == 5 and all(p.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)
    spec = json.loads((out / "charts" / "xa-whatsapp-text-timeline.vl.json").read_text())
    title = spec["title"]
    assert "WhatsApp · text in XA" in title["text"]  # the service by the name a reader knows
    assert any("times in UTC" in line and __version__ in line for line in title["subtitle"])
    bands = next(layer for layer in spec["layer"] if layer["mark"]["type"] == "rect")
    (band,) = bands["data"]["values"]
    assert band["start"] == "2024-03-07T09:00:00Z" and band["end"] == "2024-03-14T00:00:00Z"
    svg = (out / "charts" / "xa-whatsapp-text-heatmap.svg").read_text()
    assert "AS64500 Alpha Telecom" in svg and "insufficient" in svg


def test_exports_are_readable(report) -> None:
    out, result = report
    names = {p.name for p in result.exports}
    assert {"verdicts.csv", "verdicts.parquet", "series_hourly.parquet", "series_daily.csv", "events.json"} <= names
    hourly = pq.read_table(out / "exports" / "series_hourly.parquet")
    assert hourly.num_rows == 3 * 2 * 12 * 24
    assert pacsv.read_csv(out / "exports" / "events.csv").num_rows == 2
    assert result.log_entries == 4  # two events opened, two closed


def test_an_export_writes_lists_as_words_in_csv(tmp_path: Path) -> None:
    table = pa.table({"hostname": ["a.example", "b.example"],
                      "dns_answers": pa.array([["198.18.0.1", "198.18.0.2"], []], pa.list_(pa.string()))})
    write_export(table, tmp_path / "o" / "answers.csv", ExportFormat.csv)
    assert pacsv.read_csv(tmp_path / "o" / "answers.csv").column("dns_answers").to_pylist() == [
        "198.18.0.1 198.18.0.2", ""]
    write_export(table, tmp_path / "answers.parquet", ExportFormat.parquet)
    assert pq.read_table(tmp_path / "answers.parquet").equals(table)
    with pytest.raises(ValueError):
        write_export(table, tmp_path / "answers.xlsx", "xlsx")  # type: ignore[arg-type]


def test_cli_series_events_report_and_export(store: Store, tmp_path: Path) -> None:
    runner = CliRunner(env={"COLUMNS": "220"})
    data = ["--data", str(store.root)]
    result = runner.invoke(app, ["series", *data, "--country", "xa"])
    assert result.exit_code == 0, result.output
    assert "6 series" in result.output and "Alpha Telecom" in result.output
    result = runner.invoke(app, ["events", *data, "--no-rebuild"])
    assert result.exit_code == 0, result.output
    assert "blocking" in result.output and "volume_collapse" in result.output
    assert "0 new lifecycle entries" in result.output  # the report fixture already logged them
    result = runner.invoke(app, ["events", *data, "--json", "--type", "blocking"])
    (line,) = result.stdout.strip().splitlines()
    assert [n["probe_asn"] for n in json.loads(line)["networks"]] == [64500, 64501]
    result = runner.invoke(app, ["export", "hourly", "--out", str(tmp_path / "x"), *data])
    assert result.exit_code == 0 and pacsv.read_csv(tmp_path / "x" / "hourly.csv").num_rows == 3 * 2 * 12 * 24
    result = runner.invoke(app, ["report", *data, "--out", str(tmp_path / "r"), "--no-png", "--no-exports",
                                 "--max-charts", "1"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r" / "index.html").exists() and not list((tmp_path / "r").rglob("*.png"))


def test_cli_errors_are_clear(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["events", "--data", str(tmp_path / "missing")])
    assert result.exit_code != 0 and "no data directory" in result.output


def _line_values(spec: dict) -> list[dict]:
    line = next(layer for layer in spec["layer"] if layer["mark"]["type"] == "line")
    return (line.get("data") or spec["data"])["values"]


def test_gap_rows_break_the_lines_and_show_as_one_cell() -> None:
    import vl_convert as vlc

    from wallwatch.analysis.report import charts

    def row(hour: int, decisive: int, share: float | None, n_buckets: int = 1) -> dict:
        return {"hour": T0 + timedelta(hours=hour), "probe_asn": 64500, "probe_network_name": "Alpha Telecom",
                "n_probes_decisive": decisive, "blocked_share": share, "n_buckets": n_buckets,
                "n_measurements": decisive}

    rows = [row(0, 2, 0.0), row(1, 2, 1.0), row(2, 0, None), row(3, 0, None, 60 * 24), row(60 * 24 + 3, 2, 1.0),
            row(60 * 24 + 4, 2, 0.5)]
    spec = charts.timeline_spec(rows, [], probe_cc="XA", service="whatsapp", feature="text")
    points = _line_values(spec)
    # The empty hour is left out (the line holds), the gap row is a null that breaks the line.
    assert [p["blocked_share"] for p in points] == [0.0, 1.0, None, 1.0, 0.5]
    svg = vlc.vegalite_to_svg(json.dumps(spec))
    (path,) = re.findall(r'aria-roledescription="line mark"[^>]*d="([^"]+)"', svg) or re.findall(
        r'<path[^>]*d="(M[^"]+)"[^>]*aria-roledescription="line mark"', svg)
    assert path.count("M") == 2
    assert charts.covered_until(rows[3], "hour") == T0 + timedelta(hours=60 * 24 + 2)
    volume = charts.volume_spec(rows, [], probe_cc="XA")
    values = _line_values(volume)
    assert [v["measurements"] for v in values] == [2, 2, 0, None, 2, 2]
    daily = [{"day": T0 + timedelta(days=d), "probe_asn": 64500, "probe_network_name": None, "state": state,
              "blocked_share": None, "n_measurements": 0, "n_probes": 0, "n_buckets": n}
             for d, state, n in ((0, "ok", 1), (1, "insufficient", 58), (59, "blocked", 1))]
    cells = charts.heatmap_spec(daily, probe_cc="XA", service="whatsapp", feature="text")["data"]["values"]
    assert [(c["state"], c["days"]) for c in cells] == [("ok", 1), ("insufficient", 58), ("blocked", 1)]


def test_heatmap_tells_on_and_off_days_from_comprehensive_ones() -> None:
    from wallwatch.analysis.report.charts import heatmap_spec

    def day(n: int, state: str, share: float | None) -> dict:
        return {"day": datetime(2017, 9, 19 + n), "probe_asn": 4134, "probe_network_name": "CHINANET",
                "state": state, "blocked_share": 1.0 if state == "blocked" else 0.0, "n_measurements": 1,
                "n_probes": 1, "n_buckets": 1, "attempt_blocked_share": share}

    spec = heatmap_spec([day(0, "ok", None), day(1, "blocked", 0.47), day(2, "blocked", 0.95),
                         day(3, "blocked", None)], probe_cc="CN", service="whatsapp", feature="text")
    assert [cell["state"] for cell in spec["data"]["values"]] == ["ok", "blocked, on and off", "blocked", "blocked"]


# -- the report's known faults (issue 11, item 7), on the 2017 replay -----------------------------

MOBILE = "AS9808 China Mobile Communications Group Co., Ltd."


@pytest.fixture(scope="module")
def replay_report(replay_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """The report of the 2017 replay, with one measurement from another country in 2025 in the folder."""
    import shutil

    root = tmp_path_factory.mktemp("replay-report") / "data"
    shutil.copytree(replay_data, root)
    store = Store(root)
    moment = datetime(2025, 5, 1, 12)
    store.write("verdicts", pa.Table.from_pylist([{
        "measurement_uid": "elsewhere-2025", "measurement_start_time": moment, "date": moment.date(),
        "probe_cc": "XB", "probe_asn": 64600, "probe_network_name": "Elsewhere", "probe_key": "x",
        "test_name": "whatsapp", "software_name": "wallwatch", "service": "whatsapp", "feature": "text",
        "target": None, "verdict": "ok", "method": None, "confidence": 1.0, "rule_id": "r.ok",
        "rules_version": "1", "blocked_share": None}], schema=VERDICTS_SCHEMA), mode="append")
    out = tmp_path_factory.mktemp("replay-out")
    result = build_report(store, out, ReportOptions(png=False, exports=False, max_groups=7))
    return out, result


def _spec(out: Path, name: str) -> dict:
    return json.loads((out / "charts" / f"{name}.vl.json").read_text())


def _cells(spec: dict) -> list[dict]:
    return (spec.get("data") or spec["layer"][0]["data"])["values"]


def _layers(spec: dict) -> list[dict]:
    return spec.get("layer", [spec])


def test_date_axes_carry_the_year(replay_report) -> None:
    out, _ = replay_report
    for name in ("cn-whatsapp-text-timeline", "cn-whatsapp-text-heatmap"):
        spec = _spec(out, name)
        formats = [layer["encoding"]["x"]["axis"]["format"] for layer in _layers(spec)
                   if "axis" in layer.get("encoding", {}).get("x", {})]
        formats += [spec["encoding"]["x"]["axis"]["format"]] if "encoding" in spec else []
        assert formats, name
        for fmt in formats:
            days = [fmt] if isinstance(fmt, str) else [fmt[unit] for unit in ("date", "week", "hours")]
            assert all("%Y" in day for day in days), (name, fmt)
        svg = (out / "charts" / f"{name}.svg").read_text()
        assert re.search(r">\d\d (Jul|Aug|Sep) 2017<", svg), name


def test_a_countrys_charts_and_ongoing_shading_end_with_its_own_data(replay_report) -> None:
    """CN's data ends on 26 September 2017; another country measured in May 2025. The ongoing
    events are shaded to the end of CN's data, and the axis ends there, not in 2025."""
    out, _ = replay_report
    spec = _spec(out, "cn-whatsapp-text-timeline")
    bands = [layer for layer in spec["layer"] if layer["mark"]["type"] == "rect"][0]["data"]["values"]
    assert [(b["start"][:10], b["end"][:10]) for b in bands] == [("2017-09-20", "2017-09-27")]
    line = next(layer for layer in spec["layer"] if layer["mark"]["type"] == "line")
    assert line["encoding"]["x"]["scale"]["domain"] == ["2017-07-01T00:00:00Z", "2017-09-27T00:00:00Z"]


def test_a_timeline_ends_at_the_last_measurement_even_over_a_trailing_silence() -> None:
    """Series stored before grids were per country end in a trailing gap row that runs to another
    country's last day: the chart and an ongoing event's shading still end at this data's last bucket."""
    from wallwatch.analysis.events.grouping import Event, NetworkSpan
    from wallwatch.analysis.report import charts

    def row(day: int, n: int, share: float | None, n_buckets: int = 1) -> dict:
        return {"day": datetime(2017, 9, 18) + timedelta(days=day), "probe_asn": 4134, "probe_network_name": "X",
                "n_probes_decisive": n, "blocked_share": share, "n_measurements": n, "n_buckets": n_buckets}

    rows = [row(0, 1, 0.0), row(1, 1, 0.0), row(2, 1, 1.0), row(3, 1, 1.0), row(4, 0, None, 2800)]
    onset = datetime(2017, 9, 20)
    network = NetworkSpan(4134, "X", onset, None, onset, 1.0, ((onset, None),))
    event = Event("e", "blocking", "CN", "whatsapp", "text", onset, None, onset, (network,), {"protocol_dpi": 2},
                  1.0, {})
    spec = charts.timeline_spec(rows, [event], probe_cc="CN", service="whatsapp", feature="text", grain="day")
    (band,) = next(layer for layer in spec["layer"] if layer["mark"]["type"] == "rect")["data"]["values"]
    assert band["end"] == "2017-09-22T00:00:00Z"


def test_labels_and_legends_are_not_cut_off(replay_report) -> None:
    out, _ = replay_report
    for name in ("cn-whatsapp-text-timeline", "cn-whatsapp-text-heatmap"):
        svg = (out / "charts" / f"{name}.svg").read_text()
        assert "…" not in svg, name
        assert MOBILE in svg.replace("&amp;", "&"), name


def test_heatmap_states_are_told_by_glyph_and_word_not_colour_alone(replay_report) -> None:
    from wallwatch.analysis.report.charts import STATE_GLYPHS
    from wallwatch.vocabulary import State

    out, _ = replay_report
    spec = _spec(out, "cn-whatsapp-text-heatmap")
    # One glyph per state, all different, drawn in every cell and named in the legend.
    assert len(set(STATE_GLYPHS.values())) == len(STATE_GLYPHS) == len(State)
    text = next(layer for layer in spec["layer"] if layer["mark"]["type"] == "text")
    assert text["encoding"]["text"]["field"] == "glyph"
    cells = _cells(spec)
    assert all(cell["glyph"].startswith(STATE_GLYPHS[cell["state"]]) for cell in cells)
    legend = spec["layer"][0]["encoding"]["color"]["legend"]["labelExpr"]
    assert all(f"{STATE_GLYPHS[s]} {s.value}" in legend for s in State)
    svg = (out / "charts" / "cn-whatsapp-text-heatmap.svg").read_text()
    assert svg.count(">✕") >= 6 and svg.count(">≈") >= 6 and svg.count(">✓") >= 6


def test_blocked_days_no_event_covers_are_marked_and_the_minimum_evidence_is_stated(replay_report) -> None:
    """China Mobile's text was blocked from 23 September, four daily samples before the data ends:
    too little for the detector, so no event covers those days: they are marked, and the page says
    what the detector needs. Days an event covers are not marked."""
    from wallwatch.analysis.events.detector import minimum_evidence

    out, result = replay_report
    cells = _cells(_spec(out, "cn-whatsapp-text-heatmap"))
    marked = {(c["row"], c["day"][:10]) for c in cells if c["glyph"].endswith("*")}
    assert marked == {(MOBILE, f"2017-09-{d}") for d in (23, 24, 25, 26)}
    media = _cells(_spec(out, "cn-whatsapp-media-heatmap"))
    # July's two blocked days of media on every ISP: no event either (the full replay has one).
    assert {c["day"][:10] for c in media if c["glyph"].endswith("*")} == {"2017-07-18", "2017-07-19"}
    assert all(not c["glyph"].endswith("*") for c in media if c["day"] >= "2017-09-20")
    page = re.sub(r"\s+", " ", result.index.read_text())
    assert minimum_evidence() in page and "at least 5 blocked probe-hours" in page
    subtitle = " ".join(_spec(out, "cn-whatsapp-text-heatmap")["title"]["subtitle"])
    assert "no detected event covers" in subtitle and "at least 5 blocked probe-hours" in subtitle
