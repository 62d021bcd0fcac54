"""STUN analyzer: a Binding request at a UDP flow's start (RFC 5389 §6: the magic cookie, the method).

Calls in WhatsApp, Messenger, Signal, Skype and FaceTime start with STUN to
a relay or peer (ICE, RFC 8445); the first client datagram of a call flow is
a Binding request whose fixed magic cookie 0x2112A442 any DPI box can match
(nDPI's stun.c, OpenGFW-style rules). `protocols.stun` holds the codec. A
flow that opens with something else is not STUN.
"""

from __future__ import annotations

from wallwatch.censor.analyzers.base import Analyzer, Direction, PropType, Update
from wallwatch.protocols.errors import ProtocolError
from wallwatch.protocols.stun import parse_stun


class StunAnalyzer(Analyzer):
    name = "stun"
    transports = frozenset({"udp"})
    provides = {"stun.binding": PropType.BOOL, "stun.method": PropType.INT}

    def feed(self, direction: Direction, data: bytes) -> tuple[Update | None, bool]:
        if direction is not Direction.TO_SERVER or not data:
            return None, False
        try:
            message = parse_stun(data)
        except ProtocolError:
            return {"stun.binding": False, "stun.method": None}, True
        return {"stun.binding": message.method == 0x001 and message.stun_class == "request",
                "stun.method": message.method}, True
