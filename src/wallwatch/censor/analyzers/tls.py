"""TLS analyzer: SNI and ALPN of the ClientHello, on any TCP port."""

from __future__ import annotations

from wallwatch.censor.analyzers.base import PropType, StreamPrefixAnalyzer, Update
from wallwatch.protocols.tls import ClientHello, parse_client_hello


class TlsAnalyzer(StreamPrefixAnalyzer[ClientHello]):
    name = "tls"
    provides = {"tls.sni": PropType.NAME, "tls.alpn": PropType.NAME}
    parse = staticmethod(parse_client_hello)

    def properties(self, facts: ClientHello) -> Update:
        return {"tls.sni": facts.sni, "tls.alpn": facts.alpn}
