"""Throttled is its own state in the pipeline: not ok, not blocked.

A throttled verdict (the feature worked, slowed: probe/verdicts.py) is stored
as said, counted in the series as `n_throttled` with its kind, gives the
bucket state `throttled` unless blocking outweighs it, and opens a
`throttling` event of its own -- never a blocking one.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa

from wallwatch.analysis.events.feeds import _summary
from wallwatch.analysis.events.grouping import BLOCKING, THROTTLING, add_rule_evidence, detect_events
from wallwatch.analysis.series.build import build_and_store, read_series
from wallwatch.analysis.store import VERDICTS_SCHEMA, Store

T0 = datetime(2024, 3, 4)


def row(uid: str, hour: float, probe: str, verdict: str, method: str | None, asn: int = 64500,
        feature: str = "media") -> dict:
    moment = T0 + timedelta(hours=hour)
    return {"measurement_uid": uid, "measurement_start_time": moment, "date": moment.date(), "probe_cc": "RU",
            "probe_asn": asn, "probe_network_name": f"ISP {asn}", "probe_key": probe, "test_name": "whatsapp",
            "software_name": "wallwatch", "service": "whatsapp", "feature": feature, "target": None,
            "verdict": verdict, "method": method, "confidence": 0.8,
            "rule_id": f"throughput.{method}_throttled+feature.all_ok" if verdict == "throttled" else f"r.{verdict}",
            "rules_version": "wallwatch-whatsapp-verdicts/3"}


def store_of(tmp_path: Path, rows: list[dict]) -> Store:
    store = Store(tmp_path / "data")
    store.write("verdicts", pa.Table.from_pylist(rows, schema=VERDICTS_SCHEMA))
    build_and_store(store)
    return store


def test_a_throttled_bucket_is_throttled_and_counts_its_kind(tmp_path: Path) -> None:
    rows = [
        row("a", 0.1, "p1", "throttled", "rate"), row("b", 0.2, "p2", "throttled", "latency"),
        row("c", 0.3, "p3", "ok", None),
        # Hour 1: one blocked of three decisive probes outweighs two throttled ones (partial blocking).
        row("d", 1.1, "p1", "throttled", "rate"), row("e", 1.2, "p2", "throttled", "rate"),
        row("f", 1.3, "p3", "blocked", "tls_sni"),
        # Hour 2: throttled alone decides a probe: it is decisive, like ok.
        row("g", 2.1, "p1", "throttled", "rate"),
    ]
    hourly = read_series(store_of(tmp_path, rows), "hour").to_pylist()
    first, second, third = hourly[:3]
    assert (first["n_throttled"], first["n_probes_throttled"], first["n_probes_decisive"]) == (2, 2, 3)
    assert (first["throttled_rate"], first["throttled_latency"], first["n_blocked"]) == (1, 1, 0)
    assert first["state"] == "throttled" and abs(first["throttled_share"] - 2 / 3) < 1e-9
    assert first["blocked_share"] == 0.0 and first["example_throttled_uid"] == "a"
    assert second["state"] == "partial" and second["n_throttled"] == 2 and second["n_blocked"] == 1
    assert (third["state"], third["n_probes_decisive"]) == ("throttled", 1)


def _hours(kind_of: callable, hours: int = 14 * 24, asns: tuple[int, ...] = (64500, 64501)) -> list[dict]:
    rng, rows = random.Random(3), []
    for asn in asns:
        for probe in range(3):
            for hour in range(hours):
                verdict, method = kind_of(asn, hour)
                if verdict == "ok" and rng.random() < 0.01:
                    verdict, method = "throttled", "latency"  # noise: a flaky path now and then
                rows.append(row(f"{asn}-{probe}-{hour}", hour + rng.random() * 0.9, f"{asn}-{probe}", verdict,
                                method, asn))
    return rows


def test_throttling_opens_its_own_event_and_never_a_blocking_one(tmp_path: Path) -> None:
    start, end = 3 * 24 + 9, 8 * 24
    store = store_of(tmp_path, _hours(lambda asn, h: ("throttled", "rate") if start <= h < end else ("ok", None)))
    events = detect_events(read_series(store, "hour"))
    assert [e.type for e in events] == [THROTTLING]
    (event,) = events
    assert (event.onset, event.end) == (T0 + timedelta(hours=start), T0 + timedelta(hours=end))
    assert event.methods["rate"] > 500 and {n.probe_asn for n in event.networks} == {64500, 64501}
    assert event.evidence["n_throttled_measurements"] > 500
    connection = store.connect()
    try:
        (enriched,) = add_rule_evidence(connection, events)
    finally:
        connection.close()
    assert enriched.evidence["rule_ids"][0] == "throughput.rate_throttled+feature.all_ok"
    words = _summary({"event": event.to_record()})
    assert words.startswith("Slowed down (throttled, still reachable)") and "transfers were slowed down" in words


def test_blocking_after_throttling_is_two_events_of_two_types(tmp_path: Path) -> None:
    """WhatsApp in China, 2017, as a throttler would have done it: slowed first, then cut."""
    def phase(asn: int, hour: int) -> tuple[str, str | None]:
        if 2 * 24 <= hour < 6 * 24:
            return "throttled", "rate"
        if hour >= 6 * 24:
            return "blocked", "protocol_dpi"
        return "ok", None

    events = detect_events(read_series(store_of(tmp_path, _hours(phase)), "hour"))
    assert sorted(e.type for e in events) == [BLOCKING, THROTTLING]
    throttling = next(e for e in events if e.type == THROTTLING)
    blocking = next(e for e in events if e.type == BLOCKING)
    assert throttling.end == blocking.onset == T0 + timedelta(hours=6 * 24)
