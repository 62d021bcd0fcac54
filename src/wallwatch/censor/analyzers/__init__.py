"""Analyzers: one small class per protocol, fed a flow's bytes, returning properties.

The interface is OpenGFW's (`analyzer/interface.go`): `feed(direction, data)`
returns `(property updates or None, done)`. An analyzer that sees bytes that
are not its protocol says done with no properties; the engine catches any
exception an analyzer raises, counts it and treats the analyzer as done, so a
bug in one protocol never takes the censor down.
"""

from __future__ import annotations

from wallwatch.censor.analyzers.base import Analyzer, Direction, Update
from wallwatch.censor.analyzers.dns import DnsAnalyzer
from wallwatch.censor.analyzers.fet import FetAnalyzer
from wallwatch.censor.analyzers.http import HttpAnalyzer
from wallwatch.censor.analyzers.mtproto import MtprotoAnalyzer
from wallwatch.censor.analyzers.openvpn import OpenVpnAnalyzer
from wallwatch.censor.analyzers.quic import QuicAnalyzer
from wallwatch.censor.analyzers.tls import TlsAnalyzer
from wallwatch.censor.analyzers.tor import TorAnalyzer
from wallwatch.censor.analyzers.whatsapp import WhatsAppAnalyzer
from wallwatch.censor.analyzers.wireguard import WireGuardAnalyzer

ALL_ANALYZERS: tuple[type[Analyzer], ...] = (
    DnsAnalyzer, TlsAnalyzer, HttpAnalyzer, WhatsAppAnalyzer,
    FetAnalyzer, OpenVpnAnalyzer, WireGuardAnalyzer, MtprotoAnalyzer, QuicAnalyzer, TorAnalyzer,
)

# Which analyzer provides each property; the policy loader and the rule
# evaluator use it to know when a property will never arrive.
PROVIDERS: dict[str, tuple[type[Analyzer], ...]] = {}
for _analyzer in ALL_ANALYZERS:
    for _key in _analyzer.provides:
        PROVIDERS.setdefault(_key, ())
        PROVIDERS[_key] += (_analyzer,)

__all__ = ["ALL_ANALYZERS", "PROVIDERS", "Analyzer", "Direction", "Update",
           "DnsAnalyzer", "FetAnalyzer", "HttpAnalyzer", "MtprotoAnalyzer", "OpenVpnAnalyzer", "QuicAnalyzer",
           "TlsAnalyzer", "TorAnalyzer", "WhatsAppAnalyzer", "WireGuardAnalyzer"]
