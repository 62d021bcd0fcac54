"""IPv4/IPv6 + TCP/UDP headers: parse raw packets into facts, build packets to inject.

Sans-IO: bytes in, a frozen `Packet` out; bytes out for the censor's raw
socket. Hand-written with `struct` rather than scapy because this is the
censor's per-packet hot path: scapy's dissection costs ~100 µs a packet, which
alone would cap the censor near 10k packets/s [scapy-cost], while a
struct unpack costs a few µs.

Formats: IPv4 RFC 791, IPv6 RFC 8200 (§4 extension headers), TCP RFC 9293,
UDP RFC 768, the Internet checksum RFC 1071 with the pseudo-headers of
RFC 9293 §3.1 / RFC 8200 §8.1.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

from wallwatch.protocols.errors import ProtocolError

PROTO_TCP = 6
PROTO_UDP = 17
PROTO_NAMES = {PROTO_TCP: "tcp", PROTO_UDP: "udp", 1: "icmp", 58: "icmpv6"}

# TCP flag bits (RFC 9293 §3.1).
FIN, SYN, RST, PSH, ACK, URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20

# IPv6 extension headers that we walk past to reach TCP/UDP (RFC 8200 §4.1):
# hop-by-hop, routing, destination options. Fragment (44) is handled apart.
_IPV6_EXTENSIONS = frozenset({0, 43, 60})
_IPV6_FRAGMENT = 44
# A packet with more extension headers than this is garbage or an attack on
# the parser; real stacks send at most a couple (RFC 8200 §4.1 order).
_MAX_IPV6_EXTENSIONS = 8

# Linux's default IPv4 TTL (net.ipv4.ip_default_ttl); injected packets look ordinary.
DEFAULT_TTL = 64

_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_TCP = struct.Struct("!HHIIBBHHH")
_UDP = struct.Struct("!HHHH")


@dataclass(frozen=True, slots=True)
class Packet:
    """One IP packet as the censor sees it.

    For protocols other than TCP/UDP (and for IPv4 non-first fragments, which
    carry no transport header) ports are 0 and `payload` is the raw L4 bytes.
    `truncated` means the capture holds fewer bytes than the IP length says
    (netfilterqueue copies at most ~4 KiB); `payload` is then the captured prefix.
    """

    version: int
    src: str
    dst: str
    proto: int
    sport: int
    dport: int
    ttl: int
    payload: bytes
    flags: int = 0
    seq: int = 0
    ack: int = 0
    window: int = 0
    fragment: bool = False
    truncated: bool = False

    @property
    def proto_name(self) -> str:
        return PROTO_NAMES.get(self.proto, str(self.proto))

    def has(self, flag: int) -> bool:
        return bool(self.flags & flag)

    @property
    def seq_length(self) -> int:
        """Sequence space this segment uses: payload plus one each for SYN and FIN."""
        return len(self.payload) + (1 if self.flags & SYN else 0) + (1 if self.flags & FIN else 0)


# --- parsing ----------------------------------------------------------------


def parse_packet(data: bytes) -> Packet:
    """Parse one IP packet (no link-layer header); raise ProtocolError on garbage."""
    if not data:
        raise ProtocolError("empty packet")
    version = data[0] >> 4
    if version == 4:
        return _parse_ipv4(data)
    if version == 6:
        return _parse_ipv6(data)
    raise ProtocolError(f"IP version {version} is neither 4 nor 6")


def _parse_ipv4(data: bytes) -> Packet:
    if len(data) < 20:
        raise ProtocolError(f"IPv4 header needs 20 bytes, got {len(data)}")
    ver_ihl, _tos, total_length, _ident, frag, ttl, proto, _csum, src, dst = _IPV4.unpack_from(data)
    header_length = (ver_ihl & 0x0F) * 4
    if header_length < 20:
        raise ProtocolError(f"IPv4 header length {header_length} < 20")
    if total_length < header_length:
        raise ProtocolError(f"IPv4 total length {total_length} < header length {header_length}")
    if len(data) < header_length:
        raise ProtocolError("IPv4 options cut short")
    truncated = len(data) < total_length
    body = data[header_length:total_length]
    fragment_offset = frag & 0x1FFF
    more_fragments = bool(frag & 0x2000)
    return _parse_transport(
        4, socket.inet_ntop(socket.AF_INET, src), socket.inet_ntop(socket.AF_INET, dst),
        proto, ttl, body, first_fragment=fragment_offset == 0,
        fragment=more_fragments or fragment_offset != 0, truncated=truncated,
    )


def _parse_ipv6(data: bytes) -> Packet:
    if len(data) < 40:
        raise ProtocolError(f"IPv6 header needs 40 bytes, got {len(data)}")
    _vtf, payload_length, next_header, hop_limit, src, dst = _IPV6.unpack_from(data)
    end = 40 + payload_length
    truncated = len(data) < end
    body = data[40:end]
    first_fragment, fragment = True, False
    for _ in range(_MAX_IPV6_EXTENSIONS):
        if next_header in _IPV6_EXTENSIONS:
            if len(body) < 8:
                raise ProtocolError("IPv6 extension header cut short")
            length = (body[1] + 1) * 8
            if len(body) < length:
                raise ProtocolError("IPv6 extension header cut short")
            next_header, body = body[0], body[length:]
        elif next_header == _IPV6_FRAGMENT:
            if len(body) < 8:
                raise ProtocolError("IPv6 fragment header cut short")
            offset_flags = struct.unpack_from("!H", body, 2)[0]
            first_fragment = (offset_flags >> 3) == 0
            fragment = True
            next_header, body = body[0], body[8:]
        else:
            break
    else:
        raise ProtocolError("too many IPv6 extension headers")
    return _parse_transport(
        6, _ipv6_text(src), _ipv6_text(dst),
        next_header, hop_limit, body, first_fragment=first_fragment, fragment=fragment,
        truncated=truncated,
    )


def _ipv6_text(address: bytes) -> str:
    # RFC 5952 text; inet_ntop would print some addresses in the deprecated
    # IPv4-compatible form (::0.1.0.0), which no rule author writes.
    return str(ipaddress.IPv6Address(address))


def _parse_transport(
    version: int, src: str, dst: str, proto: int, ttl: int, body: bytes,
    *, first_fragment: bool, fragment: bool, truncated: bool,
) -> Packet:
    if proto == PROTO_TCP and first_fragment:
        if len(body) < 20:
            raise ProtocolError(f"TCP header needs 20 bytes, got {len(body)}")
        sport, dport, seq, ack, offset_byte, flags, window, _csum, _urg = _TCP.unpack_from(body)
        data_offset = (offset_byte >> 4) * 4
        if data_offset < 20 or data_offset > len(body):
            raise ProtocolError(f"TCP data offset {data_offset} out of range")
        return Packet(version, src, dst, proto, sport, dport, ttl, body[data_offset:],
                      flags, seq, ack, window, fragment, truncated)
    if proto == PROTO_UDP and first_fragment:
        if len(body) < 8:
            raise ProtocolError(f"UDP header needs 8 bytes, got {len(body)}")
        sport, dport, length, _csum = _UDP.unpack_from(body)
        if length < 8:
            raise ProtocolError(f"UDP length {length} < 8")
        return Packet(version, src, dst, proto, sport, dport, ttl, body[8:length],
                      fragment=fragment, truncated=truncated)
    return Packet(version, src, dst, proto, 0, 0, ttl, body, fragment=fragment, truncated=truncated)


# --- checksums and building -------------------------------------------------


def internet_checksum(data: bytes) -> int:
    """RFC 1071 one's-complement sum of 16-bit words, complemented."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _address_bytes(address: str) -> tuple[int, bytes]:
    try:
        return 4, socket.inet_pton(socket.AF_INET, address)
    except OSError:
        pass
    try:
        return 6, socket.inet_pton(socket.AF_INET6, address)
    except OSError:
        raise ProtocolError(f"not an IP address: {address!r}") from None


