"""Each primitive against a real loopback server, for success and for every failure string."""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest

from tests.probe import servers
from wallwatch.probe import failures
from wallwatch.probe.failures import ProbeFailure
from wallwatch.probe.primitives import (
    http_request,
    resolve_system,
    resolve_udp,
    retransmit_schedule,
    tcp_connect,
    tls_handshake,
    tls_sni_control,
    first_flight_control,
    udp_exchange,
)
from wallwatch.probe.trace import Trace
from wallwatch.protocols import dns as dns_codec
from wallwatch.protocols.stun import build_binding_request, parse_stun

pytestmark = pytest.mark.timeout(30)
LO = servers.LOOPBACK


def run(body: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(body(), 20))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> servers.Pki:
    return servers.make_pki(tmp_path_factory.mktemp("pki"), ["service.test", "web.whatsapp.com"])


def client_context(ca: Path, alpn: tuple[str, ...] = ("http/1.1",)) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(list(alpn))
    return context


# --- DNS ---------------------------------------------------------------------------------


def test_resolve_udp_records_answer_raw_response_and_stamps() -> None:
    async def body() -> tuple[Any, Trace]:
        dns = await servers.start_dns(servers.DnsServer({"e1.whatsapp.net": "198.19.1.1"}))
        trace = Trace()
        result = await resolve_udp(trace.transaction("feature:text", "endpoint:e1.whatsapp.net:443"),
                                   "e1.whatsapp.net", (LO, dns.port), timeout=1, linger=0.1)
        return result, trace

    result, trace = run(body)
    assert result.addresses == ("198.19.1.1",) and result.failure is None
    [query] = trace.queries
    assert query["engine"] == "udp" and query["query_type"] == "A" and query["rcode"] == "NOERROR"
    assert query["answers"][0]["ipv4"] == "198.19.1.1" and query["x_dns_duplicate_responses"] == []
    assert dns_codec.parse_dns(base64.b64decode(query["raw_response"])).addresses == ("198.19.1.1",)
    assert 0 <= query["t0"] <= query["t"] and query["transaction_id"] == 1
    assert query["tags"] == ["feature:text", "endpoint:e1.whatsapp.net:443"]
    assert [e["operation"] for e in trace.network_events] == ["write", "read"]


def test_resolve_udp_keeps_a_racing_second_answer() -> None:
    async def body() -> Trace:
        dns = await servers.start_dns(servers.DnsServer({"v.whatsapp.net": "198.19.2.1"},
                                                        inject={"v.whatsapp.net": "198.19.250.1"}))
        trace = Trace()
        await resolve_udp(trace.transaction(), "v.whatsapp.net", (LO, dns.port), timeout=1, linger=0.3)
        return trace

    [query] = run(body).queries
    assert query["answers"][0]["ipv4"] == "198.19.250.1"  # the injector wins the race
    [late] = query["x_dns_duplicate_responses"]
    assert late["answers"][0]["ipv4"] == "198.19.2.1" and late["t"] >= query["t0"]


@pytest.mark.parametrize(
    ("server", "failure"),
    [
        (servers.DnsServer({}), failures.DNS_NXDOMAIN),
        (servers.DnsServer({}, servfail=frozenset({"x.test"})), failures.DNS_SERVFAIL),
        (servers.DnsServer({}, drop=frozenset({"x.test"})), failures.GENERIC_TIMEOUT),
    ],
)
def test_resolve_udp_failures(server: servers.DnsServer, failure: str) -> None:
    async def body() -> Any:
        dns = await servers.start_dns(server)
        return await resolve_udp(Trace().transaction(), "x.test", (LO, dns.port), timeout=0.5, linger=0.05)

    assert run(body).failure == failure


def test_resolve_udp_without_a_resolver_is_refused() -> None:
    port = servers.free_udp_port()
    result = run(lambda: resolve_udp(Trace().transaction(), "x.test", (LO, port), timeout=1))
    assert result.failure == failures.CONNECTION_REFUSED


def test_resolve_system_records_an_any_query() -> None:
    trace = Trace()
    result = run(lambda: resolve_system(trace.transaction(), "localhost", timeout=2))
    assert "127.0.0.1" in result.addresses
    assert trace.queries[0]["engine"] == "getaddrinfo" and trace.queries[0]["query_type"] == "ANY"


# --- TCP and TLS ------------------------------------------------------------------------------


def test_tcp_connect_refused_records_the_failure() -> None:
    trace = Trace()
    port = servers.free_tcp_port()
    with pytest.raises(ProbeFailure) as caught:
        run(lambda: tcp_connect(trace.transaction(), LO, port, timeout=1))
    assert caught.value.failure == failures.CONNECTION_REFUSED
    assert trace.tcp_connect[0]["status"] == {"success": False, "failure": failures.CONNECTION_REFUSED}
    assert trace.network_events[0]["operation"] == "connect"


