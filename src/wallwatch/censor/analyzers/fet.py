"""Fully-encrypted-traffic analyzer: the first data packet of a TCP flow against Algorithm 1.

Wu et al., "How the Great Firewall of China Detects and Blocks Fully
Encrypted Traffic", USENIX Security 2023: the GFW looks at the client's first
data packet only and exempts it if any of five rules holds (Ex1 popcount,
Ex2 six printable leading bytes, Ex3 > 50 % printable, Ex4 a printable run
> 20, Ex5 a TLS/HTTP fingerprint); what is left is suspicious. The exact
rules live in `protocols.fet.detect` (after the authors' detect.py); the
probabilistic (26 %) and residual (180 s) parts are rule options
(`probability`, `duration`), not detection.
"""

from __future__ import annotations

from wallwatch.censor.analyzers.base import Analyzer, Direction, PropType, Update
from wallwatch.protocols.errors import ProtocolError
from wallwatch.protocols.fet import detect


class FetAnalyzer(Analyzer):
    name = "fet"
    transports = frozenset({"tcp"})  # every port (paper §3: the blocking is port-agnostic)
    provides = {"fet.suspicious": PropType.BOOL, "fet.exemption": PropType.NAME}

    def feed(self, direction: Direction, data: bytes) -> tuple[Update | None, bool]:
        if direction is not Direction.TO_SERVER or not data:
            return None, False
        try:
            verdict = detect(data)
        except ProtocolError:
            return None, True
        return {"fet.suspicious": verdict.blocked_candidate, "fet.exemption": verdict.exemption}, True
