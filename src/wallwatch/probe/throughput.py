"""Goodput and latency of a feature's own traffic, against a control on the same path: the throttling primitive.

A censor that slows a service down leaves every connection working, so
reachability tests read `ok` (or time out and read `unknown`). Throttling
shows only as a difference, so this module measures one: the same transfer
from the same server, once as the app makes it and once under a name the
censor has no reason to touch, back to back and repeated ([Xue2021]: the
Twitter throttling in Russia was found by replaying a session with and
without the triggering SNI; [Wehe2015]: record-and-replay against a control
the classifier cannot recognise). Over TLS the only difference between the
two is the ClientHello's server name; the HTTP request, object and address
are the same, so a difference in goodput or round-trip time is the path's
treatment of the name.

For HTTPS features (`https_rounds`), each connection makes `latency_samples`
one-byte requests (`Range: bytes=0-0`, RFC 9110 §14.2) on one keep-alive
connection (their round-trip times are the latency samples), then one ranged
download sized to the rate seen so far: `window` seconds at the previous
round's target goodput, so a 64 kbit/s throttle costs a few seconds and an
unthrottled path a few megabytes, and every requested byte is read (an
abandoned transfer would leave its packets queued in the throttle, in front
of the next round). Goodput is counted as raw TCP bytes arrive, from the
first arrival to the last (TLS releases plaintext a 16 KB record at a time,
far too coarse at 64 kbit/s).

For UDP calls (`udp_rounds`), each round sends `samples` STUN Binding
requests one after the other on one socket (RFC 5389 §7.2.1, one answer
awaited before the next) and, as the control, times as many TCP connects to
the same relay address: the kernel answers a SYN (SYN-ACK or RST) without
the application, so a connect's duration is one round trip that a rule
keyed on UDP or on the relay's UDP port does not touch.

What was measured goes into the trace like every other fact (connects and
TLS handshakes in the OONI arrays, tagged `throughput:target` or
`throughput:control`), and the round summaries into the returned record,
which `verdicts.judge_throughput` turns into a verdict. The bulk reads are
counted, not logged one by one, so a transfer adds a handful of events to a
measurement, not thousands.
"""

from __future__ import annotations

import asyncio
import ssl
import statistics
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Sequence

from wallwatch.probe import failures
from wallwatch.probe.failures import ProbeFailure
from wallwatch.probe.primitives import TcpStream, TlsStream, open_udp_flow, tcp_connect, tls_handshake
from wallwatch.probe.trace import Trace, Transaction

TARGET, CONTROL = "target", "control"
ROUNDS = 3
LATENCY_SAMPLES = 3
# Seconds of transfer each round aims at; the sizes follow the rate measured so far.
WINDOW = 0.5
# The first round's size: 16 KiB is 2 s at 64 kbit/s (the slowest throttle the lab
# tests) and about the initial window of a TCP sender (10 segments, RFC 6928).
FIRST_SIZE = 16 * 1024
MIN_SIZE = 16 * 1024
MAX_SIZE = 4 * 1024 * 1024
HEAD_BYTES = 64 * 1024  # a response head larger than this is not a CDN's


@dataclass(frozen=True)
class HttpsTarget:
    """One HTTPS object to fetch as the app does (`server_name`) and as the control (`control_name`)."""

    feature: str
    host: str  # the URL's host: SNI of the target, Host header of both
    path: str
    ip: str  # the address to dial (already resolved and mapped)
    port: int
    control_name: str  # the control's SNI: a name no censor lists (RFC 2606)


@dataclass(frozen=True)
class RoundLimits:
    """Bounds on one round, in seconds: a throttled path must still finish in time."""

    connect: float = 3.0
    tls: float = 3.0
    request: float = 3.0  # one latency sample
    transfer: float = 6.0  # one bulk download (the sizes keep it near `window`)
    latency_budget: float = 1.0  # stop taking latency samples (after two) once this is spent


def _clock() -> float:
    return time.monotonic()


# A gap in a transfer's arrivals is the transport recovering a lost packet, not the path's rate,
# when it is longer than Linux's minimum retransmission timeout (TCP_RTO_MIN, 200 ms; RFC 6298 §2.4
# allows it), several times the transfer's own median gap (a 64 kbit/s path spaces full packets
# ~190 ms apart) and twice the connection's round trip (behind added delay a window arrives once a
# round trip). A policer with a short queue ([Xue2021]: Russia's throttler dropped what exceeded its
# rate) drops a new connection's first burst now and then; one such stall of ~240 ms in a 0.5 s
# round read a 1 Mbit/s limit as 0.6-0.7 of it in about one lab run in six.
STALL_MIN_S = 0.2
STALL_GAPS = 4
STALL_ROUND_TRIPS = 2


