"""The analyzer contract, whole: what an analyzer declares, what it is fed, what it returns.

Modelled on OpenGFW's `analyzer/interface.go`: an analyzer has a name, says
which flows it watches, and is fed a flow's bytes one direction at a time;
`feed(direction, data)` returns `(property updates or None, done)`. What is
new here is that each analyzer *declares* the properties it may emit with
their types (`provides`), so the policy knows every key a rule may match and
how its values compare without a second list, and the engine knows which
analyzers a policy needs. An analyzer that sees bytes that are not its
protocol says done (with its "not found" properties, or none); the engine
catches any exception an analyzer raises, counts it and treats the analyzer
as done, so a bug in one protocol never takes the censor down.
"""

from __future__ import annotations

import enum
from types import MappingProxyType
from typing import Callable, ClassVar, Generic, Mapping, TypeVar

from wallwatch.protocols.errors import Incomplete, ProtocolError
from wallwatch.protocols.quic import gfw_inspects_ports

# Property updates: key -> value (None = known to be absent, e.g. no SNI; a
# tuple = several values, any of which a rule may match, e.g. ALPN).
Update = Mapping[str, object]

# How much of a client stream an analyzer may buffer before giving up.
# OpenGFW's fet looks at the first 8,192 bytes [OpenGFW]; a
# ClientHello with post-quantum key shares is ~1.8 KiB, well inside.
STREAM_LIMIT = 8192


class PropType(enum.StrEnum):
    """What a property is, which decides how a rule's values compare with it."""

    NAME = "name"  # DNS-ish names and tokens, compared case-insensitively
    TEXT = "text"  # case-sensitive strings (URL paths)
    IP = "ip"
    INT = "int"
    BOOL = "bool"


class Direction(enum.IntEnum):
    TO_SERVER = 0  # client (the flow's initiator) -> server
    TO_CLIENT = 1


# What every flow carries from its first packet, before any analyzer runs
# (OpenGFW's built-in proto/ip/port properties).
ADDRESS_PROPERTIES: Mapping[str, PropType] = MappingProxyType({
    "proto": PropType.NAME,
    "ip.src": PropType.IP, "ip.dst": PropType.IP,
    "port.src": PropType.INT, "port.dst": PropType.INT,
})
FLOW_PROPERTIES: Mapping[str, PropType] = MappingProxyType({
    **ADDRESS_PROPERTIES,
    # The GFW inspects QUIC only when the source port is above the destination
    # port (protocols.quic.gfw_inspects_ports; usenixsecurity25-quic-sni artifact).
    "quic.src_port_gt_dst": PropType.BOOL,
})


def flow_properties(proto: str, client: tuple[str, int], server: tuple[str, int]) -> dict[str, object]:
    """The values of FLOW_PROPERTIES for a flow from `client` to `server`."""
    return {
        "proto": proto, "ip.src": client[0], "ip.dst": server[0], "port.src": client[1], "port.dst": server[1],
        "quic.src_port_gt_dst": gfw_inspects_ports(client[1], server[1]),
    }


class Analyzer:
    """One protocol's fingerprinting for one flow.

    A subclass declares `name`, `transports` ("tcp", "udp"), `ports` (server
    ports, or None for every port) and `provides` (each property key it may
    emit, named `<name>.<what>`, with its type), and implements `feed`.
    """

    name: ClassVar[str] = ""
    transports: ClassVar[frozenset[str]] = frozenset()
    ports: ClassVar[frozenset[int] | None] = None
    provides: ClassVar[Mapping[str, PropType]] = MappingProxyType({})

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "provides" not in cls.__dict__:
            return  # a partial base (StreamPrefixAnalyzer), not an analyzer
        if not cls.name or not cls.transports <= {"tcp", "udp"} or not cls.transports:
            raise TypeError(f"{cls.__name__}: an analyzer declares a name and its transports (tcp, udp)")
        for key, kind in cls.provides.items():
            if not key.startswith(f"{cls.name}.") or not isinstance(kind, PropType):
                raise TypeError(f"{cls.__name__}: property {key!r} must be '{cls.name}.<what>' with a PropType")
        cls.provides = MappingProxyType(dict(cls.provides))  # closed: read-only once declared

    def __init__(self, proto: str) -> None:
        self.proto = proto

    @classmethod
    def applies(cls, proto: str, server_port: int) -> bool:
        """Whether a flow is worth watching (asked once per flow, on its first packet)."""
        return proto in cls.transports and (cls.ports is None or server_port in cls.ports)

    @property
    def revises(self) -> bool:
        """Whether a later packet may replace properties this analyzer already gave
        (each query on a UDP DNS flow is a new one). While such an analyzer is live,
        a flow that no rule matches stays undecided instead of being allowed for good."""
        return False

    def feed(self, direction: Direction, data: bytes) -> tuple[Update | None, bool]:
        raise NotImplementedError


Facts = TypeVar("Facts")


class StreamPrefixAnalyzer(Analyzer, Generic[Facts]):
    """Buffers the client->server stream and parses its prefix with a codec until it decides.

    A subclass gives `parse` (a `protocols` parser: facts, `Incomplete`, or an
    error from `errors`), `properties` (facts -> update) and `not_found` (the
    update for a stream that is not its protocol).
    """

    # The GFW inspects SNI and HTTP on every TCP port [Rambert2021].
    transports = frozenset({"tcp"})
    not_found: ClassVar[Update | None] = None
    errors: ClassVar[tuple[type[Exception], ...]] = (ProtocolError,)
    parse: Callable[[bytes], Facts | Incomplete]  # a staticmethod: the codec

    def __init__(self, proto: str = "tcp") -> None:
        super().__init__(proto)
        self._buffer = bytearray()

    def feed(self, direction: Direction, data: bytes) -> tuple[Update | None, bool]:
        if direction is not Direction.TO_SERVER or not data:
            return None, False
        self._buffer += data
        if len(self._buffer) > STREAM_LIMIT:
            del self._buffer[STREAM_LIMIT:]
            update, _ = self._decide(bytes(self._buffer))
            return update, True
        return self._decide(bytes(self._buffer))

    def _decide(self, data: bytes) -> tuple[Update | None, bool]:
        try:
            facts = self.parse(data)
        except self.errors:
            return self.not_found, True
        if isinstance(facts, Incomplete):
            return None, False
        return self.properties(facts), True

    def properties(self, facts: Facts) -> Update:
        raise NotImplementedError
