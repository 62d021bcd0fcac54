"""Tor's TLS ClientHello: recognise the fingerprint of tor's link handshake, build look-alikes.

A tor client opens every link (to a guard or bridge) with its own OpenSSL
configuration, so its ClientHello is recognisable; the GFW blocked Tor by its
cipher list as early as 2011 (Winter & Lindskog, "How the Great Firewall of
China is Blocking Tor", FOCI 2012). The facts below were captured, not
recalled: Debian 12's tor 0.4.9.11 (OpenSSL 3.0) was started inside a
network namespace holding only `lo`, with `UseBridges 1` and a bridge at
127.0.0.1, and the listener recorded its ClientHello (`CAPTURED_CLIENT_HELLO`).
What marks it:

* cipher suites, in order: TLS 1.3 suites 1301, 1303, 1302 (OpenSSL's
  default is 1302, 1303, 1301), then tor's TLS 1.2 list ending in
  RSA-AES-CBC suites and the renegotiation SCSV;
* supported groups P-256, X25519, P-224 (P-224 is offered by almost nothing
  else), and the key share is P-256, not X25519;
* no ALPN; OpenSSL's extension order with padding (21) to 512 bytes;
* SNI `www.` + 4..25 random base32 characters + `.com` (tor's
  `crypto_random_hostname(4, 25, "www.", ".com")` in tortls_openssl.c; the
  capture shows 12 and 25 characters).

Limits: another tor build (other OpenSSL version, LibreSSL, tor's Rust client
arti with rustls) has another ClientHello; pluggable transports (obfs4,
Snowflake, meek, WebTunnel) exist precisely to not look like this. The SNI
pattern alone matches ordinary names like www.google.com, so a fingerprint
needs the cipher list or groups too.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass

from wallwatch.protocols.errors import Incomplete, ProtocolError
from wallwatch.protocols.tls import MAX_CLIENT_HELLO, ClientHello, parse_client_hello

# Captured from tor 0.4.9.11 / OpenSSL 3.0 (Debian 12), SNI www.5bke6f3gurdm.com.
CAPTURED_CLIENT_HELLO = bytes.fromhex(
    "1603010200010001fc0303c5629e7d7641869fe276d375cab0d49b0b5e76d84a"
    "3352a87f8715eef89ca2c820cecd37d0b49a12d951245a6ea45d26ab399dfddc"
    "fd7d9a0a012ecf9bc1b9d6210024130113031302c02bc02fcca9cca8c02cc030"
    "c00ac009c013c014009c009d002f003500ff0100018f00000019001700001477"
    "77772e35626b65366633677572646d2e636f6d000b000403000102000a000800"
    "060017001d0015002300000016000000170000000d002a002804030503060308"
    "0708080809080a080b0804080508060401050106010303030103020402050206"
    "02002b00050403040303002d0002010100330047004500170041042802a46e13"
    "0c570a290e0f78d41244254bacdd82760af2a66f17c3247b7c22f78c1e075179"
    "2a4d6916ea08c5e8abd1511806dfd6cc128323c921d9a651c71409001500c6"
) + bytes(198)

TOR_CIPHER_SUITES = (
    0x1301, 0x1303, 0x1302,
    0xC02B, 0xC02F, 0xCCA9, 0xCCA8, 0xC02C, 0xC030, 0xC00A, 0xC009, 0xC013, 0xC014,
    0x009C, 0x009D, 0x002F, 0x0035, 0x00FF,
)
TOR_EXTENSION_TYPES = (0, 11, 10, 35, 22, 23, 13, 43, 45, 51, 21)
TOR_SUPPORTED_GROUPS = (0x0017, 0x001D, 0x0015)  # secp256r1, x25519, secp224r1
TOR_SNI = re.compile(r"www\.[a-z2-7]{4,25}\.com")

EXT_SERVER_NAME = 0
EXT_SUPPORTED_GROUPS = 10
EXT_KEY_SHARE = 51
EXT_PADDING = 21  # RFC 7685
PADDED_HANDSHAKE_SIZE = 512  # OpenSSL pads ClientHellos of 256..511 bytes to 512


@dataclass(frozen=True, slots=True)
class TorFingerprint:
    """Each mark separately (facts), and their conjunction."""

    client_hello: ClientHello
    cipher_suites_match: bool
    extension_order_matches: bool
    supported_groups: tuple[int, ...]
    groups_match: bool
    sni_matches: bool
    no_alpn: bool

    @property
    def is_tor(self) -> bool:
        return self.cipher_suites_match and self.groups_match and self.extension_order_matches and self.no_alpn and self.sni_matches


def _handshake_body(data: bytes) -> bytes:
    """The ClientHello body out of its TLS records (call after parse_client_hello accepted them)."""
    payload = bytearray()
    pos = 0
    while pos + 5 <= len(data):
        length = struct.unpack_from("!H", data, pos + 3)[0]
        payload += data[pos + 5 : pos + 5 + length]
        pos += 5 + length
        if len(payload) >= 4 and len(payload) >= 4 + int.from_bytes(payload[1:4], "big"):
            break
    return bytes(payload[4 : 4 + int.from_bytes(payload[1:4], "big")])


def _extensions(body: bytes) -> list[tuple[int, bytes]]:
    """(type, body) of each extension of a ClientHello body."""
    pos = 34
    pos += 1 + body[pos]  # session id
    pos += 2 + int.from_bytes(body[pos : pos + 2], "big")  # cipher suites
    pos += 1 + body[pos]  # compression methods
    if pos + 2 > len(body):
        return []
    end = pos + 2 + int.from_bytes(body[pos : pos + 2], "big")
    pos += 2
    found = []
    while pos + 4 <= end:
        ext_type, length = struct.unpack_from("!HH", body, pos)
        found.append((ext_type, body[pos + 4 : pos + 4 + length]))
        pos += 4 + length
    return found


def _groups(extensions: list[tuple[int, bytes]]) -> tuple[int, ...]:
    for ext_type, ext_body in extensions:
        if ext_type == EXT_SUPPORTED_GROUPS and len(ext_body) >= 2:
            listed = ext_body[2 : 2 + int.from_bytes(ext_body[:2], "big")]
            return tuple(struct.unpack(f"!{len(listed) // 2}H", listed[: len(listed) // 2 * 2]))
    return ()


def fingerprint(data: bytes) -> TorFingerprint | Incomplete:
    """Compare a client's first TLS bytes with tor's ClientHello."""
    hello = parse_client_hello(data)
    if isinstance(hello, Incomplete):
        return hello
    groups = _groups(_extensions(_handshake_body(data)))
    return TorFingerprint(
        client_hello=hello,
        cipher_suites_match=hello.cipher_suites == TOR_CIPHER_SUITES,
        extension_order_matches=hello.extension_types == TOR_EXTENSION_TYPES,
        supported_groups=groups,
        groups_match=groups == TOR_SUPPORTED_GROUPS,
        sni_matches=hello.sni is not None and TOR_SNI.fullmatch(hello.sni) is not None,
        no_alpn=not hello.alpn,
    )


# --- building -----------------------------------------------------------------

_BASE32 = "abcdefghijklmnopqrstuvwxyz234567"


def random_tor_hostname() -> str:
    """www.<4..25 base32 chars>.com, as tor's client picks its SNI."""
    length = 4 + os.urandom(1)[0] % 22
    return "www." + "".join(_BASE32[b % 32] for b in os.urandom(length)) + ".com"


