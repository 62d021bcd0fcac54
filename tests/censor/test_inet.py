"""protocols.inet: parse what we build, refuse garbage with ProtocolError only."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzzing import examples
from wallwatch.protocols import inet
from wallwatch.protocols.errors import ProtocolError


def test_tcp_rst_round_trip_and_checksums() -> None:
    raw = inet.build_tcp_rst("198.19.2.3", "198.18.0.2", 443, 40000, seq=1234, ack=99)
    packet = inet.parse_packet(raw)
    assert (packet.version, packet.src, packet.dst, packet.sport, packet.dport) == (
        4, "198.19.2.3", "198.18.0.2", 443, 40000)
    assert packet.proto == inet.PROTO_TCP and packet.proto_name == "tcp"
    assert packet.has(inet.RST) and packet.has(inet.ACK) and not packet.has(inet.SYN)
    assert (packet.seq, packet.ack, packet.payload) == (1234, 99, b"")
    assert inet.verify_checksums(raw)


def test_checksum_detects_a_flipped_bit() -> None:
    raw = bytearray(inet.build_udp("198.19.0.53", "198.18.0.2", 53, 5353, b"hello"))
    assert inet.verify_checksums(bytes(raw))
    raw[-1] ^= 0x01
    assert not inet.verify_checksums(bytes(raw))


def test_known_checksum_value() -> None:
    # RFC 1071 §3 worked example: words 0001 f203 f4f5 f6f7 sum to ddf2 (before complement).
    assert inet.internet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == (~0xDDF2) & 0xFFFF


def test_ipv6_udp_with_hop_by_hop_extension() -> None:
    raw = inet.build_udp("2001:db8::1", "2001:db8::2", 1000, 53, b"q")
    assert inet.verify_checksums(raw)
    # Insert an 8-byte hop-by-hop header (next header = UDP) after the fixed header.
    hop = bytes([inet.PROTO_UDP, 0, 1, 4, 0, 0, 0, 0])
    length = struct.unpack_from("!H", raw, 4)[0] + 8
    with_ext = raw[:4] + struct.pack("!HB", length, 0) + raw[7:40] + hop + raw[40:]
    packet = inet.parse_packet(with_ext)
    assert (packet.version, packet.proto, packet.sport, packet.dport, packet.payload) == (6, 17, 1000, 53, b"q")


def test_truncated_capture_keeps_the_prefix() -> None:
    raw = inet.build_tcp("198.18.0.2", "198.19.2.3", 40000, 443, seq=1, payload=b"x" * 100)
    packet = inet.parse_packet(raw[:80])
    assert packet.truncated and packet.payload == b"x" * 40


def test_ipv4_non_first_fragment_has_no_ports() -> None:
    raw = bytearray(inet.build_udp("198.18.0.2", "198.19.3.1", 1, 2, b"abcdefgh"))
    raw[6:8] = struct.pack("!H", 0x0001)  # offset 8 bytes
    packet = inet.parse_packet(bytes(raw))
    assert packet.fragment and (packet.sport, packet.dport) == (0, 0)


@pytest.mark.parametrize("raw", [b"", b"\x45", b"\x60" + b"\x00" * 10, b"\x75" + b"\x00" * 40,
                                 b"\x41" + b"\x00" * 30, bytes(20)])
def test_garbage_raises_protocol_error(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        inet.parse_packet(raw)


def test_mixed_families_refused() -> None:
    with pytest.raises(ProtocolError):
        inet.build_udp("198.18.0.2", "2001:db8::1", 1, 2, b"")


@settings(max_examples=examples(400), deadline=None)
@given(st.binary(max_size=120))
def test_arbitrary_bytes_give_packet_or_protocol_error(raw: bytes) -> None:
    try:
        packet = inet.parse_packet(raw)
    except ProtocolError:
        return
    assert isinstance(packet, inet.Packet)


@settings(max_examples=examples(200), deadline=None)
@given(st.binary(min_size=1, max_size=60), st.integers(0, 59))
def test_mutated_real_packets_give_packet_or_protocol_error(payload: bytes, index: int) -> None:
    raw = bytearray(inet.build_tcp("198.18.0.2", "198.19.1.1", 1234, 443, seq=7, payload=payload))
    raw[index % len(raw)] ^= 0xFF
    try:
        inet.parse_packet(bytes(raw))
    except ProtocolError:
        pass


addresses_v4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
addresses_v6 = st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))
ports = st.integers(0, 65535)
words = st.integers(0, 2**32 - 1)


@settings(max_examples=examples(200), deadline=None)
@given(st.one_of(st.tuples(addresses_v4, addresses_v4), st.tuples(addresses_v6, addresses_v6)),
       ports, ports, words, words, st.integers(0, 0x3F), st.binary(max_size=200))
def test_tcp_build_parse_round_trip(pair: tuple[str, str], sport: int, dport: int, seq: int, ack: int,
                                    flags: int, payload: bytes) -> None:
    src, dst = pair
    raw = inet.build_tcp(src, dst, sport, dport, seq=seq, ack=ack, flags=flags, window=512, payload=payload)
    packet = inet.parse_packet(raw)
    assert (packet.src, packet.dst, packet.sport, packet.dport) == (src, dst, sport, dport)
    assert (packet.seq, packet.ack, packet.flags, packet.window, packet.payload) == (seq, ack, flags, 512, payload)
    assert not packet.truncated and inet.verify_checksums(raw)


@settings(max_examples=examples(200), deadline=None)
@given(st.one_of(st.tuples(addresses_v4, addresses_v4), st.tuples(addresses_v6, addresses_v6)),
       ports, ports, st.binary(max_size=300))
def test_udp_build_parse_round_trip(pair: tuple[str, str], sport: int, dport: int, payload: bytes) -> None:
    src, dst = pair
    raw = inet.build_udp(src, dst, sport, dport, payload)
    packet = inet.parse_packet(raw)
    assert (packet.src, packet.dst, packet.sport, packet.dport, packet.payload) == (src, dst, sport, dport, payload)
    assert inet.verify_checksums(raw)
