"""WhatsApp's chat transport: framing and the Noise handshake, sans-IO.

What goes on the wire, in order ([whatsmeow], [Baileys], [yowsup], [Noise]):

1. optionally an edge-routing prefix: ``'E' 'D' 0x00 0x01``, a 3-byte
   big-endian length, then that many bytes of routing info
   (Baileys ``noise-handler.ts``; yowsup ``layers/noise/layer.py``);
2. the connection header ``'W' 'A' <magic> <dict version>``; today's web
   clients send ``WA 6 3`` (whatsmeow ``socket/constants.go``: WAMagicValue 6,
   token.DictVersion 3; Baileys ``NOISE_WA_HEADER``); native clients sent
   ``WA 1 6`` (2016), ``WA 2 1`` (2019), ``WA 3 0``, ``WA 4 0`` (yowsup history);
3. frames, each a 3-byte big-endian length and a payload
   (whatsmeow ``socket/framesocket.go``, FrameLengthSize 3, FrameMaxSize 2^24);
4. in those frames, ``Noise_XX_25519_AESGCM_SHA256`` with the connection header
   as the prologue (whatsmeow ``handshake.go``). The three handshake messages
   travel inside protobuf ``HandshakeMessage`` envelopes (clientHello = 2,
   serverHello = 3, clientFinish = 4), so the first frame is
   ``00 00 24 12 22 0a 20 <32-byte ephemeral>`` exactly as a real client's;
5. then every frame is one AES-GCM transport message.

The Noise state machine is the `noiseprotocol` library's; this module adds the
framing, the envelopes and h11-style connection objects: feed received bytes,
get events, drain bytes to send. The application payloads of the handshake
(WhatsApp's signed client/server certificates) are left empty: the lab's
servers are not WhatsApp's, and nothing a censor can see depends on them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum, auto

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives import serialization
from noise.connection import Keypair, NoiseConnection

from wallwatch.protocols.errors import Incomplete, ProtocolError

WA_MAGIC = 6
WA_DICT_VERSION = 3
NOISE_PROTOCOL = b"Noise_XX_25519_AESGCM_SHA256"
EDGE_ROUTING_MAGIC = b"ED\x00\x01"
FRAME_LENGTH_SIZE = 3
FRAME_MAX_SIZE = 1 << 24
# Every connection header version seen in the wild has magic 1-6 and a
# dictionary version 0-6; a little headroom keeps the fingerprint working for
# the next few versions without matching arbitrary "WA" text.
_PLAUSIBLE_MAGIC = range(1, 9)
_PLAUSIBLE_DICT_VERSION = range(0, 9)
# Routing info is a few dozen bytes in Baileys; a bound keeps the header parse cheap.
MAX_ROUTING_INFO = 4096


def connection_header(magic: int = WA_MAGIC, dict_version: int = WA_DICT_VERSION) -> bytes:
    return b"WA" + bytes([magic, dict_version])


def edge_routing_prefix(routing_info: bytes) -> bytes:
    if len(routing_info) > MAX_ROUTING_INFO:
        raise ValueError("routing info too long")
    return EDGE_ROUTING_MAGIC + len(routing_info).to_bytes(3, "big") + routing_info


def encode_frame(payload: bytes) -> bytes:
    if len(payload) >= FRAME_MAX_SIZE:
        raise ValueError(f"frame of {len(payload)} bytes exceeds the 3-byte length")
    return len(payload).to_bytes(FRAME_LENGTH_SIZE, "big") + payload


@dataclass(frozen=True, slots=True)
class StreamHeader:
    edge_routing: bytes | None
    magic: int
    dict_version: int
    length: int  # bytes of the stream the header occupies

    @property
    def connection_header(self) -> bytes:
        return connection_header(self.magic, self.dict_version)


def _expect_prefix(data: bytes, expected: bytes, what: str) -> None:
    if not expected.startswith(data[: len(expected)]):
        raise ProtocolError(f"not a WhatsApp stream: bad {what}")


def parse_stream_header(data: bytes) -> StreamHeader | Incomplete:
    """Recognise the optional ``ED`` prefix and the ``WA`` header at a stream's start."""
    routing: bytes | None = None
    pos = 0
    if data[:1] == b"E":
        _expect_prefix(data, EDGE_ROUTING_MAGIC, "edge-routing prefix")
        if len(data) < 7:
            return Incomplete()
        size = int.from_bytes(data[4:7], "big")
        if size > MAX_ROUTING_INFO:
            raise ProtocolError("not a WhatsApp stream: implausible routing info length")
        if len(data) < 7 + size:
            return Incomplete(7 + size + 4)
        routing = bytes(data[7 : 7 + size])
        pos = 7 + size
    header = data[pos : pos + 4]
    _expect_prefix(header, b"WA", "connection header")
    if len(header) >= 3 and header[2] not in _PLAUSIBLE_MAGIC:
        raise ProtocolError(f"not a WhatsApp stream: magic {header[2]}")
    if len(header) >= 4 and header[3] not in _PLAUSIBLE_DICT_VERSION:
        raise ProtocolError(f"not a WhatsApp stream: dictionary version {header[3]}")
    if len(header) < 4:
        return Incomplete(pos + 4)
    return StreamHeader(routing, header[2], header[3], pos + 4)


