"""The append-only lifecycle log of events (`events.jsonl`).

Detection (`grouping.py`) is stateless over the window it is given; this log is
what persists. Entries are diffs against the log's replayed state: `opened`,
`network_joined`, `network_comprehensive`, `extended`, `closed`; so re-running
on the same data appends nothing, and a detected event that overlaps a logged
one of the same key keeps the logged id.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from wallwatch.analysis.events.grouping import EPOCH, EVENT_LOG, Event, GroupingParams, NetworkSpan, iso, parse_iso


@dataclass
class _Logged:
    event_id: str
    key: tuple[str, str, str, str]
    onset: datetime
    end: datetime | None
    networks: set[int]
    snapshot: dict[str, Any]


def replay_log(entries: Iterable[Mapping[str, Any]]) -> dict[str, _Logged]:
    """The state of every logged event after all entries, in log order."""
    state: dict[str, _Logged] = {}
    for entry in entries:
        snapshot = entry.get("event") or {}
        eid = entry.get("event_id")
        if not eid or not snapshot:
            continue
        key = (snapshot["type"], snapshot["probe_cc"], snapshot["service"], snapshot["feature"])
        logged = state.get(eid)
        if logged is None:
            logged = state[eid] = _Logged(eid, key, parse_iso(snapshot["onset"]) or EPOCH, None, set(), snapshot)
        logged.end = parse_iso(snapshot.get("end"))
        logged.networks |= {n["probe_asn"] for n in snapshot.get("networks", [])}
        logged.snapshot = snapshot
    return state


def _overlaps(a_on: datetime, a_end: datetime | None, b_on: datetime, b_end: datetime | None, gap: int) -> bool:
    slack = timedelta(hours=gap)
    far = datetime(9999, 1, 1)
    return a_on <= (b_end or far) + slack and b_on <= (a_end or far) + slack


def lifecycle_entries(events: Sequence[Event], log: Iterable[Mapping[str, Any]],
                      merge_gap_hours: int = GroupingParams.merge_gap_hours,
                      logged_at: datetime | None = None) -> tuple[list[Event], list[dict[str, Any]]]:
    """Reconcile detected events with the log: (events under their logged ids, new entries to append).

    A detected event that overlaps a logged one of the same (type, country,
    service, feature) *is* that event, even if later data moved its onset, so
    re-running extends rather than duplicates. Only differences become entries.
    """
    state = replay_log(log)
    stamp = iso(logged_at or datetime.now(UTC).replace(tzinfo=None, microsecond=0))
    claimed: set[str] = set()
    reconciled, entries = [], []
    for event in events:
        key = (event.type, event.probe_cc, event.service, event.feature)
        match = next((s for s in state.values() if s.key == key and s.event_id not in claimed
                      and _overlaps(s.onset, s.end, event.onset, event.end, merge_gap_hours)), None)
        if match is not None:
            event = replace(event, event_id=match.event_id)
        claimed.add(event.event_id)
        reconciled.append(event)
        snapshot = event.to_record()

        def entry(kind: str, **detail: Any) -> None:
            entries.append({"entry": kind, "event_id": event.event_id, "logged_at": stamp, **detail,
                            "event": snapshot})

        if match is None:
            entry("opened", onset=snapshot["onset"])
            for network in _newly_comprehensive(event, {}):
                entry("network_comprehensive", probe_asn=network.probe_asn, at=iso(network.comprehensive_from))
            if event.end is not None:
                entry("closed", end=snapshot["end"])
            continue
        for network in event.networks:
            if network.probe_asn not in match.networks:
                entry("network_joined", probe_asn=network.probe_asn, onset=iso(network.onset))
        for network in _newly_comprehensive(event, match.snapshot):
            entry("network_comprehensive", probe_asn=network.probe_asn, at=iso(network.comprehensive_from))
        if match.end is not None and (event.end is None or event.end > match.end):
            entry("extended", previous_end=iso(match.end), end=snapshot["end"])
        elif match.end is None and event.end is not None:
            entry("closed", end=snapshot["end"])
    return reconciled, entries


def _newly_comprehensive(event: Event, logged: Mapping[str, Any]) -> list[NetworkSpan]:
    """Networks whose on-and-off blocking has become comprehensive since the logged snapshot
    (the moment that turned WhatsApp text in China from "on and off" to "blocked", 25 Sept 2017)."""
    before = {n.get("probe_asn"): n for n in logged.get("networks") or ()}
    return [n for n in event.networks
            if n.on_and_off and n.comprehensive_from is not None
            and not (before.get(n.probe_asn) or {}).get("comprehensive_from")]


def record_events(store: Any, events: Sequence[Event], merge_gap_hours: int = GroupingParams.merge_gap_hours,
                  logged_at: datetime | None = None) -> tuple[list[Event], list[dict[str, Any]]]:
    """Append the lifecycle entries `events` imply to the store's `events.jsonl`; return both."""
    reconciled, entries = lifecycle_entries(events, store.read_jsonl(EVENT_LOG), merge_gap_hours, logged_at)
    store.append_jsonl(EVENT_LOG, entries)
    return reconciled, entries


def logged_events(store: Any) -> list[dict[str, Any]]:
    """Latest snapshot of every event in the log, by onset."""
    state = replay_log(store.read_jsonl(EVENT_LOG))
    return sorted((s.snapshot for s in state.values()), key=lambda r: (r["onset"], r["probe_cc"], r["service"]))
