"""What the dashboard reads from a data folder: series, logged events, verdicts and measurements.

The dashboard only reads. Series are the ones `wallwatch series` (or the live
pipeline) stored; events are the latest snapshot of each event in the
lifecycle log (`events.jsonl`), which is what `wallwatch events`, the Atom
feed and the live pipeline share, so every view of an event says the same
thing. All SQL runs on the store's DuckDB views with bound parameters.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import duckdb
import pyarrow as pa

from wallwatch.analysis.events.grouping import ANY, BLOCKING, THROTTLING, Event
from wallwatch.analysis.events.lifecycle import logged_events
from wallwatch.analysis.series.build import DAILY, HOURLY
from wallwatch.analysis.store import Store
from wallwatch.vocabulary import METHODS, THROTTLINGS, State, qualifier_plain

# Stronger first: what a row of several networks says when they disagree. Throttled (reachable,
# slowed) is weaker than any blocking and stronger than an outage or working.
_STATE_ORDER = (State.BLOCKED, State.BLOCKED_ON_AND_OFF, State.PARTIAL, State.THROTTLED, State.DOWN, State.OK,
                State.INSUFFICIENT)
BLOCKING_STATES = (State.BLOCKED, State.BLOCKED_ON_AND_OFF, State.PARTIAL)
# The type of detected event that explains each state (the detector runs on both: events/grouping.py).
EVENT_OF_STATE = {**{state: BLOCKING for state in BLOCKING_STATES}, State.THROTTLED: THROTTLING}
# What the overview's "show" filter can keep: the blocking states, or the throttled one.
STATE_FILTERS = {State.BLOCKED.value: BLOCKING_STATES, State.THROTTLED.value: (State.THROTTLED,)}
EVIDENCE_ROWS = 500


class NoSeries(LookupError):
    """The data folder has no series yet (run `wallwatch series`, or submit measurements)."""


@dataclass(frozen=True)
class Filters:
    """The filters of a page, as they appear in its URL (so a view can be shared and reloaded)."""

    cc: str | None = None
    service: str | None = None
    feature: str | None = None
    asn: int | None = None
    since: date | None = None
    until: date | None = None  # inclusive
    state: str | None = None  # overview: "blocked" (or "throttled") shows only what is blocked (or slowed)

    def query(self, **changes: Any) -> dict[str, str]:
        """Non-empty filters as query parameters, with `changes` applied (None drops one)."""
        values = {"cc": self.cc, "service": self.service, "feature": self.feature, "asn": self.asn,
                  "since": self.since, "until": self.until, "state": self.state, **changes}
        return {key: str(value) for key, value in values.items() if value not in (None, "")}

    def window(self) -> tuple[datetime | None, datetime | None]:
        """[since, until + 1 day) as datetimes, for series buckets."""
        start = datetime.combine(self.since, datetime.min.time()) if self.since else None
        stop = datetime.combine(self.until, datetime.min.time()) + timedelta(days=1) if self.until else None
        return start, stop


@dataclass
class NowRow:
    """One (country, service, feature): what its networks showed at their last measurement."""

    probe_cc: str
    service: str
    feature: str
    state: str
    method: list[str]
    since: datetime | None
    event: Event | None
    networks_blocked: list[str]  # in the ongoing event, or blocked (throttled) at their last measurement
    networks: list[str]
    last_measurement: datetime
    no_event: bool  # blocking (throttling) seen at the last measurement, but no event: too little evidence
    per_network: list[dict[str, Any]] = field(default_factory=list)

    @property
    def verb(self) -> str:
        """What `networks_blocked` were: 'throttled' on a throttled row, else 'blocked'."""
        return "throttled" if self.state == State.THROTTLED else "blocked"


def connect(store: Store) -> duckdb.DuckDBPyConnection:
    return store.connect()


def has_series(store: Store) -> bool:
    return HOURLY in store.datasets()


def events(store: Store) -> list[Event]:
    """Every logged event (latest snapshot), by onset."""
    return [Event.from_record(snapshot) for snapshot in logged_events(store)]


def country_spans(connection: duckdb.DuckDBPyConnection) -> dict[str, tuple[datetime, datetime]]:
    """Each country's first and last measured hour: the span its charts and its 'now' refer to."""
    rows = connection.execute(f"SELECT probe_cc, min(hour), max(hour) FROM {HOURLY} WHERE n_measurements > 0 "
                              "GROUP BY probe_cc ORDER BY probe_cc").fetchall()
    return {cc: (first, last) for cc, first, last in rows}


