"""Flow tracking: per-flow state keyed by the direction-normalised 5-tuple.

The client is the flow's initiator (the sender of the first packet seen, the
SYN for TCP). For TCP the client->server payload is reassembled in order up
to `STREAM_LIMIT` bytes for the analyzers, and both directions' next sequence
numbers are tracked so injected RSTs carry the exact seq each end expects
(RFC 5961 §3.2: Linux acts on a RST only when seq == rcv_nxt).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

from wallwatch.censor.analyzers.base import STREAM_LIMIT, Analyzer
from wallwatch.protocols.inet import ACK, FIN, PROTO_TCP, RST, SYN, Packet

# Idle timeouts. TCP: OpenGFW's 10 minutes (engine/worker.go). UDP: 60 s, the
# time the GFW tracks a UDP 4-tuple [Zohaib2025].
# A TCP flow that saw FIN or RST lingers briefly for its last packets.
TCP_IDLE_TIMEOUT = 600.0
UDP_IDLE_TIMEOUT = 60.0
CLOSED_TCP_TIMEOUT = 10.0
# Bounded table: least recently seen flows are evicted first. 65,536 flows of
# a few KiB each stay well under the memory of a lab VM.
MAX_FLOWS = 65536
# Out-of-order TCP segments kept while waiting for a gap to fill.
MAX_PENDING_SEGMENTS = 32

_SEQ_MOD = 1 << 32
_HALF = 1 << 31

Endpoint = tuple[str, int]
FlowKey = tuple[int, Endpoint, Endpoint]


def seq_after(a: int, b: int) -> bool:
    """a > b in sequence space (RFC 1982-style serial arithmetic)."""
    return 0 < (a - b) % _SEQ_MOD < _HALF


def is_bare_syn(packet: Packet) -> bool:
    """A TCP SYN without ACK: a client opening a connection (or resending its opening)."""
    return packet.proto == PROTO_TCP and packet.flags & (SYN | ACK) == SYN


def opens_new_connection(packet: Packet, isn: int | None) -> bool:
    """A SYN (without ACK) that is not the tracked connection's own SYN again (`isn`): a new
    connection on the same 5-tuple (a reused source port, RFC 9293 §3.4.1), to be judged
    afresh rather than inherit the old connection's verdict and stream state."""
    return is_bare_syn(packet) and packet.seq != isn


def flow_key(packet: Packet) -> FlowKey:
    a, b = (packet.src, packet.sport), (packet.dst, packet.dport)
    return (packet.proto, a, b) if a <= b else (packet.proto, b, a)


class StreamBuffer:
    """In-order reassembly of one direction's payload, up to `limit` bytes."""

    __slots__ = ("next_seq", "delivered", "limit", "_pending")

    def __init__(self, limit: int = STREAM_LIMIT) -> None:
        self.next_seq: int | None = None
        self.delivered = 0
        self.limit = limit
        self._pending: dict[int, bytes] = {}

    @property
    def full(self) -> bool:
        return self.delivered >= self.limit

    def start(self, isn: int) -> None:
        """A SYN: data starts at isn + 1."""
        if self.next_seq is None:
            self.next_seq = (isn + 1) % _SEQ_MOD

    def push(self, seq: int, payload: bytes) -> bytes:
        """Add a segment; return the bytes that became contiguous (possibly b"")."""
        if not payload or self.full:
            return b""
        if self.next_seq is None:  # picked up mid-stream: trust the first segment
            self.next_seq = seq
        out = bytearray()
        self._accept(seq, payload, out)
        while self._pending and not self.full:
            ready = [s for s in self._pending if not seq_after(s, self.next_seq)]
            if not ready:
                break
            for s in ready:
                self._accept(s, self._pending.pop(s), out)
        return bytes(out)

    def _accept(self, seq: int, payload: bytes, out: bytearray) -> None:
        assert self.next_seq is not None
        offset = (self.next_seq - seq) % _SEQ_MOD
        if offset >= _HALF:  # a gap before this segment: keep it for later
            if len(self._pending) < MAX_PENDING_SEGMENTS:
                self._pending[seq] = payload
            return
        if offset >= len(payload):  # a pure retransmission
            return
        fresh = payload[offset:][: self.limit - self.delivered]
        out += fresh
        self.delivered += len(fresh)
        self.next_seq = (self.next_seq + len(fresh)) % _SEQ_MOD


