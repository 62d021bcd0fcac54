"""TLS ClientHello: build one with a chosen SNI and ALPN, and read them back.

The censor fingerprints TLS by the first flight alone (the GFW's SNI filter,
[Rambert2021]), so the parser works on a stream prefix: it reassembles
handshake fragments across TLS records (RFC 8446 §5.1 lets a ClientHello span
records) and answers `Incomplete` until the whole ClientHello is there.
The builder makes a plausible TLS 1.3 first flight for SNI controls and tests;
the probe's real handshakes use the `ssl` module.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Sequence

from wallwatch.protocols.errors import Incomplete, ProtocolError

CONTENT_HANDSHAKE = 0x16  # RFC 8446 §5.1 ContentType.handshake
HANDSHAKE_CLIENT_HELLO = 0x01
EXT_SERVER_NAME = 0  # RFC 6066 §3
EXT_SUPPORTED_GROUPS = 10
EXT_EC_POINT_FORMATS = 11
EXT_SIGNATURE_ALGORITHMS = 13
EXT_ALPN = 16  # RFC 7301 §3.1
EXT_SUPPORTED_VERSIONS = 43
EXT_PSK_MODES = 45
EXT_KEY_SHARE = 51

# A ClientHello is rarely above a few KiB (post-quantum key shares push it to
# ~1.8 KiB); refusing anything over 64 KiB bounds a censor's buffering.
MAX_CLIENT_HELLO = 64 * 1024

# Chrome-like ordering; the values are the IANA code points.
_CIPHER_SUITES = (0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8)
_SIGNATURE_ALGORITHMS = (0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601)
_X25519 = 0x001D


@dataclass(frozen=True, slots=True)
class ClientHello:
    record_version: int
    legacy_version: int
    random: bytes
    session_id: bytes
    cipher_suites: tuple[int, ...]
    extension_types: tuple[int, ...]
    sni: str | None
    alpn: tuple[str, ...]


def looks_like_tls_record(data: bytes) -> bool:
    """True when the bytes start like a TLS record (type 20-23, version 3.x)."""
    return len(data) >= 3 and 0x14 <= data[0] <= 0x17 and data[1] == 0x03 and data[2] <= 0x04


# --- building ---------------------------------------------------------------


def _u8_prefixed(body: bytes) -> bytes:
    return struct.pack("!B", len(body)) + body


def _u16_prefixed(body: bytes) -> bytes:
    return struct.pack("!H", len(body)) + body


def _extension(ext_type: int, body: bytes) -> bytes:
    return struct.pack("!H", ext_type) + _u16_prefixed(body)


def _u16_list(values: Sequence[int]) -> bytes:
    return b"".join(struct.pack("!H", v) for v in values)


def build_client_hello(sni: str | None, alpn: Sequence[str] = (), *, random: bytes | None = None) -> bytes:
    """One complete TLS record carrying a TLS 1.3 ClientHello."""
    if random is not None and len(random) != 32:
        raise ValueError("TLS random must be 32 bytes")
    extensions = []
    if sni is not None:
        name = sni.encode("idna") if any(ord(c) > 127 for c in sni) else sni.encode("ascii")
        entry = b"\x00" + _u16_prefixed(name)  # NameType host_name(0)
        extensions.append(_extension(EXT_SERVER_NAME, _u16_prefixed(entry)))
    extensions += [
        _extension(EXT_SUPPORTED_GROUPS, _u16_prefixed(_u16_list((_X25519, 0x0017, 0x0018)))),
        _extension(EXT_EC_POINT_FORMATS, _u8_prefixed(b"\x00")),
        _extension(EXT_SIGNATURE_ALGORITHMS, _u16_prefixed(_u16_list(_SIGNATURE_ALGORITHMS))),
    ]
    if alpn:
        protocols = b"".join(_u8_prefixed(p.encode("ascii")) for p in alpn)
        extensions.append(_extension(EXT_ALPN, _u16_prefixed(protocols)))
    extensions += [
        _extension(EXT_SUPPORTED_VERSIONS, _u8_prefixed(_u16_list((0x0304, 0x0303)))),
        _extension(EXT_PSK_MODES, _u8_prefixed(b"\x01")),
        _extension(EXT_KEY_SHARE, _u16_prefixed(struct.pack("!H", _X25519) + _u16_prefixed(os.urandom(32)))),
    ]
    body = (
        struct.pack("!H", 0x0303)  # legacy_version TLS 1.2, RFC 8446 §4.1.2
        + (random if random is not None else os.urandom(32))
        + _u8_prefixed(os.urandom(32))  # middlebox-compatibility session id, RFC 8446 §D.4
        + _u16_prefixed(_u16_list(_CIPHER_SUITES))
        + _u8_prefixed(b"\x00")  # compression: null only
        + _u16_prefixed(b"".join(extensions))
    )
    handshake = struct.pack("!B", HANDSHAKE_CLIENT_HELLO) + len(body).to_bytes(3, "big") + body
    # Record version 0x0301 for the first flight, as TLS 1.3 clients send (RFC 8446 §5.1).
    return struct.pack("!BHH", CONTENT_HANDSHAKE, 0x0301, len(handshake)) + handshake


# --- parsing ----------------------------------------------------------------


class _Reader:
    """Bounds-checked cursor: every overrun becomes a ProtocolError."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ProtocolError("ClientHello field runs past its container")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def vector(self, length_bytes: int) -> bytes:
        return self.take(int.from_bytes(self.take(length_bytes), "big"))

    def done(self) -> bool:
        return self.pos >= len(self.data)


