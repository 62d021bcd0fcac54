"""DNS analyzer: query name and type, over UDP 53 and TCP 53.

Over UDP every client datagram is a new query, so the analyzer keeps
watching (the GFW injects per query, [GFWatch2021], [Triplet2020]) and each query
replaces the flow's `dns.*` properties; it gives up after
`MAX_UDP_QUERIES` so a long-lived flow stops costing Python time. Over TCP
it reads the first length-prefixed message (RFC 1035 §4.2.2) and is done.
"""

from __future__ import annotations

from wallwatch.censor.analyzers.base import Analyzer, Direction, PropType, Update
from wallwatch.protocols.dns import parse_dns, unframe_tcp
from wallwatch.protocols.errors import Incomplete, ProtocolError

DNS_PORT = 53
# A stub resolver sends a handful of queries per socket (A, AAAA, retries).
MAX_UDP_QUERIES = 16
# A query is a few dozen bytes; no need to buffer up to the 64 KiB the framing allows.
_TCP_MESSAGE_LIMIT = 4096


class DnsAnalyzer(Analyzer):
    name = "dns"
    transports = frozenset({"udp", "tcp"})
    ports = frozenset({DNS_PORT})
    provides = {"dns.qname": PropType.NAME, "dns.qtype": PropType.NAME}

    def __init__(self, proto: str = "udp") -> None:
        super().__init__(proto)
        self._tcp = proto == "tcp"
        self._buffer = bytearray()
        self._queries = 0

    @property
    def revises(self) -> bool:
        return not self._tcp  # every datagram is a new query

    def feed(self, direction: Direction, data: bytes) -> tuple[Update | None, bool]:
        if direction is not Direction.TO_SERVER or not data:
            return None, False
        if self._tcp:
            return self._feed_tcp(data)
        return self._query(data, done_after=self._queries + 1 >= MAX_UDP_QUERIES)

    def _feed_tcp(self, data: bytes) -> tuple[Update | None, bool]:
        self._buffer += data
        try:
            framed = unframe_tcp(bytes(self._buffer), max_length=_TCP_MESSAGE_LIMIT)
        except ProtocolError:
            return None, True
        if isinstance(framed, Incomplete):
            return None, False
        return self._query(framed[0], done_after=True)

    def _query(self, message: bytes, *, done_after: bool) -> tuple[Update | None, bool]:
        self._queries += 1
        try:
            facts = parse_dns(message)
        except ProtocolError:
            return None, True
        if facts.is_response or facts.qname is None:
            return None, True
        return {"dns.qname": facts.qname, "dns.qtype": facts.qtype}, done_after
