"""Events: per-series change points grouped into one event per country and service (and feature).

OONI's detector emits one change point per (country, ASN, domain, signal), so a
national block is "up to ~1800 uncorrelated changepoints" (ooni/data
docs/implementation-plan.md §3.7). Here the detector (`detector.py`) runs per
series on the dense hourly grid (`series.py`), and its segments are grouped:

* per network, segments closer than `merge_gap_hours` are one period list, so
  on-and-off blocking (Iran's 2022 mobile "digital curfew", blocked every
  evening for weeks) stays one event;
* across networks of a (country, service[, feature]), a network whose block
  begins before the event has been over for `merge_gap_hours` joins it, so a
  national block that grows ISP by ISP is one event whose `networks` carry
  each one's own onset ("began Wednesday, comprehensive by Monday").

A sudden collapse of a network's measurement volume is its own event type,
grouped per country with service and feature "*".

Throttling is its own event type too (`throttling`): the same detector, run
on the share of decisive probes that saw the feature slowed (the series'
`throttled_weight`), grouped the same way, its `methods` the kinds of
throttling seen (rate, latency, jitter). A throttled measurement is not a
blocked one (it worked, slowly), so a slowed service never opens a blocking
event, and a blocked one never a throttling event.

The lifecycle of each event goes to an append-only log (`events.jsonl`):
`opened`, `network_joined`, `extended`, `closed`. Detection is stateless over
the window it is given; the log is what persists, and re-running on the same
data appends nothing (entries are diffs against the log's replayed state).
"""

from __future__ import annotations

import bisect
import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from wallwatch.analysis.events.detector import (
    DETECTOR_VERSION,
    BlockingParams,
    HourCounts,
    HourVolume,
    Segment,
    VolumeParams,
    detect_blocking,
    detect_volume_collapse,
)
from wallwatch.analysis.tables import run_bounds
from wallwatch.vocabulary import METHODS, THROTTLINGS

EVENT_LOG = "events"
BLOCKING = "blocking"
THROTTLING = "throttling"
VOLUME_COLLAPSE = "volume_collapse"
# The verdict each detected state counts (the rule evidence of its events).
STATE_VERDICTS = {BLOCKING: "blocked", THROTTLING: "throttled"}
ANY = "*"
EPOCH = datetime(1970, 1, 1)
_MAX_EXAMPLES = 5
# A blocked hour whose blocked measurements let more than a tenth of their attempts
# through is "on and off": the censor fires on some flows only (a rule with a
# probability; the GFW's WhatsApp text blocking of 20-24 September 2017).
COMPREHENSIVE_FROM_SHARE = 0.9
# An hour is a blocked hour when at least half its decisive probes saw blocking.
BLOCKED_HOUR_SHARE = 0.5
# A network whose blocked hours block less than this share of measurements is blocked *partially*
# (a censor dropping 30% of flows, a rollout over part of an ISP): "partial, N% of measurements",
# never "comprehensive". On-and-off blocking that comes and goes by the hour is told apart by its
# blocked hours being (nearly) fully blocked while others are clear.
PARTIAL_BELOW_SHARE = 0.8
# Hour-by-hour on-and-off blocking is "comprehensive" only from the start of a final run of blocked
# hours spanning at least this many hours (a few blocked hours in a row are one more "on").
MIN_COMPREHENSIVE_RUN_HOURS = 12
EXTENTS = ("comprehensive", "on_and_off", "partial")


def describe_extent(network: Mapping[str, Any]) -> str:
    """A network's part of an event in words (the event table, the feed and the report all say this)."""
    extent = network.get("extent") or ("on_and_off" if network.get("on_and_off") else "comprehensive")
    share = network.get("blocked_share_of_measurements")
    if extent == "partial":
        return f"partial, {share:.0%} of measurements" if share is not None else "partial"
    if extent == "comprehensive":
        return "comprehensive"
    hours, blocked = network.get("hours_with_data"), network.get("blocked_hours")
    text = "on and off"
    if hours and blocked is not None and blocked < hours:
        text += f", blocked {blocked} of {hours} hours ({blocked / hours:.0%})"
    else:
        text += ", some attempts got through"
    until = network.get("comprehensive_from")
    if until:
        moment = parse_iso(until) if isinstance(until, str) else until
        # Words for a reader: "Mon 25 Sep 2017 12:00 UTC", the day of the week as the press gave it.
        text += f", comprehensive from {moment:%a %d %b %Y %H:%M} UTC"
    return text


