"""WireGuard messages: recognise them by type and exact size, build test ones.

WireGuard has no version field and no plaintext magic, but its four message
types have fixed layouts (Donenfeld, "WireGuard: Next Generation Kernel Network
Tunnel", NDSS 2017, §5.4; wireguard.com/protocol): a 1-byte type, 3 reserved
zero bytes, then little-endian 32-bit session indices. That is enough for a
censor: OpenGFW's `analyzer/udp/wireguard.go` checks type + size + zero
reserved bytes, and then confirms the flow when a receiver index echoes a
sender index seen in the other direction (`receiver_index_matched`).
Sans-IO: one UDP payload in, a `WireGuardMessage` out (or ProtocolError).
"""

from __future__ import annotations

import os
import struct
from collections import deque
from dataclasses import dataclass

from wallwatch.protocols.errors import ProtocolError

# Message types, whitepaper §5.4.2-§5.4.7.
HANDSHAKE_INITIATION = 1
HANDSHAKE_RESPONSE = 2
COOKIE_REPLY = 3
TRANSPORT_DATA = 4

TYPE_NAMES = {
    HANDSHAKE_INITIATION: "handshake_initiation",
    HANDSHAKE_RESPONSE: "handshake_response",
    COOKIE_REPLY: "cookie_reply",
    TRANSPORT_DATA: "transport_data",
}

# Sizes, whitepaper §5.4.2 (initiation: 4 + 4 + 32 + (32+16) + (12+16) + 16 + 16),
# §5.4.3 (response: 4 + 4 + 4 + 32 + 16 + 16 + 16), §5.4.7 (cookie reply:
# 4 + 4 + 24 + (16+16)); same constants in OpenGFW wireguard.go.
INITIATION_SIZE = 148
RESPONSE_SIZE = 92
COOKIE_REPLY_SIZE = 64
# Transport: 16-byte header + AEAD(padded payload); an empty keepalive is 32
# bytes, and payloads are zero-padded to a multiple of 16 (whitepaper §5.4.6).
TRANSPORT_HEADER_SIZE = 16
TRANSPORT_MIN_SIZE = 32
TRANSPORT_ALIGNMENT = 16

# OpenGFW's matcher: remember the last 6 sender indices, give up after 4
# consecutive non-WireGuard packets (wireguard.go
# `wireguardRememberedIndexCount`, `wireguardUDPInvalidCountThreshold`).
REMEMBERED_INDEX_COUNT = 6
INVALID_PACKET_LIMIT = 4

WIREGUARD_PORT = 51820  # the default ListenPort of wg-quick examples (wg(8))

_FIXED_SIZES = {HANDSHAKE_INITIATION: INITIATION_SIZE, HANDSHAKE_RESPONSE: RESPONSE_SIZE, COOKIE_REPLY: COOKIE_REPLY_SIZE}


@dataclass(frozen=True, slots=True)
class WireGuardMessage:
    message_type: int
    sender_index: int | None
    receiver_index: int | None
    counter: int | None  # transport data only
    length: int

    @property
    def type_name(self) -> str:
        return TYPE_NAMES[self.message_type]


def parse_message(data: bytes) -> WireGuardMessage:
    """Classify one UDP payload; ProtocolError if it is not a WireGuard message."""
    if len(data) < 4:
        raise ProtocolError("shorter than a WireGuard message header")
    message_type = data[0]
    if message_type not in TYPE_NAMES:
        raise ProtocolError(f"WireGuard has no message type {message_type}")
    if data[1:4] != b"\x00\x00\x00":
        # A right-sized packet with non-zero reserved bytes is not WireGuard
        # (whitepaper §5.4: "reserved zero"; OpenGFW rejects it the same way).
        raise ProtocolError("WireGuard reserved bytes are not zero")
    _check_size(message_type, len(data))
    index_a = struct.unpack_from("<I", data, 4)[0]
    if message_type == HANDSHAKE_INITIATION:
        return WireGuardMessage(message_type, index_a, None, None, len(data))
    if message_type == HANDSHAKE_RESPONSE:
        receiver = struct.unpack_from("<I", data, 8)[0]
        return WireGuardMessage(message_type, index_a, receiver, None, len(data))
    if message_type == COOKIE_REPLY:
        return WireGuardMessage(message_type, None, index_a, None, len(data))
    counter = struct.unpack_from("<Q", data, 8)[0]
    return WireGuardMessage(message_type, None, index_a, counter, len(data))


def _check_size(message_type: int, size: int) -> None:
    if message_type in _FIXED_SIZES:
        if size != _FIXED_SIZES[message_type]:
            raise ProtocolError(f"WireGuard {TYPE_NAMES[message_type]} must be {_FIXED_SIZES[message_type]} bytes, not {size}")
    elif size < TRANSPORT_MIN_SIZE or size % TRANSPORT_ALIGNMENT:
        raise ProtocolError(f"WireGuard transport data must be >= 32 bytes and a multiple of 16, not {size}")


# --- building (shape only: right types, sizes and indices; random crypto) ---


def _header(message_type: int) -> bytes:
    return bytes([message_type, 0, 0, 0])


def build_initiation(sender_index: int) -> bytes:
    return _header(HANDSHAKE_INITIATION) + struct.pack("<I", sender_index) + os.urandom(INITIATION_SIZE - 8)


def build_response(sender_index: int, receiver_index: int) -> bytes:
    return _header(HANDSHAKE_RESPONSE) + struct.pack("<II", sender_index, receiver_index) + os.urandom(RESPONSE_SIZE - 12)


def build_cookie_reply(receiver_index: int) -> bytes:
    return _header(COOKIE_REPLY) + struct.pack("<I", receiver_index) + os.urandom(COOKIE_REPLY_SIZE - 8)


def build_transport(receiver_index: int, counter: int, payload_size: int = 0) -> bytes:
    """A transport message carrying `payload_size` plaintext bytes (0 = keepalive)."""
    padded = -(-payload_size // TRANSPORT_ALIGNMENT) * TRANSPORT_ALIGNMENT
    body = os.urandom(padded + 16)  # ciphertext + Poly1305 tag
    return _header(TRANSPORT_DATA) + struct.pack("<IQ", receiver_index, counter) + body


# --- the censor's view of a flow --------------------------------------------


@dataclass(frozen=True, slots=True)
class WireGuardObservation:
    message: WireGuardMessage
    # None for an initiation (it names no receiver); else whether the receiver
    # index is one the other side announced as its sender index.
    receiver_index_matched: bool | None


class WireGuardMatcher:
    """Per-UDP-flow state, after OpenGFW's wireGuardUDPStream.

    `feed(data, reverse)` with reverse=False for client-to-server packets.
    Returns an observation, or None for a packet that is not WireGuard;
    `done` turns True after INVALID_PACKET_LIMIT consecutive such packets.
    """

    def __init__(self) -> None:
        self._senders: deque[tuple[bool, int]] = deque(maxlen=REMEMBERED_INDEX_COUNT)
        self.invalid_count = 0
        self.matched = False

    @property
    def done(self) -> bool:
        return self.invalid_count >= INVALID_PACKET_LIMIT

    def feed(self, data: bytes, reverse: bool) -> WireGuardObservation | None:
        try:
            message = parse_message(data)
        except ProtocolError:
            self.invalid_count += 1
            return None
        self.invalid_count = 0
        if message.sender_index is not None:
            self._senders.append((reverse, message.sender_index))
        matched: bool | None = None
        if message.receiver_index is not None:
            matched = (not reverse, message.receiver_index) in self._senders
            self.matched = self.matched or matched
        return WireGuardObservation(message, matched)
