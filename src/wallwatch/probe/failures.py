"""OS, asyncio and ssl errors -> OONI failure strings (ooni/spec df-007-errors).

Measurements carry the failure *string*, never an exception, so that the
pipeline can compare a wallwatch measurement with an OONI one. The vocabulary
is OONI's (probe-cli `internal/netxlite/errorsx`): the same condition gets the
same string whichever tool observed it.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl

CONNECTION_REFUSED = "connection_refused"
CONNECTION_RESET = "connection_reset"
CONNECTION_ABORTED = "connection_aborted"
GENERIC_TIMEOUT = "generic_timeout_error"
EOF_ERROR = "eof_error"
DNS_NXDOMAIN = "dns_nxdomain_error"
DNS_SERVFAIL = "dns_servfail_error"
DNS_REFUSED = "dns_refused_error"
DNS_NO_ANSWER = "dns_no_answer"
DNS_BOGON = "dns_bogon_error"
DNS_NON_RECOVERABLE = "dns_non_recoverable_failure"
HOST_UNREACHABLE = "host_unreachable"
NETWORK_UNREACHABLE = "network_unreachable"
SSL_INVALID_HOSTNAME = "ssl_invalid_hostname"
SSL_UNKNOWN_AUTHORITY = "ssl_unknown_authority"
SSL_INVALID_CERTIFICATE = "ssl_invalid_certificate"
SSL_FAILED_HANDSHAKE = "ssl_failed_handshake"
UNKNOWN_FAILURE = "unknown_failure"

_ERRNO_FAILURES = {
    errno.ECONNREFUSED: CONNECTION_REFUSED,
    errno.ECONNRESET: CONNECTION_RESET,
    errno.ECONNABORTED: CONNECTION_ABORTED,
    errno.EPIPE: CONNECTION_RESET,  # writing to a connection the peer reset
    errno.ETIMEDOUT: GENERIC_TIMEOUT,
    errno.EHOSTUNREACH: HOST_UNREACHABLE,
    errno.ENETUNREACH: NETWORK_UNREACHABLE,
}

# OpenSSL X509_V_ERR_* codes (include/openssl/x509_vfy.h) that mean "no path
# to a trusted root" -> ssl_unknown_authority, as netxlite classifies them.
_UNKNOWN_AUTHORITY_CODES = frozenset({2, 18, 19, 20, 21})
_HOSTNAME_MISMATCH_CODE = 62  # X509_V_ERR_HOSTNAME_MISMATCH


class ProbeFailure(Exception):
    """An operation failed; `failure` is the OONI string already recorded in the trace."""

    def __init__(self, failure: str) -> None:
        super().__init__(failure)
        self.failure = failure


def unknown_failure(text: str) -> str:
    # netxlite writes "unknown_failure: <scrubbed error text>".
    return f"{UNKNOWN_FAILURE}: {text}"


def classify(exc: BaseException) -> str:
    """The OONI failure string for an exception raised by a network operation."""
    if isinstance(exc, ProbeFailure):
        return exc.failure
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError, socket.timeout)):
        return GENERIC_TIMEOUT
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _classify_certificate_error(exc)
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError, asyncio.IncompleteReadError, EOFError)):
        return EOF_ERROR
    if isinstance(exc, ssl.SSLError):
        return SSL_FAILED_HANDSHAKE
    if isinstance(exc, ConnectionRefusedError):
        return CONNECTION_REFUSED
    if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
        return CONNECTION_RESET
    if isinstance(exc, socket.gaierror):
        return _classify_gai_error(exc)
    if isinstance(exc, OSError) and exc.errno in _ERRNO_FAILURES:
        return _ERRNO_FAILURES[exc.errno]
    return unknown_failure(f"{exc.__class__.__name__}: {exc}")


def _classify_certificate_error(exc: ssl.SSLCertVerificationError) -> str:
    if exc.verify_code == _HOSTNAME_MISMATCH_CODE:
        return SSL_INVALID_HOSTNAME
    if exc.verify_code in _UNKNOWN_AUTHORITY_CODES:
        return SSL_UNKNOWN_AUTHORITY
    return SSL_INVALID_CERTIFICATE


def _classify_gai_error(exc: socket.gaierror) -> str:
    # glibc getaddrinfo codes; netxlite maps EAI_NONAME to NXDOMAIN and
    # EAI_AGAIN to a temporary failure (a SERVFAIL or a timeout upstream).
    if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5)):
        return DNS_NXDOMAIN
    if exc.errno == socket.EAI_AGAIN:
        return DNS_SERVFAIL
    if exc.errno == socket.EAI_FAIL:
        return DNS_NON_RECOVERABLE
    return unknown_failure(f"getaddrinfo: {exc}")


def is_timeout(failure: str | None) -> bool:
    return failure == GENERIC_TIMEOUT
