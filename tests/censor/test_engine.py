"""censor.engine: flow decisions on synthetic packet sequences (sans-IO, no kernel)."""

from __future__ import annotations

from typing import Any

from wallwatch.censor.actions import MARK_MASK, VERDICT_ALLOW, VERDICT_DROP, offload_mark
from wallwatch.censor.analyzers import Analyzer
from wallwatch.censor.engine import MAX_UNDECIDED_PACKETS, Censor
from wallwatch.censor.flows import FlowTable, StreamBuffer
from wallwatch.censor.policy import parse_policy
from wallwatch.protocols import dns, inet, tls, whatsapp

CLIENT, MEDIA, CHAT, RESOLVER, RELAY = "198.18.0.2", "198.19.2.3", "198.19.1.1", "198.19.0.53", "198.19.3.1"


def policy(*rules: dict[str, Any]):
    return parse_policy({"name": "test", "rules": list(rules)})


class Tcp:
    """A client<->server TCP conversation that keeps its own sequence numbers."""

    def __init__(self, server: str, port: int = 443, sport: int = 40000) -> None:
        self.server, self.port, self.sport = server, port, sport
        self.cseq, self.sseq = 1000, 90000

    def syn(self) -> bytes:
        return inet.build_tcp(CLIENT, self.server, self.sport, self.port, seq=self.cseq, flags=inet.SYN)

    def synack(self) -> bytes:
        return inet.build_tcp(self.server, CLIENT, self.port, self.sport, seq=self.sseq, ack=self.cseq + 1,
                              flags=inet.SYN | inet.ACK)

    def ack(self) -> bytes:
        self.cseq += 1
        self.sseq += 1
        return inet.build_tcp(CLIENT, self.server, self.sport, self.port, seq=self.cseq, ack=self.sseq)

    def client_data(self, payload: bytes, seq: int | None = None) -> bytes:
        seq = self.cseq if seq is None else seq
        self.cseq = max(self.cseq, seq + len(payload))
        return inet.build_tcp(CLIENT, self.server, self.sport, self.port, seq=seq, ack=self.sseq,
                              flags=inet.ACK | inet.PSH, payload=payload)

    def server_data(self, payload: bytes) -> bytes:
        raw = inet.build_tcp(self.server, CLIENT, self.port, self.sport, seq=self.sseq, ack=self.cseq,
                             flags=inet.ACK | inet.PSH, payload=payload)
        self.sseq += len(payload)
        return raw

    def handshake(self, censor: Censor) -> list:
        return [censor.handle(p, 1.0) for p in (self.syn(), self.synack(), self.ack())]


MEDIA_RESET = {"name": "media-sni", "match": {"tls.sni": "mmg.whatsapp.net"}, "action": "reset", "count": 3}


def test_sni_reset_injects_rsts_with_exact_sequence_numbers() -> None:
    censor = Censor(policy(MEDIA_RESET))
    conn = Tcp(MEDIA)
    assert all(d.accept and not d.mark for d in conn.handshake(censor))
    trigger_seq = conn.cseq
    hello = tls.build_client_hello("mmg.whatsapp.net")
    decision = censor.handle(conn.client_data(hello), 1.0)
    assert (decision.accept, decision.rule, decision.action) == (False, "media-sni", "reset")
    assert decision.mark == offload_mark(censor.generation, VERDICT_DROP)
    rsts = [inet.parse_packet(i.data) for i in decision.inject]
    to_client = [p for p in rsts if p.dst == CLIENT]
    to_server = [p for p in rsts if p.dst == MEDIA]
    assert len(to_client) == len(to_server) == 3
    for p in to_client:  # spoofed from the server, at the client's rcv_nxt
        assert (p.src, p.sport, p.dport, p.seq, p.ack) == (MEDIA, 443, 40000, conn.sseq, trigger_seq + len(hello))
        assert p.has(inet.RST)
    for p in to_server:  # spoofed from the client, at the server's rcv_nxt (the dropped trigger's seq)
        assert (p.src, p.sport, p.dport, p.seq) == (CLIENT, 40000, 443, trigger_seq)
    assert all(inet.verify_checksums(i.data) for i in decision.inject)
    # Later packets of the flow get the same kernel verdict without new analysis.
    again = censor.handle(conn.client_data(b"more"), 1.1)
    assert (again.accept, again.mark, again.inject) == (False, decision.mark, ())
    assert censor.counters["queued_after_decision"] == 1


