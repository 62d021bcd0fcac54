"""The collector over HTTP: OONI's API, the bulk endpoint, bad input refused with nothing stored.

A real `wallwatch serve --no-live` in a subprocess: what the collector accepted is exactly
what is in its write-ahead log, so "nothing stored" is read there, byte for byte.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.web.observatory import Observatory, jsonl, wal_lines, wallwatch_measurement
from wallwatch.analysis.ingest.header import stable_uid
from wallwatch.analysis.ingest.pipeline import discover

pytestmark = pytest.mark.timeout(120)

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "ooni-samples"
LIMIT = 1024 * 1024  # above the largest real sample (352 KB)
WHEN = dt.datetime(2017, 9, 20, 12)


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observatory]:
    data = tmp_path_factory.mktemp("collector") / "data"
    with Observatory(data, live=False, args=["--max-measurement-bytes", str(LIMIT)]) as observatory:
        yield observatory
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it (exit status -15).
    assert observatory.process is not None and observatory.process.returncode in (0, -15)
    assert "Application shutdown complete" in observatory.log_text(), observatory.log_text()[-3000:]


def open_report(url: str, test_name: str = "whatsapp", cc: str = "CN", asn: str = "AS4134") -> str:
    response = httpx.post(f"{url}/report", json={
        "data_format_version": "0.2.0", "format": "json", "probe_asn": asn, "probe_cc": cc,
        "software_name": "ooniprobe-cli", "software_version": "3.20.0", "test_name": test_name,
        "test_start_time": "2017-09-20 12:00:00", "test_version": "0.10.0"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["supported_formats"] == ["json"] and body["backend_version"]
    return body["report_id"]


def submit(url: str, report_id: str, content: Any, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{url}/report/{report_id}", json={"format": "json", "content": content}, **kwargs)


def test_ooni_flow_open_submit_close(collector: Observatory) -> None:
    report_id = open_report(collector.url)
    # OONI's shape: six `_`-separated parts, the test name without its underscores.
    stamp, test, cc, asn, cid, rand = report_id.split("_")
    assert (test, cc, asn, cid, len(rand)) == ("whatsapp", "CN", "4134", "n1", 16)
    measurement = wallwatch_measurement(when=WHEN)
    del measurement["report_id"]  # an OONI probe sets it; without one the measurement takes the report's
    before = len(wal_lines(collector.data))
    first = submit(collector.url, report_id, measurement)
    assert first.status_code == 200, first.text
    uid = first.json()["measurement_uid"]
    stored = wal_lines(collector.data)[before:]
    assert [line["report_id"] for line in stored] == [report_id]
    assert uid == stable_uid(stored[0])  # the batch ingest's identity for the same record
    # A resubmission (a probe that did not see the answer) is acknowledged with the same uid.
    again = submit(collector.url, report_id, measurement)
    assert again.status_code == 200 and again.json()["measurement_uid"] == uid
    assert httpx.post(f"{collector.url}/report/{report_id}/close").status_code == 200
    assert httpx.post(f"{collector.url}/report/{report_id}/close").status_code == 200  # closing twice is fine
    closed = submit(collector.url, report_id, measurement)
    assert closed.status_code == 409 and "closed" in closed.json()["detail"]


def test_probe_address_is_never_stored(collector: Observatory) -> None:
    report_id = open_report(collector.url)
    measurement = wallwatch_measurement(when=WHEN, seq=7)
    measurement["report_id"] = report_id
    measurement["probe_ip"] = "203.0.113.7"  # an opted-in probe's public address
    assert submit(collector.url, report_id, measurement).status_code == 200
    line = wal_lines(collector.data)[-1]
    assert line["probe_ip"] == "127.0.0.1"
    assert b"203.0.113.7" not in (collector.data / "_live" / "wal").joinpath(
        sorted(p.name for p in (collector.data / "_live" / "wal").glob("*.jsonl"))[-1]).read_bytes()
    # No access log: uvicorn's would be `127.0.0.1:54321 - "POST /report/... HTTP/1.1" 200`.
    assert "POST /report" not in collector.log_text() and "203.0.113.7" not in collector.log_text()


def test_bulk_endpoint_takes_json_lines_in_order(collector: Observatory) -> None:
    measurements = [wallwatch_measurement(when=WHEN + dt.timedelta(minutes=i), seq=100 + i) for i in range(5)]
    response = httpx.post(f"{collector.url}/api/v1/measurements", content=jsonl(measurements),
                          headers={"content-type": "application/x-ndjson"})
    assert response.status_code == 200, response.text
    assert response.json()["measurement_uids"] == [stable_uid(m) for m in measurements]
    gzipped = httpx.post(f"{collector.url}/api/v1/measurements", content=gzip.compress(jsonl(measurements[:2])),
                         headers={"content-type": "application/x-ndjson", "content-encoding": "gzip"})
    assert gzipped.status_code == 200 and gzipped.json()["measurement_uids"] == [stable_uid(m) for m in
                                                                               measurements[:2]]


def test_real_ooni_measurements_are_accepted_unchanged(collector: Observatory) -> None:
    """Every real OONI measurement in the samples goes in through OONI's API as a probe would send it."""
    records = [orjson.loads(path.read_bytes()) for path in discover([SAMPLES])]
    assert len(records) >= 15
    for record in records:
        report_id = open_report(collector.url, record["test_name"], record["probe_cc"], record["probe_asn"])
        record = {**record, "report_id": report_id}
        response = submit(collector.url, report_id, record)
        assert response.status_code == 200, (record["test_name"], record.get("measurement_start_time"), response.text)
        assert response.json()["measurement_uid"] == stable_uid(record)


