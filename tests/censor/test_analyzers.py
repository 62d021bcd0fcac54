"""censor.analyzers: properties from real codec output, garbage says done with nothing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzzing import examples
from tests.censor import payloads
from wallwatch.censor.analyzers import (
    ALL_ANALYZERS, PROPERTY_TYPES, Analyzer, Direction, DnsAnalyzer, FetAnalyzer, HttpAnalyzer, MmtlsAnalyzer,
    MqttAnalyzer, MtprotoAnalyzer, StunAnalyzer,
    OpenVpnAnalyzer, PropType, QuicAnalyzer, TlsAnalyzer, TorAnalyzer, ViberAnalyzer, WhatsAppAnalyzer,
    WireGuardAnalyzer,
)
from wallwatch.censor.analyzers.base import FLOW_PROPERTIES
from wallwatch.censor.policy import KEY_TYPES
from wallwatch.protocols import dns, http, mmtls, mqtt, mtproto, openvpn, quic, stun, tls, tor, viber, whatsapp, wireguard

C2S, S2C = Direction.TO_SERVER, Direction.TO_CLIENT


def feed_in_pieces(analyzer, data: bytes, piece: int):
    update, done = None, False
    for start in range(0, len(data), piece):
        update, done = analyzer.feed(C2S, data[start:start + piece])
        if done:
            break
    return update, done


@pytest.mark.parametrize("piece", [1, 7, 100, 10_000])
def test_tls_sni_and_alpn_from_a_split_client_hello(piece: int) -> None:
    hello = tls.build_client_hello("mmg.whatsapp.net", ["h2", "http/1.1"])
    update, done = feed_in_pieces(TlsAnalyzer(), hello, piece)
    assert done and update == {"tls.sni": "mmg.whatsapp.net", "tls.alpn": ("h2", "http/1.1")}


def test_tls_ignores_server_bytes_and_gives_up_on_http() -> None:
    analyzer = TlsAnalyzer()
    assert analyzer.feed(S2C, b"\x16\x03\x03") == (None, False)
    assert analyzer.feed(C2S, b"GET / HTTP/1.1\r\n") == (None, True)


def test_http_request_head() -> None:
    head = http.build_request_head("POST", "/upload", "mmg.whatsapp.net")
    update, done = feed_in_pieces(HttpAnalyzer(), head, 5)
    assert done and update == {"http.host": "mmg.whatsapp.net", "http.method": "POST", "http.path": "/upload",
                               "http.target": "/upload"}
    assert HttpAnalyzer().feed(C2S, tls.build_client_hello("x.example")) == (None, True)


@pytest.mark.parametrize("routing", [None, b"\x08\x02\x10\x01"])
def test_whatsapp_header_with_and_without_edge_routing(routing: bytes | None) -> None:
    client = whatsapp.ChatClient(edge_routing=routing)
    client.initiate()
    update, done = feed_in_pieces(WhatsAppAnalyzer(), client.data_to_send(), 3)
    assert done and update == {"whatsapp.header": True, "whatsapp.edge_routing": routing is not None,
                               "whatsapp.magic": whatsapp.WA_MAGIC}


def test_whatsapp_says_done_on_tls() -> None:
    assert WhatsAppAnalyzer().feed(C2S, tls.build_client_hello("e1.whatsapp.net")) == (None, True)


@pytest.mark.parametrize("version", [mmtls.VERSION, mmtls.VERSION_2017])
def test_mmtls_long_link_opening(version: int) -> None:
    update, done = feed_in_pieces(MmtlsAnalyzer(), mmtls.build_client_hello(bytes(32), 0, version), 2)
    assert done and update == {"mmtls.record": True, "mmtls.handshake": True, "mmtls.version": version}
    # TLS and the short link's HTTP are not mmtls, decided on their first bytes.
    assert MmtlsAnalyzer().feed(C2S, tls.build_client_hello("long.weixin.qq.com"))[0]["mmtls.record"] is False
    assert MmtlsAnalyzer().feed(C2S, b"POST /mmtls/1a2b3c4d HTTP/1.1\r\n")[0]["mmtls.record"] is False


def test_viber_hello_on_tcp_and_call_datagrams_on_udp() -> None:
    hello = viber.build_hello(bytes(16), bytes(134))
    update, done = feed_in_pieces(ViberAnalyzer("tcp"), hello, 10)
    assert done and update == {"viber.hello": True, "viber.call": False, "viber.type": viber.HELLO_TYPE}
    update, done = ViberAnalyzer("udp").feed(C2S, viber.build_ping(bytes(8)))
    assert done and update == {"viber.hello": False, "viber.call": True, "viber.type": viber.PING_TYPE}
    # STUN, TLS and a datagram whose length field lies are not Viber.
    assert ViberAnalyzer("udp").feed(C2S, stun.build_binding_request(bytes(12)))[0]["viber.call"] is False
    assert ViberAnalyzer("udp").feed(C2S, viber.build_ping(bytes(8)) + b"x")[0]["viber.call"] is False
    assert ViberAnalyzer("tcp").feed(C2S, tls.build_client_hello("dl-media.viber.com"))[0]["viber.hello"] is False


def test_dns_udp_each_query_updates_and_keeps_watching() -> None:
    analyzer = DnsAnalyzer("udp")
    assert analyzer.feed(C2S, dns.build_query("e1.whatsapp.net", "A")) == (
        {"dns.qname": "e1.whatsapp.net", "dns.qtype": "A"}, False)
    assert analyzer.feed(C2S, dns.build_query("example.org", "AAAA")) == (
        {"dns.qname": "example.org", "dns.qtype": "AAAA"}, False)
    assert analyzer.feed(C2S, b"\x00garbage") == (None, True)


def test_dns_tcp_length_prefixed_query_split() -> None:
    query = dns.build_query("web.whatsapp.com", "A")
    update, done = feed_in_pieces(DnsAnalyzer("tcp"), dns.frame_tcp(query), 3)
    assert done and update == {"dns.qname": "web.whatsapp.com", "dns.qtype": "A"}


def test_dns_tcp_gives_up_on_a_length_no_query_has() -> None:
    assert DnsAnalyzer("tcp").feed(C2S, b"\x00\x05hello") == (None, True)  # shorter than a DNS header
    assert DnsAnalyzer("tcp").feed(C2S, b"\x40\x00") == (None, True)  # 16 KiB: beyond what it buffers


def test_applies() -> None:
    assert DnsAnalyzer.applies("udp", 53) and DnsAnalyzer.applies("tcp", 53) and not DnsAnalyzer.applies("udp", 443)
    assert TlsAnalyzer.applies("tcp", 5222) and not TlsAnalyzer.applies("udp", 443)


@settings(max_examples=examples(150), deadline=None)
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=5), st.sampled_from(ALL_ANALYZERS))
def test_arbitrary_bytes_never_raise(chunks: list[bytes], cls) -> None:
    analyzer = cls("tcp" if cls is not DnsAnalyzer else "udp")
    for chunk in chunks:
        update, done = analyzer.feed(C2S, chunk)
        assert update is None or isinstance(update, dict)
        if done:
            break


# --- the contract: every analyzer emits only what it declares, with the declared type ---

_PYTHON_TYPES = {PropType.NAME: str, PropType.TEXT: str, PropType.IP: str, PropType.INT: int, PropType.BOOL: bool}


def _holds(kind: PropType, value: object) -> bool:
    """None (known absent), a value of the type, or a tuple of them (any may match)."""
    values = value if isinstance(value, tuple) else (value,)
    return all(v is None or (isinstance(v, _PYTHON_TYPES[kind]) and (kind is PropType.BOOL or not isinstance(v, bool)))
               for v in values)


def _check_update(cls: type[Analyzer], update: object) -> None:
    if update is None:
        return
    assert isinstance(update, dict)
    undeclared = set(update) - set(cls.provides)
    assert not undeclared, f"{cls.name} emitted undeclared {undeclared}"
    for key, value in update.items():
        assert _holds(cls.provides[key], value), f"{cls.name}: {key}={value!r} is not a {cls.provides[key]}"


def _samples() -> list[tuple[type[Analyzer], str, list[tuple[Direction, bytes]]]]:
    query = dns.build_query("e1.whatsapp.net", "AAAA")
    chat = whatsapp.ChatClient(edge_routing=b"\x08\x02\x10\x01")
    chat.initiate()
    session = bytes(range(8))
    return [
        (DnsAnalyzer, "udp", [(C2S, query)]),
        (DnsAnalyzer, "tcp", [(C2S, dns.frame_tcp(query))]),
        (TlsAnalyzer, "tcp", [(C2S, tls.build_client_hello("mmg.whatsapp.net", ["h2"]))]),
        (HttpAnalyzer, "tcp", [(C2S, http.build_request_head("GET", "/?q=x", "example.org"))]),
        (WhatsAppAnalyzer, "tcp", [(C2S, chat.data_to_send())]),
        (FetAnalyzer, "tcp", [(C2S, payloads.RANDOMISH)]),
        (FetAnalyzer, "tcp", [(C2S, b"GET " + payloads.RANDOMISH)]),
        (OpenVpnAnalyzer, "udp", [(C2S, openvpn.build_client_hard_reset_v2(session)),
                                  (S2C, openvpn.build_server_hard_reset_v2(bytes(8), session)),
                                  (C2S, openvpn.build_control(openvpn.P_ACK_V1, session, acks=(0,),
                                                              remote_session_id=bytes(8), packet_id=None))]),
        (OpenVpnAnalyzer, "tcp", [(C2S, openvpn.build_client_hard_reset_v2(session, tcp=True))]),
        (WireGuardAnalyzer, "udp", [(C2S, wireguard.build_initiation(1))]),
        (WireGuardAnalyzer, "udp", [(C2S, wireguard.build_transport(1, n)) for n in range(4)]),
        (MtprotoAnalyzer, "tcp", [(C2S, mtproto.client(mtproto.TAG_ABRIDGED)[0])]),
        (QuicAnalyzer, "udp", [(C2S, quic.build_initial("mmg.whatsapp.net"))]),
        (TorAnalyzer, "tcp", [(C2S, tor.build_client_hello())]),
        (StunAnalyzer, "udp", [(C2S, stun.build_binding_request(bytes(12)))]),
        (MqttAnalyzer, "tcp", [(C2S, mqtt.build_connect("wallwatch-probe"))]),
        (MmtlsAnalyzer, "tcp", [(C2S, mmtls.build_client_hello(bytes(32), 0))]),
        (ViberAnalyzer, "tcp", [(C2S, viber.build_hello(bytes(16), bytes(134)))]),
        (ViberAnalyzer, "udp", [(C2S, viber.build_ping(bytes(8)))]),
    ]


def test_every_analyzer_has_a_real_sample() -> None:
    assert {cls for cls, _, _ in _samples()} == set(ALL_ANALYZERS)


@pytest.mark.parametrize("cls, proto, packets", _samples(), ids=lambda v: getattr(v, "name", None) or "")
def test_real_protocol_gives_declared_properties_of_declared_types(cls: type[Analyzer], proto: str,
                                                                   packets: list[tuple[Direction, bytes]]) -> None:
    analyzer = cls(proto)
    seen: dict[str, object] = {}
    for direction, data in packets:
        update, done = analyzer.feed(direction, data)
        _check_update(cls, update)
        seen.update(update or {})
        if done:
            break
    assert seen, f"{cls.name} found nothing in its own protocol"


@settings(max_examples=examples(150), deadline=None)
@given(st.lists(st.tuples(st.sampled_from([C2S, S2C]), st.binary(max_size=300)), min_size=1, max_size=5),
       st.sampled_from(ALL_ANALYZERS), st.sampled_from(["tcp", "udp"]))
def test_arbitrary_bytes_give_only_declared_properties(packets: list[tuple[Direction, bytes]], cls, proto: str) -> None:
    if proto not in cls.transports:
        proto = next(iter(cls.transports))
    analyzer = cls(proto)
    for direction, data in packets:
        update, done = analyzer.feed(direction, data)
        _check_update(cls, update)
        if done:
            break


def test_policy_key_types_are_the_declarations() -> None:
    declared = {key: kind for cls in ALL_ANALYZERS for key, kind in cls.provides.items()} | dict(FLOW_PROPERTIES)
    assert dict(PROPERTY_TYPES) == declared == dict(KEY_TYPES)
    assert sum(len(cls.provides) for cls in ALL_ANALYZERS) + len(FLOW_PROPERTIES) == len(PROPERTY_TYPES)  # none twice


def test_a_declaration_outside_the_contract_is_refused() -> None:
    with pytest.raises(TypeError, match="'tls.sni' must be 'sneaky.<what>'"):
        class Sneaky(Analyzer):  # noqa: F841 - defining it is the test
            name = "sneaky"
            transports = frozenset({"tcp"})
            provides = {"tls.sni": PropType.NAME}
    with pytest.raises(TypeError, match="with a PropType"):
        class Untyped(Analyzer):  # noqa: F841
            name = "untyped"
            transports = frozenset({"udp"})
            provides = {"untyped.x": "name"}
    with pytest.raises(TypeError, match="its transports"):
        class Nowhere(Analyzer):  # noqa: F841
            name = "nowhere"
            provides = {"nowhere.x": PropType.BOOL}
    with pytest.raises(TypeError):
        TlsAnalyzer.provides["tls.extra"] = PropType.NAME  # type: ignore[index]  # closed once declared


def test_only_a_udp_dns_analyzer_revises_its_properties() -> None:
    assert DnsAnalyzer("udp").revises and not DnsAnalyzer("tcp").revises
    assert not any(cls(next(iter(cls.transports))).revises for cls in ALL_ANALYZERS if cls is not DnsAnalyzer)
