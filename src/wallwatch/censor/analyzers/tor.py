"""Tor analyzer: tor's link-handshake TLS ClientHello (cipher list, groups, extensions, SNI).

The GFW recognised Tor by its TLS ClientHello's cipher list as early as 2011
(Winter & Lindskog, "How the Great Firewall of China is Blocking Tor", FOCI
2012). `protocols.tor.fingerprint` compares a ClientHello with one captured
from tor 0.4.9 / OpenSSL 3.0; `tor.tls` is true when every mark matches.
"""

from __future__ import annotations

from wallwatch.censor.analyzers.base import StreamPrefixAnalyzer, Update
from wallwatch.protocols.errors import Incomplete, ProtocolError
from wallwatch.protocols.tor import fingerprint


class TorAnalyzer(StreamPrefixAnalyzer):
    name = "tor"
    provides = frozenset({"tor.tls"})

    def parse(self, data: bytes) -> tuple[Update | None, bool]:
        try:
            found = fingerprint(data)
        except (ProtocolError, IndexError):  # IndexError: a truncated extension list in protocols.tor
            return {"tor.tls": False}, True
        if isinstance(found, Incomplete):
            return None, False
        return {"tor.tls": found.is_tor}, True
