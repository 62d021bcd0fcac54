"""One control measurement: what the test helper sees of a URL ([ooni-probe-cli] `oohelperd/measure.go`).

The steps are oohelperd's: resolve the URL's host; build `ip_info` from the
addresses the probe resolved and the helper's own, flagging bogons; connect to
every non-bogon address on the URL's port (`http` URLs: 80 and 443, a TLS
handshake on 443 telling whether the address serves the name); fetch the URL;
answer in the legacy helper's failure strings. Addresses are dialled
concurrently with the fetch, each step bounded by a timeout.

What the helper counts as the internet is configurable (`HelperConfig.networks`):
by default every globally routable address (a bogon is never dialled: the helper
is no open proxy into the networks behind it, as oohelperd's `ipinfo.go`); in the
lab, the lab's own internet block, outside which nothing is dialled.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from dataclasses import dataclass, field
from typing import Any, Sequence
from urllib.parse import urlsplit

from wallwatch.probe import failures
from wallwatch.probe.failures import ProbeFailure
from wallwatch.probe.primitives import (
    Resolution,
    TcpStream,
    http_request,
    resolve_system,
    resolve_udp,
    tcp_connect,
    tls_handshake,
)
from wallwatch.probe.trace import Trace, Transaction
from wallwatch.protocols import webconnectivity as th

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# The request headers a helper passes on (oohelperd http.go keeps these three and drops the rest).
FORWARDED_HEADERS = frozenset({"user-agent", "accept", "accept-language"})
# oohelperd reads at most this much of a body (its maxAcceptableBody default, 1 << 24).
MAX_BODY_BYTES = 1 << 24


@dataclass(frozen=True)
class HelperConfig:
    """Resolver (None: the system's), trust (None: the system store), the helper's internet, timeouts.

    oohelperd bounds DNS at 4 s and each TCP/TLS task and the fetch at 15 s;
    `timeout` scales them (DNS = timeout, connect/TLS = timeout, fetch = 3 x timeout).
    """

    resolver: tuple[str, int] | None = None
    ca_file: str | None = None
    networks: tuple[Network, ...] = ()
    timeout: float = 4.0
    _contexts: dict[str, ssl.SSLContext] = field(default_factory=dict, compare=False, repr=False)

    def tls_context(self) -> ssl.SSLContext:
        if "default" not in self._contexts:
            context = ssl.create_default_context(cafile=self.ca_file)
            context.set_alpn_protocols(["http/1.1"])
            self._contexts["default"] = context
        return self._contexts["default"]

    def is_bogon(self, ip: str) -> bool:
        """Not on the helper's internet: never dialled, flagged in `ip_info`."""
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return True
        if self.networks:
            return not any(address.version == net.version and address in net for net in self.networks)
        return not address.is_global or address.is_multicast


def parse_networks(cidrs: Sequence[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


# --- failure strings (the legacy helper's, as oohelperd maps them) ----------------------


def dns_failure(failure: str | None) -> str | None:
    """oohelperd dnsMapFailure: NXDOMAIN -> dns_name_error; no answer -> no failure (empty addrs)."""
    if failure is None or failure == failures.DNS_NO_ANSWER:
        return None
    if failure == failures.DNS_NXDOMAIN:
        return th.DNS_NAME_ERROR
    if failure in (failures.DNS_SERVFAIL, failures.DNS_REFUSED, failures.DNS_NON_RECOVERABLE):
        return th.DNS_SERVER_FAILURE
    return th.UNKNOWN_ERROR


def tcp_failure(failure: str | None) -> str | None:
    """oohelperd tcpMapFailure: timeouts keep their name, refused is the legacy string, the rest connect_error."""
    if failure is None or failure == failures.GENERIC_TIMEOUT:
        return failure
    if failure == failures.CONNECTION_REFUSED:
        return th.CONNECTION_REFUSED_ERROR
    return th.CONNECT_ERROR


def http_failure(failure: str, during_dns: bool) -> str:
    """oohelperd httpMapFailure: DNS errors -> dns_lookup_error, timeouts and refusals by name, else unknown."""
    if during_dns:
        return th.DNS_LOOKUP_ERROR
    if failure == failures.GENERIC_TIMEOUT:
        return th.GENERIC_TIMEOUT
    if failure == failures.CONNECTION_REFUSED:
        return th.CONNECTION_REFUSED_ERROR
    return th.UNKNOWN_ERROR


# --- the measurement ------------------------------------------------------------------


def _ports(url: str) -> tuple[int, ...]:
    """oohelperd ipInfoToEndpoints: the URL's port; else 443 for https, 80 and 443 for http."""
    parts = urlsplit(url)
    if parts.port:
        return (parts.port,)
    return (443,) if parts.scheme == "https" else (80, 443)


async def _resolve(tx: Transaction, host: str, config: HelperConfig) -> Resolution:
    if config.resolver is None:
        return await resolve_system(tx, host, timeout=config.timeout)
    # No linger: racing answers are the probe's business; the helper takes the first.
    return await resolve_udp(tx, host, config.resolver, timeout=config.timeout, linger=0.0)


async def _endpoint(trace: Trace, ip: str, port: int, server_name: str,
                    config: HelperConfig) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """TCP connect (and a TLS handshake naming the URL's host on 443): oohelperd tcptls.go."""
    tx = trace.transaction()
    try:
        stream = await tcp_connect(tx, ip, port, timeout=config.timeout)
    except ProbeFailure as exc:
        return {"status": False, "failure": tcp_failure(exc.failure)}, None
    try:
        if port != 443:
            return {"status": True, "failure": None}, None
        try:
            await tls_handshake(stream, server_name, config.tls_context(), alpn=("http/1.1",),
                                timeout=config.timeout)
        except ProbeFailure as exc:
            return {"status": True, "failure": None}, {"server_name": server_name, "status": False,
                                                       "failure": exc.failure}
        return {"status": True, "failure": None}, {"server_name": server_name, "status": True, "failure": None}
    finally:
        await stream.close()


async def _fetch(trace: Trace, request: th.ControlRequest, resolved: Sequence[str],
                 config: HelperConfig) -> dict[str, Any]:
    """GET the URL once, as the helper's HTTP client would (no redirects followed: see docs)."""
    parts = urlsplit(request.http_request)
    host = parts.hostname or ""
    if not resolved:
        return th.http_result(failure=th.DNS_LOOKUP_ERROR)
    addresses = [ip for ip in resolved if not config.is_bogon(ip)]
    if not addresses:
        # Resolved, but only to addresses off the helper's internet, which it never dials.
        return th.http_result(failure=th.UNKNOWN_ERROR)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    headers = [(name, value) for name, values in request.http_request_headers.items()
               if name.lower() in FORWARDED_HEADERS for value in values]
    tx = trace.transaction()
    stream: TcpStream | None = None
    try:
        stream = await tcp_connect(tx, addresses[0], port, timeout=config.timeout)
        channel: Any = stream
        if parts.scheme == "https":
            channel = await tls_handshake(stream, host, config.tls_context(), alpn=("http/1.1",),
                                          timeout=config.timeout)
        response = await http_request(channel, request.http_request, headers=headers, timeout=config.timeout)
    except ProbeFailure as exc:
        return th.http_result(failure=http_failure(exc.failure, during_dns=False))
    finally:
        if stream is not None:
            await stream.close()
    body = response.body[:MAX_BODY_BYTES]
    return th.http_result(failure=None, status_code=response.status, body_length=len(body),
                          title=th.page_title(body.decode("utf-8", "replace")),
                          headers={name.title(): value for name, value in response.headers})


async def measure(request: th.ControlRequest, config: HelperConfig) -> dict[str, Any]:
    """The control response for one request (the whole of oohelperd's `measure`)."""
    parts = urlsplit(request.http_request)
    host = parts.hostname or ""
    trace = Trace()
    addrs: list[str] = []
    failure: str | None = None
    if th.is_ip_literal(host):
        fetch_from = [host]  # oohelperd resolves no address: DNS stays empty, the fetch dials it as given
    else:
        resolution = await _resolve(trace.transaction(), host, config)
        failure = dns_failure(resolution.failure)
        addrs = [a for a in resolution.addresses if th.is_ip_literal(a)]
        fetch_from = addrs
    ip_info: dict[str, dict[str, int]] = {}
    for endpoint in request.tcp_connect:
        ip, _ = th.split_endpoint(endpoint)
        ip_info.setdefault(ip, {"asn": 0, "flags": 0})["flags"] |= th.FLAG_RESOLVED_BY_PROBE
    for ip in addrs:
        ip_info.setdefault(ip, {"asn": 0, "flags": 0})["flags"] |= th.FLAG_RESOLVED_BY_TH
    for ip, info in ip_info.items():
        if config.is_bogon(ip):
            info["flags"] |= th.FLAG_IS_BOGON
    # ASNs stay 0 (oohelperd's "AS0 on failure"): this helper ships no ASN database.
    endpoints = [(ip, port) for ip, info in sorted(ip_info.items()) if not info["flags"] & th.FLAG_IS_BOGON
                 for port in _ports(request.http_request)]
    results = await asyncio.gather(
        _fetch(trace, request, fetch_from, config),
        *(_endpoint(trace, ip, port, host, config) for ip, port in endpoints),
    )
    tcp: dict[str, dict[str, Any]] = {}
    tls: dict[str, dict[str, Any]] = {}
    for (ip, port), (tcp_result, tls_result) in zip(endpoints, results[1:]):
        key = th.join_endpoint(ip, port)
        tcp[key] = tcp_result
        if tls_result is not None:
            tls[key] = tls_result
            if tls_result["failure"] is None:
                ip_info[ip]["flags"] |= th.FLAG_VALID_FOR_DOMAIN
    return th.build_response(dns_failure=failure, addrs=addrs, tcp_connect=tcp, tls_handshake=tls,
                             http_request=results[0], ip_info=ip_info)
