"""WhatsApp analyzer: the `ED` edge-routing prefix and `WA` header at a stream's start.

This is the chat-protocol fingerprint the GFW was reported to use in
September 2017 (censor-lab.md §4): the first bytes of every WhatsApp chat
connection are fixed, whatever port it uses.
"""

from __future__ import annotations

from wallwatch.censor.analyzers.base import StreamPrefixAnalyzer, Update
from wallwatch.protocols.errors import Incomplete, ProtocolError
from wallwatch.protocols.whatsapp import parse_stream_header


class WhatsAppAnalyzer(StreamPrefixAnalyzer):
    name = "whatsapp"
    provides = frozenset({"whatsapp.header", "whatsapp.edge_routing", "whatsapp.magic"})

    def parse(self, data: bytes) -> tuple[Update | None, bool]:
        try:
            header = parse_stream_header(data)
        except ProtocolError:
            return None, True
        if isinstance(header, Incomplete):
            return None, False
        return {
            "whatsapp.header": True,
            "whatsapp.edge_routing": header.edge_routing is not None,
            "whatsapp.magic": header.magic,
        }, True
