"""The web_connectivity test helper's API: the control request and response (OONI's TH protocol).

The probe asks a test helper (TH) that stands outside the censor for its own
view of a URL; the helper answers with what it saw ([ooni-spec]
ts-017 "Example control request and response"; the field names and types are
probe-cli's `model.THRequest` / `model.THResponse`, [ooni-probe-cli]
`internal/model/th.go`, as `oohelperd` writes them):

    request:  {"http_request": URL, "http_request_headers": {name: [value, ...]},
               "tcp_connect": ["ip:port", ...]}
    response: {"dns": {"failure", "addrs"},
               "tcp_connect": {"ip:port": {"status", "failure"}},
               "tls_handshake": {"ip:port": {"server_name", "status", "failure"}},
               "quic_handshake": {}, "http_request": {"body_length", "discovered_h3_endpoint",
               "failure", "title", "headers", "status_code"}, "http3_request": null,
               "ip_info": {"ip": {"asn", "flags"}}}

Sans-IO like every codec here: JSON bytes in, checked values out (ProtocolError
for anything else), and the builders the helper and the probe share. The
failure strings are the *legacy* helper's ones, which oohelperd still maps to
(`dns_name_error`, `connection_refused_error`, `connect_error`, ...): probes
and the pipeline compare against these.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence
from urllib.parse import urlsplit

import orjson

from wallwatch.protocols.errors import ProtocolError

# ip_info flags (probe-cli model.THIPInfoFlag*, bits in this order).
FLAG_RESOLVED_BY_PROBE = 1 << 0
FLAG_RESOLVED_BY_TH = 1 << 1
FLAG_IS_BOGON = 1 << 2
FLAG_VALID_FOR_DOMAIN = 1 << 3

# The legacy helper's failure strings (oohelperd dns.go, tcptls.go, http.go map to them).
DNS_NAME_ERROR = "dns_name_error"
DNS_SERVER_FAILURE = "dns_server_failure"
DNS_LOOKUP_ERROR = "dns_lookup_error"
CONNECTION_REFUSED_ERROR = "connection_refused_error"
CONNECT_ERROR = "connect_error"
UNKNOWN_ERROR = "unknown_error"
GENERIC_TIMEOUT = "generic_timeout_error"

# A request naming more endpoints than this is not a probe's: a URL's host resolves to a handful.
MAX_ENDPOINTS = 64
MAX_REQUEST_BYTES = 64 * 1024

# OONI's title extraction (probe-cli measurexlite.WebGetTitle): the first <title>, at most 512
# characters, no markup inside.
_TITLE = re.compile(r"(?i)<title>([^<]{1,512})</title>")


def page_title(body: str) -> str:
    """The page's title as OONI extracts it ("" when there is none)."""
    match = _TITLE.search(body)
    return match.group(1) if match else ""


def is_ip_literal(host: str) -> bool:
    """A URL host that is an address, not a name (nothing to resolve; ts-017 calls its DNS consistent)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """ "1.2.3.4:443" / "[2001:db8::1]:443" -> (ip, port); ProtocolError when it is not an ip:port."""
    host, sep, port = endpoint.rpartition(":")
    if not sep or not port.isdigit():
        raise ProtocolError(f"endpoint {endpoint!r} is not ip:port")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ProtocolError(f"endpoint {endpoint!r} does not name an IP address") from None
    number = int(port)
    if not 0 < number < 65536:
        raise ProtocolError(f"endpoint {endpoint!r} has no valid port")
    return str(address), number


def join_endpoint(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


@dataclass(frozen=True, slots=True)
class ControlRequest:
    """What the probe asks: the URL, the headers to send, the endpoints it resolved."""

    http_request: str
    http_request_headers: Mapping[str, Sequence[str]] = field(default_factory=dict)
    tcp_connect: tuple[str, ...] = ()

    def encode(self) -> bytes:
        return orjson.dumps({"http_request": self.http_request,
                             "http_request_headers": {k: list(v) for k, v in self.http_request_headers.items()},
                             "tcp_connect": list(self.tcp_connect)})


def parse_request(data: bytes) -> ControlRequest:
    """A control request, checked: an http(s) URL, string headers, ip:port endpoints."""
    if len(data) > MAX_REQUEST_BYTES:
        raise ProtocolError(f"control request over {MAX_REQUEST_BYTES} bytes")
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"control request is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ProtocolError("control request is not a JSON object")
    url = document.get("http_request")
    if not isinstance(url, str):
        raise ProtocolError("control request has no http_request URL")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ProtocolError(f"http_request {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ProtocolError(f"http_request {url!r} is not an http(s) URL with a host")
    headers = document.get("http_request_headers") or {}
    if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, list) and all(isinstance(x, str) for x in v)
            for k, v in headers.items()):
        raise ProtocolError("http_request_headers must map names to lists of strings")
    endpoints = document.get("tcp_connect") or []
    if not isinstance(endpoints, list) or not all(isinstance(e, str) for e in endpoints):
        raise ProtocolError("tcp_connect must be a list of \"ip:port\" strings")
    if len(endpoints) > MAX_ENDPOINTS:
        raise ProtocolError(f"tcp_connect names more than {MAX_ENDPOINTS} endpoints")
    for endpoint in endpoints:
        split_endpoint(endpoint)
    return ControlRequest(url, {k: tuple(v) for k, v in headers.items()}, tuple(endpoints))


def http_result(*, failure: str | None, status_code: int = -1, body_length: int = -1, title: str = "",
                headers: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The `http_request` stanza; -1 for the numbers on failure, as the legacy helper wrote them."""
    return {"body_length": body_length, "discovered_h3_endpoint": "", "failure": failure, "title": title,
            "headers": dict(headers or {}), "status_code": status_code}


def build_response(*, dns_failure: str | None, addrs: Sequence[str], tcp_connect: Mapping[str, Mapping[str, Any]],
                   tls_handshake: Mapping[str, Mapping[str, Any]], http_request: Mapping[str, Any],
                   ip_info: Mapping[str, Mapping[str, int]]) -> dict[str, Any]:
    return {"dns": {"failure": dns_failure, "addrs": list(addrs)}, "tcp_connect": dict(tcp_connect),
            "tls_handshake": dict(tls_handshake), "quic_handshake": {}, "http_request": dict(http_request),
            "http3_request": None, "ip_info": dict(ip_info)}


def parse_response(data: bytes) -> dict[str, Any]:
    """A helper's answer, checked for the stanzas the probe reads (others are kept as sent)."""
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"control response is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ProtocolError("control response is not a JSON object")
    for key in ("dns", "tcp_connect", "http_request"):
        if not isinstance(document.get(key), dict):
            raise ProtocolError(f"control response lacks the {key!r} object")
    addrs = document["dns"].get("addrs")
    if addrs is not None and not (isinstance(addrs, list) and all(isinstance(a, str) for a in addrs)):
        raise ProtocolError("control response dns.addrs is not a list of strings")
    for key in ("tls_handshake", "ip_info"):
        if document.get(key) is None:
            document[key] = {}
        elif not isinstance(document[key], dict):
            raise ProtocolError(f"control response {key!r} is not an object")
    return document
