"""Viber analyzer: its chat hello on TCP, its call datagrams on UDP, whatever the port.

Viber frames every message with a 16-bit little-endian length and type
(`protocols.viber`). On TCP the client's first message is a 154-byte hello,
`9a 00 ?? 00` ([libprotoident]); on UDP a call opens with datagrams of the
shapes nDPI's viber.c matches (type 3 in 12 bytes, type 9 in 20, ...;
[nDPI]), here read as one framed message filling the datagram.
"""

from __future__ import annotations

from wallwatch.censor.analyzers.base import STREAM_LIMIT, Analyzer, Direction, PropType, Update
from wallwatch.protocols.errors import Incomplete, ProtocolError
from wallwatch.protocols.viber import parse_hello, parse_message

# The datagram types nDPI's viber.c knows (bytes 2-3, little-endian), with the sizes it requires (None: any).
CALL_SHAPES: dict[int, int | None] = {0x03: None, 0x09: 20, 0x01: None, 0x19: 34, 0x1B: 34}
_NOT_VIBER: Update = {"viber.hello": False, "viber.call": False, "viber.type": None}


class ViberAnalyzer(Analyzer):
    name = "viber"
    transports = frozenset({"tcp", "udp"})
    provides = {"viber.hello": PropType.BOOL, "viber.call": PropType.BOOL, "viber.type": PropType.INT}

    def __init__(self, proto: str) -> None:
        super().__init__(proto)
        self._buffer = bytearray()

    def feed(self, direction: Direction, data: bytes) -> tuple[Update | None, bool]:
        if direction is not Direction.TO_SERVER or not data:
            return None, False
        if self.proto == "udp":
            return _call_datagram(data), True
        self._buffer += data[: STREAM_LIMIT - len(self._buffer)]
        try:
            hello = parse_hello(bytes(self._buffer))
        except ProtocolError:
            return _NOT_VIBER, True
        if isinstance(hello, Incomplete):
            return None, len(self._buffer) >= STREAM_LIMIT
        return {"viber.hello": True, "viber.call": False, "viber.type": self._buffer[2]}, True


def _call_datagram(data: bytes) -> Update:
    try:
        message = parse_message(data)
    except ProtocolError:
        return _NOT_VIBER
    if isinstance(message, Incomplete) or message.length != len(data):
        return _NOT_VIBER
    if message.message_type not in CALL_SHAPES or CALL_SHAPES[message.message_type] not in (None, len(data)):
        return _NOT_VIBER
    return {"viber.hello": False, "viber.call": True, "viber.type": message.message_type}
