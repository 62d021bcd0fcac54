"""The `openvpn` nettest: does an OpenVPN handshake get past the censor, over UDP and TCP?

Targets are OONI ts-040 style input URIs,
`openvpn://<provider>/?address=<ip>:<port>&transport=udp|tcp`. For each one the
probe speaks the first two steps of OpenVPN's control channel itself
(`wallwatch.protocols.openvpn`, no openvpn binary, no credentials):

1. P_CONTROL_HARD_RESET_CLIENT_V2 with a fresh session id; expect
   P_CONTROL_HARD_RESET_SERVER_V2 acknowledging that session id;
2. P_CONTROL_V1 (acking the server's reset) carrying a TLS ClientHello
   (`protocols.tls.build_client_hello`, no SNI, as openvpn sends it); expect
   the server's P_CONTROL_V1 carrying its TLS ServerHello.

Step 2 is what catches a censor that decides only once it has seen *both*
resets, as OpenGFW's OpenVPN analyzer does (`analyzer/udp/openvpn.go`; Xue et
al., USENIX Security 2022, §4): the address answered a moment ago, so a
stall right after the server's reset is the fingerprint at work, not a dead
server. Over TCP, a failure after connecting gets a same-size printable
control to the same address:port (as the whatsapp nettest does), to tell a
protocol fingerprint from an address block.

Servers with `tls-auth`/`tls-crypt` drop unauthenticated resets silently
(OpenVPN's `--tls-auth` man page: "drop packets with invalid HMAC"), so
targets must be servers without them; such a server would read as silent.

The measurement carries OONI's openvpn keys (`success`, `failure`,
`network_events`, `tcp_connect`, `openvpn_handshake`) and, under
`x_wallwatch`, `openvpn_handshakes` (the stage reached per target) and the
`tunnel` feature verdict (`probe.verdicts.derive_openvpn_features`).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Sequence
from urllib.parse import parse_qs, urlsplit

from wallwatch.probe import failures
from wallwatch.probe.failures import ProbeFailure
from wallwatch.probe.primitives import (
    first_flight_control,
    open_udp_flow,
    resolve_udp,
    retransmit_schedule,
    tcp_connect,
)
from wallwatch.probe.nettests import TargetError
from wallwatch.probe.settings import ProbeSettings
from wallwatch.probe.trace import Trace, Transaction

if TYPE_CHECKING:
    from wallwatch.probe.measurement import Stamp
    from wallwatch.protocols.openvpn import OpenVpnPacket

TEST_NAME = "openvpn"
TEST_VERSION = "0.1.0"
TUNNEL = "tunnel"
TRANSPORTS = ("udp", "tcp")
# How far a handshake got, in order. `server_tls` = the server answered our
# ClientHello inside P_CONTROL_V1 (a ServerHello, or an alert).
STAGES = ("connect", "client_reset_sent", "server_reset", "client_hello_sent", "server_tls")
OPENVPN_PORT = 1194  # IANA "openvpn"
# OpenVPN's reliable layer resends unacknowledged control packets after
# --tls-timeout (default 2 s), doubling (reliable.c); shorter bounds keep at
# least two resends inside the step's timeout.
OPENVPN_FIRST_RTO = 2.0
# Printable, so fully-encrypted-traffic rules exempt it (Wu et al. 2023, >50%
# printable) and it is no OpenVPN packet: its big-endian length prefix
# ("wa" = 30561) is over any OpenVPN packet size, so a server drops it.
CONTROL_FILLER = b"wallwatch control, not a VPN protocol. "


@dataclass(frozen=True)
class OpenVpnTarget:
    provider: str
    ip: str
    port: int
    transport: str

    @property
    def uri(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"openvpn://{self.provider}/?address={host}:{self.port}&transport={self.transport}"

    @property
    def endpoint(self) -> str:
        """OONI's endpoint spelling (probe-cli openvpn experiment): openvpn://ip:port/transport."""
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"openvpn://{host}:{self.port}/{self.transport}"

    @classmethod
    def parse(cls, uri: str) -> "OpenVpnTarget":
        import ipaddress

        parts = urlsplit(uri)
        if parts.scheme != "openvpn" or not parts.netloc:
            raise TargetError(f"{uri!r}: expected openvpn://<provider>/?address=<ip>:<port>&transport=udp|tcp")
        query = parse_qs(parts.query)
        address = (query.get("address") or [""])[0]
        transport = (query.get("transport") or ["udp"])[0].lower()
        if transport not in TRANSPORTS:
            raise TargetError(f"{uri!r}: transport must be udp or tcp, not {transport!r}")
        host, sep, port_text = address.rpartition(":")
        if not sep:
            host, port_text = address, str(OPENVPN_PORT)
        host = host.strip("[]")
        try:
            ip = str(ipaddress.ip_address(host))
            port = int(port_text)
        except ValueError:
            raise TargetError(f"{uri!r}: address must be <ip>:<port> (an IP address: the probe resolves nothing "
                              f"here), not {address!r}") from None
        if not 0 < port < 65536:
            raise TargetError(f"{uri!r}: port {port} out of range")
        return cls(parts.netloc, ip, port, transport)