class FrameDecoder:
    """Splits a byte stream into frames; keeps a partial frame until it completes."""

    def __init__(self, max_size: int = FRAME_MAX_SIZE) -> None:
        self._buffer = bytearray()
        self._max_size = max_size

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        frames = []
        while len(self._buffer) >= FRAME_LENGTH_SIZE:
            size = int.from_bytes(self._buffer[:FRAME_LENGTH_SIZE], "big")
            if size > self._max_size:
                raise ProtocolError(f"frame of {size} bytes exceeds the limit of {self._max_size}")
            if len(self._buffer) < FRAME_LENGTH_SIZE + size:
                break
            frames.append(bytes(self._buffer[FRAME_LENGTH_SIZE : FRAME_LENGTH_SIZE + size]))
            del self._buffer[: FRAME_LENGTH_SIZE + size]
        return frames

    @property
    def buffered(self) -> int:
        return len(self._buffer)


# --- the protobuf HandshakeMessage envelope ----------------------------------
# Hand-written because it is three fixed messages of bytes fields; pulling in
# protobuf and generated code for that would dwarf the codec.

_CLIENT_HELLO, _SERVER_HELLO, _CLIENT_FINISH = 2, 3, 4
_KEY_LEN, _SEALED_KEY_LEN = 32, 48  # X25519 public key; the same sealed with a 16-byte GCM tag


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, value: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 35:
            raise ProtocolError("truncated or oversized protobuf varint")
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos


def _fields(data: bytes) -> dict[int, bytes]:
    """Length-delimited fields of one protobuf message (other wire types are refused)."""
    fields: dict[int, bytes] = {}
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        if key & 7 != 2:
            raise ProtocolError(f"unexpected protobuf wire type {key & 7}")
        size, pos = _read_varint(data, pos)
        if pos + size > len(data):
            raise ProtocolError("protobuf field runs past the message")
        fields[key >> 3] = data[pos : pos + size]
        pos += size
    return fields


def _wrap(kind: int, parts: list[bytes]) -> bytes:
    inner = b"".join(_field(i + 1, part) for i, part in enumerate(parts) if part)
    return _field(kind, inner)


def _unwrap(kind: int, frame: bytes) -> dict[int, bytes]:
    outer = _fields(frame)
    if kind not in outer:
        raise ProtocolError(f"handshake frame lacks HandshakeMessage field {kind}")
    return _fields(outer[kind])


# --- connections ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientHeaderReceived:
    header: StreamHeader


@dataclass(frozen=True, slots=True)
class HandshakeComplete:
    remote_static: bytes


@dataclass(frozen=True, slots=True)
class MessageReceived:
    plaintext: bytes


Event = ClientHeaderReceived | HandshakeComplete | MessageReceived


