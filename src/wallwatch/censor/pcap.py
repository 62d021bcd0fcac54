"""Packet captures, sans-IO: pcap/pcapng bytes in, frames and IP packets out.

Hand-written with `struct` rather than a library: the two container formats
and the four link headers we need fit in this file, the decoder never holds
more than one record in memory however large the capture, and a damaged
capture must yield every frame before the damage plus a clear account of
what was lost (dpkt raises on a cut record; scapy would also cost ~100 µs a
packet, [scapy-cost]). The IP packets themselves are parsed by
`protocols.inet`, the censor's own parser, so replay and the live censor
read packets identically.

Formats: classic libpcap (https://www.tcpdump.org/manpages/pcap-savefile.5.html,
µs and ns magics, either byte order); pcapng (RFC draft-ietf-opsawg-pcapng:
SHB, IDB with if_tsresol, EPB, SPB); link types from
https://www.tcpdump.org/linktypes.html.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from wallwatch.protocols.errors import ProtocolError

# --- link types (LINKTYPE_* values as stored in capture files) -----------------

LINKTYPE_NULL = 0  # BSD loopback: 4-byte address family in host byte order
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101  # raw IPv4/IPv6; some old files store DLT_RAW as 12 or 14
LINKTYPE_LINUX_SLL = 113  # `tcpdump -i any` before libpcap 1.10
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276  # `tcpdump -i any` since libpcap 1.10
_RAW_LINK_TYPES = frozenset({LINKTYPE_RAW, 12, 14, LINKTYPE_IPV4, LINKTYPE_IPV6})
SUPPORTED_LINK_TYPES = frozenset({LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2}
                                 | _RAW_LINK_TYPES)

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
# 802.1Q and 802.1ad (QinQ) tags sit between the MACs and the real ethertype.
_VLAN_ETHERTYPES = frozenset({0x8100, 0x88A8, 0x9100})
_MAX_VLAN_TAGS = 2

# --- container formats -------------------------------------------------------------

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BYTE_ORDER_MAGIC = 0x1A2B3C4D
_PCAPNG_IDB, _PCAPNG_SPB, _PCAPNG_EPB = 1, 3, 6
_IF_TSRESOL = 9  # IDB option: timestamp resolution

# libpcap refuses snapshot lengths above 256 KiB (MAXIMUM_SNAPLEN); a record
# claiming more is corruption, not a big packet, and must not make us buffer
# gigabytes. pcapng blocks get the same bound plus room for options.
MAX_RECORD = 262144
MAX_BLOCK = MAX_RECORD + 65536


class CaptureError(ProtocolError):
    """The bytes are not a capture this module can read (nothing was decoded)."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One captured frame: link-layer bytes as stored, and when it was seen."""

    number: int  # 1-based, as tcpdump -r and Wireshark count
    timestamp: float  # seconds since the epoch
    link_type: int
    data: bytes  # the captured bytes (may be cut short by the snapshot length)
    wire_length: int  # the frame's length on the wire