@dataclass(frozen=True)
class Timeouts:
    """Per-step bounds, in seconds. A fully silent target costs connect + reset (+ control over TCP)."""

    connect: float = 3.0
    reset: float = 4.0  # waiting for the server's reset, resends included
    hello: float = 4.0  # waiting for the server's TLS answer, resends included
    control: float = 2.5
    dns: float = 2.0

    @classmethod
    def scaled(cls, step: float) -> "Timeouts":
        return cls(connect=step, reset=step, hello=step, control=step, dns=min(2.0, step))


@dataclass(frozen=True)
class OpenVpnConfig:
    targets: tuple[OpenVpnTarget, ...]
    # Any answer for a name no censor touches shows the resolver works over
    # UDP: evidence that "nothing reaches this address" is the address's
    # problem. Asked only of a configured resolver (lab mode, tests): with
    # IP-address targets the probe otherwise resolves nothing, and stays so.
    dns_control_name: str | None = "example.com"
    timeouts: Timeouts = field(default_factory=Timeouts)


# --- the handshake, sans-IO --------------------------------------------------------


@dataclass
class HandshakeState:
    """The client side of the first two control-channel steps: bytes out, packets in, stage."""

    tcp: bool
    session_id: bytes = field(default_factory=lambda: os.urandom(8))
    stage: str | None = None
    server_session_id: bytes | None = None
    server_reset_packet_id: int = 0
    server_tls: str | None = None  # server_hello | alert | other
    opcodes_received: list[str] = field(default_factory=list)
    foreign_packets: int = 0  # OpenVPN packets not for our session
    _buffer: bytearray = field(default_factory=bytearray)

    def client_reset(self) -> bytes:
        from wallwatch.protocols.openvpn import build_client_hard_reset_v2

        return build_client_hard_reset_v2(self.session_id, tcp=self.tcp)

    def client_hello(self) -> bytes:
        from wallwatch.protocols.openvpn import P_CONTROL_V1, build_control
        from wallwatch.protocols.tls import build_client_hello

        assert self.server_session_id is not None
        return build_control(P_CONTROL_V1, self.session_id, acks=(self.server_reset_packet_id,),
                             remote_session_id=self.server_session_id, packet_id=1,
                             payload=build_client_hello(None), tcp=self.tcp)

    def receive(self, data: bytes) -> list["OpenVpnPacket"]:
        """Packets in `data` (one datagram, or any slice of the TCP stream); ProtocolError if not OpenVPN."""
        from wallwatch.protocols.errors import Incomplete
        from wallwatch.protocols.openvpn import parse_packet, parse_tcp_packet

        if not self.tcp:
            packets = [parse_packet(data)]
        else:
            self._buffer += data
            packets = []
            while not isinstance(result := parse_tcp_packet(bytes(self._buffer)), Incomplete):
                packet, used = result
                del self._buffer[:used]
                packets.append(packet)
        for packet in packets:
            self.opcodes_received.append(packet.opcode_name)
            self._advance(packet)
        return packets

    def _advance(self, packet: "OpenVpnPacket") -> None:
        from wallwatch.protocols.openvpn import P_CONTROL_V1, SERVER_RESETS

        if packet.opcode in SERVER_RESETS and packet.remote_session_id == self.session_id:
            if self.server_session_id is None:
                self.server_session_id = packet.session_id
                self.server_reset_packet_id = packet.packet_id or 0
            return
        if packet.session_id != self.server_session_id or self.server_session_id is None:
            self.foreign_packets += 1
            return
        if packet.opcode == P_CONTROL_V1 and packet.payload[:1] in (b"\x16", b"\x15") and self.server_tls is None:
            # A TLS record: 0x16 handshake (byte 5 = 2 is ServerHello, RFC 8446 §4), 0x15 alert.
            handshake_type = packet.payload[5:6]
            self.server_tls = ("server_hello" if packet.payload[:1] == b"\x16" and handshake_type == b"\x02"
                               else "alert" if packet.payload[:1] == b"\x15" else "other")

    @property
    def has_server_reset(self) -> bool:
        return self.server_session_id is not None


