"""WhatsApp analyzer: the `ED` edge-routing prefix and `WA` header at a stream's start.

This is the chat-protocol fingerprint the GFW was reported to use in
September 2017 ([NYT2017]; the opening bytes: [whatsmeow], [Baileys]): the first bytes of every WhatsApp chat
connection are fixed, whatever port it uses.
"""

from __future__ import annotations

from wallwatch.censor.analyzers.base import PropType, StreamPrefixAnalyzer, Update
from wallwatch.protocols.whatsapp import StreamHeader, parse_stream_header


class WhatsAppAnalyzer(StreamPrefixAnalyzer[StreamHeader]):
    name = "whatsapp"
    provides = {"whatsapp.header": PropType.BOOL, "whatsapp.edge_routing": PropType.BOOL,
                "whatsapp.magic": PropType.INT}
    parse = staticmethod(parse_stream_header)

    def properties(self, facts: StreamHeader) -> Update:
        return {
            "whatsapp.header": True,
            "whatsapp.edge_routing": facts.edge_routing is not None,
            "whatsapp.magic": facts.magic,
        }
