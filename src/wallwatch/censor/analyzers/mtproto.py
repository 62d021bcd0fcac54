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

from wallwatch.censor.analyzers.base import PropType, StreamPrefixAnalyzer, Update
from wallwatch.protocols.mtproto import Obfuscated2Header, parse_header

# The policy vocabulary's short names for the transports.
_TAG_NAMES = {"abridged": "abridged", "intermediate": "intermediate", "padded_intermediate": "padded"}


class MtprotoAnalyzer(StreamPrefixAnalyzer[Obfuscated2Header]):
    name = "mtproto"
    provides = {"mtproto.obfuscated2": PropType.BOOL, "mtproto.tag": PropType.NAME}
    parse = staticmethod(parse_header)
    not_found = {"mtproto.obfuscated2": False, "mtproto.tag": None}

    def properties(self, facts: Obfuscated2Header) -> Update:
        return {"mtproto.obfuscated2": True, "mtproto.tag": _TAG_NAMES[facts.transport]}
