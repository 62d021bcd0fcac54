"""What every messaging nettest shares: the steps of one feature's attempts, each with its control.

A messaging service is a handful of endpoints, each reached by one of four
kinds of attempt, and every nettest here composes the same four:

* `https(feature, url)`: resolve, connect, TLS, one HTTP request; a TLS
  failure after the ClientHello gets an SNI control (same address:port, a
  neutral server name);
* `session(feature, host, port, dialog)`: resolve (or dial an address, as
  Telegram's data centres are dialled), connect, optionally TLS, then the
  app's own protocol `dialog` (WhatsApp's Noise handshake, MTProto's
  req_pq_multi, MQTT's CONNECT); a failure after connecting gets a same-size
  non-protocol payload to the same address:port, which tells a protocol
  fingerprint from an address block;
* `stun(feature, relay, port)`: a STUN Binding request (RFC 5389) to a
  relay given by name or address;
* a DNS control for a name no censor touches.

After them, transfer features can be timed against a control on the same
path (`Common.throughput`, `probe/throughput.py`): a bulk object of the
feature's own server fetched by byte range under the feature's name and
under a neutral one, and a calls feature's answered STUN relay timed against
TCP connects to the same address. A nettest names its bulk objects and timed
call features there; `derive_features` then reads `throttled` from them.

The facts land in one `Trace` (OONI's event arrays) plus `x_wallwatch`
(`sessions`, `fetches`, `udp_exchanges`, `controls`, `throughput`), and
`probe.verdicts.derive_features` judges them by the same rules whatever the
service: one definition of "blocked", with controls, for every nettest.
A subclass lists its attempts (`attempts()`) and its OONI keys (`ooni_keys()`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Awaitable, Callable, ClassVar, Mapping, Sequence, TypeVar
from urllib.parse import urlsplit

from wallwatch.probe import failures
from wallwatch.probe.failures import ProbeFailure
from wallwatch.probe.primitives import (
    Resolution,
    TcpStream,
    TlsStream,
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

if TYPE_CHECKING:
    from wallwatch.probe.measurement import Stamp

STUN_PORT = 3478  # RFC 5389 §18.4

# The control payload is printable ASCII: it is no messaging protocol and not
# TLS, and fully-encrypted-traffic detectors exempt it (>50% printable,
# [Wu2023]), so only the address:port decides its fate.
CONTROL_FILLER = b"wallwatch control, not a messaging protocol. "

PHOTO_SIZE = 200 * 1024  # a phone photo after an app's recompression: 100-300 KB

# Stages of a session, in order (`stage_reached`); a dialog adds its own after "tls".
SESSION_STAGES = ("dns", "connect", "tls")


@dataclass(frozen=True)
class Timeouts:
    """Per-step bounds, in seconds. Fully blocked, a target costs at most dns + connect + 2 x step + control."""

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


@dataclass(frozen=True)
class Throughput:
    """Which features a nettest times against a control after its reachability attempts.

    `bulk`: (feature, URL) pairs, a large object on the feature's own server that
    answers byte ranges (a video on the media CDN, the web client's script bundle);
    `calls`: features whose answered STUN relay is timed against TCP connects to
    `relay_control_port` of the same address. Empty: nothing is timed.
    """

    bulk: tuple[tuple[str, str], ...] = ()
    calls: tuple[str, ...] = ()
    rounds: int = 3
    relay_control_port: int = 443  # TCP port timed as the calls' latency control

    def __bool__(self) -> bool:
        return bool(self.bulk or self.calls)


@dataclass(frozen=True)
class Common:
    """What every messaging nettest's config has (each nettest's config embeds one as `common`)."""

    control_sni: str = "example.org"  # RFC 2606 reserved name: no censor lists it
    dns_control_name: str = "example.com"
    expected_networks: tuple[str, ...] = ()
    max_addresses: int = 2  # addresses tried per target, as a dialer falls back
    https_port: int | None = None  # None: the URL's port (443); tests point it at loopback
    timeouts: Timeouts = field(default_factory=Timeouts)
    throughput: Throughput = field(default_factory=Throughput)


Reached = Callable[[str], None]
# A protocol dialog over a connected (TCP or TLS) stream: it calls reached(stage) after
# each of its stages and returns when the service has proved itself; it raises
# ProbeFailure (a network failure) or ProtocolError (the answer is not the service's).
# It may set session["first_flight_size"] (the payload control sends as many bytes).
Dialog = Callable[[Any, Reached, dict[str, Any]], Awaitable[None]]


@dataclass
class _Fetch:
    """Mutable facts of one HTTPS attempt while it runs."""

    ip: str | None = None  # the address the attempt connected to (the throughput rounds dial it again)
    failure: str | None = None
    failed_at: str | None = None
    status: int | None = None
    body_length: int | None = None


class ServiceTest:
    """One run of a messaging nettest: attempts run concurrently, facts into one trace."""

    test_name: ClassVar[str] = ""
    test_version: ClassVar[str] = "0.1.0"
    # x_wallwatch key the sessions are stored under (whatsapp keeps its historical `chat_sessions`).
    sessions_key: ClassVar[str] = "sessions"

    def __init__(self, common: Common, settings: ProbeSettings, trace: Trace | None = None) -> None:
        self.common, self.settings = common, settings
        self.trace = trace or Trace()
        self.sessions: list[dict[str, Any]] = []
        self.fetches: list[dict[str, Any]] = []
        self._lookups: dict[str, asyncio.Future[Any]] = {}
        self.probe_addresses: set[str] = set()  # the probe's own IPs seen on the wire (scrubbed unless published)
        self.throughput: list[dict[str, Any]] = []  # records of probe/throughput.py, one per timed feature

    # --- what a subclass gives -------------------------------------------------------

    def attempts(self) -> list[Awaitable[Any]]:
        raise NotImplementedError

    def ooni_keys(self) -> dict[str, Any]:
        """The OONI test's own keys (ts-0xx), from the facts recorded."""
        return {}

    def extra_facts(self) -> dict[str, Any]:
        """Further `x_wallwatch` facts of this nettest."""
        return {}

    def status_keys(self, prefix: str, features: Sequence[str], all_of: frozenset[str] = frozenset({"media"})
                    ) -> dict[str, Any]:
        """OONI-style keys for a service OONI has no test of, in the style of its IM tests (ts-018's
        `whatsapp_web_status`/`_failure`, ts-020's): per feature `<prefix>_<feature>_status` ("ok" or
        "blocked", whatever the cause, as OONI's say) and `<prefix>_<feature>_failure` (the first
        df-007 failure string), and `<prefix>_endpoints_blocked`: the app-protocol endpoints that failed.
        A feature is ok when one attempt worked (every one for `all_of` features)."""
        outcomes: dict[str, list[str | None]] = {feature: [] for feature in features}
        for session in self.sessions:
            outcomes.setdefault(session["feature"], []).append(None if session["completed"] else session["failure"])
        for fetch in self.fetches:
            outcomes.setdefault(fetch["feature"], []).append(fetch["failure"])
        for exchange in self.trace.udp_exchanges:
            feature = next((t[len("feature:"):] for t in exchange.get("tags") or () if t.startswith("feature:")), "")
            outcomes.setdefault(feature, []).append(exchange.get("failure"))
        for query in self.trace.queries:  # a relay by name whose lookup failed left no exchange
            tags = query.get("tags") or ()
            feature = next((t[len("feature:"):] for t in tags if t.startswith("feature:")), "")
            transaction = query.get("transaction_id")
            judged = any(entry.get("transaction_id") == transaction for entry in
                         (*self.sessions, *self.fetches, *self.trace.udp_exchanges))
            if feature and query.get("failure") and not judged:
                outcomes.setdefault(feature, []).append(query["failure"])
        keys: dict[str, Any] = {}
        for feature in features:
            seen = outcomes.get(feature) or [failures.unknown_failure("not measured")]
            failed = [failure for failure in seen if failure is not None]
            ok = not failed if feature in all_of else len(failed) < len(seen)
            keys[f"{prefix}_{feature}_status"] = "ok" if ok else "blocked"
            keys[f"{prefix}_{feature}_failure"] = None if ok else failed[0]
        keys[f"{prefix}_endpoints_blocked"] = sorted({f"{s['host']}:{s['port']}" for s in self.sessions
                                                      if not s["completed"]})
        return keys

    # --- running ---------------------------------------------------------------------

    async def run(self, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Measure every feature concurrently; returns the `test_keys`."""
        say = progress or (lambda message: None)
        jobs = [self.dns_control(), *self.attempts()]
        say(f"measuring {len(jobs)} targets")
        await asyncio.gather(*jobs)
        if self.common.throughput:
            # After the reachability attempts, one feature at a time: a throttle's rate is
            # shared by every flow its rule catches, so concurrent transfers would split it.
            say("measuring throughput against controls")
            await self.measure_throughput()
        say("deriving verdicts")
        return self.test_keys()

    def test_keys(self) -> dict[str, Any]:
        from wallwatch.probe.verdicts import derive_features, rules_version

        test_keys: dict[str, Any] = {"agent": "redirect", "failed_operation": None, "failure": None}
        test_keys.update(self.trace.event_arrays())
        test_keys.update(self.ooni_keys())
        lab = self.settings.lab
        test_keys["x_wallwatch"] = {
            "rules_version": rules_version(self.test_name),
            "features": {},
            self.sessions_key: self.sessions,
            "fetches": self.fetches,
            "udp_exchanges": self.trace.udp_exchanges,
            "controls": self.trace.controls,
            "throughput": self.throughput,
            "expected_networks": list(self.common.expected_networks),
            "lab": {"run_id": lab.run_id, "resolver": lab.resolver} if lab else None,
            **self.extra_facts(),
        }
        test_keys["x_wallwatch"]["features"] = derive_features(self.test_name, test_keys)
        return test_keys

    # --- shared steps ----------------------------------------------------------------

    async def resolve(self, tx: Transaction, host: str) -> Resolution:
        t = self.common.timeouts
        if self.settings.resolver is None:
            # The stub resolver may wait 5 s per try (resolv.conf(5) "timeout"), so give it that.
            return await resolve_system(tx, host, timeout=max(t.dns, 5.0), shared=self._lookups)
        return await resolve_udp(tx, host, self.settings.resolver, timeout=t.dns, linger=t.dns_linger)

    async def connect_any(self, tx: Transaction, addresses: Sequence[str], port: int) -> TcpStream:
        """Dial the resolved addresses in order, as a dialer does; the last failure wins."""
        failure = failures.unknown_failure("no address to dial")
        for address in addresses[: self.common.max_addresses]:
            try:
                dial = self.settings.map_address(address)
            except (KeyError, ValueError):
                # Not dialled: in the lab, an unmapped real-world address would leave the lab.
                failure = failures.unknown_failure(f"no lab address for {address}; not dialled")
                continue
            try:
                return await tcp_connect(tx, dial, port, timeout=self.common.timeouts.connect)
            except ProbeFailure as exc:
                failure = exc.failure
        raise ProbeFailure(failure)

    async def dns_control(self) -> None:
        """A name the censor has no reason to touch: any answer (NXDOMAIN too) proves the resolver works."""
        tx = self.trace.transaction("control:dns", f"endpoint:{self.common.dns_control_name}:53")
        await self.resolve(tx, self.common.dns_control_name)

    def port_for(self, url: str) -> int:
        return self.common.https_port or urlsplit(url).port or 443

    # --- app-protocol sessions -------------------------------------------------------------

    async def session(self, feature: str, host: str, port: int, dialog: Dialog, stages: Sequence[str], *,
                      tls_name: str | None = None, by_address: bool = False,
                      alpn: Sequence[str] = ("http/1.1",)) -> dict[str, Any]:
        """One app-protocol session; its record is appended to `self.sessions` and returned.

        `stages` are the dialog's stages in order, the last one proving the
        service (`failed_at` is the first one not reached). `by_address`:
        `host` is an address dialled without DNS (through the lab's address
        map). `tls_name`: wrap the stream in TLS with that SNI (and `alpn`) first
        (then a failure inside TLS is no payload's fault: no payload control).
        """
        tx = self.trace.transaction(f"feature:{feature}", f"endpoint:{host}:{port}")
        session: dict[str, Any] = {"feature": feature, "host": host, "port": port, "transaction_id": tx.id,
                                   "address": None, "stage_reached": None, "failed_at": None, "failure": None,
                                   "completed": False, "t0": tx.now(), "timings": {}, "first_flight_size": None,
                                   "control": None}
        self.sessions.append(session)

        def reached(stage: str) -> None:
            session["stage_reached"] = stage
            session["timings"][stage] = tx.now()

        if by_address:
            addresses: Sequence[str] = (host,)
        else:
            resolution = await self.resolve(tx, host)
            if resolution.failure:
                session.update(failed_at="dns", failure=resolution.failure)
                return session
            addresses = resolution.addresses
            reached("dns")
        try:
            stream = await self.connect_any(tx, addresses, port)
        except ProbeFailure as exc:
            session.update(failed_at="connect", failure=exc.failure)
            return session
        reached("connect")
        session["address"] = stream.address
        try:
            channel: TcpStream | TlsStream = stream
            if tls_name is not None:
                secured = await self._tls(tx, session, stream, tls_name, tuple(alpn))
                if secured is None:
                    return session
                channel = secured
                reached("tls")
            await self._run_dialog(dialog, channel, session, reached, tuple(stages))
        finally:
            await stream.close()
        if session["failure"] is not None and tls_name is None and session["failed_at"] != "connect":
            control = await self.payload_control(tx, stream, session["first_flight_size"])
            session["control"] = {"outcome": control.outcome, "failure": control.failure}
        return session

    async def _tls(self, tx: Transaction, session: dict[str, Any], stream: TcpStream, name: str,
                   alpn: Sequence[str]) -> TlsStream | None:
        t = self.common.timeouts
        try:
            return await tls_handshake(stream, name, self.settings.tls_context(alpn), alpn=alpn, timeout=t.tls)
        except ProbeFailure as exc:
            if exc.failure in (failures.CONNECTION_RESET, failures.GENERIC_TIMEOUT, failures.EOF_ERROR):
                await tls_sni_control(tx.tagged("control:tls_sni"), stream.ip, stream.port,
                                      self.common.control_sni, timeout=t.control)
            session.update(failed_at="tls", failure=exc.failure)
            return None

    async def _run_dialog(self, dialog: Dialog, channel: Any, session: dict[str, Any], reached: Reached,
                          stages: tuple[str, ...]) -> None:
        from wallwatch.protocols.errors import ProtocolError

        done: list[str] = []

        def track(stage: str) -> None:
            done.append(stage)
            reached(stage)

        def next_stage() -> str:
            return next((stage for stage in stages if stage not in done), stages[-1])

        try:
            await dialog(channel, track, session)
        except ProbeFailure as exc:
            session.update(failed_at=next_stage(), failure=exc.failure)
            return
        except ProtocolError as exc:
            session.update(failed_at=next_stage(), failure=failures.unknown_failure(f"not {self.test_name}: {exc}"))
            return
        session["completed"] = True

    async def payload_control(self, tx: Transaction, stream: TcpStream, size: int | None) -> Any:
        size = size or len(CONTROL_FILLER)
        payload = (CONTROL_FILLER * (size // len(CONTROL_FILLER) + 1))[:size]
        return await first_flight_control(tx.tagged("control:payload"), stream.ip, stream.port, payload,
                                          kind="payload", timeout=self.common.timeouts.control)

    # --- HTTPS -----------------------------------------------------------------------

    async def upload(self, feature: str, url: str, size: int = PHOTO_SIZE) -> None:
        photo = b"\xff\xd8" + os.urandom(size - 4) + b"\xff\xd9"  # JPEG SOI ... EOI
        await self.https(feature, url, method="POST", body=photo, headers=(("Content-Type", "image/jpeg"),))

    async def https(self, feature: str, url: str, *, method: str = "GET", body: bytes = b"",
                    headers: Sequence[tuple[str, str]] = ()) -> None:
        host = urlsplit(url).hostname or ""
        port = self.port_for(url)
        tx = self.trace.transaction(f"feature:{feature}", f"endpoint:{host}:{port}")
        attempt = _Fetch()
        record: dict[str, Any] = {"feature": feature, "url": url, "method": method, "transaction_id": tx.id}
        self.fetches.append(record)
        try:
            await self._fetch(tx, attempt, host, port, url, method, body, headers)
        except ProbeFailure as exc:
            attempt.failure = exc.failure
        record.update(failure=attempt.failure, failed_at=attempt.failed_at,
                      status=attempt.status, body_length=attempt.body_length, address=attempt.ip)

    async def _fetch(self, tx: Transaction, attempt: _Fetch, host: str, port: int, url: str, method: str,
                     body: bytes, headers: Sequence[tuple[str, str]]) -> None:
        t = self.common.timeouts
        attempt.failed_at = "dns"
        resolution = await self.resolve(tx, host)
        if resolution.failure:
            raise ProbeFailure(resolution.failure)
        attempt.failed_at = "connect"
        stream = await self.connect_any(tx, resolution.addresses, port)
        attempt.ip = stream.ip
        try:
            attempt.failed_at = "tls"
            try:
                tls = await tls_handshake(stream, host, self.settings.tls_context(("http/1.1",)),
                                          alpn=("http/1.1",), timeout=t.tls)
            except ProbeFailure as exc:
                if exc.failure in (failures.CONNECTION_RESET, failures.GENERIC_TIMEOUT, failures.EOF_ERROR):
                    await tls_sni_control(tx.tagged("control:tls_sni"), stream.ip, stream.port,
                                          self.common.control_sni, timeout=t.control)
                raise
            attempt.failed_at = "http"
            response = await http_request(tls, url, method=method, body=body, headers=headers, timeout=t.http)
            attempt.failed_at = None
            attempt.status, attempt.body_length = response.status, len(response.body)
        finally:
            # Given up half-way (a transfer timed out behind a throttle): reset, so its
            # unsent bytes do not go on queueing in front of the flows that follow.
            await (stream.close() if attempt.failed_at is None else stream.abort())

    # --- calls -----------------------------------------------------------------------

    async def stun(self, feature: str, relay: str, port: int = STUN_PORT, *, by_address: bool = True,
                   attributes: Sequence[tuple[int, bytes]] = ()) -> None:
        """A STUN Binding request to `relay`: an address (through the address map) or, with
        `by_address=False`, a name resolved first. `attributes`: an app's own (Skype's MS-IMPLEMENTATION-VERSION)."""
        from wallwatch.protocols.stun import parse_stun

        request, is_answer = stun_request(attributes)
        response = await self.udp_request(feature, relay, port, request, is_answer, by_address=by_address,
                                          kind="stun")
        if response is not None:
            mapped = parse_stun(response).mapped_address
            if mapped is not None:
                # The probe's own address as the relay saw it: kept only for scrubbing.
                self.probe_addresses.add(mapped[0])

    async def udp_request(self, feature: str, relay: str, port: int, request: bytes,
                          is_answer: Callable[[bytes], bool], *, by_address: bool = True,
                          kind: str = "udp") -> bytes | None:
        """One request/answer exchange over UDP with a relay (a call's first packets), retransmitted as
        STUN is (RFC 5389 §7.2.1); recorded in `udp_exchanges` and judged by the UDP rules. The answer, or None."""
        tx = self.trace.transaction(f"feature:{feature}", f"endpoint:{relay}:{port}")

        def not_dialled(reason: str) -> None:
            entry = {"kind": kind, "address": f"{relay}:{port}", "proto": "udp", "sends": 0,
                     "failure": failures.unknown_failure(reason)}
            entry.update(tx.stamp(tx.now()))
            self.trace.udp_exchanges.append(entry)

        address = relay
        if not by_address:
            resolution = await self.resolve(tx, relay)
            if resolution.failure or not resolution.addresses:
                return None  # the DNS facts alone judge this attempt
            address = resolution.addresses[0]
        try:
            dial = self.settings.map_address(address)
        except (KeyError, ValueError):
            not_dialled(f"no lab address for {address}; not dialled")
            return None
        result = await udp_exchange(tx, dial, port, request, is_response=is_answer,
                                    timeout=self.common.timeouts.udp, kind=kind, record_raw=False)
        return result.response

    # --- throughput against a control ------------------------------------------------------

    async def measure_throughput(self) -> None:
        """Time each feature `Common.throughput` names against its control (probe/throughput.py).

        Only where the feature's own attempt got through: an HTTPS feature whose
        fetch passed TLS (a blocked feature is not slow), a calls feature whose
        STUN relay answered. The records go to `self.throughput`.
        """
        from wallwatch.probe.throughput import HttpsTarget, RoundLimits, https_rounds, udp_rounds
        from wallwatch.probe.verdicts import throughput_settled

        plan, t = self.common.throughput, self.common.timeouts
        limits = RoundLimits(connect=t.connect, tls=t.tls, request=t.tls, transfer=t.http)
        for feature, bulk_url in plan.bulk:
            parts = urlsplit(bulk_url)
            # The feature's own fetch from the same host (a feature may span several hosts: Signal's CDNs).
            reached = next((f for f in self.fetches if f["feature"] == feature and f.get("address")
                            and urlsplit(f["url"]).hostname == parts.hostname
                            and f.get("failed_at") in (None, "http")), None)
            if reached is None:
                continue
            target = HttpsTarget(feature, parts.hostname or "", parts.path or "/", reached["address"],
                                 self.port_for(bulk_url), self.common.control_sni)
            self.throughput.append(await https_rounds(
                self.trace, target, target_context=self.settings.tls_context(("http/1.1",)),
                control_context=self.settings.control_tls_context(("http/1.1",)),
                rounds=plan.rounds, limits=limits, stop_early=throughput_settled))
        for feature in plan.calls:
            answered = next((e for e in self.trace.udp_exchanges if e.get("kind") == "stun"
                             and e.get("failure") is None and f"feature:{feature}" in (e.get("tags") or ())), None)
            if answered is None:
                continue
            ip, _, port = answered["address"].rpartition(":")
            self.throughput.append(await udp_rounds(
                self.trace, feature, ip.strip("[]"), int(port), control_port=plan.relay_control_port,
                make_request=stun_request, rounds=plan.rounds, timeout=t.udp, stop_early=throughput_settled))


ConfigT = TypeVar("ConfigT")


def configured(config: ConfigT, settings: ProbeSettings, step_timeout: float | None) -> ConfigT:
    """A nettest config (a dataclass with a `common`) for these settings: in the lab the lab's addresses
    count as the service's own networks; `step_timeout` bounds every step."""
    common: Common = config.common  # type: ignore[attr-defined]
    common = replace(common, expected_networks=common.expected_networks + lab_networks(settings))
    if step_timeout is not None:
        common = replace(common, timeouts=Timeouts.scaled(step_timeout))
    return replace(config, common=common)  # type: ignore[type-var]


async def exchange_opening(stream: Any, opening: bytes, parse: Callable[[bytes], Any], reached: Reached,
                           sent_stage: str, session: dict[str, Any], timeout: float) -> Any:
    """Send an app's opening, then read until `parse` (a `protocols` codec) gives the server's answer.

    Marks `sent_stage` once the opening is out; the payload control later sends as many bytes.
    EOF before an answer is `eof_error`; an answer that is not the protocol raises ProtocolError."""
    from wallwatch.protocols.errors import Incomplete

    session["first_flight_size"] = len(opening)
    await stream.write(opening, timeout=timeout)
    reached(sent_stage)
    buffer = b""
    while True:
        data = await stream.read(timeout=timeout)
        if not data:
            raise ProbeFailure(failures.EOF_ERROR)
        buffer += data
        answer = parse(buffer)
        if not isinstance(answer, Incomplete):
            return answer


def stun_request(attributes: Sequence[tuple[int, bytes]] = ()) -> tuple[bytes, Callable[[bytes], bool]]:
    """A fresh Binding request (with an app's own `attributes`) and the test for its answer
    (RFC 5389 §7.3: the transaction id matches)."""
    from wallwatch.protocols.errors import ProtocolError
    from wallwatch.protocols.stun import build_binding_request, parse_stun

    transaction_id = os.urandom(12)

    def is_answer(data: bytes) -> bool:
        try:
            message = parse_stun(data)
        except ProtocolError:
            return False
        return message.transaction_id == transaction_id and message.stun_class in ("success", "error")

    return build_binding_request(transaction_id, attributes), is_answer


def with_options(nettest: str, common: Common, options: Mapping[str, str] | None, throughput: Throughput) -> Common:
    """`common` with the options a messaging nettest takes (`wallwatch probe run --option`):
    `throughput=on` times `throughput` (the nettest's bulk objects and calls) against controls
    after the reachability attempts, `throughput=off` (the default) does not. Any other option
    is refused with the ones there are."""
    rest = dict(options or {})
    switch = rest.pop("throughput", None)
    if rest:
        raise ValueError(f"{nettest} takes no option {', '.join(sorted(rest))} (it takes throughput=on|off)")
    if switch is None:
        return common
    if switch not in ("on", "off"):
        raise ValueError(f"{nettest}: throughput must be on or off, not {switch!r}")
    return replace(common, throughput=throughput if switch == "on" else Throughput())


def lab_networks(settings: ProbeSettings) -> tuple[str, ...]:
    """In the lab, the lab's service addresses count as every service's own networks."""
    if settings.lab is None:
        return ()
    return tuple(f"{address}/32" for address in settings.lab.service_addresses())


def run_service(test_class: type[ServiceTest], config: Any, settings: ProbeSettings, stamp: "Stamp", *,
                step_timeout: float | None, options: Mapping[str, str] | None, throughput: Throughput,
                progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """A messaging nettest's `run_once` with fixed targets: its `config` for these settings
    (`configured`), `options` throughput=on|off timing `throughput` (`with_options`), one run."""
    config = configured(config, settings, step_timeout)
    config = replace(config, common=with_options(test_class.test_name, config.common, options, throughput))
    return measure(test_class(config, settings), stamp, progress)


def measure(test: ServiceTest, stamp: "Stamp", progress: Callable[[str], None] | None = None,
            *, input: str | None = None) -> dict[str, Any]:
    """Run a nettest and wrap it in the OONI envelope: one complete measurement."""
    from wallwatch.probe.measurement import finish_measurement

    started_at = dt.datetime.now(dt.timezone.utc)
    clock_start = time.monotonic()
    test_keys = asyncio.run(test.run(progress))
    return finish_measurement(test_keys, test_name=test.test_name, test_version=test.test_version,
                              started_at=started_at, runtime=time.monotonic() - clock_start, stamp=stamp,
                              resolver_ip=test.settings.resolver_ip(), probe_addresses=test.probe_addresses,
                              input=input)
