"""Issue-4 techniques in the sans-IO engine: each analyzer's properties, and the rule
options (probability, residual, throttle/delay), on synthetic packet sequences."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest

from tests.censor.payloads import CASES, RANDOMISH
from tests.censor.test_engine import CLIENT, Tcp
from wallwatch.censor.actions import CLASS_MASK, MARK_MASK, VERDICT_ALLOW, class_mark, offload_mark, wants_repeat
from wallwatch.censor.engine import Censor
from wallwatch.censor.policy import PolicyError, parse_policy
from wallwatch.protocols import dns, inet, mtproto, openvpn, quic, tls, tor, wireguard

SERVER = "198.19.2.2"


def censor(*rules: dict[str, Any], seed: int = 7, log: list | None = None) -> Censor:
    return Censor(parse_policy({"name": "t", "rules": list(rules)}), seed=seed,
                  log=log.append if log is not None else None)


def tcp_first_data(c: Censor, payload: bytes, port: int = 443, sport: int = 40000, now: float = 1.0):
    conn = Tcp(SERVER, port, sport)
    for raw in (conn.syn(), conn.synack(), conn.ack()):
        c.handle(raw, now)
    return c.handle(conn.client_data(payload), now)


def udp(c: Censor, payload: bytes, sport: int = 40000, dport: int = 443, now: float = 1.0, reply: bool = False):
    if reply:
        return c.handle(inet.build_udp(SERVER, CLIENT, dport, sport, payload), now)
    return c.handle(inet.build_udp(CLIENT, SERVER, sport, dport, payload), now)


def props(c: Censor) -> dict[str, Any]:
    (flow,) = list(c.flows)
    return flow.props


# --- fet ---------------------------------------------------------------------

FET_DROP = {"name": "fet", "match": {"fet.suspicious": True}, "action": "drop"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fet_exemptions_exactly_as_the_paper(case: str) -> None:
    payload, exemption = CASES[case]
    c = censor(FET_DROP)
    decision = tcp_first_data(c, payload)
    assert decision.accept == (exemption is not None), case
    assert props(c)["fet.exemption"] == exemption
    assert props(c)["fet.suspicious"] is (exemption is None)


def test_fet_real_tls_and_http_are_never_suspicious() -> None:
    for payload in (tls.build_client_hello("example.org"), b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n"):
        c = censor(FET_DROP)
        assert tcp_first_data(c, payload).accept and props(c)["fet.suspicious"] is False


def test_fet_looks_at_the_first_data_packet_only() -> None:
    c = censor(FET_DROP)
    conn = Tcp(SERVER)
    for raw in (conn.syn(), conn.synack(), conn.ack()):
        c.handle(raw, 1.0)
    assert c.handle(conn.client_data(b"GET / HTTP/1.1\r\n\r\n"), 1.0).accept
    assert c.handle(conn.client_data(RANDOMISH), 1.0).accept  # later random bytes change nothing


# --- VPN and messenger fingerprints --------------------------------------------


OVPN_DROP = {"name": "ovpn", "match": {"openvpn.handshake": True}, "action": "drop"}


def test_openvpn_udp_is_decided_when_the_client_answers_the_server_reset() -> None:
    """Xue et al. 2022 §4: client reset, server reset, then the client's ack/control."""
    c = censor(OVPN_DROP)
    sid, server_sid = b"c" * 8, b"s" * 8
    assert udp(c, openvpn.build_client_hard_reset_v2(sid), dport=1194).accept
    assert props(c)["openvpn.client_reset"] is True
    assert props(c)["openvpn.opcode"] == openvpn.P_CONTROL_HARD_RESET_CLIENT_V2
    assert udp(c, openvpn.build_client_hard_reset_v2(sid), dport=1194).accept  # a resend changes nothing
    assert udp(c, openvpn.build_server_hard_reset_v2(server_sid, sid), dport=1194, reply=True).accept
    hello = openvpn.build_control(openvpn.P_CONTROL_V1, sid, acks=(0,), remote_session_id=server_sid,
                                  packet_id=1, payload=b"\x16\x03\x01hello")
    decision = udp(c, hello, dport=1194)
    assert (decision.accept, decision.rule) == (False, "ovpn")
    assert props(c)["openvpn.handshake"] is True


def test_openvpn_tcp_is_decided_on_the_framed_client_reset() -> None:
    c = censor(OVPN_DROP)
    assert not tcp_first_data(c, openvpn.build_client_hard_reset_v2(tcp=True), port=1194).accept
    assert props(c)["openvpn.handshake"] is True


