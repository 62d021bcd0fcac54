from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings, strategies as st

from tests.fuzzing import examples
from wallwatch.protocols import quic
from wallwatch.protocols.errors import Incomplete, ProtocolError
from wallwatch.protocols.tls import ClientHello

# RFC 9001 Appendix A.2: the client Initial, for DCID 0x8394c8f03e515708.
RFC_DCID = bytes.fromhex("8394c8f03e515708")
RFC_UNPROTECTED_HEADER = bytes.fromhex("c300000001088394c8f03e5157080000449e00000002")
RFC_CRYPTO_FRAME = bytes.fromhex(
    "060040f1010000ed0303ebf8fa56f12939b9584a3896472ec40bb863cfd3e868"
    "04fe3a47f06a2b69484c00000413011302010000c000000010000e00000b6578"
    "616d706c652e636f6dff01000100000a00080006001d00170018001000070005"
    "04616c706e000500050100000000003300260024001d00209370b2c9caa47fba"
    "baf4559fedba753de171fa71f50f1ce15d43e994ec74d748002b000302030400"
    "0d0010000e0403050306030203080408050806002d00020101001c0002400100"
    "3900320408ffffffffffffffff05048000ffff07048000ffff08011001048000"
    "75300901100f088394c8f03e51570806048000ffff"
)
RFC_PAYLOAD = RFC_CRYPTO_FRAME + bytes(917)  # padded so the datagram is 1200 bytes
RFC_PROTECTED = bytes.fromhex(
    "c000000001088394c8f03e5157080000449e7b9aec34d1b1c98dd7689fb8ec11"
    "d242b123dc9bd8bab936b47d92ec356c0bab7df5976d27cd449f63300099f399"
    "1c260ec4c60d17b31f8429157bb35a1282a643a8d2262cad67500cadb8e7378c"
    "8eb7539ec4d4905fed1bee1fc8aafba17c750e2c7ace01e6005f80fcb7df6212"
    "30c83711b39343fa028cea7f7fb5ff89eac2308249a02252155e2347b63d58c5"
    "457afd84d05dfffdb20392844ae812154682e9cf012f9021a6f0be17ddd0c208"
    "4dce25ff9b06cde535d0f920a2db1bf362c23e596d11a4f5a6cf3948838a3aec"
    "4e15daf8500a6ef69ec4e3feb6b1d98e610ac8b7ec3faf6ad760b7bad1db4ba3"
    "485e8a94dc250ae3fdb41ed15fb6a8e5eba0fc3dd60bc8e30c5c4287e53805db"
    "059ae0648db2f64264ed5e39be2e20d82df566da8dd5998ccabdae053060ae6c"
    "7b4378e846d29f37ed7b4ea9ec5d82e7961b7f25a9323851f681d582363aa5f8"
    "9937f5a67258bf63ad6f1a0b1d96dbd4faddfcefc5266ba6611722395c906556"
    "be52afe3f565636ad1b17d508b73d8743eeb524be22b3dcbc2c7468d54119c74"
    "68449a13d8e3b95811a198f3491de3e7fe942b330407abf82a4ed7c1b311663a"
    "c69890f4157015853d91e923037c227a33cdd5ec281ca3f79c44546b9d90ca00"
    "f064c99e3dd97911d39fe9c5d0b23a229a234cb36186c4819e8b9c5927726632"
    "291d6a418211cc2962e20fe47feb3edf330f2c603a9d48c0fcb5699dbfe58964"
    "25c5bac4aee82e57a85aaf4e2513e4f05796b07ba2ee47d80506f8d2c25e50fd"
    "14de71e6c418559302f939b0e1abd576f279c4b2e0feb85c1f28ff18f58891ff"
    "ef132eef2fa09346aee33c28eb130ff28f5b766953334113211996d20011a198"
    "e3fc433f9f2541010ae17c1bf202580f6047472fb36857fe843b19f5984009dd"
    "c324044e847a4f4a0ab34f719595de37252d6235365e9b84392b061085349d73"
    "203a4a13e96f5432ec0fd4a1ee65accdd5e3904df54c1da510b0ff20dcc0c77f"
    "cb2c0e0eb605cb0504db87632cf3d8b4dae6e705769d1de354270123cb11450e"
    "fc60ac47683d7b8d0f811365565fd98c4c8eb936bcab8d069fc33bd801b03ade"
    "a2e1fbc5aa463d08ca19896d2bf59a071b851e6c239052172f296bfb5e724047"
    "90a2181014f3b94a4e97d117b438130368cc39dbb2d198065ae3986547926cd2"
    "162f40a29f0c3c8745c0f50fba3852e566d44575c29d39a03f0cda721984b6f4"
    "40591f355e12d439ff150aab7613499dbd49adabc8676eef023b15b65bfc5ca0"
    "6948109f23f350db82123535eb8a7433bdabcb909271a6ecbcb58b936a88cd4e"
    "8f2e6ff5800175f113253d8fa9ca8885c2f552e657dc603f252e1a8e308f76f0"
    "be79e2fb8f5d5fbbe2e30ecadd220723c8c0aea8078cdfcb3868263ff8f09400"
    "54da48781893a7e49ad5aff4af300cd804a6b6279ab3ff3afb64491c85194aab"
    "760d58a606654f9f4400e8b38591356fbf6425aca26dc85244259ff2b19c41b9"
    "f96f3ca9ec1dde434da7d2d392b905ddf3d1f9af93d1af5950bd493f5aa731b4"
    "056df31bd267b6b90a079831aaf579be0a39013137aac6d404f518cfd4684064"
    "7e78bfe706ca4cf5e9c5453e9f7cfd2b8b4c8d169a44e55c88d4a9a7f9474241"
    "e221af44860018ab0856972e194cd934"
)