def series(connection: duckdb.DuckDBPyConnection, grain: str, filters: Filters) -> pa.Table:
    """Series rows at `grain` ('hour' or 'day') matching the filters, by series and time."""
    dataset, column = (HOURLY, "hour") if grain == "hour" else (DAILY, "day")
    clauses, params = _series_where(filters, column)
    sql = (f"SELECT * FROM {dataset} WHERE {' AND '.join(clauses)} "
           f"ORDER BY probe_cc, probe_asn, service, feature, {column}")
    table = connection.sql(sql, params=params).to_arrow_table()
    return table.drop_columns([c for c in ("date",) if c in table.column_names])


def _series_where(filters: Filters, column: str) -> tuple[list[str], list[Any]]:
    clauses, params = ["1 = 1"], []
    for name, value in (("probe_cc", filters.cc), ("service", filters.service), ("feature", filters.feature),
                        ("probe_asn", filters.asn)):
        if value is not None:
            clauses.append(f"{name} = ?")
            params.append(value)
    start, stop = filters.window()
    if start is not None:
        # A gap row starting before `since` may still cover it.
        clauses.append(f"{column} + (n_buckets - 1) * INTERVAL 1 {column.upper()} >= ?")
        params.append(start)
    if stop is not None:
        clauses.append(f"{column} < ?")
        params.append(stop)
    return clauses, params


def latest_states(connection: duckdb.DuckDBPyConnection, filters: Filters) -> list[dict[str, Any]]:
    """Per series: its last bucket with a state other than 'insufficient', and its last measurement."""
    clauses, params = _series_where(Filters(cc=filters.cc, service=filters.service, feature=filters.feature,
                                            asn=filters.asn), "hour")
    where = " AND ".join(clauses)
    columns = {row[0] for row in connection.execute(f"DESCRIBE {HOURLY}").fetchall()}
    sql = f"""
WITH decided AS (
  SELECT probe_cc, probe_asn, service, feature, max(hour) AS hour
  FROM {HOURLY} WHERE {where} AND state <> '{State.INSUFFICIENT.value}'
  GROUP BY probe_cc, probe_asn, service, feature
), measured AS (
  SELECT probe_cc, probe_asn, service, feature, max(hour) AS last_measurement,
         max(probe_network_name) AS probe_network_name
  FROM {HOURLY} WHERE {where} AND n_measurements > 0
  GROUP BY probe_cc, probe_asn, service, feature
)
SELECT m.probe_cc, m.probe_asn, m.probe_network_name, m.service, m.feature, m.last_measurement,
       s.hour, s.state, s.blocked_share, s.attempt_blocked_share, s.n_probes_decisive,
       {", ".join(f"s.blocked_{method}" for method in METHODS)},
       {", ".join(_throttled_column(kind, columns) for kind in THROTTLINGS)}
FROM measured AS m
LEFT JOIN decided AS d USING (probe_cc, probe_asn, service, feature)
LEFT JOIN {HOURLY} AS s
  ON s.probe_cc = d.probe_cc AND s.probe_asn = d.probe_asn AND s.service = d.service
 AND s.feature = d.feature AND s.hour = d.hour
ORDER BY m.probe_cc, m.service, m.feature, m.probe_asn
"""
    return connection.sql(sql, params=params + params).to_arrow_table().to_pylist()


def _throttled_column(kind: str, columns: set[str]) -> str:
    # Series built before throttling was a state have no throttled_<kind> columns: nothing was.
    return f"s.throttled_{kind}" if f"throttled_{kind}" in columns else f"0 AS throttled_{kind}"


