"""QUIC v1 Initial packets: read the TLS ClientHello a client sends, and build one.

QUIC encrypts even its first packet, but with keys anyone can derive from the
packet's Destination Connection ID (RFC 9001 §5.2), so a censor can read the
SNI: the GFW does exactly that since 2024 (Zohaib et al., "Exposing and
Circumventing SNI-based QUIC Censorship of the Great Firewall of China",
USENIX Security 2025; artifact gfw-report/usenixsecurity25-quic-sni).

Steps, each in its own function: parse the long header (RFC 9000 §17.2,
§17.2.2), derive the Initial secrets (RFC 9001 §5.2), remove header protection
(RFC 9001 §5.4), decrypt the payload with AES-128-GCM (RFC 9001 §5.3), parse
the frames an Initial may carry (RFC 9000 §12.4 Table 3), reassemble the CRYPTO
stream by offset, and hand the bare TLS handshake message to
`wallwatch.protocols.tls.parse_client_hello` wrapped in TLS records (inside
QUIC the ClientHello has no 5-byte record header, RFC 9001 §4.1.3).

Crypto comes from `cryptography` (already a dependency): HKDF, AES-ECB for the
header-protection mask and AES-GCM. aioquic would do the same but pulls in a
C extension, pylsqpack and certifi for a few dozen lines we need.
Only QUIC v1 is decrypted; v2 (RFC 9369) uses another salt and labels, and the
GFW did not block it (artifact README, Table 3 payload 10).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from wallwatch.protocols.errors import Incomplete, ProtocolError
from wallwatch.protocols.tls import MAX_CLIENT_HELLO, ClientHello, build_client_hello, parse_client_hello

QUIC_V1 = 0x00000001
# RFC 9001 §5.2: initial_salt for QUIC v1.
INITIAL_SALT_V1 = bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a")
MAX_CID_LENGTH = 20  # RFC 9000 §17.2: a v1 endpoint drops longer connection ids
MIN_CLIENT_INITIAL_DATAGRAM = 1200  # RFC 9000 §14.1
AEAD_TAG_SIZE = 16
SAMPLE_SIZE = 16  # RFC 9001 §5.4.2
HP_SAMPLE_OFFSET = 4  # the sample starts 4 bytes after the packet number's first byte

# Long-header packet types for v1 (RFC 9000 §17.2 Table 5).
PACKET_INITIAL = 0x0
PACKET_0RTT = 0x1
PACKET_HANDSHAKE = 0x2
PACKET_RETRY = 0x3

# Frames permitted in Initial packets (RFC 9000 §12.4 Table 3).
FRAME_PADDING = 0x00
FRAME_PING = 0x01
FRAME_ACK = 0x02
FRAME_ACK_ECN = 0x03
FRAME_CRYPTO = 0x06
FRAME_CONNECTION_CLOSE = 0x1C

EXT_QUIC_TRANSPORT_PARAMETERS = 0x39  # RFC 9001 §8.2

# --- what the GFW does with it (usenixsecurity25-quic-sni artifact) --------
# "blocks QUIC packets where the source port is greater than the destination
# port" (README, Experiment 2; experiments/rule-srcport-greater-than-dst-port).
# The README's section title says ">=", the experiment and its name say ">";
# we follow the experiment. Equal ports are not covered by either wording.
def gfw_inspects_ports(src_port: int, dst_port: int) -> bool:
    return src_port > dst_port


# The GFW tracks a flow (src ip, src port, dst ip, dst port) for exactly 60 s
# and inspects only its first packet, so a random UDP payload sent first
# exempts the flow; after a trigger, residual blocking applies to the 3-tuple
# (src ip, dst ip, dst port) (experiments/flow-tracking-time/README).
GFW_FLOW_TRACKING_SECONDS = 60


# --- variable-length integers (RFC 9000 §16) --------------------------------


def decode_varint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, next position); ProtocolError if the data ends inside it."""
    if pos >= len(data):
        raise ProtocolError("QUIC varint runs past the packet")
    size = 1 << (data[pos] >> 6)
    if pos + size > len(data):
        raise ProtocolError("QUIC varint runs past the packet")
    value = data[pos] & 0x3F
    for byte in data[pos + 1 : pos + size]:
        value = value << 8 | byte
    return value, pos + size


