"""Sans-IO wire-format codecs shared by the probe, the lab's services and the censor.

Bytes in, frozen facts out; no sockets. Every parser returns a result,
returns `Incomplete` for a valid prefix, or raises `ProtocolError`.
"""

from wallwatch.protocols.errors import Incomplete, ProtocolError

__all__ = ["Incomplete", "ProtocolError"]
