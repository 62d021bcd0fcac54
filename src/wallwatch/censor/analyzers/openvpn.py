"""OpenVPN analyzer: the opcode fingerprint of a session's opening, UDP and TCP.

Xue et al., "OpenVPN is Open to VPN Fingerprinting", USENIX Security 2022,
§4: every OpenVPN session opens with a client P_CONTROL_HARD_RESET_CLIENT_V1/
V2/V3 (opcode in the top 5 bits of the first byte; over TCP after a 16-bit
length), answered by a server hard reset, after which only control, ack and
data opcodes follow (their "ACK fingerprint": the client acknowledges the
server's reset). OpenGFW's analyzer/udp/openvpn.go runs the same state machine.
Parsing is `protocols.openvpn.OpenVpnMatcher`.

Properties:
- `openvpn.opcode`: the opcode of the client's first packet;
- `openvpn.client_reset`: that packet is a client hard reset with key_id 0. A
  first-packet rule, and a coarse one over UDP: a datagram's first byte is all
  it checks there, so 3 in 256 random first bytes match (every DNS query's
  first byte is its random transaction id);
- `openvpn.handshake`: the flow *is* OpenVPN. Over UDP that takes the server's
  hard reset and then the client's next control or ack packet, so the rule
  fires on the client's third step and the resets pass (the probe's
  `openvpn` nettest reads "answered, then stalled" as protocol_dpi); a DNS
  answer repeats its query's first byte, which no server reset opcode shares,
  so DNS never matches. Over TCP the engine follows only the client's stream;
  there the client reset's 16-bit length must frame exactly one packet of the
  right shape (`parse_tcp_packet`), which random or plaintext streams fail, so
  the client's first packet decides.
"""

from __future__ import annotations

from wallwatch.censor.analyzers.base import Analyzer, Direction, PropType, Update
from wallwatch.protocols.openvpn import (
    CLIENT_RESETS, HANDSHAKE_SEEN, INITIAL_KEY_ID, NOT_OPENVPN, OpenVpnMatcher, OpenVpnPacket,
)

_NOT_OPENVPN: Update = {"openvpn.handshake": False}


class OpenVpnAnalyzer(Analyzer):
    name = "openvpn"
    transports = frozenset({"udp", "tcp"})  # any port: OpenVPN runs on 443 and elsewhere (Xue et al. §2)
    provides = {"openvpn.handshake": PropType.BOOL, "openvpn.client_reset": PropType.BOOL,
                "openvpn.opcode": PropType.INT}

    def __init__(self, proto: str) -> None:
        super().__init__(proto)
        self._matcher = OpenVpnMatcher(tcp=proto == "tcp")
        self._first: OpenVpnPacket | None = None

    def feed(self, direction: Direction, data: bytes) -> tuple[Update | None, bool]:
        if not data:
            return None, False
        from_server = direction is not Direction.TO_SERVER
        if from_server and self._first is None:
            return {**_NOT_OPENVPN, "openvpn.client_reset": False, "openvpn.opcode": None}, True  # server first
        update = self._matcher.feed(data, from_server)
        if self._first is None:
            return self._on_first_packet(update.state, update.packets)
        if update.state == NOT_OPENVPN:
            return _NOT_OPENVPN, True
        if not from_server and update.state == HANDSHAKE_SEEN and update.packets:
            return {"openvpn.handshake": True}, True  # the client went on after the server's reset
        return None, False

    def _on_first_packet(self, state: str, packets: tuple[OpenVpnPacket, ...]) -> tuple[Update | None, bool]:
        if state == NOT_OPENVPN and not packets:
            return {**_NOT_OPENVPN, "openvpn.client_reset": False, "openvpn.opcode": None}, True
        if not packets:
            return None, False  # TCP: the length-prefixed packet is not whole yet
        self._first = first = packets[0]
        is_reset = first.opcode in CLIENT_RESETS and first.key_id == INITIAL_KEY_ID
        update: Update = {"openvpn.client_reset": is_reset, "openvpn.opcode": first.opcode}
        if not is_reset or state == NOT_OPENVPN:
            return {**update, **_NOT_OPENVPN}, True
        if self.proto == "tcp":
            return {**update, "openvpn.handshake": True}, True
        return update, False  # UDP: wait for the server's reset and the client's answer to it
