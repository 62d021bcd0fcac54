"""WeChat's mmtls records and the opening of a session: build and parse, sans-IO.

WeChat does not speak TLS to its own servers: it speaks mmtls, Tencent's
protocol modelled on TLS 1.3 ([CitizenLab2024]). On the wire an mmtls record
has TLS's shape with its own version:

    byte 0       record type: 0x16 handshake, 0x17 application data, 0x15 alert, 0x19 (mmtls's own)
    bytes 1..2   version, big-endian: 0xF1 0x04 today ([CitizenLab2024]); 0xF1 0x03 in older
                 captures (a WeChat detector of an nDPI fork keys on `16 f1 03`, [nDPI-fork-wechat])
    bytes 3..4   length of the fragment that follows, big-endian

The app carries these records two ways ([CitizenLab2024]): the *long link*, a
persistent TCP connection (port 8080, also 80 and 443) whose stream starts
with the records themselves, and the *short link*, one HTTP POST to
`/mmtls/<8 hex digits>` on port 80 whose body is the records. Either way the
first record is a handshake record carrying the ClientHello.

What is *not* reproduced: the inside of mmtls's handshake (its ECDH key
shares, PSK tickets and signatures). The lab's handshake record carries
`0x01` (ClientHello), the version, a 32-byte client random and a timestamp;
the server proves itself by answering `0x02` (ServerHello) with its own random
and the client's echoed. A censor sees the same record framing and sizes of
the same order as the app's; nothing in the bytes it reads differs in kind.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from wallwatch.protocols.errors import Incomplete, ProtocolError

HANDSHAKE, APPLICATION_DATA, ALERT, EARLY_DATA = 0x16, 0x17, 0x15, 0x19
RECORD_TYPES = frozenset({HANDSHAKE, APPLICATION_DATA, ALERT, EARLY_DATA})
VERSION = 0xF104  # [CitizenLab2024]
VERSION_2017 = 0xF103  # [nDPI-fork-wechat]'s captures
VERSION_MAJOR = 0xF1  # what every mmtls version shares (TLS's is 0x03)
HEADER_SIZE = 5
MAX_FRAGMENT = 16 * 1024 + 256  # TLS's bound (RFC 8446 §5.2) plus room: mmtls is TLS-shaped
CLIENT_HELLO, SERVER_HELLO = 0x01, 0x02
RANDOM_SIZE = 32
SHORT_LINK_PATH_PREFIX = "/mmtls/"  # [CitizenLab2024]: POST /mmtls/<8 hex digits>


@dataclass(frozen=True, slots=True)
class Record:
    record_type: int
    version: int
    fragment: bytes
    length: int  # bytes of the stream the record occupies (header + fragment)


@dataclass(frozen=True, slots=True)
class ClientHello:
    version: int
    random: bytes
    timestamp: int


@dataclass(frozen=True, slots=True)
class ServerHello:
    version: int
    random: bytes
    client_random: bytes


def build_record(record_type: int, fragment: bytes, version: int = VERSION) -> bytes:
    if len(fragment) > MAX_FRAGMENT:
        raise ValueError(f"an mmtls fragment is at most {MAX_FRAGMENT} bytes")
    return struct.pack("!BHH", record_type, version, len(fragment)) + fragment


def parse_record(data: bytes) -> Record | Incomplete:
    """The record at the start of `data`; the header is checked as soon as its bytes arrive."""
    if data and data[0] not in RECORD_TYPES:
        raise ProtocolError(f"record type {data[0]:#04x} is not mmtls's")
    if len(data) >= 2 and data[1] != VERSION_MAJOR:
        raise ProtocolError(f"version {data[1]:#04x}.. is not mmtls's 0xf1..")
    if len(data) < HEADER_SIZE:
        return Incomplete(HEADER_SIZE)
    record_type, version, length = struct.unpack_from("!BHH", data)
    if length > MAX_FRAGMENT:
        raise ProtocolError(f"an mmtls fragment of {length} bytes")
    if len(data) < HEADER_SIZE + length:
        return Incomplete(HEADER_SIZE + length)
    return Record(record_type, version, bytes(data[HEADER_SIZE:HEADER_SIZE + length]), HEADER_SIZE + length)


def build_client_hello(random: bytes, timestamp: int, version: int = VERSION) -> bytes:
    if len(random) != RANDOM_SIZE:
        raise ValueError(f"the client random is {RANDOM_SIZE} bytes")
    body = struct.pack("!BH", CLIENT_HELLO, version) + random + struct.pack("!I", timestamp & 0xFFFFFFFF)
    return build_record(HANDSHAKE, body, version)


def build_server_hello(hello: ClientHello, random: bytes) -> bytes:
    if len(random) != RANDOM_SIZE:
        raise ValueError(f"the server random is {RANDOM_SIZE} bytes")
    body = struct.pack("!BH", SERVER_HELLO, hello.version) + random + hello.random
    return build_record(HANDSHAKE, body, hello.version)


def _handshake(data: bytes, kind: int, size: int) -> tuple[Record, bytes] | Incomplete:
    record = parse_record(data)
    if isinstance(record, Incomplete):
        return record
    if record.record_type != HANDSHAKE:
        raise ProtocolError(f"record type {record.record_type:#04x} where a handshake record was due")
    body = record.fragment
    if len(body) != 3 + size or body[0] != kind:
        raise ProtocolError("not the handshake message expected")
    return record, body


def parse_client_hello(data: bytes) -> ClientHello | Incomplete:
    parsed = _handshake(data, CLIENT_HELLO, RANDOM_SIZE + 4)
    if isinstance(parsed, Incomplete):
        return parsed
    _, body = parsed
    (version,) = struct.unpack_from("!H", body, 1)
    (timestamp,) = struct.unpack_from("!I", body, 3 + RANDOM_SIZE)
    return ClientHello(version, body[3:3 + RANDOM_SIZE], timestamp)


def parse_server_hello(data: bytes) -> ServerHello | Incomplete:
    parsed = _handshake(data, SERVER_HELLO, 2 * RANDOM_SIZE)
    if isinstance(parsed, Incomplete):
        return parsed
    _, body = parsed
    (version,) = struct.unpack_from("!H", body, 1)
    return ServerHello(version, body[3:3 + RANDOM_SIZE], body[3 + RANDOM_SIZE:])


def short_link_path(token: bytes) -> str:
    """`/mmtls/<8 hex digits>`: the short link's request target ([CitizenLab2024])."""
    if len(token) != 4:
        raise ValueError("the short link's path names 4 bytes, as 8 hex digits")
    return SHORT_LINK_PATH_PREFIX + token.hex()