def test_rfc9001_a1_keys() -> None:
    assert quic.initial_secret(RFC_DCID).hex() == "7db5df06e7a69e432496adedb00851923595221596ae2ae9fb8115c1e9ed0a44"
    keys = quic.initial_keys(RFC_DCID)
    assert keys.key.hex() == "1f369613dd76d5467730efcbe3b1a22d"
    assert keys.iv.hex() == "fa044b2f42a3fd3b46fb255c"
    assert keys.hp.hex() == "9f50449e04a0e810283a1e9933adedd2"
    server = quic.initial_keys(RFC_DCID, server=True)
    assert server.key.hex() == "cf3a5331653c364c88f0f379b6067e37"


def test_rfc9001_a2_protect_matches_byte_for_byte() -> None:
    assert len(RFC_PROTECTED) == 1200
    protected = quic.protect_initial(RFC_UNPROTECTED_HEADER, 4, RFC_PAYLOAD, quic.initial_keys(RFC_DCID))
    assert protected == RFC_PROTECTED


def test_rfc9001_a2_decrypt() -> None:
    packet = quic.decrypt_initial(RFC_PROTECTED)
    assert packet.packet_number == 2 and packet.payload == RFC_PAYLOAD
    assert packet.header.dcid == RFC_DCID and packet.header.scid == b"" and packet.header.token == b""
    assert packet.frame_types == (quic.FRAME_CRYPTO, quic.FRAME_PADDING)
    assert packet.crypto[0].offset == 0 and len(packet.crypto[0].data) == 0xF1


def test_rfc9001_a2_client_hello() -> None:
    result = quic.parse_client_initial(RFC_PROTECTED)
    assert isinstance(result, quic.QuicClientHello)
    assert result.sni == "example.com" and result.client_hello.alpn == ("alpn",)
    assert result.client_hello.cipher_suites == (0x1301, 0x1302)
    assert quic.EXT_QUIC_TRANSPORT_PARAMETERS in result.client_hello.extension_types
    assert result.dcid == RFC_DCID and result.packet_numbers == (2,)


@pytest.mark.parametrize("pn_length", [1, 2, 3, 4])
def test_builder_round_trip(pn_length: int) -> None:
    dcid, scid = os.urandom(8), os.urandom(5)
    datagram = quic.build_initial("www.google.com", ("h3",), dcid=dcid, scid=scid, packet_number=1, pn_length=pn_length)
    assert len(datagram) == 1200
    result = quic.parse_client_initial(datagram)
    assert isinstance(result, quic.QuicClientHello)
    assert result.sni == "www.google.com" and result.client_hello.alpn == ("h3",)
    assert result.dcid == dcid and result.scid == scid and result.packet_numbers == (1,)
    assert result.client_hello.session_id == b""  # RFC 9001 §8.4


@given(st.from_regex(r"[a-z0-9]{1,20}(\.[a-z0-9]{1,20}){0,3}", fullmatch=True), st.binary(min_size=0, max_size=20))
@settings(max_examples=50)  # a round trip over valid input, not a fuzz target: its own count
def test_builder_round_trip_any_sni_and_dcid(sni: str, dcid: bytes) -> None:
    result = quic.parse_client_initial(quic.build_initial(sni, dcid=dcid))
    assert isinstance(result, quic.QuicClientHello) and result.sni == sni and result.dcid == dcid


def test_client_hello_split_over_two_datagrams_out_of_order() -> None:
    dcid, scid = os.urandom(8), os.urandom(8)
    message = quic.quic_client_hello("blocked.example", ["h3"], scid)
    half = len(message) // 2

    def datagram(offset: int, chunk: bytes, pn: int) -> bytes:
        frame = bytes([quic.FRAME_CRYPTO]) + quic.encode_varint(offset) + quic.encode_varint(len(chunk)) + chunk
        return _initial_with_frames(dcid, scid, pn, frame)

    assembler = quic.ClientHelloAssembler()
    assert isinstance(assembler.feed(datagram(half, message[half:], 1)), Incomplete)
    result = assembler.feed(datagram(0, message[:half], 0))
    assert isinstance(result, quic.QuicClientHello) and result.sni == "blocked.example"
    assert result.packet_numbers == (1, 0)


