from hypothesis import given, settings, strategies as st
import pytest

from wallwatch.protocols.dns import DnsFacts, build_query, build_response, parse_dns
from wallwatch.protocols.errors import ProtocolError


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


@settings(max_examples=400)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_give_a_result_or_protocol_error(data: bytes) -> None:
    try:
        assert isinstance(parse_dns(data), DnsFacts)
    except ProtocolError:
        pass
