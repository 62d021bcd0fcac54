"""The STUN codec (RFC 5389), checked against the RFC's own test vectors."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wallwatch.protocols.errors import ProtocolError
from wallwatch.protocols.stun import (
    BINDING,
    MAGIC_COOKIE,
    SOFTWARE,
    XOR_MAPPED_ADDRESS,
    build_binding_request,
    build_binding_response,
    looks_like_stun,
    parse_stun,
)

TXID = bytes.fromhex("b7e7a701bc34d686fa87dfae")

# RFC 5769 §2.2: sample IPv4 response (SOFTWARE, XOR-MAPPED-ADDRESS 192.0.2.1:32853,
# MESSAGE-INTEGRITY, FINGERPRINT), from the RFC verbatim.
RFC5769_IPV4_RESPONSE = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "002000080001a147e112a643"
    "000800142b91f599fd9e90c38c7489f92af9ba53f06be7d7"
    "80280004c07d4c96"
)


def test_rfc5769_ipv4_response_vector() -> None:
    message = parse_stun(RFC5769_IPV4_RESPONSE)
    assert (message.method, message.stun_class, message.transaction_id) == (BINDING, "success", TXID)
    assert message.mapped_address == ("192.0.2.1", 32853)
    assert message.attribute(SOFTWARE) == b"test vector"


def test_binding_request_layout() -> None:
    request = build_binding_request(TXID)
    assert request == struct.pack("!HHI", 0x0001, 0, MAGIC_COOKIE) + TXID
    parsed = parse_stun(request)
    assert (parsed.method, parsed.stun_class, parsed.attributes) == (BINDING, "request", ())
    assert looks_like_stun(request)


def test_response_matches_rfc_encoding_of_xor_mapped_address() -> None:
    response = build_binding_response(build_binding_request(TXID), "192.0.2.1", 32853)
    # Same XOR-MAPPED-ADDRESS bytes as the RFC 5769 vector.
    assert bytes.fromhex("002000080001a147e112a643") in response
    assert response[:2] == b"\x01\x01"


@settings(max_examples=100)  # a round trip over valid input, not a fuzz target: its own count
@given(
    txid=st.binary(min_size=12, max_size=12),
    address=st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str),
    port=st.integers(0, 0xFFFF),
)
def test_response_round_trip(txid: bytes, address: str, port: int) -> None:
    response = parse_stun(build_binding_response(build_binding_request(txid), address, port))
    assert response.transaction_id == txid
    assert response.stun_class == "success"
    assert response.mapped_address == (address, port)
    assert response.attribute(XOR_MAPPED_ADDRESS) is not None


@given(st.binary(max_size=200))
def test_arbitrary_bytes_parse_or_raise_protocol_error(data: bytes) -> None:
    try:
        message = parse_stun(data)
    except ProtocolError:
        return
    try:
        message.mapped_address
    except ProtocolError:
        pass


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "shorter"),
        (build_binding_request(TXID)[:19], "shorter"),
        (b"\xc0" + build_binding_request(TXID)[1:], "most significant"),
        (build_binding_request(TXID)[:4] + b"\x00\x00\x00\x00" + TXID, "cookie"),
        (build_binding_request(TXID) + b"\x00\x00\x00\x00", "follow the header"),
        (struct.pack("!HHI", 1, 4, MAGIC_COOKIE) + TXID + b"\x00\x20\x00\x08", "runs past"),
    ],
)
def test_bad_bytes_are_rejected_with_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        parse_stun(data)


def test_response_only_to_a_binding_request() -> None:
    response = build_binding_response(build_binding_request(TXID), "198.18.0.2", 40000)
    with pytest.raises(ProtocolError, match="not a Binding request"):
        build_binding_response(response, "198.18.0.2", 40000)
