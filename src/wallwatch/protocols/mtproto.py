"""Telegram's MTProto "obfuscated2" transport: build, recognise and speak it.

Telegram clients open a TCP connection with a 64-byte header that looks random
(core.telegram.org/mtproto/mtproto-transports, "Transport obfuscation";
Telethon `telethon/network/connection/tcpobfuscated.py`):

    bytes  0..8    random, with constraints so the server cannot mistake it
                   for a plain transport or HTTP/TLS (see `FORBIDDEN_STARTS`)
    bytes  8..40   AES-256-CTR key for client->server
    bytes 40..56   its IV (128-bit big-endian counter)
    bytes 56..60   transport tag, sent *encrypted* under that key/IV
    bytes 60..62   DC id, signed little-endian int16, also encrypted (TDLib
                   sets it; Telethon leaves random bytes here)
    bytes 62..64   random, encrypted

server->client uses bytes 8..56 reversed: key = reversed[0:32], IV =
reversed[32:48]. With an MTProxy secret the keys are SHA-256(key || secret).
Without a secret the key is in the header itself, so anyone on path can
decrypt bytes 56..60 and check for a known tag: a cheap and exact DPI rule
([Telethon]'s obfuscated2 shows the header). Sans-IO: the ciphers are plain objects over bytes.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

from wallwatch.protocols.errors import Incomplete, ProtocolError

HEADER_SIZE = 64
KEY_SLICE = slice(8, 40)
IV_SLICE = slice(40, 56)
TAG_SLICE = slice(56, 60)
DC_SLICE = slice(60, 62)

# Transport tags (mtproto-transports: Abridged, Intermediate, Padded intermediate).
TAG_ABRIDGED = b"\xef\xef\xef\xef"
TAG_INTERMEDIATE = b"\xee\xee\xee\xee"
TAG_PADDED_INTERMEDIATE = b"\xdd\xdd\xdd\xdd"
TRANSPORT_NAMES = {
    TAG_ABRIDGED: "abridged",
    TAG_INTERMEDIATE: "intermediate",
    TAG_PADDED_INTERMEDIATE: "padded_intermediate",
}

# First four bytes a client must avoid: the plain transports' own markers and
# requests the server would parse as HTTP or TLS. Union of the MTProto docs'
# list (HEAD, POST, GET, OPTI, 0x16030102, 0xdddddddd, 0xeeeeeeee) and
# Telethon's (also "PVrG"). Byte 0 must not be 0xef (plain abridged) and bytes
# 4..8 must not be zero (both sources).
FORBIDDEN_STARTS = frozenset(
    {b"HEAD", b"POST", b"GET ", b"OPTI", b"PVrG", b"\x16\x03\x01\x02", TAG_PADDED_INTERMEDIATE, TAG_INTERMEDIATE}
)
ABRIDGED_MARKER = 0xEF

MTPROXY_SECRET_SIZE = 16


def header_is_well_formed(header: bytes) -> bool:
    """The clear-text constraints of a 64-byte obfuscated2 header."""
    return (
        len(header) >= 8
        and header[0] != ABRIDGED_MARKER
        and bytes(header[:4]) not in FORBIDDEN_STARTS
        and bytes(header[4:8]) != b"\x00\x00\x00\x00"
    )


def _aes_ctr(key: bytes, iv: bytes) -> CipherContext:
    return Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()


def _derive(key: bytes, secret: bytes | None) -> bytes:
    if secret is None:
        return key
    if len(secret) != MTPROXY_SECRET_SIZE:
        raise ValueError("an MTProxy secret is 16 bytes")
    return hashlib.sha256(key + secret).digest()


class StreamCipher:
    """One direction of an obfuscated2 connection: AES-256-CTR that keeps its place."""

    def __init__(self, key: bytes, iv: bytes) -> None:
        self._context = _aes_ctr(key, iv)

    def apply(self, data: bytes) -> bytes:
        """Encrypt or decrypt (CTR is symmetric), advancing the keystream."""
        return self._context.update(data)


@dataclass(frozen=True, slots=True)
class Obfuscated2Header:
    """What a reader of the first 64 bytes learns."""

    tag: bytes
    transport: str
    dc_id: int
    client_key: bytes
    client_iv: bytes
    server_key: bytes
    server_iv: bytes


def _keys(header: bytes, secret: bytes | None) -> tuple[bytes, bytes, bytes, bytes]:
    reversed_part = header[8:56][::-1]
    return (
        _derive(header[KEY_SLICE], secret),
        header[IV_SLICE],
        _derive(reversed_part[:32], secret),
        reversed_part[32:48],
    )


def parse_header(data: bytes, *, secret: bytes | None = None) -> Obfuscated2Header | Incomplete:
    """Decrypt the header from the header itself and check its transport tag.

    `data` is the start of the client's stream. Incomplete until 64 bytes are
    there; ProtocolError if the clear-text constraints fail or the decrypted
    tag is not one of the three transports (a random stream passes the tag
    check with probability 3 / 2**32).
    """
    if len(data) >= 8 and not header_is_well_formed(data):
        raise ProtocolError("starts like a plain transport or HTTP/TLS, not an obfuscated2 header")
    if len(data) < HEADER_SIZE:
        return Incomplete(HEADER_SIZE)
    header = bytes(data[:HEADER_SIZE])
    client_key, client_iv, server_key, server_iv = _keys(header, secret)
    plain = _aes_ctr(client_key, client_iv).update(header)
    tag = plain[TAG_SLICE]
    if tag not in TRANSPORT_NAMES:
        raise ProtocolError(f"decrypted transport tag {tag.hex()} is not an MTProto transport")
    dc_id = struct.unpack("<h", plain[DC_SLICE])[0]
    return Obfuscated2Header(tag, TRANSPORT_NAMES[tag], dc_id, client_key, client_iv, server_key, server_iv)


@dataclass(slots=True)
class Obfuscated2Session:
    """Both directions of one connection, from one side's point of view.

    `send.apply(plain)` gives bytes to write; `receive.apply(wire)` gives
    plain bytes read. Build with `client()` (which also returns the header to
    send first) or `server()` (from the header the client sent).
    """

    header: Obfuscated2Header
    send: StreamCipher
    receive: StreamCipher


def _random_header() -> bytearray:
    while True:  # redraw until the constraints hold (about 1 in 256 draws fails)
        header = bytearray(os.urandom(HEADER_SIZE))
        if header_is_well_formed(header):
            return header


def client(tag: bytes = TAG_INTERMEDIATE, dc_id: int = 2, *, secret: bytes | None = None) -> tuple[bytes, Obfuscated2Session]:
    """A fresh header to send first, and the client's ciphers (as Telethon / TDLib do)."""
    if tag not in TRANSPORT_NAMES:
        raise ValueError(f"unknown MTProto transport tag {tag.hex()}")
    header = _random_header()
    header[TAG_SLICE] = tag
    header[DC_SLICE] = struct.pack("<h", dc_id)
    client_key, client_iv, server_key, server_iv = _keys(bytes(header), secret)
    send = StreamCipher(client_key, client_iv)
    # Bytes 56..64 go out encrypted; the keystream stays advanced by 64 bytes,
    # which is where the server's decryptor will be after reading the header.
    encrypted = send.apply(bytes(header))
    header[56:64] = encrypted[56:64]
    info = Obfuscated2Header(tag, TRANSPORT_NAMES[tag], dc_id, client_key, client_iv, server_key, server_iv)
    return bytes(header), Obfuscated2Session(info, send, StreamCipher(server_key, server_iv))


