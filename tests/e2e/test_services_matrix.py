"""Every messaging nettest against every technique that applies: verdict and method equal the ground truth.

One lab for the module. For each nettest and technique (DNS injection, IP
black-hole, reset, SNI, protocol fingerprint) the censor gets a policy that
targets exactly one feature, the real nettest runs in the client namespace
(`wallwatch probe run NETTEST`), and every feature must read what the policy
implies: the targeted one blocked by that method, every other one ok (no
collateral verdicts). The nettests: telegram, signal, facebook_messenger, and
the services of 2017 beside WhatsApp (wechat, skype, viber, facetime), each
with the protocol fingerprint a DPI box has of it (MTProto's header, STUN,
mmtls records, Viber's hello and call datagrams). Throttling by rate and by
delay is measured with the nettests' throughput rounds turned on
(`--option throughput=on`: the ServiceTest base's hook, probe/throughput.py;
every messaging nettest but whatsapp, which times by default) and must read `throttled/rate` or
`throttled/latency` on the targeted feature only; a reset with a penalty box
([Rambert2021]) must read `blocked/residual`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import time

import pytest

from wallwatch.lab.scenario import Expectation, observed_features, probe_in_lab
from wallwatch.vocabulary import NETTEST_FEATURES

pytestmark = [pytest.mark.lab, pytest.mark.slow]


def _rule(name: str, match: dict[str, Any], action: str, **options: Any) -> dict[str, Any]:
    return {"name": name, "match": match, "action": action, **options}


def dns_inject(name: str, suffix: str) -> dict[str, Any]:
    return _rule(name, {"dns.qname": {"suffix": suffix}}, "dns-inject", answer=["198.19.250.1"])


def blackhole(name: str, cidr: str, proto: str | None = None) -> dict[str, Any]:
    return _rule(name, {"ip.dst": {"cidr": cidr}, **({"proto": proto} if proto else {})}, "blackhole-ip")


def reset_address(name: str, cidr: str) -> dict[str, Any]:
    """Forged resets on the first data to an address, whatever name it carries. (A reset to the SYN
    reads as `connection_refused`, which no probe can tell from a closed port: that is `down`.)"""
    return _rule(name, {"proto": "tcp", "ip.dst": {"cidr": cidr}, "tls.sni": {"glob": "*"}}, "reset")


def sni_reset(name: str, suffix: str) -> dict[str, Any]:
    return _rule(name, {"tls.sni": {"suffix": suffix}}, "reset")


# nettest -> technique -> (rules, {feature: expected}); features not named must read ok.
# Addresses are lab/addresses.py's: one /24 per service, so each rule reaches one feature.
MATRIX: dict[str, dict[str, tuple[list[dict[str, Any]], dict[str, str]]]] = {
    "telegram": {
        "dns": ([dns_inject("web-dns", "web.telegram.org")], {"web": "blocked/dns"}),
        "ip": ([blackhole("dcs", "198.19.10.0/29")], {"text": "blocked/tcp_ip"}),
        "reset": ([reset_address("cdn", "198.19.10.21/32")], {"media": "blocked/tcp_reset"}),
        "sni": ([sni_reset("web-sni", "web.telegram.org")], {"web": "blocked/tls_sni"}),
        "fingerprint": ([_rule("mtproto", {"mtproto.obfuscated2": True}, "reset")], {"text": "blocked/protocol_dpi"}),
    },
    "signal": {
        "dns": ([_rule("cdn-dns", {"dns.qname": {"glob": "cdn*.signal.org"}}, "dns-inject")], {"media": "blocked/dns"}),
        "ip": ([blackhole("storage", "198.19.11.4/32")], {"storage": "blocked/tcp_ip"}),
        "reset": ([reset_address("chat", "198.19.11.1/32")], {"text": "blocked/tcp_reset"}),
        "sni": ([sni_reset("chat-sni", "chat.signal.org")], {"text": "blocked/tls_sni"}),
        # Signal is TLS everywhere; its calls' STUN is the one fingerprint a DPI box has. A relay
        # ignores what is not STUN, so no UDP control can tell a fingerprint from an address block.
        "fingerprint": ([_rule("stun", {"stun.binding": True}, "drop")], {"calls": "blocked/udp_blocking"}),
    },
    "facebook_messenger": {
        "dns": ([dns_inject("cdn-dns", "fbcdn.net")], {"media": "blocked/dns"}),
        "ip": ([blackhole("stun", "198.19.12.7/32", "udp")], {"calls": "blocked/udp_blocking"}),
        "reset": ([reset_address("star", "198.19.12.6/32")], {"web": "blocked/tcp_reset"}),
        # Only the chat edge: the APIs still answer, so text is blocked in part (strong evidence).
        "sni": ([sni_reset("edge-sni", "edge-mqtt.facebook.com")], {"text": "blocked/tls_sni"}),
        "fingerprint": ([_rule("stun", {"stun.binding": True}, "drop")], {"calls": "blocked/udp_blocking"}),
    },
    # The services of 2017 that were left alone (Skype, FaceTime, WeChat) or not (Viber was blocked in
    # China on and off): every technique still must read as itself, feature by feature.
    "wechat": {
        "dns": ([dns_inject("moments-dns", "qpic.cn")], {"media": "blocked/dns"}),
        "ip": ([blackhole("long-link", "198.19.13.1/32"), blackhole("short-link", "198.19.13.2/32")],
               {"text": "blocked/tcp_ip"}),
        "reset": ([reset_address("web", "198.19.13.4/31")], {"web": "blocked/tcp_reset"}),
        "sni": ([sni_reset("wx-sni", "wx.qq.com"), sni_reset("web-sni", "web.wechat.com")], {"web": "blocked/tls_sni"}),
        # mmtls records on the long link, the same records POSTed to /mmtls/ on the short link.
        "fingerprint": ([_rule("mmtls", {"mmtls.record": True}, "reset"),
                         _rule("short-link", {"http.path": {"glob": "/mmtls/*"}}, "reset")],
                        {"text": "blocked/protocol_dpi"}),
    },
    "skype": {
        "dns": ([dns_inject("asm-dns", "asm.skype.com")], {"media": "blocked/dns"}),
        "ip": ([blackhole("relay", "198.19.14.10/32", "udp")], {"calls": "blocked/udp_blocking"}),
        "reset": ([reset_address("chat", "198.19.14.1/32")], {"text": "blocked/tcp_reset"}),
        "sni": ([sni_reset("web-sni", "web.skype.com")], {"web": "blocked/tls_sni"}),
        "fingerprint": ([_rule("stun", {"stun.binding": True}, "drop")], {"calls": "blocked/udp_blocking"}),
    },
    "viber": {
        "dns": ([dns_inject("media-dns", "viber.com")], {"media": "blocked/dns"}),
        "ip": ([blackhole("chat", "198.19.15.1/32", "tcp")], {"text": "blocked/tcp_ip"}),
        "reset": ([reset_address("download", "198.19.15.2/32")], {"media": "blocked/tcp_reset"}),
        "sni": ([sni_reset("download-sni", "dl-media.viber.com")], {"media": "blocked/tls_sni"}),
        "fingerprint": ([_rule("hello", {"viber.hello": True}, "reset")], {"text": "blocked/protocol_dpi"}),
        "fingerprint-calls": ([_rule("call", {"viber.call": True}, "drop")], {"calls": "blocked/udp_blocking"}),
    },
    # FaceTime's one feature, calls, needs the push courier and a relay (all-of): each technique on either.
    "facetime": {
        "dns": ([dns_inject("push-dns", "push.apple.com")], {"calls": "blocked/dns"}),
        "ip": ([blackhole("relay", "198.19.16.10/32", "udp")], {"calls": "blocked/udp_blocking"}),
        "reset": ([reset_address("courier", "198.19.16.1/32")], {"calls": "blocked/tcp_reset"}),
        "sni": ([sni_reset("courier-sni", "push.apple.com")], {"calls": "blocked/tls_sni"}),
        "fingerprint": ([_rule("stun", {"stun.binding": True}, "drop")], {"calls": "blocked/udp_blocking"}),
    },
}
CASES = [(nettest, technique) for nettest, techniques in MATRIX.items() for technique in techniques]


def throttle(name: str, match: dict[str, Any], **options: Any) -> dict[str, Any]:
    return _rule(name, match, "throttle", **options)


# Throttled features, measured with the throughput rounds on; features not named must read ok.
THROTTLING: dict[str, dict[str, tuple[list[dict[str, Any]], dict[str, str]]]] = {
    "telegram": {"rate": ([throttle("slow-cdn", {"tls.sni": {"suffix": "cdn4.telesco.pe"}}, rate="1mbit")],
                          {"media": "throttled/rate"})},
    "signal": {"delay": ([throttle("laggy-sfu", {"proto": "udp", "ip.dst": {"cidr": "198.19.11.5/32"}},
                                   delay_ms=100)], {"calls": "throttled/latency"})},
    "facebook_messenger": {"rate": ([throttle("slow-web", {"tls.sni": {"suffix": "star.c10r.facebook.com"}},
                                              rate="256kbit")], {"web": "throttled/rate"})},
    "wechat": {"rate": ([throttle("slow-moments", {"tls.sni": {"suffix": "mmsns.qpic.cn"}}, rate="1mbit")],
                        {"media": "throttled/rate"})},
    "skype": {"delay": ([throttle("laggy-relay", {"proto": "udp", "ip.dst": {"cidr": "198.19.14.10/32"}},
                                  delay_ms=100)], {"calls": "throttled/latency"})},
    "facetime": {"delay": ([throttle("laggy-relay", {"proto": "udp", "ip.dst": {"cidr": "198.19.16.10/32"}},
                                     delay_ms=150)], {"calls": "throttled/latency"})},
    "viber": {"rate": ([throttle("slow-media", {"tls.sni": {"suffix": "dl-media.viber.com"}}, rate="512kbit")],
                       {"media": "throttled/rate"})},
}
THROTTLING_CASES = [(nettest, technique) for nettest, techniques in THROTTLING.items() for technique in techniques]

PENALTY_SECONDS = 5  # longer than a run takes to reach its controls, short enough to wait out
# A reset whose rule keeps the server's port black-holed for the client afterwards: the penalty box.
RESIDUAL: dict[str, tuple[dict[str, Any], str]] = {
    "telegram": ({"mtproto.obfuscated2": True}, "text"),
    "signal": ({"tls.sni": {"suffix": "chat.signal.org"}}, "text"),
    "facebook_messenger": ({"tls.sni": {"suffix": "star.c10r.facebook.com"}}, "web"),
}


def _truth(nettest: str, blocked: dict[str, str]) -> dict[str, Expectation]:
    return {str(f): Expectation.parse(blocked.get(str(f), "ok")) for f in NETTEST_FEATURES[nettest]}


def _probe(lab: Any, nettest: str, policy: dict[str, Any], tmp_path: Path, *options: str) -> dict[str, Any]:
    lab.set_policy(policy)
    extra = [arg for option in options for arg in ("--option", option)]
    return probe_in_lab(lab, tmp_path / f"{nettest}.jsonl", timeout=2.0, nettest=nettest, extra_args=extra)


def _mismatches(measurement: dict[str, Any], truth: dict[str, Expectation]) -> list[str]:
    seen = observed_features(measurement)
    return [f"{feature}: expected {expected}, saw {seen.get(feature)} ({'; '.join(seen[feature].evidence[:3])})"
            for feature, expected in truth.items() if feature not in seen or not expected.matches(seen[feature])]


@pytest.mark.parametrize("nettest", list(MATRIX))
def test_unblocked_every_feature_is_ok(lab: Any, nettest: str, tmp_path: Path) -> None:
    measurement = _probe(lab, nettest, {"name": "none", "rules": []}, tmp_path)
    assert not _mismatches(measurement, _truth(nettest, {}))
    assert measurement["test_name"] == nettest and measurement["software_name"] == "wallwatch"
    assert measurement["probe_ip"] == "127.0.0.1"


@pytest.mark.parametrize(("nettest", "technique"), CASES, ids=[f"{n}-{t}" for n, t in CASES])
def test_verdicts_match_the_policy_and_nothing_else_is_blocked(lab: Any, nettest: str, technique: str,
                                                               tmp_path: Path) -> None:
    rules, blocked = MATRIX[nettest][technique]
    measurement = _probe(lab, nettest, {"name": f"{nettest}-{technique}", "rules": rules}, tmp_path)
    wrong = _mismatches(measurement, _truth(nettest, blocked))
    assert not wrong, f"{nettest} / {technique}:\n" + "\n".join(wrong)


@pytest.mark.parametrize(("nettest", "technique"), THROTTLING_CASES, ids=[f"{n}-{t}" for n, t in THROTTLING_CASES])
def test_throttled_features_read_throttled_and_nothing_else_does(lab: Any, nettest: str, technique: str,
                                                                 tmp_path: Path) -> None:
    rules, slowed = THROTTLING[nettest][technique]
    try:
        measurement = _probe(lab, nettest, {"name": f"{nettest}-{technique}", "rules": rules}, tmp_path,
                             "throughput=on")
    finally:
        lab.set_policy({"name": "none", "rules": []})
    wrong = _mismatches(measurement, _truth(nettest, slowed))
    assert not wrong, f"{nettest} / {technique}:\n" + "\n".join(wrong)
    (feature,) = slowed
    facts = measurement["test_keys"]["x_wallwatch"]["features"][feature]["throttling"]
    facts = facts if isinstance(facts, dict) else next(f for f in facts if f["throttled"])
    if technique == "rate":
        rate = int(rules[0]["rate"].removesuffix("kbit").removesuffix("mbit")) * (
            1_000_000 if rules[0]["rate"].endswith("mbit") else 1_000)
        assert abs(facts["rate_bps"] / rate - 1) <= 0.2, facts
    else:  # held in both directions: the round trip grows by twice the delay
        assert abs(facts["added_latency_ms"] / (2 * rules[0]["delay_ms"]) - 1) <= 0.2, facts


@pytest.mark.parametrize("nettest", list(RESIDUAL))
def test_a_penalty_box_is_residual_and_nothing_else_is_blocked(lab: Any, nettest: str, tmp_path: Path) -> None:
    match, feature = RESIDUAL[nettest]
    rule = _rule("penalty", match, "reset", residual={"seconds": PENALTY_SECONDS, "scope": "triple"})
    started = time.monotonic()
    try:
        measurement = _probe(lab, nettest, {"name": f"{nettest}-residual", "rules": [rule]}, tmp_path)
    finally:
        lab.set_policy({"name": "none", "rules": []})
        # Penalties outlive a policy swap: let them expire before the next test dials the same servers.
        time.sleep(max(0.0, started + PENALTY_SECONDS + 0.5 - time.monotonic()))
    wrong = _mismatches(measurement, _truth(nettest, {feature: "blocked/residual"}))
    assert not wrong, f"{nettest} / residual:\n" + "\n".join(wrong)
