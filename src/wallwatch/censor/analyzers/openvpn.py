"""OpenVPN analyzer: opcode-based fingerprint of the client's first packet, UDP and TCP.

Xue et al., "OpenVPN is Open to VPN Fingerprinting", USENIX Security 2022,
§4: every OpenVPN session opens with a client P_CONTROL_HARD_RESET_CLIENT_V1/
V2/V3 (opcode in the top 5 bits of the first byte; over TCP after a 16-bit
length), answered by a server hard reset. OpenGFW's analyzer/udp/openvpn.go
does the same for UDP and TCP. `openvpn.handshake` turns true on the client's
hard reset, so a rule can block at the first packet, before the server
answers, as a censor would. Parsing is `protocols.openvpn.OpenVpnMatcher`.
"""

from __future__ import annotations

from wallwatch.censor.analyzers.base import Analyzer, Direction, Update
from wallwatch.protocols.openvpn import CLIENT_RESETS, NOT_OPENVPN, OpenVpnMatcher


class OpenVpnAnalyzer(Analyzer):
    name = "openvpn"
    provides = frozenset({"openvpn.handshake", "openvpn.opcode"})

    def __init__(self, proto: str) -> None:
        super().__init__(proto)
        self._matcher = OpenVpnMatcher(tcp=proto == "tcp")

    @classmethod
    def applies(cls, proto: str, server_port: int) -> bool:
        return proto in ("udp", "tcp")  # any port: OpenVPN runs on 443 and elsewhere (Xue et al. §2)

    def feed(self, direction: Direction, data: bytes) -> tuple[Update | None, bool]:
        if not data:
            return None, False
        if direction is not Direction.TO_SERVER:
            return {"openvpn.handshake": False, "openvpn.opcode": None}, True  # the server spoke first
        update = self._matcher.feed(data, False)
        if update.state == NOT_OPENVPN:
            return {"openvpn.handshake": False, "openvpn.opcode": None}, True
        if not update.packets:
            return None, False  # TCP: the length-prefixed packet is not whole yet
        first = update.packets[0]
        return {"openvpn.handshake": first.opcode in CLIENT_RESETS, "openvpn.opcode": first.opcode}, True