def test_a_new_connection_on_a_reused_port_is_judged_afresh() -> None:
    """The old connection was reset for its SNI; a new one from the same source port to the
    same server (a reused ephemeral port) with another SNI must pass, whatever the table held."""
    censor = Censor(policy(MEDIA_RESET))
    old = Tcp(MEDIA)
    old.handshake(censor)
    assert censor.handle(old.client_data(tls.build_client_hello("mmg.whatsapp.net")), 1.0).action == "reset"
    new = Tcp(MEDIA)
    new.cseq, new.sseq = 555_000, 777_000  # a new ISN on the same 5-tuple
    syn = censor.handle(new.syn(), 2.0)
    assert syn.accept and not syn.mark  # not the old flow's DROP
    assert all(d.accept for d in (censor.handle(new.synack(), 2.0), censor.handle(new.ack(), 2.0)))
    decision = censor.handle(new.client_data(tls.build_client_hello("web.whatsapp.com")), 2.0)
    assert (decision.accept, decision.action) == (True, "allow")
    assert censor.snapshot()["flows_reopened"] == 1 and len(censor.flows) == 1


def test_a_reused_port_is_blocked_again_when_the_new_connection_matches() -> None:
    """And the reverse: an allowed flow's port, reused for a blocked SNI, is reset."""
    censor = Censor(policy(MEDIA_RESET))
    old = Tcp(MEDIA)
    old.handshake(censor)
    assert censor.handle(old.client_data(tls.build_client_hello("web.whatsapp.com")), 1.0).action == "allow"
    new = Tcp(MEDIA)
    new.cseq, new.sseq = 555_000, 777_000
    new.handshake(censor)
    assert censor.handle(new.client_data(tls.build_client_hello("mmg.whatsapp.net")), 2.0).action == "reset"


def test_a_retransmitted_syn_stays_in_its_flow() -> None:
    censor = Censor(policy(MEDIA_RESET))
    conn = Tcp(MEDIA)
    conn.handshake(censor)
    assert censor.handle(conn.client_data(tls.build_client_hello("mmg.whatsapp.net")), 1.0).action == "reset"
    again = censor.handle(Tcp(MEDIA).syn(), 1.5)  # same ISN: the old SYN again, not a new connection
    assert (again.accept, again.action) == (False, "reset")
    assert censor.snapshot()["flows_reopened"] == 0


def test_non_matching_sni_is_allowed_and_offloaded() -> None:
    censor = Censor(policy(MEDIA_RESET))
    conn = Tcp("198.19.2.2")
    conn.handshake(censor)
    decision = censor.handle(conn.client_data(tls.build_client_hello("web.whatsapp.com")), 1.0)
    assert decision.accept and decision.mark == offload_mark(censor.generation, VERDICT_ALLOW)
    assert decision.action == "allow" and decision.rule is None and not decision.inject


def test_client_hello_split_and_out_of_order() -> None:
    censor = Censor(policy(MEDIA_RESET))
    conn = Tcp(MEDIA)
    conn.handshake(censor)
    hello = tls.build_client_hello("mmg.whatsapp.net")
    start = conn.cseq
    second = censor.handle(conn.client_data(hello[100:], seq=start + 100), 1.0)
    assert second.accept and not second.mark  # a gap: nothing to analyse yet
    first = censor.handle(conn.client_data(hello[:100], seq=start), 1.0)
    assert first.action == "reset"


def test_whatsapp_fingerprint_on_any_port() -> None:
    censor = Censor(policy({"name": "chat", "match": {"whatsapp.header": True}, "action": "reset"}))
    conn = Tcp(CHAT, port=5222)
    conn.handshake(censor)
    client = whatsapp.ChatClient(edge_routing=b"\x01\x02")
    client.initiate()
    assert censor.handle(conn.client_data(client.data_to_send()), 1.0).rule == "chat"
    assert censor.flows._flows  # noqa: SLF001 - the flow is remembered with its verdict
    flow = next(iter(censor.flows))
    assert flow.props["whatsapp.edge_routing"] is True and flow.verdict == "reset"