def _initial_with_frames(dcid: bytes, scid: bytes, pn: int, frames: bytes) -> bytes:
    prefix = b"\xc1" + struct.pack("!I", 1) + bytes([len(dcid)]) + dcid + bytes([len(scid)]) + scid + b"\x00"
    frames += bytes(max(0, 1200 - len(prefix) - 2 - 2 - 16 - len(frames)))
    header = prefix + quic.encode_varint(2 + len(frames) + 16, 2) + pn.to_bytes(2, "big")
    return quic.protect_initial(header, 2, frames, quic.initial_keys(dcid))


def test_ping_ack_and_padding_frames_are_walked() -> None:
    dcid, scid = os.urandom(8), os.urandom(8)
    message = quic.quic_client_hello("a.example", ["h3"], scid)
    frames = b"\x01" + b"\x02\x00\x00\x00\x00" + b"\x00\x00\x00" + b"\x06\x00" + quic.encode_varint(len(message)) + message + b"\x01"
    packet = quic.decrypt_initial(_initial_with_frames(dcid, scid, 0, frames))
    assert packet.frame_types[:4] == (quic.FRAME_PING, quic.FRAME_ACK, quic.FRAME_PADDING, quic.FRAME_CRYPTO)
    result = quic.parse_client_initial(_initial_with_frames(dcid, scid, 0, frames))
    assert isinstance(result, quic.QuicClientHello) and result.sni == "a.example"


def test_stream_frame_in_an_initial_is_a_protocol_error() -> None:
    dcid = os.urandom(8)
    with pytest.raises(ProtocolError, match="not allowed"):
        quic.decrypt_initial(_initial_with_frames(dcid, b"", 0, b"\x08\x00\x01x"))


def test_coalesced_initial_then_handshake_packet() -> None:
    datagram = quic.build_initial("c.example", min_datagram=0)
    handshake_packet = b"\xe0" + struct.pack("!I", 1) + b"\x00\x00" + quic.encode_varint(20) + os.urandom(20)
    result = quic.parse_client_initial(datagram + handshake_packet)
    assert isinstance(result, quic.QuicClientHello) and result.sni == "c.example"


def test_truncated_or_tampered_packets_fail() -> None:
    with pytest.raises(ProtocolError, match="truncated"):
        quic.decrypt_initial(RFC_PROTECTED[:-1])  # the GFW also lets this one through (artifact Table 3 #2)
    tampered = bytearray(RFC_PROTECTED)
    tampered[500] ^= 1
    with pytest.raises(ProtocolError, match="authentication"):
        quic.decrypt_initial(bytes(tampered))
    wrong_version = bytearray(RFC_PROTECTED)
    wrong_version[1:5] = b"\x6b\x33\x43\xcf"  # QUIC v2
    with pytest.raises(ProtocolError, match="not v1"):
        quic.decrypt_initial(bytes(wrong_version))
    with pytest.raises(ProtocolError, match="short-header"):
        quic.parse_long_header(b"\x40" + os.urandom(50))
    with pytest.raises(ProtocolError, match="no QUIC Initial"):
        quic.parse_client_initial(b"\x40" + os.urandom(50))


def test_varints() -> None:
    # RFC 9000 §A.1 examples.
    assert quic.decode_varint(bytes.fromhex("c2197c5eff14e88c"), 0) == (151288809941952652, 8)
    assert quic.decode_varint(bytes.fromhex("9d7f3e7d"), 0) == (494878333, 4)
    assert quic.decode_varint(bytes.fromhex("7bbd"), 0) == (15293, 2)
    assert quic.decode_varint(bytes.fromhex("25"), 0) == (37, 1)
    assert quic.encode_varint(15293) == bytes.fromhex("7bbd") and quic.encode_varint(37, 2) == bytes.fromhex("4025")


def test_gfw_constants() -> None:
    assert quic.gfw_inspects_ports(55000, 443) and not quic.gfw_inspects_ports(4000, 5000)
    assert quic.GFW_FLOW_TRACKING_SECONDS == 60


@settings(max_examples=examples(400))
@given(st.binary(max_size=300))
def test_arbitrary_bytes_give_a_result_or_protocol_error(data: bytes) -> None:
    try:
        result = quic.parse_client_initial(data)
    except ProtocolError:
        return
    assert isinstance(result, (quic.QuicClientHello, Incomplete))


