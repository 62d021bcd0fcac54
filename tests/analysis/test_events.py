"""Events from a real store: grouping across networks, on-and-off, volume collapse, the lifecycle log."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from wallwatch.analysis.events.grouping import (
    BLOCKING,
    VOLUME_COLLAPSE,
    DetectionParams,
    GroupingParams,
    add_rule_evidence,
    detect_events,
    event_id,
    events_table,
)
from wallwatch.analysis.events.lifecycle import logged_events, record_events
from synthetic_events import scenarios, score, verdicts
from wallwatch.analysis.series.build import build_and_store, build_series
from wallwatch.analysis.store import VERDICTS_SCHEMA, Store

T0 = datetime(2024, 3, 4)  # Monday
HOURS = 21 * 24


def _rows(blocked, hours: int = HOURS, asns=(64500, 64501, 64502), probes: int = 3, silent=lambda a, h: False,
          seed: int = 1, cc: str = "XA") -> list[dict]:
    """Every probe measures whatsapp/text every hour; `blocked(asn, hour)` says whether it is blocked."""
    rng = random.Random(seed)
    rows = []
    for asn in asns:
        for probe in range(probes):
            for hour in range(hours):
                if silent(asn, hour):
                    continue
                moment = T0 + timedelta(hours=hour, minutes=rng.randrange(60))
                is_blocked = blocked(asn, hour) or rng.random() < 0.01
                rows.append({
                    "measurement_uid": f"{cc}-{asn}-{probe}-{hour}", "measurement_start_time": moment,
                    "date": moment.date(), "probe_cc": cc, "probe_asn": asn,
                    "probe_network_name": f"ISP {asn}", "probe_key": f"{asn}-{probe}", "test_name": "whatsapp",
                    "software_name": "wallwatch", "service": "whatsapp", "feature": "text", "target": None,
                    "verdict": "blocked" if is_blocked else "ok", "method": "tls_sni" if is_blocked else None,
                    "confidence": 0.9, "rule_id": "wa.sni-reset" if is_blocked else "wa.ok", "rules_version": "1",
                })
    return rows


def _store(tmp_path: Path, rows: list[dict]) -> Store:
    store = Store(tmp_path / "data")
    store.write("verdicts", pa.Table.from_pylist(rows, schema=VERDICTS_SCHEMA))
    build_and_store(store)
    return store


def _events(store: Store, params: DetectionParams = DetectionParams()):
    from wallwatch.analysis.series.build import read_series

    return detect_events(read_series(store, "hour"), params)


def _at(hour: int) -> datetime:
    return T0 + timedelta(hours=hour)


# Wednesday 09:00, Thursday 14:00, Monday 08:00; everything ends the Friday after.
JOINS = {64500: 2 * 24 + 9, 64501: 3 * 24 + 14, 64502: 7 * 24 + 8}
END = 11 * 24


def test_a_national_block_that_grows_isp_by_isp_is_one_event(tmp_path: Path) -> None:
    store = _store(tmp_path, _rows(lambda asn, h: JOINS[asn] <= h < END))
    (event,) = _events(store)
    assert (event.type, event.probe_cc, event.service, event.feature) == (BLOCKING, "XA", "whatsapp", "text")
    assert event.onset == _at(JOINS[64500]) and event.end == _at(END)
    assert [(n.probe_asn, n.onset) for n in event.networks] == [(asn, _at(h)) for asn, h in JOINS.items()]
    assert all(n.probe_network_name == f"ISP {n.probe_asn}" for n in event.networks)
    assert event.methods["tls_sni"] > 500 and event.peak_blocked_share == 1.0
    assert event.event_id == event_id("XA", "whatsapp", "text", BLOCKING, event.onset)
    assert len(event.evidence["example_measurement_uids"]) == 5
    assert event.params["h_open"] == 10.0 and event.detector_version.startswith("ww-cusum")
    connection = store.connect()
    try:
        (enriched,) = add_rule_evidence(connection, [event])
    finally:
        connection.close()
    assert enriched.evidence["rule_ids"][0] == "wa.sni-reset"


def test_blocking_that_lets_attempts_through_is_on_and_off_until_comprehensive(tmp_path: Path) -> None:
    """64500: about half of each blocked measurement's attempts blocked for two days, then all of
    them (20-25 September 2017 in miniature); 64501: all of them from the start."""
    start, full = 2 * 24 + 9, 4 * 24 + 9
    rows = _rows(lambda asn, h: start <= h < END, asns=(64500, 64501))
    for row in rows:
        if row["verdict"] == "blocked":
            hour = int((row["measurement_start_time"] - T0).total_seconds() // 3600)
            row["blocked_share"] = 0.5 if row["probe_asn"] == 64500 and hour < full else 1.0
    (event,) = _events(_store(tmp_path, rows))
    networks = {n.probe_asn: n for n in event.networks}
    assert (networks[64500].on_and_off, networks[64500].comprehensive_from) == (True, _at(full))
    assert (networks[64501].on_and_off, networks[64501].comprehensive_from) == (False, _at(start))
    record = event.to_record()["networks"]
    assert {n["probe_asn"]: n["on_and_off"] for n in record} == {64500: True, 64501: False}


def test_on_and_off_within_tolerance_is_one_event_beyond_it_two(tmp_path: Path) -> None:
    evenings = lambda asn, h: 5 * 24 <= h < 9 * 24 and 16 <= h % 24  # noqa: E731  16:00-24:00, four days
    (event,) = _events(_store(tmp_path / "a", _rows(evenings)))
    assert event.onset == _at(5 * 24 + 16) and event.end == _at(9 * 24)
    assert all(len(n.periods) == 4 for n in event.networks)
    apart = lambda asn, h: 3 * 24 <= h < 4 * 24 or 8 * 24 <= h < 9 * 24  # noqa: E731  four days apart
    assert len(_events(_store(tmp_path / "b", _rows(apart)))) == 2
    wide = DetectionParams(grouping=GroupingParams(merge_gap_hours=5 * 24))
    assert len(_events(_store(tmp_path / "c", _rows(apart)), wide)) == 1


def test_separate_isp_blocks_far_apart_are_separate_events(tmp_path: Path) -> None:
    rows = _rows(lambda asn, h: (asn == 64500 and 48 <= h < 96) or (asn == 64502 and 300 <= h < 340))
    events = _events(_store(tmp_path, rows))
    assert [[n.probe_asn for n in e.networks] for e in events] == [[64500], [64502]]


def test_volume_collapse_is_its_own_event(tmp_path: Path) -> None:
    rows = _rows(lambda asn, h: False, asns=(64500, 64501, 64502, 64503), probes=4,
                 silent=lambda asn, h: asn in (64501, 64502) and 200 <= h < 236)
    (event,) = _events(_store(tmp_path, rows))
    assert (event.type, event.service, event.feature) == (VOLUME_COLLAPSE, "*", "*")
    assert (event.onset, event.end) == (_at(200), _at(236))
    assert [n.probe_asn for n in event.networks] == [64501, 64502]
    assert event.evidence["baseline_per_hour"]["64501"] == 4


def test_quiet_data_has_no_events(tmp_path: Path) -> None:
    assert _events(_store(tmp_path, _rows(lambda asn, h: False))) == []


def test_log_is_idempotent_and_later_data_extends(tmp_path: Path) -> None:
    blocked = lambda asn, h: JOINS[asn] <= h < END  # noqa: E731
    everything = _rows(blocked)
    # First run: data up to Thursday 20:00 -- AS64500 and AS64501 blocked, still ongoing.
    early = [row for row in everything if row["measurement_start_time"] < _at(3 * 24 + 20)]
    store = _store(tmp_path, early)
    (first,) = _events(store)
    assert first.end is None and len(first.networks) == 2
    _, entries = record_events(store, [first], logged_at=T0)
    assert [e["entry"] for e in entries] == ["opened"]
    _, again = record_events(store, _events(store))
    assert again == []  # same data, nothing new
    # Later data: AS64502 joins on Monday and the block ends.
    store.write("verdicts", pa.Table.from_pylist(everything, schema=VERDICTS_SCHEMA))
    build_and_store(store)
    reconciled, entries = record_events(store, _events(store))
    assert [e["entry"] for e in entries] == ["network_joined", "closed"]
    assert entries[0]["probe_asn"] == 64502
    assert reconciled[0].event_id == first.event_id
    assert record_events(store, _events(store))[1] == []
    (logged,) = logged_events(store)
    assert logged["event_id"] == first.event_id and logged["end"] == "2024-03-15T00:00:00Z"
    assert len(store.read_jsonl("events")) == 3


def test_the_log_says_when_on_and_off_blocking_becomes_comprehensive(tmp_path: Path) -> None:
    start, full = 2 * 24 + 9, 4 * 24 + 9
    everything = _rows(lambda asn, h: start <= h < END, asns=(64500,))
    for row in everything:
        if row["verdict"] == "blocked":
            hour = int((row["measurement_start_time"] - T0).total_seconds() // 3600)
            row["blocked_share"] = 0.5 if hour < full else 1.0
    store = _store(tmp_path, [r for r in everything if r["measurement_start_time"] < _at(full - 6)])
    _, entries = record_events(store, _events(store), logged_at=T0)
    assert [e["entry"] for e in entries] == ["opened"]  # on and off so far
    store.write("verdicts", pa.Table.from_pylist(everything, schema=VERDICTS_SCHEMA))
    build_and_store(store)
    _, entries = record_events(store, _events(store))
    assert [e["entry"] for e in entries] == ["network_comprehensive", "closed"]
    assert (entries[0]["probe_asn"], entries[0]["at"]) == (64500, "2024-03-08T09:00:00Z")
    assert record_events(store, _events(store))[1] == []  # said once


def test_events_export_as_a_flat_table(tmp_path: Path) -> None:
    events = _events(_store(tmp_path, _rows(lambda asn, h: JOINS[asn] <= h < END)))
    table = events_table(events)
    assert table.num_rows == 1 and table.column("networks").to_pylist() == ["64500,64501,64502"]


@pytest.mark.parametrize("seed", [1])
def test_harness_meets_the_targets_on_one_replicate(seed: int) -> None:
    countries = scenarios(replicates=1, seed=seed)
    connection = duckdb.connect()
    try:
        connection.register("verdicts", verdicts(countries, seed=seed))
        events = detect_events(build_series(connection, "hour"))
    finally:
        connection.close()
    scores = score(countries, events)
    assert sum(s.recalled for s in scores) == sum(s.true_events for s in scores) == 7
    assert all(s.events_per_true == 1.0 for s in scores if s.recalled)
    assert sum(s.false_events for s in scores) == 0
    delays = sorted(d for s in scores for d in s.onset_delays)
    assert delays[len(delays) // 2] <= 1


def test_folded_and_dense_grids_give_the_same_events(tmp_path: Path) -> None:
    """AS64500 blocked then silent for 40 days; AS64501 collapses for a day; AS64502 silent to the end."""
    from wallwatch.analysis.series.build import SeriesRequest

    hours = 60 * 24
    rows = _rows(lambda asn, h: asn == 64500 and 100 <= h < 200, hours=hours,
                 silent=lambda asn, h: (asn == 64500 and 200 <= h < 200 + 40 * 24)
                 or (asn == 64501 and 300 <= h < 330) or (asn == 64502 and h >= 50 * 24))
    connection = duckdb.connect()
    try:
        connection.register("verdicts", pa.Table.from_pylist(rows, schema=VERDICTS_SCHEMA))
        folded = build_series(connection, "hour")
        dense = build_series(connection, "hour", SeriesRequest(max_dense_gap=timedelta(days=1000)))
    finally:
        connection.close()
    assert folded.num_rows == dense.num_rows - (40 * 24 - 2 * 48) + 1
    assert sum(folded.column("n_buckets").to_pylist()) == dense.num_rows
    events = detect_events(folded)
    assert events == detect_events(dense)
    blocking = [e for e in events if e.type == BLOCKING]
    (block,) = blocking
    # Its data stopped for 40 days: the event ends with its evidence, and says so.
    assert (block.onset, block.end) == (_at(100), _at(200))
    assert block.evidence["closed_by_silence"] == [64500]
    collapses = sorted((n.probe_asn, n.onset, n.end) for e in events if e.type == VOLUME_COLLAPSE
                       for n in e.networks)
    assert (64501, _at(300), _at(330)) in collapses
    assert (64502, _at(50 * 24), None) in collapses


def test_an_event_read_back_from_its_log_snapshot_is_the_event(replay_data: Path) -> None:
    """The dashboard reads events from the lifecycle log: a snapshot read back is the detected event."""
    from wallwatch.analysis.events.grouping import Event
    from wallwatch.analysis.events.lifecycle import logged_events

    snapshots = logged_events(Store(replay_data))
    assert len(snapshots) == 4
    for snapshot in snapshots:
        event = Event.from_record(snapshot)
        assert event.to_record() == snapshot
        assert all(n.on_and_off for n in event.networks) == (event.feature == "text")
