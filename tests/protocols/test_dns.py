from hypothesis import given, settings, strategies as st
import pytest

from tests.fuzzing import examples
from wallwatch.protocols.dns import (
    MAX_TCP_MESSAGE, DnsFacts, build_query, build_response, frame_tcp, parse_dns, unframe_tcp,
)
from wallwatch.protocols.errors import Incomplete, ProtocolError


def test_query_and_answer_round_trip() -> None:
    query = build_query("E1.WhatsApp.net", "A", query_id=4242)
    facts = parse_dns(query)
    assert (facts.id, facts.is_response, facts.qname, facts.qtype) == (4242, False, "e1.whatsapp.net", "A")
    answer = parse_dns(build_response(query, ["198.19.1.1", "fd00::1"], ttl=30))
    assert answer.is_response and answer.id == 4242 and answer.rcode == "NOERROR"
    assert answer.addresses == ("198.19.1.1",)  # the AAAA is not an answer to an A question
    assert answer.answers[0].ttl == 30


def test_aaaa_and_nxdomain() -> None:
    query = build_query("v.whatsapp.net", "AAAA")
    assert parse_dns(build_response(query, ["198.19.2.1", "fd57::2:1"])).addresses == ("fd57::2:1",)
    nx = parse_dns(build_response(query, [], rcode="NXDOMAIN"))
    assert nx.rcode == "NXDOMAIN" and nx.answers == ()


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c"])
def test_garbage_is_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_dns(data)


def test_response_to_garbage_is_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        build_response(b"\x00\x01", ["198.19.0.1"])


@settings(max_examples=examples(400))
@given(st.binary(max_size=200))
def test_arbitrary_bytes_give_a_result_or_protocol_error(data: bytes) -> None:
    try:
        assert isinstance(parse_dns(data), DnsFacts)
    except ProtocolError:
        pass


def test_tcp_framing_by_hand() -> None:
    query = build_query("e1.whatsapp.net", query_id=7)
    framed = frame_tcp(query)
    assert framed[:2] == bytes([len(query) >> 8, len(query) & 0xFF]) and framed[2:] == query  # RFC 1035 §4.2.2
    second = frame_tcp(build_query("example.org"))
    assert unframe_tcp(framed + second) == (query, len(framed))
    assert unframe_tcp(framed[:1]) == Incomplete(2)
    assert unframe_tcp(framed[:5]) == Incomplete(len(framed))
    with pytest.raises(ProtocolError):
        unframe_tcp(b"\x00\x0b" + bytes(11))  # shorter than the 12-byte header
    with pytest.raises(ProtocolError):
        unframe_tcp(framed, max_length=len(query) - 1)
    with pytest.raises(ProtocolError):
        frame_tcp(bytes(MAX_TCP_MESSAGE + 1))


@settings(max_examples=examples(300))
@given(st.binary(min_size=12, max_size=600), st.integers(min_value=0, max_value=700))
def test_tcp_framing_round_trips_at_every_cut(message: bytes, cut: int) -> None:
    framed = frame_tcp(message)
    result = unframe_tcp(framed[:cut])
    if cut >= len(framed):
        assert result == (message, len(framed))
    else:
        assert isinstance(result, Incomplete) and result.needed is not None and result.needed > cut


@settings(max_examples=examples(400))
@given(st.binary(max_size=300))
def test_tcp_unframing_arbitrary_bytes_gives_a_message_incomplete_or_protocol_error(data: bytes) -> None:
    try:
        result = unframe_tcp(data)
    except ProtocolError:
        return
    assert isinstance(result, Incomplete) or (isinstance(result, tuple) and result[0] == data[2:result[1]])