def goodput(arrivals: Sequence[tuple[float, int]], stalled: float = 0.0) -> tuple[int, float, float | None]:
    """(bytes, seconds, bits per second) of a transfer from its raw arrivals (time, bytes).

    The first arrival starts the clock and its bytes are not counted: they
    crossed the path before the clock started (the packet-pair reasoning of
    every dispersion-based estimator). `stalled` seconds of loss recovery
    (`stalled_seconds`) are left out, so the rate is the one the path
    delivers at. None with fewer than two arrivals.
    """
    if len(arrivals) < 2:
        return sum(n for _, n in arrivals), 0.0, None
    counted = sum(n for _, n in arrivals[1:])
    seconds = arrivals[-1][0] - arrivals[0][0] - stalled
    if seconds <= 0:
        return counted, seconds, None
    return counted, seconds, counted * 8 / seconds


def stalled_seconds(arrivals: Sequence[tuple[float, int]], rtt_s: float | None = None) -> float:
    """The time a transfer's loss-recovery stalls took beyond a median gap each (0 without any)."""
    gaps = [later[0] - earlier[0] for earlier, later in zip(arrivals, arrivals[1:])]
    if not gaps:
        return 0.0
    typical = statistics.median(gaps)
    threshold = max(STALL_MIN_S, STALL_GAPS * typical, STALL_ROUND_TRIPS * (rtt_s or 0.0))
    return sum(gap - typical for gap in gaps if gap > threshold)


def next_size(previous: dict[str, Any] | None, window: float = WINDOW) -> int:
    """The next round's transfer size: `window` seconds at the rate the last target transfer completed.

    The rate is bytes over the time from request to last byte, not the
    dispersion goodput: behind 400 ms of added delay a transfer arrives in
    bursts at line rate, and sizing from the bursts would ask for megabytes
    that slow start then needs many round trips to deliver.
    """
    if previous is None or not previous.get("transfer_s") or not previous.get("bytes"):
        return FIRST_SIZE
    completed_bps = (previous["bytes"] * 8) / previous["transfer_s"]
    return int(min(MAX_SIZE, max(MIN_SIZE, completed_bps / 8 * window)))


# --- HTTP/1.1 keep-alive on one TLS stream ---------------------------------------------------