def now_rows(connection: duckdb.DuckDBPyConnection, logged: Sequence[Event], filters: Filters) -> list[NowRow]:
    """What is blocked or slowed now, per (country, service, feature): 'now' is each series' last state.

    An ongoing event decides (its method or kind, its onset): a blocking event, else a throttling
    one. Without one, a network whose last state was blocked, partial or throttled is reported
    as such and flagged: no event of that type covers it, the detector had too little evidence."""
    from wallwatch.analysis.report.charts import cell_state, network_label

    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in latest_states(connection, filters):
        groups[(row["probe_cc"], row["service"], row["feature"])].append(row)
    ongoing = {(e.type, e.probe_cc, e.service, e.feature): e for e in logged
               if e.type in (BLOCKING, THROTTLING) and e.end is None}
    out = []
    for (cc, service, feature), rows in groups.items():
        per_network = []
        for row in rows:
            state = cell_state(row) if row["state"] is not None else State.INSUFFICIENT
            per_network.append({**row, "state": state, "label": network_label(row["probe_asn"],
                                                                              row["probe_network_name"])})
        asns = {n["probe_asn"] for n in per_network}
        # Each type's ongoing event, with the networks still in it (on a network's page, only that one).
        members: dict[str, set[int]] = {}
        events: dict[str, Event] = {}
        for kind in (BLOCKING, THROTTLING):
            found = ongoing.get((kind, cc, service, feature))
            inside = {n.probe_asn for n in found.networks if n.end is None} if found is not None else set()
            if found is not None and inside & asns:
                events[kind], members[kind] = found, inside
        event = events.get(BLOCKING) or events.get(THROTTLING)
        for network in per_network:
            kind = EVENT_OF_STATE.get(network["state"])
            network["in_event"] = network["probe_asn"] in (
                members.get(kind, set()) if kind is not None else set().union(*members.values()))
            # Blocking or throttling at its last measurement that no such event covers: too little evidence.
            network["no_event"] = kind is not None and not network["in_event"]
        state = min((n["state"] for n in per_network), key=_STATE_ORDER.index)
        if event is not None and event.type == BLOCKING:
            on_and_off = any(n.on_and_off and n.comprehensive_from is None for n in event.networks)
            partial = all(n.extent == "partial" for n in event.networks)
            state = State.PARTIAL if partial else State.BLOCKED_ON_AND_OFF if on_and_off else State.BLOCKED
        elif event is not None:
            state = min(state, State.THROTTLED, key=_STATE_ORDER.index)  # blocking seen since stays stronger
        finding = EVENT_OF_STATE.get(state)
        if event is not None and event.type != finding:
            event = events.get(finding) if finding is not None else event
        shown = [n for n in per_network if EVENT_OF_STATE.get(n["state"]) == finding or (
            event is not None and n["probe_asn"] in members.get(event.type, set()))] if finding else []
        if state == State.THROTTLED:
            seen = [k for k in THROTTLINGS if any(n.get(f"throttled_{k}") for n in shown)]
        else:
            seen = [m for m in METHODS if any(n.get(f"blocked_{m}") for n in per_network
                                              if n["state"] in BLOCKING_STATES)]
        out.append(NowRow(
            probe_cc=cc, service=service, feature=feature, state=state,
            method=list(event.methods) if event is not None else seen,
            since=event.onset if event is not None else None, event=event,
            networks_blocked=[n["label"] for n in shown], networks=[n["label"] for n in per_network],
            last_measurement=max(n["last_measurement"] for n in per_network),
            no_event=event is None and finding is not None, per_network=per_network,
        ))
    if filters.state in STATE_FILTERS:
        out = [row for row in out if row.state in STATE_FILTERS[filters.state]]
    return sorted(out, key=lambda r: (r.probe_cc, _STATE_ORDER.index(r.state), r.service, r.feature))


def now_table(rows: Sequence[NowRow]) -> pa.Table:
    """The overview's rows as a table (downloads), with the plain words next to each code."""
    return pa.Table.from_pylist([{
        "probe_cc": r.probe_cc, "service": r.service, "feature": r.feature, "state": str(r.state),
        "state_plain": State(r.state).plain, "method": ",".join(r.method),
        "method_plain": "; ".join(method_plain(m) for m in r.method),
        "since": r.since, "event_id": r.event.event_id if r.event else None,
        "networks_blocked": ", ".join(r.networks_blocked), "networks": ", ".join(r.networks),
        "last_measurement": r.last_measurement, "no_event_too_little_evidence": r.no_event,
    } for r in rows], schema=pa.schema([
        ("probe_cc", pa.string()), ("service", pa.string()), ("feature", pa.string()), ("state", pa.string()),
        ("state_plain", pa.string()), ("method", pa.string()), ("method_plain", pa.string()),
        ("since", pa.timestamp("us")), ("event_id", pa.string()), ("networks_blocked", pa.string()),
        ("networks", pa.string()), ("last_measurement", pa.timestamp("us")),
        ("no_event_too_little_evidence", pa.bool_()),
    ]))


def events_table(rows: Sequence[Event]) -> pa.Table:
    from wallwatch.analysis.events.grouping import events_table as flat

    return flat(rows)


def method_plain(method: str) -> str:
    """A blocking method's or a throttling kind's plain words (vocabulary.qualifier_plain)."""
    return qualifier_plain(method) or "another way (no rule names it)"


def matching_events(logged: Sequence[Event], filters: Filters, *, include_volume: bool = True) -> list[Event]:
    """Events of the filtered country/service/feature/network that overlap the filtered window."""
    start, stop = filters.window()
    out = []
    for event in logged:
        if filters.cc and event.probe_cc != filters.cc:
            continue
        if event.service == ANY:
            if not include_volume or filters.service or filters.feature:
                continue
        elif (filters.service and event.service != filters.service) or (
                filters.feature and event.feature != filters.feature):
            continue
        if filters.asn is not None and all(n.probe_asn != filters.asn for n in event.networks):
            continue
        if stop is not None and event.onset >= stop:
            continue
        if start is not None and event.end is not None and event.end <= start:
            continue
        out.append(event)
    return out


