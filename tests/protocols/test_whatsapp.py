from hypothesis import given, settings, strategies as st
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from tests.fuzzing import examples
from wallwatch.protocols.errors import Incomplete, ProtocolError
from wallwatch.protocols.whatsapp import (
    ChatClient,
    ChatServer,
    ClientHeaderReceived,
    FrameDecoder,
    HandshakeComplete,
    MessageReceived,
    StreamHeader,
    connection_header,
    edge_routing_prefix,
    encode_frame,
    parse_stream_header,
)


def _public(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def _handshake(client: ChatClient, server: ChatServer) -> list:
    client.initiate()
    events = server.receive_data(client.data_to_send())
    events += client.receive_data(server.data_to_send())
    events += server.receive_data(client.data_to_send())
    return events


def test_first_flight_matches_a_real_web_client() -> None:
    # whatsmeow/Baileys: 57 41 06 03 | 00 00 24 | 12 22 0a 20 <32-byte ephemeral>
    client = ChatClient()
    client.initiate()
    flight = client.data_to_send()
    assert flight[:11] == bytes.fromhex("5741060300002412220a20") and len(flight) == 4 + 3 + 36


@pytest.mark.parametrize("routing", [None, b"", b"\x08\x01\x12\x02CN"])
def test_full_handshake_and_echo(routing: bytes | None) -> None:
    client, server = ChatClient(edge_routing=routing), ChatServer()
    events = _handshake(client, server)
    header = events[0]
    assert isinstance(header, ClientHeaderReceived) and header.header.edge_routing == routing
    client_done, server_done = [e for e in events if isinstance(e, HandshakeComplete)]
    # Each side learned the other's real static key (Noise XX transmits both).
    assert client_done.remote_static == _public(server.static_private)
    assert server_done.remote_static == _public(client.static_private)
    client.send_message(b"ping")
    assert server.receive_data(client.data_to_send()) == [MessageReceived(b"ping")]
    server.send_message(b"pong")
    assert client.receive_data(server.data_to_send()) == [MessageReceived(b"pong")]


def test_byte_at_a_time_delivery() -> None:
    client, server = ChatClient(edge_routing=b"r"), ChatServer()
    client.initiate()
    events = []
    for byte in client.data_to_send():
        events += server.receive_data(bytes([byte]))
    assert isinstance(events[0], ClientHeaderReceived)
    reply = server.data_to_send()
    client_events = []
    for i in range(len(reply)):
        client_events += client.receive_data(reply[i : i + 1])
    assert isinstance(client_events[0], HandshakeComplete)


def test_tampered_transport_message_fails_cleanly() -> None:
    client, server = ChatClient(), ChatServer()
    _handshake(client, server)
    client.send_message(b"secret")
    data = bytearray(client.data_to_send())
    data[-1] ^= 1
    with pytest.raises(ProtocolError):
        server.receive_data(bytes(data))
    with pytest.raises(ProtocolError):
        server.receive_data(b"more")


def test_server_refuses_non_whatsapp_bytes() -> None:
    with pytest.raises(ProtocolError):
        ChatServer().receive_data(b"\x16\x03\x01\x02\x00\x01")


def test_stream_header_variants() -> None:
    assert parse_stream_header(b"WA\x06\x03rest") == StreamHeader(None, 6, 3, 4)
    assert parse_stream_header(b"WA\x01\x06") == StreamHeader(None, 1, 6, 4)  # the 2016 native client
    with_prefix = edge_routing_prefix(b"abc") + connection_header()
    assert parse_stream_header(with_prefix) == StreamHeader(b"abc", 6, 3, 14)
    for cut in range(len(with_prefix)):
        assert isinstance(parse_stream_header(with_prefix[:cut]), Incomplete)
    for bad in (b"WB", b"WA\x00", b"WA\x06\xff", b"EE", b"ED\x00\x02", b"GET / HTTP/1.1"):
        with pytest.raises(ProtocolError):
            parse_stream_header(bad)


def test_frame_decoder() -> None:
    decoder = FrameDecoder(max_size=10)
    stream = encode_frame(b"abc") + encode_frame(b"") + encode_frame(b"0123456789")
    assert decoder.feed(stream[:5]) == []
    assert decoder.feed(stream[5:]) == [b"abc", b"", b"0123456789"]
    with pytest.raises(ProtocolError):
        decoder.feed(encode_frame(b"x" * 11))


@settings(max_examples=examples(400))
@given(st.binary(max_size=100))
def test_arbitrary_header_bytes(data: bytes) -> None:
    try:
        result = parse_stream_header(data)
    except ProtocolError:
        return
    assert isinstance(result, (StreamHeader, Incomplete))


@settings(max_examples=examples(300), deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_into_a_server(data: bytes) -> None:
    server = ChatServer()
    try:
        events = server.receive_data(connection_header() + data)
    except ProtocolError:
        return
    assert all(isinstance(e, (ClientHeaderReceived, HandshakeComplete, MessageReceived)) for e in events)


@settings(max_examples=examples(200), deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_into_a_client(data: bytes) -> None:
    client = ChatClient()
    client.initiate()
    try:
        events = client.receive_data(data)
    except ProtocolError:
        return
    assert all(isinstance(e, (HandshakeComplete, MessageReceived)) for e in events)


# --- FrameDecoder: arbitrary bytes in arbitrary pieces, and round trips ----------------------------


def _pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


@settings(max_examples=examples(400))
@given(st.binary(max_size=400), st.lists(st.integers(min_value=0), max_size=8), st.integers(0, 300))
def test_frame_decoder_on_arbitrary_bytes_in_any_pieces(data: bytes, cuts: list[int], max_size: int) -> None:
    """Frames or ProtocolError, never another exception; every byte is in a frame, its length
    prefix, or the buffer; no frame exceeds the limit."""
    decoder = FrameDecoder(max_size=max_size)
    frames: list[bytes] = []
    try:
        for piece in _pieces(data, cuts):
            frames += decoder.feed(piece)
    except ProtocolError:
        return
    assert all(isinstance(f, bytes) and len(f) <= max_size for f in frames)
    assert sum(3 + len(f) for f in frames) + decoder.buffered == len(data)
    assert decoder.buffered < 3 or int.from_bytes(data[len(data) - decoder.buffered:][:3], "big") + 3 > decoder.buffered


@settings(max_examples=examples(300))
@given(st.lists(st.binary(max_size=600), max_size=8), st.lists(st.integers(min_value=0), max_size=12))
def test_frame_decoder_inverts_encode_frame_whatever_the_pieces(payloads: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(encode_frame(p) for p in payloads)
    decoder = FrameDecoder()
    frames: list[bytes] = []
    for piece in _pieces(stream, cuts):
        frames += decoder.feed(piece)
    assert frames == payloads and decoder.buffered == 0
