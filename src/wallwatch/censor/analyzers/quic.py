"""QUIC analyzer: the SNI of a QUIC v1 client Initial, decrypted with keys from its DCID.

RFC 9001 §5.2 derives Initial keys from the Destination Connection ID, so a
censor reads the ClientHello; the GFW does since 2024 (Zohaib et al.,
"Exposing and Circumventing SNI-based QUIC Censorship of the Great Firewall
of China", USENIX Security 2025). The GFW inspects only the *first* packet
of a flow: a non-QUIC datagram sent first exempts it (artifact,
experiments/flow-tracking-time), so a flow that does not open with an
Initial is done at once. Its port rule (src port > dst port) is the flow
property `quic.src_port_gt_dst`, set by the engine. Decryption:
`protocols.quic.ClientHelloAssembler` (a ClientHello may span datagrams).
"""

from __future__ import annotations

from wallwatch.censor.analyzers.base import Analyzer, Direction, PropType, Update
from wallwatch.protocols.errors import Incomplete, ProtocolError
from wallwatch.protocols.quic import ClientHelloAssembler

# Post-quantum ClientHellos span 2 datagrams; 4 bounds the decryption work.
MAX_INITIAL_DATAGRAMS = 4
_NOT_QUIC: Update = {"quic.sni": None, "quic.version": None}


class QuicAnalyzer(Analyzer):
    name = "quic"
    transports = frozenset({"udp"})
    provides = {"quic.sni": PropType.NAME, "quic.version": PropType.INT}

    def __init__(self, proto: str) -> None:
        super().__init__(proto)
        self._assembler = ClientHelloAssembler()
        self._datagrams = 0

    def feed(self, direction: Direction, data: bytes) -> tuple[Update | None, bool]:
        if not data:
            return None, False
        if direction is not Direction.TO_SERVER:
            return _NOT_QUIC, True  # the server spoke first: not a client Initial
        if self._datagrams == 0 and not data[0] & 0x80:
            return _NOT_QUIC, True  # short header or anything else: cheap exit before any crypto
        self._datagrams += 1
        try:
            hello = self._assembler.feed(data)
        except ProtocolError:
            return _NOT_QUIC, True
        if isinstance(hello, Incomplete):
            return None, self._datagrams >= MAX_INITIAL_DATAGRAMS
        return {"quic.sni": hello.sni, "quic.version": hello.version}, True