def _reassemble_handshake(data: bytes) -> tuple[int, bytes] | Incomplete:
    """Concatenate handshake-record payloads until the ClientHello is whole."""
    payload = bytearray()
    record_version = -1
    pos = 0
    while True:
        if len(data) - pos < 5:
            return Incomplete()
        content_type, version, length = struct.unpack_from("!BHH", data, pos)
        if content_type != CONTENT_HANDSHAKE or version >> 8 != 3:
            raise ProtocolError("not a TLS handshake record")
        if length == 0 or length > 2**14 + 2048:  # RFC 8446 §5.1 record size limit
            raise ProtocolError(f"bad TLS record length {length}")
        if record_version < 0:
            record_version = version
        fragment = data[pos + 5 : pos + 5 + length]
        payload += fragment
        if len(payload) >= 4:
            if payload[0] != HANDSHAKE_CLIENT_HELLO:
                raise ProtocolError(f"first handshake message is type {payload[0]}, not ClientHello")
            needed = 4 + int.from_bytes(payload[1:4], "big")
            if needed > MAX_CLIENT_HELLO:
                raise ProtocolError("ClientHello too large")
            if len(payload) >= needed:
                return record_version, bytes(payload[4:needed])
        if len(fragment) < length:
            return Incomplete()
        pos += 5 + length


def parse_client_hello(data: bytes) -> ClientHello | Incomplete:
    assembled = _reassemble_handshake(data)
    if isinstance(assembled, Incomplete):
        return assembled
    record_version, body = assembled
    reader = _Reader(body)
    legacy_version = reader.u16()
    random = reader.take(32)
    session_id = reader.vector(1)
    suites_raw = reader.vector(2)
    if len(suites_raw) % 2:
        raise ProtocolError("odd cipher suite list length")
    cipher_suites = tuple(struct.unpack(f"!{len(suites_raw) // 2}H", suites_raw))
    reader.vector(1)  # compression methods
    sni: str | None = None
    alpn: tuple[str, ...] = ()
    types: list[int] = []
    if not reader.done():  # extensions are optional before TLS 1.3 (RFC 5246 §7.4.1.2)
        extensions = _Reader(reader.vector(2))
        while not extensions.done():
            ext_type = extensions.u16()
            ext_body = extensions.vector(2)
            types.append(ext_type)
            if ext_type == EXT_SERVER_NAME:
                sni = _parse_server_name(ext_body)
            elif ext_type == EXT_ALPN:
                alpn = _parse_alpn(ext_body)
    return ClientHello(record_version, legacy_version, random, session_id, cipher_suites, tuple(types), sni, alpn)


def _parse_server_name(body: bytes) -> str | None:
    names = _Reader(_Reader(body).vector(2))
    while not names.done():
        name_type = names.u8()
        name = names.vector(2)
        if name_type == 0:  # host_name
            try:
                return name.decode("ascii").lower().rstrip(".")
            except UnicodeDecodeError:
                raise ProtocolError("server name is not ASCII") from None
    return None


def _parse_alpn(body: bytes) -> tuple[str, ...]:
    protocols = _Reader(_Reader(body).vector(2))
    found = []
    while not protocols.done():
        found.append(protocols.vector(1).decode("latin-1"))
    return tuple(found)
