"""TLS analyzer: SNI and ALPN of the ClientHello, on any TCP port."""

from __future__ import annotations

from wallwatch.censor.analyzers.base import StreamPrefixAnalyzer, Update
from wallwatch.protocols.errors import Incomplete, ProtocolError
from wallwatch.protocols.tls import parse_client_hello


class TlsAnalyzer(StreamPrefixAnalyzer):
    name = "tls"
    provides = frozenset({"tls.sni", "tls.alpn"})

    def parse(self, data: bytes) -> tuple[Update | None, bool]:
        try:
            hello = parse_client_hello(data)
        except ProtocolError:
            return None, True
        if isinstance(hello, Incomplete):
            return None, False
        return {"tls.sni": hello.sni, "tls.alpn": hello.alpn}, True