def test_tcp_connect_times_out_when_syns_are_dropped() -> None:
    # A listener with a full accept queue drops further SYNs (Linux, tcp_abort_on_overflow=0).
    listener = socket.socket()
    listener.bind((LO, 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex((LO, port))
            fillers.append(filler)
        trace = Trace()
        with pytest.raises(ProbeFailure) as caught:
            run(lambda: tcp_connect(trace.transaction(), LO, port, timeout=0.5))
        assert caught.value.failure == failures.GENERIC_TIMEOUT
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def _handshake(port: int, ca: Path, server_name: str, trace: Trace, timeout: float = 1.0) -> Any:
    async def body() -> Any:
        stream = await tcp_connect(trace.transaction(), LO, port)
        try:
            return await tls_handshake(stream, server_name, client_context(ca), alpn=("http/1.1",), timeout=timeout)
        finally:
            await stream.close()

    return body


def test_tls_handshake_records_version_cipher_alpn_and_certificate(pki: servers.Pki) -> None:
    async def body() -> Trace:
        _, port = await servers.start_tcp(servers.https_app, ssl_context=servers.server_context(pki))
        trace = Trace()
        await _handshake(port, pki.ca_pem, "service.test", trace)()
        return trace

    [handshake] = run(body).tls_handshakes
    assert handshake["failure"] is None and handshake["server_name"] == "service.test"
    assert handshake["tls_version"] == "TLSv1.3" and handshake["cipher_suite"].startswith("TLS_")
    assert handshake["negotiated_protocol"] == "http/1.1" and handshake["no_tls_verify"] is False
    assert base64.b64decode(handshake["peer_certificates"][0]["data"]) == pki.cert_der


@pytest.mark.parametrize(
    ("case", "failure"),
    [("other_ca", failures.SSL_UNKNOWN_AUTHORITY), ("wrong_name", failures.SSL_INVALID_HOSTNAME),
     ("expired", failures.SSL_INVALID_CERTIFICATE)],
)
def test_tls_certificate_failures(pki: servers.Pki, tmp_path: Path, case: str, failure: str) -> None:
    served, trusted, name = pki, pki.ca_pem, "service.test"
    if case == "other_ca":
        trusted = servers.make_pki(tmp_path, ["other.test"], tag="other").ca_pem
    elif case == "wrong_name":
        name = "not-in-the-certificate.test"
    else:
        served = servers.make_pki(tmp_path, ["service.test"], expired=True, tag="expired")
        trusted = served.ca_pem

    async def body() -> Trace:
        _, port = await servers.start_tcp(servers.https_app, ssl_context=servers.server_context(served))
        trace = Trace()
        with pytest.raises(ProbeFailure) as caught:
            await _handshake(port, trusted, name, trace)()
        assert caught.value.failure == failure
        return trace

    assert run(body).tls_handshakes[0]["failure"] == failure


@pytest.mark.parametrize(
    ("handler", "failure"),
    [(servers.reset_after_first_bytes, failures.CONNECTION_RESET),
     (servers.silent, failures.GENERIC_TIMEOUT),
     (servers.close_after_first_bytes, failures.EOF_ERROR)],
)
def test_tls_interference_failures(pki: servers.Pki, handler: servers.Handler, failure: str) -> None:
    async def body() -> Trace:
        _, port = await servers.start_tcp(handler)
        trace = Trace()
        with pytest.raises(ProbeFailure) as caught:
            await _handshake(port, pki.ca_pem, "service.test", trace, timeout=0.5)()
        assert caught.value.failure == failure
        return trace

    trace = run(body)
    assert trace.tls_handshakes[0]["failure"] == failure
    assert trace.network_events[-1]["operation"] == "tls_handshake_done"


# --- HTTP ---------------------------------------------------------------------------------------


def _fetch(pki: servers.Pki, url: str, *, method: str = "GET", body: bytes = b"") -> tuple[Any, Trace]:
    async def scenario() -> tuple[Any, Trace]:
        _, port = await servers.start_tcp(servers.https_app, ssl_context=servers.server_context(pki))
        trace = Trace()
        stream = await tcp_connect(trace.transaction("feature:web"), LO, port)
        tls = await tls_handshake(stream, "service.test", client_context(pki.ca_pem))
        response = await http_request(tls, url, method=method, body=body, timeout=3)
        await stream.close()
        return response, trace

    return run(scenario)


def test_http_get_records_request_and_response(pki: servers.Pki) -> None:
    response, trace = _fetch(pki, "https://service.test/v2/register")
    assert response.status == 200 and b"missing_param" in response.body
    [entry] = trace.requests
    assert entry["failure"] is None and entry["request"]["url"] == "https://service.test/v2/register"
    assert entry["request"]["headers"]["Host"] == "service.test" and entry["response"]["code"] == 200
    assert entry["response"]["body"].startswith('{"status"') and entry["tags"] == ["feature:web"]


def test_http_upload_and_download_truncate_recorded_bodies(pki: servers.Pki) -> None:
    photo = b"\xff\xd8" + bytes(200 * 1024) + b"\xff\xd9"
    response, trace = _fetch(pki, "https://service.test/upload", method="POST", body=photo)
    assert response.status == 200 and b'"size": %d' % len(photo) in response.body
    request = trace.requests[0]["request"]
    assert request["body_is_truncated"] is True and request["headers"]["Content-Length"] == str(len(photo))
    response, trace = _fetch(pki, "https://service.test/d/sample.jpg")
    assert response.body == servers.SAMPLE_PHOTO
    recorded = trace.requests[0]["response"]
    assert recorded["body_is_truncated"] is True and recorded["body"]["format"] == "base64"
    assert recorded["x_body_length"] == len(servers.SAMPLE_PHOTO)


def test_http_server_error_is_a_response_not_a_failure(pki: servers.Pki) -> None:
    response, trace = _fetch(pki, "https://service.test/broken")
    assert response.status == 503 and trace.requests[0]["failure"] is None


# --- UDP ------------------------------------------------------------------------------------------


def _stun(port: int, timeout: float = 1.2) -> tuple[Any, Trace]:
    txid = bytes(range(12))

    async def body() -> tuple[Any, Trace]:
        trace = Trace()
        result = await udp_exchange(trace.transaction("feature:calls"), LO, port, build_binding_request(txid),
                                    is_response=lambda d: parse_stun(d).transaction_id == txid,
                                    timeout=timeout, kind="stun")
        return result, trace

    return run(body)


def test_udp_exchange_gets_a_stun_answer() -> None:
    async def body() -> tuple[Any, Trace]:
        stun = await servers.start_stun()
        txid = bytes(range(12))
        trace = Trace()
        result = await udp_exchange(trace.transaction(), LO, stun.port, build_binding_request(txid),
                                    is_response=lambda d: parse_stun(d).transaction_id == txid, timeout=1)
        return result, trace

    result, trace = run(body)
    assert result.failure is None and parse_stun(result.response).mapped_address[0] == LO
    assert trace.udp_exchanges[0]["sends"] == 1 and trace.udp_exchanges[0]["response_size"] == len(result.response)


def test_udp_exchange_retransmits_then_times_out() -> None:
    async def body() -> tuple[Any, Any]:
        stun = await servers.start_stun(answer=False)
        txid = bytes(12)
        result = await udp_exchange(Trace().transaction(), LO, stun.port, build_binding_request(txid),
                                    is_response=lambda d: True, timeout=1.2)
        return result, stun.requests

    result, requests = run(body)
    assert result.failure == failures.GENERIC_TIMEOUT
    assert result.sends == requests == len(retransmit_schedule(1.2)) == 2  # 0 s and 0.5 s (RFC 5389 RTO)


def test_udp_exchange_to_a_closed_port_is_refused() -> None:
    result, _ = _stun(servers.free_udp_port())
    assert result.failure == failures.CONNECTION_REFUSED


# --- controls -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("handler", "outcome"),
    [("tls", "answered"), (servers.reset_after_first_bytes, "reset"), (servers.silent, "silent"),
     (servers.close_after_first_bytes, "closed")],
)
def test_tls_sni_control_outcomes(pki: servers.Pki, handler: Any, outcome: str) -> None:
    async def body() -> tuple[Any, Trace]:
        if handler == "tls":
            _, port = await servers.start_tcp(servers.https_app, ssl_context=servers.server_context(pki))
        else:
            _, port = await servers.start_tcp(handler)
        trace = Trace()
        result = await tls_sni_control(trace.transaction("control:tls_sni"), LO, port, "example.org", timeout=0.5)
        return result, trace

    result, trace = run(body)
    assert result.outcome == outcome and trace.controls[0]["outcome"] == outcome
    assert trace.controls[0]["server_name"] == "example.org"
    assert result.reached_server is (outcome in ("answered", "closed"))


def test_payload_control_against_a_chat_server_is_closed() -> None:
    async def body() -> Any:
        _, port = await servers.start_tcp(servers.chat)
        return await first_flight_control(Trace().transaction(), LO, port, b"plain text, not whatsapp",
                                          kind="payload", timeout=1)

    assert run(body).outcome == "closed"


def test_classify_maps_unknown_errors_with_their_text() -> None:
    assert failures.classify(ValueError("odd")) == "unknown_failure: ValueError: odd"
    assert failures.classify(asyncio.TimeoutError()) == failures.GENERIC_TIMEOUT
    assert failures.classify(OSError(113, "No route to host")) == failures.HOST_UNREACHABLE
    assert failures.classify(OSError(101, "Network is unreachable")) == failures.NETWORK_UNREACHABLE