def encode_varint(value: int, size: int | None = None) -> bytes:
    """Shortest encoding, or exactly `size` bytes (1, 2, 4 or 8)."""
    if size is None:
        size = next(s for s, limit in ((1, 1 << 6), (2, 1 << 14), (4, 1 << 30), (8, 1 << 62)) if value < limit)
    if size not in (1, 2, 4, 8) or value >= 1 << (8 * size - 2):
        raise ValueError(f"{value} does not fit a {size}-byte QUIC varint")
    encoded = bytearray(value.to_bytes(size, "big"))
    encoded[0] |= {1: 0x00, 2: 0x40, 4: 0x80, 8: 0xC0}[size]
    return bytes(encoded)


# --- the long header ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LongHeader:
    """A long-header packet as it is on the wire (first byte still protected)."""

    first_byte: int
    version: int
    dcid: bytes
    scid: bytes
    packet_type: int | None  # None for version negotiation (version 0)
    token: bytes  # Initial only
    pn_offset: int  # Initial/0-RTT/Handshake: where the packet number starts
    packet_end: int  # end of this packet inside the datagram (coalescing, §12.2)


def parse_long_header(datagram: bytes, start: int = 0) -> LongHeader:
    data = datagram
    if start >= len(data):
        raise ProtocolError("no QUIC packet")
    first = data[start]
    if not first & 0x80:
        raise ProtocolError("a short-header QUIC packet, not a long header")
    if start + 6 > len(data):
        raise ProtocolError("QUIC long header truncated")
    version = struct.unpack_from("!I", data, start + 1)[0]
    pos = start + 5
    dcid, pos = _connection_id(data, pos, version)
    scid, pos = _connection_id(data, pos, version)
    if version == 0:  # version negotiation: the rest is a list of versions (§17.2.1)
        return LongHeader(first, version, dcid, scid, None, b"", len(data), len(data))
    packet_type = (first >> 4) & 0x03
    token = b""
    if packet_type == PACKET_RETRY:
        return LongHeader(first, version, dcid, scid, packet_type, b"", len(data), len(data))
    if packet_type == PACKET_INITIAL:
        token_length, pos = decode_varint(data, pos)
        if pos + token_length > len(data):
            raise ProtocolError("QUIC token runs past the packet")
        token, pos = bytes(data[pos : pos + token_length]), pos + token_length
    length, pos = decode_varint(data, pos)
    if pos + length > len(data):
        raise ProtocolError(f"QUIC packet claims {length} bytes, {len(data) - pos} present (truncated)")
    return LongHeader(first, version, dcid, scid, packet_type, token, pos, pos + length)


def _connection_id(data: bytes, pos: int, version: int) -> tuple[bytes, int]:
    if pos >= len(data):
        raise ProtocolError("QUIC long header truncated")
    length = data[pos]
    if version == QUIC_V1 and length > MAX_CID_LENGTH:
        raise ProtocolError(f"connection id of {length} bytes exceeds QUIC v1's 20")
    if pos + 1 + length > len(data):
        raise ProtocolError("QUIC connection id runs past the packet")
    return bytes(data[pos + 1 : pos + 1 + length]), pos + 1 + length


# --- keys (RFC 9001 §5) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PacketKeys:
    key: bytes
    iv: bytes
    hp: bytes


def hkdf_expand_label(secret: bytes, label: str, length: int, context: bytes = b"") -> bytes:
    """TLS 1.3 HKDF-Expand-Label with SHA-256 (RFC 8446 §7.1)."""
    full_label = b"tls13 " + label.encode("ascii")
    info = struct.pack("!HB", length, len(full_label)) + full_label + struct.pack("!B", len(context)) + context
    return HKDFExpand(hashes.SHA256(), length, info).derive(secret)


def initial_secret(dcid: bytes) -> bytes:
    """HKDF-Extract(initial_salt, client's first Destination Connection ID)."""
    extract = hmac.HMAC(INITIAL_SALT_V1, hashes.SHA256())
    extract.update(dcid)
    return extract.finalize()


def initial_keys(dcid: bytes, *, server: bool = False) -> PacketKeys:
    """AES-128-GCM key, IV and header-protection key for one side's Initials."""
    secret = hkdf_expand_label(initial_secret(dcid), "server in" if server else "client in", 32)
    return PacketKeys(
        hkdf_expand_label(secret, "quic key", 16),
        hkdf_expand_label(secret, "quic iv", 12),
        hkdf_expand_label(secret, "quic hp", 16),
    )


def _mask(hp_key: bytes, sample: bytes) -> bytes:
    encryptor = Cipher(algorithms.AES(hp_key), modes.ECB()).encryptor()
    return encryptor.update(sample) + encryptor.finalize()


def _nonce(iv: bytes, packet_number: int) -> bytes:
    return bytes(a ^ b for a, b in zip(iv, packet_number.to_bytes(len(iv), "big")))