def test_openvpn_not_matched() -> None:
    c = censor(OVPN_DROP)
    assert udp(c, b"\x00\x01ping", dport=1194).accept and props(c)["openvpn.handshake"] is False
    c = censor(OVPN_DROP)  # a server's reset first is not a client opening a session
    assert udp(c, openvpn.build_server_hard_reset_v2(b"s" * 8, b"c" * 8), dport=1194).accept
    assert props(c)["openvpn.handshake"] is False
    c = censor(OVPN_DROP)  # the right opcode with key_id 3: not a session's first key
    odd = bytearray(openvpn.build_client_hard_reset_v2())
    odd[0] |= 3
    assert udp(c, bytes(odd), dport=1194).accept and props(c)["openvpn.client_reset"] is False
    c = censor(OVPN_DROP)  # a client reset answered by something else: not OpenVPN
    assert udp(c, openvpn.build_client_hard_reset_v2(b"c" * 8), dport=1194).accept
    assert udp(c, b"\x00\x01pong", dport=1194, reply=True).accept
    assert udp(c, b"more", dport=1194).accept and props(c)["openvpn.handshake"] is False


def test_openvpn_rule_never_drops_dns() -> None:
    """Every transaction id, including the 24 whose first byte reads as a client reset opcode:
    the query passes (nothing decided yet) and its answer, which repeats the id, rules it out."""
    c = censor(OVPN_DROP)
    for tid in range(0, 65536, 256):  # every first byte
        query = dns.build_query("e1.whatsapp.net", "A", query_id=tid)
        sport = 20000 + tid // 256
        assert udp(c, query, sport=sport, dport=53).accept
        answer = bytearray(query)
        answer[2] |= 0x80  # QR: a response with the same id
        assert udp(c, bytes(answer), sport=sport, dport=53, reply=True).accept
        assert udp(c, query, sport=sport, dport=53).accept  # the flow is settled: allowed
    assert c.counters["decisions.drop"] == 0 and c.counters["decisions.allow"] == 256


def test_openvpn_client_reset_is_a_first_packet_property() -> None:
    rule = {"name": "ovpn-first", "match": {"openvpn.client_reset": True}, "action": "drop"}
    c = censor(rule)
    assert not udp(c, openvpn.build_client_hard_reset_v2(), dport=1194).accept


def test_wireguard_handshake_and_reserved_bytes() -> None:
    rule = {"name": "wg", "match": {"wireguard.handshake": True}, "action": "drop"}
    c = censor(rule)
    assert not udp(c, wireguard.build_initiation(1234), dport=51820).accept
    assert props(c)["wireguard.message_type"] == wireguard.HANDSHAKE_INITIATION
    odd = bytearray(wireguard.build_initiation(1234))
    odd[2] = 1  # right type and size, non-zero reserved byte: not WireGuard
    c = censor(rule)
    assert udp(c, bytes(odd), dport=51820).accept and props(c)["wireguard.handshake"] is False
    c = censor(rule)
    assert udp(c, wireguard.build_initiation(1)[:147], dport=51820).accept  # one byte short


def test_mtproto_obfuscated2_tag() -> None:
    rule = {"name": "tg", "match": {"mtproto.obfuscated2": True}, "action": "reset"}
    for tag, name in ((mtproto.TAG_ABRIDGED, "abridged"), (mtproto.TAG_INTERMEDIATE, "intermediate"),
                      (mtproto.TAG_PADDED_INTERMEDIATE, "padded")):
        header, _ = mtproto.client(tag)
        c = censor(rule)
        decision = tcp_first_data(c, header)
        assert not decision.accept and decision.inject and props(c)["mtproto.tag"] == name
    c = censor(rule)
    assert tcp_first_data(c, RANDOMISH[:64]).accept and props(c)["mtproto.obfuscated2"] is False


def test_quic_initial_sni_and_the_port_rule() -> None:
    rule = {"name": "quic", "match": {"quic.sni": {"suffix": "blocked.example"}, "quic.src_port_gt_dst": True},
            "action": "drop"}
    c = censor(rule)
    assert not udp(c, quic.build_initial("www.blocked.example"), sport=50000).accept
    assert props(c)["quic.version"] == quic.QUIC_V1
    c = censor(rule)
    assert udp(c, quic.build_initial("allowed.example"), sport=50000).accept
    c = censor(rule)  # src port below dst port: the GFW does not look
    assert udp(c, quic.build_initial("www.blocked.example"), sport=400).accept
    c = censor(rule)  # a random datagram first exempts the flow (GFW inspects the first packet only)
    assert udp(c, b"\x17random", sport=50000).accept
    assert udp(c, quic.build_initial("www.blocked.example"), sport=50000).accept


