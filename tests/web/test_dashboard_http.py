"""The dashboard over HTTP (a real uvicorn on loopback), without a browser: failures said plainly."""

from __future__ import annotations

import io
import re
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow.csv as pacsv
import pytest

from tests.web.conftest import Served, dashboard_app


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.headers.get("content-type", ""), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("content-type", ""), error.read()


def test_a_malformed_filter_is_refused_with_the_format_it_needs(dashboard: str) -> None:
    status, _, body = _get(dashboard + "/timeline?cc=CN&service=whatsapp&feature=text&since=20-09-2017")
    assert status == 400 and "since must be a date written YYYY-MM-DD (e.g. 2017-09-20)" in body.decode()
    status, _, body = _get(dashboard + "/?cc=China")
    assert status == 400 and "two-letter country code" in body.decode()
    status, _, body = _get(dashboard + "/heatmap/data.csv?cc=CN&service=whatsapp&feature=text&until=soon")
    assert status == 400 and b"YYYY-MM-DD" in body


def test_unknown_things_are_404_pages_that_say_what_was_asked(dashboard: str) -> None:
    for path, words in (("/event/0000000000000000", "no event 0000000000000000"),
                        ("/measurement/ww-nothing", "no measurement ww-nothing"),
                        ("/country/XA", "no measurements from XA"), ("/network/CN/64500", "no measurements from AS64500"),
                        ("/timeline?cc=CN&service=signal&feature=text", "no series for signal text in CN")):
        status, kind, body = _get(dashboard + path)
        assert status == 404 and kind.startswith("text/html") and words in body.decode(), path
    assert _get(dashboard + "/static/../routes.py")[0] == 404
    assert _get(dashboard + "/static/%2e%2e/routes.py")[0] == 404
    assert _get(dashboard + "/data.xlsx")[0] == 422  # FastAPI: not one of the formats


def test_a_networks_page_does_not_claim_an_event_it_is_not_part_of(dashboard: str) -> None:
    """China Mobile's text was blocked for four days, too few for the detector: the country's text
    event (Telecom and Unicom) must not be shown as China Mobile's."""
    status, _, body = _get(dashboard + "/network/CN/AS9808")
    page = re.sub(r"\s+", " ", body.decode())
    assert status == 200
    row = re.search(r'<tr data-service="whatsapp" data-feature="text".*?</tr>', page).group(0)
    assert "no event" in row and "Wed 20 Sep 2017" not in row
    media = re.search(r'<tr data-service="whatsapp" data-feature="media".*?</tr>', page).group(0)
    assert "Wed 20 Sep 2017 12:00 UTC" in media and "event-link" in media


def test_downloads_carry_the_pages_tables(dashboard: str) -> None:
    status, kind, body = _get(dashboard + "/country/CN/data.csv?table=events")
    assert status == 200 and kind.startswith("text/csv")
    events = pacsv.read_csv(io.BytesIO(body))
    assert events.num_rows == 4 and set(events.column("feature").to_pylist()) == {"text", "media", "calls", "tunnel"}
    status, _, body = _get(dashboard + "/data.csv?state=blocked")
    now = pacsv.read_csv(io.BytesIO(body))
    assert sorted(now.column("feature").to_pylist()) == ["calls", "media", "text", "tunnel"]
    assert "the app's protocol was recognised and cut" in now.column("method_plain").to_pylist()
    status, kind, body = _get(dashboard + "/timeline/chart.png?cc=CN&service=whatsapp&feature=text")
    assert status == 200 and kind == "image/png" and body.startswith(b"\x89PNG")
    assert _get(dashboard + "/country/CN/data.csv?table=nothing")[0] == 404


def test_without_the_chart_library_the_page_says_so_and_still_draws(dashboard_data: Path,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    tmp_path: Path) -> None:
    from wallwatch.web.dashboard import routes

    monkeypatch.setattr(routes, "VENDOR", tmp_path / "no-vendor")
    served = Served(dashboard_app(dashboard_data))
    try:
        status, _, body = _get(served.url + "/heatmap?cc=CN&service=whatsapp&feature=text")
    finally:
        served.stop()
    page = body.decode()
    assert status == 200 and 'id="vendor-missing"' in page and "bash scripts/install.sh" in page
    assert "vega-embed.min.js" in page and "<script src=\"/static/vendor/" not in page
    assert page.count("<svg") >= 1  # drawn on the server instead


def test_an_empty_data_folder_says_what_to_run(tmp_path: Path) -> None:
    served = Served(dashboard_app(tmp_path / "empty"))
    try:
        status, _, body = _get(served.url + "/")
    finally:
        served.stop()
    assert status == 200 and "No series yet" in body.decode() and "wallwatch series" in body.decode()
