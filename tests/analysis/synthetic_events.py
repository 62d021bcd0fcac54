"""Synthetic verdict tables with known events, and the scores of detected events against them.

The evaluation harness (`bench/eval_events.py`) and the tests use this to run
the real path (verdicts -> `series.build_series` -> `events.detect_events`) on
data whose truth is known. The metrics are the four OONI's plan asks for
(ooni/data docs/implementation-plan.md §3.8): event recall, onset delay in
samples (hours), false events per quiet series-week and events per true event.

Scenarios (each in its own synthetic country, with quiet series alongside):
national, per_isp, staggered (ISPs join over days), on_and_off (a daily block),
partial (30% of measurements blocked), gappy (a block seen through measurement
gaps), volume_collapse (networks go silent), quiet (noise, one-hour blips,
service outages, short gaps: no event).
"""

from __future__ import annotations

import math
import random
import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pyarrow as pa

from wallwatch.analysis.events.grouping import ANY, BLOCKING, VOLUME_COLLAPSE, Event, to_hour

WINDOW_START = datetime(2024, 3, 4)  # a Monday, 00:00 UTC
WINDOW_WEEKS = 4
WINDOW_HOURS = WINDOW_WEEKS * 7 * 24
KINDS = ("national", "per_isp", "staggered", "on_and_off", "partial", "gappy", "volume_collapse", "quiet")
# ISO 3166 user-assigned and unassigned codes, so no synthetic row names a real country.
_COUNTRIES = [f"X{c}" for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"] + [f"Q{c}" for c in "MNOPQRSTUVWXYZ"] + [
    f"Y{c}" for c in "ABCDFGHIJKLMNOPQRSUVWXYZ"
]


@dataclass(frozen=True)
class TrueEvent:
    """Ground truth: hours are offsets from WINDOW_START; end None = still on at the window's end."""

    kind: str
    type: str
    probe_cc: str
    service: str
    feature: str
    onset: int
    end: int | None
    networks: tuple[tuple[int, int], ...]  # (asn, onset hour)


@dataclass
class Country:
    """Everything the generator needs for one synthetic country."""

    kind: str
    probe_cc: str
    asns: list[int]
    probes: dict[int, int]
    tests: dict[str, tuple[str, ...]]
    # (asn, service, feature, hour) -> blocked share, from the blocks list
    blocks: list[tuple[frozenset[int], str, str, Callable[[int], float]]] = field(default_factory=list)
    # (asns, start, end, factor) multiplies the measuring probability
    volume: list[tuple[frozenset[int], int, int, float]] = field(default_factory=list)
    outages: list[tuple[str, int, int]] = field(default_factory=list)
    blips: list[tuple[int, str, str, int]] = field(default_factory=list)
    truths: list[TrueEvent] = field(default_factory=list)
    noise: float = 0.02
    measure_rate: float = 0.75


def _span(start: int, end: int, share: float = 1.0) -> Callable[[int], float]:
    return lambda hour: share if start <= hour < end else 0.0


