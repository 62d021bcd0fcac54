import struct

import pytest
from hypothesis import given, settings, strategies as st

from tests.fuzzing import examples
from wallwatch.protocols import wireguard as wg
from wallwatch.protocols.errors import ProtocolError

indices = st.integers(min_value=0, max_value=2**32 - 1)


@given(indices)
def test_initiation_round_trip(sender: int) -> None:
    packet = wg.build_initiation(sender)
    message = wg.parse_message(packet)
    assert len(packet) == 148 and packet[:4] == b"\x01\x00\x00\x00"
    assert message.type_name == "handshake_initiation"
    assert message.sender_index == sender and message.receiver_index is None


@given(indices, indices)
def test_response_round_trip(sender: int, receiver: int) -> None:
    message = wg.parse_message(wg.build_response(sender, receiver))
    assert (message.message_type, message.sender_index, message.receiver_index, message.length) == (2, sender, receiver, 92)


def test_cookie_reply() -> None:
    message = wg.parse_message(wg.build_cookie_reply(0xDEADBEEF))
    assert message.type_name == "cookie_reply" and message.receiver_index == 0xDEADBEEF and message.length == 64


@given(indices, st.integers(min_value=0, max_value=2**64 - 1), st.integers(min_value=0, max_value=1500))
def test_transport_round_trip(receiver: int, counter: int, size: int) -> None:
    packet = wg.build_transport(receiver, counter, size)
    message = wg.parse_message(packet)
    assert message.receiver_index == receiver and message.counter == counter
    assert len(packet) % 16 == 0 and len(packet) >= 32 and len(packet) - 32 >= size


def test_indices_are_little_endian() -> None:
    packet = b"\x01\x00\x00\x00" + bytes([1, 0, 0, 0]) + bytes(140)
    assert wg.parse_message(packet).sender_index == 1


@pytest.mark.parametrize(
    "packet",
    [
        wg.build_initiation(7)[:-1],  # 147 bytes
        wg.build_initiation(7) + b"\x00",  # 149 bytes
        wg.build_response(1, 2)[:91],
        wg.build_cookie_reply(3) + bytes(16),
        b"\x04\x00\x00\x00" + bytes(12) + bytes(8),  # 24 < 32
        b"\x04\x00\x00\x00" + bytes(36),  # 40, not a multiple of 16
        b"\x05\x00\x00\x00" + bytes(144),  # unknown type
        b"\x01\x00\x00",
        b"",
    ],
)
def test_wrong_size_or_type_is_rejected(packet: bytes) -> None:
    with pytest.raises(ProtocolError):
        wg.parse_message(packet)


@pytest.mark.parametrize("position", [1, 2, 3])
def test_non_zero_reserved_byte_is_not_wireguard(position: int) -> None:
    for build in (lambda: wg.build_initiation(1), lambda: wg.build_response(1, 2), lambda: wg.build_transport(1, 0)):
        packet = bytearray(build())
        packet[position] = 0x01
        with pytest.raises(ProtocolError, match="reserved"):
            wg.parse_message(bytes(packet))


def test_matcher_confirms_a_handshake() -> None:
    matcher = wg.WireGuardMatcher()
    first = matcher.feed(wg.build_initiation(0x1111), reverse=False)
    assert first is not None and first.receiver_index_matched is None and not matcher.matched
    reply = matcher.feed(wg.build_response(0x2222, 0x1111), reverse=True)
    assert reply is not None and reply.receiver_index_matched is True
    data_out = matcher.feed(wg.build_transport(0x2222, 0, 100), reverse=False)
    data_in = matcher.feed(wg.build_transport(0x1111, 0, 60), reverse=True)
    assert data_out is not None and data_out.receiver_index_matched
    assert data_in is not None and data_in.receiver_index_matched
    assert matcher.matched and not matcher.done


def test_matcher_needs_the_other_direction() -> None:
    matcher = wg.WireGuardMatcher()
    matcher.feed(wg.build_initiation(0x1111), reverse=False)
    # The client echoing its own index is no evidence of a responder.
    same_side = matcher.feed(wg.build_transport(0x1111, 0), reverse=False)
    unknown = matcher.feed(wg.build_response(0x3333, 0x9999), reverse=True)
    assert same_side is not None and same_side.receiver_index_matched is False
    assert unknown is not None and unknown.receiver_index_matched is False
    assert not matcher.matched


def test_matcher_forgets_after_six_senders() -> None:
    matcher = wg.WireGuardMatcher()
    for sender in range(7):
        matcher.feed(wg.build_initiation(sender), reverse=False)
    old = matcher.feed(wg.build_cookie_reply(0), reverse=True)
    recent = matcher.feed(wg.build_cookie_reply(6), reverse=True)
    assert old is not None and old.receiver_index_matched is False
    assert recent is not None and recent.receiver_index_matched is True


def test_matcher_gives_up_after_four_invalid_in_a_row() -> None:
    matcher = wg.WireGuardMatcher()
    for _ in range(3):
        assert matcher.feed(b"hello", reverse=False) is None
    matcher.feed(wg.build_initiation(1), reverse=False)  # resets the count
    assert not matcher.done
    for _ in range(4):
        matcher.feed(struct.pack("!I", 0xFFFFFFFF) * 37, reverse=False)
    assert matcher.done


@settings(max_examples=examples(500))
@given(st.binary(max_size=200))
def test_arbitrary_bytes_give_a_result_or_protocol_error(data: bytes) -> None:
    try:
        message = wg.parse_message(data)
    except ProtocolError:
        return
    assert isinstance(message, wg.WireGuardMessage) and message.length == len(data)


@given(st.sampled_from([1, 2, 3, 4]), st.integers(min_value=0, max_value=300), st.binary(min_size=300, max_size=300))
def test_right_headers_with_random_bodies(message_type: int, size: int, noise: bytes) -> None:
    data = bytes([message_type, 0, 0, 0]) + noise[:size]
    try:
        message = wg.parse_message(data)
    except ProtocolError:
        return
    assert message.message_type == message_type


@given(st.lists(st.tuples(st.binary(max_size=160), st.booleans()), max_size=20))
def test_matcher_never_raises(packets: list[tuple[bytes, bool]]) -> None:
    matcher = wg.WireGuardMatcher()
    for data, reverse in packets:
        matcher.feed(data, reverse)