class _KeepAlive:
    """Sequential HTTP/1.1 requests on one connection (h11 speaks the protocol)."""

    def __init__(self, stream: TlsStream, host: str) -> None:
        import h11

        self._h11 = h11
        self.stream, self.host = stream, host
        self.connection = h11.Connection(h11.CLIENT, max_incomplete_event_size=HEAD_BYTES)

    async def get(self, path: str, byte_range: str, timeout: float) -> tuple[int, int]:
        """GET `path` with `Range: byte_range`; (status, body bytes). ProbeFailure on any failure."""
        try:
            return await asyncio.wait_for(self._get(path, byte_range), timeout)
        except ProbeFailure:
            raise
        except (OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
            raise ProbeFailure(failures.classify(exc)) from None
        except Exception as exc:  # h11.ProtocolError: the peer spoke something else
            raise ProbeFailure(failures.unknown_failure(f"{exc.__class__.__name__}: {exc}")) from None

    async def _get(self, path: str, byte_range: str) -> tuple[int, int]:
        h11 = self._h11
        if self.connection.our_state is h11.DONE and self.connection.their_state is h11.DONE:
            self.connection.start_next_cycle()
        request = h11.Request(method="GET", target=path, headers=[
            ("Host", self.host), ("Range", byte_range), ("Accept-Encoding", "identity")])
        await self.stream.write(self.connection.send(request) + self.connection.send(h11.EndOfMessage()))
        status, size = 0, 0
        while True:
            event = self.connection.next_event()
            if event is h11.NEED_DATA:
                data = await self.stream.read()
                if not data and self.connection.their_state is not h11.DONE:
                    raise ProbeFailure(failures.EOF_ERROR)
                self.connection.receive_data(data)
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                size += len(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return status, size
            elif isinstance(event, h11.ConnectionClosed):
                raise ProbeFailure(failures.EOF_ERROR)


async def _https_round(tx: Transaction, target: HttpsTarget, role: str, context: ssl.SSLContext, size: int,
                       *, latency_samples: int, limits: RoundLimits) -> dict[str, Any]:
    """One connection: connect, TLS under the role's name, latency samples, one sized download."""
    server_name = target.host if role == TARGET else target.control_name
    facts: dict[str, Any] = {"role": role, "server_name": server_name, "address": f"{target.ip}:{target.port}",
                             "transaction_id": tx.id, "size": size, "connect_s": None, "handshake_s": None,
                             "rtt_ms": [], "status": None, "bytes": 0, "counted_bytes": 0, "seconds": None,
                             "stalled_s": None, "goodput_bps": None,
                             "transfer_s": None, "failure": None, "failed_at": None}
    stage = "connect"
    stream: TcpStream | None = None
    try:
        started = _clock()
        stream = await tcp_connect(tx, target.ip, target.port, timeout=limits.connect)
        facts["connect_s"] = round(_clock() - started, 6)
        stage = "tls"
        started = _clock()
        tls = await tls_handshake(stream, server_name, context, alpn=("http/1.1",), timeout=limits.tls)
        facts["handshake_s"] = round(_clock() - started, 6)
        stream.quiet = True
        http = _KeepAlive(tls, target.host)
        stage = "latency"
        sampling = _clock()
        for index in range(latency_samples):
            if index >= 2 and _clock() - sampling > limits.latency_budget:
                break  # two samples are enough behind a long delay; a third would cost seconds
            started = _clock()
            status, _ = await http.get(target.path, "bytes=0-0", limits.request)
            facts["rtt_ms"].append(round((_clock() - started) * 1000, 3))
            facts["status"] = status
        stage = "transfer"
        arrivals: list[tuple[float, int]] = []
        stream.observer = lambda n: arrivals.append((_clock(), n))
        started = _clock()
        try:
            status, body = await http.get(target.path, f"bytes=0-{size - 1}", limits.transfer)
        finally:
            stream.observer = None
            rtt_ms = median(facts["rtt_ms"])
            stalled = stalled_seconds(arrivals, None if rtt_ms is None else rtt_ms / 1000)
            counted, seconds, rate = goodput(arrivals, stalled)
            facts.update(bytes=sum(n for _, n in arrivals), counted_bytes=counted, seconds=round(seconds, 6),
                         stalled_s=round(stalled, 6),
                         goodput_bps=None if rate is None else round(rate),
                         transfer_s=round((arrivals[-1][0] if arrivals else _clock()) - started, 6))
        facts["status"] = status
        if status not in (200, 206):
            facts.update(failure=failures.unknown_failure(f"HTTP {status}"), failed_at=stage)
    except ProbeFailure as exc:
        facts.update(failure=exc.failure, failed_at=stage)
    finally:
        if stream is not None:
            await stream.abort() if facts["failure"] else await stream.close()
    return facts


async def https_rounds(trace: Trace, target: HttpsTarget, *, target_context: ssl.SSLContext,
                       control_context: ssl.SSLContext, rounds: int = ROUNDS, latency_samples: int = LATENCY_SAMPLES,
                       window: float = WINDOW, limits: RoundLimits = RoundLimits(),
                       stop_early: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
    """`rounds` rounds of (target, control) transfers of the same bytes, the order alternating.

    `stop_early(record)`, asked after each round, may end the rounds once the
    ones so far agree (`verdicts.throughput_settled`), so a path that is
    plainly fine, or plainly throttled, costs two rounds, not three.

    Returns the record `verdicts.judge_throughput` reads: `kind` "https",
    `feature`, `endpoint`, `control_name`, `rounds` (per round: `size`,
    `target` and `control` facts as `_https_round` makes them).
    """
    record: dict[str, Any] = {"kind": "https", "feature": target.feature,
                              "endpoint": f"{target.host}:{target.port}", "address": f"{target.ip}:{target.port}",
                              "path": target.path, "control_name": target.control_name, "rounds": []}
    previous: dict[str, Any] | None = None
    contexts = {TARGET: target_context, CONTROL: control_context}
    for index in range(rounds):
        size = next_size(previous, window)
        entry: dict[str, Any] = {"round": index, "size": size}
        # Alternate which goes first, so a drift in the path (cross traffic, a CPU
        # busy elsewhere) does not always favour the same side.
        for role in ((TARGET, CONTROL) if index % 2 == 0 else (CONTROL, TARGET)):
            tx = trace.transaction(f"feature:{target.feature}", f"endpoint:{target.host}:{target.port}",
                                   f"throughput:{role}")
            entry[role] = await _https_round(tx, target, role, contexts[role], size,
                                             latency_samples=latency_samples, limits=limits)
        record["rounds"].append(entry)
        if entry[TARGET]["failure"] is not None and not entry[TARGET]["bytes"]:
            break  # the target no longer works: nothing more to compare
        previous = entry[TARGET]
        if stop_early is not None and stop_early(record):
            break
    return record


# --- UDP (calls): STUN round trips against TCP-connect round trips -------------------------------


async def _stun_samples(tx: Transaction, ip: str, port: int, make_request: Callable[[], tuple[bytes, Callable[[bytes], bool]]],
                        count: int, timeout: float) -> dict[str, Any]:
    facts: dict[str, Any] = {"role": TARGET, "address": f"{ip}:{port}", "transaction_id": tx.id, "proto": "udp",
                             "rtt_ms": [], "lost": 0, "failure": None}
    try:
        flow = await open_udp_flow(tx, ip, port)
    except ProbeFailure as exc:
        facts["failure"] = exc.failure
        return facts
    try:
        for _ in range(count):
            payload, is_answer = make_request()
            started = _clock()
            flow.write(payload)
            deadline = started + timeout
            while True:
                try:
                    data = await flow.read(timeout=max(0.0, deadline - _clock()))
                except ProbeFailure as exc:
                    if exc.failure != failures.GENERIC_TIMEOUT:
                        facts["failure"] = exc.failure
                        return facts
                    facts["lost"] += 1
                    break
                if is_answer(data):
                    facts["rtt_ms"].append(round((_clock() - started) * 1000, 3))
                    break
    finally:
        flow.close()
    if not facts["rtt_ms"]:
        facts["failure"] = failures.GENERIC_TIMEOUT
    return facts


async def _connect_samples(tx: Transaction, ip: str, port: int, count: int, timeout: float) -> dict[str, Any]:
    """TCP connects to ip:port, each timed: a SYN and its SYN-ACK or RST is one round trip."""
    facts: dict[str, Any] = {"role": CONTROL, "address": f"{ip}:{port}", "transaction_id": tx.id, "proto": "tcp",
                             "rtt_ms": [], "lost": 0, "failure": None, "outcomes": []}
    for _ in range(count):
        started = _clock()
        try:
            stream = await tcp_connect(tx, ip, port, timeout=timeout)
        except ProbeFailure as exc:
            elapsed = _clock() - started
            facts["outcomes"].append(exc.failure)
            if exc.failure == failures.CONNECTION_REFUSED:
                facts["rtt_ms"].append(round(elapsed * 1000, 3))  # the RST came back: one round trip
            else:
                facts["lost"] += 1
            continue
        facts["rtt_ms"].append(round((_clock() - started) * 1000, 3))
        facts["outcomes"].append("connected")
        await stream.abort()
    if not facts["rtt_ms"]:
        facts["failure"] = failures.GENERIC_TIMEOUT
    return facts


async def udp_rounds(trace: Trace, feature: str, ip: str, port: int, *, control_port: int,
                     make_request: Callable[[], tuple[bytes, Callable[[bytes], bool]]],
                     rounds: int = ROUNDS, samples: int = 4, timeout: float = 2.5,
                     stop_early: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
    """`rounds` rounds of (STUN round trips, TCP-connect round trips to the same address), order alternating."""
    record: dict[str, Any] = {"kind": "udp", "feature": feature, "endpoint": f"{ip}:{port}",
                              "address": f"{ip}:{port}", "control_port": control_port, "rounds": []}
    for index in range(rounds):
        entry: dict[str, Any] = {"round": index}
        jobs: dict[str, Callable[[Transaction], Awaitable[dict[str, Any]]]] = {
            TARGET: lambda tx: _stun_samples(tx, ip, port, make_request, samples, timeout),
            CONTROL: lambda tx: _connect_samples(tx, ip, control_port, samples, timeout),
        }
        for role in ((TARGET, CONTROL) if index % 2 == 0 else (CONTROL, TARGET)):
            tx = trace.transaction(f"feature:{feature}", f"endpoint:{ip}:{port}", f"throughput:{role}")
            entry[role] = await jobs[role](tx)
        record["rounds"].append(entry)
        if entry[TARGET]["failure"] is not None:
            break
        if stop_early is not None and stop_early(record):
            break
    return record


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None