def test_http_host_drop() -> None:
    censor = Censor(policy({"name": "h", "match": {"http.host": {"suffix": "whatsapp.net"}, "http.method": "POST"},
                            "action": "drop"}))
    conn = Tcp(MEDIA, port=80)
    conn.handshake(censor)
    decision = censor.handle(conn.client_data(b"POST /upload HTTP/1.1\r\nHost: MMG.WhatsApp.net\r\n\r\n"), 1.0)
    assert (decision.accept, decision.action, decision.inject) == (False, "drop", ())


def test_dns_inject_forges_then_lets_the_query_through() -> None:
    censor = Censor(policy({"name": "wa-dns", "match": {"dns.qname": {"suffix": "whatsapp.net"}},
                            "action": "dns-inject", "answer": ["198.19.250.1"], "ttl": 7}))
    query = dns.build_query("e1.whatsapp.net", "A", query_id=4242)
    decision = censor.handle(inet.build_udp(CLIENT, RESOLVER, 5353, 53, query), 1.0)
    assert decision.accept and not decision.mark and decision.action == "dns-inject"
    (injection,) = decision.inject
    forged = inet.parse_packet(injection.data)
    assert (forged.src, forged.sport, forged.dst, forged.dport) == (RESOLVER, 53, CLIENT, 5353)
    facts = dns.parse_dns(forged.payload)
    assert facts.id == 4242 and facts.is_response and facts.addresses == ("198.19.250.1",)
    assert facts.answers[0].ttl == 7
    # The real answer passes untouched; a later innocent query on the same socket is not forged.
    real = dns.build_response(query, ["198.19.1.1"])
    assert censor.handle(inet.build_udp(RESOLVER, CLIENT, 53, 5353, real), 1.1).inject == ()
    other = censor.handle(inet.build_udp(CLIENT, RESOLVER, 5353, 53, dns.build_query("example.org")), 1.2)
    assert other.accept and other.inject == ()
    again = censor.handle(inet.build_udp(CLIENT, RESOLVER, 5353, 53, dns.build_query("mmg.whatsapp.net")), 1.3)
    assert len(again.inject) == 1 and censor.counters["dns_injected"] == 2


def test_udp_drop_is_decided_on_the_first_packet() -> None:
    censor = Censor(policy(MEDIA_RESET, {"name": "relays", "match": {"proto": "udp", "ip.dst": {"cidr": "198.19.3.0/24"}},
                                         "action": "drop"}))
    decision = censor.handle(inet.build_udp(CLIENT, RELAY, 50000, 3478, b"\x00\x01"), 1.0)
    assert (decision.accept, decision.rule) == (False, "relays")
    other = censor.handle(inet.build_udp(CLIENT, "198.19.4.1", 50000, 3478, b"\x00\x01"), 1.0)
    assert other.accept and other.action == "allow"


def test_rule_order_first_match_wins() -> None:
    censor = Censor(policy({"name": "let-web", "match": {"tls.sni": "web.whatsapp.com"}, "action": "allow"},
                           {"name": "all-whatsapp", "match": {"tls.sni": {"suffix": "whatsapp.com"}}, "action": "reset"}))
    conn = Tcp("198.19.2.2")
    conn.handshake(censor)
    assert censor.handle(conn.client_data(tls.build_client_hello("web.whatsapp.com")), 1.0).rule == "let-web"


def test_empty_policy_offloads_on_the_first_packet() -> None:
    censor = Censor(policy())
    decision = censor.handle(Tcp(MEDIA).syn(), 1.0)
    assert decision.accept and decision.mark & MARK_MASK and decision.action == "allow"


def test_address_rule_after_a_sni_rule_waits_for_the_client_hello() -> None:
    censor = Censor(policy(MEDIA_RESET, {"name": "ip", "match": {"ip.dst": MEDIA}, "action": "drop"}))
    conn = Tcp(MEDIA)
    assert all(not d.mark for d in conn.handshake(censor))
    assert censor.handle(conn.client_data(b"\x00not tls at all"), 1.0).rule == "ip"


