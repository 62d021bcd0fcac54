"""MQTT CONNECT/CONNACK: round trips, early decisions on a prefix, and arbitrary bytes never crash."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wallwatch.protocols.errors import Incomplete, ProtocolError
from wallwatch.protocols.mqtt import build_connack, build_connect, parse_connack, parse_connect


def test_connect_round_trip() -> None:
    packet = build_connect("messenger-client", keep_alive=30)
    parsed = parse_connect(packet + b"trailing")
    assert not isinstance(parsed, Incomplete)
    assert (parsed.protocol, parsed.level, parsed.keep_alive, parsed.client_id) == ("MQTT", 4, 30, "messenger-client")
    assert parsed.length == len(packet)


def test_every_prefix_is_incomplete_and_the_whole_is_not() -> None:
    packet = build_connect("x" * 200)  # a two-byte remaining length
    assert packet[1] & 0x80
    for cut in range(len(packet)):
        assert isinstance(parse_connect(packet[:cut]), Incomplete)


@pytest.mark.parametrize("data", [b"\x16\x03\x01\x02\x00", b"\x10\x0c\x00\x04HTTP", b"GET / HTTP/1.1\r\n",
                                  b"\x10\xff\xff\xff\xff\x01"])
def test_other_protocols_are_refused_early(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_connect(data)


def test_connack() -> None:
    assert parse_connack(build_connack(0)).return_code == 0  # type: ignore[union-attr]
    assert isinstance(parse_connack(b"\x20\x02"), Incomplete)
    with pytest.raises(ProtocolError):
        parse_connack(b"\x30\x02\x00\x00")


@given(st.binary(max_size=300))
def test_arbitrary_bytes_parse_or_refuse(data: bytes) -> None:
    for parser in (parse_connect, parse_connack):
        try:
            parser(data)
        except ProtocolError:
            pass
