"""Alerts and context: one signed webhook per lifecycle change, never repeated, retried then dead-lettered;
the Atom feed served live with the calendar's annotations."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import time
from pathlib import Path
from typing import Any

import feedparser
import httpx
import orjson
import pytest

from tests.web.observatory import Observatory, WebhookReceiver, jsonl, timeline
from wallwatch.analysis.events.feeds import entry_id
from wallwatch.analysis.store import Store
from wallwatch.web.alerts import AlertsConfigError, Webhook, load_alerts, sign, signing_key
from wallwatch.web.calendar import CalendarError, annotations_for, load_calendar

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

SECRET = "whsec_" + base64.b64encode(b"a test key of thirty-two bytes!!").decode()
START = dt.datetime(2017, 9, 18)
CALENDAR = """annotations:
  - date: 2017-10-18
    title: 19th Party Congress opens
    countries: [CN]
    window_days: 45
  - date: 2017-09-20
    title: An Iranian holiday
    countries: [IR]
"""


def _alerts_file(tmp_path: Path, *hooks: dict[str, Any]) -> Path:
    import yaml

    path = tmp_path / "alerts.yaml"
    path.write_text(yaml.safe_dump({"webhooks": list(hooks)}))
    return path


def _verify(delivery: dict[str, Any], secret: str = SECRET) -> bool:
    """A receiver's check, written from the Standard Webhooks spec (not with wallwatch's own `sign`)."""
    headers = delivery["headers"]
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + delivery["body"]
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(hmac.compare_digest(f"v1,{expected}", part) for part in headers["webhook-signature"].split())


def _post(url: str, measurements: list[dict[str, Any]]) -> None:
    response = httpx.post(f"{url}/api/v1/measurements", content=jsonl(measurements), timeout=30)
    assert response.status_code == 200, response.text


def _log(data: Path) -> list[dict[str, Any]]:
    return Store(data).read_jsonl("events")


def test_each_lifecycle_change_is_alerted_once_signed_with_context(tmp_path: Path) -> None:
    calendar = tmp_path / "calendar.yaml"
    calendar.write_text(CALENDAR)
    data = tmp_path / "data"
    with WebhookReceiver() as receiver:
        alerts = _alerts_file(tmp_path, {"name": "newsroom", "url": receiver.url, "secret": SECRET,
                                         "countries": ["CN"]})
        args = ["--alerts", str(alerts), "--calendar", str(calendar)]
        measurements = timeline(START, 96, blocked_from={4134: 30, 4837: 54})
        with Observatory(data, args=args) as server:
            # Day by day, so the event opens, then a network joins, as they would live.
            for day in range(4):
                _post(server.url, [m for m in measurements if m["measurement_start_time"][:10] == f"2017-09-{18 + day}"])
                server.wait_idle()
            log = _log(data)
            kinds = [entry["entry"] for entry in log]
            assert kinds == ["opened", "network_joined"], kinds
            delivered = receiver.wait_for(len(log))
            feed = httpx.get(f"{server.url}/feed.atom").content
            events = httpx.get(f"{server.url}/api/v1/events").json()["events"]
        assert [d["headers"]["webhook-id"] for d in delivered] == [entry_id(e) for e in log]
        assert all(_verify(d) for d in delivered)
        assert not _verify({**delivered[0], "body": delivered[0]["body"].replace(b"CN", b"IR")})
        first = delivered[0]["json"]
        assert (first["entry"], first["event"]["probe_cc"], first["event"]["service"]) == ("opened", "CN", "whatsapp")
        assert first["title"].startswith("WhatsApp text blocked in CN: began")
        assert [a["title"] for a in first["annotations"]] == ["19th Party Congress opens"]
        assert delivered[1]["json"]["detail"]["probe_asn"] == 4837
        # The feed served live: the same entries, with the context.
        parsed = feedparser.parse(feed)
        assert [e.id for e in parsed.entries] == [entry_id(e) for e in reversed(log)]
        assert "19th Party Congress opens (Wed 18 Oct 2017)" in parsed.entries[0].content[0].value
        assert [a["title"] for a in events[0]["annotations"]] == ["19th Party Congress opens"]

        # Restarted on the same folder: catching up re-detects everything and sends nothing again;
        # the block then ends, and only that is alerted.
        restored = timeline(START + dt.timedelta(hours=96), 24, blocked_from={})
        with Observatory(data, args=args) as server:
            time.sleep(1.0)
            assert len(receiver.received) == len(log)
            _post(server.url, restored)
            server.wait_idle()
            log = _log(data)
            delivered = receiver.wait_for(len(log))
        assert [entry["entry"] for entry in log] == ["opened", "network_joined", "closed"]
        assert [d["headers"]["webhook-id"] for d in delivered] == [entry_id(e) for e in log]
        state = [orjson.loads(line) for line in (data / "_live" / "alerts" / "state.jsonl").read_bytes().splitlines()]
        assert [row["status"] for row in state if "status" in row] == ["delivered"] * 3


def test_a_failing_receiver_gets_retries_with_backoff_then_a_dead_letter(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with WebhookReceiver(fail_first=2) as flaky, WebhookReceiver(always_fail=True) as down:
        alerts = _alerts_file(tmp_path,
                              {"name": "flaky", "url": flaky.url, "secret": SECRET, "backoff_seconds": 0.2},
                              {"name": "down", "url": down.url, "secret": SECRET, "retries": 2,
                               "backoff_seconds": 0.2})
        with Observatory(data, args=["--alerts", str(alerts)]) as server:
            _post(server.url, timeline(START, 48, blocked_from={4134: 12}))
            server.wait_idle()
            (entry,) = _log(data)
            started = time.monotonic()
            (delivery,) = flaky.wait_for(1)
            dead_letters = data / "_live" / "alerts" / "dead-letter.jsonl"
            deadline = time.monotonic() + 10
            while not dead_letters.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        assert delivery["headers"]["webhook-id"] == entry_id(entry) and flaky.requests == 3
        assert time.monotonic() - started >= 0.0  # (delivered after 0.2 + 0.4 s of backoff)
        (dead,) = [orjson.loads(line) for line in dead_letters.read_bytes().splitlines()]
        assert (dead["webhook"], dead["alert_id"], dead["attempts"], dead["last_error"]) == (
            "down", entry_id(entry), 3, "HTTP 500")
        assert dead["payload"]["event"]["event_id"] == entry["event_id"] and down.requests == 3
        state = [orjson.loads(line) for line in (data / "_live" / "alerts" / "state.jsonl").read_bytes().splitlines()]
        done = {(row["webhook"], row["status"], row["attempts"]) for row in state if "status" in row}
        assert done == {("flaky", "delivered", 3), ("down", "dead_letter", 3)}
        # After a restart neither is tried again.
        with Observatory(data, args=["--alerts", str(alerts)]):
            time.sleep(1.5)
        assert (flaky.requests, down.requests) == (3, 3)


def test_a_webhook_added_later_is_not_sent_the_history(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with Observatory(data) as server:
        _post(server.url, timeline(START, 48, blocked_from={4134: 12}))
        server.wait_idle()
    assert len(_log(data)) == 1
    with WebhookReceiver() as receiver:
        alerts = _alerts_file(tmp_path, {"name": "late", "url": receiver.url, "secret": SECRET})
        with Observatory(data, args=["--alerts", str(alerts)]) as server:
            _post(server.url, timeline(START + dt.timedelta(hours=48), 24, networks=(4837,), blocked_from={4837: 0}))
            server.wait_idle()
            log = _log(data)
            delivered = receiver.wait_for(len(log) - 1)
    # Everything logged after the webhook was configured, nothing from before (the first "opened").
    assert [d["headers"]["webhook-id"] for d in delivered] == [entry_id(e) for e in log[1:]]
    assert "network_joined" in [d["json"]["entry"] for d in delivered]


def test_signature_matches_the_standard_webhooks_example() -> None:
    # The specification's example (standard-webhooks spec.md, "Signature scheme"): this secret, id,
    # timestamp and body sign to this value.
    key = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    body = b'{"test": 2432232314}'
    assert sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == \
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert signing_key("not-base64-but-long-enough") == b"not-base64-but-long-enough"


def test_config_files_are_checked_with_clear_errors(tmp_path: Path) -> None:
    bad = tmp_path / "a.yaml"
    for text, message in (
        ("webhooks: [{name: a, url: ftp://x, secret: 0123456789abcdef}]", "url"),
        ("webhooks: [{name: a, url: 'http://x', secret: short}]", "secret"),
        ("webhooks: [{name: a, url: 'http://x', secret: 0123456789abcdef, retries: -1}]", "retries"),
        ("webhooks: [{name: a, url: 'http://x', secret: 0123456789abcdef, entries: [born]}]", "entries"),
        ("webhooks: [{name: a, url: 'http://x', secret: 0123456789abcdef, colour: red}]", "unknown"),
        ("webhooks: [{name: a, url: 'http://x', secret_env: WALLWATCH_NO_SUCH_VARIABLE}]", "environment"),
    ):
        bad.write_text(text)
        with pytest.raises(AlertsConfigError, match=message):
            load_alerts(bad)
    good = tmp_path / "good.yaml"
    good.write_text("webhooks: [{name: a, url: 'http://127.0.0.1:1/h', secret: 0123456789abcdef, countries: [cn]}]")
    (hook,) = load_alerts(good).webhooks
    assert isinstance(hook, Webhook) and hook.countries == ("CN",) and hook.delays() == [1.0, 2.0, 4.0, 8.0, 16.0]
    for text, message in (("annotations: [{title: x}]", "date"), ("annotations: [{date: 2017-10-18}]", "title"),
                          ("annotations: [{date: 2017-10-18, title: x, countries: [China]}]", "countries"),
                          ("annotations: [{date: 2017-10-18, end: 2017-10-01, title: x}]", "before")):
        bad.write_text(text)
        with pytest.raises(CalendarError, match=message):
            load_calendar(bad)
    calendar = tmp_path / "calendar.yaml"
    calendar.write_text(CALENDAR)
    annotations = load_calendar(calendar)
    event = {"probe_cc": "CN", "onset": "2017-09-20T12:00:00Z", "end": None}
    assert [a.title for a in annotations_for(event, annotations)] == ["19th Party Congress opens"]
    assert annotations_for({**event, "end": "2017-08-20T00:00:00Z", "onset": "2017-08-01T00:00:00Z"},
                           annotations) == []  # ended 59 days before, and the window is 45 days
    assert [a.title for a in annotations_for({**event, "probe_cc": "IR"}, annotations)] == ["An Iranian holiday"]