def _ip_packet(src: str, dst: str, proto: int, segment_without_checksum: bytes,
               checksum_offset: int, ttl: int) -> bytes:
    """Wrap a transport segment in an IP header, filling in the transport checksum."""
    version, src_bytes = _address_bytes(src)
    dst_version, dst_bytes = _address_bytes(dst)
    if version != dst_version:
        raise ProtocolError(f"address families differ: {src} -> {dst}")
    length = len(segment_without_checksum)
    if version == 4:
        pseudo = src_bytes + dst_bytes + struct.pack("!BBH", 0, proto, length)
    else:
        pseudo = src_bytes + dst_bytes + struct.pack("!IxxxB", length, proto)
    checksum = internet_checksum(pseudo + segment_without_checksum)
    if proto == PROTO_UDP and checksum == 0:
        checksum = 0xFFFF  # RFC 768: a computed zero is sent as all ones
    segment = (segment_without_checksum[:checksum_offset] + struct.pack("!H", checksum)
               + segment_without_checksum[checksum_offset + 2:])
    if version == 6:
        return struct.pack("!IHBB", 6 << 28, length, proto, ttl) + src_bytes + dst_bytes + segment
    header = _IPV4.pack(0x45, 0, 20 + length, 0, 0x4000, ttl, proto, 0, src_bytes, dst_bytes)
    header = header[:10] + struct.pack("!H", internet_checksum(header)) + header[12:]
    return header + segment