class CaptureDecoder:
    """Incremental pcap/pcapng decoder: `feed` bytes, get frames; `finish` at EOF.

    Damage never raises once the format is known: decoding stops and
    `problem` says where and why, and the frames before it are kept.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._offset = 0  # file offset of _buffer[0]
        self._format: str | None = None  # "pcap" | "pcapng"
        self._endian = "<"
        self._ns = False
        self._link_type = 0
        self._interfaces: list[tuple[int, float, int]] = []  # pcapng: (link type, tick seconds, snaplen)
        self.frames = 0
        self.problem: str | None = None

    @property
    def format(self) -> str | None:
        return self._format

    def feed(self, data: bytes) -> list[Frame]:
        if self.problem is not None:
            return []
        self._buffer += data
        if self._format is None and not self._read_file_header():
            return []
        out: list[Frame] = []
        read = self._next_pcap if self._format == "pcap" else self._next_pcapng
        while self.problem is None:
            frame = read()
            if frame is None:
                break
            out.append(frame)
        return out

    def finish(self) -> str | None:
        """End of input: note a partial trailing record; returns `problem`."""
        if self.problem is None and self._format is None:
            raise CaptureError(f"not a pcap or pcapng file: only {len(self._buffer)} byte(s)")
        if self.problem is None and self._buffer:
            self._fail(f"capture cut short: {len(self._buffer)} trailing byte(s) of an incomplete record")
        return self.problem

    # --- shared ---------------------------------------------------------------

    def _fail(self, reason: str) -> None:
        self.problem = f"at byte {self._offset} (after frame {self.frames}): {reason}"
        self._buffer.clear()

    def _consume(self, size: int) -> bytes:
        chunk = bytes(self._buffer[:size])
        del self._buffer[:size]
        self._offset += size
        return chunk

    def _frame(self, timestamp: float, link_type: int, data: bytes, wire_length: int) -> Frame:
        self.frames += 1
        return Frame(self.frames, timestamp, link_type, data, max(wire_length, len(data)))

    def _read_file_header(self) -> bool:
        if len(self._buffer) < 4:
            return False
        magic_le = struct.unpack_from("<I", self._buffer)[0]
        magic_be = struct.unpack_from(">I", self._buffer)[0]
        if magic_le == PCAPNG_SHB:  # palindromic: the SHB itself gives the byte order
            self._format = "pcapng"
            return True
        for endian, magic in (("<", magic_le), (">", magic_be)):
            if magic in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
                if len(self._buffer) < 24:
                    return False
                self._endian, self._ns = endian, magic == PCAP_MAGIC_NS
                # The link type's upper 16 bits carry FCS information (pcap-savefile(5)).
                self._link_type = struct.unpack_from(endian + "I", self._buffer, 20)[0] & 0xFFFF
                self._consume(24)
                self._format = "pcap"
                return True
        raise CaptureError(f"not a pcap or pcapng file (magic 0x{magic_be:08x})")

    # --- classic pcap ------------------------------------------------------------

    def _next_pcap(self) -> Frame | None:
        if len(self._buffer) < 16:
            return None
        seconds, fraction, captured, wire = struct.unpack_from(self._endian + "IIII", self._buffer)
        if captured > MAX_RECORD:
            self._fail(f"record claims {captured} captured bytes (corrupt header; max {MAX_RECORD})")
            return None
        if len(self._buffer) < 16 + captured:
            return None
        record = self._consume(16 + captured)
        timestamp = seconds + fraction / (1e9 if self._ns else 1e6)
        return self._frame(timestamp, self._link_type, record[16:], wire)

    # --- pcapng -----------------------------------------------------------------

    def _next_pcapng(self) -> Frame | None:
        while True:
            if len(self._buffer) < 12:
                return None
            block_type = struct.unpack_from(self._endian + "I", self._buffer)[0]
            if block_type == PCAPNG_SHB:
                order = struct.unpack_from("<I", self._buffer, 8)[0]
                if order == PCAPNG_BYTE_ORDER_MAGIC:
                    self._endian = "<"
                elif order == struct.unpack(">I", struct.pack("<I", PCAPNG_BYTE_ORDER_MAGIC))[0]:
                    self._endian = ">"
                else:
                    self._fail(f"pcapng section header has a bad byte-order magic 0x{order:08x}")
                    return None
                self._interfaces = []  # interface ids are per section
            length = struct.unpack_from(self._endian + "I", self._buffer, 4)[0]
            if length < 12 or length % 4 or length > MAX_BLOCK:
                self._fail(f"pcapng block of type 0x{block_type:08x} has a bad length {length}")
                return None
            if len(self._buffer) < length:
                return None
            block = self._consume(length)
            frame = self._pcapng_block(block_type, block[8:length - 4])
            if frame is not None or self.problem is not None:
                return frame

    def _pcapng_block(self, block_type: int, body: bytes) -> Frame | None:
        e = self._endian
        if block_type == _PCAPNG_IDB and len(body) >= 8:
            link_type, _reserved, snaplen = struct.unpack_from(e + "HHI", body)
            self._interfaces.append((link_type, _tsresol(body[8:], e), snaplen))
        elif block_type == _PCAPNG_EPB and len(body) >= 20:
            interface, high, low, captured, wire = struct.unpack_from(e + "IIIII", body)
            if interface >= len(self._interfaces) or 20 + captured > len(body):
                self._fail(f"enhanced packet block names interface {interface} or overruns its block")
                return None
            link_type, tick, _ = self._interfaces[interface]
            return self._frame(((high << 32) | low) * tick, link_type, body[20:20 + captured], wire)
        elif block_type == _PCAPNG_SPB and len(body) >= 4:
            if not self._interfaces:
                self._fail("simple packet block before any interface description")
                return None
            link_type, _, snaplen = self._interfaces[0]
            wire = struct.unpack_from(e + "I", body)[0]
            captured = min(wire, snaplen or wire, len(body) - 4)
            return self._frame(0.0, link_type, body[4:4 + captured], wire)  # an SPB has no timestamp
        return None  # name resolution, statistics, custom blocks: not packets


def _tsresol(options: bytes, endian: str) -> float:
    """Seconds per timestamp tick from an IDB's options (default 10^-6)."""
    position = 0
    while position + 4 <= len(options):
        code, length = struct.unpack_from(endian + "HH", options, position)
        if code == 0:
            break
        if code == _IF_TSRESOL and length >= 1:
            value = options[position + 4]
            return 2.0 ** -(value & 0x7F) if value & 0x80 else 10.0 ** -value
        position += 4 + (length + 3) // 4 * 4
    return 1e-6


