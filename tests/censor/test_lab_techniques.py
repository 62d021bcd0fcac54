"""Issue-4 techniques in real namespaces: each rule does exactly what it says, and nothing
to other traffic. One topology and one censor for the module; each test installs its
policy by SIGHUP (conftest.LiveCensor)."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest

from tests.censor.conftest import LiveCensor
from tests.censor.payloads import CASES, RANDOMISH
from wallwatch.protocols import mtproto, openvpn, quic, tls, tor, wireguard

pytestmark = [pytest.mark.lab, pytest.mark.timeout(180)]

SERVER, ECHO_A, ECHO_B = "198.19.2.2", "198.19.3.1", "198.19.3.2"


def one_rule(name: str, match: dict[str, Any], action: str, **options: Any) -> dict[str, Any]:
    return {"name": name, "rules": [{"name": name, "match": match, "action": action, **options}]}


def test_fet_exempts_exactly_per_the_paper(live_censor: LiveCensor) -> None:
    live_censor.use(one_rule("fet", {"fet.suspicious": True}, "drop"))
    names = sorted(CASES)
    payloads = [CASES[n][0] for n in names]
    payloads += [tls.build_client_hello("example.org"), b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n"]
    results = live_censor.topology.raw(SERVER, 5201, payloads)
    expected = ["reply" if CASES[n][1] else "timeout" for n in names] + ["reply", "reply"]
    assert dict(zip(names + ["tls", "http"], results)) == dict(zip(names + ["tls", "http"], expected))
    exemptions = {d["props"]["fet.exemption"] for d in live_censor.censor.decisions()
                  if d["rule"] is None and "fet.exemption" in d["props"]}
    assert {e for _, e in CASES.values() if e} <= exemptions


def test_openvpn_handshake_rule_on_tcp_and_what_it_spares_on_udp(live_censor: LiveCensor) -> None:
    """TCP: the framed client reset is dropped. UDP needs the server's reset before it decides
    (caught end to end against the lab's real OpenVPN server in tests/probe/test_openvpn_lab.py and
    tests/realclients/test_real_openvpn.py); here an echo answers, so nothing is OpenVPN, including
    DNS-shaped datagrams whose transaction id reads as a client reset (opcodes 1, 7, 10, key_id 0)."""
    from wallwatch.protocols import dns

    live_censor.use(one_rule("openvpn", {"openvpn.handshake": True}, "drop"))
    topo = live_censor.topology
    assert topo.raw(SERVER, 1194, [openvpn.build_client_hard_reset_v2(tcp=True), b"\x00\x10" + RANDOMISH[:16]]) == \
        ["timeout", "reply"]
    lookalikes = [dns.build_query("e1.whatsapp.net", "A", query_id=(opcode << 3) << 8 | 0x34) for opcode in (1, 7, 10)]
    assert topo.udp(SERVER, 1194, [openvpn.build_client_hard_reset_v2(), *lookalikes]) == ["reply"] * 4
    decided = [d for d in live_censor.censor.decisions() if d["proto"] == "udp"]
    assert decided and not [d for d in decided if d["action"] == "drop"]


def test_wireguard_handshake_but_not_nonzero_reserved_bytes(live_censor: LiveCensor) -> None:
    live_censor.use(one_rule("wireguard", {"wireguard.handshake": True}, "drop"))
    odd = bytearray(wireguard.build_initiation(99))
    odd[3] = 0x80  # WireGuard-sized, type 1, reserved byte not zero
    results = live_censor.topology.udp(SERVER, 51820, [wireguard.build_initiation(7), bytes(odd)])
    assert results == ["timeout", "reply"]


def test_mtproto_obfuscated2_tag(live_censor: LiveCensor) -> None:
    live_censor.use(one_rule("telegram", {"mtproto.obfuscated2": True}, "reset"))
    header, _ = mtproto.client(mtproto.TAG_PADDED_INTERMEDIATE)
    assert live_censor.topology.raw(SERVER, 443, [header, RANDOMISH[:64]]) == ["reset", "reply"]


def test_quic_initial_sni_and_the_port_rule(live_censor: LiveCensor) -> None:
    live_censor.use(one_rule("quic-sni", {"quic.sni": {"suffix": "blocked.example"}, "quic.src_port_gt_dst": True},
                             "drop"))
    topo = live_censor.topology
    high = topo.udp(SERVER, 443, [quic.build_initial("www.blocked.example"), quic.build_initial("fine.example")],
                    sport=45000)
    assert high == ["timeout", "reply"]
    assert topo.udp(SERVER, 443, [quic.build_initial("www.blocked.example")], sport=400) == ["reply"]


def test_tor_link_handshake(live_censor: LiveCensor) -> None:
    live_censor.use(one_rule("tor", {"tor.tls": True}, "reset"))
    assert live_censor.topology.raw(SERVER, 9001, [tor.build_client_hello(), tls.build_client_hello("example.org")]) \
        == ["reset", "reply"]


def test_http_keyword_reset_on_port_8080(live_censor: LiveCensor) -> None:
    live_censor.use(one_rule("pooh", {"http.target": {"contains": "winnie"}}, "reset"))
    with_keyword = b"GET /search?q=Winnie-the-Pooh HTTP/1.1\r\nHost: example.org\r\n\r\n"
    without = b"GET /search?q=honey-pot HTTP/1.1\r\nHost: example.org\r\n\r\n"
    assert live_censor.topology.raw(SERVER, 8080, [with_keyword, without]) == ["reset", "reply"]


def _binomial_interval(n: int, p: float, alpha: float = 1e-4) -> tuple[int, int]:
    pmf = [math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1)]
    lo, tail = 0, 0.0
    while tail + pmf[lo] <= alpha / 2:
        tail += pmf[lo]
        lo += 1
    hi, tail = n, 0.0
    while tail + pmf[hi] <= alpha / 2:
        tail += pmf[hi]
        hi -= 1
    return lo, hi


def test_probability_gives_a_binomial_count(live_censor: LiveCensor) -> None:
    n, p = 60, 0.3
    live_censor.use(one_rule("on-and-off", {"proto": "udp", "port.dst": 3478}, "drop", probability=p))
    results = live_censor.topology.udp(ECHO_A, 3478, [b"flow%d" % i for i in range(n)], sport=30000)
    caught = results.count("timeout")
    low, high = _binomial_interval(n, p)
    assert low <= caught <= high and caught + results.count("reply") == n, results


def test_residual_penalty_box_then_release(live_censor: LiveCensor) -> None:
    live_censor.use(one_rule("pooh", {"http.target": {"contains": "pooh"}}, "reset",
                             residual={"seconds": 2, "scope": "triple"}))
    topo = live_censor.topology
    innocuous = b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n"
    triggered = time.monotonic()
    assert topo.raw(SERVER, 8080, [b"GET /pooh HTTP/1.1\r\n\r\n"]) == ["reset"]
    # During the penalty: a fresh connection to the same triple is dropped; another port is not.
    assert topo.raw(SERVER, 8080, [innocuous], timeout=0.8) == ["connect_timeout"]
    assert topo.raw(SERVER, 5201, [innocuous]) == ["reply"]
    assert time.monotonic() - triggered < 2.0, "too slow to test inside the penalty"
    time.sleep(max(0.0, triggered + 2.3 - time.monotonic()))
    assert topo.raw(SERVER, 8080, [innocuous]) == ["reply"]
    assert live_censor.censor.counters()["residual_drops"] >= 1


def test_throttle_rate_both_directions_and_nothing_else(live_censor: LiveCensor) -> None:
    rate = 4_000_000
    live_censor.use(one_rule("slow", {"proto": "tcp", "port.dst": [5202, 5204]}, "throttle", rate="4mbit"))
    topo = live_censor.topology
    assert "CLASSIFY --set-class 0001:0001" in topo.iptables_rules("mangle")
    up = topo.client_run("bulk", SERVER, "5202", str(1_500_000), timeout=60)
    down = topo.client_run("download", SERVER, "5204", str(1_500_000), timeout=60)
    free_up = topo.client_run("bulk", SERVER, "5203", str(8_000_000), timeout=60)
    free_down = topo.client_run("download", SERVER, "5205", str(8_000_000), timeout=60)
    up_rate = up["sent"] * 8 / up["seconds"]
    down_rate = down["received"] * 8 / down["seconds"]
    assert abs(up_rate / rate - 1) <= 0.15, up_rate
    assert abs(down_rate / rate - 1) <= 0.15, down_rate
    assert free_up["sent"] * 8 / free_up["seconds"] > 5 * rate
    assert free_down["received"] * 8 / free_down["seconds"] > 5 * rate
    live_censor.use({"name": "none", "rules": []})
    assert "CLASSIFY" not in topo.iptables_rules("mangle")


def test_delay_adds_latency_to_one_flow_only(live_censor: LiveCensor) -> None:
    live_censor.use(one_rule("lag", {"proto": "udp", "ip.dst": ECHO_A}, "throttle", delay_ms=150, jitter_ms=20))
    topo = live_censor.topology
    delayed = [r for r in topo.client_run("udprtt", ECHO_A, "3478", "8")["rtts"] if r is not None]
    other = [r for r in topo.client_run("udprtt", ECHO_B, "3478", "8")["rtts"] if r is not None]
    assert len(delayed) == len(other) == 8
    # Both directions are held: 2 x (150 +- 20) ms on top of the path's own RTT.
    assert all(0.26 <= r <= 0.45 for r in delayed), delayed
    assert max(other) < 0.05, other
    assert live_censor.censor.counters()["held"] >= 16