def networks(connection: duckdb.DuckDBPyConnection, cc: str) -> list[dict[str, Any]]:
    """A country's networks with their measurements and first/last measured hour."""
    sql = f"""
SELECT probe_asn, max(probe_network_name) AS probe_network_name, min(hour) AS first, max(hour) AS last,
       sum(n_measurements) AS n_measurements
FROM (SELECT probe_asn, probe_network_name, service, hour, max(n_measurements) AS n_measurements
      FROM {HOURLY} WHERE probe_cc = ? AND n_measurements > 0
      GROUP BY probe_asn, probe_network_name, service, hour) AS per_service
GROUP BY probe_asn ORDER BY probe_asn
"""
    return connection.sql(sql, params=[cc]).to_arrow_table().to_pylist()


def choices(connection: duckdb.DuckDBPyConnection) -> dict[str, list[Any]]:
    """Values the filter forms offer: countries, services, features (of the stored series)."""
    rows = connection.execute(f"SELECT DISTINCT probe_cc, service, feature FROM {HOURLY}").fetchall()
    return {"cc": sorted({r[0] for r in rows}), "service": sorted({r[1] for r in rows}),
            "feature": sorted({r[2] for r in rows})}


def event_evidence(connection: duckdb.DuckDBPyConnection, event: Event) -> tuple[pa.Table, int]:
    """The verdicts behind an event: every measurement of its networks during their blocked periods
    (blocked or not: the working ones show the on-and-off), the first EVIDENCE_ROWS, and how many."""
    if event.service == ANY:
        return pa.table({}), 0
    clauses, params = [], []
    for network in event.networks:
        for onset, end in network.periods or ((network.onset, network.end),):
            clauses.append("(probe_asn = ? AND measurement_start_time >= ?" + (
                " AND measurement_start_time < ?)" if end is not None else ")"))
            params += [network.probe_asn, onset] + ([end] if end is not None else [])
    if not clauses:
        return pa.table({}), 0
    where = (f"probe_cc = ? AND service = ? {'AND feature = ?' if event.feature != ANY else ''} "
             f"AND ({' OR '.join(clauses)})")
    head = [event.probe_cc, event.service] + ([event.feature] if event.feature != ANY else [])
    ((count,),) = connection.execute(f"SELECT count(*) FROM verdicts WHERE {where}", head + params).fetchall()
    table = connection.sql(
        "SELECT measurement_uid, measurement_start_time, probe_asn, probe_network_name, service, feature, target, "
        f"verdict, method, rule_id, confidence, rules_version FROM verdicts WHERE {where} "
        f"ORDER BY measurement_start_time, probe_asn, measurement_uid LIMIT {EVIDENCE_ROWS}", params=head + params,
    ).to_arrow_table()
    return table, int(count)


def measurement(connection: duckdb.DuckDBPyConnection, uid: str) -> dict[str, Any] | None:
    columns = ("measurement_uid", "measurement_start_time", "probe_cc", "probe_asn", "probe_network_name",
               "report_id", "input", "test_name", "test_version", "software_name", "software_version",
               "source", "ingested_at")
    names = {row[0] for row in connection.execute("DESCRIBE measurements").fetchall()}
    chosen = [c for c in columns if c in names]
    rows = connection.sql(f"SELECT {', '.join(chosen)} FROM measurements WHERE measurement_uid = ? LIMIT 1",
                          params=[uid]).to_arrow_table().to_pylist()
    return rows[0] if rows else None


def measurement_verdicts(connection: duckdb.DuckDBPyConnection, uid: str) -> pa.Table:
    return connection.sql(
        "SELECT measurement_uid, measurement_start_time, probe_cc, probe_asn, probe_network_name, service, feature, "
        "target, verdict, method, confidence, rule_id, rules_version, blocked_share FROM verdicts "
        "WHERE measurement_uid = ? ORDER BY service, feature, target", params=[uid]).to_arrow_table()


def events_citing(logged: Sequence[Event], verdict_rows: Sequence[Mapping[str, Any]]) -> list[Event]:
    """Events whose blocked periods hold one of these verdict rows (same country, service, feature, network)."""
    out = []
    for event in logged:
        for row in verdict_rows:
            if (event.probe_cc, event.service) != (row["probe_cc"], row["service"]) or (
                    event.feature not in (ANY, row["feature"])):
                continue
            moment = row["measurement_start_time"]
            if any(n.probe_asn == row["probe_asn"] and any(
                    onset <= moment and (end is None or moment < end)
                    for onset, end in n.periods or ((n.onset, n.end),)) for n in event.networks):
                out.append(event)
                break
    return out