def server(header: bytes, *, secret: bytes | None = None) -> Obfuscated2Session:
    """The server side of a connection whose first 64 bytes were `header`."""
    parsed = parse_header(header, secret=secret)
    if isinstance(parsed, Incomplete):
        raise ProtocolError("an obfuscated2 header is 64 bytes")
    receive = StreamCipher(parsed.client_key, parsed.client_iv)
    receive.apply(bytes(header[:HEADER_SIZE]))  # keep in step with the client's encryptor
    return Obfuscated2Session(parsed, StreamCipher(parsed.server_key, parsed.server_iv), receive)


# --- framing inside the encrypted stream ------------------------------------
# Abridged: one byte length/4, or 0x7f + 3-byte little-endian length/4.
# Intermediate: 4-byte little-endian length. Padded intermediate: the same,
# with 0..15 random bytes appended inside the length (mtproto-transports).
# The top bit of an intermediate length (and 0x80 of an abridged one) asks
# for a quick ACK; we keep the length without it.


def frame(tag: bytes, payload: bytes) -> bytes:
    """One transport packet carrying `payload`."""
    if tag == TAG_ABRIDGED:
        if len(payload) % 4:
            raise ValueError("abridged payloads are a multiple of 4 bytes")
        words = len(payload) // 4
        prefix = bytes([words]) if words < 0x7F else b"\x7f" + words.to_bytes(3, "little")
        return prefix + payload
    if tag == TAG_INTERMEDIATE:
        return struct.pack("<I", len(payload)) + payload
    if tag == TAG_PADDED_INTERMEDIATE:
        padded = payload + os.urandom(os.urandom(1)[0] % 16)
        return struct.pack("<I", len(padded)) + padded
    raise ValueError(f"unknown MTProto transport tag {tag.hex()}")