def test_tor_client_hello() -> None:
    rule = {"name": "tor", "match": {"tor.tls": True}, "action": "reset"}
    c = censor(rule)
    assert not tcp_first_data(c, tor.build_client_hello(), port=9001).accept
    c = censor(rule)
    assert tcp_first_data(c, tls.build_client_hello("www.example.com"), port=9001).accept


def test_http_keyword_on_any_port() -> None:
    rule = {"name": "pooh", "match": {"http.target": {"contains": "winnie"}}, "action": "reset"}
    c = censor(rule)
    decision = tcp_first_data(c, b"GET /search?q=Winnie+the+Pooh HTTP/1.1\r\nHost: x\r\n\r\n", port=8080)
    assert not decision.accept and len(decision.inject) == 6
    c = censor(rule)
    assert tcp_first_data(c, b"GET /search?q=honey HTTP/1.1\r\nHost: x\r\n\r\n", port=8080).accept


# --- rule options --------------------------------------------------------------------


def _binomial_bounds(n: int, p: float, sigmas: float = 4.5) -> tuple[float, float]:
    spread = sigmas * math.sqrt(n * p * (1 - p))
    return n * p - spread, n * p + spread


def test_probability_per_flow_binomial_and_seeded() -> None:
    rule = {"name": "flaky", "match": {"port.dst": 443}, "action": "drop", "probability": 0.3}
    n = 2000

    def caught(seed: int) -> list[bool]:
        c = censor(rule, seed=seed)
        return [not udp(c, b"x", sport=1024 + i).accept for i in range(n)]

    first = caught(1)
    low, high = _binomial_bounds(n, 0.3)
    assert low <= sum(first) <= high
    assert caught(1) == first  # same seed, same flows: same decisions
    assert caught(2) != first


def test_probability_is_decided_once_per_flow() -> None:
    rule = {"name": "flaky", "match": {"port.dst": 443}, "action": "drop", "probability": 0.5}
    c = censor(rule)
    verdicts = {sport: udp(c, b"x", sport=sport).accept for sport in range(1024, 1124)}
    for sport, first in verdicts.items():
        assert udp(c, b"again", sport=sport, now=2.0).accept == first


def test_a_skipped_rule_falls_through_to_the_next() -> None:
    rules = ({"name": "never", "match": {"port.dst": 443}, "action": "drop", "probability": 1e-9},
             {"name": "then", "match": {"port.dst": 443}, "action": "reset"})
    c = censor(*rules)
    decision = udp(c, b"x")
    assert (decision.accept, decision.rule) == (False, "then")


def test_residual_triple_blocks_new_flows_for_its_time() -> None:
    rule = {"name": "pooh", "match": {"http.target": {"contains": "pooh"}}, "action": "reset",
            "residual": {"seconds": 2, "scope": "triple"}}
    log: list = []
    c = censor(rule, log=log)
    assert not tcp_first_data(c, b"GET /pooh HTTP/1.1\r\n\r\n", port=8080, sport=40000, now=10.0).accept
    syn = Tcp(SERVER, 8080, 40001).syn()
    assert not c.handle(syn, 11.0).accept and c.handle(syn, 11.0).mark == 0  # not offloaded
    assert tcp_first_data(c, b"GET / HTTP/1.1\r\n\r\n", port=8081, sport=40002, now=11.0).accept  # other port
    assert tcp_first_data(c, b"GET / HTTP/1.1\r\n\r\n", port=8080, sport=40003, now=12.1).accept  # time is up
    assert c.counters["residual_drops"] == 2
    assert any(e.get("residual") for e in log)


def test_residual_pair_and_duration() -> None:
    pair = {"name": "p", "match": {"port.dst": 443}, "action": "drop", "residual": {"seconds": 5, "scope": "pair"}}
    c = censor(pair)
    assert not udp(c, b"x", dport=443, now=1.0).accept
    assert not udp(c, b"x", sport=40001, dport=53, now=2.0).accept  # any port to the same server
    fet = dict(FET_DROP, duration=180)
    c = censor(fet)
    assert not tcp_first_data(c, RANDOMISH, port=5000, sport=40000, now=1.0).accept
    assert not c.handle(Tcp(SERVER, 5000, 40001).syn(), 180.0).accept
    assert c.handle(Tcp(SERVER, 5000, 40001).syn(), 181.5).accept  # the retransmitted SYN passes once time is up


