"""censor.analyzers: properties from real codec output, garbage says done with nothing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wallwatch.censor.analyzers import ALL_ANALYZERS, Direction, DnsAnalyzer, HttpAnalyzer, TlsAnalyzer, WhatsAppAnalyzer
from wallwatch.protocols import dns, http, tls, whatsapp

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


def test_dns_udp_each_query_updates_and_keeps_watching() -> None:
    analyzer = DnsAnalyzer("udp")
    assert analyzer.feed(C2S, dns.build_query("e1.whatsapp.net", "A")) == (
        {"dns.qname": "e1.whatsapp.net", "dns.qtype": "A"}, False)
    assert analyzer.feed(C2S, dns.build_query("example.org", "AAAA")) == (
        {"dns.qname": "example.org", "dns.qtype": "AAAA"}, False)
    assert analyzer.feed(C2S, b"\x00garbage") == (None, True)


def test_dns_tcp_length_prefixed_query_split() -> None:
    query = dns.build_query("web.whatsapp.com", "A")
    update, done = feed_in_pieces(DnsAnalyzer("tcp"), len(query).to_bytes(2, "big") + query, 3)
    assert done and update == {"dns.qname": "web.whatsapp.com", "dns.qtype": "A"}


def test_applies() -> None:
    assert DnsAnalyzer.applies("udp", 53) and DnsAnalyzer.applies("tcp", 53) and not DnsAnalyzer.applies("udp", 443)
    assert TlsAnalyzer.applies("tcp", 5222) and not TlsAnalyzer.applies("udp", 443)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=5), st.sampled_from(ALL_ANALYZERS))
def test_arbitrary_bytes_never_raise(chunks: list[bytes], cls) -> None:
    analyzer = cls("tcp" if cls is not DnsAnalyzer else "udp")
    for chunk in chunks:
        update, done = analyzer.feed(C2S, chunk)
        assert update is None or isinstance(update, dict)
        if done:
            break