class _State(Enum):
    IDLE = auto()
    AWAIT_HEADER = auto()
    AWAIT_CLIENT_HELLO = auto()
    AWAIT_SERVER_HELLO = auto()
    AWAIT_CLIENT_FINISH = auto()
    TRANSPORT = auto()
    FAILED = auto()


def generate_static_key() -> bytes:
    return X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def _noise(static_private: bytes, prologue: bytes, initiator: bool) -> NoiseConnection:
    noise = NoiseConnection.from_name(NOISE_PROTOCOL)
    noise.set_keypair_from_private_bytes(Keypair.STATIC, static_private)
    noise.set_prologue(prologue)
    noise.set_as_initiator() if initiator else noise.set_as_responder()
    noise.start_handshake()
    return noise


class _Connection:
    """What client and server share: framing, the outgoing buffer, transport crypto."""

    def __init__(self, static_private: bytes | None) -> None:
        self.static_private = static_private or generate_static_key()
        self._outgoing = bytearray()
        self._frames = FrameDecoder()
        self._noise: NoiseConnection | None = None
        # noiseprotocol deletes its handshake state when the handshake ends; a
        # reference kept here still holds the peer's static key afterwards.
        self._handshake_state: object | None = None
        self.state = _State.IDLE

    def data_to_send(self) -> bytes:
        data = bytes(self._outgoing)
        self._outgoing.clear()
        return data

    def send_message(self, plaintext: bytes) -> None:
        if self.state is not _State.TRANSPORT or self._noise is None:
            raise RuntimeError("send_message before the handshake completed")
        self._outgoing += encode_frame(self._noise.encrypt(plaintext))

    def _send_frame(self, payload: bytes) -> None:
        self._outgoing += encode_frame(payload)

    def _handle_frames(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        try:
            for frame in self._frames.feed(data):
                events += self._handle_frame(frame)
        except ProtocolError:
            self.state = _State.FAILED
            raise
        except Exception as exc:  # noiseprotocol and cryptography raise many kinds
            self.state = _State.FAILED
            raise ProtocolError(f"WhatsApp handshake failed: {exc.__class__.__name__}: {exc}") from None
        return events

    def _start_noise(self, prologue: bytes, initiator: bool) -> NoiseConnection:
        self._noise = _noise(self.static_private, prologue, initiator)
        self._handshake_state = self._noise.noise_protocol.handshake_state
        return self._noise

    def _remote_static(self) -> bytes:
        return bytes(self._handshake_state.rs.public_bytes)  # type: ignore[union-attr]

    def _transport(self, frame: bytes) -> list[Event]:
        assert self._noise is not None
        return [MessageReceived(bytes(self._noise.decrypt(frame)))]

    def _handle_frame(self, frame: bytes) -> list[Event]:
        raise NotImplementedError


class ChatClient(_Connection):
    def __init__(
        self,
        *,
        edge_routing: bytes | None = None,
        static_private: bytes | None = None,
        magic: int = WA_MAGIC,
        dict_version: int = WA_DICT_VERSION,
    ) -> None:
        super().__init__(static_private)
        self.edge_routing = edge_routing
        self.header = connection_header(magic, dict_version)

    def initiate(self) -> None:
        """Queue the first flight: prefix, header and the clientHello frame in one write."""
        if self.state is not _State.IDLE:
            raise RuntimeError("initiate() called twice")
        self._start_noise(self.header, initiator=True)
        if self.edge_routing is not None:
            self._outgoing += edge_routing_prefix(self.edge_routing)
        self._outgoing += self.header
        ephemeral = bytes(self._noise.write_message())
        self._send_frame(_wrap(_CLIENT_HELLO, [ephemeral]))
        self.state = _State.AWAIT_SERVER_HELLO

    def receive_data(self, data: bytes) -> list[Event]:
        if self.state is _State.IDLE:
            raise RuntimeError("receive_data before initiate()")
        if self.state is _State.FAILED:
            raise ProtocolError("connection already failed")
        return self._handle_frames(data)

    def _handle_frame(self, frame: bytes) -> list[Event]:
        assert self._noise is not None
        if self.state is _State.TRANSPORT:
            return self._transport(frame)
        hello = _unwrap(_SERVER_HELLO, frame)
        message = hello.get(1, b"") + hello.get(2, b"") + hello.get(3, b"")
        self._noise.read_message(message)
        finish = bytes(self._noise.write_message())
        self._send_frame(_wrap(_CLIENT_FINISH, [finish[:_SEALED_KEY_LEN], finish[_SEALED_KEY_LEN:]]))
        self.state = _State.TRANSPORT
        return [HandshakeComplete(self._remote_static())]


class ChatServer(_Connection):
    def __init__(self, *, static_private: bytes | None = None) -> None:
        super().__init__(static_private)
        self._head = bytearray()
        self.state = _State.AWAIT_HEADER
        self.header: StreamHeader | None = None

    def receive_data(self, data: bytes) -> list[Event]:
        if self.state is _State.FAILED:
            raise ProtocolError("connection already failed")
        if self.state is not _State.AWAIT_HEADER:
            return self._handle_frames(data)
        self._head += data
        try:
            parsed = parse_stream_header(bytes(self._head))
        except ProtocolError:
            self.state = _State.FAILED
            raise
        if isinstance(parsed, Incomplete):
            return []
        self.header = parsed
        self._start_noise(parsed.connection_header, initiator=False)
        self.state = _State.AWAIT_CLIENT_HELLO
        rest = bytes(self._head[parsed.length :])
        self._head.clear()
        return [ClientHeaderReceived(parsed), *self._handle_frames(rest)]

    def _handle_frame(self, frame: bytes) -> list[Event]:
        assert self._noise is not None
        if self.state is _State.TRANSPORT:
            return self._transport(frame)
        if self.state is _State.AWAIT_CLIENT_HELLO:
            hello = _unwrap(_CLIENT_HELLO, frame)
            self._noise.read_message(hello.get(1, b""))
            reply = bytes(self._noise.write_message())
            parts = [reply[:_KEY_LEN], reply[_KEY_LEN : _KEY_LEN + _SEALED_KEY_LEN], reply[_KEY_LEN + _SEALED_KEY_LEN :]]
            self._send_frame(_wrap(_SERVER_HELLO, parts))
            self.state = _State.AWAIT_CLIENT_FINISH
            return []
        finish = _unwrap(_CLIENT_FINISH, frame)
        self._noise.read_message(finish.get(1, b"") + finish.get(2, b""))
        self.state = _State.TRANSPORT
        return [HandshakeComplete(self._remote_static())]


def random_routing_info(size: int = 8) -> bytes:
    return os.urandom(size)


# --- the clients' openings, era by era --------------------------------------------
# What a DPI engine keys on is the first bytes of the stream ([nDPI] whatsapp.c
# lists them, release by release): before 2018 native clients opened with the
# bare header `WA 1 5`; from 2018 they go through the edge: `ED 0 1`, a 3-byte
# length and routing info starting with a protobuf tag 0x08, then the header;
# nDPI 4.2 (2022) knows the edge opening with 2 bytes of routing info and
# `WA 2 0`, later releases 4 bytes of routing info; today's clients send
# `WA 6 3` (whatsmeow, Baileys).


@dataclass(frozen=True, slots=True)
class Opening:
    edge_routing: bytes | None
    magic: int
    dict_version: int


OPENINGS: dict[str, Opening] = {
    "2017": Opening(None, 1, 5),
    "2022": Opening(b"\x08\x00", 2, 0),
    # Routing info as an edge hands it out: protobuf fields 1 and 2 (varints).
    "today": Opening(b"\x08\x02\x10\x05", WA_MAGIC, WA_DICT_VERSION),
}


def client_for(opening: str = "today", *, static_private: bytes | None = None) -> ChatClient:
    """A chat client that opens as the clients of `opening` (a key of OPENINGS) did."""
    try:
        chosen = OPENINGS[opening]
    except KeyError:
        raise ValueError(f"unknown WhatsApp opening {opening!r}; known: {', '.join(OPENINGS)}") from None
    return ChatClient(edge_routing=chosen.edge_routing, static_private=static_private, magic=chosen.magic,
                      dict_version=chosen.dict_version)
