"""Tor analyzer: tor's link-handshake TLS ClientHello (cipher list, groups, extensions, SNI).

The GFW recognised Tor by its TLS ClientHello's cipher list as early as 2011
(Winter & Lindskog, "How the Great Firewall of China is Blocking Tor", FOCI
2012). `protocols.tor.fingerprint` compares a ClientHello with one captured
from tor 0.4.9 / OpenSSL 3.0; `tor.tls` is true when every mark matches.
"""

from __future__ import annotations

from wallwatch.censor.analyzers.base import PropType, StreamPrefixAnalyzer, Update
from wallwatch.protocols.errors import ProtocolError
from wallwatch.protocols.tor import TorFingerprint, fingerprint


class TorAnalyzer(StreamPrefixAnalyzer[TorFingerprint]):
    name = "tor"
    provides = {"tor.tls": PropType.BOOL}
    parse = staticmethod(fingerprint)
    not_found = {"tor.tls": False}
    errors = (ProtocolError, IndexError)  # IndexError: a truncated extension list in protocols.tor

    def properties(self, facts: TorFingerprint) -> Update:
        return {"tor.tls": facts.is_tor}
