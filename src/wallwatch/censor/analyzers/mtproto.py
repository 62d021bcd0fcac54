"""Telegram MTProto obfuscated2 analyzer: decrypt the header's tag with the header's own key.

The 64-byte obfuscated2 header carries its AES-256-CTR key (bytes 8-40) and
IV (40-56) in clear, so an on-path observer decrypts bytes 56-60 and checks
for one of the three transport tags (core.telegram.org/mtproto/
mtproto-transports, "Transport obfuscation"; Telethon tcpobfuscated.py). A
random stream passes with probability 3 / 2**32. `protocols.mtproto.
parse_header` does the work. With an MTProxy secret the key is hashed with
the secret and this check cannot see it.
"""

from __future__ import annotations

from wallwatch.censor.analyzers.base import StreamPrefixAnalyzer, Update
from wallwatch.protocols.errors import Incomplete, ProtocolError
from wallwatch.protocols.mtproto import parse_header

# The policy vocabulary's short names for the transports.
_TAG_NAMES = {"abridged": "abridged", "intermediate": "intermediate", "padded_intermediate": "padded"}


class MtprotoAnalyzer(StreamPrefixAnalyzer):
    name = "mtproto"
    provides = frozenset({"mtproto.obfuscated2", "mtproto.tag"})

    def parse(self, data: bytes) -> tuple[Update | None, bool]:
        try:
            header = parse_header(data)
        except ProtocolError:
            return {"mtproto.obfuscated2": False, "mtproto.tag": None}, True
        if isinstance(header, Incomplete):
            return None, False
        return {"mtproto.obfuscated2": True, "mtproto.tag": _TAG_NAMES[header.transport]}, True