# --- running it ----------------------------------------------------------------------


class _Channel:
    """The same read/write surface over a UDP flow or a TCP stream."""

    def __init__(self, flow: Any, tcp: bool) -> None:
        self.flow, self.tcp = flow, tcp

    async def write(self, data: bytes, timeout: float) -> None:
        if self.tcp:
            await self.flow.write(data, timeout=timeout)
        else:
            self.flow.write(data)

    async def read(self, timeout: float) -> bytes:
        data = await self.flow.read(timeout=timeout)
        if self.tcp and not data:
            raise ProbeFailure(failures.EOF_ERROR)
        return data


async def _exchange(channel: _Channel, state: HandshakeState, flight: bytes, done: Callable[[], bool],
                    timeout: float, on_send: Callable[[], None]) -> None:
    """Send `flight` (resending it over UDP, as OpenVPN's reliable layer does) until `done()` or the deadline."""
    from wallwatch.protocols.errors import ProtocolError

    loop = asyncio.get_running_loop()
    start = loop.time()
    offsets = retransmit_schedule(timeout, min(OPENVPN_FIRST_RTO, timeout / 3)) if not channel.tcp else [0.0]
    sent = 0
    while not done():
        now = loop.time() - start
        if now >= timeout:
            raise ProbeFailure(failures.GENERIC_TIMEOUT)
        if sent < len(offsets) and now >= offsets[sent]:
            await channel.write(flight, timeout)
            on_send()
            sent += 1
        next_event = offsets[sent] if sent < len(offsets) else timeout
        try:
            data = await channel.read(max(0.01, min(next_event, timeout) - (loop.time() - start)))
        except ProbeFailure as exc:
            if exc.failure == failures.GENERIC_TIMEOUT:
                continue
            raise
        try:
            state.receive(data)
        except ProtocolError as exc:
            if channel.tcp:
                # A TCP stream that stops being OpenVPN cannot be resynchronised.
                raise ProbeFailure(failures.unknown_failure(f"not OpenVPN: {exc}")) from None
            state.foreign_packets += 1  # a stray datagram on our port is not an answer


