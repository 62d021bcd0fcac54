"""OpenVPN packets: opcode / key id / session id, a client reset builder, a flow fingerprint.

Wire format (OpenVPN `src/openvpn/ssl_pkt.h` and the protocol comment of
`ssl.h`, published at openvpn.net/community-docs/openvpn-protocol.html):

    [TCP only: 16-bit big-endian packet length]
    opcode (high 5 bits) | key_id (low 3 bits)
    P_CONTROL_* / P_ACK_V1:  session_id (8 bytes)
        [tls-auth / tls-crypt: HMAC, replay packet-id + time: not parsed here]
        ack array length (1 byte), that many 32-bit packet ids,
        remote session_id (8 bytes, only when the array is not empty)
        message packet_id (4 bytes; not in P_ACK_V1), then TLS ciphertext
    P_DATA_V1: payload;  P_DATA_V2: 24-bit peer id, payload

The opcode byte alone fingerprints a handshake: Xue et al., "OpenVPN is Open to
VPN Fingerprinting", USENIX Security 2022, §4 (opcode-based fingerprinting:
a client HARD_RESET, then a server HARD_RESET, then only control/ack/data
opcodes); OpenGFW's `analyzer/udp/openvpn.go` implements the same state machine
for UDP and TCP. Sans-IO: bytes in, facts out.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from wallwatch.protocols.errors import Incomplete, ProtocolError

# Opcodes, ssl_pkt.h.
P_CONTROL_HARD_RESET_CLIENT_V1 = 1
P_CONTROL_HARD_RESET_SERVER_V1 = 2
P_CONTROL_SOFT_RESET_V1 = 3
P_CONTROL_V1 = 4
P_ACK_V1 = 5
P_DATA_V1 = 6
P_CONTROL_HARD_RESET_CLIENT_V2 = 7
P_CONTROL_HARD_RESET_SERVER_V2 = 8
P_DATA_V2 = 9
P_CONTROL_HARD_RESET_CLIENT_V3 = 10  # tls-crypt-v2 client reset (OpenVPN 2.5+)
P_CONTROL_WKC_V1 = 11  # control packet carrying the tls-crypt-v2 wrapped client key

OPCODE_NAMES = {
    P_CONTROL_HARD_RESET_CLIENT_V1: "P_CONTROL_HARD_RESET_CLIENT_V1",
    P_CONTROL_HARD_RESET_SERVER_V1: "P_CONTROL_HARD_RESET_SERVER_V1",
    P_CONTROL_SOFT_RESET_V1: "P_CONTROL_SOFT_RESET_V1",
    P_CONTROL_V1: "P_CONTROL_V1",
    P_ACK_V1: "P_ACK_V1",
    P_DATA_V1: "P_DATA_V1",
    P_CONTROL_HARD_RESET_CLIENT_V2: "P_CONTROL_HARD_RESET_CLIENT_V2",
    P_CONTROL_HARD_RESET_SERVER_V2: "P_CONTROL_HARD_RESET_SERVER_V2",
    P_DATA_V2: "P_DATA_V2",
    P_CONTROL_HARD_RESET_CLIENT_V3: "P_CONTROL_HARD_RESET_CLIENT_V3",
    P_CONTROL_WKC_V1: "P_CONTROL_WKC_V1",
}
CLIENT_RESETS = frozenset({P_CONTROL_HARD_RESET_CLIENT_V1, P_CONTROL_HARD_RESET_CLIENT_V2, P_CONTROL_HARD_RESET_CLIENT_V3})
SERVER_RESETS = frozenset({P_CONTROL_HARD_RESET_SERVER_V1, P_CONTROL_HARD_RESET_SERVER_V2})
# What may follow the resets (OpenGFW openvpn.go parseReq/parseResp).
AFTER_RESET = frozenset({P_CONTROL_SOFT_RESET_V1, P_CONTROL_V1, P_ACK_V1, P_DATA_V1, P_DATA_V2, P_CONTROL_WKC_V1})
_DATA_OPCODES = frozenset({P_DATA_V1, P_DATA_V2})

SESSION_ID_SIZE = 8  # ssl_common.h SID_SIZE
# A session's first key is key_id 0, so both hard resets carry it; renegotiation
# cycles 1..7 and never returns to 0 (ssl.c key_id_inc). A check OpenGFW skips: it
# cuts the random first bytes that read as a client reset from 24 in 256 to 3.
INITIAL_KEY_ID = 0
OPENVPN_PORT = 1194  # IANA "openvpn"
# OpenGFW: a TCP packet length below 6 is not OpenVPN (OpenVpnMinPktLen), and
# the analyzer stops after 256 packets each way (OpenVpn*PktDefaultLimit).
TCP_MIN_PACKET_LENGTH = 6
PACKET_LIMIT = 256


@dataclass(frozen=True, slots=True)
class OpenVpnPacket:
    """One OpenVPN packet (without the TCP length prefix).

    `session_id` is set for control and ack packets. The ack array, remote
    session id and message packet id are read only when the packet parses
    exactly as a control packet *without* tls-auth/tls-crypt (`plain`); with
    a wrapper those bytes are an HMAC or ciphertext and stay unread.
    """

    opcode: int
    key_id: int
    session_id: bytes | None
    peer_id: int | None  # P_DATA_V2 only
    plain: bool
    acked_packet_ids: tuple[int, ...]
    remote_session_id: bytes | None
    packet_id: int | None
    payload: bytes
    length: int

    @property
    def opcode_name(self) -> str:
        return OPCODE_NAMES[self.opcode]


def split_opcode(byte0: int) -> tuple[int, int]:
    """(opcode, key_id) of the first byte."""
    return byte0 >> 3, byte0 & 0x07


def parse_packet(data: bytes) -> OpenVpnPacket:
    """Parse one OpenVPN packet as carried in one UDP datagram."""
    if not data:
        raise ProtocolError("empty OpenVPN packet")
    opcode, key_id = split_opcode(data[0])
    if opcode not in OPCODE_NAMES:
        raise ProtocolError(f"OpenVPN has no opcode {opcode}")
    if opcode == P_DATA_V1:
        return OpenVpnPacket(opcode, key_id, None, None, False, (), None, None, data[1:], len(data))
    if opcode == P_DATA_V2:
        if len(data) < 4:
            raise ProtocolError("P_DATA_V2 shorter than its 24-bit peer id")
        peer_id = int.from_bytes(data[1:4], "big")
        return OpenVpnPacket(opcode, key_id, None, peer_id, False, (), None, None, data[4:], len(data))
    if len(data) < 1 + SESSION_ID_SIZE:
        raise ProtocolError(f"{OPCODE_NAMES[opcode]} shorter than its session id")
    session_id = data[1 : 1 + SESSION_ID_SIZE]
    plain = _parse_plain_control(opcode, data)
    if plain is None:
        return OpenVpnPacket(opcode, key_id, session_id, None, False, (), None, None, data[9:], len(data))
    acks, remote, packet_id, payload = plain
    return OpenVpnPacket(opcode, key_id, session_id, None, True, acks, remote, packet_id, payload, len(data))


def _parse_plain_control(
    opcode: int, data: bytes
) -> tuple[tuple[int, ...], bytes | None, int | None, bytes] | None:
    """The fields after the session id, if the packet fits the no-tls-auth layout."""
    pos = 1 + SESSION_ID_SIZE
    if pos >= len(data):
        return None
    ack_count = data[pos]
    pos += 1
    # reliable.h RELIABLE_ACK_SIZE: at most 8 ids in one ack array.
    if ack_count > 8 or pos + 4 * ack_count > len(data):
        return None
    acks = struct.unpack_from(f"!{ack_count}I", data, pos)
    pos += 4 * ack_count
    remote = None
    if ack_count:
        if pos + SESSION_ID_SIZE > len(data):
            return None
        remote = data[pos : pos + SESSION_ID_SIZE]
        pos += SESSION_ID_SIZE
    packet_id = None
    if opcode != P_ACK_V1:
        if pos + 4 > len(data):
            return None
        packet_id = struct.unpack_from("!I", data, pos)[0]
        pos += 4
    elif pos != len(data):
        return None  # a plain P_ACK_V1 carries nothing after its ack array
    return tuple(acks), remote, packet_id, data[pos:]


def parse_tcp_packet(data: bytes) -> tuple[OpenVpnPacket, int] | Incomplete:
    """Parse the first length-prefixed packet of a TCP stream.

    Returns the packet and the number of stream bytes it used, or Incomplete.
    The opcode is checked as soon as it arrives, so a stream that is not
    OpenVPN fails on its third byte (as OpenGFW's parsePkt does).
    """
    if len(data) < 2:
        return Incomplete()
    length = struct.unpack_from("!H", data)[0]
    if length < TCP_MIN_PACKET_LENGTH:
        raise ProtocolError(f"OpenVPN TCP packet length {length} is below {TCP_MIN_PACKET_LENGTH}")
    if len(data) >= 3 and split_opcode(data[2])[0] not in OPCODE_NAMES:
        raise ProtocolError(f"OpenVPN has no opcode {split_opcode(data[2])[0]}")
    if len(data) < 2 + length:
        return Incomplete(2 + length)
    return parse_packet(data[2 : 2 + length]), 2 + length


# --- building ---------------------------------------------------------------


def build_client_hard_reset_v2(session_id: bytes | None = None, *, tcp: bool = False) -> bytes:
    """A P_CONTROL_HARD_RESET_CLIENT_V2 as OpenVPN 2.6 sends it without tls-auth.

    14 bytes: 0x38 (opcode 7, key id 0), session id, an empty ack array and
    message packet id 0; captured from Debian 12's openvpn 2.6.14 on loopback
    (tests/protocols/test_openvpn.py checks the builder against it).
    """
    return _control(P_CONTROL_HARD_RESET_CLIENT_V2, session_id or os.urandom(SESSION_ID_SIZE), (), None, 0, b"", tcp)


def build_server_hard_reset_v2(
    session_id: bytes, client_session_id: bytes, *, acked_packet_id: int = 0, tcp: bool = False
) -> bytes:
    """The server's answer: its own session id, acking the client's reset."""
    return _control(P_CONTROL_HARD_RESET_SERVER_V2, session_id, (acked_packet_id,), client_session_id, 0, b"", tcp)


def build_control(
    opcode: int,
    session_id: bytes,
    *,
    acks: tuple[int, ...] = (),
    remote_session_id: bytes | None = None,
    packet_id: int | None = 0,
    payload: bytes = b"",
    key_id: int = 0,
    tcp: bool = False,
) -> bytes:
    """Any control or ack packet in the no-tls-auth layout."""
    return _control(opcode, session_id, acks, remote_session_id, packet_id, payload, tcp, key_id)


def _control(
    opcode: int,
    session_id: bytes,
    acks: tuple[int, ...],
    remote_session_id: bytes | None,
    packet_id: int | None,
    payload: bytes,
    tcp: bool,
    key_id: int = 0,
) -> bytes:
    if len(session_id) != SESSION_ID_SIZE or (remote_session_id is not None and len(remote_session_id) != SESSION_ID_SIZE):
        raise ValueError("OpenVPN session ids are 8 bytes")
    if bool(acks) != (remote_session_id is not None):
        raise ValueError("a remote session id goes with a non-empty ack array")
    packet = bytes([opcode << 3 | key_id]) + session_id + bytes([len(acks)]) + struct.pack(f"!{len(acks)}I", *acks)
    packet += remote_session_id or b""
    if packet_id is not None:
        packet += struct.pack("!I", packet_id)
    packet += payload
    return with_tcp_length(packet) if tcp else packet


def with_tcp_length(packet: bytes) -> bytes:
    """Prefix the 16-bit length OpenVPN uses over TCP."""
    return struct.pack("!H", len(packet)) + packet


# --- the censor's view of a flow --------------------------------------------

WAITING_CLIENT_RESET = "waiting_client_reset"
WAITING_SERVER_RESET = "waiting_server_reset"
HANDSHAKE_SEEN = "handshake_seen"  # both resets: the flow is OpenVPN
NOT_OPENVPN = "not_openvpn"


@dataclass(frozen=True, slots=True)
class OpenVpnUpdate:
    state: str
    packets: tuple[OpenVpnPacket, ...]
    tx_packets: int
    rx_packets: int


class OpenVpnMatcher:
    """Per-flow fingerprint after OpenGFW's openVpnStream and Xue et al. §4.

    `feed(data, reverse)` with reverse=False for client-to-server bytes: one
    datagram for UDP, any slice of the stream for TCP. State goes
    waiting_client_reset -> waiting_server_reset -> handshake_seen, or to
    not_openvpn on the first packet out of place. One deliberate difference
    from OpenGFW: a *retransmitted* reset (same opcode and session id) is
    accepted, since OpenVPN resends unacknowledged resets (reliable.c) and a
    lost reply must not clear a real OpenVPN flow.
    """

    def __init__(self, *, tcp: bool = False) -> None:
        self.tcp = tcp
        self.state = WAITING_CLIENT_RESET
        self.tx_packets = 0
        self.rx_packets = 0
        self.client_session_id: bytes | None = None
        self.server_session_id: bytes | None = None
        # The server's reset acked the client's session id (plain layout only).
        self.session_id_echoed = False
        self._buffers = {False: bytearray(), True: bytearray()}

    @property
    def is_openvpn(self) -> bool:
        return self.state == HANDSHAKE_SEEN

    @property
    def done(self) -> bool:
        return self.state == NOT_OPENVPN or self.tx_packets + self.rx_packets > PACKET_LIMIT

    def feed(self, data: bytes, reverse: bool) -> OpenVpnUpdate:
        packets: list[OpenVpnPacket] = []
        if self.state != NOT_OPENVPN and data:
            try:
                for packet in self._packets(data, reverse):
                    packets.append(packet)
                    self._step(packet, reverse)
                    if self.state == NOT_OPENVPN:
                        break
            except ProtocolError:
                self.state = NOT_OPENVPN
        return OpenVpnUpdate(self.state, tuple(packets), self.tx_packets, self.rx_packets)

    def _packets(self, data: bytes, reverse: bool) -> list[OpenVpnPacket]:
        if not self.tcp:
            return [parse_packet(data)]
        buffer = self._buffers[reverse]
        buffer += data
        found = []
        while True:
            result = parse_tcp_packet(bytes(buffer))
            if isinstance(result, Incomplete):
                return found
            packet, used = result
            del buffer[:used]
            found.append(packet)

    def _step(self, packet: OpenVpnPacket, reverse: bool) -> None:
        if reverse:
            self.rx_packets += 1
        else:
            self.tx_packets += 1
        if self._is_retransmitted_reset(packet, reverse):
            return
        if self.state == WAITING_CLIENT_RESET:
            if reverse or packet.opcode not in CLIENT_RESETS or packet.key_id != INITIAL_KEY_ID:
                self.state = NOT_OPENVPN
                return
            self.client_session_id = packet.session_id
            self.state = WAITING_SERVER_RESET
        elif self.state == WAITING_SERVER_RESET and reverse:
            if packet.opcode not in SERVER_RESETS or packet.key_id != INITIAL_KEY_ID:
                self.state = NOT_OPENVPN
                return
            self.server_session_id = packet.session_id
            self.session_id_echoed = packet.remote_session_id == self.client_session_id
            self.state = HANDSHAKE_SEEN
        elif packet.opcode not in AFTER_RESET:
            self.state = NOT_OPENVPN

    def _is_retransmitted_reset(self, packet: OpenVpnPacket, reverse: bool) -> bool:
        resets, known = (SERVER_RESETS, self.server_session_id) if reverse else (CLIENT_RESETS, self.client_session_id)
        return packet.opcode in resets and known is not None and packet.session_id == known