class CaptureReader:
    """Iterate a capture file's frames; afterwards `problem` says what (if anything) was lost."""

    def __init__(self, source: str | Path | BinaryIO, *, chunk_size: int = 1 << 16) -> None:
        self.source = source
        self.chunk_size = chunk_size
        self.decoder = CaptureDecoder()
        self.problem: str | None = None

    def __iter__(self) -> Iterator[Frame]:
        if isinstance(self.source, (str, Path)):
            with open(self.source, "rb") as stream:
                yield from self._frames(stream)
        else:
            yield from self._frames(self.source)

    def _frames(self, stream: BinaryIO) -> Iterator[Frame]:
        while chunk := stream.read(self.chunk_size):
            yield from self.decoder.feed(chunk)
            if self.decoder.problem is not None:
                break
        self.problem = self.decoder.finish()


# --- link layers -------------------------------------------------------------------


class LinkError(ProtocolError):
    """A frame whose link-layer header is cut short or of a type we cannot read."""


def ip_packet(link_type: int, data: bytes) -> bytes | None:
    """The IP packet inside a frame; None when the frame carries something else (ARP, ...)."""
    if link_type in _RAW_LINK_TYPES:
        return data
    if link_type == LINKTYPE_ETHERNET:
        return _ethernet(data)
    if link_type == LINKTYPE_LINUX_SLL:
        if len(data) < 16:
            raise LinkError(f"Linux cooked header needs 16 bytes, got {len(data)}")
        return _by_ethertype(struct.unpack_from("!H", data, 14)[0], data[16:])
    if link_type == LINKTYPE_LINUX_SLL2:
        if len(data) < 20:
            raise LinkError(f"Linux cooked v2 header needs 20 bytes, got {len(data)}")
        return _by_ethertype(struct.unpack_from("!H", data)[0], data[20:])
    if link_type == LINKTYPE_NULL:
        if len(data) < 4:
            raise LinkError(f"loopback header needs 4 bytes, got {len(data)}")
        body = data[4:]
        # The family is in the writer's byte order, and AF_INET6 differs per OS:
        # the IP version nibble is the reliable test.
        return body if body and body[0] >> 4 in (4, 6) else None
    raise LinkError(f"unsupported link type {link_type} (readable: {sorted(SUPPORTED_LINK_TYPES)})")


def _ethernet(data: bytes) -> bytes | None:
    if len(data) < 14:
        raise LinkError(f"Ethernet header needs 14 bytes, got {len(data)}")
    ethertype, position = struct.unpack_from("!H", data, 12)[0], 14
    for _ in range(_MAX_VLAN_TAGS):
        if ethertype not in _VLAN_ETHERTYPES:
            break
        if len(data) < position + 4:
            raise LinkError("VLAN tag cut short")
        ethertype, position = struct.unpack_from("!H", data, position + 2)[0], position + 4
    return _by_ethertype(ethertype, data[position:])


def _by_ethertype(ethertype: int, body: bytes) -> bytes | None:
    return body if ethertype in (ETHERTYPE_IPV4, ETHERTYPE_IPV6) else None


# --- writing (tests, and exporting what replay saw) ----------------------------------


def encode_pcap(packets: Iterable[tuple[float, bytes]], *, link_type: int = LINKTYPE_RAW,
                snaplen: int = MAX_RECORD, wire_lengths: Iterable[int] | None = None) -> bytes:
    """A classic little-endian µs pcap of (timestamp, frame bytes)."""
    out = bytearray(struct.pack("<IHHiIII", PCAP_MAGIC_US, 2, 4, 0, 0, snaplen, link_type))
    lengths = iter(wire_lengths) if wire_lengths is not None else None
    for timestamp, data in packets:
        seconds = int(timestamp)
        micros = round((timestamp - seconds) * 1e6)
        wire = next(lengths) if lengths is not None else len(data)
        out += struct.pack("<IIII", seconds, micros, len(data), wire) + data
    return bytes(out)


def ethernet_frame(ip: bytes, *, ethertype: int | None = None) -> bytes:
    """Wrap an IP packet in an Ethernet II header with locally administered MACs."""
    if ethertype is None:
        ethertype = ETHERTYPE_IPV6 if ip and ip[0] >> 4 == 6 else ETHERTYPE_IPV4
    return b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + struct.pack("!H", ethertype) + ip
