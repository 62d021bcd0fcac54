"""A real Debian `openvpn` server on loopback, and relays that play the censor in front of it.

The server is openvpn 2.6 in TLS mode without tls-auth (what the nettest can
reach), with a throwaway self-signed certificate made with `cryptography`, on
127.0.0.1 high ports. The relays forward to it and decide per flow:
`UdpRelay`/`TcpRelay` pass `first_exchanges` client packets (each with whatever
the server answers), then drop or reset everything after -- a censor that
decides only after seeing the server's reset, as OpenGFW's analyzer does.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"
PASS_ALL = 10**9


def write_pki(directory: Path) -> Path:
    """One self-signed EC certificate used as CA and server identity (the openvpn test in tests/protocols does the same)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wallwatch-probe-test")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    (directory / "key.pem").chmod(0o600)
    return directory


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def openvpn_available() -> bool:
    return shutil.which("openvpn") is not None


class OpenVpnServer:
    """`openvpn --tls-server` for one transport; `port` is where it listens."""

    def __init__(self, pki: Path, transport: str) -> None:
        self.pki, self.transport = pki, transport
        self.port = free_port(socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM)
        self.process: subprocess.Popen[bytes] | None = None
        self.log = pki / f"openvpn-{transport}-{self.port}.log"

    def __enter__(self) -> "OpenVpnServer":
        proto = "udp" if self.transport == "udp" else "tcp-server"
        argv = ["openvpn", "--tls-server", "--dh", "none", "--proto", proto, "--local", LOOPBACK,
                "--lport", str(self.port), "--dev", "null", "--ca", "cert.pem", "--cert", "cert.pem",
                "--key", "key.pem", "--verb", "3", "--hand-window", "10"]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(argv, cwd=self.pki, stdout=log, stderr=subprocess.STDOUT)
        try:
            self._wait_listening(10.0)
        except BaseException:
            self.__exit__()  # __exit__ does not run when __enter__ raises: never leave a server behind
            raise
        return self

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"openvpn exited: {self.log.read_text()[-2000:]}")
            text = self.log.read_text(errors="replace")
            # Point-to-point mode: ready once the socket is bound (UDP) or listening (TCP).
            if "link local (bound)" in text or "Listening for incoming TCP connection" in text:
                return
            time.sleep(0.05)
        raise RuntimeError(f"openvpn did not come up: {self.log.read_text()[-2000:]}")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)


class _Loop:
    """An asyncio loop in a thread, so relays run while the probe runs its own `asyncio.run`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(10)

    def close(self) -> None:
        async def cancel_the_rest() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(cancel_the_rest(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class UdpRelay:
    """Forwards the first `first_exchanges` client datagrams of each client port (and all server answers
    until then); later client datagrams are dropped."""

    def __init__(self, backend_port: int, first_exchanges: int = PASS_ALL) -> None:
        self.backend_port, self.first_exchanges = backend_port, first_exchanges
        self.dropped = 0
        self._loop = _Loop()
        self.port = 0
        self._front: asyncio.DatagramTransport | None = None
        self._backs: dict[tuple[str, int], Any] = {}
        self._counts: dict[tuple[str, int], int] = {}

    def __enter__(self) -> "UdpRelay":
        self._loop.run(self._start())
        return self

    async def _start(self) -> None:
        relay = self

        class Front(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                asyncio.ensure_future(relay._from_client(data, addr))

        loop = asyncio.get_running_loop()
        self._front, _ = await loop.create_datagram_endpoint(Front, local_addr=(LOOPBACK, 0))
        self.port = self._front.get_extra_info("sockname")[1]

    async def _from_client(self, data: bytes, addr: tuple[str, int]) -> None:
        count = self._counts[addr] = self._counts.get(addr, 0) + 1
        if count > self.first_exchanges:
            self.dropped += 1
            return
        if addr not in self._backs:
            front = self._front

            class Back(asyncio.DatagramProtocol):
                def datagram_received(self, answer: bytes, _: Any) -> None:
                    if front is not None and not front.is_closing():
                        front.sendto(answer, addr)

            loop = asyncio.get_running_loop()
            self._backs[addr], _ = await loop.create_datagram_endpoint(Back, remote_addr=(LOOPBACK, self.backend_port))
        self._backs[addr].sendto(data)

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            for transport in [self._front, *self._backs.values()]:
                if transport is not None:
                    transport.close()

        self._loop.run(stop())
        self._loop.close()


def looks_like_openvpn_tcp(first: bytes) -> bool:
    """A plausible packet length (6..1600, OpenGFW's bounds and a generous MTU) and a known opcode."""
    from wallwatch.protocols.openvpn import OPCODE_NAMES, split_opcode

    return len(first) >= 3 and 6 <= struct.unpack("!H", first[:2])[0] <= 1600 and split_opcode(first[2])[0] in OPCODE_NAMES


class TcpRelay:
    """Forwards each connection to the next of `backend_ports` (openvpn's point-to-point TCP server takes one
    client and then restarts, so a pool of them stands in for one multi-client server). Client bytes pass
    as they come; once the client has sent `first_exchanges` whole OpenVPN packets (16-bit length framing),
    its next bytes get `action`: "reset" (RST to the client) or "drop" (silence). A flow whose first bytes
    are not OpenVPN passes untouched, as it would through an opcode-fingerprinting censor."""

    def __init__(self, backend_ports: list[int], first_exchanges: int = PASS_ALL, action: str = "reset") -> None:
        self.backend_ports, self.first_exchanges, self.action = list(backend_ports), first_exchanges, action
        if action not in ("reset", "drop"):
            raise ValueError(f"action is reset or drop, not {action!r}")
        self.port = 0
        self.interfered = 0
        self.connections = 0
        self._loop = _Loop()
        self._server: asyncio.Server | None = None

    def __enter__(self) -> "TcpRelay":
        self._loop.run(self._start())
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._relay, LOOPBACK, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        backend = self.backend_ports[self.connections % len(self.backend_ports)]
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(LOOPBACK, backend)
        except OSError:
            writer.close()
            return
        downstream = asyncio.ensure_future(self._pipe(up_reader, writer))
        try:
            await self._upstream(reader, writer, up_writer)
            await asyncio.wait_for(downstream, 5)
        except (ConnectionError, OSError, asyncio.TimeoutError):
            pass
        finally:
            downstream.cancel()
            up_writer.close()
            writer.close()

    async def _upstream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        up_writer: asyncio.StreamWriter) -> None:
        seen, packets, openvpn = b"", 0, None
        while data := await reader.read(65536):
            if openvpn is None:
                openvpn = looks_like_openvpn_tcp(data)
            if openvpn and packets >= self.first_exchanges:
                self.interfered += 1
                if self.action == "reset":
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return
                while await reader.read(65536):
                    pass  # drop: swallow everything, forward nothing
                return
            up_writer.write(data)
            await up_writer.drain()
            seen += data
            while len(seen) >= 2 and len(seen) >= 2 + struct.unpack("!H", seen[:2])[0]:
                seen, packets = seen[2 + struct.unpack("!H", seen[:2])[0]:], packets + 1
        if up_writer.can_write_eof():
            up_writer.write_eof()

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
            sink.close()  # the server hung up: so does the relay
        except (ConnectionError, OSError):
            pass

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()
                await asyncio.wait_for(self._server.wait_closed(), 3)

        self._loop.run(stop())
        self._loop.close()
