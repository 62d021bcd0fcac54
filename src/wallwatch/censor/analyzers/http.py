"""HTTP analyzer: method, target and Host of the first request head, on any TCP port.

`http.target` (the request target, e.g. "/search?q=...") is what keyword
filtering matches with `contains`: the GFW resets HTTP requests carrying a
keyword on any port (Rambert et al. 2021, censor-lab.md §4). `http.path` is
the same value, kept for existing policies.
"""

from __future__ import annotations

from wallwatch.censor.analyzers.base import StreamPrefixAnalyzer, Update
from wallwatch.protocols.errors import Incomplete, ProtocolError
from wallwatch.protocols.http import parse_request_head


class HttpAnalyzer(StreamPrefixAnalyzer):
    name = "http"
    provides = frozenset({"http.host", "http.method", "http.path", "http.target"})

    def parse(self, data: bytes) -> tuple[Update | None, bool]:
        try:
            head = parse_request_head(data)
        except ProtocolError:
            return None, True
        if isinstance(head, Incomplete):
            return None, False
        return {"http.host": head.host, "http.method": head.method, "http.path": head.target,
                "http.target": head.target}, True
