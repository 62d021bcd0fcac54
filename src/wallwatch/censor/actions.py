"""Actions: what the censor does to a packet and its flow once a rule matched.

Building the outcome is sans-IO (`Decision` + the packets to inject); only
`Injector` touches the network, through raw sockets opened once at start
(IP_HDRINCL), since opening a socket per packet (scapy's `send()`) costs more
than the whole verdict [scapy-cost].
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from wallwatch.censor.flows import Flow
from wallwatch.censor.policy import Rule
from wallwatch.protocols import dns as dns_codec
from wallwatch.protocols import inet
from wallwatch.protocols.errors import ProtocolError

# Packet marks for the mark+repeat offload (see nfqueue.py). The verdict sits
# in bits 16-17 and the policy generation in bits 18-23 so a reload can
# retire every old verdict at once by changing which marks the kernel trusts.
MARK_SHIFT = 16
MARK_MASK = 0xFF << MARK_SHIFT
VERDICT_ALLOW = 1
VERDICT_DROP = 2
_GENERATIONS = 63
# A throttled flow's htb class (1..200, policy.Throttle.htb_class) sits in
# bits 24-31: saved to the connmark with the verdict, restored in mangle
# POSTROUTING, where CLASSIFY picks the class (iptables.py, shaping.py).
CLASS_SHIFT = 24
CLASS_MASK = 0xFF << CLASS_SHIFT
SAVE_MASK = MARK_MASK | CLASS_MASK


def offload_mark(generation: int, verdict: int) -> int:
    return ((((generation % _GENERATIONS) + 1) << 2 | verdict) << MARK_SHIFT) & MARK_MASK


def class_mark(htb_class: int) -> int:
    return (htb_class << CLASS_SHIFT) & CLASS_MASK


def wants_repeat(mark: int) -> bool:
    """A mark carrying a verdict goes back through FORWARD (NF_REPEAT) to be saved and offloaded;
    a mark with only a class (a delayed flow, kept in Python) is set and the packet accepted."""
    return bool(mark & MARK_MASK)


@dataclass(frozen=True, slots=True)
class Injection:
    """One forged packet, and the address the raw socket sends it to."""

    dst: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict for one queued packet.

    `mark` with verdict bits (`wants_repeat`) means "set this mark and
    repeat": the kernel saves it to the connmark and handles the rest of the
    flow itself; class bits alone are set on the packet, which is accepted.
    `inject` is sent before the verdict is given, so a forged DNS answer beats
    the real one. `hold_until` (same clock as `Censor.handle`'s `now`) asks
    the service to give the verdict only then: userspace delay, since this
    kernel has no netem.
    """

    accept: bool
    mark: int = 0
    inject: tuple[Injection, ...] = ()
    rule: str | None = None
    action: str | None = None
    hold_until: float | None = None


ACCEPT = Decision(True)
DROP = Decision(False)


def reset_injections(flow: Flow, packet: inet.Packet, from_client: bool, count: int) -> tuple[Injection, ...]:
    """`count` RSTs toward each end, with the sequence number that end expects next.

    The triggering packet is dropped, so its sender's peer still expects the
    trigger's own seq; the other direction uses the tracked next seq (or the
    trigger's ack). GFW RSTs of 2023 repeat one seq (net4people/bbs#285).
    """
    trigger_end = (packet.seq + packet.seq_length) % (1 << 32)
    peer_next = flow.client_next_seq if not from_client else flow.server_next_seq
    if peer_next is None:
        peer_next = packet.ack if packet.flags & inet.ACK else 0
    # Packet to the trigger's sender (spoofed from its peer) and to the peer (spoofed from the sender).
    to_sender = inet.build_tcp_rst(packet.dst, packet.src, packet.dport, packet.sport,
                                   seq=peer_next, ack=trigger_end)
    to_peer = inet.build_tcp_rst(packet.src, packet.dst, packet.sport, packet.dport,
                                 seq=packet.seq, ack=peer_next)
    return (Injection(packet.src, to_sender),) * count + (Injection(packet.dst, to_peer),) * count


# An injected segment's payload: well under the lab's and the internet's 1500-byte MTU.
_SEGMENT_BYTES = 1400
_WINDOW = 65535


def blockpage_response(rule: Rule) -> bytes:
    """The HTTP/1.1 response a `blockpage` rule serves (RFC 9112 §4): a status line, the page's type and
    length, nothing more (injectors send the least that a browser shows); the FIN after it closes."""
    from http import HTTPStatus

    body = rule.page.encode()
    try:
        reason = HTTPStatus(rule.status).phrase
    except ValueError:
        reason = "Blocked"
    head = (f"HTTP/1.1 {rule.status} {reason}\r\nContent-Type: text/html; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


def blockpage_injections(flow: Flow, packet: inet.Packet, rule: Rule) -> tuple[Injection, ...]:
    """A block page in the server's place, as on-path injectors serve them: the request is
    dropped, the client gets the page (spoofed from the server, in sequence, ending with FIN),
    and the server a RST so it forgets the request it never saw complete."""
    request_end = (packet.seq + packet.seq_length) % (1 << 32)
    server_seq = flow.server_next_seq if flow.server_next_seq is not None else packet.ack
    data = blockpage_response(rule)
    segments: list[Injection] = []
    for offset in range(0, len(data), _SEGMENT_BYTES):
        chunk = data[offset:offset + _SEGMENT_BYTES]
        last = offset + _SEGMENT_BYTES >= len(data)
        flags = inet.ACK | inet.PSH | (inet.FIN if last else 0)
        segments.append(Injection(packet.src, inet.build_tcp(
            packet.dst, packet.src, packet.dport, packet.sport, seq=server_seq + offset, ack=request_end,
            flags=flags, window=_WINDOW, payload=chunk)))
    to_server = inet.build_tcp_rst(packet.src, packet.dst, packet.sport, packet.dport, seq=packet.seq)
    return (*segments, Injection(packet.dst, to_server))


def dns_injection(packet: inet.Packet, rule: Rule) -> Injection | None:
    """A forged answer to the query in `packet`, spoofed from the resolver it asked."""
    try:
        answer = dns_codec.build_response(packet.payload, rule.answer, ttl=rule.ttl)
    except ProtocolError:
        return None
    forged = inet.build_udp(packet.dst, packet.src, packet.dport, packet.sport, answer)
    return Injection(packet.src, forged)


class Injector:
    """Raw IPv4/IPv6 sockets with our own headers, opened once."""

    def __init__(self) -> None:
        # IPPROTO_RAW implies IP_HDRINCL (raw(7)); for IPv6 it implies IPV6_HDRINCL (Linux >= 4.5).
        self._v4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        try:
            self._v6: socket.socket | None = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
        except OSError:
            self._v6 = None
        self.sent = 0
        self.errors = 0

    def send(self, injections: tuple[Injection, ...]) -> None:
        for injection in injections:
            sock = self._v6 if ":" in injection.dst else self._v4
            try:
                if sock is None:
                    raise OSError("no IPv6 raw socket")
                sock.sendto(injection.data, (injection.dst, 0))
                self.sent += 1
            except OSError:
                self.errors += 1

    def close(self) -> None:
        self._v4.close()
        if self._v6 is not None:
            self._v6.close()