def test_garbage_and_non_tcp_udp_are_accepted_and_counted() -> None:
    censor = Censor(policy(MEDIA_RESET))
    for raw in (b"", b"\x45\x00", b"\xff" * 40, inet.build_tcp(CLIENT, MEDIA, 1, 2, seq=0)[:30]):
        assert censor.handle(raw, 1.0).accept
    icmp = bytearray(inet.build_udp(CLIENT, MEDIA, 1, 2, b"x"))
    icmp[9] = 1
    assert censor.handle(bytes(icmp), 1.0).accept
    assert censor.counters["garbage"] == 4 and censor.counters["not_tcp_udp"] == 1


def test_a_crashing_analyzer_is_counted_and_treated_as_done(monkeypatch) -> None:
    from wallwatch.censor.analyzers.tls import TlsAnalyzer

    def boom(self: Analyzer, direction: Any, data: bytes) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr(TlsAnalyzer, "feed", boom)
    censor = Censor(policy(MEDIA_RESET))
    conn = Tcp(MEDIA)
    conn.handshake(censor)
    decision = censor.handle(conn.client_data(tls.build_client_hello("mmg.whatsapp.net")), 1.0)
    assert decision.action == "allow" and censor.counters["analyzer_errors"] == 1


def test_reload_re_examines_decided_flows() -> None:
    censor = Censor(policy())
    conn = Tcp(MEDIA)
    conn.handshake(censor)
    censor.handle(conn.client_data(b"hello"), 1.0)
    censor.load(policy({"name": "ip", "match": {"ip.dst": MEDIA}, "action": "drop"}))
    decision = censor.handle(conn.client_data(b"more"), 2.0)
    assert (decision.accept, decision.rule) == (False, "ip")
    assert decision.mark == offload_mark(censor.generation, VERDICT_DROP) != offload_mark(1, VERDICT_DROP)


def test_a_datagram_flow_decided_under_an_older_policy_is_judged_afresh() -> None:
    """A DNS query allowed while no rule looked at DNS; after a reload that injects whatsapp.net
    names, a query from the same source port (a reused 5-tuple) must be injected, not allowed on
    the old flow's properties."""
    censor = Censor(policy({"name": "chat", "match": {"whatsapp.header": True}, "action": "reset"}))
    first = inet.build_udp(CLIENT, RESOLVER, 40000, 53, dns.build_query("example.org", "A", query_id=1))
    assert censor.handle(first, 1.0).action == "allow"
    censor.load(policy({"name": "wa-dns", "match": {"dns.qname": {"suffix": "whatsapp.net"}},
                        "action": "dns-inject", "answer": ["198.19.250.1"]}))
    again = inet.build_udp(CLIENT, RESOLVER, 40000, 53, dns.build_query("v.whatsapp.net", "A", query_id=2))
    decision = censor.handle(again, 2.0)
    assert (decision.accept, decision.action, len(decision.inject)) == (True, "dns-inject", 1)
    (flow,) = list(censor.flows)
    assert flow.client == (CLIENT, 40000) and flow.props["dns.qname"] == "v.whatsapp.net"


def test_undecided_flows_stop_being_analysed_after_a_cap() -> None:
    censor = Censor(policy(MEDIA_RESET))
    conn = Tcp(MEDIA)
    conn.handshake(censor)
    decisions = [censor.handle(conn.server_data(b"banner"), 1.0) for _ in range(MAX_UNDECIDED_PACKETS)]
    first_marked = next(i for i, d in enumerate(decisions) if d.mark)
    assert first_marked + 4 == MAX_UNDECIDED_PACKETS  # 3 handshake packets + 21 server packets
    assert decisions[first_marked].action == "allow"


def test_flow_table_is_bounded_and_expires() -> None:
    table = FlowTable(max_flows=4)
    for port in range(10):
        table.lookup(inet.parse_packet(inet.build_udp(CLIENT, RELAY, 1000 + port, 3478, b"")), float(port))
    assert len(table) == 4 and table.evicted == 6
    assert table.expire(1000.0) == 4 and len(table) == 0


def test_direction_is_normalised_client_is_initiator() -> None:
    table = FlowTable()
    conn = Tcp(MEDIA)
    flow, from_client = table.lookup(inet.parse_packet(conn.syn()), 0.0)
    same, reply_from_client = table.lookup(inet.parse_packet(conn.synack()), 0.0)
    assert same is flow and from_client and not reply_from_client and flow.client == (CLIENT, 40000)


