"""Tor ClientHello fingerprint, against two ClientHellos captured from tor 0.4.9.11."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from tests.fuzzing import examples
from wallwatch.protocols import tor
from wallwatch.protocols.errors import Incomplete, ProtocolError
from wallwatch.protocols.tls import build_client_hello as build_browser_like_hello, parse_client_hello

# A second capture from the same run (tor reconnecting), SNI with 25 random characters.
SECOND_CAPTURE = bytes.fromhex(
    "1603010200010001fc0303b09102bed02b63a2bb951a9573b4dcbee7049777f2"
    "dddb9bbe68d46f74af300020b7bd053790671086266d947412268e2063188c9e"
    "f8ae52211890f93637d5b1610024130113031302c02bc02fcca9cca8c02cc030"
    "c00ac009c013c014009c009d002f003500ff0100018f00000026002400002177"
    "77772e6a69616e32347766767a78327832756135357a6f69633263672e636f6d"
    "000b000403000102000a000800060017001d0015002300000016000000170000"
    "000d002a0028040305030603080708080809080a080b08040805080604010501"
    "0601030303010302040205020602002b00050403040303002d00020101003300"
    "4700450017004104d40a566bcfd86d81e1d088e0fce696708422784e932a51f0"
    "57659e312341ab8abaf60b6dbbb3079068dd2012ef85c9528797945d5903cee1"
    "4fb6092396517822001500b9"
) + bytes(185)


@pytest.mark.parametrize("capture", [tor.CAPTURED_CLIENT_HELLO, SECOND_CAPTURE])
def test_captured_tor_hellos_are_tor(capture: bytes) -> None:
    result = tor.fingerprint(capture)
    assert isinstance(result, tor.TorFingerprint) and result.is_tor
    assert result.supported_groups == (0x17, 0x1D, 0x15)
    assert len(capture) == 517  # 512-byte handshake after OpenSSL's padding


def test_second_capture_has_a_25_character_name() -> None:
    hello = parse_client_hello(SECOND_CAPTURE)
    assert not isinstance(hello, Incomplete) and hello.sni == "www.jian24wfvzx2x2ua55zoic2cg.com"


def test_browser_like_hello_is_not_tor_even_with_a_matching_name() -> None:
    result = tor.fingerprint(build_browser_like_hello("www.google.com", ["h2"]))
    assert isinstance(result, tor.TorFingerprint)
    assert result.sni_matches  # the name pattern alone is weak ...
    assert not result.cipher_suites_match and not result.groups_match and not result.no_alpn
    assert not result.is_tor  # ... the conjunction is not


def test_each_mark_is_needed() -> None:
    hello = bytearray(tor.CAPTURED_CLIENT_HELLO)
    # Swap the TLS 1.3 suites 1303 and 1302 back to OpenSSL's default order.
    at = hello.find(bytes.fromhex("130113031302"))
    hello[at : at + 6] = bytes.fromhex("130113021303")
    result = tor.fingerprint(bytes(hello))
    assert isinstance(result, tor.TorFingerprint) and not result.cipher_suites_match and not result.is_tor
    plain_name = tor.build_client_hello("www.wikipedia.org")
    named = tor.fingerprint(plain_name)
    assert isinstance(named, tor.TorFingerprint) and named.cipher_suites_match and not named.sni_matches and not named.is_tor


def test_builder_looks_like_tor_and_varies() -> None:
    first, second = tor.build_client_hello(), tor.build_client_hello()
    assert first != second
    for hello in (first, second):
        result = tor.fingerprint(hello)
        assert isinstance(result, tor.TorFingerprint) and result.is_tor
        assert 517 <= len(hello) <= 520


@given(st.integers(min_value=4, max_value=25))
def test_builder_with_every_name_length(length: int) -> None:
    name = "www." + "a" * length + ".com"
    result = tor.fingerprint(tor.build_client_hello(name))
    assert isinstance(result, tor.TorFingerprint) and result.is_tor and result.client_hello.sni == name


def test_random_names_follow_the_pattern() -> None:
    for _ in range(200):
        assert tor.TOR_SNI.fullmatch(tor.random_tor_hostname())


def test_prefix_is_incomplete() -> None:
    for cut in (0, 4, 100, 516):
        assert isinstance(tor.fingerprint(tor.CAPTURED_CLIENT_HELLO[:cut]), Incomplete)


def test_split_records_still_fingerprint() -> None:
    handshake = tor.CAPTURED_CLIENT_HELLO[5:]
    split = b"".join(
        bytes([0x16, 3, 1]) + len(part).to_bytes(2, "big") + part for part in (handshake[:100], handshake[100:])
    )
    result = tor.fingerprint(split)
    assert isinstance(result, tor.TorFingerprint) and result.is_tor


@settings(max_examples=examples(300))
@given(st.binary(max_size=600))
def test_arbitrary_bytes_give_a_result_or_protocol_error(data: bytes) -> None:
    try:
        result = tor.fingerprint(data)
    except ProtocolError:
        return
    assert isinstance(result, (tor.TorFingerprint, Incomplete))


@settings(max_examples=examples(300))
@given(st.integers(min_value=5, max_value=516), st.integers(min_value=0, max_value=255))
def test_mutated_capture_never_escapes(position: int, value: int) -> None:
    mutated = bytearray(tor.CAPTURED_CLIENT_HELLO)
    mutated[position] = value
    try:
        tor.fingerprint(bytes(mutated))
    except ProtocolError:
        pass