def test_throttle_rate_marks_the_htb_class_and_offloads() -> None:
    c = censor({"name": "slow", "match": {"port.dst": 5201}, "action": "throttle", "rate": "2mbit"})
    decision = tcp_first_data(c, b"bulk", port=5201)
    assert decision.accept and decision.action == "throttle" and decision.hold_until is None
    assert decision.mark & CLASS_MASK == class_mark(1)
    assert decision.mark & MARK_MASK == offload_mark(c.generation, VERDICT_ALLOW) and wants_repeat(decision.mark)
    assert c.policy.throttle_classes == ((1, 2_000_000, "slow"),)


def test_delay_holds_every_packet_in_order() -> None:
    c = censor({"name": "lag", "match": {"proto": "udp"}, "action": "throttle", "delay_ms": 100, "jitter_ms": 50})
    releases = []
    for i in range(200):
        now = 1.0 + i * 0.001
        decision = udp(c, b"x", now=now)
        assert decision.accept and not wants_repeat(decision.mark)  # stays in Python
        assert 0.05 - 1e-9 <= decision.hold_until - now <= 0.15 + 0.2
        releases.append(decision.hold_until)
    assert releases == sorted(releases)  # jitter never reorders the flow
    assert c.counters["held"] == 200


# --- policy vocabulary ---------------------------------------------------------------


@pytest.mark.parametrize("rule, message", [
    ({"match": {"port.dst": 1}, "action": "drop", "probability": 0}, "'probability' must be a number in (0, 1]"),
    ({"match": {"ip.dst": "198.19.1.1"}, "action": "blackhole-ip", "probability": 0.5}, "cannot apply to blackhole-ip"),
    ({"match": {"port.dst": 1}, "action": "allow", "residual": {"seconds": 9}}, "only follow a blocking action"),
    ({"match": {"port.dst": 1}, "action": "drop", "residual": {"seconds": 9, "scope": "host"}}, "'scope' must be"),
    ({"match": {"port.dst": 1}, "action": "drop", "residual": {"secs": 9}}, "unknown key(s) secs"),
    ({"match": {"port.dst": 1}, "action": "drop", "duration": 9, "residual": {}}, "not both"),
    ({"match": {"port.dst": 1}, "action": "throttle"}, "throttle needs a 'rate'"),
    ({"match": {"port.dst": 1}, "action": "throttle", "rate": "fast"}, "a rate is a number and a unit"),
    ({"match": {"port.dst": 1}, "action": "throttle", "rate": "1bit"}, "within 8kbit..10gbit"),
    ({"match": {"port.dst": 1}, "action": "throttle", "delay_ms": 10, "jitter_ms": 20}, "cannot exceed"),
    ({"match": {"port.dst": 1}, "action": "drop", "rate": "1mbit"}, "only apply to the throttle action"),
    ({"match": {"http.target": {"contains": ""}}, "action": "drop"}, "empty keyword"),
    ({"match": {"fet.suspicious": {"contains": "x"}}, "action": "drop"}, "does not apply to a bool"),
])
def test_bad_options_have_clear_errors(rule: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy({"name": "bad", "rules": [{"name": "r", **rule}]})
    assert message in str(info.value) and "rule 'r'" in str(info.value)


def test_rates_in_tc_units() -> None:
    from wallwatch.censor.policy import parse_rate

    assert [parse_rate(v) for v in ("256kbit", "1.5mbit", "1gbit", "100kbps", "8000bit")] == \
        [256_000, 1_500_000, 1_000_000_000, 800_000, 8000]


def test_garbage_never_crashes_the_new_analyzers() -> None:
    everything = [{"name": k, "match": {k: True}, "action": "drop"} for k in
                  ("fet.suspicious", "openvpn.handshake", "wireguard.handshake", "mtproto.obfuscated2", "tor.tls")]
    everything.append({"name": "q", "match": {"quic.sni": "x"}, "action": "drop"})
    import random

    rng = random.Random(5)
    c = censor(*everything)
    for i in range(300):
        payload = bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 300)))
        if i % 3 == 0:
            payload = bytes([0xC0]) + struct.pack("!I", 1) + payload  # QUIC-looking long header
        udp(c, payload, sport=2000 + i)
        tcp_first_data(c, payload, sport=3000 + i)
    assert c.counters["analyzer_errors"] == 0