# --- decrypting -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CryptoFrame:
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class InitialPacket:
    header: LongHeader
    packet_number: int
    payload: bytes
    frame_types: tuple[int, ...]
    crypto: tuple[CryptoFrame, ...]


def decrypt_initial(datagram: bytes, start: int = 0, *, keys: PacketKeys | None = None) -> InitialPacket:
    """Remove header protection from and decrypt the Initial packet at `start`.

    Without `keys`, the client keys derived from the packet's own DCID are
    used: right for a client's first flight. (Server Initials are keyed by the
    client's original DCID, which they do not carry: pass
    `initial_keys(original_dcid, server=True)`.)
    """
    header = parse_long_header(datagram, start)
    if header.version != QUIC_V1:
        raise ProtocolError(f"QUIC version {header.version:#010x} is not v1")
    if header.packet_type != PACKET_INITIAL:
        raise ProtocolError(f"long-header packet type {header.packet_type} is not Initial")
    keys = keys or initial_keys(header.dcid)
    sample_at = header.pn_offset + HP_SAMPLE_OFFSET
    if sample_at + SAMPLE_SIZE > header.packet_end:
        raise ProtocolError("QUIC packet too short to sample for header protection")
    mask = _mask(keys.hp, bytes(datagram[sample_at : sample_at + SAMPLE_SIZE]))
    first = header.first_byte ^ (mask[0] & 0x0F)  # long header: low 4 bits protected
    pn_length = (first & 0x03) + 1
    protected_pn = datagram[header.pn_offset : header.pn_offset + pn_length]
    pn_bytes = bytes(b ^ m for b, m in zip(protected_pn, mask[1 : 1 + pn_length]))
    # The first Initial has no acknowledged predecessor, so the truncated
    # number is the full one (RFC 9000 §17.1, Appendix A.3 with largest = -1).
    packet_number = int.from_bytes(pn_bytes, "big")
    unprotected_header = bytes([first]) + bytes(datagram[start + 1 : header.pn_offset]) + pn_bytes
    ciphertext = bytes(datagram[header.pn_offset + pn_length : header.packet_end])
    try:
        payload = AESGCM(keys.key).decrypt(_nonce(keys.iv, packet_number), ciphertext, unprotected_header)
    except InvalidTag:
        raise ProtocolError("QUIC Initial fails authentication (wrong keys, or not QUIC)") from None
    frame_types, crypto = parse_initial_frames(payload)
    return InitialPacket(header, packet_number, payload, frame_types, crypto)


def parse_initial_frames(payload: bytes) -> tuple[tuple[int, ...], tuple[CryptoFrame, ...]]:
    """Walk the frames of a decrypted Initial; keep the CRYPTO data."""
    types: list[int] = []
    crypto: list[CryptoFrame] = []
    pos = 0
    while pos < len(payload):
        frame_type, pos = decode_varint(payload, pos)
        if frame_type == FRAME_PADDING:
            types.append(frame_type)
            while pos < len(payload) and payload[pos] == 0:  # runs of padding are one fact
                pos += 1
            continue
        types.append(frame_type)
        if frame_type == FRAME_PING:
            continue
        if frame_type in (FRAME_ACK, FRAME_ACK_ECN):
            pos = _skip_ack(payload, pos, ecn=frame_type == FRAME_ACK_ECN)
        elif frame_type == FRAME_CRYPTO:
            offset, pos = decode_varint(payload, pos)
            length, pos = decode_varint(payload, pos)
            if pos + length > len(payload):
                raise ProtocolError("CRYPTO frame runs past the packet")
            crypto.append(CryptoFrame(offset, bytes(payload[pos : pos + length])))
            pos += length
        elif frame_type == FRAME_CONNECTION_CLOSE:
            for _ in range(2):  # error code, offending frame type
                _, pos = decode_varint(payload, pos)
            reason_length, pos = decode_varint(payload, pos)
            pos += reason_length
            if pos > len(payload):
                raise ProtocolError("CONNECTION_CLOSE reason runs past the packet")
        else:
            raise ProtocolError(f"frame type {frame_type:#x} is not allowed in an Initial packet")
    return tuple(types), tuple(crypto)


def _skip_ack(payload: bytes, pos: int, *, ecn: bool) -> int:
    _, pos = decode_varint(payload, pos)  # largest acknowledged
    _, pos = decode_varint(payload, pos)  # ack delay
    range_count, pos = decode_varint(payload, pos)
    _, pos = decode_varint(payload, pos)  # first range
    if range_count > len(payload):
        raise ProtocolError("ACK frame claims more ranges than bytes")
    for _ in range(2 * range_count + (3 if ecn else 0)):
        _, pos = decode_varint(payload, pos)
    return pos