def _scenario(kind: str, cc: str, rng: random.Random) -> Country:
    asns = [64496 + 10 * rng.randrange(100) + i for i in range(4)]
    country = Country(
        kind=kind, probe_cc=cc, asns=asns, probes={asn: rng.randint(2, 5) for asn in asns},
        tests={"whatsapp": ("text", "media"), "telegram": ("web",)},
    )
    onset = rng.randint(7 * 24, 15 * 24)
    duration = rng.randint(2 * 24, 6 * 24)
    end = onset + duration
    everyone = frozenset(asns)

    def block(networks: Sequence[int], schedule: Callable[[int], float], start: int, stop: int | None,
              joins: Sequence[int] | None = None) -> None:
        country.blocks.append((frozenset(networks), "whatsapp", "text", schedule))
        joined = tuple(zip(networks, joins or [start] * len(networks), strict=True))
        country.truths.append(TrueEvent(kind, BLOCKING, cc, "whatsapp", "text", start, stop, joined))

    if kind == "national":
        block(asns, _span(onset, end), onset, end)
    elif kind == "per_isp":
        block([asns[1]], _span(onset, end), onset, end)
    elif kind == "staggered":
        # Wednesday, Thursday, Saturday, Monday: comprehensive after five days.
        joins = [onset + day * 24 + rng.randint(0, 6) for day in (0, 1, 3, 5)]
        stop = joins[-1] + rng.randint(24, 72)
        for asn, join in zip(asns, joins, strict=True):
            country.blocks.append((frozenset([asn]), "whatsapp", "text", _span(join, stop)))
        country.truths.append(TrueEvent(kind, BLOCKING, cc, "whatsapp", "text", joins[0], stop,
                                        tuple(zip(asns, joins, strict=True))))
    elif kind == "on_and_off":
        # Blocked for 6-10 hours every day for 3-6 days (an evening curfew).
        first = onset - onset % 24 + 16
        days = rng.randint(3, 6)
        hours_on = rng.randint(6, 10)

        def curfew(hour: int, first: int = first, days: int = days, hours_on: int = hours_on) -> float:
            return 1.0 if first <= hour < first + days * 24 and (hour - first) % 24 < hours_on else 0.0

        block(asns, curfew, first, first + (days - 1) * 24 + hours_on)
    elif kind == "partial":
        chosen = sorted(rng.sample(asns, 2))
        block(chosen, _span(onset, end, 0.3), onset, end)
    elif kind == "gappy":
        block(asns, _span(onset, end), onset, end)
        # Two 2-4 hour silences a day, one per half-day, so they never merge
        # into a six-hour one (which would be a volume collapse).
        for day in range(WINDOW_HOURS // 24):
            for half in (0, 12):
                start = day * 24 + half + rng.randint(0, 6)
                country.volume.append((everyone, start, start + rng.randint(2, 4), 0.0))
    elif kind == "volume_collapse":
        chosen = sorted(rng.sample(asns, rng.randint(1, 3)))
        stop = onset + rng.randint(12, 48)
        starts = [onset + rng.randint(0, 2) for _ in chosen]
        for asn, start in zip(chosen, starts, strict=True):
            country.volume.append((frozenset([asn]), start, stop, 0.0))
        country.truths.append(TrueEvent(kind, VOLUME_COLLAPSE, cc, ANY, ANY, min(starts), stop,
                                        tuple(zip(chosen, starts, strict=True))))
    elif kind == "quiet":
        country.outages.append(("whatsapp", onset, onset + rng.randint(3, 6)))
        for _ in range(3):
            country.blips.append((rng.choice(asns), "whatsapp", "text", rng.randint(48, WINDOW_HOURS - 1)))
        for _ in range(6):
            start = rng.randint(48, WINDOW_HOURS - 5)
            country.volume.append((frozenset([rng.choice(asns)]), start, start + rng.randint(2, 4), 0.0))
    else:
        raise ValueError(f"unknown scenario kind {kind!r}")
    return country


def scenarios(replicates: int = 6, seed: int = 20240304, kinds: Sequence[str] = KINDS) -> list[Country]:
    """`replicates` countries per kind, each with its own random timing."""
    rng = random.Random(seed)
    countries = []
    codes = iter(_COUNTRIES)
    for _ in range(replicates):
        for kind in kinds:
            try:
                cc = next(codes)
            except StopIteration:
                raise ValueError(f"at most {len(_COUNTRIES)} synthetic countries") from None
            countries.append(_scenario(kind, cc, rng))
    return countries


_COLUMNS = ("measurement_uid", "measurement_start_time", "date", "probe_cc", "probe_asn", "probe_network_name",
            "probe_key", "test_name", "software_name", "service", "feature", "target", "verdict", "method",
            "confidence", "rule_id", "rules_version", "blocked_share")


def verdicts(countries: Sequence[Country], seed: int = 7) -> pa.Table:
    """The verdict rows the countries' probes would have produced (store.VERDICTS_SCHEMA)."""
    from wallwatch.analysis.store import VERDICTS_SCHEMA

    rng = random.Random(seed)
    cols: dict[str, list[object]] = {name: [] for name in _COLUMNS}
    serial = 0
    for country in countries:
        for asn in country.asns:
            for probe in range(country.probes[asn]):
                key = f"{country.probe_cc}-{asn}-{probe}"
                for hour in range(WINDOW_HOURS):
                    rate = country.measure_rate * _diurnal(hour) * _volume_factor(country, asn, hour)
                    for service, features in country.tests.items():
                        if rng.random() >= rate:
                            continue
                        serial += 1
                        moment = WINDOW_START + timedelta(hours=hour, seconds=rng.randrange(3600))
                        uid = f"syn-{country.probe_cc}-{serial:08d}"
                        for feature in features:
                            verdict, method = _verdict(country, asn, probe, service, feature, hour, rng)
                            for name, value in (
                                ("measurement_uid", uid), ("measurement_start_time", moment),
                                ("date", moment.date()), ("probe_cc", country.probe_cc), ("probe_asn", asn),
                                ("probe_network_name", f"Synthetic Net {asn}"), ("probe_key", key),
                                ("test_name", service), ("software_name", "wallwatch-synthetic"),
                                ("service", service), ("feature", feature), ("target", None),
                                ("verdict", verdict), ("method", method), ("confidence", 0.9),
                                ("rule_id", f"syn.{method}" if method else "syn.ok"), ("rules_version", "syn-1"),
                                ("blocked_share", None),
                            ):
                                cols[name].append(value)
    present = pa.table(cols, schema=pa.schema([f for f in VERDICTS_SCHEMA if f.name in cols]))
    # The evidence columns (fingerprint, probe fault) stay null: synthetic verdicts cite none.
    return pa.Table.from_arrays([present.column(f.name) if f.name in cols else pa.nulls(present.num_rows, f.type)
                                 for f in VERDICTS_SCHEMA], schema=VERDICTS_SCHEMA)


def _diurnal(hour: int) -> float:
    # Fewer measurements at night: 0.7x at 03:00 UTC, 1.0x at 15:00.
    return 0.85 + 0.15 * math.sin(2 * math.pi * (hour % 24 - 9) / 24)


def _volume_factor(country: Country, asn: int, hour: int) -> float:
    factor = 1.0
    for asns, start, stop, scale in country.volume:
        if asn in asns and start <= hour < stop:
            factor *= scale
    return factor


def _verdict(country: Country, asn: int, probe: int, service: str, feature: str, hour: int,
             rng: random.Random) -> tuple[str, str | None]:
    for out_service, start, stop in country.outages:
        if out_service == service and start <= hour < stop and rng.random() < 0.9:
            return "down", None
    share = max((schedule(hour) for asns, svc, feat, schedule in country.blocks
                 if asn in asns and svc == service and feat == feature), default=0.0)
    if share and rng.random() < share:
        return "blocked", "tls_sni"
    for blip_asn, svc, feat, blip_hour in country.blips:
        if (blip_asn, svc, feat, blip_hour) == (asn, service, feature, hour) and probe < 2:
            return "blocked", "tcp_reset"
    roll = rng.random()
    if roll < country.noise:
        return "blocked", "tcp_reset"
    if roll < country.noise + 0.01:
        return "unknown", None
    return "ok", None


# -- scoring ----------------------------------------------------------------------------


@dataclass(frozen=True)
class KindScore:
    kind: str
    true_events: int
    recalled: int
    events_per_true: float  # mean detected events per recalled true event
    exactly_one: int  # recalled true events with exactly one detected event
    onset_delays: tuple[int, ...]  # detected onset - true onset, hours, per recalled truth
    alarm_delays: tuple[int, ...]  # first alarm - true onset
    network_onset_delays: tuple[int, ...]  # per true network found in the event
    networks_found: int
    networks_true: int
    false_events: int
    quiet_series_weeks: float

    @property
    def recall(self) -> float:
        return self.recalled / self.true_events if self.true_events else float("nan")


def _overlap(event: Event, truth: TrueEvent, slack: int) -> bool:
    onset = to_hour(event.onset) - to_hour(WINDOW_START)
    end = to_hour(event.end) - to_hour(WINDOW_START) if event.end is not None else WINDOW_HOURS + slack
    truth_end = truth.end if truth.end is not None else WINDOW_HOURS + slack
    return onset < truth_end + slack and truth.onset - slack < end


def score(countries: Sequence[Country], events: Sequence[Event], slack: int = 24) -> list[KindScore]:
    """Per scenario kind: how detected events compare with the truths."""
    by_cc = {country.probe_cc: country for country in countries}
    base = to_hour(WINDOW_START)
    matched: dict[int, list[Event]] = defaultdict(list)
    truths = [truth for country in countries for truth in country.truths]
    false_by_kind: dict[str, int] = defaultdict(int)
    for event in events:
        hits = [i for i, t in enumerate(truths)
                if (t.type, t.probe_cc, t.service, t.feature) == (event.type, event.probe_cc, event.service,
                                                                   event.feature) and _overlap(event, t, slack)]
        for i in hits:
            matched[i].append(event)
        if not hits and event.probe_cc in by_cc:
            false_by_kind[by_cc[event.probe_cc].kind] += 1
    scores = []
    for kind in dict.fromkeys(c.kind for c in countries):
        kind_truths = [(i, t) for i, t in enumerate(truths) if t.kind == kind]
        onset_d, alarm_d, net_d = [], [], []
        counts, found_networks, true_networks = [], 0, 0
        for i, truth in kind_truths:
            true_networks += len(truth.networks)
            if not matched[i]:
                continue
            counts.append(len(matched[i]))
            first = min(matched[i], key=lambda e: e.onset)
            onset_d.append(to_hour(first.onset) - base - truth.onset)
            alarm_d.append(to_hour(first.first_alarm) - base - truth.onset)
            spans = {n.probe_asn: n for e in matched[i] for n in e.networks}
            for asn, join in truth.networks:
                if asn in spans:
                    found_networks += 1
                    net_d.append(to_hour(spans[asn].onset) - base - join)
        kind_countries = [c for c in countries if c.kind == kind]
        scores.append(KindScore(
            kind=kind, true_events=len(kind_truths), recalled=len(counts),
            events_per_true=statistics.mean(counts) if counts else float("nan"),
            exactly_one=sum(1 for c in counts if c == 1),
            onset_delays=tuple(onset_d), alarm_delays=tuple(alarm_d), network_onset_delays=tuple(net_d),
            networks_found=found_networks, networks_true=true_networks,
            false_events=false_by_kind[kind],
            quiet_series_weeks=sum(_quiet_series(c) for c in kind_countries) * WINDOW_WEEKS,
        ))
    return scores


def _quiet_series(country: Country) -> int:
    """Series (asn x service x feature) that no true event touches."""
    touched = {(asn, t.service, t.feature) for t in country.truths if t.type == BLOCKING for asn, _ in t.networks}
    collapsed = {asn for t in country.truths if t.type == VOLUME_COLLAPSE for asn, _ in t.networks}
    return sum(1 for asn in country.asns for service, features in country.tests.items() for feature in features
               if (asn, service, feature) not in touched and asn not in collapsed)
