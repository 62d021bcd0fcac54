"""Measurement primitives: resolve, connect, TLS, HTTP, UDP, controls.

Each primitive is a coroutine with a bounded timeout that records what it saw
into the shared `Trace` (OONI data format, ooni/spec df-001..df-008) *before*
it returns or raises, so a failed step is as well documented as a good one.
Failures surface as `ProbeFailure(failure)` carrying OONI's failure string;
the DNS and control primitives return result facts instead, because for them
"what came back" matters more than "did it work".
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import struct
from dataclasses import dataclass
from typing import Any, Callable, Sequence
from urllib.parse import urlsplit

from wallwatch.probe import failures
from wallwatch.probe.failures import ProbeFailure
from wallwatch.probe.trace import Transaction, b64, maybe_binary

# Reads are done in chunks of this size; 64 KiB is the asyncio stream limit.
READ_CHUNK = 65536
# Recorded bodies are cut here: OONI measurements are 1 KB-1 MB each
# (ooni/data Readme), and a photo-sized media body must not bloat every one.
BODY_SNAPSHOT_BYTES = 4096
# A hard cap on what an HTTP response may hold in memory.
MAX_RESPONSE_BYTES = 8 * 1024 * 1024


# --- DNS ----------------------------------------------------------------------


@dataclass(frozen=True)
class Resolution:
    """What a lookup produced: the first answer's addresses, or its failure."""

    hostname: str
    addresses: tuple[str, ...]
    failure: str | None
    duplicate_responses: int = 0


