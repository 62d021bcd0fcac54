"""Throttled is its own state on the dashboard: its glyph, colour and words, the overview, an event page.

A data folder where WhatsApp media in RU was slowed down (verdict `throttled`,
kind `rate`) on both networks from the fourth day to the last measurement,
while text worked: the stored series say `throttled`, the detector opens a
`throttling` event, and the dashboard served for real (uvicorn on loopback)
must show a throttled row with the kind in plain words, never a blocked one.
"""

from __future__ import annotations

import io
import json
import random
import re
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from tests.web.conftest import Served, dashboard_app
from wallwatch.analysis.events.grouping import THROTTLING, add_rule_evidence, detect_events
from wallwatch.analysis.events.lifecycle import record_events
from wallwatch.analysis.report.charts import STATE_COLOURS, STATE_GLYPHS
from wallwatch.analysis.series.build import build_and_store, read_series
from wallwatch.analysis.store import VERDICTS_SCHEMA, Store
from wallwatch.vocabulary import State, Throttling

T0 = datetime(2024, 3, 4)
ONSET_HOUR = 3 * 24 + 9
HOURS = 8 * 24
ASNS = (64500, 64501)


def _row(uid: str, moment: datetime, asn: int, probe: str, feature: str, verdict: str,
         method: str | None) -> dict[str, Any]:
    rule = "throughput.rate_throttled+feature.all_ok" if verdict == "throttled" else "feature.all_ok"
    return {"measurement_uid": uid, "measurement_start_time": moment, "date": moment.date(), "probe_cc": "RU",
            "probe_asn": asn, "probe_network_name": f"ISP {asn}", "probe_key": probe, "test_name": "whatsapp",
            "software_name": "wallwatch", "service": "whatsapp", "feature": feature, "target": None,
            "verdict": verdict, "method": method, "confidence": 0.8, "rule_id": rule,
            "rules_version": "wallwatch-whatsapp-verdicts/3"}


@pytest.fixture(scope="module")
def throttled_dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    rng, rows = random.Random(12), []
    for asn in ASNS:
        for probe in range(3):
            for hour in range(HOURS):
                moment = T0 + timedelta(hours=hour, minutes=rng.randrange(50))
                key = f"{asn}-{probe}"
                slowed = hour >= ONSET_HOUR
                rows.append(_row(f"m-{key}-{hour}", moment, asn, key, "media", "throttled" if slowed else "ok",
                                 Throttling.RATE.value if slowed else None))
                rows.append(_row(f"t-{key}-{hour}", moment, asn, key, "text", "ok", None))
    store = Store(tmp_path_factory.mktemp("throttled") / "data")
    store.write("verdicts", pa.Table.from_pylist(rows, schema=VERDICTS_SCHEMA))
    build_and_store(store)
    connection = store.connect()
    try:
        events = add_rule_evidence(connection, detect_events(read_series(store, "hour")))
    finally:
        connection.close()
    assert [e.type for e in events] == [THROTTLING] and events[0].end is None
    record_events(store, events)
    served = Served(dashboard_app(store.root, calendar=[]))
    try:
        yield served.url
    finally:
        served.stop()


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
        return response.read().decode()


def _row_html(page: str, feature: str) -> str:
    page = re.sub(r"\s+", " ", page)
    return re.search(rf'<tr data-service="whatsapp" data-feature="{feature}"[^>]*>.*?</tr>', page).group(0)


def test_the_overview_says_throttled_with_its_glyph_words_kind_and_event(throttled_dashboard: str) -> None:
    page = _get(throttled_dashboard + "/")
    media = _row_html(page, "media")
    assert 'data-state="throttled"' in media and STATE_GLYPHS[State.THROTTLED] in media
    assert State.THROTTLED.plain in media and STATE_COLOURS[State.THROTTLED] in media
    assert "<code>rate</code>" in media and Throttling.RATE.plain in media
    assert "throttled on 2 of 2 networks" in media and "event-link" in media and "no event" not in media
    assert 'data-state="blocked' not in media and STATE_GLYPHS[State.BLOCKED] not in media  # never a block
    assert 'data-state="ok"' in _row_html(page, "text")
    # The footer's legend names every state, throttled with its words.
    assert f'data-state="throttled"' in page.split("<footer")[1] and State.THROTTLED.plain in page.split("<footer")[1]


def test_the_show_filter_keeps_what_is_slowed_or_what_is_blocked(throttled_dashboard: str) -> None:
    slowed = re.findall(r'data-feature="(\w+)" data-state="(\w+)"', _get(throttled_dashboard + "/?state=throttled"))
    assert slowed == [("media", "throttled")]
    assert "Nothing matches these filters" in _get(throttled_dashboard + "/?state=blocked")
    with urllib.request.urlopen(throttled_dashboard + "/data.csv?state=throttled", timeout=30) as response:
        now = pacsv.read_csv(io.BytesIO(response.read())).to_pylist()
    assert [(r["feature"], r["state"], r["state_plain"], r["method"], r["method_plain"]) for r in now] == [
        ("media", "throttled", State.THROTTLED.plain, "rate", Throttling.RATE.plain)]


def test_the_event_page_is_a_throttling_event_not_a_block(throttled_dashboard: str) -> None:
    overview = _get(throttled_dashboard + "/")
    event_path = re.search(r'href="(/event/[0-9a-f]+)"', overview).group(1)
    page = re.sub(r"\s+", " ", _get(throttled_dashboard + event_path))
    heading = re.search(r"<h1>.*?</h1>", page).group(0)
    assert "whatsapp media throttled in" in heading.replace("WhatsApp", "whatsapp") and "blocked" not in heading
    assert "still throttled at the last measurement" in page and "saw it slowed down" in page
    assert re.search(r"\d+ throttled of \d+ measurements", page)
    assert "throughput.rate_throttled+feature.all_ok" in page


def test_the_timeline_draws_the_throttled_share_as_the_states_glyph(throttled_dashboard: str) -> None:
    page = _get(throttled_dashboard + "/timeline?cc=RU&service=whatsapp&feature=media")
    spec = json.loads(re.search(r'<script type="application/json" class="chart-spec"[^>]*>(.*?)</script>', page,
                                re.S).group(1).replace("<\\/", "</"))
    marks = [layer for layer in spec["layer"] if layer.get("mark", {}).get("type") == "text"
             and layer["encoding"].get("y", {}).get("field") == "throttled_share"]
    assert len(marks) == 1
    values = marks[0]["data"]["values"]
    assert {v["glyph"] for v in values} == {STATE_GLYPHS[State.THROTTLED]} and max(v["throttled_share"] for v in values) == 1
    assert "Share seeing it slowed" in page and "100%" in page