def build_tcp(src: str, dst: str, sport: int, dport: int, *, seq: int, ack: int = 0,
              flags: int = ACK, window: int = 0, payload: bytes = b"", ttl: int = DEFAULT_TTL) -> bytes:
    """A complete IPv4/IPv6 TCP packet with correct checksums (no TCP options)."""
    segment = _TCP.pack(sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags,
                        window, 0, 0) + payload
    return _ip_packet(src, dst, PROTO_TCP, segment, 16, ttl)


def build_tcp_rst(src: str, dst: str, sport: int, dport: int, *, seq: int, ack: int | None = None,
                  ttl: int = DEFAULT_TTL) -> bytes:
    """A RST (RST+ACK when `ack` is given) as an on-path injector sends it.

    RFC 5961 §3.2: the receiver acts on a RST only if its seq equals rcv_nxt,
    so the caller must pass the exact next sequence number of that direction.
    """
    flags = RST | ACK if ack is not None else RST
    return build_tcp(src, dst, sport, dport, seq=seq, ack=ack or 0, flags=flags, ttl=ttl)


def build_udp(src: str, dst: str, sport: int, dport: int, payload: bytes, *, ttl: int = DEFAULT_TTL) -> bytes:
    """A complete IPv4/IPv6 UDP datagram with correct checksums."""
    segment = _UDP.pack(sport, dport, 8 + len(payload), 0) + payload
    return _ip_packet(src, dst, PROTO_UDP, segment, 6, ttl)


def verify_checksums(data: bytes) -> bool:
    """True when the IPv4 header checksum and the TCP/UDP checksum are both correct."""
    packet = parse_packet(data)
    if packet.version == 4:
        header_length = (data[0] & 0x0F) * 4
        if internet_checksum(data[:header_length]) != 0:
            return False
        total = struct.unpack_from("!H", data, 2)[0]
        segment = data[header_length:total]
    else:
        segment = data[40:40 + struct.unpack_from("!H", data, 4)[0]]
    if packet.proto not in (PROTO_TCP, PROTO_UDP):
        return True
    _, src = _address_bytes(packet.src)
    _, dst = _address_bytes(packet.dst)
    if packet.version == 4:
        pseudo = src + dst + struct.pack("!BBH", 0, packet.proto, len(segment))
    else:
        pseudo = src + dst + struct.pack("!IxxxB", len(segment), packet.proto)
    return internet_checksum(pseudo + segment) == 0
