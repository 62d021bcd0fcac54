"""Analyzers: one small class per protocol, fed a flow's bytes, returning properties.

The contract every analyzer keeps is `base.py` (after OpenGFW's
`analyzer/interface.go`). This module lists the analyzers and derives, from
their declarations, the type of every property a rule may match.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

from wallwatch.censor.analyzers.base import FLOW_PROPERTIES, Analyzer, Direction, PropType, Update
from wallwatch.censor.analyzers.dns import DnsAnalyzer
from wallwatch.censor.analyzers.fet import FetAnalyzer
from wallwatch.censor.analyzers.http import HttpAnalyzer
from wallwatch.censor.analyzers.mmtls import MmtlsAnalyzer
from wallwatch.censor.analyzers.mqtt import MqttAnalyzer
from wallwatch.censor.analyzers.mtproto import MtprotoAnalyzer
from wallwatch.censor.analyzers.openvpn import OpenVpnAnalyzer
from wallwatch.censor.analyzers.quic import QuicAnalyzer
from wallwatch.censor.analyzers.stun import StunAnalyzer
from wallwatch.censor.analyzers.tls import TlsAnalyzer
from wallwatch.censor.analyzers.tor import TorAnalyzer
from wallwatch.censor.analyzers.viber import ViberAnalyzer
from wallwatch.censor.analyzers.whatsapp import WhatsAppAnalyzer
from wallwatch.censor.analyzers.wireguard import WireGuardAnalyzer

ALL_ANALYZERS: tuple[type[Analyzer], ...] = (
    DnsAnalyzer, TlsAnalyzer, HttpAnalyzer, WhatsAppAnalyzer,
    FetAnalyzer, OpenVpnAnalyzer, WireGuardAnalyzer, MtprotoAnalyzer, QuicAnalyzer, TorAnalyzer,
    StunAnalyzer, MqttAnalyzer, MmtlsAnalyzer, ViberAnalyzer,
)


def _property_types() -> Mapping[str, PropType]:
    types = dict(FLOW_PROPERTIES)
    for analyzer in ALL_ANALYZERS:
        for key, kind in analyzer.provides.items():
            if key in types:
                raise TypeError(f"{analyzer.__name__}: property {key!r} is declared twice")
            types[key] = kind
    return MappingProxyType(types)


# Every property a rule may match, with its type: the flow's own, then each analyzer's.
PROPERTY_TYPES: Mapping[str, PropType] = _property_types()

__all__ = ["ALL_ANALYZERS", "PROPERTY_TYPES", "Analyzer", "Direction", "PropType", "Update",
           "DnsAnalyzer", "FetAnalyzer", "HttpAnalyzer", "MmtlsAnalyzer", "MqttAnalyzer", "MtprotoAnalyzer", "OpenVpnAnalyzer",
           "QuicAnalyzer", "StunAnalyzer", "TlsAnalyzer", "TorAnalyzer", "ViberAnalyzer", "WhatsAppAnalyzer",
           "WireGuardAnalyzer"]
