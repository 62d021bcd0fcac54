from hypothesis import given, settings, strategies as st
import pytest

from tests.fuzzing import examples
from wallwatch.protocols.errors import Incomplete, ProtocolError
from wallwatch.protocols.http import RequestHead, build_request_head, parse_request_head


@settings(max_examples=100)  # a round trip over valid input, not a fuzz target: its own count
@given(
    st.sampled_from(["GET", "POST", "HEAD", "PUT"]),
    st.from_regex(r"/[a-zA-Z0-9/._-]{0,40}", fullmatch=True),
    st.from_regex(r"[a-z0-9]{1,10}(\.[a-z0-9]{1,10}){1,3}", fullmatch=True),
)
def test_round_trip(method: str, target: str, host: str) -> None:
    head = parse_request_head(build_request_head(method, target, host, [("User-Agent", "wallwatch")]))
    assert isinstance(head, RequestHead)
    assert (head.method, head.target, head.host, head.version) == (method, target, host, "HTTP/1.1")
    assert ("User-Agent", "wallwatch") in head.headers


def test_prefixes_are_incomplete_and_body_is_ignored() -> None:
    data = build_request_head("GET", "/?q=winnie", "example.org") + b"body"
    head_len = data.index(b"\r\n\r\n") + 4
    for cut in range(head_len - 3):
        assert isinstance(parse_request_head(data[:cut]), Incomplete)
    head = parse_request_head(data)
    assert isinstance(head, RequestHead) and head.target == "/?q=winnie"


def test_bare_lf_and_host_case() -> None:
    head = parse_request_head(b"GET / HTTP/1.0\nHOST: Example.ORG\n\n")
    assert isinstance(head, RequestHead) and head.host == "example.org"


@pytest.mark.parametrize("data", [b"\x16\x03\x01\x02\x00", b"WA\x06\x03", b"GET /\r\n\r\n", b"G(T / HTTP/1.1\r\n\r\n"])
def test_not_http(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_request_head(data)


@settings(max_examples=examples(400))
@given(st.binary(max_size=300))
def test_arbitrary_bytes_give_a_result_or_protocol_error(data: bytes) -> None:
    try:
        result = parse_request_head(data)
    except ProtocolError:
        return
    assert isinstance(result, (RequestHead, Incomplete))
