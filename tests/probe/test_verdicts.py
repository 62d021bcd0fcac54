"""`derive_whatsapp_features` on hand-built facts: every rule, and the principles behind them."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest

from wallwatch.probe.verdicts import RULES_VERSION, derive_whatsapp_features

FEATURES = ("text", "media", "calls", "web", "registration")


class Facts:
    """Builds `test_keys` the way the nettest records them (OONI arrays + x_wallwatch), one attempt at a time."""

    def __init__(self, *, resolver_alive: bool | None = True, resolver_engine: str = "udp") -> None:
        self.keys: dict[str, Any] = {
            "queries": [], "tcp_connect": [], "tls_handshakes": [], "requests": [], "network_events": [],
            "x_wallwatch": {"rules_version": RULES_VERSION, "chat_sessions": [], "fetches": [],
                            "udp_exchanges": [], "controls": [], "expected_networks": ["198.19.1.0/24",
                                                                                      "198.19.2.0/24"]},
        }
        self._ids = itertools.count(1)
        if resolver_alive is not None:
            tags = ["control:dns", "endpoint:example.com:53"]
            rcode, failure = ("NXDOMAIN", "dns_nxdomain_error") if resolver_alive else (None, "generic_timeout_error")
            self.keys["queries"].append({"engine": resolver_engine, "hostname": "example.com", "rcode": rcode,
                                         "failure": failure,
                                         "answers": [], "transaction_id": next(self._ids), "tags": tags})

    @property
    def x(self) -> dict[str, Any]:
        return self.keys["x_wallwatch"]

    def _dns(self, tx: int, tags: list[str], host: str, answers: list[str], failure: str | None,
             duplicates: list[list[str]]) -> None:
        def entries(ips: list[str]) -> list[dict[str, Any]]:
            return [{"answer_type": "A", "ipv4": ip} for ip in ips]

        self.keys["queries"].append({
            "hostname": host, "rcode": "NOERROR" if failure is None else None, "failure": failure,
            "answers": entries(answers) if failure is None else [],
            "x_dns_duplicate_responses": [{"rcode": "NOERROR", "answers": entries(d)} for d in duplicates],
            "transaction_id": tx, "tags": tags})

    def _connects(self, tx: int, tags: list[str], ips: list[str], port: int, failure: str | None) -> None:
        for ip in ips:
            self.keys["tcp_connect"].append({"ip": ip, "port": port, "transaction_id": tx, "tags": tags,
                                             "status": {"success": failure is None, "failure": failure}})

    def _control(self, tx: int, tags: list[str], kind: str, address: str, outcome: str,
                 failure: str | None = None, **extra: Any) -> None:
        self.x["controls"].append({"kind": kind, "address": address, "outcome": outcome, "failure": failure,
                                   "transaction_id": tx, "tags": tags + [f"control:{kind}"], **extra})

    def chat(self, host: str = "e1.whatsapp.net", port: int = 5222, *, answers: list[str] | None = None,
             dns_failure: str | None = None, duplicates: list[list[str]] = (), connect_failure: str | None = None,
             reached: str | None = "echo", failure: str | None = None,
             control: str | None = None, control_failure: str | None = None) -> "Facts":
        tx, tags = next(self._ids), ["feature:text", f"endpoint:{host}:{port}"]
        answers = ["198.19.1.1"] if answers is None else answers
        self._dns(tx, tags, host, answers, dns_failure, list(duplicates))
        if dns_failure is None:
            self._connects(tx, tags, answers[:1], port, connect_failure)
        stages = ["dns", "connect", "header_sent", "handshake", "echo"]
        if dns_failure:
            reached, failed_at = None, "dns"
        elif connect_failure:
            reached, failed_at = "dns", "connect"
        else:
            failed_at = None if reached == "echo" else stages[stages.index(reached) + 1]
        self.x["chat_sessions"].append({"host": host, "port": port, "transaction_id": tx, "stage_reached": reached,
                                        "failed_at": failed_at, "failure": failure or dns_failure or connect_failure})
        if control is not None:
            self._control(tx, tags, "payload", f"{answers[0]}:{port}", control, control_failure)
        return self

    def https(self, feature: str, host: str, *, answers: list[str] | None = None, dns_failure: str | None = None,
              duplicates: list[list[str]] = (), connect_failure: str | None = None, tls_failure: str | None = None,
              sni_control: str | None = None, status: int = 200, http_failure: str | None = None) -> "Facts":
        tx, tags = next(self._ids), [f"feature:{feature}", f"endpoint:{host}:443"]
        answers = ["198.19.2.1"] if answers is None else answers
        self._dns(tx, tags, host, answers, dns_failure, list(duplicates))
        failure = dns_failure
        if dns_failure is None:
            self._connects(tx, tags, answers[:1], 443, connect_failure)
            failure = connect_failure
        if failure is None:
            self.keys["tls_handshakes"].append({"failure": tls_failure, "server_name": host,
                                                "transaction_id": tx, "tags": tags})
            failure = tls_failure
            if sni_control is not None:
                self._control(tx, tags, "tls_sni", f"{answers[0]}:443", sni_control, server_name="example.org")
        if failure is None:
            self.keys["requests"].append({"failure": http_failure, "response": {"code": 0 if http_failure else status},
                                          "transaction_id": tx, "tags": tags})
            failure = http_failure
        self.x["fetches"].append({"feature": feature, "transaction_id": tx, "failure": failure})
        return self

    def stun(self, relay: str = "157.240.229.60", failure: str | None = None) -> "Facts":
        tx = next(self._ids)
        self.x["udp_exchanges"].append({"kind": "stun", "address": f"{relay}:3478", "failure": failure, "sends": 3,
                                        "transaction_id": tx, "tags": ["feature:calls", f"endpoint:{relay}:3478"]})
        return self

    def all_ok(self, skip: str = "") -> "Facts":
        if skip != "text":
            self.chat("e1.whatsapp.net", 443).chat("e1.whatsapp.net", 5222)
        if skip != "media":
            self.https("media", "mmg.whatsapp.net").https("media", "mmg.whatsapp.net")
        if skip != "calls":
            self.stun()
        if skip != "web":
            self.https("web", "web.whatsapp.com")
        if skip != "registration":
            self.https("registration", "v.whatsapp.net")
        return self

    def features(self) -> dict[str, dict[str, Any]]:
        return derive_whatsapp_features(self.keys)


def verdict(facts: Facts, feature: str) -> tuple[str, str | None, str]:
    result = facts.features()[feature]
    return result["verdict"], result["method"], result["rule"]


# --- one rule at a time ------------------------------------------------------------------------

CHAT_CASES = [
    # (kwargs for Facts.chat, expected verdict, method, rule suffix)
    (dict(), "ok", None, "feature.all_ok"),
    (dict(answers=["198.19.250.1"], duplicates=[["198.19.1.1"]], connect_failure="generic_timeout_error"),
     "blocked", "dns", "dns.injection_race"),
    (dict(answers=["198.19.250.1"], connect_failure="generic_timeout_error"), "blocked", "dns",
     "dns.unexpected_answer"),
    (dict(dns_failure="dns_nxdomain_error"), "blocked", "dns", "dns.nxdomain"),
    (dict(dns_failure="generic_timeout_error"), "blocked", "dns", "dns.dropped"),
    (dict(dns_failure="dns_servfail_error"), "blocked", "dns", "dns.error_answer"),
    (dict(connect_failure="generic_timeout_error"), "blocked", "tcp_ip", "tcp.connect_timeout"),
    (dict(connect_failure="connection_reset"), "blocked", "tcp_reset", "tcp.connect_reset"),
    (dict(connect_failure="host_unreachable"), "blocked", "tcp_ip", "tcp.host_unreachable"),
    (dict(connect_failure="connection_refused"), "down", None, "tcp.refused"),
    (dict(connect_failure="network_unreachable"), "unknown", None, "tcp.network_unreachable"),
    (dict(reached="header_sent", failure="connection_reset", control="closed"), "blocked", "protocol_dpi",
     "chat.protocol_dpi"),
    (dict(reached="header_sent", failure="generic_timeout_error", control="answered"), "blocked", "protocol_dpi",
     "chat.protocol_dpi"),
    (dict(reached="header_sent", failure="connection_reset", control="silent"), "blocked", "protocol_dpi",
     "chat.protocol_dpi_reset"),
    (dict(reached="header_sent", failure="connection_reset", control="reset", control_failure="connection_reset"),
     "blocked", "tcp_reset", "chat.address_reset"),
    (dict(reached="header_sent", failure="generic_timeout_error", control="connect_failed",
          control_failure="generic_timeout_error"), "blocked", "tcp_ip", "chat.address_blackholed"),
    (dict(reached="header_sent", failure="eof_error", control="closed"), "down", None, "chat.server_hangs_up"),
    (dict(reached="header_sent", failure="connection_reset", control="connect_failed",
          control_failure="connection_refused"), "down", None, "chat.control_refused"),
    (dict(reached="header_sent", failure="generic_timeout_error", control="silent"), "unknown", None,
     "chat.ambiguous_silence"),
    (dict(reached="handshake", failure="unknown_failure: not WhatsApp: bad frame"), "unknown", None, "chat.garbled"),
    (dict(reached="header_sent", failure="connection_reset"), "unknown", None, "chat.failure_no_control"),
]


@pytest.mark.parametrize(("kwargs", "expected", "method", "rule"), CHAT_CASES)
def test_text_rules(kwargs: dict[str, Any], expected: str, method: str | None, rule: str) -> None:
    facts = Facts().chat(**kwargs)
    found, found_method, found_rule = verdict(facts, "text")
    assert (found, found_method) == (expected, method) and found_rule.endswith(rule), found_rule


def test_dns_timeout_with_a_dead_resolver_is_unknown() -> None:
    facts = Facts(resolver_alive=False).chat(dns_failure="generic_timeout_error")
    assert verdict(facts, "text")[:2] == ("unknown", None)
    assert verdict(facts, "text")[2].endswith("dns.resolver_unreachable")


def test_identical_duplicate_answers_are_not_injection() -> None:
    facts = Facts().chat(duplicates=[["198.19.1.1"]], reached="header_sent", failure="connection_reset",
                         control="closed")
    assert verdict(facts, "text")[:2] == ("blocked", "protocol_dpi")


def test_a_racing_answer_that_still_works_is_ok() -> None:
    facts = Facts().chat(answers=["198.19.1.7"], duplicates=[["198.19.1.1"]])
    assert verdict(facts, "text")[0] == "ok"


def test_unexpected_answer_that_works_is_ok() -> None:
    # CDNs move: an address outside the known networks is only a hint.
    facts = Facts().chat(answers=["203.0.113.9"])
    assert verdict(facts, "text")[0] == "ok"


HTTPS_CASES = [
    (dict(), "ok", None, "feature.all_ok"),
    (dict(status=404), "ok", None, "feature.all_ok"),
    (dict(status=503), "down", None, "http.server_error"),
    (dict(http_failure="connection_reset"), "unknown", None, "http.failure_after_tls"),
    (dict(tls_failure="connection_reset", sni_control="answered"), "blocked", "tls_sni", "tls.sni_filtered"),
    (dict(tls_failure="generic_timeout_error", sni_control="closed"), "blocked", "tls_sni", "tls.sni_filtered"),
    (dict(tls_failure="connection_reset", sni_control="reset"), "blocked", "tcp_reset", "tls.address_filtered"),
    (dict(tls_failure="generic_timeout_error", sni_control="silent"), "blocked", "tcp_ip",
     "tls.all_flights_silent"),
    (dict(tls_failure="connection_reset"), "unknown", None, "tls.failure_no_control"),
    (dict(tls_failure="ssl_unknown_authority"), "blocked", "tls_mitm", "tls.invalid_certificate"),
    (dict(tls_failure="ssl_invalid_hostname"), "blocked", "tls_mitm", "tls.invalid_certificate"),
    (dict(tls_failure="ssl_failed_handshake"), "unknown", None, "tls.other_failure"),
    (dict(connect_failure="connection_refused"), "down", None, "tcp.refused"),
    (dict(answers=["198.19.250.1"], connect_failure="generic_timeout_error"), "blocked", "dns",
     "dns.unexpected_answer"),
]


@pytest.mark.parametrize("feature", ["web", "registration"])
@pytest.mark.parametrize(("kwargs", "expected", "method", "rule"), HTTPS_CASES)
def test_https_rules(feature: str, kwargs: dict[str, Any], expected: str, method: str | None, rule: str) -> None:
    facts = Facts().https(feature, "v.whatsapp.net", **kwargs)
    found, found_method, found_rule = verdict(facts, feature)
    assert (found, found_method) == (expected, method) and found_rule.endswith(rule), found_rule


@pytest.mark.parametrize(
    ("failure", "tcp_elsewhere", "expected"),
    [(None, True, ("ok", None)), ("connection_refused", True, ("down", None)),
     ("generic_timeout_error", True, ("blocked", "udp_blocking")), ("generic_timeout_error", False, ("unknown", None)),
     ("network_unreachable", True, ("unknown", None))],
)
def test_calls_rules(failure: str | None, tcp_elsewhere: bool, expected: tuple[str, str | None]) -> None:
    # The resolver answers through getaddrinfo here, so only TCP can show the network works.
    facts = Facts(resolver_engine="getaddrinfo").stun(failure=failure).stun("31.13.66.51", failure=failure)
    if tcp_elsewhere:
        facts.https("web", "web.whatsapp.com")
    assert verdict(facts, "calls")[:2] == expected


# --- aggregation -------------------------------------------------------------------------------------


def test_one_working_target_is_enough_for_text() -> None:
    facts = Facts().chat(port=443).chat(port=5222, connect_failure="connection_reset")
    result = facts.features()["text"]
    assert (result["verdict"], result["rule"], result["targets_ok"], result["targets_total"]) == (
        "ok", "feature.some_ok", 1, 2)
    assert any("reset" in line for line in result["evidence"])


def test_media_needs_upload_and_download() -> None:
    facts = Facts().https("media", "mmg.whatsapp.net").https(
        "media", "mmg.whatsapp.net", tls_failure="connection_reset", sni_control="answered")
    assert verdict(facts, "media")[:2] == ("blocked", "tls_sni")
    assert verdict(facts, "media")[2].startswith("feature.any_blocked")


def test_dominant_method_wins_and_ties_go_to_the_earliest_stage() -> None:
    facts = (Facts().chat(port=443, connect_failure="generic_timeout_error")
             .chat(port=5222, connect_failure="generic_timeout_error")
             .chat("e2.whatsapp.net", dns_failure="dns_nxdomain_error"))
    assert verdict(facts, "text")[1] == "tcp_ip"
    facts = Facts().chat(port=443, connect_failure="generic_timeout_error").chat(
        "e2.whatsapp.net", dns_failure="dns_nxdomain_error")
    assert verdict(facts, "text")[1] == "dns"


def test_down_and_unjudgeable_targets_make_down_never_blocked() -> None:
    facts = Facts().chat(port=443, connect_failure="connection_refused").chat(
        port=5222, connect_failure="network_unreachable")
    assert verdict(facts, "text")[:2] == ("down", None)


def test_no_targets_is_unknown() -> None:
    result = Facts().features()["text"]
    assert (result["verdict"], result["rule"], result["targets_total"]) == ("unknown", "feature.not_measured", 0)


@pytest.mark.parametrize("blocked_feature", FEATURES)
def test_an_unblocked_feature_is_never_reported_blocked_when_another_is(blocked_feature: str) -> None:
    blockers = {
        "text": lambda f: f.chat(port=443, reached="header_sent", failure="connection_reset", control="closed"),
        "media": lambda f: f.https("media", "mmg.whatsapp.net", tls_failure="connection_reset",
                                   sni_control="answered"),
        "calls": lambda f: f.stun(failure="generic_timeout_error"),
        "web": lambda f: f.https("web", "web.whatsapp.com", dns_failure="dns_nxdomain_error"),
        "registration": lambda f: f.https("registration", "v.whatsapp.net", answers=["198.19.250.1"],
                                          duplicates=[["198.19.2.1"]], connect_failure="generic_timeout_error"),
    }
    facts = blockers[blocked_feature](Facts().all_ok(skip=blocked_feature))
    features = facts.features()
    assert features[blocked_feature]["verdict"] == "blocked"
    for other in FEATURES:
        if other != blocked_feature:
            assert features[other]["verdict"] == "ok", (other, features[other])


def test_every_feature_blocked_at_once_keeps_each_method() -> None:
    facts = (Facts().chat(reached="header_sent", failure="connection_reset", control="closed")
             .https("media", "mmg.whatsapp.net", tls_failure="connection_reset", sni_control="answered")
             .stun(failure="generic_timeout_error")
             .https("web", "web.whatsapp.com", connect_failure="generic_timeout_error")
             .https("registration", "v.whatsapp.net", dns_failure="dns_nxdomain_error"))
    found = {f: v["method"] for f, v in facts.features().items()}
    assert found == {"text": "protocol_dpi", "media": "tls_sni", "calls": "udp_blocking", "web": "tcp_ip",
                     "registration": "dns"}


def test_derivation_is_pure_and_deterministic() -> None:
    facts = Facts().all_ok().chat(port=5222, connect_failure="connection_reset")
    before = copy.deepcopy(facts.keys)
    first = facts.features()
    assert facts.keys == before and facts.features() == first


def test_verdict_shape() -> None:
    for name, result in Facts().all_ok().features().items():
        assert set(result) == {"verdict", "method", "confidence", "rule", "evidence", "targets_ok",
                               "targets_total", "partial", "blocked_share"}
        assert result["partial"] is False and result["blocked_share"] == 0.0
        assert 0.0 <= result["confidence"] <= 1.0 and result["evidence"]


# --- partial and intermittent blocking (rules/2) ---------------------------------------------------


def test_rules_version_is_3() -> None:
    assert RULES_VERSION == "wallwatch-whatsapp-verdicts/3"


def test_silent_relays_are_udp_blocking_when_the_resolver_answers_over_udp() -> None:
    # The fully blocked bench: no TCP connection succeeds, but the DNS control came back over UDP.
    facts = (Facts().stun(failure="generic_timeout_error").stun("31.13.66.51", failure="generic_timeout_error")
             .https("web", "web.whatsapp.com", connect_failure="generic_timeout_error"))
    result = facts.features()["calls"]
    assert (result["verdict"], result["method"]) == ("blocked", "udp_blocking")
    assert "UDP answers" in result["evidence"][0] and "TCP" not in result["evidence"][0]


@pytest.mark.parametrize("engine, alive", [("getaddrinfo", True), ("udp", False), ("udp", None)])
def test_calls_stay_unknown_without_udp_or_tcp_evidence(engine: str, alive: bool | None) -> None:
    facts = Facts(resolver_alive=alive, resolver_engine=engine).stun(failure="generic_timeout_error")
    assert verdict(facts, "calls")[:2] == ("unknown", None)


def chat_targets(facts: Facts, interfered: int, *, total: int = 32, **failing: Any) -> Facts:
    """`total` text targets (e1..e16 x 443/5222), the first `interfered` failing as `failing` says."""
    failing = failing or dict(reached="header_sent", failure="connection_reset", control="closed")
    for index in range(total):
        host, port = f"e{index // 2 + 1}.whatsapp.net", (443, 5222)[index % 2]
        if index < interfered:
            facts.chat(host, port, **failing)
        else:
            facts.chat(host, port)
    return facts


@pytest.mark.parametrize("interfered", [1, 16, 32])
def test_verified_interference_on_some_targets_blocks_text(interfered: int) -> None:
    result = chat_targets(Facts(), interfered).features()["text"]
    assert (result["verdict"], result["method"]) == ("blocked", "protocol_dpi")
    assert result["blocked_share"] == round(interfered / 32, 4)
    assert result["targets_ok"] == 32 - interfered
    if interfered == 32:
        assert result["partial"] is False and result["rule"] == "feature.none_ok_blocked+chat.protocol_dpi"
        assert result["confidence"] == 0.9
    else:
        assert result["partial"] is True and result["rule"] == "feature.partial_blocked+chat.protocol_dpi"
        assert result["evidence"][0].startswith(f"{interfered} of 32 targets show verified interference")


def test_partial_confidence_grows_with_the_share_and_stays_below_a_full_block() -> None:
    confidences = [chat_targets(Facts(), n).features()["text"]["confidence"] for n in (1, 8, 16, 31, 32)]
    assert confidences == sorted(confidences) and len(set(confidences)) == 5
    assert confidences[0] < 0.5 and confidences[-2] < confidences[-1]


@pytest.mark.parametrize("weak", [
    dict(connect_failure="generic_timeout_error"),
    dict(connect_failure="connection_reset"),
    dict(dns_failure="dns_nxdomain_error"),
    dict(reached="header_sent", failure="connection_reset", control="reset", control_failure="connection_reset"),
    dict(reached="header_sent", failure="connection_reset", control="silent"),
    dict(reached="header_sent", failure="generic_timeout_error", control="connect_failed",
         control_failure="generic_timeout_error"),
    dict(reached="header_sent", failure="generic_timeout_error", control="silent"),
    dict(reached="header_sent", failure="eof_error", control="closed"),
])
@pytest.mark.parametrize("interfered", [1, 16, 31])
def test_weak_evidence_never_blocks_a_partly_working_feature(weak: dict[str, Any], interfered: int) -> None:
    result = chat_targets(Facts(), interfered, **weak).features()["text"]
    assert (result["verdict"], result["rule"], result["partial"]) == ("ok", "feature.some_ok", False)
    assert result["targets_ok"] == 32 - interfered


@pytest.mark.parametrize(("strong", "method", "rule"), [
    (dict(reached="header_sent", failure="generic_timeout_error", control="answered"), "protocol_dpi",
     "chat.protocol_dpi"),
    (dict(reached="header_sent", failure="connection_reset", control="connect_failed",
          control_failure="generic_timeout_error"), "residual", "chat.reset_then_blackholed"),
    (dict(answers=["198.19.250.1"], duplicates=[["198.19.1.1"]], connect_failure="generic_timeout_error"), "dns",
     "dns.injection_race"),
    (dict(answers=["198.19.250.1"], connect_failure="generic_timeout_error"), "dns", "dns.unexpected_answer"),
])
def test_each_kind_of_strong_evidence_blocks_partially(strong: dict[str, Any], method: str, rule: str) -> None:
    result = chat_targets(Facts(), 3, **strong).features()["text"]
    assert (result["verdict"], result["method"], result["partial"]) == ("blocked", method, True)
    assert result["rule"] == f"feature.partial_blocked+{rule}"


def test_sni_filtering_on_one_of_two_web_attempts_is_partial() -> None:
    facts = Facts().https("web", "web.whatsapp.com").https(
        "web", "web.whatsapp.com", tls_failure="connection_reset", sni_control="answered")
    result = facts.features()["web"]
    assert (result["verdict"], result["method"], result["partial"], result["blocked_share"]) == (
        "blocked", "tls_sni", True, 0.5)


def test_partial_verdict_lists_strong_evidence_before_weak() -> None:
    facts = chat_targets(Facts(), 2)
    facts.chat("e9.whatsapp.net", 443, connect_failure="generic_timeout_error")
    result = facts.features()["text"]
    assert result["blocked_share"] == round(3 / 33, 4) and result["partial"]
    assert "connection_reset" in result["evidence"][1] and "timed out" in result["evidence"][-1]


def test_weak_evidence_is_counted_in_the_share_of_an_ok_feature() -> None:
    result = chat_targets(Facts(), 4, connect_failure="generic_timeout_error").features()["text"]
    assert (result["verdict"], result["blocked_share"], result["partial"]) == ("ok", 0.125, False)


# --- residual blocking (rules/3) ---------------------------------------------------------------------


def test_reset_on_the_header_then_blackholed_is_residual() -> None:
    facts = Facts().all_ok(skip="text").chat(reached="header_sent", failure="connection_reset",
                                              control="connect_failed", control_failure="generic_timeout_error")
    result = facts.features()["text"]
    assert (result["verdict"], result["method"], result["rule"]) == (
        "blocked", "residual", "feature.none_ok_blocked+chat.reset_then_blackholed")


def test_reset_on_the_clienthello_then_blackholed_is_residual_not_an_address_block() -> None:
    facts = Facts().all_ok(skip="media").https("media", "mmg.whatsapp.net", tls_failure="connection_reset",
                                                sni_control="connect_failed")
    facts.x["controls"][-1]["failure"] = "generic_timeout_error"
    result = facts.features()["media"]
    assert (result["verdict"], result["method"]) == ("blocked", "residual"), result
    assert "tls.reset_then_blackholed" in result["rule"]


def test_a_connect_timeout_after_a_reset_on_the_same_address_is_residual() -> None:
    """The download is reset on its ClientHello; the upload, dialled after, cannot even connect."""
    facts = Facts().all_ok(skip="media").https("media", "mmg.whatsapp.net", tls_failure="connection_reset",
                                                sni_control="connect_failed")
    facts.x["controls"][-1]["failure"] = "generic_timeout_error"
    facts.keys["network_events"].append({"operation": "read", "address": "198.19.2.1:443", "failure":
                                         "connection_reset", "t0": 0.10, "t": 0.11, "transaction_id": 99,
                                         "tags": ["feature:media", "endpoint:mmg.whatsapp.net:443"]})
    facts.https("media", "mmg.whatsapp.net", connect_failure="generic_timeout_error")
    facts.keys["tcp_connect"][-1]["t0"] = 0.2
    result = facts.features()["media"]
    assert (result["verdict"], result["method"]) == ("blocked", "residual"), result
    assert any("after another connection to it was reset" in line for line in result["evidence"])
    # Dialled before the reset, the same timeout says nothing of a penalty box: an address block,
    # which as the earlier stage wins the tie between the two attempts.
    facts.keys["tcp_connect"][-1]["t0"] = 0.05
    assert facts.features()["media"]["method"] == "tcp_ip"
