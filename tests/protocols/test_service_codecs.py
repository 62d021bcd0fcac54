"""WeChat's mmtls records, Viber's framing, Apple's push commands, Skype's STUN attribute:
round trips, early refusals of other protocols, and arbitrary bytes never crash."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wallwatch.protocols import apns, mmtls, stun, viber
from wallwatch.protocols.errors import Incomplete, ProtocolError
from wallwatch.protocols.tls import build_client_hello


def test_mmtls_hello_round_trip_and_every_prefix_is_incomplete() -> None:
    random = os.urandom(32)
    hello = mmtls.build_client_hello(random, 1_505_900_000)
    assert hello[:3] == b"\x16\xf1\x04"  # what a censor (and an nDPI fork) keys on
    parsed = mmtls.parse_client_hello(hello)
    assert parsed == mmtls.ClientHello(mmtls.VERSION, random, 1_505_900_000)
    for cut in range(len(hello)):
        assert isinstance(mmtls.parse_client_hello(hello[:cut]), Incomplete)
    answer = mmtls.parse_server_hello(mmtls.build_server_hello(parsed, os.urandom(32)))
    assert not isinstance(answer, Incomplete) and answer.client_random == random


def test_mmtls_2017_version_and_records() -> None:
    hello = mmtls.build_client_hello(os.urandom(32), 0, mmtls.VERSION_2017)
    assert hello[:3] == b"\x16\xf1\x03"
    record = mmtls.parse_record(hello + b"more")
    assert not isinstance(record, Incomplete) and record.length == len(hello)


@pytest.mark.parametrize("data", [build_client_hello("long.weixin.qq.com"), b"POST /mmtls/00 HTTP/1.1",
                                  b"\x16\x03\x01", b"\x16\xf1\x04\xff\xff"])
def test_mmtls_refuses_tls_and_http_at_once(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        mmtls.parse_record(data)


def test_mmtls_short_link_path() -> None:
    assert mmtls.short_link_path(b"\x1a\x2b\x3c\x4d") == "/mmtls/1a2b3c4d"


def test_viber_hello_is_the_shape_classifiers_know() -> None:
    nonce = os.urandom(16)
    hello = viber.build_hello(nonce, os.urandom(134))
    assert len(hello) == 154 and hello[0:2] == b"\x9a\x00" and hello[3] == 0  # [libprotoident]
    assert viber.parse_hello(hello) == nonce
    ack = viber.build_hello_ack(nonce)
    assert len(ack) == 24 and ack[:4] == b"\x18\x00\x00\x00"
    assert viber.parse_hello_ack(ack) == nonce
    for cut in range(len(hello)):
        assert isinstance(viber.parse_hello(hello[:cut]), Incomplete)


def test_viber_call_ping_and_pong() -> None:
    call_id = os.urandom(8)
    ping = viber.build_ping(call_id)
    assert len(ping) == 12 and ping[2:4] == b"\x03\x00"  # nDPI viber.c's first UDP pattern
    assert viber.parse_datagram(ping, viber.PING_TYPE, viber.PING_SIZE) == call_id
    pong = viber.build_pong(call_id, os.urandom(8))
    assert len(pong) == 20 and pong[2:4] == b"\x09\x00"
    assert viber.parse_datagram(pong, viber.PONG_TYPE, viber.PONG_SIZE) == call_id
    with pytest.raises(ProtocolError):
        viber.parse_datagram(ping + b"x", viber.PING_TYPE, viber.PING_SIZE)


@pytest.mark.parametrize("data", [b"GET /", build_client_hello("dl-media.viber.com"), b"\x02\x00\x01\x00",
                                  b"\x9a\x00\x01\x01"])
def test_viber_hello_refuses_other_protocols_on_four_bytes(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        viber.parse_hello(data)


def test_apns_connect_and_its_answer() -> None:
    connect = apns.build_connect()
    assert connect[0] == apns.CONNECT
    parsed = apns.parse_command(connect)
    assert not isinstance(parsed, Incomplete)
    assert parsed.field(apns.FIELD_STATE) == b"\x01" and len(parsed.field(apns.FIELD_FLAGS) or b"") == 4
    token = os.urandom(32)
    answer = apns.parse_command(apns.build_connect_response(token))
    assert not isinstance(answer, Incomplete)
    assert (answer.command, answer.field(apns.FIELD_STATUS), answer.field(apns.FIELD_ASSIGNED_TOKEN)) == \
        (apns.CONNECT_RESPONSE, apns.STATUS_OK, token)
    for cut in range(len(connect)):
        assert isinstance(apns.parse_command(connect[:cut]), Incomplete)


def test_skype_binding_request_carries_the_microsoft_attribute() -> None:
    request = stun.build_binding_request(os.urandom(12), [(stun.MS_IMPLEMENTATION_VERSION, b"\x00\x00\x00\x02")])
    message = stun.parse_stun(request)
    assert [a.type for a in message.attributes] == [stun.MS_IMPLEMENTATION_VERSION]
    # A relay that knows nothing of it still answers (comprehension-optional, RFC 5389 §15).
    assert stun.parse_stun(stun.build_binding_response(message, "198.18.0.2", 4000)).stun_class == "success"


@given(st.binary(max_size=400))
def test_arbitrary_bytes_parse_or_refuse(data: bytes) -> None:
    parsers = (mmtls.parse_record, mmtls.parse_client_hello, mmtls.parse_server_hello, viber.parse_message,
               viber.parse_hello, viber.parse_hello_ack, apns.parse_command,
               lambda d: viber.parse_datagram(d, viber.PING_TYPE, viber.PING_SIZE))
    for parser in parsers:
        try:
            parser(data)
        except ProtocolError:
            pass