def _ooni_bad(url: str) -> list[tuple[str, int, str, dict[str, Any]]]:
    """(case, expected status, a word of the reason, request) for bad submissions."""
    rid = open_report(url)
    good = wallwatch_measurement(when=WHEN, seq=9999)
    good.pop("report_id")

    def with_(**changes: Any) -> dict[str, Any]:
        return {**good, **changes}

    def without(name: str) -> dict[str, Any]:
        return {k: v for k, v in good.items() if k != name}

    def body(content: Any) -> dict[str, Any]:
        return {"url": f"{url}/report/{rid}", "content": json.dumps({"format": "json", "content": content})}

    closed = open_report(url)
    httpx.post(f"{url}/report/{closed}/close").raise_for_status()
    return [
        ("malformed JSON", 400, "malformed", {"url": f"{url}/report/{rid}", "content": b'{"format": "json", "cont'}),
        ("not an object", 400, "body must be", {"url": f"{url}/report/{rid}", "content": b"[1, 2]"}),
        ("yaml format", 400, "format", {"url": f"{url}/report/{rid}",
                                        "content": json.dumps({"format": "yaml", "content": good})}),
        ("content not an object", 400, "object", body("a measurement")),
        ("missing test_keys", 400, "test_keys", body(without("test_keys"))),
        ("missing measurement_start_time", 400, "measurement_start_time", body(without("measurement_start_time"))),
        ("missing probe_cc", 400, "probe_cc", body(without("probe_cc"))),
        ("asn as a number", 400, "probe_asn", body(with_(probe_asn=4134))),
        ("test_keys as text", 400, "test_keys", body(with_(test_keys="blocked"))),
        ("input as a number", 400, "input", body(with_(input=7))),
        ("bad start time", 400, "measurement_start_time", body(with_(measurement_start_time="yesterday"))),
        ("month 13", 400, "measurement_start_time", body(with_(measurement_start_time="2017-13-01 00:00:00"))),
        ("lower-case country", 400, "probe_cc", body(with_(probe_cc="cn"))),
        ("another report's id", 400, "report_id", body(with_(report_id="20170920T120000Z_whatsapp_CN_4134_n1_x"))),
        ("another country than the report's", 400, "probe_cc", body(with_(probe_cc="IR"))),
        ("another test than the report's", 400, "test_name", body(with_(test_name="telegram"))),
        ("over the size limit", 413, "limit", body(with_(test_keys={"pad": "x" * LIMIT}))),
        ("over the limit once gunzipped", 413, "limit", {
            "url": f"{url}/report/{rid}", "headers": {"content-encoding": "gzip"},
            "content": gzip.compress(json.dumps({"format": "json", "content": with_(
                test_keys={"pad": "x" * 4 * LIMIT})}).encode())}),
        ("broken gzip", 400, "gzip", {"url": f"{url}/report/{rid}", "headers": {"content-encoding": "gzip"},
                                      "content": b"\x1f\x8b\x08\x00garbage"}),
        ("unknown encoding", 415, "Content-Encoding", {"url": f"{url}/report/{rid}",
                                                       "headers": {"content-encoding": "br"}, "content": b"{}"}),
        ("unknown report", 404, "no report", {"url": f"{url}/report/20170920T120000Z_whatsapp_CN_4134_n1_nope",
                                              "content": json.dumps({"format": "json", "content": good})}),
        ("closed report", 409, "closed", {"url": f"{url}/report/{closed}",
                                          "content": json.dumps({"format": "json", "content": good})}),
        ("bulk: one bad line among good ones", 400, "line 2", {
            "url": f"{url}/api/v1/measurements",
            "content": jsonl([wallwatch_measurement(when=WHEN, seq=1), {**wallwatch_measurement(when=WHEN, seq=2),
                                                                       "probe_asn": None}])}),
        ("bulk: a line without report_id", 400, "report_id", {
            "url": f"{url}/api/v1/measurements", "content": jsonl([without("report_id")])}),
        ("bulk: malformed line", 400, "line 1", {"url": f"{url}/api/v1/measurements", "content": b"{nope\n"}),
        ("bulk: empty", 400, "no measurements", {"url": f"{url}/api/v1/measurements", "content": b"\n\n"}),
        ("open report: missing fields", 422, "", {"url": f"{url}/report", "content": b'{"format": "json"}'}),
    ]


