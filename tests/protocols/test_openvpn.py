"""OpenVPN codec and fingerprint, checked against a real openvpn 2.6 on loopback."""

from __future__ import annotations

import datetime as dt
import select
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from tests.fuzzing import examples
from wallwatch.protocols import openvpn as ov
from wallwatch.protocols.errors import Incomplete, ProtocolError

session_ids = st.binary(min_size=8, max_size=8)


@given(session_ids)
def test_client_reset_layout(session_id: bytes) -> None:
    packet = ov.build_client_hard_reset_v2(session_id)
    assert packet == b"\x38" + session_id + b"\x00" + b"\x00\x00\x00\x00"
    parsed = ov.parse_packet(packet)
    assert parsed.opcode_name == "P_CONTROL_HARD_RESET_CLIENT_V2" and parsed.key_id == 0
    assert parsed.session_id == session_id and parsed.plain and parsed.packet_id == 0 and parsed.acked_packet_ids == ()


@given(session_ids, session_ids, st.integers(min_value=0, max_value=2**32 - 1))
def test_server_reset_round_trip(server: bytes, client: bytes, acked: int) -> None:
    parsed = ov.parse_packet(ov.build_server_hard_reset_v2(server, client, acked_packet_id=acked))
    assert parsed.opcode == ov.P_CONTROL_HARD_RESET_SERVER_V2 and parsed.session_id == server
    assert parsed.acked_packet_ids == (acked,) and parsed.remote_session_id == client and parsed.packet_id == 0


def test_first_bytes_match_the_published_fingerprint() -> None:
    # [OpenVPN], [Xue2022]: byte 0 is 0x38 for the client reset, 0x40 for the server's.
    assert ov.build_client_hard_reset_v2()[0] == 0x38
    assert ov.build_server_hard_reset_v2(bytes(8), bytes(8))[0] == 0x40


def test_every_opcode_has_a_name_and_key_ids_split() -> None:
    assert len(ov.OPCODE_NAMES) == 11 and set(ov.OPCODE_NAMES) == set(range(1, 12))
    assert ov.split_opcode(0x4B) == (9, 3)


def test_ack_and_data_packets() -> None:
    ack = ov.parse_packet(ov.build_control(ov.P_ACK_V1, b"A" * 8, acks=(1, 2), remote_session_id=b"B" * 8, packet_id=None))
    assert ack.plain and ack.acked_packet_ids == (1, 2) and ack.packet_id is None and ack.payload == b""
    data_v2 = ov.parse_packet(bytes([ov.P_DATA_V2 << 3 | 1]) + b"\x00\x01\x02" + b"ciphertext")
    assert data_v2.peer_id == 0x000102 and data_v2.key_id == 1 and data_v2.payload == b"ciphertext"
    assert ov.parse_packet(bytes([ov.P_DATA_V1 << 3])).payload == b""


def test_tls_auth_layout_is_not_plain() -> None:
    # With tls-auth, an HMAC follows the session id: 0xff... is no ack count.
    packet = b"\x38" + bytes(8) + b"\xff" * 20 + bytes(8) + b"\x00" + bytes(4)
    parsed = ov.parse_packet(packet)
    assert parsed.opcode == ov.P_CONTROL_HARD_RESET_CLIENT_V2 and not parsed.plain and parsed.packet_id is None


@pytest.mark.parametrize("packet", [b"", b"\x00" * 14, b"\x60" * 14, b"\xf8abc", b"\x38\x00\x00", b"\x48\x00\x01"])
def test_bad_packets(packet: bytes) -> None:
    with pytest.raises(ProtocolError):
        ov.parse_packet(packet)


def test_tcp_framing_and_prefixes() -> None:
    stream = ov.build_client_hard_reset_v2(tcp=True) + ov.build_control(ov.P_CONTROL_V1, bytes(8), payload=b"x", tcp=True)
    assert stream[:2] == b"\x00\x0e"
    first = ov.parse_tcp_packet(stream)
    assert not isinstance(first, Incomplete)
    packet, used = first
    assert packet.opcode == ov.P_CONTROL_HARD_RESET_CLIENT_V2 and used == 16
    for cut in range(used):
        assert isinstance(ov.parse_tcp_packet(stream[:cut]), Incomplete)
    assert ov.parse_tcp_packet(stream[:10]) == Incomplete(16)
    with pytest.raises(ProtocolError):
        ov.parse_tcp_packet(b"\x00\x03abc")  # below the 6-byte minimum
    with pytest.raises(ProtocolError):
        ov.parse_tcp_packet(b"\x16\x03\x01\x02\x00")  # a TLS record: byte 2 gives opcode 0