@settings(max_examples=examples(300))
@given(st.binary(max_size=400))
def test_arbitrary_decrypted_payloads_never_escape(payload: bytes) -> None:
    try:
        quic.parse_initial_frames(payload)
        quic.client_hello_from_handshake(payload)
    except ProtocolError:
        pass


@settings(max_examples=examples(200))
@given(st.integers(min_value=0, max_value=1199), st.integers(min_value=0, max_value=255))
def test_mutated_rfc_packet_never_escapes(position: int, value: int) -> None:
    mutated = bytearray(RFC_PROTECTED)
    mutated[position] = value
    try:
        result = quic.parse_client_initial(bytes(mutated))
    except ProtocolError:
        return
    assert isinstance(result, (quic.QuicClientHello, Incomplete))


# --- the long header and Initial decryption on arbitrary and near-valid packets --------------------


@settings(max_examples=examples(400))
@given(st.binary(max_size=300), st.integers(min_value=0, max_value=310))
def test_long_header_of_arbitrary_bytes_is_a_header_or_protocol_error(data: bytes, start: int) -> None:
    try:
        header = quic.parse_long_header(data, start)
    except ProtocolError:
        return
    assert header.first_byte == data[start] and header.first_byte & 0x80
    assert header.version == struct.unpack_from("!I", data, start + 1)[0]
    assert start + 7 + len(header.dcid) + len(header.scid) <= header.pn_offset <= header.packet_end <= len(data)


def _long_header_packet(first: int, version: int, dcid: bytes, scid: bytes, token: bytes, body: bytes,
                        length_delta: int) -> bytes:
    """A long-header packet laid out by RFC 9000 §17.2 (the Initial's token and Length fields per
    §17.2.2), with a Length field off by `length_delta` from the body it is given."""
    packet = bytes([first]) + struct.pack("!I", version) + bytes([len(dcid)]) + dcid + bytes([len(scid)]) + scid
    if (first >> 4) & 0x03 == quic.PACKET_INITIAL:
        packet += quic.encode_varint(len(token)) + token
    return packet + quic.encode_varint(max(0, len(body) + length_delta)) + body


near_valid_packets = st.tuples(
    st.integers(0x80, 0xFF),
    st.sampled_from([quic.QUIC_V1, 0, 0x6B3343CF, 0xFF00001D]) | st.integers(0, 2**32 - 1),
    st.binary(max_size=22),
    st.binary(max_size=22),
    st.binary(max_size=30),
    st.binary(max_size=1300),
    st.sampled_from([0, 0, 0, -1, 1, -20, 40]),
)


@settings(max_examples=examples(300))
@given(near_valid_packets, st.binary(max_size=20))
def test_header_parse_and_initial_decryption_of_near_valid_packets(parts: tuple, trailing: bytes) -> None:
    """Packets shaped like long headers with random fields reach the key derivation, header
    protection and AEAD: a packet, or ProtocolError, never another exception."""
    first, version, dcid, scid, token, _body, _delta = parts
    datagram = _long_header_packet(*parts) + trailing
    try:
        header = quic.parse_long_header(datagram)
    except ProtocolError:
        header = None
    if header is not None:  # what was written is what is read
        assert (header.version, header.dcid, header.scid) == (version, dcid, scid)
        if version != 0 and (first >> 4) & 0x03 == quic.PACKET_INITIAL:
            assert header.token == token
    try:
        quic.decrypt_initial(datagram)
    except ProtocolError:
        return
    pytest.fail("random ciphertext passed AES-GCM authentication")


@settings(max_examples=examples(200), deadline=None)
@given(st.binary(min_size=0, max_size=20), st.binary(min_size=0, max_size=20), st.integers(1, 4),
       st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=4))
def test_initial_decryption_round_trip_and_any_corruption(dcid: bytes, scid: bytes, pn_length: int,
                                                          flips: list[tuple[int, int]]) -> None:
    """A built Initial decrypts to its ClientHello with the header it was built with; any bytes
    changed in it give ProtocolError (the AEAD covers header and payload) or the same packet."""
    datagram = quic.build_initial("round.trip.example", dcid=dcid, scid=scid, pn_length=pn_length, packet_number=3)
    initial = quic.decrypt_initial(datagram)
    assert (initial.header.dcid, initial.header.scid, initial.packet_number) == (dcid, scid, 3)
    hello = quic.client_hello_from_handshake(b"".join(f.data for f in sorted(initial.crypto, key=lambda f: f.offset)))
    assert isinstance(hello, ClientHello) and hello.sni == "round.trip.example"
    corrupted = bytearray(datagram)
    for position, value in flips:
        corrupted[position % len(corrupted)] = value
    try:
        again = quic.decrypt_initial(bytes(corrupted))
    except ProtocolError:
        return
    assert again.payload == initial.payload and again.header.dcid == dcid
