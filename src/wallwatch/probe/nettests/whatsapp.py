"""The `whatsapp` nettest: every WhatsApp feature, measured at the protocol it uses.

OONI's ts-018 only TCP-connects to the chat endpoints and fetches two HTTPS
URLs, so it cannot see a censor that lets the connection through and kills
the chat protocol (China, 2017: text worked while media failed, then the
Noise stream itself was blocked; [SCMP2017], [NYT2017]). Here each feature speaks
its own protocol:

* text: `e1`..`e16.whatsapp.net` on 443 and 5222 (OONI's 32 targets), the real
  chat transport (WA header + Noise XX + one echoed message); when a target
  fails after connecting, a same-size non-WhatsApp control to the same
  address:port tells protocol fingerprinting from an address block;
* media: HTTPS upload and download of a photo-sized object on mmg.whatsapp.net;
* calls: a STUN Binding request (RFC 5389) to the call relays;
* web: `GET https://web.whatsapp.com/`; registration: `GET https://v.whatsapp.net/v2/register`.

HTTPS failures after the ClientHello get an SNI control (same address:port,
a different server name). All attempts run concurrently with bounded
timeouts. The OONI keys are filled exactly as probe-cli's whatsapp 0.11.0
does, so OONI tooling reads the measurement; wallwatch's own facts and
verdicts go under `x_wallwatch`.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Sequence
from urllib.parse import urlsplit

from wallwatch.probe import failures
from wallwatch.probe.failures import ProbeFailure
from wallwatch.probe.primitives import (
    Resolution,
    TcpStream,
    first_flight_control,
    http_request,
    resolve_system,
    resolve_udp,
    tcp_connect,
    tls_handshake,
    tls_sni_control,
    udp_exchange,
)
from wallwatch.probe.settings import ProbeSettings
from wallwatch.probe.trace import Trace, Transaction
from wallwatch.vocabulary import NETTEST_FEATURES

if TYPE_CHECKING:
    from wallwatch.probe.measurement import Stamp

TEST_NAME = "whatsapp"
TEST_VERSION = "0.1.0"
# The OONI test whose keys this measurement also carries (probe-cli whatsapp.go).
OONI_TEST_VERSION = "0.11.0"

FEATURES: tuple[str, ...] = tuple(map(str, NETTEST_FEATURES[TEST_NAME]))
TEXT, MEDIA, CALLS, WEB, REGISTRATION = FEATURES

# Chat session stages, in order: how far a text attempt got.
STAGES = ("dns", "connect", "header_sent", "handshake", "echo")

# AS32934 (Meta) blocks that WhatsApp's services and relays answer from
# (RIPEstat announced prefixes), plus the AWS Global Accelerator blocks the
# chat edges resolved to in OONI's own ts-018 example (3.33.x, 15.197.x).
# An answer outside these is a hint, never proof: a verdict also needs the
# flow to that address to fail.
WHATSAPP_NETWORKS = (
    "31.13.24.0/21", "31.13.64.0/18", "57.144.0.0/14", "66.220.144.0/20", "69.63.176.0/20",
    "69.171.224.0/19", "102.132.96.0/20", "129.134.0.0/16", "157.240.0.0/16", "163.70.128.0/17",
    "173.252.64.0/18", "179.60.192.0/22", "185.60.216.0/22", "204.15.20.0/22",
    "3.33.0.0/16", "15.197.0.0/16", "2a03:2880::/32",
)

# Real-world call relays: Meta address space, where WhatsApp's relays live;
# the lab maps these blocks onto its relays (the lab state file's `address_map`).
CALL_RELAYS = ("157.240.229.60", "31.13.66.51")
STUN_PORT = 3478  # RFC 5389 §18.4

# The control payload is printable ASCII: it is neither WhatsApp nor TLS, and
# fully-encrypted-traffic detectors exempt it (>50% printable, Wu et al.,
# USENIX Security 2023), so only the address:port decides its fate.
CONTROL_FILLER = b"wallwatch control, not a messaging protocol. "

PHOTO_SIZE = 200 * 1024  # a phone photo after WhatsApp's recompression: 100-300 KB


@dataclass(frozen=True)
class Timeouts:
    """Per-step bounds, in seconds. Fully blocked, a target costs at most dns + connect + 2 x chat + control."""

    dns: float = 2.0
    dns_linger: float = 0.3  # how long to wait for a racing second DNS answer
    connect: float = 3.0
    tls: float = 3.0
    chat: float = 3.0
    http: float = 6.0
    udp: float = 2.5
    control: float = 2.5

    @classmethod
    def scaled(cls, step: float) -> "Timeouts":
        """Every step bounded by `step` seconds (HTTP gets twice that: it moves 200 KB)."""
        return cls(dns=min(2.0, step), connect=step, tls=step, chat=step, http=2 * step,
                   udp=step, control=step)


def _chat_hosts() -> tuple[str, ...]:
    return tuple(f"e{i}.whatsapp.net" for i in range(1, 17))


@dataclass(frozen=True)
class WhatsAppConfig:
    """What to measure. Every target, port and bound is injectable (tests point it at loopback)."""

    chat_hosts: tuple[str, ...] = field(default_factory=_chat_hosts)
    chat_ports: tuple[int, ...] = (443, 5222)
    registration_url: str = "https://v.whatsapp.net/v2/register"
    web_url: str = "https://web.whatsapp.com/"
    media_upload_url: str = "https://mmg.whatsapp.net/upload"
    media_download_url: str = "https://mmg.whatsapp.net/d/sample.jpg"
    media_upload_size: int = PHOTO_SIZE
    https_port: int | None = None  # None: the URL's port (443)
    call_relays: tuple[str, ...] = CALL_RELAYS
    stun_port: int = STUN_PORT
    control_sni: str = "example.org"  # RFC 2606 reserved name: no censor lists it
    # Throughput against a control (probe/throughput.py): a ranged download of a
    # bulk object per HTTPS feature, STUN round trips against TCP connects for calls.
    throughput: bool = True
    media_bulk_url: str = "https://mmg.whatsapp.net/d/video.mp4"
    web_bulk_url: str = "https://web.whatsapp.com/app.js"
    throughput_rounds: int = 3
    relay_control_port: int = 443  # TCP port timed as the calls' latency control
    dns_control_name: str = "example.com"
    expected_networks: tuple[str, ...] = WHATSAPP_NETWORKS
    max_addresses: int = 2  # addresses tried per target, as a dialer falls back
    timeouts: Timeouts = field(default_factory=Timeouts)


@dataclass
class _Attempt:
    """Mutable facts of one HTTPS attempt while it runs."""

    feature: str
    url: str
    ip: str | None = None  # the address the attempt connected to
    failure: str | None = None
    failed_at: str | None = None
    status: int | None = None
    body_length: int | None = None


class WhatsAppTest:
    def __init__(self, config: WhatsAppConfig, settings: ProbeSettings, trace: Trace | None = None) -> None:
        self.config, self.settings = config, settings
        self.trace = trace or Trace()
        self.chat_sessions: list[dict[str, Any]] = []
        self.fetches: list[dict[str, Any]] = []
        self._lookups: dict[str, asyncio.Future[Any]] = {}
        self.probe_addresses: set[str] = set()  # the probe's own IPs seen on the wire (scrubbed unless published)
        self.throughput: list[dict[str, Any]] = []

    async def run(self, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Measure every feature concurrently; returns the `test_keys`."""
        say = progress or (lambda message: None)
        jobs: list[Awaitable[Any]] = [self._dns_control()]
        jobs += [self._chat_target(host, port) for host in self.config.chat_hosts for port in self.config.chat_ports]
        jobs += [self._media_upload(), self._https(MEDIA, self.config.media_download_url)]
        jobs += [self._https(WEB, self.config.web_url), self._https(REGISTRATION, self.config.registration_url)]
        jobs += [self._stun(relay) for relay in self.config.call_relays]
        say(f"measuring {len(jobs)} targets")
        await asyncio.gather(*jobs)
        if self.config.throughput:
            # After the reachability attempts, one feature at a time: a throttle's rate is
            # shared by every flow its rule catches, so concurrent transfers would split it.
            say("measuring throughput against controls")
            await self._throughput()
        say("deriving verdicts")
        return self._test_keys()

    # --- shared steps ------------------------------------------------------------

    async def _resolve(self, tx: Transaction, host: str) -> Resolution:
        t = self.config.timeouts
        if self.settings.resolver is None:
            # The stub resolver may wait 5 s per try (resolv.conf(5) "timeout"), so give it that.
            return await resolve_system(tx, host, timeout=max(t.dns, 5.0), shared=self._lookups)
        return await resolve_udp(tx, host, self.settings.resolver, timeout=t.dns, linger=t.dns_linger)

    async def _connect_any(self, tx: Transaction, addresses: Sequence[str], port: int) -> TcpStream:
        """Dial the resolved addresses in order, as a dialer does; the last failure wins."""
        failure = failures.unknown_failure("no address to dial")
        for address in addresses[: self.config.max_addresses]:
            try:
                dial = self.settings.map_address(address)
            except (KeyError, ValueError):
                # Not dialled: in the lab, an unmapped real-world address would leave the lab.
                failure = failures.unknown_failure(f"no lab address for {address}; not dialled")
                continue
            try:
                return await tcp_connect(tx, dial, port, timeout=self.config.timeouts.connect)
            except ProbeFailure as exc:
                failure = exc.failure
        raise ProbeFailure(failure)

    async def _dns_control(self) -> None:
        """A name the censor has no reason to touch: any answer (NXDOMAIN too) proves the resolver works."""
        tx = self.trace.transaction("control:dns", f"endpoint:{self.config.dns_control_name}:53")
        await self._resolve(tx, self.config.dns_control_name)

    # --- text ----------------------------------------------------------------------

    async def _chat_target(self, host: str, port: int) -> None:
        tx = self.trace.transaction(f"feature:{TEXT}", f"endpoint:{host}:{port}")
        session: dict[str, Any] = {"host": host, "port": port, "transaction_id": tx.id, "address": None,
                                   "stage_reached": None, "failed_at": None, "failure": None,
                                   "t0": tx.now(), "timings": {}, "first_flight_size": None, "control": None}
        self.chat_sessions.append(session)

        def reached(stage: str) -> None:
            session["stage_reached"] = stage
            session["timings"][stage] = tx.now()

        resolution = await self._resolve(tx, host)
        if resolution.failure:
            session.update(failed_at="dns", failure=resolution.failure)
            return
        reached("dns")
        try:
            stream = await self._connect_any(tx, resolution.addresses, port)
        except ProbeFailure as exc:
            session.update(failed_at="connect", failure=exc.failure)
            return
        reached("connect")
        session["address"] = stream.address
        try:
            await self._chat(stream, session, reached)
        finally:
            await stream.close()
        if session["failure"] is not None:
            control = await self._payload_control(tx, stream, session["first_flight_size"])
            session["control"] = {"outcome": control.outcome, "failure": control.failure}

    async def _chat(self, stream: TcpStream, session: dict[str, Any], reached: Callable[[str], None]) -> None:
        from wallwatch.protocols.errors import ProtocolError
        from wallwatch.protocols.whatsapp import ChatClient, HandshakeComplete, MessageReceived

        timeout = self.config.timeouts.chat
        client = ChatClient()
        client.initiate()
        first_flight = client.data_to_send()
        session["first_flight_size"] = len(first_flight)
        token = b"wallwatch echo " + os.urandom(8).hex().encode()
        next_stage = "header_sent"
        try:
            await stream.write(first_flight, timeout=timeout)
            reached("header_sent")
            next_stage = "handshake"
            while True:
                data = await stream.read(timeout=timeout)
                if not data:
                    raise ProbeFailure(failures.EOF_ERROR)
                for event in client.receive_data(data):
                    if isinstance(event, HandshakeComplete):
                        reached("handshake")
                        next_stage = "echo"
                        client.send_message(token)
                    elif isinstance(event, MessageReceived):
                        if event.plaintext != token:
                            raise ProbeFailure(failures.unknown_failure("echo does not match the message sent"))
                        reached("echo")
                        return
                outgoing = client.data_to_send()
                if outgoing:
                    await stream.write(outgoing, timeout=timeout)
        except ProbeFailure as exc:
            session.update(failed_at=next_stage, failure=exc.failure)
        except ProtocolError as exc:
            session.update(failed_at=next_stage, failure=failures.unknown_failure(f"not WhatsApp: {exc}"))

    async def _payload_control(self, tx: Transaction, stream: TcpStream, size: int | None) -> Any:
        size = size or len(CONTROL_FILLER)
        payload = (CONTROL_FILLER * (size // len(CONTROL_FILLER) + 1))[:size]
        return await first_flight_control(tx.tagged("control:payload"), stream.ip, stream.port, payload,
                                          kind="payload", timeout=self.config.timeouts.control)

    # --- HTTPS features ------------------------------------------------------------

    def _port_for(self, url: str) -> int:
        return self.config.https_port or urlsplit(url).port or 443

    async def _media_upload(self) -> None:
        photo = b"\xff\xd8" + os.urandom(self.config.media_upload_size - 4) + b"\xff\xd9"  # JPEG SOI ... EOI
        await self._https(MEDIA, self.config.media_upload_url, method="POST", body=photo,
                          headers=(("Content-Type", "image/jpeg"),))

    async def _https(self, feature: str, url: str, *, method: str = "GET", body: bytes = b"",
                     headers: Sequence[tuple[str, str]] = ()) -> None:
        host = urlsplit(url).hostname or ""
        port = self._port_for(url)
        tx = self.trace.transaction(f"feature:{feature}", f"endpoint:{host}:{port}")
        attempt = _Attempt(feature, url)
        record: dict[str, Any] = {"feature": feature, "url": url, "method": method, "transaction_id": tx.id}
        self.fetches.append(record)
        try:
            await self._fetch(tx, attempt, host, port, method, body, headers)
        except ProbeFailure as exc:
            attempt.failure = exc.failure
        record.update(failure=attempt.failure, failed_at=attempt.failed_at,
                      status=attempt.status, body_length=attempt.body_length, address=attempt.ip)

    async def _fetch(self, tx: Transaction, attempt: _Attempt, host: str, port: int, method: str,
                     body: bytes, headers: Sequence[tuple[str, str]]) -> None:
        t = self.config.timeouts
        attempt.failed_at = "dns"
        resolution = await self._resolve(tx, host)
        if resolution.failure:
            raise ProbeFailure(resolution.failure)
        attempt.failed_at = "connect"
        stream = await self._connect_any(tx, resolution.addresses, port)
        attempt.ip = stream.ip
        try:
            attempt.failed_at = "tls"
            try:
                tls = await tls_handshake(stream, host, self.settings.tls_context(("http/1.1",)),
                                          alpn=("http/1.1",), timeout=t.tls)
            except ProbeFailure as exc:
                if exc.failure in (failures.CONNECTION_RESET, failures.GENERIC_TIMEOUT, failures.EOF_ERROR):
                    await tls_sni_control(tx.tagged("control:tls_sni"), stream.ip, stream.port,
                                          self.config.control_sni, timeout=t.control)
                raise
            attempt.failed_at = "http"
            response = await http_request(tls, attempt.url, method=method, body=body, headers=headers,
                                          timeout=t.http)
            attempt.failed_at = None
            attempt.status, attempt.body_length = response.status, len(response.body)
        finally:
            # Given up half-way (a transfer timed out behind a throttle): reset, so its
            # unsent bytes do not go on queueing in front of the flows that follow.
            await (stream.close() if attempt.failed_at is None else stream.abort())

    # --- calls ---------------------------------------------------------------------

    async def _stun(self, relay: str) -> None:
        from wallwatch.protocols.errors import ProtocolError
        from wallwatch.protocols.stun import build_binding_request, parse_stun

        port = self.config.stun_port
        tx = self.trace.transaction(f"feature:{CALLS}", f"endpoint:{relay}:{port}")
        transaction_id = os.urandom(12)

        def is_answer(data: bytes) -> bool:
            try:
                message = parse_stun(data)
            except ProtocolError:
                return False
            return message.transaction_id == transaction_id and message.stun_class in ("success", "error")

        try:
            dial = self.settings.map_address(relay)
        except (KeyError, ValueError):
            entry = {"kind": "stun", "address": f"{relay}:{port}", "proto": "udp", "sends": 0,
                     "failure": failures.unknown_failure(f"no lab address for {relay}; not dialled")}
            entry.update(tx.stamp(tx.now()))
            self.trace.udp_exchanges.append(entry)
            return
        result = await udp_exchange(tx, dial, port, build_binding_request(transaction_id), is_response=is_answer,
                                    timeout=self.config.timeouts.udp, kind="stun", record_raw=False)
        if result.response is not None:
            mapped = parse_stun(result.response).mapped_address
            if mapped is not None:
                # The probe's own address as the relay saw it: kept only for scrubbing.
                self.probe_addresses.add(mapped[0])

    # --- throughput -----------------------------------------------------------------

    async def _throughput(self) -> None:
        from wallwatch.probe.throughput import HttpsTarget, RoundLimits, https_rounds, udp_rounds
        from wallwatch.probe.verdicts import throughput_settled

        t = self.config.timeouts
        limits = RoundLimits(connect=t.connect, tls=t.tls, request=t.tls, transfer=t.http)
        for feature, bulk_url in ((MEDIA, self.config.media_bulk_url), (WEB, self.config.web_bulk_url)):
            # Only where the feature's own attempt got through TLS: a blocked feature is not slow.
            reached = next((f for f in self.fetches if f["feature"] == feature and f.get("address")
                            and f.get("failed_at") in (None, "http")), None)
            if reached is None:
                continue
            parts = urlsplit(bulk_url)
            target = HttpsTarget(feature, parts.hostname or "", parts.path or "/", reached["address"],
                                 self._port_for(bulk_url), self.config.control_sni)
            self.throughput.append(await https_rounds(
                self.trace, target, target_context=self.settings.tls_context(("http/1.1",)),
                control_context=self.settings.control_tls_context(("http/1.1",)),
                rounds=self.config.throughput_rounds, limits=limits, stop_early=throughput_settled))
        answered = next((e for e in self.trace.udp_exchanges if e.get("kind") == "stun" and e.get("failure") is None),
                        None)
        if answered is not None:
            ip, _, port = answered["address"].rpartition(":")
            self.throughput.append(await udp_rounds(
                self.trace, CALLS, ip.strip("[]"), int(port), control_port=self.config.relay_control_port,
                make_request=_stun_request, rounds=self.config.throughput_rounds, timeout=t.udp,
                stop_early=throughput_settled))

    # --- results -------------------------------------------------------------------

    def _test_keys(self) -> dict[str, Any]:
        from wallwatch.probe.verdicts import RULES_VERSION, derive_whatsapp_features

        test_keys: dict[str, Any] = {"agent": "redirect", "failed_operation": None, "failure": None}
        test_keys.update(self.trace.event_arrays())
        test_keys.update(ooni_whatsapp_keys(self.chat_sessions, self.trace, self.fetches))
        lab = self.settings.lab
        test_keys["x_wallwatch"] = {
            "rules_version": RULES_VERSION,
            "features": {},
            "chat_sessions": self.chat_sessions,
            "fetches": self.fetches,
            "udp_exchanges": self.trace.udp_exchanges,
            "controls": self.trace.controls,
            "throughput": self.throughput,
            "expected_networks": list(self.config.expected_networks),
            "lab": {"run_id": lab.run_id, "resolver": lab.resolver} if lab else None,
        }
        test_keys["x_wallwatch"]["features"] = derive_whatsapp_features(test_keys)
        return test_keys


def _stun_request() -> tuple[bytes, Callable[[bytes], bool]]:
    """A fresh Binding request and the test for its answer (RFC 5389 §7.3: the transaction id matches)."""
    from wallwatch.protocols.errors import ProtocolError
    from wallwatch.protocols.stun import build_binding_request, parse_stun

    transaction_id = os.urandom(12)

    def is_answer(data: bytes) -> bool:
        try:
            message = parse_stun(data)
        except ProtocolError:
            return False
        return message.transaction_id == transaction_id and message.stun_class in ("success", "error")

    return build_binding_request(transaction_id), is_answer


def ooni_whatsapp_keys(chat_sessions: Sequence[dict[str, Any]], trace: Trace,
                       fetches: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """OONI's own keys, with probe-cli whatsapp 0.11.0 semantics.

    An endpoint counts as reachable when its TCP connect succeeded (OONI does
    nothing more); a host is listed blocked when both its ports failed; the
    registration and web checks are blocked on any failure, whatever the
    HTTP status; the DNS-inconsistency list is always empty (ooni/probe-engine#341).
    """
    failed_by_host: dict[str, int] = {}
    endpoints_ok = False
    for session in chat_sessions:
        if session["stage_reached"] in ("connect", "header_sent", "handshake", "echo"):
            endpoints_ok = True
        else:
            failed_by_host[session["host"]] = failed_by_host.get(session["host"], 0) + 1
    blocked_hosts = [host for host, count in failed_by_host.items() if count >= 2]

    def url_failure(feature: str) -> str | None:
        matching = [f for f in fetches if f["feature"] == feature]
        if not matching:
            return failures.UNKNOWN_FAILURE
        return matching[0].get("failure")

    registration = url_failure(REGISTRATION)
    web = url_failure(WEB)
    return {
        "registration_server_failure": registration,
        "registration_server_status": "ok" if registration is None else "blocked",
        "whatsapp_endpoints_blocked": blocked_hosts,
        "whatsapp_endpoints_dns_inconsistent": [],
        "whatsapp_endpoints_status": "ok" if endpoints_ok else "blocked",
        "whatsapp_web_failure": web,
        "whatsapp_web_status": "ok" if web is None else "blocked",
    }


async def run_whatsapp(config: WhatsAppConfig, settings: ProbeSettings, *,
                       trace: Trace | None = None,
                       progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the nettest; returns `test_keys` (wrap with `probe.measurement.build_measurement`)."""
    return await WhatsAppTest(config, settings, trace).run(progress)


def config_with_timeout(config: WhatsAppConfig, step: float | None) -> WhatsAppConfig:
    return config if step is None else replace(config, timeouts=Timeouts.scaled(step))


def default_config(settings: ProbeSettings, *, step_timeout: float | None = None) -> WhatsAppConfig:
    """The real-world targets; in the lab, the lab's service addresses also count as the service's own."""
    config = WhatsAppConfig()
    if settings.lab is not None:
        lab_networks = tuple(f"{address}/32" for address in settings.lab.service_addresses())
        config = replace(config, expected_networks=config.expected_networks + lab_networks)
    return config_with_timeout(config, step_timeout)


def measure_whatsapp(
    config: WhatsAppConfig,
    settings: ProbeSettings,
    *,
    probe_asn: str = "AS0",
    probe_cc: str = "ZZ",
    publish_ip: bool = False,
    progress: Callable[[str], None] | None = None,
    stamp: "Stamp | None" = None,
) -> dict[str, Any]:
    """Run the nettest and wrap it in the OONI envelope: one complete measurement.

    `stamp` (probe.measurement.Stamp) carries every envelope option; without
    it, `probe_asn`/`probe_cc`/`publish_ip` are used as given.
    """
    import datetime as dt
    import time

    from wallwatch.probe.measurement import Stamp, finish_measurement

    stamp = stamp or Stamp(probe_asn=probe_asn, probe_cc=probe_cc, publish_ip=publish_ip)
    started_at = dt.datetime.now(dt.timezone.utc)
    clock_start = time.monotonic()
    test = WhatsAppTest(config, settings)
    test_keys = asyncio.run(test.run(progress))
    return finish_measurement(test_keys, test_name=TEST_NAME, test_version=TEST_VERSION, started_at=started_at,
                              runtime=time.monotonic() - clock_start, stamp=stamp,
                              resolver_ip=settings.resolver_ip(), probe_addresses=test.probe_addresses)


def run_once(settings: ProbeSettings, stamp: "Stamp", *, step_timeout: float | None = None,
             targets: Sequence[str] = (), progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The registry's entry point (the targets are fixed: the registry refuses any)."""
    return measure_whatsapp(default_config(settings, step_timeout=step_timeout), settings, stamp=stamp,
                            progress=progress)