class _DatagramQueue(asyncio.DatagramProtocol):
    """Datagrams (and ICMP errors on a connected socket) as an asyncio queue."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | Exception] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.queue.put_nowait(data)

    def error_received(self, exc: Exception) -> None:
        self.queue.put_nowait(exc)


async def _open_udp(ip: str, port: int) -> tuple[asyncio.DatagramTransport, _DatagramQueue]:
    loop = asyncio.get_running_loop()
    # A connected socket, so an ICMP port-unreachable comes back as ECONNREFUSED.
    transport, protocol = await loop.create_datagram_endpoint(_DatagramQueue, remote_addr=(ip, port))
    return transport, protocol


async def _next_datagram(protocol: _DatagramQueue, deadline: float) -> bytes:
    remaining = deadline - asyncio.get_running_loop().time()
    if remaining <= 0:
        raise asyncio.TimeoutError
    item = await asyncio.wait_for(protocol.queue.get(), remaining)
    if isinstance(item, Exception):
        raise item
    return item


_RCODE_FAILURES = {
    "NXDOMAIN": failures.DNS_NXDOMAIN,
    "SERVFAIL": failures.DNS_SERVFAIL,
    "REFUSED": failures.DNS_REFUSED,
}


def _answer_entries(facts: Any) -> list[dict[str, Any]]:
    entries = []
    for answer in facts.answers:
        entry: dict[str, Any] = {"answer_type": answer.rtype, "ttl": answer.ttl}
        if answer.rtype == "A":
            entry["ipv4"] = answer.value
        elif answer.rtype == "AAAA":
            entry["ipv6"] = answer.value
        else:
            entry["hostname"] = answer.value.rstrip(".")
        entries.append(entry)
    return entries


def _response_failure(facts: Any) -> str | None:
    if facts.rcode != "NOERROR":
        return _RCODE_FAILURES.get(facts.rcode, failures.unknown_failure(f"dns rcode {facts.rcode}"))
    if not facts.addresses:
        return failures.DNS_NO_ANSWER
    return None


async def resolve_udp(
    tx: Transaction,
    hostname: str,
    resolver: tuple[str, int],
    *,
    query_type: str = "A",
    timeout: float = 2.0,
    linger: float = 0.3,
) -> Resolution:
    """One DNS query over UDP (RFC 1035 §4.2.1) to `resolver`.

    After the first matching response the socket stays open for `linger`
    seconds: an on-path injector (the GFW's, Hoang et al. 2021 "GFWatch") races
    the real resolver, so a second, different answer to the same query id is
    the injection's fingerprint. Late responses go to `x_dns_duplicate_responses`.
    """
    from wallwatch.protocols import dns as dns_codec
    from wallwatch.protocols.errors import ProtocolError

    query = dns_codec.build_query(hostname, query_type)
    query_id = int.from_bytes(query[:2], "big")
    address = f"{resolver[0]}:{resolver[1]}"
    t0 = tx.now()
    first: tuple[dict[str, Any], Any] | None = None
    duplicates: list[dict[str, Any]] = []
    failure: str | None = None
    transport = None
    try:
        transport, protocol = await _open_udp(*resolver)
        transport.sendto(query)
        tx.network_event(t0, "write", address=address, proto="udp", num_bytes=len(query))
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            data = await _next_datagram(protocol, deadline)
            t_read = tx.now()
            tx.network_event(t_read, "read", address=address, proto="udp", num_bytes=len(data))
            try:
                facts = dns_codec.parse_dns(data)
            except ProtocolError:
                continue  # garbage on our port is not an answer to our query
            if not facts.is_response or facts.id != query_id:
                continue
            record = {"t": t_read, "rcode": facts.rcode, "answers": _answer_entries(facts), "raw_response": b64(data)}
            if first is None:
                first = (record, facts)
                deadline = asyncio.get_running_loop().time() + linger
            else:
                duplicates.append(record)
    except (asyncio.TimeoutError, TimeoutError):
        if first is None:
            failure = failures.GENERIC_TIMEOUT
    except OSError as exc:
        failure = failures.classify(exc)
    finally:
        if transport is not None:
            transport.close()
    return _record_query(tx, t0, hostname, query_type, address, first, duplicates, failure)


def _record_query(
    tx: Transaction,
    t0: float,
    hostname: str,
    query_type: str,
    address: str,
    first: tuple[dict[str, Any], Any] | None,
    duplicates: list[dict[str, Any]],
    failure: str | None,
) -> Resolution:
    entry: dict[str, Any] = {
        "engine": "udp",
        "resolver_address": address,
        "resolver_hostname": None,
        "resolver_port": None,
        "hostname": hostname,
        "query_type": query_type,
        "answers": [],
        "rcode": None,
        "raw_response": None,
        "failure": failure,
    }
    addresses: tuple[str, ...] = ()
    if first is not None:
        record, facts = first
        entry.update(answers=record["answers"], rcode=record["rcode"], raw_response=record["raw_response"])
        entry["failure"] = _response_failure(facts)
        addresses = facts.addresses
    entry["x_dns_duplicate_responses"] = duplicates
    entry.update(tx.stamp(t0))
    tx.trace.queries.append(entry)
    return Resolution(hostname, addresses, entry["failure"], len(duplicates))


async def resolve_system(
    tx: Transaction,
    hostname: str,
    *,
    timeout: float = 5.0,
    shared: dict[str, "asyncio.Future[Any]"] | None = None,
) -> Resolution:
    """getaddrinfo, recorded as OONI records it: one query of type ANY, engine getaddrinfo.

    getaddrinfo runs on asyncio's small thread pool; `shared` lets concurrent
    attempts for one name share one lookup (each still records its own query
    entry), so 32 chat targets do not queue 32 lookups behind each other and
    time out waiting for a thread rather than for the network.
    """
    t0 = tx.now()
    addresses: tuple[str, ...] = ()
    failure: str | None = None
    try:
        infos = await asyncio.wait_for(asyncio.shield(_getaddrinfo(hostname, shared)), timeout)
        addresses = tuple(dict.fromkeys(info[4][0] for info in infos))
        if not addresses:
            failure = failures.DNS_NO_ANSWER
    except (OSError, asyncio.TimeoutError) as exc:
        failure = failures.classify(exc)
    answers = [{"answer_type": "AAAA" if ":" in a else "A", ("ipv6" if ":" in a else "ipv4"): a, "ttl": None}
               for a in addresses]
    entry = {"engine": "getaddrinfo", "resolver_address": "", "resolver_hostname": None, "resolver_port": None,
             "hostname": hostname, "query_type": "ANY", "answers": answers, "rcode": None,
             "raw_response": None, "failure": failure, "x_dns_duplicate_responses": []}
    entry.update(tx.stamp(t0))
    tx.trace.queries.append(entry)
    return Resolution(hostname, addresses, failure)


def _getaddrinfo(hostname: str, shared: dict[str, "asyncio.Future[Any]"] | None) -> "asyncio.Future[Any]":
    loop = asyncio.get_running_loop()
    if shared is None:
        return asyncio.ensure_future(loop.getaddrinfo(hostname, None, type=socket.SOCK_STREAM))
    if hostname not in shared:
        shared[hostname] = asyncio.ensure_future(loop.getaddrinfo(hostname, None, type=socket.SOCK_STREAM))
    return shared[hostname]


# --- TCP ----------------------------------------------------------------------


def _endpoint(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class TcpStream:
    """A connected TCP stream whose every read and write lands in `network_events`."""

    def __init__(self, tx: Transaction, ip: str, port: int,
                 reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.tx, self.ip, self.port = tx, ip, port
        self.address = _endpoint(ip, port)
        self._reader, self._writer = reader, writer
        # A bulk transfer (probe/throughput.py) counts bytes as they arrive instead of
        # logging one network event per read: `observer(n)` is called for every
        # successful read, and `quiet` keeps successful reads and writes out of the
        # trace (failures are always recorded).
        self.observer: Callable[[int], None] | None = None
        self.quiet = False

    async def write(self, data: bytes, *, timeout: float = 5.0) -> None:
        t0 = self.tx.now()
        try:
            self._writer.write(data)
            await asyncio.wait_for(self._writer.drain(), timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            failure = failures.classify(exc)
            self.tx.network_event(t0, "write", address=self.address, proto="tcp", failure=failure)
            raise ProbeFailure(failure) from None
        if not self.quiet:
            self.tx.network_event(t0, "write", address=self.address, proto="tcp", num_bytes=len(data))

    async def read(self, max_bytes: int = READ_CHUNK, *, timeout: float = 5.0) -> bytes:
        """Up to `max_bytes`; b"" on a clean EOF (recorded as an `eof_error` read, as OONI does)."""
        t0 = self.tx.now()
        try:
            data = await asyncio.wait_for(self._reader.read(max_bytes), timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            failure = failures.classify(exc)
            self.tx.network_event(t0, "read", address=self.address, proto="tcp", failure=failure)
            raise ProbeFailure(failure) from None
        if data and self.observer is not None:
            self.observer(len(data))
        failure = None if data else failures.EOF_ERROR
        if not self.quiet or failure is not None:
            self.tx.network_event(t0, "read", address=self.address, proto="tcp", num_bytes=len(data),
                                  failure=failure)
        return data

    async def close(self) -> None:
        self._writer.close()
        try:
            await asyncio.wait_for(self._writer.wait_closed(), 1.0)
        except (OSError, asyncio.TimeoutError):
            pass  # the peer reset or vanished: nothing left to close

    async def abort(self) -> None:
        """Close with a RST, dropping whatever is still unsent (SO_LINGER 0, socket(7)).

        An attempt given up half-way (a transfer that timed out behind a
        throttle) must not go on dribbling its send buffer through the path
        after the probe has moved on: it would queue in front of the next flow.
        """
        sock = self._writer.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        self._writer.transport.abort()


async def tcp_connect(tx: Transaction, ip: str, port: int, *, timeout: float = 3.0) -> TcpStream:
    """A TCP connect, recorded in `tcp_connect` (df-005) and `network_events`."""
    t0 = tx.now()
    failure = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(ip, port, limit=READ_CHUNK), timeout)
    except (OSError, asyncio.TimeoutError) as exc:
        failure = failures.classify(exc)
    entry = {"ip": ip, "port": port, "status": {"success": failure is None, "failure": failure}}
    entry.update(tx.stamp(t0))
    tx.trace.tcp_connect.append(entry)
    tx.network_event(t0, "connect", address=_endpoint(ip, port), proto="tcp", failure=failure)
    if failure is not None:
        raise ProbeFailure(failure)
    return TcpStream(tx, ip, port, reader, writer)


# --- TLS ----------------------------------------------------------------------


class TlsStream:
    """TLS over a recorded `TcpStream`, driven through `ssl.MemoryBIO`.

    Running the stdlib TLS engine over memory BIOs (sans-IO, as h11 does for
    HTTP) keeps connect and handshake separate steps with separate failures,
    and lets every TLS record cross the wire through the recorded stream.
    """

    def __init__(self, tcp: TcpStream, tls: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO) -> None:
        self.tcp, self._tls, self._incoming, self._outgoing = tcp, tls, incoming, outgoing
        self.tx, self.address = tcp.tx, tcp.address

    async def _flush(self, timeout: float) -> None:
        pending = self._outgoing.read()
        if pending:
            await self.tcp.write(pending, timeout=timeout)

    async def _fill(self, timeout: float) -> None:
        data = await self.tcp.read(timeout=timeout)
        if data:
            self._incoming.write(data)
        else:
            self._incoming.write_eof()

    async def write(self, data: bytes, *, timeout: float = 5.0) -> None:
        self._tls.write(data)
        await self._flush(timeout)

    async def read(self, max_bytes: int = READ_CHUNK, *, timeout: float = 5.0) -> bytes:
        """Decrypted bytes; b"" at the end of the stream (close_notify or a bare TCP FIN)."""
        while True:
            try:
                return self._tls.read(max_bytes)
            except ssl.SSLWantReadError:
                await self._fill(timeout)
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""
            except ssl.SSLError as exc:
                raise ProbeFailure(failures.classify(exc)) from None

    async def close(self) -> None:
        await self.tcp.close()


def _peer_certificates(tls: ssl.SSLObject) -> list[dict[str, str]]:
    # Python 3.11 exposes only the leaf (get_verified_chain arrives in 3.13).
    leaf = tls.getpeercert(binary_form=True)
    return [{"format": "base64", "data": b64(leaf)}] if leaf else []


async def tls_handshake(
    tcp: TcpStream,
    server_name: str,
    context: ssl.SSLContext,
    *,
    alpn: Sequence[str] = (),
    timeout: float = 3.0,
) -> TlsStream:
    """A TLS handshake with `server_name` as SNI and verified name, recorded in `tls_handshakes` (df-006).

    `context` carries trust and ALPN (see `ProbeSettings.tls_context`); `alpn`
    is what it offers, for the record.
    """
    tx = tcp.tx
    t0 = tx.now()
    tx.network_event(t0, "tls_handshake_start", address=tcp.address)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    stream = TlsStream(tcp, tls, incoming, outgoing)
    failure = None
    try:
        await asyncio.wait_for(_drive_handshake(stream), timeout)
    except ProbeFailure as exc:
        failure = exc.failure
    except (ssl.SSLError, OSError, asyncio.TimeoutError) as exc:
        failure = failures.classify(exc)
    _record_handshake(tx, t0, tcp.address, server_name, alpn, context, tls, failure)
    if failure is not None:
        raise ProbeFailure(failure)
    return stream


async def _drive_handshake(stream: TlsStream) -> None:
    while True:
        try:
            stream._tls.do_handshake()
            await stream._flush(timeout=5.0)
            return
        except ssl.SSLWantReadError:
            await stream._flush(timeout=5.0)
            data = await stream.tcp.read()
            if not data:
                raise ProbeFailure(failures.EOF_ERROR) from None
            stream._incoming.write(data)


def _record_handshake(tx: Transaction, t0: float, address: str, server_name: str, alpn: Sequence[str],
                      context: ssl.SSLContext, tls: ssl.SSLObject, failure: str | None) -> None:
    cipher = tls.cipher() if failure is None else None
    entry = {
        "network": "tcp",
        "address": address,
        "server_name": server_name,
        "alpn": list(alpn),
        "failure": failure,
        "so_error": None,
        "tls_version": tls.version() if failure is None else "",
        "cipher_suite": cipher[0] if cipher else "",
        "negotiated_protocol": (tls.selected_alpn_protocol() or "") if failure is None else "",
        "no_tls_verify": context.verify_mode == ssl.CERT_NONE,
        "peer_certificates": _peer_certificates(tls) if failure is None else [],
    }
    entry.update(tx.stamp(t0))
    tx.trace.tls_handshakes.append(entry)
    tx.network_event(t0, "tls_handshake_done", address=address, failure=failure)


# --- HTTP/1.1 -----------------------------------------------------------------


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


def _headers_record(headers: Sequence[tuple[str, str]]) -> dict[str, Any]:
    return {"headers_list": [[name, value] for name, value in headers],
            "headers": {name: value for name, value in headers}}


def _body_record(body: bytes, limit: int) -> dict[str, Any]:
    return {"body": maybe_binary(body[:limit]), "body_is_truncated": len(body) > limit}


async def http_request(
    stream: TlsStream | TcpStream,
    url: str,
    *,
    method: str = "GET",
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    timeout: float = 5.0,
    snapshot_bytes: int = BODY_SNAPSHOT_BYTES,
    keep_alive: bool = False,
) -> HttpResponse:
    """One HTTP/1.1 exchange over an open stream (h11 speaks the protocol), recorded in `requests` (df-001).

    `keep_alive`: leave the connection open for another exchange (HTTP/1.1's default, RFC 9112 §9.3),
    e.g. two messages sent over one connection; otherwise ask the server to close it."""
    tx = stream.tx
    t0 = tx.now()
    tx.network_event(t0, "http_transaction_start")
    parts = urlsplit(url)
    request_headers = [("Host", parts.netloc), *headers, *(() if keep_alive else (("Connection", "close"),))]
    if body or method in ("POST", "PUT"):
        request_headers.append(("Content-Length", str(len(body))))
    response: HttpResponse | None = None
    failure = None
    try:
        response = await asyncio.wait_for(
            _exchange(stream, method, parts.path or "/", request_headers, body), timeout
        )
    except ProbeFailure as exc:
        failure = exc.failure
    except (OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
        failure = failures.classify(exc)
    except Exception as exc:  # h11.ProtocolError and friends: the peer spoke something else
        failure = failures.unknown_failure(f"{exc.__class__.__name__}: {exc}")
    _record_request(tx, t0, stream, url, method, request_headers, body, response, failure, snapshot_bytes)
    if failure is not None:
        raise ProbeFailure(failure)
    assert response is not None
    return response


async def _exchange(stream: TlsStream | TcpStream, method: str, target: str,
                    headers: list[tuple[str, str]], body: bytes) -> HttpResponse:
    import h11

    connection = h11.Connection(h11.CLIENT)
    wire = connection.send(h11.Request(method=method, target=target, headers=headers))
    if body:
        wire += connection.send(h11.Data(data=body))
    wire += connection.send(h11.EndOfMessage())
    await stream.write(wire)
    status, response_headers, chunks, size = 0, (), [], 0
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            connection.receive_data(await stream.read())
        elif isinstance(event, h11.Response):
            status = event.status_code
            response_headers = tuple((n.decode("latin-1"), v.decode("latin-1")) for n, v in event.headers)
        elif isinstance(event, h11.Data):
            size += len(event.data)
            if size > MAX_RESPONSE_BYTES:
                raise ProbeFailure(failures.unknown_failure("response body over the size cap"))
            chunks.append(bytes(event.data))
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            if status == 0:
                raise ProbeFailure(failures.EOF_ERROR)
            return HttpResponse(status, response_headers, b"".join(chunks))


def _record_request(tx: Transaction, t0: float, stream: TlsStream | TcpStream, url: str, method: str,
                    headers: Sequence[tuple[str, str]], body: bytes, response: HttpResponse | None,
                    failure: str | None, snapshot_bytes: int) -> None:
    request = {"url": url, "method": method, "tor": {"exit_ip": None, "exit_name": None, "is_tor": False},
               "x_transport": "tcp", **_headers_record(headers), **_body_record(body, snapshot_bytes)}
    reply: dict[str, Any] = {"code": 0, "headers_list": [], "headers": {}, "body": "", "body_is_truncated": False}
    if response is not None:
        reply = {"code": response.status, **_headers_record(response.headers),
                 **_body_record(response.body, snapshot_bytes), "x_body_length": len(response.body)}
    entry = {"network": "tcp", "address": stream.address,
             "alpn": "http/1.1", "failure": failure, "request": request, "response": reply}
    entry.update(tx.stamp(t0))
    tx.trace.requests.append(entry)
    tx.network_event(t0, "http_transaction_done", failure=failure)


# --- UDP request/response -------------------------------------------------------


@dataclass(frozen=True)
class UdpResult:
    response: bytes | None
    failure: str | None
    sends: int


def retransmit_schedule(timeout: float, first_rto: float = 0.5) -> list[float]:
    """Send offsets: RFC 5389 §7.2.1 starts the RTO at 500 ms and doubles it."""
    offsets, offset, rto = [0.0], 0.0, first_rto
    while offset + rto < timeout:
        offset += rto
        offsets.append(offset)
        rto *= 2
    return offsets


async def udp_exchange(
    tx: Transaction,
    ip: str,
    port: int,
    payload: bytes,
    *,
    is_response: Callable[[bytes], bool],
    timeout: float = 2.5,
    kind: str = "udp",
    record_raw: bool = True,
) -> UdpResult:
    """Send `payload` (retransmitting, RFC 5389 §7.2.1) until a datagram passing `is_response` arrives.

    `record_raw=False` keeps the response bytes out of the trace: a STUN answer
    carries the probe's own public address (RFC 5389 §15.2).
    """
    address = _endpoint(ip, port)
    t0 = tx.now()
    loop = asyncio.get_running_loop()
    response, failure, sends = None, None, 0
    transport = None
    try:
        transport, protocol = await _open_udp(ip, port)
        start = loop.time()
        offsets = retransmit_schedule(timeout)
        while response is None:
            if sends < len(offsets) and loop.time() - start >= offsets[sends]:
                transport.sendto(payload)
                sends += 1
                tx.network_event(tx.now(), "write", address=address, proto="udp", num_bytes=len(payload))
            next_send = start + offsets[sends] if sends < len(offsets) else start + timeout
            try:
                data = await _next_datagram(protocol, min(next_send, start + timeout))
            except asyncio.TimeoutError:
                if loop.time() - start >= timeout:
                    raise
                continue
            tx.network_event(tx.now(), "read", address=address, proto="udp", num_bytes=len(data))
            if is_response(data):
                response = data
    except (asyncio.TimeoutError, TimeoutError):
        failure = failures.GENERIC_TIMEOUT
    except OSError as exc:
        failure = failures.classify(exc)
    finally:
        if transport is not None:
            transport.close()
    entry = {"kind": kind, "address": address, "proto": "udp", "request_size": len(payload), "sends": sends,
             "response_size": len(response) if response is not None else None, "failure": failure,
             "raw_response": b64(response) if response is not None and record_raw else None}
    entry.update(tx.stamp(t0))
    tx.trace.udp_exchanges.append(entry)
    return UdpResult(response, failure, sends)


class UdpFlow:
    """One connected UDP socket kept for a whole exchange, every datagram in `network_events`.

    A handshake over UDP must come from one source port: servers key their
    sessions on it (OpenVPN's multi.c hashes the peer address), so a fresh
    socket per step would look like a new client to the server.
    """

    def __init__(self, tx: Transaction, ip: str, port: int,
                 transport: asyncio.DatagramTransport, protocol: _DatagramQueue) -> None:
        self.tx, self.ip, self.port = tx, ip, port
        self.address = _endpoint(ip, port)
        self._transport, self._protocol = transport, protocol

    def write(self, data: bytes) -> None:
        self._transport.sendto(data)
        self.tx.network_event(self.tx.now(), "write", address=self.address, proto="udp", num_bytes=len(data))

    async def read(self, *, timeout: float) -> bytes:
        """The next datagram; ProbeFailure(generic_timeout_error) when none comes in time,
        ProbeFailure(connection_refused) on an ICMP port unreachable."""
        t0 = self.tx.now()
        try:
            data = await _next_datagram(self._protocol, asyncio.get_running_loop().time() + timeout)
        except (asyncio.TimeoutError, TimeoutError, OSError) as exc:
            failure = failures.classify(exc)
            if failure != failures.GENERIC_TIMEOUT:
                self.tx.network_event(t0, "read", address=self.address, proto="udp", failure=failure)
            raise ProbeFailure(failure) from None
        self.tx.network_event(t0, "read", address=self.address, proto="udp", num_bytes=len(data))
        return data

    def close(self) -> None:
        self._transport.close()


async def open_udp_flow(tx: Transaction, ip: str, port: int) -> UdpFlow:
    """A connected UDP socket to ip:port (no packet is sent by connecting)."""
    try:
        transport, protocol = await _open_udp(ip, port)
    except OSError as exc:
        failure = failures.classify(exc)
        tx.network_event(tx.now(), "connect", address=_endpoint(ip, port), proto="udp", failure=failure)
        raise ProbeFailure(failure) from None
    return UdpFlow(tx, ip, port, transport, protocol)


# --- controls -------------------------------------------------------------------

# Outcomes of a control flow after its first flight was sent.
ANSWERED, CLOSED, SILENT, RESET, CONNECT_FAILED = "answered", "closed", "silent", "reset", "connect_failed"


@dataclass(frozen=True)
class ControlResult:
    kind: str
    address: str
    outcome: str
    failure: str | None
    first_bytes: bytes

    @property
    def reached_server(self) -> bool:
        """The server got our bytes and reacted (replied or hung up) without interference signs."""
        return self.outcome in (ANSWERED, CLOSED)


async def first_flight_control(
    tx: Transaction,
    ip: str,
    port: int,
    payload: bytes,
    *,
    kind: str,
    timeout: float = 3.0,
    detail: dict[str, Any] | None = None,
) -> ControlResult:
    """Connect, send one first flight, and report how the path reacted.

    The control half of a differential test: same address and port as the
    failing attempt, different bytes. If it passes where the real flight was
    reset or black-holed, the censor looked at the bytes, not the address.
    """
    address = _endpoint(ip, port)
    t0 = tx.now()
    outcome, failure, first = CONNECT_FAILED, None, b""
    try:
        stream = await tcp_connect(tx, ip, port, timeout=timeout)
    except ProbeFailure as exc:
        failure = exc.failure
    else:
        outcome, failure, first = await _observe_reaction(stream, payload, timeout)
        await stream.close()
    entry = {"kind": kind, "address": address, "outcome": outcome, "failure": failure,
             "request_size": len(payload), "response_prefix": b64(first[:16]), **(detail or {})}
    entry.update(tx.stamp(t0))
    tx.trace.controls.append(entry)
    return ControlResult(kind, address, outcome, failure, first)


async def _observe_reaction(stream: TcpStream, payload: bytes, timeout: float) -> tuple[str, str | None, bytes]:
    try:
        await stream.write(payload, timeout=timeout)
        data = await stream.read(timeout=timeout)
    except ProbeFailure as exc:
        if exc.failure == failures.GENERIC_TIMEOUT:
            return SILENT, exc.failure, b""
        if exc.failure == failures.CONNECTION_RESET:
            return RESET, exc.failure, b""
        return CONNECT_FAILED, exc.failure, b""
    if not data:
        return CLOSED, failures.EOF_ERROR, b""
    return ANSWERED, None, data


async def tls_sni_control(tx: Transaction, ip: str, port: int, server_name: str, *,
                          timeout: float = 3.0) -> ControlResult:
    """A raw ClientHello naming `server_name` (protocols.tls): does the server answer with a TLS record?"""
    from wallwatch.protocols.tls import build_client_hello, looks_like_tls_record

    hello = build_client_hello(server_name, alpn=("h2", "http/1.1"))
    result = await first_flight_control(tx, ip, port, hello, kind="tls_sni", timeout=timeout,
                                        detail={"server_name": server_name})
    if result.outcome == ANSWERED and not looks_like_tls_record(result.first_bytes):
        # Something answered, but not TLS: an injected block page, say. Not a pass.
        result = ControlResult(result.kind, result.address, "answered_not_tls", result.failure, result.first_bytes)
        tx.trace.controls[-1]["outcome"] = result.outcome
    return result


def random_token(size: int = 12) -> bytes:
    return os.urandom(size)
