"""MQTT 3.1.1 CONNECT and CONNACK: build and parse, sans-IO ([MQTT311]).

Facebook Messenger's chat travels as MQTT to `edge-mqtt.facebook.com:443`
inside TLS (OONI ts-019 measures that edge; the MQTT use is Facebook's own
account of Messenger [Facebook2011]). A client's first packet is CONNECT:

    byte 0        0x10: packet type 1 (CONNECT), flags 0 (§2.2)
    bytes 1..4    remaining length, 1-4 bytes of 7-bit groups (§2.2.3)
    variable      protocol name as a UTF-8 string "MQTT" (3.1.1; "MQIsdp" in 3.1),
                  protocol level (4 for 3.1.1, 3 for 3.1), connect flags, keep-alive (§3.1.2)
    payload       client identifier, then optional will/user/password (§3.1.3)

and the server answers CONNACK `0x20 0x02 <session present> <return code>`
(§3.2). Over plain TCP (port 1883) these bytes are a fingerprint any DPI
box reads; inside TLS only the SNI shows.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from wallwatch.protocols.errors import Incomplete, ProtocolError

CONNECT = 0x10
CONNACK = 0x20
PROTOCOL_NAMES = {b"MQTT": 4, b"MQIsdp": 3}  # §3.1.2.1 and MQTT 3.1
MAX_REMAINING = 268_435_455  # §2.2.3: four length bytes
CLEAN_SESSION = 0x02
DEFAULT_KEEP_ALIVE = 60  # seconds; a client chooses (§3.1.2.10)


@dataclass(frozen=True, slots=True)
class Connect:
    protocol: str
    level: int
    flags: int
    keep_alive: int
    client_id: str
    length: int  # bytes of the stream the packet occupies


@dataclass(frozen=True, slots=True)
class ConnAck:
    session_present: bool
    return_code: int  # 0 accepted; 1-5 refused (§3.2.2.3)


def _encode_length(value: int) -> bytes:
    if not 0 <= value <= MAX_REMAINING:
        raise ValueError("remaining length out of range")
    out = bytearray()
    while True:
        byte, value = value % 128, value // 128
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _decode_length(data: bytes, pos: int) -> tuple[int, int] | Incomplete:
    value, multiplier = 0, 1
    for index in range(4):
        if pos + index >= len(data):
            return Incomplete()
        byte = data[pos + index]
        value += (byte & 0x7F) * multiplier
        if not byte & 0x80:
            return value, pos + index + 1
        multiplier *= 128
    raise ProtocolError("MQTT remaining length longer than four bytes")


def _string(value: bytes) -> bytes:
    return struct.pack(">H", len(value)) + value


def build_connect(client_id: str, *, keep_alive: int = DEFAULT_KEEP_ALIVE, flags: int = CLEAN_SESSION) -> bytes:
    variable = _string(b"MQTT") + bytes([4, flags]) + struct.pack(">H", keep_alive)
    body = variable + _string(client_id.encode())
    return bytes([CONNECT]) + _encode_length(len(body)) + body


def build_connack(return_code: int = 0, *, session_present: bool = False) -> bytes:
    return bytes([CONNACK, 2, int(session_present), return_code])


def parse_connect(data: bytes) -> Connect | Incomplete:
    """A CONNECT at the start of a stream; Incomplete for a valid prefix; ProtocolError otherwise."""
    if not data:
        return Incomplete()
    if data[0] != CONNECT:
        raise ProtocolError("not an MQTT CONNECT")
    decoded = _decode_length(data, 1)
    if isinstance(decoded, Incomplete):
        return decoded
    remaining, pos = decoded
    # The protocol name is checked as soon as its bytes arrive, so a censor decides early.
    if len(data) >= pos + 2:
        (name_length,) = struct.unpack_from(">H", data, pos)
        if name_length not in (4, 6):
            raise ProtocolError("not an MQTT protocol name")
        name = bytes(data[pos + 2:pos + 2 + name_length])
        if not any(known.startswith(name) for known in PROTOCOL_NAMES):
            raise ProtocolError("not an MQTT protocol name")
    if len(data) < pos + remaining:
        return Incomplete(pos + remaining)
    body = bytes(data[pos:pos + remaining])
    try:
        (name_length,) = struct.unpack_from(">H", body, 0)
        name = body[2:2 + name_length]
        level, flags = body[2 + name_length], body[3 + name_length]
        (keep_alive,) = struct.unpack_from(">H", body, 4 + name_length)
        (id_length,) = struct.unpack_from(">H", body, 6 + name_length)
        client_id = body[8 + name_length:8 + name_length + id_length].decode()
    except (IndexError, struct.error, UnicodeDecodeError):
        raise ProtocolError("truncated or malformed MQTT CONNECT") from None
    if PROTOCOL_NAMES.get(name) != level:
        raise ProtocolError(f"MQTT protocol {name!r} with level {level}")
    return Connect(name.decode(), level, flags, keep_alive, client_id, pos + remaining)


def parse_connack(data: bytes) -> ConnAck | Incomplete:
    if len(data) < 4:
        if data and data[0] != CONNACK:
            raise ProtocolError("not an MQTT CONNACK")
        return Incomplete(4)
    if data[0] != CONNACK or data[1] != 2 or data[2] > 1:
        raise ProtocolError("not an MQTT CONNACK")
    return ConnAck(bool(data[2]), data[3])