def _handshake(tcp: bool) -> list[tuple[bytes, bool]]:
    client, server = b"C" * 8, b"S" * 8
    return [
        (ov.build_client_hard_reset_v2(client, tcp=tcp), False),
        (ov.build_server_hard_reset_v2(server, client, tcp=tcp), True),
        (ov.build_control(ov.P_CONTROL_V1, client, acks=(0,), remote_session_id=server, packet_id=1, payload=b"\x16\x03\x01", tcp=tcp), False),
        (ov.build_control(ov.P_ACK_V1, server, acks=(1,), remote_session_id=client, packet_id=None, tcp=tcp), True),
    ]


@pytest.mark.parametrize("tcp", [False, True])
def test_matcher_follows_a_handshake(tcp: bool) -> None:
    matcher = ov.OpenVpnMatcher(tcp=tcp)
    states = [matcher.feed(data, reverse).state for data, reverse in _handshake(tcp)]
    assert states == [ov.WAITING_SERVER_RESET, ov.HANDSHAKE_SEEN, ov.HANDSHAKE_SEEN, ov.HANDSHAKE_SEEN]
    assert matcher.is_openvpn and matcher.session_id_echoed and (matcher.tx_packets, matcher.rx_packets) == (2, 2)


def test_matcher_reassembles_tcp_byte_by_byte() -> None:
    matcher = ov.OpenVpnMatcher(tcp=True)
    for data, reverse in _handshake(True):
        for i in range(len(data)):
            matcher.feed(data[i : i + 1], reverse)
    assert matcher.is_openvpn and matcher.tx_packets == 2 and matcher.rx_packets == 2


def test_matcher_accepts_retransmitted_resets() -> None:
    matcher = ov.OpenVpnMatcher()
    reset = ov.build_client_hard_reset_v2(b"C" * 8)
    matcher.feed(reset, False)
    matcher.feed(reset, False)
    matcher.feed(ov.build_server_hard_reset_v2(b"S" * 8, b"C" * 8), True)
    assert matcher.feed(reset, False).state == ov.HANDSHAKE_SEEN


@pytest.mark.parametrize(
    "sequence",
    [
        [(ov.build_server_hard_reset_v2(b"S" * 8, b"C" * 8), True)],  # the server speaks first
        [(ov.build_control(ov.P_CONTROL_V1, b"C" * 8), False)],  # no reset at all
        [(ov.build_client_hard_reset_v2(), False), (ov.build_client_hard_reset_v2(), True)],  # client reset back
        [(ov.build_client_hard_reset_v2(), False), (b"\x00garbage", True)],
        [(b"\x16\x03\x01\x00\x05hello", False)],
    ],
)
def test_matcher_rejects_out_of_place_packets(sequence: list[tuple[bytes, bool]]) -> None:
    matcher = ov.OpenVpnMatcher()
    for data, reverse in sequence:
        matcher.feed(data, reverse)
    assert matcher.state == ov.NOT_OPENVPN and matcher.done and not matcher.is_openvpn


def test_second_client_reset_with_a_new_session_cancels() -> None:
    matcher = ov.OpenVpnMatcher()
    matcher.feed(ov.build_client_hard_reset_v2(b"C" * 8), False)
    matcher.feed(ov.build_server_hard_reset_v2(b"S" * 8, b"C" * 8), True)
    assert matcher.feed(ov.build_client_hard_reset_v2(b"D" * 8), False).state == ov.NOT_OPENVPN


@settings(max_examples=examples(500))
@given(st.binary(max_size=120))
def test_arbitrary_bytes_give_a_result_or_protocol_error(data: bytes) -> None:
    for parse in (ov.parse_packet, ov.parse_tcp_packet):
        try:
            result = parse(data)
        except ProtocolError:
            continue
        assert isinstance(result, (ov.OpenVpnPacket, Incomplete, tuple))


@given(st.lists(st.tuples(st.binary(max_size=60), st.booleans()), max_size=12), st.booleans())
def test_matcher_never_raises(packets: list[tuple[bytes, bool]], tcp: bool) -> None:
    matcher = ov.OpenVpnMatcher(tcp=tcp)
    for data, reverse in packets:
        matcher.feed(data, reverse)


# --- against the real thing --------------------------------------------------