def test_bad_input_is_refused_with_the_reason_and_nothing_is_stored(collector: Observatory) -> None:
    cases = _ooni_bad(collector.url)
    before = wal_lines(collector.data)
    answered = []
    for case, status, word, request in cases:
        response = httpx.post(request["url"], content=request["content"], headers=request.get("headers"))
        detail = response.json().get("detail")
        answered.append((case, response.status_code, str(detail)[:120]))
        assert response.status_code == status, (case, response.status_code, response.text[:500])
        assert word.lower() in str(detail).lower(), (case, detail)
        assert collector.status()["accepted"] >= 0  # still up after each one
    assert wal_lines(collector.data) == before, answered
    refused = collector.status()["refused"]
    assert sum(refused.values()) >= len(cases) - 1  # every one counted (422 is FastAPI's own)


def test_tokens_are_required_when_configured(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("# submitters\nmonitor-0123456789abcdef\n\nooni-probe-fedcba9876543210\n")
    with Observatory(tmp_path / "data", live=False, args=["--tokens", str(tokens)]) as observatory:
        url = observatory.url
        body = jsonl([wallwatch_measurement(when=WHEN)])
        for headers in ({}, {"authorization": "Bearer wrong-token-0123456789"}, {"authorization": "Basic abc"}):
            response = httpx.post(f"{url}/api/v1/measurements", content=body, headers=headers)
            assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Bearer")
            assert httpx.post(f"{url}/report", json={}, headers=headers).status_code in (401, 422)
        assert wal_lines(observatory.data) == []
        ok = httpx.post(f"{url}/api/v1/measurements", content=body,
                        headers={"authorization": "Bearer ooni-probe-fedcba9876543210"})
        assert ok.status_code == 200
        assert len(wal_lines(observatory.data)) == 1
        assert httpx.get(f"{url}/feed.atom").status_code == 200  # reading needs no token


def test_a_second_serve_on_the_same_folder_is_refused(collector: Observatory) -> None:
    second = Observatory(collector.data, live=False)
    with pytest.raises(RuntimeError, match="another `wallwatch serve`"):
        second.start(timeout=30)
