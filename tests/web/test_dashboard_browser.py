"""The dashboard in a real headless Chromium, over the 2017 replay (78 real lab measurements).

What a journalist needs to see (issue 11, "What must be shown"): what is blocked
now, a country, a timeline with an event shaded, an event's evidence down to a
measurement's raw JSON, a filter kept in the URL, a download. Each test saves a
full-page screenshot under its own temp dir. The charts are drawn by the
vendored vega-embed in the browser; nothing is fetched from outside loopback
(the `page` fixture refuses and reports any such request).
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from tests.web.conftest import screenshot
from wallwatch.vocabulary import Method, State
from wallwatch.web.dashboard import vendor_missing

pytestmark = pytest.mark.skipif(bool(vendor_missing()), reason="the dashboard's chart JavaScript is not installed "
                                "(scripts/install.sh runs npm ci): " + ", ".join(vendor_missing()))

TEXT_EVENT_NETWORKS = ("AS4134 CHINANET-BACKBONE", "AS4837 CHINA UNICOM China169 Backbone")


def _open(page: Any, url: str, charts: int = 0) -> None:
    page.goto(url)
    if charts:
        page.wait_for_function(f"document.querySelectorAll('.chart[data-rendered=\"true\"] svg').length >= {charts}",
                               timeout=15_000)


def test_overview_says_what_is_blocked_now_in_words(page: Any, dashboard: str, tmp_path: Path) -> None:
    _open(page, dashboard + "/")
    text_row = page.locator('table.now[data-cc="CN"] tr[data-service="whatsapp"][data-feature="text"]')
    row = text_row.inner_text()
    # The state in a glyph and a word (never colour alone), the method in code and in plain words,
    # since when, and where.
    assert "✕ blocked" in row and State.BLOCKED.plain in row
    assert "protocol_dpi" in row and Method.PROTOCOL_DPI.plain in row
    assert "Wed 20 Sep 2017 12:00 UTC" in row
    assert all(name in row for name in TEXT_EVENT_NETWORKS)
    # China Mobile was blocked at its last measurement too, with too little evidence for an event.
    assert re.search(r"AS9808 China Mobile Communications Group Co\., Ltd\.\s*\* no event", row)
    media = page.locator('table.now[data-cc="CN"] tr[data-feature="media"]').inner_text()
    assert "tls_sni" in media and Method.TLS_SNI.plain in media
    web = page.locator('table.now[data-cc="CN"] tr[data-feature="web"]').inner_text()
    assert "✓ ok" in web and State.OK.plain in web
    assert "at least 5 blocked probe-hours" in page.locator("#minimum-evidence").inner_text()
    screenshot(page, tmp_path, "overview")


def test_country_page_lists_networks_events_and_draws_the_heatmap(page: Any, dashboard: str, tmp_path: Path) -> None:
    _open(page, dashboard + "/", 0)
    page.click('section#country-CN h2 a')
    page.wait_for_url(re.compile(r"/country/CN"))
    page.wait_for_selector('.chart[data-rendered="true"] svg', timeout=15_000)
    assert page.locator("h1").inner_text().startswith("CN:")
    assert page.locator("table.events tbody tr").count() == 4
    assert page.locator("table.networks tbody tr").count() == 3
    svg = page.locator("#chart-heatmap svg").inner_html()
    # Drawn in the browser: the rows name service, feature and network in full, cells carry glyphs.
    assert "whatsapp · text · AS9808 China Mobile Communications Group Co., Ltd." in svg
    assert "✕*" in svg and "≈" in svg and "2017" in svg
    screenshot(page, tmp_path, "country")


def test_timeline_shades_the_event_and_draws_the_calendar(page: Any, dashboard: str, tmp_path: Path) -> None:
    _open(page, dashboard + "/timeline?cc=CN&service=whatsapp&feature=text", charts=1)
    svg = page.locator("#chart-timeline svg")
    html = svg.inner_html()
    assert "blocked, ongoing (event)" in html  # the shaded band is labelled
    assert svg.locator("g.mark-rect path").count() >= 1  # ... and drawn
    # Calendar annotations inside the data's span are drawn; the one after it (the Congress) is not.
    assert "WhatsApp largely blocked, text included (New York Times)" in html
    assert "Photos, video and voice messages fail" in html and "Party Congress" not in html
    assert re.search(r">\d\d (Jul|Aug|Sep) 2017<", html), "dates carry their year"
    events = page.locator("table.events").inner_text()
    assert "still blocked at the last measurement" in events and "on and off" in events
    calendar = page.locator("ul.annotations").inner_text()
    assert "Mon 25 Sep 2017" in calendar
    screenshot(page, tmp_path, "timeline")


def test_event_page_leads_to_a_measurement_and_its_raw_json(page: Any, dashboard: str, tmp_path: Path) -> None:
    _open(page, dashboard + "/")
    page.click('table.now[data-cc="CN"] tr[data-feature="text"] a.event-link')
    page.wait_for_url(re.compile(r"/event/[0-9a-f]{16}$"))
    page.wait_for_selector('.chart[data-rendered="true"] svg', timeout=15_000)
    assert "WhatsApp text blocked in CN" in page.locator("h1").inner_text()
    networks = page.locator("table.networks").inner_text()
    assert "on and off" in networks and "comprehensive from Mon 25 Sep 2017" in networks
    evidence = page.locator("table.evidence tbody tr")
    assert evidence.count() >= 8
    assert page.locator('table.evidence tr[data-verdict="blocked"]').count() >= 8
    screenshot(page, tmp_path, "event")
    # Follow the first blocked measurement.
    link = page.locator('table.evidence tr[data-verdict="blocked"] a.measurement-link').first
    uid = link.inner_text().strip()
    link.click()
    page.wait_for_url(re.compile(re.escape(f"/measurement/{uid}")))
    verdict = page.locator('table.verdicts tr[data-feature="text"]').inner_text()
    assert "✕ blocked" in verdict and "protocol_dpi" in verdict and Method.PROTOCOL_DPI.plain in verdict
    assert "WhatsApp text blocked in CN from Wed 20 Sep 2017" in [a.inner_text() for a in page.locator("a.event-link").all()]
    # Beside the rule's id, what the probe saw, in its own words.
    assert "targets" in page.locator('table.verdicts tr[data-feature="text"] td.evidence-words').inner_text()
    page.click("#raw summary")
    raw = json.loads(page.locator("#raw-json").inner_text())
    assert raw["probe_cc"] == "CN" and raw["test_name"] == "whatsapp"
    assert raw["test_keys"]["x_wallwatch"]["features"]["text"]["verdict"] == "blocked"
    screenshot(page, tmp_path, "measurement")
    # The raw JSON itself, byte for byte as ingested.
    page.click("#raw-link")
    page.wait_for_url(re.compile(r"/raw\.json$"))
    assert json.loads(page.locator("body").inner_text()) == raw


def test_a_filter_is_kept_in_the_url(page: Any, dashboard: str, tmp_path: Path) -> None:
    _open(page, dashboard + "/")
    page.select_option('form.filters select[name="feature"]', "media")
    page.select_option('form.filters select[name="state"]', "blocked")
    page.click('form.filters button[type="submit"]')
    page.wait_for_url(re.compile(r"feature=media"))
    assert "state=blocked" in page.url
    rows = page.locator("table.now tbody tr")
    assert rows.count() == 1 and rows.first.get_attribute("data-feature") == "media"
    # The filter survives a reload, and the links carry it on to the country's page.
    page.reload()
    assert page.locator('form.filters select[name="feature"]').input_value() == "media"
    assert page.locator("table.now tbody tr").count() == 1
    page.click("section#country-CN h2 a")
    page.wait_for_url(re.compile(r"/country/CN\?.*feature=media"))
    assert [r.get_attribute("data-feature") for r in page.locator("table.now tbody tr").all()] == ["media"]
    screenshot(page, tmp_path, "filtered")


def test_downloads_are_what_the_page_shows(page: Any, dashboard: str, tmp_path: Path) -> None:
    _open(page, dashboard + "/heatmap?cc=CN&service=whatsapp&feature=text&since=2017-09-18", charts=1)
    screenshot(page, tmp_path, "heatmap")
    files = {}
    for selector, name in (('a.download[data-table="daily"][data-format="csv"]', "daily.csv"),
                           ('a.download[data-table="daily"][data-format="parquet"]', "daily.parquet"),
                           ("figcaption a.download", "chart.png")):
        with page.expect_download() as info:
            page.click(selector)
        path = tmp_path / name
        info.value.save_as(path)
        files[name] = path
    csv = pacsv.read_csv(files["daily.csv"])
    # The rows shown: three networks, the days from the 18th (the filter) on.
    assert sorted(set(csv.column("probe_asn").to_pylist())) == [4134, 4837, 9808]
    assert min(str(d) for d in csv.column("day").to_pylist()) >= "2017-09-18"
    assert pq.read_table(files["daily.parquet"]).num_rows == csv.num_rows
    png = files["chart.png"].read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000
    # The PNG is the chart on the page: its spec, drawn by vl-convert.
    with io.BytesIO(png) as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
