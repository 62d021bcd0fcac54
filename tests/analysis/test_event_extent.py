"""Events that say what happened: blocking that comes and goes by the hour is "on and off" with its
share of blocked hours; a block of 30% of one network's measurements is "partial, N% of
measurements", never "comprehensive"; and both beside a national block across three networks.

Synthetic verdicts (tests/analysis/synthetic_events.py) through the real path: verdicts ->
series.build_series -> events.detect_events -> the event table, the feed and the report's words.
"""

from __future__ import annotations

import random

import duckdb
import pytest

from wallwatch.analysis.events.grouping import BLOCKING, Event, describe_extent, detect_events
from wallwatch.analysis.series.build import build_series

from synthetic_events import WINDOW_HOURS, Country, verdicts

ONSET = 10 * 24 + 8  # a Thursday morning, hours from the window's start
TWO_DAYS = 48


def _hourly_on_off(seed: int) -> callable:
    """Blocked for 1-3 hours, clear for 1-3 hours, over two days (a censor switching a rule by the hour)."""
    rng = random.Random(seed)
    on: set[int] = set()
    hour, blocked = ONSET, True
    while hour < ONSET + TWO_DAYS:
        length = rng.randint(1, 3)
        if blocked:
            on.update(range(hour, hour + length))
        hour, blocked = hour + length, not blocked
    return lambda h: 1.0 if h in on else 0.0


def _country(cc: str, networks: dict[int, object]) -> Country:
    asns = sorted(networks)
    country = Country(kind="extent", probe_cc=cc, asns=asns, probes={asn: 4 for asn in asns},
                      tests={"whatsapp": ("text",)}, measure_rate=1.0)
    for asn, schedule in networks.items():
        country.blocks.append((frozenset([asn]), "whatsapp", "text", schedule))
    return country


def _span(share: float) -> callable:
    return lambda h: share if ONSET <= h < ONSET + TWO_DAYS else 0.0


def _events(*countries: Country) -> list[Event]:
    connection = duckdb.connect()
    try:
        connection.register("verdicts", verdicts(countries, seed=3))
        return [e for e in detect_events(build_series(connection, "hour")) if e.type == BLOCKING]
    finally:
        connection.close()


def test_blocking_that_comes_and_goes_by_the_hour_is_on_and_off_with_its_share_of_hours() -> None:
    schedule = _hourly_on_off(1)
    truth = sum(schedule(h) for h in range(ONSET, ONSET + TWO_DAYS))
    (event,) = _events(_country("XA", {64500: schedule}))
    (network,) = event.networks
    assert network.extent == "on_and_off" and network.on_and_off
    assert network.comprehensive_from is None  # never blocked for a long run: not "comprehensive"
    assert network.hours_with_data >= 40
    assert abs(network.blocked_hours - truth) <= 3
    share = network.blocked_hours / network.hours_with_data
    assert 0.3 < share < 0.75
    assert network.extent_text == (f"on and off, blocked {network.blocked_hours} of {network.hours_with_data} "
                                   f"hours ({share:.0%})")


def test_a_block_of_30_percent_of_measurements_is_partial_never_comprehensive() -> None:
    (event,) = _events(_country("XB", {64510: _span(0.3)}))
    (network,) = event.networks
    assert network.extent == "partial" and not network.on_and_off and network.comprehensive_from is None
    assert 0.2 < network.blocked_share_of_measurements < 0.42
    assert network.extent_text == f"partial, {network.blocked_share_of_measurements:.0%} of measurements"
    assert "comprehensive" not in network.extent_text


def test_hourly_and_partial_beside_a_national_block_across_three_networks(tmp_path) -> None:
    from wallwatch.analysis.events.feeds import FeedOptions, write_atom
    from wallwatch.analysis.events.lifecycle import record_events
    from wallwatch.analysis.store import Store

    national = _span(1.0)
    networks = {64520: national, 64521: national, 64522: national, 64523: _hourly_on_off(2), 64524: _span(0.3)}
    (event,) = _events(_country("XC", networks))
    extents = {n.probe_asn: n.extent for n in event.networks}
    assert extents == {64520: "comprehensive", 64521: "comprehensive", 64522: "comprehensive",
                       64523: "on_and_off", 64524: "partial"}
    words = {n.probe_asn: n.extent_text for n in event.networks}
    assert words[64520] == "comprehensive"
    assert words[64523].startswith("on and off, blocked ") and words[64524].startswith("partial, ")
    # The same words in the event table (CLI), the feed and the report.
    from wallwatch.analysis.cli import _network_part

    network = next(n for n in event.networks if n.probe_asn == 64524)
    assert _network_part(network, False) == f"AS64524 ({words[64524]})"
    assert _network_part(network, False, "throttling") == "AS64524"  # no extent words for other event types
    store = Store(tmp_path / "data")
    record_events(store, [event])
    feed = tmp_path / "events.atom"
    write_atom(store, feed, FeedOptions())
    text = feed.read_text()
    assert words[64524] in text and words[64523] in text
    records = {n["probe_asn"]: n for n in event.to_record()["networks"]}
    assert describe_extent(records[64524]) == words[64524]
    assert records[64524]["extent"] == "partial" and records[64524]["comprehensive_from"] is None


@pytest.mark.parametrize("share", [0.3])
def test_the_window_holds_the_synthetic_blocks(share: float) -> None:
    assert ONSET + TWO_DAYS < WINDOW_HOURS and share < 0.5