def test_stream_buffer_caps_and_ignores_retransmissions() -> None:
    buffer = StreamBuffer(limit=10)
    buffer.start(99)
    assert buffer.push(100, b"abcd") == b"abcd"
    assert buffer.push(100, b"abcd") == b""           # retransmission
    assert buffer.push(102, b"cdefgh") == b"efgh"     # overlap trimmed
    assert buffer.push(108, b"ijklmn") == b"ij" and buffer.full
    wrap = StreamBuffer()
    wrap.start(2**32 - 2)
    assert wrap.push(2**32 - 1, b"xy") == b"xy" and wrap.push(1, b"z") == b"z"  # seq wraps around


# --- robustness -------------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.fuzzing import examples  # noqa: E402

from wallwatch.censor.policy import load_policy  # noqa: E402
from tests.censor.test_policy import POLICIES  # noqa: E402

_ALL = next(p for p in POLICIES if p.stem == "whatsapp-all")


def _packets() -> st.SearchStrategy[bytes]:
    payloads = st.one_of(st.binary(max_size=200), st.just(tls.build_client_hello("mmg.whatsapp.net")),
                         st.just(dns.build_query("e1.whatsapp.net")), st.just(b"WA\x06\x03\x00\x00\x05"))
    tcp = st.builds(lambda sp, dp, seq, flags, p: inet.build_tcp(CLIENT, MEDIA, sp, dp, seq=seq, flags=flags, payload=p),
                    st.sampled_from([1000, 1001]), st.sampled_from([53, 443, 5222]), st.integers(0, 2**32 - 1),
                    st.integers(0, 0x3F), payloads)
    udp = st.builds(lambda sp, dp, p: inet.build_udp(CLIENT, RESOLVER, sp, dp, p),
                    st.sampled_from([1000, 1001]), st.sampled_from([53, 3478]), payloads)
    mutated = st.builds(lambda raw, i: raw[:i % len(raw)] + bytes([raw[i % len(raw)] ^ 0x5A]) + raw[i % len(raw) + 1:],
                        st.one_of(tcp, udp), st.integers(0, 39))
    return st.one_of(tcp, udp, mutated, st.binary(max_size=80))


@settings(max_examples=examples(150), deadline=None)
@given(st.lists(_packets(), min_size=1, max_size=12))
def test_any_packet_sequence_gets_a_verdict(packets: list[bytes]) -> None:
    censor = Censor(load_policy(_ALL))
    for raw in packets:
        decision = censor.handle(raw, 1.0)
        assert isinstance(decision.accept, bool)
    assert censor.counters["packets"] == len(packets) and censor.counters["analyzer_errors"] == 0


def test_a_packet_the_engine_fails_on_is_accepted_counted_and_logged_and_the_next_goes_on() -> None:
    """A fault inside the engine (here a flow table that fails on one 5-tuple) costs that packet
    a default verdict, never the censor: live and in replay the next packet is judged as usual."""
    events: list[dict[str, object]] = []
    censor = Censor(policy({"name": "media", "match": {"tls.sni": "mmg.whatsapp.net"}, "action": "reset"}),
                    log=events.append)
    lookup = censor.flows.lookup

    def failing_lookup(packet: inet.Packet, now: float):  # type: ignore[no-untyped-def]
        if packet.sport == 666:
            raise KeyError("a bug")
        return lookup(packet, now)

    censor.flows.lookup = failing_lookup  # type: ignore[method-assign]
    cursed = inet.build_tcp(CLIENT, MEDIA, 666, 443, seq=1, flags=inet.SYN)
    assert censor.handle(cursed, 1.0).accept
    flow = Tcp(MEDIA)
    for raw in (flow.syn(), flow.synack(), flow.ack()):
        censor.handle(raw, 1.1)
    assert censor.handle(flow.client_data(tls.build_client_hello("mmg.whatsapp.net")), 1.2).action == "reset"
    assert censor.counters["engine_errors"] == 1
    assert [e["error"] for e in events if e["event"] == "engine_error"] == ["KeyError: 'a bug'"]
