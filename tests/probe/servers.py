"""Real loopback servers for the probe's tests: DNS, TLS/HTTP, chat, STUN, and misbehaving ones.

Everything binds 127.0.0.1 on a kernel-chosen port and lives inside the test's
own event loop; nothing leaves the machine. `Gate` is a tiny on-path censor
stand-in: a TCP relay that looks at a flow's first bytes and passes, resets or
black-holes it, which is what the lab's censor does at the packet level.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
import ssl
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable, Mapping

import h11
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from wallwatch.protocols import dns as dns_codec
from wallwatch.protocols.errors import ProtocolError
from wallwatch.protocols.stun import build_binding_response, parse_stun
from wallwatch.protocols.whatsapp import ChatServer, MessageReceived

LOOPBACK = "127.0.0.1"


# --- certificates -------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca_pem: Path
    cert_pem: Path
    key_pem: Path
    cert_der: bytes


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_pki(directory: Path, names: list[str], *, expired: bool = False, tag: str = "test") -> Pki:
    """A throwaway CA and one leaf for `names` (+127.0.0.1), written as PEM files."""
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder().subject_name(_name(f"{tag} CA")).issuer_name(_name(f"{tag} CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    valid_until = now - dt.timedelta(minutes=5) if expired else now + dt.timedelta(days=1)
    sans = [x509.DNSName(n) for n in names] + [x509.IPAddress(__import__("ipaddress").ip_address(LOOPBACK))]
    leaf = (
        x509.CertificateBuilder().subject_name(_name(names[0])).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(valid_until)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    ca_pem, cert_pem, key_pem = directory / f"{tag}-ca.pem", directory / f"{tag}.pem", directory / f"{tag}-key.pem"
    ca_pem.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_pem.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return Pki(ca_pem, cert_pem, key_pem, leaf.public_bytes(serialization.Encoding.DER))


def server_context(pki: Pki) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.cert_pem, pki.key_pem)
    context.set_alpn_protocols(["http/1.1"])
    return context


# --- DNS --------------------------------------------------------------------------------


@dataclass
class DnsServer(asyncio.DatagramProtocol):
    """Answers `names`; NXDOMAIN otherwise. `drop`: no answer. `servfail`: SERVFAIL.
    `inject`: a forged answer first, the honest one `race_delay` seconds later (an injector racing)."""

    names: Mapping[str, str]
    drop: frozenset[str] = frozenset()
    servfail: frozenset[str] = frozenset()
    inject: Mapping[str, str] = field(default_factory=dict)
    race_delay: float = 0.05
    transport: asyncio.DatagramTransport | None = None
    seen: list[str] = field(default_factory=list)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        facts = dns_codec.parse_dns(data)
        name = facts.qname or ""
        self.seen.append(name)
        if name in self.drop:
            return
        if name in self.servfail:
            self._send(dns_codec.build_response(data, [], rcode="SERVFAIL"), addr)
            return
        honest = (dns_codec.build_response(data, [self.names[name]]) if name in self.names
                  else dns_codec.build_response(data, [], rcode="NXDOMAIN"))
        if name in self.inject:
            self._send(dns_codec.build_response(data, [self.inject[name]]), addr)
            asyncio.get_running_loop().call_later(self.race_delay, self._send, honest, addr)
            return
        self._send(honest, addr)

    def _send(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data, addr)

    @property
    def port(self) -> int:
        assert self.transport is not None
        return self.transport.get_extra_info("sockname")[1]


async def start_dns(server: DnsServer) -> DnsServer:
    await asyncio.get_running_loop().create_datagram_endpoint(lambda: server, local_addr=(LOOPBACK, 0))
    return server


# --- STUN -----------------------------------------------------------------------------------


class StunServer(asyncio.DatagramProtocol):
    def __init__(self, *, answer: bool = True) -> None:
        self.answer = answer
        self.requests = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.requests += 1
        if self.answer and self.transport is not None:
            try:
                self.transport.sendto(build_binding_response(parse_stun(data), addr[0], addr[1]), addr)
            except ProtocolError:
                pass

    @property
    def port(self) -> int:
        assert self.transport is not None
        return self.transport.get_extra_info("sockname")[1]


async def start_stun(*, answer: bool = True) -> StunServer:
    _, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: StunServer(answer=answer), local_addr=(LOOPBACK, 0))
    return protocol


def free_udp_port() -> int:
    """A port nobody listens on (bound and released): datagrams to it get ICMP port unreachable."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


# --- TCP servers ------------------------------------------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def start_tcp(handler: Handler, *, ssl_context: ssl.SSLContext | None = None) -> tuple[asyncio.Server, int]:
    async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except (ConnectionError, OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(guarded, LOOPBACK, 0, ssl=ssl_context)
    return server, server.sockets[0].getsockname()[1]


def reset(writer: asyncio.StreamWriter) -> None:
    """Abort with RST: SO_LINGER with a zero timeout (RFC 793 abort; Linux sends RST on close)."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def reset_after_first_bytes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(65536)
    reset(writer)


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while await reader.read(65536):
        pass  # swallow everything, answer nothing


async def close_after_first_bytes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(65536)
    writer.write_eof()
    await writer.drain()


async def chat(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The WhatsApp chat transport: header, Noise XX, echo; hangs up (FIN) on anything else."""
    server = ChatServer()
    while data := await reader.read(65536):
        try:
            events = server.receive_data(data)
        except ProtocolError:
            writer.write_eof()
            await writer.drain()
            return
        for event in events:
            if isinstance(event, MessageReceived):
                server.send_message(event.plaintext)
        outgoing = server.data_to_send()
        if outgoing:
            writer.write(outgoing)
            await writer.drain()


SAMPLE_PHOTO = b"\xff\xd8" + bytes(range(256)) * 800 + b"\xff\xd9"


async def https_app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One HTTP/1.1 request per connection: /, /v2/register, POST /upload, /d/sample.jpg, /broken (503)."""
    connection = h11.Connection(h11.SERVER)
    request, body = None, b""
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            connection.receive_data(await reader.read(65536))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            break
    assert request is not None
    status, payload = _route(request.method.decode(), request.target.decode(), body)
    writer.write(connection.send(h11.Response(status_code=status, headers=[("Content-Length", str(len(payload)))])))
    writer.write(connection.send(h11.Data(data=payload)) + connection.send(h11.EndOfMessage()))
    await writer.drain()


def _route(method: str, target: str, body: bytes) -> tuple[int, bytes]:
    if target == "/broken":
        return 503, b"service unavailable\n"
    if method == "POST" and target == "/upload":
        return 200, json.dumps({"id": "x", "size": len(body)}).encode()
    if target == "/d/sample.jpg":
        return 200, SAMPLE_PHOTO
    if target in ("/", "/v2/register"):
        return 200, b'{"status": "fail", "reason": "missing_param"}'
    return 404, b"not found\n"


# --- a first-bytes gate (a censor stand-in) -----------------------------------------------------

PASS, RESET, DROP = "pass", "reset", "drop"


async def start_gate(backend_port: int, decide: Callable[[bytes], str]) -> tuple[asyncio.Server, int]:
    """Relay to `backend_port`, judging each flow by its first client bytes."""

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await reader.read(65536)
        verdict = decide(first)
        if verdict == RESET:
            reset(writer)
            return
        if verdict == DROP:
            await silent(reader, writer)
            return
        up_reader, up_writer = await asyncio.open_connection(LOOPBACK, backend_port)
        up_writer.write(first)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    return await start_tcp(relay)


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
        if sink.can_write_eof():
            sink.write_eof()
    except (ConnectionError, OSError):
        sink.close()