MAX_PACKET = 16 * 1024 * 1024  # a sanity bound for a censor's buffer, not a protocol limit


def unframe(tag: bytes, data: bytes) -> tuple[bytes, int] | Incomplete:
    """The first packet of a decrypted stream and the bytes it used.

    For padded intermediate the padding is returned with the payload: the
    receiver cannot tell it apart (MTProto messages carry their own length).
    """
    if tag == TAG_ABRIDGED:
        if not data:
            return Incomplete()
        words, start = data[0] & 0x7F, 1
        if words == 0x7F:
            if len(data) < 4:
                return Incomplete()
            words, start = int.from_bytes(data[1:4], "little"), 4
        size = 4 * words
    elif tag in (TAG_INTERMEDIATE, TAG_PADDED_INTERMEDIATE):
        if len(data) < 4:
            return Incomplete()
        size, start = struct.unpack_from("<I", data)[0] & 0x7FFFFFFF, 4
    else:
        raise ProtocolError(f"unknown MTProto transport tag {tag.hex()}")
    if size > MAX_PACKET:
        raise ProtocolError(f"MTProto packet of {size} bytes is beyond any real one")
    if len(data) < start + size:
        return Incomplete(start + size)
    return bytes(data[start : start + size]), start + size


# --- the message inside a transport packet -------------------------------------
# core.telegram.org/mtproto/description: an unencrypted message (the key
# exchange, before any auth key exists) is auth_key_id = 0 (int64), message_id
# (int64), message_data_length (int32), then message_data, whose first 4 bytes
# are the TL constructor; an encrypted one is a non-zero auth_key_id, a 128-bit
# msg_key and the ciphertext. All little-endian.

UNENCRYPTED_HEAD = struct.Struct("<qqi")
CONSTRUCTOR = struct.Struct("<I")
MSG_KEY_SIZE = 16
REQ_PQ_MULTI = 0xBE7E8EF1  # req_pq_multi#be7e8ef1 nonce:int128 = ResPQ: a client's first message (TL schema, layer >= 82)


@dataclass(frozen=True, slots=True)
class MessageHead:
    """What the start of a message says. message_id, data_length and constructor
    are those of an unencrypted message (None for an encrypted one, whose
    msg_key is given instead)."""

    auth_key_id: int
    message_id: int | None = None
    data_length: int | None = None
    constructor: int | None = None
    msg_key: bytes | None = None

    @property
    def encrypted(self) -> bool:
        return self.auth_key_id != 0


def parse_message_head(packet: bytes) -> MessageHead | Incomplete:
    """The head of the message a (decrypted, unframed) transport packet carries.

    Incomplete until the head and, for an unencrypted message, its data are
    there (padded intermediate may add up to 15 bytes after the data);
    ProtocolError for an unencrypted message whose data length is too short
    to hold a constructor or beyond MAX_PACKET.
    """
    head_size = UNENCRYPTED_HEAD.size + CONSTRUCTOR.size  # = 8 + MSG_KEY_SIZE: both kinds need 24 bytes
    if len(packet) < head_size:
        return Incomplete(head_size)
    auth_key_id, message_id, data_length = UNENCRYPTED_HEAD.unpack_from(packet)
    if auth_key_id != 0:
        return MessageHead(auth_key_id, msg_key=bytes(packet[8 : 8 + MSG_KEY_SIZE]))
    if not CONSTRUCTOR.size <= data_length <= MAX_PACKET:
        raise ProtocolError(f"an unencrypted message of {data_length} bytes cannot hold a TL constructor"
                            if data_length < CONSTRUCTOR.size else f"a message of {data_length} bytes is beyond any real one")
    if len(packet) < UNENCRYPTED_HEAD.size + data_length:
        return Incomplete(UNENCRYPTED_HEAD.size + data_length)
    (constructor,) = CONSTRUCTOR.unpack_from(packet, UNENCRYPTED_HEAD.size)
    return MessageHead(0, message_id, data_length, constructor)