needs_openvpn = pytest.mark.skipif(shutil.which("openvpn") is None, reason="the openvpn binary is not installed (scripts/install.sh)")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed EC certificate used as CA, client and server identity."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory = tmp_path_factory.mktemp("ovpn")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wallwatch-lab")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return directory


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _openvpn(pki: Path, *args: str) -> subprocess.Popen[bytes]:
    common = ["--dev", "null", "--ca", "cert.pem", "--cert", "cert.pem", "--key", "key.pem", "--verb", "0", "--ping", "1"]
    return subprocess.Popen(["openvpn", *args, *common], cwd=pki, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for process in started:
            process.kill()
            process.wait(timeout=10)


def _data_flowing(matcher: ov.OpenVpnMatcher, data: bytes, reverse: bool) -> bool:
    """Feed the matcher; True once a data-channel packet shows the handshake finished."""
    return any(p.opcode in (ov.P_DATA_V1, ov.P_DATA_V2) for p in matcher.feed(data, reverse).packets)


def _relay_udp(pki: Path, processes: list, matcher: ov.OpenVpnMatcher, seconds: float = 10) -> list[tuple[bytes, bool]]:
    """Run a real tls-server and tls-client with a recording UDP relay between them."""
    server_port = _free_port(socket.SOCK_DGRAM)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as front, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as back:
        front.bind(("127.0.0.1", 0))
        back.bind(("127.0.0.1", 0))
        processes.append(_openvpn(pki, "--tls-server", "--dh", "none", "--proto", "udp", "--local", "127.0.0.1", "--lport", str(server_port)))
        time.sleep(0.3)
        processes.append(_openvpn(pki, "--tls-client", "--proto", "udp", "--nobind", "--remote", "127.0.0.1", str(front.getsockname()[1])))
        seen: list[tuple[bytes, bool]] = []
        client = None
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ready, _, _ = select.select([front, back], [], [], 0.2)
            for sock in ready:
                data, address = sock.recvfrom(65535)
                if sock is front:
                    client = address
                    back.sendto(data, ("127.0.0.1", server_port))
                elif client is not None:
                    front.sendto(data, client)
                seen.append((data, sock is back))
                if _data_flowing(matcher, data, sock is back):
                    return seen
        return seen


def _relay_tcp(pki: Path, processes: list, matcher: ov.OpenVpnMatcher, seconds: float = 10) -> list[tuple[bytes, bool]]:
    server_port = _free_port(socket.SOCK_STREAM)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(seconds)
        processes.append(_openvpn(pki, "--tls-server", "--dh", "none", "--proto", "tcp-server", "--local", "127.0.0.1", "--lport", str(server_port)))
        time.sleep(0.3)
        processes.append(_openvpn(pki, "--tls-client", "--proto", "tcp-client", "--remote", "127.0.0.1", str(listener.getsockname()[1])))
        front, _ = listener.accept()
        back = socket.create_connection(("127.0.0.1", server_port), timeout=seconds)
        seen: list[tuple[bytes, bool]] = []
        deadline = time.monotonic() + seconds
        with front, back:
            while time.monotonic() < deadline:
                ready, _, _ = select.select([front, back], [], [], 0.2)
                for sock in ready:
                    data = sock.recv(65535)
                    if not data:
                        return seen
                    (back if sock is front else front).sendall(data)
                    seen.append((data, sock is back))
                    if _data_flowing(matcher, data, sock is back):
                        return seen
        return seen


@needs_openvpn
def test_real_openvpn_udp_handshake(pki: Path, processes: list) -> None:
    matcher = ov.OpenVpnMatcher()
    seen = _relay_udp(pki, processes, matcher)
    assert seen, "openvpn sent nothing"
    first, reverse = seen[0]
    assert not reverse and len(first) == 14
    session_id = first[1:9]
    assert first == ov.build_client_hard_reset_v2(session_id)  # the builder matches openvpn 2.6 byte for byte
    opcodes = {ov.parse_packet(data).opcode for data, _ in seen}
    assert matcher.is_openvpn and matcher.session_id_echoed
    assert {ov.P_CONTROL_V1, ov.P_ACK_V1, ov.P_DATA_V2} <= opcodes


@needs_openvpn
def test_real_openvpn_tcp_handshake(pki: Path, processes: list) -> None:
    matcher = ov.OpenVpnMatcher(tcp=True)
    seen = _relay_tcp(pki, processes, matcher)
    assert seen and seen[0][0][:3] == b"\x00\x0e\x38"
    assert matcher.state == ov.HANDSHAKE_SEEN and matcher.is_openvpn and matcher.session_id_echoed and matcher.tx_packets >= 2 and matcher.rx_packets >= 2
