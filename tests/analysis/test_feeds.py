"""The Atom feed of the event lifecycle log: valid RFC 4287, stable ids, readable titles, idempotent bytes."""

from __future__ import annotations

import random
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta
from pathlib import Path

import feedparser
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from wallwatch.analysis.events.grouping import detect_events
from wallwatch.analysis.events.lifecycle import record_events
from wallwatch.analysis.events.feeds import ATOM_NS, FeedError, FeedOptions, atom_feed, entry_id, write_atom
from wallwatch.analysis.series.build import build_and_store, read_series
from wallwatch.analysis.store import VERDICTS_SCHEMA, Store
from wallwatch.cli import app

T0 = datetime(2024, 3, 4)
A = f"{{{ATOM_NS}}}"
# AS4134 blocked from Wednesday 09:00, AS4837 joins Thursday 14:00; both end on Friday of the next week.
JOINS = {4134: 2 * 24 + 9, 4837: 3 * 24 + 14}
END = 11 * 24
NAMES = {4134: "China Telecom", 4837: "China Unicom"}


def _rows(until_hour: int) -> list[dict]:
    rng = random.Random(3)
    rows = []
    for asn in JOINS:
        for probe in range(3):
            for hour in range(min(until_hour, 14 * 24)):
                moment = T0 + timedelta(hours=hour, minutes=rng.randrange(60))
                blocked = JOINS[asn] <= hour < END
                rows.append({
                    "measurement_uid": f"cn-{asn}-{probe}-{hour}", "measurement_start_time": moment,
                    "date": moment.date(), "probe_cc": "CN", "probe_asn": asn, "probe_network_name": NAMES[asn],
                    "probe_key": f"{asn}-{probe}", "test_name": "whatsapp", "software_name": "wallwatch",
                    "service": "whatsapp", "feature": "text", "target": None,
                    "verdict": "blocked" if blocked else "ok", "method": "tls_sni" if blocked else None,
                    "confidence": 0.9, "rule_id": "wa.sni-reset" if blocked else "wa.ok", "rules_version": "1",
                })
    return rows


def _run(store: Store, until_hour: int, logged_at: datetime) -> None:
    store.write("verdicts", pa.Table.from_pylist(_rows(until_hour), schema=VERDICTS_SCHEMA))
    build_and_store(store)
    record_events(store, detect_events(read_series(store, "hour")), logged_at=logged_at)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """Three runs as data arrives: AS4134 only; AS4837 joins; the block ends."""
    result = Store(tmp_path_factory.mktemp("feed") / "data")
    _run(result, 3 * 24, T0 + timedelta(days=3))
    _run(result, 4 * 24, T0 + timedelta(days=4))
    _run(result, 14 * 24, T0 + timedelta(days=14))
    return result


def test_one_entry_per_lifecycle_entry_with_readable_titles(store: Store) -> None:
    log = store.read_jsonl("events")
    assert [e["entry"] for e in log] == ["opened", "network_joined", "closed"]
    root = ET.fromstring(atom_feed(log))
    entries = root.findall(f"{A}entry")
    titles = [e.findtext(f"{A}title") for e in entries]  # newest first
    assert titles == [
        "WhatsApp text blocked in CN: ended Fri 15 Mar 2024 00:00 UTC",
        "WhatsApp text blocked in CN: AS4837 China Unicom joined",
        "WhatsApp text blocked in CN: began Wed 06 Mar 2024 09:00 UTC (AS4134)",
    ]
    event_id = log[0]["event_id"]
    assert [e.findtext(f"{A}id") for e in entries] == [
        f"tag:wallwatch.invalid,2025:event/{event_id}/closed/2024-03-15T00:00:00Z",
        f"tag:wallwatch.invalid,2025:event/{event_id}/network_joined/AS4837",
        f"tag:wallwatch.invalid,2025:event/{event_id}/opened",
    ]
    assert [e.findtext(f"{A}updated") for e in entries] == [
        "2024-03-18T00:00:00Z", "2024-03-08T00:00:00Z", "2024-03-07T00:00:00Z"]
    closed = entries[0]
    content = closed.findtext(f"{A}content")
    assert closed.find(f"{A}content").get("type") == "html"
    assert "AS4134 China Telecom: from Wed 06 Mar 2024 09:00 UTC to Fri 15 Mar 2024 00:00 UTC" in content
    assert "tls_sni" in content and "wa.sni-reset" not in content  # rule ids come from add_rule_evidence
    assert "cn-4134-" in content  # example measurements
    assert "Method: tls_sni" in closed.findtext(f"{A}summary")


