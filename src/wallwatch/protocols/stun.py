"""STUN (RFC 5389) messages: enough for a Binding request and its answer.

Calls in WhatsApp, like most VoIP, begin by talking STUN to a relay; the lab's
call relays answer a Binding request and the probe sends one, so both ends use
this codec. Sans-IO: bytes in, frozen facts out.

Wire format (RFC 5389 §6): a 20-byte header -- 2-bit zero prefix, 14-bit
message type, 16-bit length of the attributes, the magic cookie 0x2112A442 and
a 96-bit transaction id -- then attributes as type/length/value, each value
padded to a multiple of 4 bytes (§15).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Sequence

from wallwatch.protocols.errors import ProtocolError

MAGIC_COOKIE = 0x2112A442  # RFC 5389 §6
HEADER_LENGTH = 20
TRANSACTION_ID_LENGTH = 12

BINDING = 0x001  # RFC 5389 §18.1: the only method RFC 5389 defines
CLASS_REQUEST, CLASS_INDICATION, CLASS_SUCCESS, CLASS_ERROR = 0b00, 0b01, 0b10, 0b11
_CLASS_NAMES = {CLASS_REQUEST: "request", CLASS_INDICATION: "indication", CLASS_SUCCESS: "success", CLASS_ERROR: "error"}

# Attribute types, RFC 5389 §18.2.
MAPPED_ADDRESS = 0x0001
XOR_MAPPED_ADDRESS = 0x0020
SOFTWARE = 0x8022
FINGERPRINT = 0x8028
# Microsoft's comprehension-optional attribute that Skype's and Teams' ICE carries in every
# Binding request ([MS-ICE2] "MS-IMPLEMENTATION-VERSION"); nDPI's stun.c names a flow that
# carries it SkypeCall ([nDPI]). Value: a 32-bit version, 2 in [MS-ICE2]'s examples.
MS_IMPLEMENTATION_VERSION = 0x8070

_FAMILY_IPV4, _FAMILY_IPV6 = 0x01, 0x02  # RFC 5389 §15.1


@dataclass(frozen=True, slots=True)
class StunAttribute:
    type: int
    value: bytes


@dataclass(frozen=True, slots=True)
class StunMessage:
    method: int
    stun_class: str  # "request" | "indication" | "success" | "error"
    transaction_id: bytes
    attributes: tuple[StunAttribute, ...]

    def attribute(self, attribute_type: int) -> bytes | None:
        """The first value of `attribute_type` (RFC 5389 §15: later duplicates are ignored)."""
        return next((a.value for a in self.attributes if a.type == attribute_type), None)

    @property
    def mapped_address(self) -> tuple[str, int] | None:
        """(address, port) from XOR-MAPPED-ADDRESS, else from MAPPED-ADDRESS, else None."""
        xor_value = self.attribute(XOR_MAPPED_ADDRESS)
        if xor_value is not None:
            return _decode_address(xor_value, self.transaction_id, xored=True)
        plain_value = self.attribute(MAPPED_ADDRESS)
        if plain_value is not None:
            return _decode_address(plain_value, self.transaction_id, xored=False)
        return None


def _message_type(method: int, stun_class: int) -> int:
    # RFC 5389 §6 figure 3: class bits C1 C0 sit at bits 8 and 4, between method bits.
    return (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((stun_class & 0b01) << 4)
        | ((stun_class & 0b10) << 7)
    )


def _split_message_type(message_type: int) -> tuple[int, int]:
    method = (message_type & 0x000F) | ((message_type & 0x00E0) >> 1) | ((message_type & 0x3E00) >> 2)
    stun_class = ((message_type >> 4) & 0b01) | ((message_type >> 7) & 0b10)
    return method, stun_class


def _encode_attribute(attribute_type: int, value: bytes) -> bytes:
    padding = b"\x00" * (-len(value) % 4)
    return struct.pack("!HH", attribute_type, len(value)) + value + padding


def _encode_message(method: int, stun_class: int, transaction_id: bytes, attributes: bytes) -> bytes:
    if len(transaction_id) != TRANSACTION_ID_LENGTH:
        raise ValueError(f"a STUN transaction id is {TRANSACTION_ID_LENGTH} bytes, got {len(transaction_id)}")
    header = struct.pack("!HHI", _message_type(method, stun_class), len(attributes), MAGIC_COOKIE)
    return header + transaction_id + attributes


def build_binding_request(transaction_id: bytes, attributes: Sequence[tuple[int, bytes]] = ()) -> bytes:
    """A Binding request (RFC 5389 §7.1): what a client sends first; plain, or with an
    implementation's own attributes (Skype's `MS_IMPLEMENTATION_VERSION`)."""
    encoded = b"".join(_encode_attribute(attribute_type, value) for attribute_type, value in attributes)
    return _encode_message(BINDING, CLASS_REQUEST, transaction_id, encoded)


def _xor_address_value(address: str, port: int, transaction_id: bytes) -> bytes:
    ip = ipaddress.ip_address(address)
    cookie = struct.pack("!I", MAGIC_COOKIE)
    # RFC 5389 §15.2: port XOR the cookie's top 16 bits; IPv4 XOR the cookie,
    # IPv6 XOR the cookie followed by the transaction id.
    mask = cookie if ip.version == 4 else cookie + transaction_id
    x_address = bytes(a ^ m for a, m in zip(ip.packed, mask))
    family = _FAMILY_IPV4 if ip.version == 4 else _FAMILY_IPV6
    return struct.pack("!BBH", 0, family, port ^ (MAGIC_COOKIE >> 16)) + x_address


def _decode_address(value: bytes, transaction_id: bytes, *, xored: bool) -> tuple[str, int]:
    if len(value) < 4:
        raise ProtocolError(f"address attribute of {len(value)} bytes is too short")
    _, family, port = struct.unpack_from("!BBH", value)
    size = {_FAMILY_IPV4: 4, _FAMILY_IPV6: 16}.get(family)
    if size is None:
        raise ProtocolError(f"unknown address family {family:#x}")
    if len(value) != 4 + size:
        raise ProtocolError(f"address attribute of {len(value)} bytes for family {family:#x}")
    packed = value[4:]
    if xored:
        port ^= MAGIC_COOKIE >> 16
        mask = struct.pack("!I", MAGIC_COOKIE) + transaction_id
        packed = bytes(a ^ m for a, m in zip(packed, mask))
    return str(ipaddress.ip_address(packed)), port


def build_binding_response(request: StunMessage | bytes, mapped_addr: str, port: int) -> bytes:
    """A Binding success response to `request` carrying XOR-MAPPED-ADDRESS (RFC 5389 §7.3.1)."""
    message = parse_stun(request) if isinstance(request, bytes) else request
    if message.method != BINDING or message.stun_class != "request":
        raise ProtocolError(f"not a Binding request: method {message.method:#x}, class {message.stun_class}")
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port} out of range")
    value = _xor_address_value(mapped_addr, port, message.transaction_id)
    return _encode_message(
        BINDING, CLASS_SUCCESS, message.transaction_id, _encode_attribute(XOR_MAPPED_ADDRESS, value)
    )


def looks_like_stun(data: bytes) -> bool:
    """Cheap test for a censor: zero top bits and the magic cookie (RFC 5389 §6)."""
    return len(data) >= HEADER_LENGTH and data[0] & 0xC0 == 0 and data[4:8] == struct.pack("!I", MAGIC_COOKIE)


def parse_stun(data: bytes) -> StunMessage:
    """Parse one STUN message (one UDP datagram). ProtocolError on anything else."""
    if len(data) < HEADER_LENGTH:
        raise ProtocolError(f"{len(data)} bytes is shorter than a STUN header ({HEADER_LENGTH})")
    message_type, length, cookie = struct.unpack_from("!HHI", data)
    if message_type & 0xC000:
        raise ProtocolError("the two most significant bits of a STUN message are not zero")
    if cookie != MAGIC_COOKIE:
        raise ProtocolError(f"magic cookie {cookie:#010x} is not {MAGIC_COOKIE:#010x}")
    if length % 4:
        raise ProtocolError(f"STUN length {length} is not a multiple of 4")
    if HEADER_LENGTH + length != len(data):
        raise ProtocolError(f"STUN length {length} but {len(data) - HEADER_LENGTH} bytes follow the header")
    method, stun_class = _split_message_type(message_type)
    return StunMessage(
        method=method,
        stun_class=_CLASS_NAMES[stun_class],
        transaction_id=bytes(data[8:HEADER_LENGTH]),
        attributes=_parse_attributes(data[HEADER_LENGTH:]),
    )


def _parse_attributes(body: bytes) -> tuple[StunAttribute, ...]:
    attributes: list[StunAttribute] = []
    offset = 0
    while offset < len(body):
        if offset + 4 > len(body):
            raise ProtocolError("truncated STUN attribute header")
        attribute_type, length = struct.unpack_from("!HH", body, offset)
        end = offset + 4 + length
        if end > len(body):
            raise ProtocolError(f"STUN attribute {attribute_type:#06x} runs past the message")
        attributes.append(StunAttribute(attribute_type, bytes(body[offset + 4 : end])))
        offset = end + (-length % 4)
    return tuple(attributes)