# --- reassembling the ClientHello ----------------------------------------------


class CryptoStream:
    """The CRYPTO stream of one encryption level, filled by offset (any order, overlaps ok)."""

    def __init__(self, limit: int = MAX_CLIENT_HELLO + 4) -> None:
        self._data = bytearray()
        self._filled = bytearray()
        self._limit = limit

    def add(self, frame: CryptoFrame) -> None:
        end = frame.offset + len(frame.data)
        if end > self._limit:
            raise ProtocolError(f"CRYPTO data up to offset {end} is beyond a ClientHello")
        if end > len(self._data):
            grow = end - len(self._data)
            self._data += bytes(grow)
            self._filled += bytes(grow)
        self._data[frame.offset : end] = frame.data
        self._filled[frame.offset : end] = b"\x01" * len(frame.data)

    def contiguous(self) -> bytes:
        """The bytes from offset 0 up to the first gap."""
        gap = self._filled.find(0)
        return bytes(self._data if gap < 0 else self._data[:gap])


def client_hello_from_handshake(handshake: bytes) -> ClientHello | Incomplete:
    """Parse a bare TLS handshake ClientHello (as carried in QUIC CRYPTO frames)."""
    if len(handshake) < 4:
        return Incomplete()
    needed = 4 + int.from_bytes(handshake[1:4], "big")
    if handshake[0] != 0x01:
        raise ProtocolError(f"first handshake message is type {handshake[0]}, not ClientHello")
    if len(handshake) < needed:
        return Incomplete(needed)
    message = handshake[:needed]
    # Wrap in TLS records (at most 2**14 bytes each, RFC 8446 §5.1) so the one
    # TLS parser reads it; record version 0x0301 as a TLS 1.3 first flight.
    records = b"".join(
        struct.pack("!BHH", 0x16, 0x0301, len(chunk)) + chunk
        for chunk in (message[i : i + 2**14] for i in range(0, len(message), 2**14))
    )
    return parse_client_hello(records)


@dataclass(frozen=True, slots=True)
class QuicClientHello:
    """The facts a censor gets from a client's Initial packet(s)."""

    version: int
    dcid: bytes
    scid: bytes
    packet_numbers: tuple[int, ...]
    client_hello: ClientHello

    @property
    def sni(self) -> str | None:
        return self.client_hello.sni


class ClientHelloAssembler:
    """Feed the client's datagrams of one flow; get the ClientHello once it is whole.

    Handles coalesced packets (RFC 9000 §12.2) and a ClientHello split over
    several Initial packets or datagrams (large post-quantum key shares do
    that), with CRYPTO frames in any order. Non-Initial long-header packets in
    a datagram are skipped; a short-header packet ends the datagram.
    """

    def __init__(self) -> None:
        self._stream = CryptoStream()
        self._packet_numbers: list[int] = []
        self._first: LongHeader | None = None

    def feed(self, datagram: bytes) -> QuicClientHello | Incomplete:
        pos = 0
        while pos < len(datagram) and datagram[pos] & 0x80:
            header = parse_long_header(datagram, pos)
            if header.packet_type == PACKET_INITIAL:
                packet = decrypt_initial(datagram, pos)
                self._first = self._first or packet.header
                self._packet_numbers.append(packet.packet_number)
                for frame in packet.crypto:
                    self._stream.add(frame)
            elif self._first is None:
                raise ProtocolError("the client's first QUIC packet is not an Initial")
            if header.packet_end <= pos:  # version negotiation/retry span the datagram
                break
            pos = header.packet_end
        if self._first is None:
            raise ProtocolError("no QUIC Initial packet in the datagram")
        hello = client_hello_from_handshake(self._stream.contiguous())
        if isinstance(hello, Incomplete):
            return hello
        first = self._first
        return QuicClientHello(first.version, first.dcid, first.scid, tuple(self._packet_numbers), hello)


def parse_client_initial(datagram: bytes) -> QuicClientHello | Incomplete:
    """The ClientHello of a single client datagram (Incomplete if it continues in the next)."""
    return ClientHelloAssembler().feed(datagram)


# --- building ------------------------------------------------------------------------