@dataclass(frozen=True)
class GroupingParams:
    """How per-series segments become events."""

    # Segments of one network this close are one on-and-off period; a network
    # whose block begins this soon after the event's last block joins it.
    # 24 h keeps a daily on/off pattern (evening curfews) one event.
    merge_gap_hours: int = 24
    # One event per (country, service, feature); False groups features too.
    by_feature: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DetectionParams:
    blocking: BlockingParams = BlockingParams()
    volume: VolumeParams = VolumeParams()
    grouping: GroupingParams = GroupingParams()

    def as_dict(self) -> dict[str, Any]:
        return {"blocking": self.blocking.as_dict(), "volume": self.volume.as_dict(),
                "grouping": self.grouping.as_dict()}


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


@dataclass(frozen=True)
class NetworkSpan:
    """One network's part in an event."""

    probe_asn: int
    probe_network_name: str | None
    onset: datetime
    end: datetime | None  # exclusive; None while ongoing
    alarm: datetime  # when a live run would have raised it
    peak_blocked_share: float
    periods: tuple[tuple[datetime, datetime | None], ...]
    feature: str | None = None  # set when features are grouped together
    # Some blocked measurements let attempts through (see COMPREHENSIVE_FROM_SHARE) ...
    on_and_off: bool = False
    # ... and from when every blocked measurement blocked (nearly) every attempt, to the
    # network's last blocked hour; None while the last blocked hour is still on and off.
    comprehensive_from: datetime | None = None
    # comprehensive | on_and_off (by the hour or by the attempt) | partial (see PARTIAL_BELOW_SHARE).
    extent: str = "comprehensive"
    blocked_share_of_measurements: float | None = None  # over the network's hours with data in the event
    hours_with_data: int | None = None
    blocked_hours: int | None = None  # hours with at least BLOCKED_HOUR_SHARE of probes blocked

    @property
    def extent_text(self) -> str:
        return describe_extent(self.to_record())

    def to_record(self) -> dict[str, Any]:
        return {
            "probe_asn": self.probe_asn,
            "probe_network_name": self.probe_network_name,
            "onset": iso(self.onset),
            "end": iso(self.end),
            "alarm": iso(self.alarm),
            "peak_blocked_share": self.peak_blocked_share,
            "periods": [[iso(start), iso(stop)] for start, stop in self.periods],
            "on_and_off": self.on_and_off,
            "comprehensive_from": iso(self.comprehensive_from),
            "extent": self.extent,
            "blocked_share_of_measurements": self.blocked_share_of_measurements,
            "hours_with_data": self.hours_with_data,
            "blocked_hours": self.blocked_hours,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> NetworkSpan:
        """The inverse of `to_record` (a snapshot in the event log)."""
        return cls(
            probe_asn=int(record["probe_asn"]),
            probe_network_name=record.get("probe_network_name"),
            onset=_parse(record["onset"]),
            end=parse_iso(record.get("end")),
            alarm=parse_iso(record.get("alarm")) or _parse(record["onset"]),
            peak_blocked_share=float(record.get("peak_blocked_share") or 0.0),
            periods=tuple((_parse(start), parse_iso(stop)) for start, stop in record.get("periods") or ()),
            on_and_off=bool(record.get("on_and_off")),
            comprehensive_from=parse_iso(record.get("comprehensive_from")),
            # Snapshots logged before extents existed read as the extent they described.
            extent=record.get("extent") or ("on_and_off" if record.get("on_and_off") else "comprehensive"),
            blocked_share_of_measurements=_float_or_none(record.get("blocked_share_of_measurements")),
            hours_with_data=_int_or_none(record.get("hours_with_data")),
            blocked_hours=_int_or_none(record.get("blocked_hours")),
        )


@dataclass(frozen=True)
class Event:
    event_id: str
    type: str
    probe_cc: str
    service: str
    feature: str
    onset: datetime
    end: datetime | None
    first_alarm: datetime
    networks: tuple[NetworkSpan, ...]
    methods: Mapping[str, int]  # blocking method (throttling kind) -> measurements in the event
    peak_blocked_share: float
    evidence: Mapping[str, Any]
    detector_version: str = DETECTOR_VERSION
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ongoing(self) -> bool:
        return self.end is None

    def to_record(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "type": self.type,
            "probe_cc": self.probe_cc,
            "service": self.service,
            "feature": self.feature,
            "method": sorted(self.methods, key=lambda m: -self.methods[m]),
            "methods": dict(self.methods),
            "onset": iso(self.onset),
            "end": iso(self.end),
            "first_alarm": iso(self.first_alarm),
            "networks": [network.to_record() for network in self.networks],
            "peak_blocked_share": self.peak_blocked_share,
            "evidence": dict(self.evidence),
            "detector_version": self.detector_version,
            "params": dict(self.params),
        }


    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Event:
        """The inverse of `to_record`: an event from its snapshot in the lifecycle log, so that
        readers of the log (the dashboard, the feed) see the same `Event` detection made."""
        return cls(
            event_id=record["event_id"],
            type=record["type"],
            probe_cc=record["probe_cc"],
            service=record["service"],
            feature=record["feature"],
            onset=_parse(record["onset"]),
            end=parse_iso(record.get("end")),
            first_alarm=parse_iso(record.get("first_alarm")) or _parse(record["onset"]),
            networks=tuple(NetworkSpan.from_record(n) for n in record.get("networks") or ()),
            methods=dict(record.get("methods") or {}),
            peak_blocked_share=float(record.get("peak_blocked_share") or 0.0),
            evidence=dict(record.get("evidence") or {}),
            detector_version=record.get("detector_version") or DETECTOR_VERSION,
            params=dict(record.get("params") or {}),
        )


def _parse(text: str) -> datetime:
    moment = parse_iso(text)
    if moment is None:
        raise ValueError("an event record needs its onset")
    return moment


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


def parse_iso(text: str | None) -> datetime | None:
    if text is None:
        return None
    return datetime.fromisoformat(text.rstrip("Z")).replace(tzinfo=None)


def to_hour(moment: datetime) -> int:
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return int((moment - EPOCH).total_seconds()) // 3600


def from_hour(hour: int) -> datetime:
    return EPOCH + timedelta(hours=hour)


def event_id(probe_cc: str, service: str, feature: str, event_type: str, onset: datetime) -> str:
    """Stable id: the same event found again from the same data gets the same id."""
    key = "|".join((probe_cc, service, feature, event_type, iso(onset) or ""))
    return hashlib.sha256(key.encode()).hexdigest()[:16]


# -- per-series detection ------------------------------------------------------


@dataclass
class _Series:
    """One series: the lists the (pure Python) detector reads, and its rows for evidence."""

    probe_cc: str
    probe_asn: int
    service: str
    feature: str
    network_name: str | None = None
    hours: list[int] = field(default_factory=list)
    decisive: list[int] = field(default_factory=list)
    blocked: list[float] = field(default_factory=list)
    throttled: list[float] = field(default_factory=list)
    measurements: list[int] = field(default_factory=list)
    rows: pa.Table | None = None
    covered_until: int | None = None  # last hour the grid covers (a trailing gap row reaches past its own hour)


@dataclass(frozen=True)
class _Found:
    """A detector segment with the series it came from and its evidence."""

    series: _Series
    segment: Segment
    methods: Mapping[str, int]
    n_measurements: int
    n_blocked: int
    examples: tuple[str, ...]
    # (hour, share of attempts blocked) of the segment's hours with blocked measurements.
    attempt_shares: tuple[tuple[int, float], ...] = ()


_METHOD_COLUMNS = tuple(f"blocked_{m}" for m in (*METHODS, "other"))
_KIND_COLUMNS = tuple(f"throttled_{k}" for k in THROTTLINGS)
_NEEDED = ("probe_cc", "probe_asn", "probe_network_name", "service", "feature", "hour", "n_probes_decisive",
           "blocked_weight", "n_measurements", "n_blocked", "example_blocked_uid", *_METHOD_COLUMNS)
# Columns of series built before throttling was a state: filled in as "nothing throttled".
_THROTTLING_COLUMNS: tuple[tuple[str, pa.DataType], ...] = (
    ("throttled_weight", pa.float64()), ("n_throttled", pa.int32()), ("example_throttled_uid", pa.string()),
    *((column, pa.int32()) for column in _KIND_COLUMNS))


@dataclass(frozen=True)
class _State:
    """What one event type detects on a series: its weight, count, per-method and example columns."""

    event_type: str
    weight: str  # the _Series list the detector reads
    count: str
    methods: tuple[str, ...]
    prefix: str
    example: str


_STATES = (
    _State(BLOCKING, "blocked", "n_blocked", _METHOD_COLUMNS, "blocked_", "example_blocked_uid"),
    _State(THROTTLING, "throttled", "n_throttled", _KIND_COLUMNS, "throttled_", "example_throttled_uid"),
)


def _series_of(hourly: pa.Table) -> list[_Series]:
    missing = [name for name in _NEEDED if name not in hourly.column_names]
    if missing:
        raise ValueError(f"hourly series lacks columns {missing}")
    if "n_buckets" not in hourly.column_names:  # series stored before gap rows existed are fully dense
        hourly = hourly.append_column("n_buckets", pa.array([1] * hourly.num_rows, pa.int32()))
    if "attempt_blocked_share" not in hourly.column_names:  # series built before the column existed
        hourly = hourly.append_column("attempt_blocked_share", pa.nulls(hourly.num_rows, pa.float64()))
    for column, kind in _THROTTLING_COLUMNS:
        if column not in hourly.column_names:
            empty = pa.nulls(hourly.num_rows, kind) if column.startswith("example") else pa.array(
                [0] * hourly.num_rows, kind)
            hourly = hourly.append_column(column, empty)
    extra = ["n_buckets", "attempt_blocked_share", *(column for column, _ in _THROTTLING_COLUMNS)]
    hourly = hourly.select([*_NEEDED, *extra]).sort_by(
        [("probe_cc", "ascending"), ("probe_asn", "ascending"), ("service", "ascending"),
         ("feature", "ascending"), ("hour", "ascending")])
    spans = hourly.column("n_buckets").fill_null(1).to_pylist()
    hour_numbers = pc.divide(hourly.column("hour").cast(pa.timestamp("us")).cast(pa.int64()), 3_600_000_000)
    hours = hour_numbers.to_pylist()
    decisive = hourly.column("n_probes_decisive").to_pylist()
    blocked = hourly.column("blocked_weight").to_pylist()
    throttled = hourly.column("throttled_weight").fill_null(0.0).to_pylist()
    measurements = hourly.column("n_measurements").to_pylist()
    keys = hourly.select(["probe_cc", "probe_asn", "service", "feature"])
    out = []
    for lo, hi in run_bounds(keys, keys.column_names):
        first = keys.slice(lo, 1).to_pylist()[0]
        names = [n for n in hourly.column("probe_network_name").slice(lo, hi - lo).to_pylist() if n]
        out.append(_Series(first["probe_cc"], first["probe_asn"], first["service"], first["feature"],
                           names[0] if names else None, hours[lo:hi], decisive[lo:hi], blocked[lo:hi],
                           throttled[lo:hi], measurements[lo:hi], hourly.slice(lo, hi - lo),
                           hours[hi - 1] + spans[hi - 1] - 1))
    return out


def _state_segments(series: _Series, params: BlockingParams, state: _State = _STATES[0]) -> list[_Found]:
    """Segments of one state (blocked, throttled) of one series: the detector on that state's weights."""
    weights = getattr(series, state.weight)
    if not any(weights):
        return []
    samples = [HourCounts(h, n, k) for h, n, k in zip(series.hours, series.decisive, weights, strict=True)]
    found = []
    for segment in detect_blocking(samples, params):
        lo = bisect.bisect_left(series.hours, segment.onset)
        hi = bisect.bisect_left(series.hours, segment.end) if segment.end is not None else len(series.hours)
        rows = series.rows.slice(lo, hi - lo) if series.rows is not None else None
        methods: dict[str, int] = {}
        examples: tuple[str, ...] = ()
        n_state = 0
        if rows is not None and rows.num_rows:
            for column in state.methods:
                total = pc.sum(rows.column(column)).as_py() or 0
                if total:
                    methods[column.removeprefix(state.prefix)] = total
            n_state = pc.sum(rows.column(state.count)).as_py() or 0
            examples = tuple(uid for uid in rows.column(state.example).to_pylist() if uid)[:_MAX_EXAMPLES]
        shares = _attempt_shares(series.hours[lo:hi], rows) if state.event_type == BLOCKING else ()
        found.append(_Found(series, segment, methods, sum(series.measurements[lo:hi]), n_state, examples, shares))
    return found


def _attempt_shares(hours: Sequence[int], rows: pa.Table | None) -> tuple[tuple[int, float], ...]:
    if rows is None or not rows.num_rows:
        return ()
    shares = rows.column("attempt_blocked_share").to_pylist()
    return tuple((hour, share) for hour, share in zip(hours, shares, strict=True) if share is not None)


@dataclass(frozen=True)
class _Extent:
    extent: str
    on_and_off: bool
    comprehensive_from: int | None
    share: float | None
    hours: int
    blocked_hours: int


def _extent(items: Sequence[_Found], periods: Sequence[tuple[int, int | None]]) -> _Extent:
    """How a network was blocked over its periods, hour by hour and attempt by attempt.

    Three readings of the same hours: the share of its measurements blocked (partial blocking keeps
    it low in every hour), the hours blocked among those with data (blocking by the hour leaves clear
    hours between fully blocked ones), and the share of attempts within blocked measurements (a
    censor firing on some flows: `_on_and_off`)."""
    # The whole span, clear hours between its periods included: they are the "off" of on and off.
    first = periods[0][0]
    stops = [stop for _, stop in periods]
    last = None if None in stops else max(stop for stop in stops if stop is not None)
    per_hour: dict[int, list[float]] = {}
    for item in items:
        series = item.series
        for hour, n, k in zip(series.hours, series.decisive, series.blocked, strict=True):
            if n and first <= hour and (last is None or hour < last):
                counts = per_hour.setdefault(hour, [0, 0.0])
                counts[0] += n
                counts[1] += min(k, n)
    attempt_on_off, attempt_from = _on_and_off([pair for item in items for pair in item.attempt_shares])
    attempts = dict(pair for item in items for pair in item.attempt_shares)
    hours = sorted(per_hour)
    total_n = sum(per_hour[h][0] for h in hours)
    share = round(sum(per_hour[h][1] for h in hours) / total_n, 4) if total_n else None
    blocked = [h for h in hours if per_hour[h][1] / per_hour[h][0] >= BLOCKED_HOUR_SHARE]
    touched = [h for h in hours if per_hour[h][1] > 0]
    when_blocked = (sum(per_hour[h][1] for h in touched) / sum(per_hour[h][0] for h in touched)) if touched else 0.0
    if not hours:  # no decisive data (should not happen inside a segment): the attempt reading alone
        return _Extent("on_and_off" if attempt_on_off else "comprehensive", attempt_on_off, attempt_from, share,
                       0, 0)
    if when_blocked < PARTIAL_BELOW_SHARE:
        return _Extent("partial", False, None, share, len(hours), len(blocked))
    # The final run of comprehensive hours (blocked, and blocking every attempt where known).
    run_start: int | None = None
    last_blocked = blocked[-1] if blocked else None
    for hour in reversed(hours):
        if last_blocked is None or hour > last_blocked:
            continue
        full = per_hour[hour][1] / per_hour[hour][0] >= BLOCKED_HOUR_SHARE and attempts.get(
            hour, 1.0) >= COMPREHENSIVE_FROM_SHARE
        if not full:
            break
        run_start = hour
    whole = run_start == hours[0] and last_blocked == hours[-1]
    if whole and not attempt_on_off:
        return _Extent("comprehensive", False, run_start, share, len(hours), len(blocked))
    # The run's span in hours, not its count of hours with data: a probe that measures once a day
    # (a scenario replay, a daily monitor) has one hour with data a day, and five blocked days in a
    # row are comprehensive blocking, while six blocked hours between clear ones are one more "on".
    run_hours = (last_blocked - run_start + 1) if run_start is not None and last_blocked is not None else 0
    comprehensive_from = run_start if run_start is not None and (whole or run_hours >= MIN_COMPREHENSIVE_RUN_HOURS) \
        else None
    return _Extent("on_and_off", True, comprehensive_from, share, len(hours), len(blocked))


def _on_and_off(shares: Sequence[tuple[int, float]]) -> tuple[bool, int | None]:
    """Whether any blocked hour let attempts through, and the first hour of the final run of
    comprehensive ones (None when the last blocked hour is on and off, or nothing is known)."""
    ordered = sorted(shares)
    on_and_off = any(share < COMPREHENSIVE_FROM_SHARE for _, share in ordered)
    comprehensive_from = None
    for hour, share in reversed(ordered):
        if share < COMPREHENSIVE_FROM_SHARE:
            break
        comprehensive_from = hour
    return on_and_off, comprehensive_from


def _volume_segments(series_list: Sequence[_Series], params: VolumeParams) -> list[_Found]:
    """Volume per network and hour: per service, the most-measured feature; summed over services.

    A measurement covers several features of its service, so summing features
    would count it several times.
    """
    per_network: dict[tuple[str, int], dict[str, _Series]] = defaultdict(dict)
    volume: dict[tuple[str, int], dict[int, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
    for series in series_list:
        key = (series.probe_cc, series.probe_asn)
        per_network[key].setdefault(series.service, series)
        per_hour = volume[key]
        for hour, count in zip(series.hours, series.measurements, strict=True):
            by_service = per_hour[hour]
            by_service[series.service] = max(by_service.get(series.service, 0), count)
        if series.covered_until is not None:
            # A trailing gap row covers hours after its own: the silence runs to the window's end.
            per_hour[series.covered_until].setdefault(series.service, 0)
    found = []
    for key, per_hour in volume.items():
        # Absent hours (inside gap rows) are silent hours; the detector fills them in.
        samples = [HourVolume(hour, sum(per_hour[hour].values())) for hour in sorted(per_hour)]
        network = next(iter(per_network[key].values()))
        proxy = _Series(key[0], key[1], ANY, ANY, network.network_name)
        for segment in detect_volume_collapse(samples, params):
            stop = segment.end if segment.end is not None else samples[-1].hour + 1
            during = sum(s.n_measurements for s in samples if segment.onset <= s.hour < stop)
            found.append(_Found(proxy, segment, {}, during, 0, ()))
    return found


# -- grouping ----------------------------------------------------------------------


def detect_events(hourly: pa.Table, params: DetectionParams = DetectionParams(),
                  progress: Callable[[int, int], None] | None = None) -> list[Event]:
    """Series -> detector -> grouping: every event in the hourly grid, sorted by onset.

    `progress(done, total)` is called after each series (for a progress bar)."""
    series_list = _series_of(hourly)
    groups: dict[tuple[str, str, str, str], list[_Found]] = defaultdict(list)
    for index, series in enumerate(series_list, 1):
        feature = series.feature if params.grouping.by_feature else ANY
        for state in _STATES:
            for found in _state_segments(series, params.blocking, state):
                groups[(state.event_type, series.probe_cc, series.service, feature)].append(found)
        if progress is not None:
            progress(index, len(series_list))
    for found in _volume_segments(series_list, params.volume):
        groups[(VOLUME_COLLAPSE, found.series.probe_cc, ANY, ANY)].append(found)
    events = []
    for (event_type, cc, service, feature), found in groups.items():
        for cluster in _clusters(found, params.grouping.merge_gap_hours):
            events.append(_event(event_type, cc, service, feature, cluster, params))
    return sorted(events, key=lambda e: (e.onset, e.probe_cc, e.service, e.feature, e.type))


def _clusters(found: list[_Found], gap: int) -> list[list[_Found]]:
    """Segments whose start falls within `gap` hours of the cluster's latest end, chained."""
    clusters: list[list[_Found]] = []
    reach: float = float("-inf")
    for item in sorted(found, key=lambda f: (f.segment.onset, f.series.probe_asn)):
        if clusters and item.segment.onset <= reach + gap:
            clusters[-1].append(item)
        else:
            clusters.append([item])
            reach = float("-inf")
        end = item.segment.end if item.segment.end is not None else float("inf")
        reach = max(reach, end)
    return clusters


def _periods(segments: Iterable[Segment]) -> list[tuple[int, int | None]]:
    """A network's blocked periods: its segments, overlapping ones (other features) united.

    Gaps are kept even when shorter than the merge tolerance, so the periods
    show the on-and-off pattern the event spans.
    """
    periods: list[list[int | None]] = []
    for segment in sorted(segments, key=lambda s: s.onset):
        last_end = periods[-1][1] if periods else None
        if periods and (last_end is None or segment.onset <= last_end):
            if last_end is not None:
                periods[-1][1] = None if segment.end is None else max(last_end, segment.end)
        else:
            periods.append([segment.onset, segment.end])
    return [(int(start), stop) for start, stop in periods]  # type: ignore[arg-type]


def _event(event_type: str, cc: str, service: str, feature: str, cluster: list[_Found],
           params: DetectionParams) -> Event:
    by_asn: dict[int, list[_Found]] = defaultdict(list)
    for item in cluster:
        by_asn[item.series.probe_asn].append(item)
    networks = []
    for asn, items in by_asn.items():
        periods = _periods(i.segment for i in items)
        ends = [stop for _, stop in periods]
        extent = _extent(items, periods) if event_type == BLOCKING else _Extent("comprehensive", False, None,
                                                                                None, 0, 0)
        networks.append(NetworkSpan(
            probe_asn=asn,
            probe_network_name=items[0].series.network_name,
            onset=from_hour(periods[0][0]),
            end=None if None in ends else from_hour(max(e for e in ends if e is not None)),
            alarm=from_hour(min(i.segment.alarm for i in items)),
            peak_blocked_share=max(i.segment.peak_share for i in items),
            periods=tuple((from_hour(a), None if b is None else from_hour(b)) for a, b in periods),
            feature=None if params.grouping.by_feature else ",".join(sorted({i.series.feature for i in items})),
            on_and_off=extent.on_and_off,
            comprehensive_from=None if extent.comprehensive_from is None else from_hour(extent.comprehensive_from),
            extent=extent.extent,
            blocked_share_of_measurements=extent.share if event_type == BLOCKING else None,
            hours_with_data=extent.hours if event_type == BLOCKING else None,
            blocked_hours=extent.blocked_hours if event_type == BLOCKING else None,
        ))
    networks.sort(key=lambda n: (n.onset, n.probe_asn))
    onset = networks[0].onset
    ends = [n.end for n in networks]
    methods: dict[str, int] = defaultdict(int)
    for item in cluster:
        for method, count in item.methods.items():
            methods[method] += count
    examples: list[str] = []
    for item in sorted(cluster, key=lambda f: f.segment.onset):
        examples.extend(uid for uid in item.examples if uid not in examples)
    evidence: dict[str, Any] = {
        "n_networks": len(networks),
        "n_series": len({(i.series.probe_asn, i.series.feature) for i in cluster}),
        "n_measurements": sum(i.n_measurements for i in cluster),
        f"n_{STATE_VERDICTS.get(event_type, 'blocked')}_measurements": sum(i.n_blocked for i in cluster),
        "n_probe_hours": sum(i.segment.n_probe_hours for i in cluster),
        "n_blocked_probe_hours": sum(i.segment.n_blocked_probe_hours for i in cluster),
        "example_measurement_uids": examples[:_MAX_EXAMPLES],
        "rule_ids": [],
        "last_seen": iso(from_hour(max(i.segment.last_seen for i in cluster))),
        # Networks whose part ended because their data stopped for weeks (end = end of evidence).
        "closed_by_silence": sorted({i.series.probe_asn for i in cluster if i.segment.extra.get("closed_by_silence")}),
    }
    if event_type == VOLUME_COLLAPSE:
        evidence["baseline_per_hour"] = {str(i.series.probe_asn): i.segment.extra.get("baseline_per_hour")
                                         for i in cluster}
    detector_params = params.volume.as_dict() if event_type == VOLUME_COLLAPSE else params.blocking.as_dict()
    return Event(
        event_id=event_id(cc, service, feature, event_type, onset),
        type=event_type,
        probe_cc=cc,
        service=service,
        feature=feature,
        onset=onset,
        end=None if None in ends else max(e for e in ends if e is not None),
        first_alarm=min(n.alarm for n in networks),
        networks=tuple(networks),
        methods=dict(sorted(methods.items(), key=lambda kv: -kv[1])),
        peak_blocked_share=max(n.peak_blocked_share for n in networks),
        evidence=evidence,
        params={**detector_params, **params.grouping.as_dict()},
    )


# -- evidence from the verdicts ------------------------------------------------------


def add_rule_evidence(connection: Any, events: Sequence[Event]) -> list[Event]:
    """Fill `evidence.rule_ids` (rule -> blocked verdicts) from the `verdicts` view of a store connection."""
    from wallwatch.analysis.events.queries import rule_counts_sql

    enriched = []
    for event in events:
        if event.type not in STATE_VERDICTS:
            enriched.append(event)
            continue
        rules: dict[str, int] = {}
        for network in event.networks:
            end = network.end or datetime(9999, 1, 1)
            params = [event.probe_cc, network.probe_asn, event.service, network.onset, end, STATE_VERDICTS[event.type]]
            sql = rule_counts_sql(by_feature=event.feature != ANY)
            if event.feature != ANY:
                params.append(event.feature)
            for rule_id, count in connection.execute(sql, params).fetchall():
                rules[rule_id or "?"] = rules.get(rule_id or "?", 0) + int(count)
        evidence = {**event.evidence, "rule_ids": sorted(rules, key=lambda r: -rules[r]), "rule_counts": rules}
        enriched.append(replace(event, evidence=evidence))
    return enriched


def events_table(events: Sequence[Event]) -> pa.Table:
    """A flat table for CSV/Parquet export: nested fields as JSON text."""
    import orjson

    rows = []
    for event in events:
        record = event.to_record()
        rows.append({
            "event_id": record["event_id"], "type": record["type"], "probe_cc": record["probe_cc"],
            "service": record["service"], "feature": record["feature"], "method": ",".join(record["method"]),
            "onset": event.onset, "end": event.end, "first_alarm": event.first_alarm,
            "networks": ",".join(str(n.probe_asn) for n in event.networks),
            "n_networks": len(event.networks), "peak_blocked_share": event.peak_blocked_share,
            "networks_json": orjson.dumps(record["networks"]).decode(),
            "evidence_json": orjson.dumps(record["evidence"]).decode(),
            "detector_version": event.detector_version,
        })
    schema = pa.schema([
        ("event_id", pa.string()), ("type", pa.string()), ("probe_cc", pa.string()), ("service", pa.string()),
        ("feature", pa.string()), ("method", pa.string()), ("onset", pa.timestamp("us")),
        ("end", pa.timestamp("us")), ("first_alarm", pa.timestamp("us")), ("networks", pa.string()),
        ("n_networks", pa.int32()), ("peak_blocked_share", pa.float64()), ("networks_json", pa.string()),
        ("evidence_json", pa.string()), ("detector_version", pa.string()),
    ])
    return pa.Table.from_pylist(rows, schema=schema)