# --- the first exchange: req_pq_multi -> resPQ --------------------------------------
# A client's first message to a DC starts the key exchange (core.telegram.org/mtproto/auth_key,
# step 1): req_pq_multi#be7e8ef1 nonce:int128, answered by resPQ#05162463 nonce:int128
# server_nonce:int128 pq:string server_public_key_fingerprints:Vector<long>. Both travel as
# unencrypted messages (auth_key_id 0). The answer echoing the client's random nonce is what
# proves a DC, and not a middlebox, is at the other end.

RES_PQ = 0x05162463
VECTOR = 0x1CB5C415  # vector#1cb5c415: the TL boxed vector constructor
NONCE_SIZE = 16


@dataclass(frozen=True, slots=True)
class ResPQ:
    nonce: bytes
    server_nonce: bytes
    pq: bytes
    fingerprints: tuple[int, ...]


def unencrypted_message(message_id: int, data: bytes) -> bytes:
    """auth_key_id = 0, message_id, length, data (core.telegram.org/mtproto/description)."""
    return UNENCRYPTED_HEAD.pack(0, message_id, len(data)) + data


def client_message_id(unix_time: float) -> int:
    """A client message id: about unix time x 2^32, divisible by 4 (mtproto/description, "Message Identifier")."""
    return (int(unix_time * (1 << 32)) >> 2) << 2


def build_req_pq_multi(nonce: bytes, message_id: int) -> bytes:
    if len(nonce) != NONCE_SIZE:
        raise ValueError("the nonce is an int128")
    return unencrypted_message(message_id, CONSTRUCTOR.pack(REQ_PQ_MULTI) + nonce)


def _tl_bytes(value: bytes) -> bytes:
    """TL `string`/`bytes`: a 1-byte length (< 254) then the bytes, padded to 4 (mtproto/serialize)."""
    if len(value) >= 254:
        raise ValueError("long TL strings are not needed here")
    body = bytes([len(value)]) + value
    return body + b"\x00" * (-len(body) % 4)


def build_res_pq(nonce: bytes, server_nonce: bytes, pq: bytes, fingerprints: tuple[int, ...],
                 message_id: int) -> bytes:
    """The DC's answer, as an unencrypted message (server message ids are odd: mtproto/description)."""
    data = CONSTRUCTOR.pack(RES_PQ) + nonce + server_nonce + _tl_bytes(pq)
    data += CONSTRUCTOR.pack(VECTOR) + struct.pack("<i", len(fingerprints))
    data += b"".join(struct.pack("<q", f) for f in fingerprints)
    return unencrypted_message(message_id | 1, data)


def parse_req_pq_multi(packet: bytes) -> bytes:
    """The nonce of a req_pq_multi message; ProtocolError for anything else."""
    head = parse_message_head(packet)
    if isinstance(head, Incomplete) or head.encrypted or head.constructor != REQ_PQ_MULTI:
        raise ProtocolError("not a req_pq_multi message")
    start = UNENCRYPTED_HEAD.size + CONSTRUCTOR.size
    nonce = bytes(packet[start:start + NONCE_SIZE])
    if len(nonce) != NONCE_SIZE:
        raise ProtocolError("req_pq_multi without a full nonce")
    return nonce


def parse_res_pq(packet: bytes) -> ResPQ:
    """A resPQ message; ProtocolError for anything else (an encrypted message, another constructor, truncation)."""
    head = parse_message_head(packet)
    if isinstance(head, Incomplete) or head.encrypted or head.constructor != RES_PQ:
        raise ProtocolError("not a resPQ message")
    pos = UNENCRYPTED_HEAD.size + CONSTRUCTOR.size
    try:
        nonce, server_nonce = packet[pos:pos + 16], packet[pos + 16:pos + 32]
        pos += 32
        size = packet[pos]
        pq = bytes(packet[pos + 1:pos + 1 + size])
        pos += (1 + size + 3) // 4 * 4
        vector, count = struct.unpack_from("<Ii", packet, pos)
        if vector != VECTOR or not 0 <= count <= 64:
            raise ProtocolError("resPQ without a fingerprint vector")
        fingerprints = struct.unpack_from(f"<{count}q", packet, pos + 8)
    except (IndexError, struct.error):
        raise ProtocolError("truncated resPQ") from None
    if len(nonce) != NONCE_SIZE or len(server_nonce) != NONCE_SIZE or len(pq) != size:
        raise ProtocolError("truncated resPQ")
    return ResPQ(bytes(nonce), bytes(server_nonce), pq, tuple(fingerprints))
