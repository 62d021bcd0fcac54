"""HTTP analyzer: method, path and Host of the first request head, on any TCP port."""

from __future__ import annotations

from wallwatch.censor.analyzers.base import StreamPrefixAnalyzer, Update
from wallwatch.protocols.errors import Incomplete, ProtocolError
from wallwatch.protocols.http import parse_request_head


class HttpAnalyzer(StreamPrefixAnalyzer):
    name = "http"
    provides = frozenset({"http.host", "http.method", "http.path"})

    def parse(self, data: bytes) -> tuple[Update | None, bool]:
        try:
            head = parse_request_head(data)
        except ProtocolError:
            return None, True
        if isinstance(head, Incomplete):
            return None, False
        return {"http.host": head.host, "http.method": head.method, "http.path": head.target}, True