class OpenVpnTest:
    def __init__(self, config: OpenVpnConfig, settings: ProbeSettings, trace: Trace | None = None) -> None:
        self.config, self.settings = config, settings
        self.trace = trace or Trace()
        self.handshakes: list[dict[str, Any]] = []

    async def run(self, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
        say = progress or (lambda message: None)
        jobs = [self._handshake(target) for target in self.config.targets]
        if self.config.dns_control_name and self.settings.resolver is not None:
            jobs.append(self._dns_control(self.config.dns_control_name))
        say(f"measuring {len(self.config.targets)} targets")
        await asyncio.gather(*jobs)
        say("deriving verdicts")
        return self._test_keys()

    async def _dns_control(self, name: str) -> None:
        assert self.settings.resolver is not None
        tx = self.trace.transaction("control:dns", f"endpoint:{name}:53")
        await resolve_udp(tx, name, self.settings.resolver, timeout=self.config.timeouts.dns, linger=0.0)

    async def _handshake(self, target: OpenVpnTarget) -> None:
        tx = self.trace.transaction(f"feature:{TUNNEL}", f"endpoint:{target.ip}:{target.port}",
                                    f"transport:{target.transport}")
        state = HandshakeState(tcp=target.transport == "tcp")
        record: dict[str, Any] = {
            "provider": target.provider, "uri": target.uri, "endpoint": target.endpoint,
            "address": f"{target.ip}:{target.port}", "transport": target.transport, "transaction_id": tx.id,
            "t0": tx.now(), "t": None, "client_session_id": state.session_id.hex(), "stage_reached": None,
            "failed_at": None, "failure": None, "server_tls": None, "packets_sent": 0, "packets_received": 0,
            "opcodes_received": [], "timings": {}, "control": None,
        }
        self.handshakes.append(record)

        def reached(stage: str) -> None:
            record["stage_reached"] = stage
            record["timings"][stage] = tx.now()

        def sent(stage: str) -> Callable[[], None]:
            def on_send() -> None:
                record["packets_sent"] += 1
                if record["stage_reached"] != stage:
                    reached(stage)
            return on_send

        awaiting, flight, dial = "connect", b"", target.ip
        flow: Any = None
        try:
            try:
                dial = self.settings.map_address(target.ip)
            except (KeyError, ValueError):
                raise ProbeFailure(failures.unknown_failure(f"no lab address for {target.ip}; not dialled")) from None
            if state.tcp:
                flow = await tcp_connect(tx, dial, target.port, timeout=self.config.timeouts.connect)
                reached("connect")
            else:
                flow = await open_udp_flow(tx, dial, target.port)
            channel = _Channel(flow, state.tcp)
            awaiting, flight = "server_reset", state.client_reset()
            await _exchange(channel, state, flight, lambda: state.has_server_reset, self.config.timeouts.reset,
                            sent("client_reset_sent"))
            reached("server_reset")
            awaiting, flight = "server_tls", state.client_hello()
            await _exchange(channel, state, flight, lambda: state.server_tls is not None,
                            self.config.timeouts.hello, sent("client_hello_sent"))
            reached("server_tls")
        except ProbeFailure as exc:
            record.update(failed_at=awaiting, failure=exc.failure)
        finally:
            if flow is not None:
                closing = flow.close()
                if asyncio.iscoroutine(closing):
                    await closing
        record.update(t=tx.now(), server_tls=state.server_tls, opcodes_received=list(state.opcodes_received),
                      packets_received=len(state.opcodes_received), server_session_acked=state.has_server_reset,
                      foreign_packets=state.foreign_packets)
        if state.tcp and record["failure"] is not None and record["stage_reached"] is not None:
            # Same address:port, same size, not OpenVPN: does the path react to the bytes or to the address?
            control = await self._payload_control(tx, dial, target.port, len(flight))
            record["control"] = {"outcome": control.outcome, "failure": control.failure}

    async def _payload_control(self, tx: Transaction, ip: str, port: int, size: int) -> Any:
        size = max(size, len(CONTROL_FILLER))
        payload = (CONTROL_FILLER * (size // len(CONTROL_FILLER) + 1))[:size]
        return await first_flight_control(tx.tagged("control:payload"), ip, port, payload, kind="payload",
                                          timeout=self.config.timeouts.control)

    def _test_keys(self) -> dict[str, Any]:
        from wallwatch.probe.verdicts import OPENVPN_RULES_VERSION, derive_openvpn_features

        arrays = self.trace.event_arrays()
        first_failure = next((h["failure"] for h in self.handshakes if h["failure"] is not None), None)
        lab = self.settings.lab
        test_keys: dict[str, Any] = {
            "success": bool(self.handshakes) and all(h["failure"] is None for h in self.handshakes),
            "failure": first_failure,
            "queries": arrays["queries"],
            "network_events": arrays["network_events"],
            "tcp_connect": arrays["tcp_connect"],
            "openvpn_handshake": [_ooni_handshake(h) for h in self.handshakes],
        }
        test_keys["x_wallwatch"] = {
            "rules_version": OPENVPN_RULES_VERSION,
            "features": {},
            "openvpn_handshakes": self.handshakes,
            "controls": self.trace.controls,
            "lab": {"run_id": lab.run_id, "resolver": lab.resolver} if lab else None,
        }
        test_keys["x_wallwatch"]["features"] = derive_openvpn_features(test_keys)
        return test_keys


def _ooni_handshake(record: dict[str, Any]) -> dict[str, Any]:
    """probe-cli's openvpn experiment shape for one handshake (status + endpoint), as far as it applies."""
    return {"endpoint": record["endpoint"], "ip": record["address"].rsplit(":", 1)[0],
            "port": int(record["address"].rsplit(":", 1)[1]), "transport": record["transport"],
            "provider": record["provider"], "status": {"success": record["failure"] is None,
                                                       "failure": record["failure"]},
            "t0": record["t0"], "t": record["t"], "transaction_id": record["transaction_id"]}


# --- configuration and the measurement ---------------------------------------------------


def lab_targets(settings: ProbeSettings) -> tuple[OpenVpnTarget, ...]:
    """The lab's OpenVPN server from the lab state file (`vpn_servers.openvpn`), one target per transport."""
    if settings.lab is None:
        return ()
    server = settings.lab.vpn_servers.get("openvpn")
    if not server:
        return ()
    transports = tuple(t for t in (server.get("transports") or TRANSPORTS) if t in TRANSPORTS)
    return tuple(OpenVpnTarget("lab-openvpn", str(server["address"]), int(server.get("port") or OPENVPN_PORT), t)
                 for t in transports)


def make_config(targets: tuple[OpenVpnTarget, ...], *, step_timeout: float | None = None,
                dns_control_name: str | None = "example.com") -> OpenVpnConfig:
    config = OpenVpnConfig(targets=targets, dns_control_name=dns_control_name)
    return config if step_timeout is None else replace(config, timeouts=Timeouts.scaled(step_timeout))


async def run_openvpn(config: OpenVpnConfig, settings: ProbeSettings, *, trace: Trace | None = None,
                      progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the nettest; returns `test_keys`."""
    return await OpenVpnTest(config, settings, trace).run(progress)


def measure_openvpn(config: OpenVpnConfig, settings: ProbeSettings, *, stamp: "Stamp | None" = None,
                    progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the nettest and wrap it in the OONI envelope (`input` is the URI when there is one target)."""
    import datetime as dt
    import time

    from wallwatch.probe.measurement import Stamp, finish_measurement

    started_at = dt.datetime.now(dt.timezone.utc)
    clock_start = time.monotonic()
    test_keys = asyncio.run(run_openvpn(config, settings, progress=progress))
    single = config.targets[0].uri if len(config.targets) == 1 else None
    return finish_measurement(test_keys, test_name=TEST_NAME, test_version=TEST_VERSION, started_at=started_at,
                              runtime=time.monotonic() - clock_start, stamp=stamp or Stamp(),
                              resolver_ip=settings.resolver_ip(), probe_addresses=set(), input=single)


def run_once(settings: ProbeSettings, stamp: "Stamp", *, step_timeout: float | None = None,
             targets: Sequence[str] = (), progress: Callable[[str], None] | None = None,
             options: dict[str, str] | None = None) -> dict[str, Any]:
    """The registry's entry point: `targets` as URIs, else the lab's server (TargetError if there is none)."""
    parsed = tuple(OpenVpnTarget.parse(uri) for uri in targets) or lab_targets(settings)
    if not parsed:
        where = ("the lab state file names no OpenVPN server (vpn_servers.openvpn)" if settings.lab
                 else "outside the lab there is no default target")
        raise TargetError(f"{where}; pass --target openvpn://NAME/?address=IP:PORT&transport=udp|tcp")
    return measure_openvpn(make_config(parsed, step_timeout=step_timeout), settings, stamp=stamp, progress=progress)
