"""The analyzer interface shared by every protocol analyzer."""

from __future__ import annotations

import enum
from typing import ClassVar, Mapping

# Property updates: key -> value (None = known to be absent, e.g. no SNI).
Update = Mapping[str, object]

# How much of a client stream an analyzer may buffer before giving up.
# OpenGFW's fet looks at the first 8,192 bytes (censor-lab.md §1); a
# ClientHello with post-quantum key shares is ~1.8 KiB, well inside.
STREAM_LIMIT = 8192


class Direction(enum.IntEnum):
    TO_SERVER = 0  # client (the flow's initiator) -> server
    TO_CLIENT = 1


class Analyzer:
    """One protocol's fingerprinting for one flow.

    Subclasses set `name` and `provides` (the property keys they may emit) and
    implement `applies` (cheap port/proto test, done once per flow) and `feed`.
    """

    name: ClassVar[str] = ""
    provides: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, proto: str) -> None:
        self.proto = proto

    @classmethod
    def applies(cls, proto: str, server_port: int) -> bool:
        raise NotImplementedError

    def feed(self, direction: Direction, data: bytes) -> tuple[Update | None, bool]:
        raise NotImplementedError


class StreamPrefixAnalyzer(Analyzer):
    """Buffers the client->server stream and parses its prefix until it decides."""

    def __init__(self, proto: str = "tcp") -> None:
        super().__init__(proto)
        self._buffer = bytearray()

    @classmethod
    def applies(cls, proto: str, server_port: int) -> bool:
        # The GFW inspects SNI and HTTP on every TCP port (Rambert 2021, censor-lab.md §4).
        return proto == "tcp"

    def feed(self, direction: Direction, data: bytes) -> tuple[Update | None, bool]:
        if direction is not Direction.TO_SERVER or not data:
            return None, False
        self._buffer += data
        if len(self._buffer) > STREAM_LIMIT:
            del self._buffer[STREAM_LIMIT:]
            update, done = self.parse(bytes(self._buffer))
            return update, True
        return self.parse(bytes(self._buffer))

    def parse(self, data: bytes) -> tuple[Update | None, bool]:
        raise NotImplementedError
