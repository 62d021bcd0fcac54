"""WeChat analyzer: an mmtls record at a TCP stream's start (WeChat's long link).

mmtls, WeChat's own TLS-like protocol, frames its records as TLS does but
with version 0xF1xx ([CitizenLab2024]; `16 f1 03` in captures,
[nDPI-fork-wechat]), so three bytes tell it from TLS (`16 03 0x`) on any
port. The long link (TCP 8080, 80, 443) opens with such a record; the short
link wraps the same records in an HTTP POST to `/mmtls/...`, which the
`http` analyzer reads (`http.path`). `protocols.mmtls` holds the codec.
"""

from __future__ import annotations

from wallwatch.censor.analyzers.base import PropType, StreamPrefixAnalyzer, Update
from wallwatch.protocols.mmtls import HANDSHAKE, Record, parse_record


class MmtlsAnalyzer(StreamPrefixAnalyzer[Record]):
    name = "mmtls"
    provides = {"mmtls.record": PropType.BOOL, "mmtls.handshake": PropType.BOOL, "mmtls.version": PropType.INT}
    parse = staticmethod(parse_record)
    not_found = {"mmtls.record": False, "mmtls.handshake": False, "mmtls.version": None}

    def properties(self, facts: Record) -> Update:
        return {"mmtls.record": True, "mmtls.handshake": facts.record_type == HANDSHAKE,
                "mmtls.version": facts.version}
