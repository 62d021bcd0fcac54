"""HTTP analyzer: method, target and Host of the first request head, on any TCP port.

`http.target` (the request target, e.g. "/search?q=...") is what keyword
filtering matches with `contains`: the GFW resets HTTP requests carrying a
keyword on any port [Rambert2021]. `http.path` is
the same value, kept for existing policies.
"""

from __future__ import annotations

from wallwatch.censor.analyzers.base import PropType, StreamPrefixAnalyzer, Update
from wallwatch.protocols.http import RequestHead, parse_request_head


class HttpAnalyzer(StreamPrefixAnalyzer[RequestHead]):
    name = "http"
    provides = {"http.host": PropType.NAME, "http.method": PropType.NAME, "http.path": PropType.TEXT,
                "http.target": PropType.TEXT}
    parse = staticmethod(parse_request_head)

    def properties(self, facts: RequestHead) -> Update:
        return {"http.host": facts.host, "http.method": facts.method, "http.path": facts.target,
                "http.target": facts.target}