def build_client_hello(sni: str | None = None) -> bytes:
    """A ClientHello shaped like tor's: the capture with fresh random, session
    id, key share and SNI, re-padded to 512 bytes as OpenSSL does.

    The key share is random bytes behind the uncompressed-point marker, not a
    real P-256 point: enough for fingerprinting tests, not for a handshake.
    """
    name = (sni or random_tor_hostname()).encode("ascii")
    body = _handshake_body(CAPTURED_CLIENT_HELLO)
    extensions = []
    for ext_type, ext_body in _extensions(body):
        if ext_type == EXT_SERVER_NAME:
            entry = b"\x00" + struct.pack("!H", len(name)) + name
            ext_body = struct.pack("!H", len(entry)) + entry
        elif ext_type == EXT_KEY_SHARE:
            point = b"\x04" + os.urandom(64)
            share = struct.pack("!HH", 0x0017, len(point)) + point
            ext_body = struct.pack("!H", len(share)) + share
        elif ext_type == EXT_PADDING:
            continue
        extensions.append(struct.pack("!HH", ext_type, len(ext_body)) + ext_body)
    head = body[:2] + os.urandom(32) + b"\x20" + os.urandom(32)
    suites_and_compression = body[67 : 67 + 2 + 2 * len(TOR_CIPHER_SUITES) + 2]
    unpadded = head + suites_and_compression
    size_without_padding = 4 + len(unpadded) + 2 + sum(map(len, extensions))
    # OpenSSL adds the padding extension when the handshake is 256..511 bytes.
    if 256 <= size_without_padding < PADDED_HANDSHAKE_SIZE:  # ssl/statem/extensions_clnt.c
        fill = PADDED_HANDSHAKE_SIZE - size_without_padding
        fill = fill - 4 if fill >= 4 else 0
        extensions.append(struct.pack("!HH", EXT_PADDING, fill) + bytes(fill))
    all_extensions = b"".join(extensions)
    hello_body = unpadded + struct.pack("!H", len(all_extensions)) + all_extensions
    handshake = b"\x01" + len(hello_body).to_bytes(3, "big") + hello_body
    if len(handshake) > MAX_CLIENT_HELLO:
        raise ProtocolError("ClientHello too large")
    return struct.pack("!BHH", 0x16, 0x0301, len(handshake)) + handshake
