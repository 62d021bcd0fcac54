"""Offline replay: what the censor would have done to every flow of a capture.

Each captured packet takes the path a forwarded IPv4 packet takes through the
live censor (iptables.py, nfqueue.py), with the kernel's parts done here:

    flow already decided (connmark) -> ACCEPT/DROP without the engine
    blackhole-ip rule (WALLWATCH_STATIC) -> DROP without the engine
    conntrack would hold it INVALID -> ACCEPT without the engine
    otherwise -> engine.Censor.handle(packet, now=capture time), the same flow
                 tracking, analyzers and rules as the live censor

Conntrack's INVALID is emulated for what a single packet shows (Linux's
nf_conntrack_proto_tcp.c, [linux-conntrack]): a TCP/UDP header the censor cannot
parse, a TCP flag combination `tcp_valid_flags` refuses (SYN|FIN, no flags, FIN
without ACK, ...), and a RST or FIN opening a flow (no connection for it). Not
emulated: checksums (a capture taken on the sending host has offloaded,
unfinished ones) and TCP window tracking.

Nothing is sent: injections (RSTs, forged DNS answers) are counted, not sent.
Time is the capture's, so idle timeouts and time-based rules behave as they
would have live. IPv6 is reported but not judged: the live censor queues and
blackholes IPv4 only (iptables.py), so IPv6 flows pass it untouched.

Memory is bounded by `max_flows`, not by the capture: as the live flow table
(flows.py) does, a flow idle for its timeout (by capture time) or the least
recently seen one beyond `max_flows` ends, and its verdict is handed to
`on_flow` and forgotten. A 500k-flow SYN scan took 2.5 GB when every flow was
kept to the end (bench/bench_replay.py has the figures before and after).

Adapter note: `engine.Censor` has no per-flow result API, so `Replayer`
wraps the lookup method of its censor's flow table to remember the flow of
each packet; the analyzer properties come from that `Flow` object.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable

from wallwatch.censor.actions import wants_repeat
from wallwatch.censor.engine import Censor
from wallwatch.censor.flows import (
    CLOSED_TCP_TIMEOUT, MAX_FLOWS, TCP_IDLE_TIMEOUT, UDP_IDLE_TIMEOUT, Flow, FlowKey, flow_key, is_bare_syn,
    opens_new_connection,
)
from wallwatch.censor.pcap import CaptureReader, Frame, LinkError, ip_packet
from wallwatch.censor.policy import FLOW_KEYS, Policy, StaticDrop, static_drops
from wallwatch.protocols import inet
from wallwatch.protocols.errors import ProtocolError

# nfqueue.py runs flow expiry about once a second; replay does it on capture time.
HOUSEKEEPING_INTERVAL = 1.0
# Not judged: the live censor's iptables rules cover IPv4 only.
NOT_QUEUED = "not-queued"
# Still waiting for an analyzer when the capture ended; its packets were accepted.
UNDECIDED = "undecided"
# Every packet was one conntrack holds INVALID: forwarded by the kernel, never queued.
CONNTRACK_INVALID = "conntrack-invalid"
# nf_conntrack_proto_tcp.c `tcp_valid_flags`: the flag combinations conntrack accepts,
# once PSH, ECE and CWR are masked out. Any other (SYN|FIN, none, FIN alone) is INVALID.
_TCP_VALID_FLAGS = frozenset({
    inet.SYN, inet.SYN | inet.URG, inet.SYN | inet.ACK, inet.RST, inet.RST | inet.ACK, inet.FIN | inet.ACK,
    inet.FIN | inet.ACK | inet.URG, inet.ACK, inet.ACK | inet.URG,
})
_TCP_FLAGS_IGNORED = inet.PSH | 0x40 | 0x80  # PSH, ECE, CWR
# Link-layer problems kept verbatim in the report; beyond this they are only counted.
MAX_NOTES = 20
# No flow can be idle for less than the shortest timeout: an expiry sweep over flows in
# order of their last packet stops at the first one seen more recently than this.
_SHORTEST_TIMEOUT = min(CLOSED_TCP_TIMEOUT, TCP_IDLE_TIMEOUT, UDP_IDLE_TIMEOUT)


@dataclass(frozen=True, slots=True)
class FlowVerdict:
    """What the censor would have done to one flow of the capture."""

    proto: str
    client: str  # "ip:port" ("[ip]:port" for IPv6); the client is the flow's first sender
    server: str
    first_seen: float  # capture timestamps, seconds since the epoch
    last_seen: float
    packets: int
    bytes: int  # on the wire, IP header included
    props: dict[str, Any]  # what the analyzers learned (tls.sni, dns.qname, ...)
    action: str  # the rule's action, "allow" (no rule matched), "undecided" or "not-queued"
    rule: str | None
    decided_frame: int | None  # capture frame number of the deciding packet
    decided_packet: int | None  # ... and its position in the flow, 1-based
    decided_at: float | None
    dropped: int  # packets of this flow the censor would not have forwarded
    injected: int  # packets the censor would have forged (RSTs, DNS answers)
    held: int  # packets whose verdict would have been delayed (throttle delay_ms)
    residual_drops: int  # packets dropped by a penalty box an earlier flow opened (`residual`)

    def to_json(self) -> dict[str, Any]:
        return {"type": "flow", **{name: getattr(self, name) for name in self.__slots__}}


FlowSink = Callable[[FlowVerdict], None]


@dataclass(frozen=True, slots=True)
class ReplayReport:
    policy: str
    policy_sha256: str
    # Every flow in order of its first packet; empty when they went to an `on_flow` sink.
    flows: tuple[FlowVerdict, ...]
    counters: dict[str, int]  # replay's own: frames, garbage, link errors, kernel drops, ...
    censor: dict[str, int]  # the engine's status counters, as the live status file shows them
    problem: str | None = None  # capture damage: where decoding stopped and why
    notes: tuple[str, ...] = ()
    flow_count: int = 0  # flows reported, kept here or not
    first_seen: float | None = None  # the capture's earliest timestamp

    def summary_json(self) -> dict[str, Any]:
        return {"type": "summary", "policy": self.policy, "policy_sha256": self.policy_sha256,
                "flows": self.flow_count, "counters": self.counters, "censor": self.censor,
                "problem": self.problem, "notes": list(self.notes)}


@dataclass(slots=True, eq=False)
class _FlowRecord:
    key: FlowKey
    proto: str
    client: tuple[str, int]
    server: tuple[str, int]
    first_seen: float
    last_seen: float
    version: int
    packets: int = 0
    bytes: int = 0
    closed: bool = False
    engine_flow: Flow | None = None
    action: str | None = None
    rule: str | None = None
    decided_frame: int | None = None
    decided_packet: int | None = None
    decided_at: float | None = None
    kernel_verdict: bool | None = None  # accept/drop once the kernel owns the flow (connmark)
    dropped: int = 0
    injected: int = 0
    held: int = 0
    residual_drops: int = 0
    provisional: bool = False  # decided only by the penalty box: a later verdict replaces it
    isn: int | None = None  # the client's SYN sequence number, as in flows.Flow
    serial: int = 0  # order of first packet: the report's order
    invalid_only: bool = True  # every packet so far was conntrack INVALID (never queued)

    def idle(self, now: float) -> bool:
        if self.proto == "tcp":
            timeout = CLOSED_TCP_TIMEOUT if self.closed else TCP_IDLE_TIMEOUT
        else:
            timeout = UDP_IDLE_TIMEOUT
        return now - self.last_seen >= timeout

    def decide(self, action: str, rule: str | None, frame: Frame, *, provisional: bool = False) -> None:
        if self.action is None or (self.provisional and not provisional):
            self.action, self.rule, self.provisional = action, rule, provisional
            self.decided_frame, self.decided_packet, self.decided_at = frame.number, self.packets, frame.timestamp

    def verdict(self) -> FlowVerdict:
        props = {}
        if self.engine_flow is not None:
            props = {k: (list(v) if isinstance(v, tuple) else v)
                     for k, v in self.engine_flow.props.items() if k not in FLOW_KEYS}
        return FlowVerdict(
            self.proto, _endpoint(self.client), _endpoint(self.server), self.first_seen, self.last_seen,
            self.packets, self.bytes, props,
            self.action or (NOT_QUEUED if self.version == 6 else CONNTRACK_INVALID if self.invalid_only else UNDECIDED),
            self.rule, self.decided_frame, self.decided_packet, self.decided_at, self.dropped, self.injected,
            self.held, self.residual_drops,
        )


def _endpoint(endpoint: tuple[str, int]) -> str:
    address, port = endpoint
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


@dataclass(frozen=True, slots=True)
class _StaticMatcher:
    """One blackhole-ip kernel rule, matched against packet headers as iptables does."""

    rule: str
    proto: int | None
    src: ipaddress.IPv4Network | None
    dst: ipaddress.IPv4Network | None
    sport: tuple[int, int] | None
    dport: tuple[int, int] | None

    @classmethod
    def of(cls, spec: StaticDrop) -> _StaticMatcher:
        protos = {"tcp": inet.PROTO_TCP, "udp": inet.PROTO_UDP, "icmp": 1}
        return cls(spec.rule, protos[spec.proto] if spec.proto else None,
                   ipaddress.IPv4Network(spec.src) if spec.src else None,
                   ipaddress.IPv4Network(spec.dst) if spec.dst else None, spec.sport, spec.dport)

    def matches(self, packet: inet.Packet) -> bool:
        if self.proto is not None and packet.proto != self.proto:
            return False
        if self.src is not None and ipaddress.IPv4Address(packet.src) not in self.src:
            return False
        if self.dst is not None and ipaddress.IPv4Address(packet.dst) not in self.dst:
            return False
        if self.sport is not None and not self.sport[0] <= packet.sport <= self.sport[1]:
            return False
        return self.dport is None or self.dport[0] <= packet.dport <= self.dport[1]


@dataclass
class Replayer:
    """Feed frames in capture order with `frame`, then call `report` once, at the end.

    A flow's verdict is final when the flow ends: idle for its timeout by capture
    time, pushed out of the `max_flows` table (least recently seen first, as live),
    its 5-tuple reused, or the capture over. Ended flows go to `on_flow` and are
    forgotten, so memory does not grow with the capture; without a sink they are
    kept for `report` (small captures, tests).
    """

    policy: Policy
    max_flows: int = MAX_FLOWS
    seed: int | None = None  # fixes `probability` coins and jitter; None = random, as live
    on_flow: FlowSink | None = None
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("frames", "not_ip", "link_errors", "garbage", "not_tcp_udp", "ipv6_not_queued",
         "queued", "kernel_accepted", "kernel_dropped", "blackholed", "conntrack_invalid"), 0))

    def __post_init__(self) -> None:
        self.censor = Censor(self.policy, max_flows=self.max_flows, seed=self.seed, log=self._on_log)
        self._residual_rule: str | None = None
        self._last_flow: Flow | None = None
        self._record_lookups()
        self._static = tuple(_StaticMatcher.of(spec) for rule in self.policy.static_rules
                             for spec in static_drops(rule))
        # Flows not ended yet, least recently seen first (as flows.FlowTable).
        self._active: OrderedDict[FlowKey, _FlowRecord] = OrderedDict()
        self._kept: list[tuple[int, FlowVerdict]] = []  # ended flows, without an `on_flow` sink
        self._serial = 0
        self._ended = 0
        self._first_seen: float | None = None
        self._next_housekeeping: float | None = None
        self.notes: list[str] = []

    def frame(self, frame: Frame) -> None:
        self.counters["frames"] += 1
        try:
            raw = ip_packet(frame.link_type, frame.data)
        except LinkError as exc:
            self._note(frame, str(exc), "link_errors")
            return
        if raw is None:
            self.counters["not_ip"] += 1
            return
        self._housekeeping(frame.timestamp)
        try:
            packet = inet.parse_packet(raw)
        except ProtocolError as exc:
            # Never queued live: the kernel drops a broken IP header, and conntrack holds a
            # broken TCP/UDP header INVALID, which the chain accepts without Python.
            self._note(frame, f"garbage: {exc}", "garbage")
            return
        if packet.proto not in (inet.PROTO_TCP, inet.PROTO_UDP) or (packet.fragment and not packet.sport):
            self.counters["not_tcp_udp"] += 1
            if packet.version == 4:
                self._queue(raw, frame)
            return
        record = self._record(packet, frame, len(frame.data) - len(raw))
        if packet.version != 4:
            self.counters["ipv6_not_queued"] += 1
            return
        flags_invalid = packet.proto == inet.PROTO_TCP and packet.flags & ~_TCP_FLAGS_IGNORED not in _TCP_VALID_FLAGS
        if record.kernel_verdict is not None and not flags_invalid:  # no conntrack entry, no connmark
            self.counters["kernel_accepted" if record.kernel_verdict else "kernel_dropped"] += 1
            record.dropped += not record.kernel_verdict
            record.invalid_only = False
            return
        for static in self._static:
            if static.matches(packet):
                self.counters["blackholed"] += 1
                record.decide("blackhole-ip", static.rule, frame)
                # A flow whose opening is blackholed never opens: its later packets
                # (replies in a capture taken without the censor) would not exist.
                record.kernel_verdict = False
                record.dropped += 1
                record.invalid_only = False
                return
        # A RST or FIN when conntrack has no entry: nothing of the flow created one yet.
        if flags_invalid or (record.invalid_only and packet.proto == inet.PROTO_TCP
                             and packet.flags & (inet.RST | inet.FIN) and not packet.flags & inet.SYN):
            # The chain's `ctstate INVALID -> ACCEPT`: forwarded, never queued (iptables.py).
            self.counters["conntrack_invalid"] += 1
            return
        record.invalid_only = False
        if record.provisional and (packet.src, packet.sport) == record.server:
            # The penalty box dropped this flow's opening: the server's answers in a
            # capture taken without the censor would not exist. Client packets (a
            # retransmitted SYN) still go to the engine, which lets them by once time is up.
            record.residual_drops += 1
            record.dropped += 1
            return
        self._last_flow = None
        self._residual_rule = None
        decision = self._queue(raw, frame)
        if self._last_flow is not None:
            record.engine_flow = self._last_flow
        record.injected += len(decision.inject)
        if decision.action is not None:
            record.decide(decision.action, decision.rule, frame)
        elif self._residual_rule is not None:
            record.residual_drops += 1
            record.decide("drop", self._residual_rule, frame, provisional=True)
        if not decision.accept:
            record.dropped += 1
        if decision.hold_until is not None:
            record.held += 1
        if wants_repeat(decision.mark):  # verdict bits: the live censor hands the flow to the kernel here
            record.kernel_verdict = decision.accept

    @property
    def first_seen(self) -> float | None:
        """The earliest capture timestamp so far."""
        return self._first_seen

    def report(self, problem: str | None = None) -> ReplayReport:
        """End every flow still open (the capture is over) and sum up."""
        self._end_all(sorted(self._active.values(), key=lambda record: record.serial))
        flows = tuple(verdict for _, verdict in sorted(self._kept, key=lambda item: item[0]))
        return ReplayReport(self.policy.name, self.policy.sha256, flows, dict(self.counters),
                            self.censor.snapshot(), problem, tuple(self.notes), self._ended, self._first_seen)

    # --- internals -------------------------------------------------------------

    def _record_lookups(self) -> None:
        """Wrap the engine's flow-table lookup (on this instance only) to catch each packet's flow."""
        table = self.censor.flows
        lookup = table.lookup

        def recording_lookup(packet: inet.Packet, now: float) -> tuple[Flow, bool]:
            flow, from_client = lookup(packet, now)
            self._last_flow = flow
            return flow, from_client

        table.lookup = recording_lookup  # type: ignore[method-assign]

    def _on_log(self, event: dict[str, object]) -> None:
        # The engine names the rule of a penalty-box drop only in its decision log.
        if event.get("residual"):
            self._residual_rule = str(event.get("rule"))

    def _queue(self, raw: bytes, frame: Frame):  # type: ignore[no-untyped-def]
        self.counters["queued"] += 1
        return self.censor.handle(raw, now=frame.timestamp)

    def _record(self, packet: inet.Packet, frame: Frame, link_header: int) -> _FlowRecord:
        key = flow_key(packet)
        record = self._active.get(key)
        if record is not None and (record.idle(frame.timestamp) or opens_new_connection(packet, record.isn)):
            self._end_all([record])  # the 5-tuple was reused (after a timeout, or by a new SYN): a new flow
            record = None
        if record is None:
            while len(self._active) >= self.max_flows:  # evicted as the engine's own table evicts
                self._end_all([next(iter(self._active.values()))])
            self._serial += 1
            record = _FlowRecord(key, packet.proto_name, (packet.src, packet.sport), (packet.dst, packet.dport),
                                 frame.timestamp, frame.timestamp, packet.version, serial=self._serial)
            self._active[key] = record
        else:
            self._active.move_to_end(key)
        record.packets += 1
        record.bytes += frame.wire_length - link_header
        record.last_seen = max(record.last_seen, frame.timestamp)
        if packet.flags & (inet.FIN | inet.RST):
            record.closed = True
        if record.isn is None and is_bare_syn(packet):
            record.isn = packet.seq
        return record

    def _housekeeping(self, now: float) -> None:
        if self._first_seen is None or now < self._first_seen:
            self._first_seen = now
        if self._next_housekeeping is None or now >= self._next_housekeeping:
            self.censor.expire(now)
            self._end_all(self._idle(now))
            self._next_housekeeping = now + HOUSEKEEPING_INTERVAL

    def _idle(self, now: float) -> list[_FlowRecord]:
        """Flows idle for their timeout, oldest first; the walk stops where none can be."""
        idle = []
        for record in self._active.values():
            if now - record.last_seen < _SHORTEST_TIMEOUT:
                break
            if record.idle(now):
                idle.append(record)
        return sorted(idle, key=lambda record: record.serial)

    def _end_all(self, records: Iterable[_FlowRecord]) -> None:
        """These flows are over: their verdicts are final; hand them on and forget them."""
        for record in records:
            if self._active.get(record.key) is record:
                del self._active[record.key]
            self._ended += 1
            verdict = record.verdict()
            if self.on_flow is not None:
                self.on_flow(verdict)
            else:
                self._kept.append((record.serial, verdict))

    def _note(self, frame: Frame, message: str, counter: str) -> None:
        self.counters[counter] += 1
        if len(self.notes) < MAX_NOTES:
            self.notes.append(f"frame {frame.number}: {message}")


def replay_frames(frames: Iterable[Frame], policy: Policy, *, max_flows: int = MAX_FLOWS,
                  seed: int | None = None, on_flow: FlowSink | None = None) -> ReplayReport:
    replayer = Replayer(policy, max_flows, seed, on_flow)
    for frame in frames:
        replayer.frame(frame)
    return replayer.report()


def replay_capture(source: str | Path | BinaryIO, policy: Policy, *, max_flows: int = MAX_FLOWS,
                   seed: int | None = None, on_flow: FlowSink | None = None) -> ReplayReport:
    """Replay a pcap/pcapng file through `policy`; CaptureError if it is not a capture at all
    (OSError if it cannot be read). Damage part-way is reported in `problem`, never raised.
    With `on_flow`, each flow goes there as it ends and the report keeps none (bounded memory)."""
    reader = CaptureReader(source)
    replayer = Replayer(policy, max_flows, seed, on_flow)
    for frame in reader:
        replayer.frame(frame)
    return replayer.report(reader.problem)


# --- presentation ------------------------------------------------------------------


def describe_verdict(flow: FlowVerdict) -> str:
    """'reset by media-sni at packet 3', 'allowed', 'undecided (capture ended)', ..."""
    if flow.action == UNDECIDED:
        return "undecided (capture ended; accepted)"
    if flow.action == NOT_QUEUED:
        return "passed (IPv6 is not queued)"
    if flow.action == CONNTRACK_INVALID:
        return "passed by the kernel (conntrack INVALID: never queued)"
    if flow.action == "drop" and flow.residual_drops:
        return f"dropped by the penalty box of {flow.rule} from packet {flow.decided_packet}"
    if flow.action == "allow" and flow.rule is None:
        return f"allowed at packet {flow.decided_packet}"
    return f"{flow.action} by {flow.rule} at packet {flow.decided_packet}"


def _props_text(props: dict[str, Any]) -> str:
    shown = {k: v for k, v in props.items() if v not in (None, [], "")}
    return ", ".join(f"{k}={v}" for k, v in shown.items())


def render_table(report: ReplayReport) -> list[Any]:
    """Rich renderables: the flow table, then the summary lines."""
    start = min((f.first_seen for f in report.flows), default=0.0)
    title = f"policy {report.policy}: {len(report.flows)} flow(s)"
    return [flow_table(title, report.flows, start), *summary_lines(report)]


def flow_table(title: str, flows: Iterable[FlowVerdict], start: float) -> Any:
    """One Rich table of flows; times are relative to `start` (the capture's first packet)."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("flow", overflow="fold")
    table.add_column("time s", justify="right")
    table.add_column("pkts/bytes", justify="right")
    table.add_column("properties", overflow="fold")
    table.add_column("verdict", overflow="fold")
    table.add_column("dropped/injected", justify="right")
    for flow in flows:
        verdict = describe_verdict(flow)
        if flow.action not in ("allow", UNDECIDED, NOT_QUEUED, CONNTRACK_INVALID):
            verdict = f"[bold red]{verdict}[/]"
        table.add_row(
            f"{flow.proto} {flow.client} -> {flow.server}",
            f"+{flow.first_seen - start:.3f} ({flow.last_seen - flow.first_seen:.3f})",
            f"{flow.packets}/{flow.bytes}", _props_text(flow.props), verdict, f"{flow.dropped}/{flow.injected}",
        )
    return table


def summary_lines(report: ReplayReport) -> list[Any]:
    counters = ", ".join(f"{k} {v}" for k, v in report.counters.items() if v)
    lines: list[Any] = [f"frames: {counters}"]
    lines += [f"  {note}" for note in report.notes]
    if report.problem:
        lines.append(f"[bold yellow]capture damaged {report.problem}[/]")
    return lines
