"""Viber's message framing, on TCP (chat) and UDP (calls): build and parse, sans-IO.

Viber's protocol is not published. What public classifiers key on is its
framing: every message starts with a 16-bit little-endian length (of the
whole message, header included) and a 16-bit little-endian type:

* TCP, port 5242 (and 4244): the client's first message is 154 bytes,
  `9a 00 ?? 00`, and the server's first answer 24 bytes, `18 00 00 00`
  (libprotoident's lpi_viber.cc, [libprotoident]); nDPI names these ports
  Viber ([nDPI]) and its Viber capture has the chat on 4244
  (tests/result/Viber_session.pcap.out);
* UDP (calls, port 7985 in that capture): datagrams with type 3 in 12 bytes,
  type 9 in 20 bytes, and a few more shapes (nDPI's viber.c).

What the lab adds, because it is not public: the bodies. The client's hello
carries a 16-byte nonce the server echoes in its 24-byte answer, and a call
ping (type 3) carries an 8-byte id the relay echoes in a type-9 pong, so each
end proves itself to the other. Sizes and headers are the ones above.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from wallwatch.protocols.errors import Incomplete, ProtocolError

HEADER_SIZE = 4
MAX_MESSAGE = 4096  # a framing length past this is not Viber's (its chat messages are small)
HELLO_SIZE, HELLO_ACK_SIZE = 154, 24  # [libprotoident]
HELLO_TYPE, HELLO_ACK_TYPE = 0x0001, 0x0000  # ack: `18 00 00 00`; the hello's type byte is any (ours: 1)
PING_TYPE, PONG_TYPE = 0x0003, 0x0009  # [nDPI] viber.c: type 3 in 12 bytes, type 9 in 20 bytes
PING_SIZE, PONG_SIZE = 12, 20
NONCE_SIZE, CALL_ID_SIZE = 16, 8


@dataclass(frozen=True, slots=True)
class Message:
    message_type: int
    body: bytes
    length: int  # bytes of the stream the message occupies


def build_message(message_type: int, body: bytes) -> bytes:
    length = HEADER_SIZE + len(body)
    if length > MAX_MESSAGE:
        raise ValueError(f"a Viber message is at most {MAX_MESSAGE} bytes")
    return struct.pack("<HH", length, message_type) + body


def parse_message(data: bytes) -> Message | Incomplete:
    """The message at the start of `data`; the header is checked as soon as its four bytes arrive."""
    if len(data) < HEADER_SIZE:
        return Incomplete(HEADER_SIZE)
    length, message_type = struct.unpack_from("<HH", data)
    if not HEADER_SIZE <= length <= MAX_MESSAGE:
        raise ProtocolError(f"a Viber frame of {length} bytes")
    if message_type > 0xFF:
        raise ProtocolError(f"message type {message_type:#06x}: Viber's high type byte is zero")
    if len(data) < length:
        return Incomplete(length)
    return Message(message_type, bytes(data[HEADER_SIZE:length]), length)


def build_hello(nonce: bytes, filler: bytes) -> bytes:
    """The client's first chat message: 154 bytes, the nonce first."""
    if len(nonce) != NONCE_SIZE or len(filler) != HELLO_SIZE - HEADER_SIZE - NONCE_SIZE:
        raise ValueError("a hello is a 16-byte nonce and 134 bytes more")
    return build_message(HELLO_TYPE, nonce + filler)


def _nonce_of(data: bytes, size: int, what: str, message_type: int | None = None) -> bytes | Incomplete:
    """The nonce of a message of `size` bytes (and `message_type`; None: any) at the start of a stream;
    anything whose first four bytes are not such a message's header is refused at once (libprotoident
    matches `9a 00 ?? 00` for the hello, so a censor decides on the first segment)."""
    if len(data) >= HEADER_SIZE:
        length, kind = struct.unpack_from("<HH", data)
        if length != size or kind > 0xFF or (message_type is not None and kind != message_type):
            raise ProtocolError(f"not a Viber {what}")
    message = parse_message(data)
    return message if isinstance(message, Incomplete) else message.body[:NONCE_SIZE]


def parse_hello(data: bytes) -> bytes | Incomplete:
    """The hello's nonce."""
    return _nonce_of(data, HELLO_SIZE, "hello")


def build_hello_ack(nonce: bytes) -> bytes:
    return build_message(HELLO_ACK_TYPE, nonce + b"\x00" * (HELLO_ACK_SIZE - HEADER_SIZE - NONCE_SIZE))


def parse_hello_ack(data: bytes) -> bytes | Incomplete:
    return _nonce_of(data, HELLO_ACK_SIZE, "hello answer", HELLO_ACK_TYPE)


def build_ping(call_id: bytes) -> bytes:
    if len(call_id) != CALL_ID_SIZE:
        raise ValueError("a call id is 8 bytes")
    return build_message(PING_TYPE, call_id)


def build_pong(call_id: bytes, relay_token: bytes) -> bytes:
    if len(call_id) != CALL_ID_SIZE or len(relay_token) != PONG_SIZE - HEADER_SIZE - CALL_ID_SIZE:
        raise ValueError("a pong is the 8-byte call id and 8 bytes of the relay's")
    return build_message(PONG_TYPE, call_id + relay_token)


def parse_datagram(data: bytes, message_type: int, size: int) -> bytes:
    """A whole datagram of `message_type` and `size` (UDP keeps message boundaries); its call id."""
    message = parse_message(data)
    if isinstance(message, Incomplete) or message.length != len(data):
        raise ProtocolError("a datagram that is not one Viber message")
    if message.message_type != message_type or message.length != size:
        raise ProtocolError(f"Viber type {message.message_type} in {message.length} bytes, "
                            f"not type {message_type} in {size}")
    return message.body[:CALL_ID_SIZE]