def test_feed_is_valid_atom_1_0(store: Store) -> None:
    data = atom_feed(store.read_jsonl("events"), FeedOptions(self_url="https://news.example/events.atom"))
    root = ET.fromstring(data)
    assert root.tag == f"{A}feed" and data.startswith(b"<?xml version='1.0' encoding='utf-8'?>")
    # RFC 4287 §4.1.1: a feed has exactly one id, title, updated; an author (or every entry has one).
    for name in ("id", "title", "updated", "author"):
        assert len(root.findall(f"{A}{name}")) == 1, name
    assert root.find(f"{A}author").findtext(f"{A}name") == "wallwatch"
    (self_link,) = root.findall(f"{A}link")
    assert (self_link.get("rel"), self_link.get("href")) == ("self", "https://news.example/events.atom")
    ids = set()
    for entry in root.findall(f"{A}entry"):
        # §4.1.2: exactly one id, title, updated; a summary or content.
        for name in ("id", "title", "updated", "summary", "content"):
            assert len(entry.findall(f"{A}{name}")) == 1, name
        ids.add(entry.findtext(f"{A}id"))
        datetime.fromisoformat(entry.findtext(f"{A}updated").rstrip("Z"))
    assert len(ids) == 3 and all(i.startswith("tag:") for i in ids)
    assert root.findtext(f"{A}updated") == "2024-03-18T00:00:00Z"  # the newest entry
    parsed = feedparser.parse(data)
    assert not parsed.bozo, parsed.get("bozo_exception")
    assert parsed.version == "atom10" and len(parsed.entries) == 3
    assert parsed.entries[1].title == "WhatsApp text blocked in CN: AS4837 China Unicom joined"
    assert {t.term for t in parsed.entries[1].tags} >= {"network_joined", "blocking", "CN", "whatsapp"}


def test_same_log_same_bytes_and_filters(store: Store, tmp_path: Path) -> None:
    log = store.read_jsonl("events")
    assert atom_feed(log) == atom_feed(list(log))
    path = tmp_path / "events.atom"
    assert write_atom(store, path) == 3
    first = path.read_bytes()
    stamp = path.stat().st_mtime_ns
    assert write_atom(store, path) == 3 and path.read_bytes() == first and path.stat().st_mtime_ns == stamp
    # A repeated or damaged line does not change the feed.
    assert atom_feed([*log, log[0], {"entry": "opened"}, {"nonsense": 1}]) == first
    other = ET.fromstring(atom_feed(log, FeedOptions(countries=("IR",))))
    assert other.findall(f"{A}entry") == [] and other.findtext(f"{A}updated") == "1970-01-01T00:00:00Z"
    assert other.findtext(f"{A}id").endswith("feed/events?cc=IR")
    assert entry_id(log[1], "news.example,2025").startswith("tag:news.example,2025:event/")
    with pytest.raises(FeedError, match="tag authority"):
        atom_feed(log, FeedOptions(tag_authority="not a tag"))


def test_cli_events_feed_and_report_feed(store: Store, tmp_path: Path) -> None:
    runner = CliRunner(env={"COLUMNS": "200"})
    folder = tmp_path / "feed"  # --out is a folder in every command; the feed is events.atom in it
    out = folder / "events.atom"
    result = runner.invoke(app, ["events", "--data", str(store.root), "--no-rebuild", "--feed", "atom",
                                 "--out", str(folder), "--tag-authority", "news.example,2025"])
    assert result.exit_code == 0, result.output
    assert "0 new lifecycle entries" in result.output and "(3 feed entries)" in result.output
    assert b"tag:news.example,2025:event/" in out.read_bytes()
    result = runner.invoke(app, ["events", "--data", str(store.root), "--no-rebuild", "--feed", "atom",
                                 "--out", str(folder), "--tag-authority", "bad authority"])
    assert result.exit_code != 0 and "tag authority" in result.output
    report = tmp_path / "report"
    result = runner.invoke(app, ["report", "--data", str(store.root), "--out", str(report), "--no-png",
                                 "--no-exports", "--max-charts", "1", "--no-rebuild"])
    assert result.exit_code == 0, result.output
    assert not feedparser.parse((report / "events.atom").read_bytes()).bozo
    assert 'type="application/atom+xml"' in (report / "index.html").read_text()


def test_a_network_turning_comprehensive_has_its_own_entry() -> None:
    snapshot = {"type": "blocking", "probe_cc": "CN", "service": "whatsapp", "feature": "text",
                "onset": "2017-09-20T12:00:00Z", "end": None,
                "networks": [{"probe_asn": 4134, "probe_network_name": "CHINANET-BACKBONE"}]}
    entry = {"entry": "network_comprehensive", "event_id": "e1", "logged_at": "2017-09-26T00:00:00Z",
             "probe_asn": 4134, "at": "2017-09-25T12:00:00Z", "event": snapshot}
    root = ET.fromstring(atom_feed([entry]))
    (item,) = root.findall(f"{A}entry")
    assert item.findtext(f"{A}title") == ("WhatsApp text blocked in CN: AS4134 CHINANET-BACKBONE comprehensive "
                                          "from Mon 25 Sep 2017 12:00 UTC (on and off before)")
    assert item.findtext(f"{A}id") == "tag:wallwatch.invalid,2025:event/e1/network_comprehensive/AS4134"