def protect_initial(
    unprotected_header: bytes, pn_length: int, payload: bytes, keys: PacketKeys
) -> bytes:
    """Encrypt a payload and apply header protection (RFC 9001 §5.3, §5.4.1).

    `unprotected_header` runs from the first byte through the packet number,
    with a Length field that already counts the AEAD tag.
    """
    pn_offset = len(unprotected_header) - pn_length
    packet_number = int.from_bytes(unprotected_header[pn_offset:], "big")
    ciphertext = AESGCM(keys.key).encrypt(_nonce(keys.iv, packet_number), payload, unprotected_header)
    sample_at = HP_SAMPLE_OFFSET - pn_length
    mask = _mask(keys.hp, ciphertext[sample_at : sample_at + SAMPLE_SIZE])
    header = bytearray(unprotected_header)
    header[0] ^= mask[0] & 0x0F
    for i in range(pn_length):
        header[pn_offset + i] ^= mask[1 + i]
    return bytes(header) + ciphertext


def _transport_parameters(scid: bytes) -> bytes:
    """A minimal quic_transport_parameters extension body (RFC 9000 §18.2)."""
    params = [
        (0x01, encode_varint(30_000)),  # max_idle_timeout, ms
        (0x04, encode_varint(1 << 20)),  # initial_max_data
        (0x08, encode_varint(100)),  # initial_max_streams_bidi
        (0x0F, scid),  # initial_source_connection_id (required of clients, §7.3)
    ]
    return b"".join(encode_varint(pid) + encode_varint(len(value)) + value for pid, value in params)


def quic_client_hello(sni: str | None, alpn: Sequence[str], scid: bytes) -> bytes:
    """A bare TLS ClientHello handshake message fit for QUIC.

    Built by `tls.build_client_hello`, then: record header dropped, legacy
    session id emptied (RFC 9001 §8.4 forbids middlebox compatibility mode),
    and a quic_transport_parameters extension appended (RFC 9001 §8.2).
    """
    body = build_client_hello(sni, alpn)[5 + 4 :]
    pos = 34  # legacy_version + random
    rest = body[pos + 1 + body[pos] :]  # skip the session id
    suites_end = 2 + int.from_bytes(rest[:2], "big")
    compression_end = suites_end + 1 + rest[suites_end]
    extensions = rest[compression_end + 2 :]
    tp = _transport_parameters(scid)
    extensions += struct.pack("!HH", EXT_QUIC_TRANSPORT_PARAMETERS, len(tp)) + tp
    new_body = body[:pos] + b"\x00" + rest[:compression_end] + struct.pack("!H", len(extensions)) + extensions
    return b"\x01" + len(new_body).to_bytes(3, "big") + new_body


def build_initial(
    sni: str | None,
    alpn: Sequence[str] = ("h3",),
    *,
    dcid: bytes | None = None,
    scid: bytes | None = None,
    packet_number: int = 0,
    pn_length: int = 4,
    min_datagram: int = MIN_CLIENT_INITIAL_DATAGRAM,
    handshake: bytes | None = None,
) -> bytes:
    """A client's first datagram: one protected Initial carrying a ClientHello.

    Padded with PADDING frames to `min_datagram` (RFC 9000 §14.1 asks 1200).
    `handshake` overrides the ClientHello bytes (for split or odd tests).
    """
    dcid = os.urandom(8) if dcid is None else dcid
    scid = os.urandom(8) if scid is None else scid
    if not 1 <= pn_length <= 4 or packet_number >= 1 << (8 * pn_length):
        raise ValueError("packet number does not fit its length")
    message = handshake if handshake is not None else quic_client_hello(sni, alpn, scid)
    frames = bytes([FRAME_CRYPTO]) + encode_varint(0) + encode_varint(len(message)) + message
    prefix = (
        bytes([0xC0 | (PACKET_INITIAL << 4) | (pn_length - 1)])
        + struct.pack("!I", QUIC_V1)
        + bytes([len(dcid)]) + dcid
        + bytes([len(scid)]) + scid
        + encode_varint(0)  # no token
    )
    length_size = 2  # a 2-byte Length, as in RFC 9001 Appendix A.2
    overhead = len(prefix) + length_size + pn_length + AEAD_TAG_SIZE
    # Pad to the datagram minimum and to the header-protection sample size.
    target = max(min_datagram - overhead, len(frames), HP_SAMPLE_OFFSET - pn_length + SAMPLE_SIZE - AEAD_TAG_SIZE)
    frames += bytes(target - len(frames))
    header = prefix + encode_varint(pn_length + len(frames) + AEAD_TAG_SIZE, length_size)
    header += packet_number.to_bytes(pn_length, "big")
    return protect_initial(header, pn_length, frames, initial_keys(dcid))
