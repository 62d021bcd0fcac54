from hypothesis import given, settings, strategies as st
import pytest

from tests.fuzzing import examples
from wallwatch.protocols.errors import Incomplete, ProtocolError
from wallwatch.protocols.tls import ClientHello, build_client_hello, looks_like_tls_record, parse_client_hello

hostnames = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?){0,3}", fullmatch=True)
alpn_ids = st.lists(st.sampled_from(["h2", "http/1.1", "xmpp-client", "h3"]), max_size=3, unique=True)


@settings(max_examples=100)  # a round trip over valid input, not a fuzz target: its own count
@given(hostnames, alpn_ids)
def test_round_trip(sni: str, alpn: list[str]) -> None:
    hello = parse_client_hello(build_client_hello(sni, alpn))
    assert isinstance(hello, ClientHello)
    assert hello.sni == sni
    assert hello.alpn == tuple(alpn)
    assert hello.legacy_version == 0x0303
    assert 0x1301 in hello.cipher_suites


def test_no_sni_and_fixed_random() -> None:
    random = bytes(range(32))
    hello = parse_client_hello(build_client_hello(None, random=random))
    assert isinstance(hello, ClientHello)
    assert hello.sni is None and hello.random == random and 0 not in hello.extension_types


def test_every_strict_prefix_is_incomplete() -> None:
    record = build_client_hello("mmg.whatsapp.net", ["h2"])
    for cut in range(len(record)):
        assert parse_client_hello(record[:cut]) == Incomplete() or isinstance(parse_client_hello(record[:cut]), Incomplete)


def test_client_hello_split_across_records() -> None:
    record = build_client_hello("web.whatsapp.com", ["h2", "http/1.1"])
    handshake = record[5:]
    first, second = handshake[:40], handshake[40:]
    split = bytes([0x16, 3, 1]) + len(first).to_bytes(2, "big") + first
    split += bytes([0x16, 3, 1]) + len(second).to_bytes(2, "big") + second
    hello = parse_client_hello(split)
    assert isinstance(hello, ClientHello) and hello.sni == "web.whatsapp.com"


@pytest.mark.parametrize(
    "data",
    [b"GET / HTTP/1.1\r\n\r\n", b"\x17\x03\x03\x00\x05hello", b"\x16\x03\x01\x00\x00", b"\x16\x03\x01\x00\x04\x02\x00\x00\x00"],
)
def test_not_a_client_hello(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_client_hello(data)


def test_truncated_extension_is_an_error() -> None:
    record = bytearray(build_client_hello("example.org"))
    # Claim the ClientHello body is shorter than its extensions: lengths disagree.
    body_len = int.from_bytes(record[6:9], "big") - 10
    record[6:9] = body_len.to_bytes(3, "big")
    record[3:5] = (body_len + 4).to_bytes(2, "big")
    with pytest.raises(ProtocolError):
        parse_client_hello(bytes(record[: 5 + 4 + body_len]))


def test_looks_like_tls_record() -> None:
    assert looks_like_tls_record(build_client_hello("a.example"))
    assert not looks_like_tls_record(b"WA\x06\x03")


@settings(max_examples=examples(400))
@given(st.binary(max_size=600))
def test_arbitrary_bytes_give_a_result_or_protocol_error(data: bytes) -> None:
    try:
        result = parse_client_hello(data)
    except ProtocolError:
        return
    assert isinstance(result, (ClientHello, Incomplete))


@settings(max_examples=examples(300))
@given(st.binary(min_size=1, max_size=200), st.integers(min_value=9, max_value=300))
def test_mutated_client_hello_never_escapes(noise: bytes, offset: int) -> None:
    record = bytearray(build_client_hello("e1.whatsapp.net", ["xmpp-client"]))
    offset %= len(record)
    record[offset : offset + len(noise)] = noise[: len(record) - offset]
    try:
        result = parse_client_hello(bytes(record))
    except ProtocolError:
        return
    assert isinstance(result, (ClientHello, Incomplete))
