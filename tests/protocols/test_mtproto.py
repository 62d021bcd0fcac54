import os
import socket
import struct
import threading

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings, strategies as st

from tests.fuzzing import examples
from wallwatch.protocols import mtproto as mt
from wallwatch.protocols.errors import Incomplete, ProtocolError

TAGS = [mt.TAG_ABRIDGED, mt.TAG_INTERMEDIATE, mt.TAG_PADDED_INTERMEDIATE]


def ctr_by_hand(key: bytes, iv: bytes, data: bytes) -> bytes:
    """AES-CTR written out from AES-ECB: keystream block i = AES(iv + i), big-endian 128-bit."""
    ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    counter = int.from_bytes(iv, "big")
    stream = b"".join(
        ecb.update(((counter + i) % 2**128).to_bytes(16, "big")) for i in range(-(-len(data) // 16))
    )
    return bytes(a ^ b for a, b in zip(data, stream))


def telethon_style_header(tag: bytes) -> bytes:
    """The header as Telethon's ObfuscatedIO.init_header makes it, restated by hand."""
    while True:
        random = bytearray(os.urandom(64))
        if random[0] != 0xEF and random[:4] not in (b"PVrG", b"GET ", b"POST", b"\xee" * 4) and random[4:8] != bytes(4):
            break
    random[56:60] = tag
    random[56:64] = ctr_by_hand(bytes(random[8:40]), bytes(random[40:56]), bytes(random))[56:64]
    return bytes(random)


@pytest.mark.parametrize("tag", TAGS)
def test_parse_header_made_like_telethon(tag: bytes) -> None:
    header = telethon_style_header(tag)
    parsed = mt.parse_header(header)
    assert isinstance(parsed, mt.Obfuscated2Header)
    assert parsed.tag == tag and parsed.transport == mt.TRANSPORT_NAMES[tag]
    assert parsed.client_key == header[8:40] and parsed.client_iv == header[40:56]
    assert parsed.server_key == header[8:56][::-1][:32] and parsed.server_iv == header[8:56][::-1][32:]


@pytest.mark.parametrize("tag", TAGS)
@pytest.mark.parametrize("dc_id", [1, 2, 5, -2, 10004])
def test_builder_header_checked_by_hand(tag: bytes, dc_id: int) -> None:
    header, session = mt.client(tag, dc_id)
    assert len(header) == 64 and mt.header_is_well_formed(header)
    plain = ctr_by_hand(header[8:40], header[40:56], header)
    assert plain[56:60] == tag and struct.unpack("<h", plain[60:62])[0] == dc_id
    parsed = mt.parse_header(header)
    assert isinstance(parsed, mt.Obfuscated2Header) and parsed.dc_id == dc_id and session.header == parsed


def test_stream_continues_after_the_header() -> None:
    header, client_side = mt.client(mt.TAG_ABRIDGED, 4)
    message = os.urandom(100)
    wire = client_side.send.apply(message)
    # The client's keystream is 64 bytes in: bytes 64.. of the stream from the header's key.
    assert wire == ctr_by_hand(header[8:40], header[40:56], bytes(64) + message)[64:]


@pytest.mark.parametrize("secret", [None, bytes(range(16))])
def test_client_and_server_talk_both_ways(secret: bytes | None) -> None:
    header, client_side = mt.client(mt.TAG_PADDED_INTERMEDIATE, 2, secret=secret)
    server_side = mt.server(header, secret=secret)
    for size in (0, 1, 15, 16, 17, 1000):
        up = os.urandom(size)
        down = os.urandom(size)
        assert server_side.receive.apply(client_side.send.apply(up)) == up
        assert client_side.receive.apply(server_side.send.apply(down)) == down


def test_mtproxy_secret_hides_the_tag() -> None:
    secret = os.urandom(16)
    header, _ = mt.client(mt.TAG_INTERMEDIATE, 2, secret=secret)
    parsed = mt.parse_header(header, secret=secret)
    assert isinstance(parsed, mt.Obfuscated2Header) and parsed.transport == "intermediate"
    with pytest.raises(ProtocolError, match="tag"):  # a censor without the secret sees no tag
        mt.parse_header(header)


def test_random_bytes_are_not_obfuscated2() -> None:
    rejected = 0
    for _ in range(200):
        try:
            mt.parse_header(os.urandom(64))
        except ProtocolError:
            rejected += 1
    assert rejected == 200


@pytest.mark.parametrize(
    "start", [b"\xef" + bytes(7), b"GET /abc", b"POST /ab", b"HEAD /ab", b"\xee\xee\xee\xee1234", b"\xdd\xdd\xdd\xdd1234",
              b"\x16\x03\x01\x02\x00\x01\x00\x00", b"abcd\x00\x00\x00\x00"],
)
def test_clear_text_constraints(start: bytes) -> None:
    assert not mt.header_is_well_formed(start + bytes(56))
    with pytest.raises(ProtocolError):
        mt.parse_header(start + os.urandom(56))


def test_prefix_is_incomplete() -> None:
    header, _ = mt.client()
    for cut in range(64):
        assert isinstance(mt.parse_header(header[:cut]), Incomplete)


@pytest.mark.parametrize("tag", TAGS)
def test_framing_round_trip(tag: bytes) -> None:
    for size in (0, 4, 8, 4 * 126, 4 * 127, 4 * 1000):
        payload = os.urandom(size)
        framed = mt.frame(tag, payload)
        result = mt.unframe(tag, framed + b"next")
        assert not isinstance(result, Incomplete)
        body, used = result
        assert used == len(framed) and body[:size] == payload
        if tag != mt.TAG_PADDED_INTERMEDIATE:
            assert body == payload
        assert isinstance(mt.unframe(tag, framed[:-1]), Incomplete) or size == 0
    assert mt.frame(mt.TAG_ABRIDGED, bytes(4 * 127))[:4] == b"\x7f\x7f\x00\x00"


def test_emulated_dc_over_a_real_socket() -> None:
    """A lab-style echo 'DC' and a client exchanging framed, encrypted messages over TCP."""
    left, right = socket.socketpair()
    left.settimeout(5)
    right.settimeout(5)

    def serve() -> None:
        data = b""
        while len(data) < 64:
            data += right.recv(4096)
        session = mt.server(data[:64])
        plain = session.receive.apply(data[64:])
        while isinstance(mt.unframe(session.header.tag, plain), Incomplete):
            plain += session.receive.apply(right.recv(4096))
        body, _ = mt.unframe(session.header.tag, plain)  # type: ignore[misc]
        right.sendall(session.send.apply(mt.frame(session.header.tag, body[::-1])))

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        header, session = mt.client(mt.TAG_INTERMEDIATE, 2)
        left.sendall(header + session.send.apply(mt.frame(mt.TAG_INTERMEDIATE, b"ping-0123")))
        plain = b""
        while isinstance(mt.unframe(mt.TAG_INTERMEDIATE, plain), Incomplete):
            plain += session.receive.apply(left.recv(4096))
        assert mt.unframe(mt.TAG_INTERMEDIATE, plain) == (b"3210-gnip", len(plain))
    finally:
        thread.join(timeout=5)
        left.close()
        right.close()


@settings(max_examples=examples(400))
@given(st.binary(max_size=130))
def test_arbitrary_bytes_give_a_result_or_protocol_error(data: bytes) -> None:
    try:
        result = mt.parse_header(data)
    except ProtocolError:
        result = None
    assert result is None or isinstance(result, (mt.Obfuscated2Header, Incomplete))
    for tag in TAGS:
        try:
            mt.unframe(tag, data)
        except ProtocolError:
            pass


def _unencrypted(message_id: int, data: bytes) -> bytes:
    """An unencrypted message written out from core.telegram.org/mtproto/description."""
    return bytes(8) + message_id.to_bytes(8, "little") + len(data).to_bytes(4, "little") + data


def test_message_head_of_req_pq_multi_by_hand() -> None:
    nonce = os.urandom(16)
    data = mt.REQ_PQ_MULTI.to_bytes(4, "little") + nonce
    message = _unencrypted(0x5F00_0000_0000_0004, data)
    assert mt.parse_message_head(message) == mt.MessageHead(0, 0x5F00_0000_0000_0004, 20, 0xBE7E8EF1)
    padded = message + os.urandom(7)  # padded intermediate: random bytes after the data
    assert mt.parse_message_head(padded) == mt.parse_message_head(message)
    for cut in (0, 8, 23):
        assert mt.parse_message_head(message[:cut]) == Incomplete(24)
    assert mt.parse_message_head(message[:30]) == Incomplete(len(message))


def test_message_head_of_an_encrypted_message() -> None:
    msg_key = os.urandom(16)
    head = mt.parse_message_head((0x1122334455667788).to_bytes(8, "little") + msg_key + os.urandom(40))
    assert isinstance(head, mt.MessageHead) and head.encrypted
    assert (head.auth_key_id, head.msg_key, head.message_id, head.constructor) == (0x1122334455667788, msg_key, None, None)


@pytest.mark.parametrize("length", [-1, 0, 3, mt.MAX_PACKET + 1])
def test_message_head_with_an_impossible_length(length: int) -> None:
    with pytest.raises(ProtocolError):
        mt.parse_message_head(bytes(16) + length.to_bytes(4, "little", signed=True) + bytes(8))


@settings(max_examples=examples(400))
@given(st.binary(max_size=80))
def test_message_head_of_arbitrary_bytes_is_a_head_incomplete_or_protocol_error(data: bytes) -> None:
    try:
        result = mt.parse_message_head(data)
    except ProtocolError:
        return
    assert isinstance(result, (mt.MessageHead, Incomplete))


@settings(max_examples=examples(200))
@given(st.binary(min_size=4, max_size=200), st.integers(min_value=0, max_value=2**63 - 1), st.integers(0, 230))
def test_message_head_at_every_cut(data: bytes, message_id: int, cut: int) -> None:
    message = _unencrypted(message_id, data)
    result = mt.parse_message_head(message[:cut])
    if cut >= len(message):
        assert result == mt.MessageHead(0, message_id, len(data), int.from_bytes(data[:4], "little"))
    else:
        assert isinstance(result, Incomplete) and result.needed is not None and result.needed > cut


def test_req_pq_multi_and_res_pq_round_trip() -> None:
    nonce = bytes(range(16))
    request = mt.build_req_pq_multi(nonce, mt.client_message_id(1_500_000_000.0))
    assert mt.parse_req_pq_multi(request) == nonce
    answer = mt.build_res_pq(nonce, b"\x01" * 16, bytes.fromhex("17ED48941A08F981"), (-5, 7), 4)
    parsed = mt.parse_res_pq(answer)
    assert (parsed.nonce, parsed.server_nonce, parsed.pq, parsed.fingerprints) == (
        nonce, b"\x01" * 16, bytes.fromhex("17ED48941A08F981"), (-5, 7))
    with pytest.raises(ProtocolError):
        mt.parse_res_pq(request)  # a request is not an answer
    with pytest.raises(ProtocolError):
        mt.parse_res_pq(answer[:-6])


# --- unframe: arbitrary bytes, round trips, every cut ------------------------------------------


@settings(max_examples=examples(400))
@given(st.sampled_from([*TAGS, b"\x00\x01\x02\x03"]), st.binary(max_size=300))
def test_unframe_of_arbitrary_bytes_is_a_packet_incomplete_or_protocol_error(tag: bytes, data: bytes) -> None:
    try:
        result = mt.unframe(tag, data)
    except ProtocolError:
        return
    assert tag in TAGS
    if isinstance(result, Incomplete):
        assert result.needed is None or result.needed > len(data)
        return
    payload, used = result
    assert isinstance(payload, bytes) and len(payload) < used <= len(data)
    assert data[used - len(payload):used] == payload


@settings(max_examples=examples(300))
@given(st.sampled_from(TAGS), st.binary(max_size=1200), st.binary(max_size=40), st.integers(min_value=0))
def test_unframe_inverts_frame_and_every_prefix_is_incomplete(tag: bytes, payload: bytes, trailing: bytes,
                                                              cut: int) -> None:
    if tag == mt.TAG_ABRIDGED:
        payload = payload[: len(payload) // 4 * 4]  # abridged counts 4-byte words
    packet = mt.frame(tag, payload)
    result = mt.unframe(tag, packet + trailing)
    assert not isinstance(result, Incomplete)
    got, used = result
    assert used == len(packet)
    if tag == mt.TAG_PADDED_INTERMEDIATE:
        assert got[: len(payload)] == payload and len(got) - len(payload) < 16
    else:
        assert got == payload
    prefix = packet[: cut % len(packet)]
    partial = mt.unframe(tag, prefix)
    assert isinstance(partial, Incomplete) and (partial.needed is None or partial.needed == len(packet))
