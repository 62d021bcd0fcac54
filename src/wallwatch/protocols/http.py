"""HTTP/1.1 request heads (RFC 9112 §3), as the censor's `http` analyzer sees them.

Only the head matters to a censor: the request line and the Host field. The
parser accepts a stream prefix and answers `Incomplete` until the blank line
that ends the head arrives, so keyword and Host filtering works packet by
packet. It is deliberately lenient where servers are (bare LF line endings,
RFC 9112 §2.2) and strict where a censor must not be fooled into a false match
(a method must be a token, RFC 9110 §9.1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from wallwatch.protocols.errors import Incomplete, ProtocolError

# A request head larger than this is not something a real client sends; nginx's
# large_client_header_buffers default is 4 x 8 KiB, so 32 KiB bounds the wait.
MAX_HEAD_BYTES = 32 * 1024

# RFC 9110 §5.6.2 token characters.
_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_VERSION = re.compile(rb"^HTTP/\d\.\d$")
_LONGEST_METHOD = 24  # e.g. VERSION-CONTROL; longer first words cannot be a method


@dataclass(frozen=True, slots=True)
class RequestHead:
    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]
    host: str | None


def build_request_head(
    method: str, target: str, host: str, headers: Sequence[tuple[str, str]] = ()
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _check_method_prefix(data: bytes) -> None:
    """Fail early when the first bytes cannot start a request line."""
    first_word = data.split(b" ", 1)[0]
    if len(first_word) > _LONGEST_METHOD or (first_word and not _TOKEN.match(first_word)):
        raise ProtocolError("not an HTTP request: first word is not a method token")


def parse_request_head(data: bytes) -> RequestHead | Incomplete:
    end = data.find(b"\r\n\r\n")
    if end < 0:
        end = data.find(b"\n\n")
    if end < 0:
        _check_method_prefix(data)
        if b"\n" in data:
            _parse_request_line(data.split(b"\n", 1)[0].rstrip(b"\r"))
        if len(data) > MAX_HEAD_BYTES:
            raise ProtocolError("HTTP request head too large")
        return Incomplete()
    lines = data[:end].replace(b"\r\n", b"\n").split(b"\n")
    method, target, version = _parse_request_line(lines[0])
    headers = tuple(_parse_field(line) for line in lines[1:] if line)
    host = next((value for name, value in headers if name.lower() == "host"), None)
    return RequestHead(method, target, version, headers, host.lower() if host else None)


def _parse_request_line(line: bytes) -> tuple[str, str, str]:
    parts = line.split(b" ")
    if len(parts) != 3 or not _TOKEN.match(parts[0]) or not _VERSION.match(parts[2]) or not parts[1]:
        raise ProtocolError(f"malformed HTTP request line: {line[:80]!r}")
    return parts[0].decode("ascii"), parts[1].decode("latin-1"), parts[2].decode("ascii")


def _parse_field(line: bytes) -> tuple[str, str]:
    name, sep, value = line.partition(b":")
    if not sep or not _TOKEN.match(name):
        raise ProtocolError(f"malformed HTTP header field: {line[:80]!r}")
    return name.decode("ascii"), value.strip(b" \t").decode("latin-1")