@dataclass(slots=True, eq=False)
class Flow:
    """What the censor knows about one flow."""

    key: FlowKey
    proto: str
    client: Endpoint
    server: Endpoint
    first_seen: float
    last_seen: float
    props: dict[str, object] = field(default_factory=dict)
    analyzers: list[Analyzer] = field(default_factory=list)
    # Properties some live analyzer may still provide.
    pending_keys: set[str] = field(default_factory=set)
    verdict: str | None = None  # action name once decided
    rule: str | None = None
    generation: int = 0  # policy generation the verdict was made under
    stream: StreamBuffer = field(default_factory=StreamBuffer)
    isn: int | None = None  # the client's SYN sequence number: tells a retransmission from a new connection
    client_next_seq: int | None = None
    server_next_seq: int | None = None
    packets: int = 0
    packets_after_decision: int = 0
    closed: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def is_from_client(self, packet: Packet) -> bool:
        return packet.src == self.client[0] and packet.sport == self.client[1]

    def track_tcp(self, packet: Packet, from_client: bool) -> bytes:
        """Update sequence tracking; return newly in-order client->server bytes."""
        end = (packet.seq + packet.seq_length) % _SEQ_MOD
        if from_client:
            if self.client_next_seq is None or seq_after(end, self.client_next_seq):
                self.client_next_seq = end
            if packet.flags & SYN:
                self.stream.start(packet.seq)
                if self.isn is None:
                    self.isn = packet.seq
        elif self.server_next_seq is None or seq_after(end, self.server_next_seq):
            self.server_next_seq = end
        if packet.flags & (FIN | RST):
            self.closed = True
        return self.stream.push(packet.seq, packet.payload) if from_client else b""

    def timeout(self) -> float:
        if self.proto == "tcp":
            return CLOSED_TCP_TIMEOUT if self.closed else TCP_IDLE_TIMEOUT
        return UDP_IDLE_TIMEOUT


class FlowTable:
    """Flows by normalised key, least recently seen first, bounded."""

    def __init__(self, max_flows: int = MAX_FLOWS) -> None:
        self.max_flows = max_flows
        self._flows: OrderedDict[FlowKey, Flow] = OrderedDict()
        # Called with each flow that leaves the table (expired, evicted, forgotten).
        self.on_remove: Callable[[Flow], None] | None = None
        self.created = 0
        self.evicted = 0
        self.expired = 0
        self.reopened = 0  # tracked flows replaced by a new connection on the same 5-tuple

    def __len__(self) -> int:
        return len(self._flows)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self._flows.values()))

    def lookup(self, packet: Packet, now: float) -> tuple[Flow, bool]:
        """The packet's flow (created if new) and whether the packet is client->server."""
        key = flow_key(packet)
        flow = self._flows.get(key)
        if flow is not None and opens_new_connection(packet, flow.isn):
            self.forget(flow)
            self.reopened += 1
            flow = None
        if flow is None:
            flow = self._insert(Flow(key, packet.proto_name, (packet.src, packet.sport), (packet.dst, packet.dport),
                                     now, now))
        else:
            self._flows.move_to_end(key)
        flow.last_seen = now
        flow.packets += 1
        return flow, flow.is_from_client(packet)

    def forget(self, flow: Flow) -> None:
        """Remove a flow now (its next packet starts a new one)."""
        if self._flows.pop(flow.key, None) is not None and self.on_remove is not None:
            self.on_remove(flow)

    def renew(self, flow: Flow, now: float) -> Flow:
        """Replace `flow` by a fresh one with the same key and orientation, its current packet
        counted: what a datagram flow decided under an older policy becomes (engine.handle)."""
        self.forget(flow)
        return self._insert(Flow(flow.key, flow.proto, flow.client, flow.server, now, now, packets=1))

    def touch(self, flow: Flow, now: float) -> None:
        """A packet of a known flow seen without `lookup` (the engine's fast path)."""
        self._flows.move_to_end(flow.key)
        flow.last_seen = now
        flow.packets += 1

    def _insert(self, flow: Flow) -> Flow:
        """Add a new flow, evicting the least recently seen ones beyond `max_flows`."""
        while len(self._flows) >= self.max_flows:
            _, evicted = self._flows.popitem(last=False)
            self.evicted += 1
            if self.on_remove is not None:
                self.on_remove(evicted)
        self._flows[flow.key] = flow
        self.created += 1
        return flow

    def expire(self, now: float) -> int:
        """Drop idle flows (a full scan: timeouts differ per flow; called about once a second)."""
        stale = [key for key, flow in self._flows.items() if now - flow.last_seen >= flow.timeout()]
        for key in stale:
            flow = self._flows.pop(key)
            if self.on_remove is not None:
                self.on_remove(flow)
        removed = len(stale)
        self.expired += removed
        return removed
