"""WireGuard analyzer: handshake messages by type, exact size and zero reserved bytes (UDP).

Donenfeld, "WireGuard: Next Generation Kernel Network Tunnel", NDSS 2017,
§5.4: an initiation is type 1 and exactly 148 bytes, a response type 2 and
92 bytes, and bytes 1-3 of every message are reserved zeros. OpenGFW's
analyzer/udp/wireguard.go fingerprints the same way; `protocols.wireguard`
holds the codec. A right-sized packet with non-zero reserved bytes is not
WireGuard. The first client datagram decides whether the flow is watched:
a flow that opens with something else is not WireGuard.
"""

from __future__ import annotations

from wallwatch.censor.analyzers.base import Analyzer, Direction, PropType, Update
from wallwatch.protocols.wireguard import HANDSHAKE_INITIATION, HANDSHAKE_RESPONSE, WireGuardMatcher

# Transport messages before a handshake shows (a flow picked up mid-session):
# OpenGFW gives up after 4 invalid packets; we look at this many valid ones.
MAX_PACKETS_WITHOUT_HANDSHAKE = 4
_HANDSHAKES = frozenset({HANDSHAKE_INITIATION, HANDSHAKE_RESPONSE})


class WireGuardAnalyzer(Analyzer):
    name = "wireguard"
    transports = frozenset({"udp"})
    provides = {"wireguard.handshake": PropType.BOOL, "wireguard.message_type": PropType.INT}

    def __init__(self, proto: str) -> None:
        super().__init__(proto)
        self._matcher = WireGuardMatcher()
        self._seen = 0

    def feed(self, direction: Direction, data: bytes) -> tuple[Update | None, bool]:
        if not data:
            return None, False
        observation = self._matcher.feed(data, direction is Direction.TO_CLIENT)
        self._seen += 1
        if observation is None:
            return {"wireguard.handshake": False, "wireguard.message_type": None}, True
        message_type = observation.message.message_type
        if message_type in _HANDSHAKES:
            return {"wireguard.handshake": True, "wireguard.message_type": message_type}, True
        done = self._seen >= MAX_PACKETS_WITHOUT_HANDSHAKE
        return ({"wireguard.handshake": False} if done else {}) | {"wireguard.message_type": message_type}, done
