"""Throttling told apart from blocking, through the real censor in a real lab.

The censor's `throttle` action (censor/shaping.py: an htb class per rule for
`rate`, userspace holding for `delay_ms`) slows one feature; the real
whatsapp nettest must call that feature `throttled` with the numbers that
match the configured ones, and leave every other feature alone. Rates from
64 kbit/s to 20 Mbit/s, delays from 50 to 400 ms (held in both directions,
so the round trip grows by twice the delay). Without a throttle, fifty
throughput measurements are never judged throttled.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from wallwatch.lab.scenario import probe_in_lab

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(900)]

FEATURES = ("text", "media", "calls", "web", "registration")
MEDIA_SNI = {"tls.sni": {"suffix": "mmg.whatsapp.net"}}
WEB_SNI = {"tls.sni": {"suffix": "web.whatsapp.com"}}
RELAYS = {"proto": "udp", "ip.dst": {"cidr": "198.19.3.0/24"}}  # the lab's call relays (lab/addresses.py)
RUNS = str(Path(__file__).with_name("throughput_runs.py"))
RATE_UNITS = {"kbit": 1_000, "mbit": 1_000_000}


def throttle(match: dict[str, Any], **options: Any) -> dict[str, Any]:
    return {"name": "throttle", "rules": [{"name": "slow", "match": match, "action": "throttle", **options}]}


def bits(rate: str) -> int:
    number = rate.rstrip("kmbit")
    return int(number) * RATE_UNITS[rate[len(number):]]


def measure(lab: Any, policy: dict[str, Any], tmp_path: Path) -> dict[str, dict[str, Any]]:
    lab.set_policy(policy)
    try:
        measurement = probe_in_lab(lab, tmp_path / "m.jsonl", timeout=3.0)
    finally:
        lab.set_policy({"name": "none", "rules": []})
    return measurement["test_keys"]["x_wallwatch"]["features"]


def only(features: dict[str, dict[str, Any]], feature: str, expected: str) -> dict[str, Any]:
    """`feature` reads `expected`; every other feature reads ok (no collateral verdicts)."""
    seen = {name: f"{f['verdict']}/{f['method']}" if f["method"] else f["verdict"] for name, f in features.items()}
    assert seen == {name: (expected if name == feature else "ok") for name in FEATURES}, \
        {name: (seen[name], features[name]["evidence"][:3]) for name in FEATURES}
    return features[feature]["throttling"]


@pytest.mark.parametrize("rate", ["64kbit", "1mbit", "20mbit"])
def test_media_rate_throttle_is_throttled_at_the_configured_rate(lab: Any, rate: str, tmp_path: Path) -> None:
    facts = only(measure(lab, throttle(MEDIA_SNI, rate=rate), tmp_path), "media", "throttled/rate")
    assert abs(facts["rate_bps"] / bits(rate) - 1) <= 0.2, facts
    assert facts["rate_ratio"] < 0.5 and facts["control_rate_bps"] > 2 * facts["rate_bps"], facts
    assert facts["flagged"]["rate"] >= 2 and facts["rounds"] >= 2


def test_web_rate_throttle_of_all_techniques(lab: Any, tmp_path: Path) -> None:
    """The `slow-web` rule of policies/all-techniques.yaml on its own."""
    facts = only(measure(lab, throttle(WEB_SNI, rate="256kbit"), tmp_path), "web", "throttled/rate")
    assert abs(facts["rate_bps"] / 256_000 - 1) <= 0.2, facts


@pytest.mark.parametrize("delay_ms", [50, 400])
def test_media_delay_is_throttled_latency_by_twice_the_delay(lab: Any, delay_ms: int, tmp_path: Path) -> None:
    facts = only(measure(lab, throttle(MEDIA_SNI, delay_ms=delay_ms), tmp_path), "media", "throttled/latency")
    assert abs(facts["added_latency_ms"] / (2 * delay_ms) - 1) <= 0.2, facts
    assert facts["flagged"]["rate"] == 0, facts  # slow because of the round trips, not a rate


@pytest.mark.parametrize(("delay_ms", "jitter_ms"), [(50, 0), (150, 30)])
def test_calls_delay_is_throttled_latency(lab: Any, delay_ms: int, jitter_ms: int, tmp_path: Path) -> None:
    """The `laggy-calls` rule of policies/all-techniques.yaml (150 +- 30 ms), and a plain 50 ms."""
    policy = throttle(RELAYS, delay_ms=delay_ms, jitter_ms=jitter_ms)
    facts = only(measure(lab, policy, tmp_path), "calls", "throttled/latency")
    assert abs(facts["added_latency_ms"] / (2 * delay_ms) - 1) <= 0.2, facts


def test_no_throttle_is_never_throttled_over_50_runs(lab: Any) -> None:
    lab.set_policy({"name": "none", "rules": []})
    result = lab.run_in_client([sys.executable, RUNS, "50"], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = json.loads(result.stdout)
    assert len(runs) == 50
    judged = [(f["feature"], f["judgment"]) for run in runs for f in run["features"]]
    assert all(judgment is not None for _, judgment in judged), judged  # every run compared something
    throttled = [(feature, j["throttled"], j["evidence"]) for feature, j in judged if j["throttled"]]
    assert not throttled, throttled
