"""Apple's push channel (APNs "courier") commands: build and parse, sans-IO.

FaceTime rings the callee through Apple Push Notification service: every
Apple device keeps a TLS connection to `<n>-courier.push.apple.com` on TCP
5223 (443 as a fallback; [Apple-Enterprise]), with ALPN
`apns-security-v2`/`-v3`, and speaks a binary command protocol inside it,
as the open client pypush documents it ([pypush], `apns.py`, `courier.py`):

    command    1 byte (7 connect, 8 connect response, 9 filter, 10 send, ...)
    length     4 bytes, big-endian: the fields that follow
    fields     each: id (1 byte), length (2 bytes, big-endian), value

A session starts with *connect* (fields 2: state `01`, 5: 4 bytes of flags,
1: the push token when the device has one); the courier answers *connect
response* (field 1: status, `00` ok; field 3: the token it assigns). The
lab's courier answers exactly that; there is no client certificate, which
the real courier requires, because nothing of it is visible on the wire
inside TLS.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from wallwatch.protocols.errors import Incomplete, ProtocolError

CONNECT, CONNECT_RESPONSE = 0x07, 0x08
COMMANDS = frozenset(range(0x07, 0x20))  # pypush's known commands are 7..0x1f
HEADER_SIZE = 5
MAX_PAYLOAD = 64 * 1024
FIELD_TOKEN, FIELD_STATE, FIELD_FLAGS = 1, 2, 5  # in connect
FIELD_STATUS, FIELD_ASSIGNED_TOKEN = 1, 3  # in connect response
STATUS_OK = b"\x00"
DEFAULT_FLAGS = 0b01000101  # pypush's connect flags with "root" set
ALPN = "apns-security-v3"
COURIER_PORT = 5223


@dataclass(frozen=True, slots=True)
class Command:
    command: int
    fields: tuple[tuple[int, bytes], ...]
    length: int  # bytes of the stream the command occupies

    def field(self, field_id: int) -> bytes | None:
        return next((value for fid, value in self.fields if fid == field_id), None)


def build_command(command: int, fields: list[tuple[int, bytes]]) -> bytes:
    payload = b"".join(struct.pack("!BH", fid, len(value)) + value for fid, value in fields)
    return struct.pack("!BI", command, len(payload)) + payload


def parse_command(data: bytes) -> Command | Incomplete:
    if data and data[0] not in COMMANDS:
        raise ProtocolError(f"command {data[0]:#04x} is not an APNs command")
    if len(data) < HEADER_SIZE:
        return Incomplete(HEADER_SIZE)
    command, length = struct.unpack_from("!BI", data)
    if length > MAX_PAYLOAD:
        raise ProtocolError(f"an APNs command of {length} bytes")
    if len(data) < HEADER_SIZE + length:
        return Incomplete(HEADER_SIZE + length)
    payload, fields, pos = data[HEADER_SIZE:HEADER_SIZE + length], [], 0
    while pos < len(payload):
        if pos + 3 > len(payload):
            raise ProtocolError("a truncated APNs field")
        fid, size = struct.unpack_from("!BH", payload, pos)
        if pos + 3 + size > len(payload):
            raise ProtocolError("an APNs field longer than its command")
        fields.append((fid, bytes(payload[pos + 3:pos + 3 + size])))
        pos += 3 + size
    return Command(command, tuple(fields), HEADER_SIZE + length)


def build_connect(token: bytes | None = None, flags: int = DEFAULT_FLAGS) -> bytes:
    fields = [(FIELD_TOKEN, token)] if token else []
    return build_command(CONNECT, fields + [(FIELD_STATE, b"\x01"), (FIELD_FLAGS, struct.pack("!I", flags))])


def build_connect_response(assigned_token: bytes, status: bytes = STATUS_OK) -> bytes:
    return build_command(CONNECT_RESPONSE, [(FIELD_STATUS, status), (FIELD_ASSIGNED_TOKEN, assigned_token)])
