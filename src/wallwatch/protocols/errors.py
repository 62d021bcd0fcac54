"""The one error and the one "not yet" every codec in `protocols/` returns.

A parser given arbitrary bytes either returns a result, returns `Incomplete`
(the bytes are a valid prefix: the censor sees streams a packet at a time), or
raises `ProtocolError`. Nothing else escapes; the property tests hold every
codec to that.
"""

from __future__ import annotations

from dataclasses import dataclass


class ProtocolError(ValueError):
    """The bytes are not (a prefix of) the expected format."""


@dataclass(frozen=True, slots=True)
class Incomplete:
    """A valid prefix: more bytes are needed.

    `needed` is the total number of bytes the parser knows it needs, when the
    format says so (a length field was read), else None.
    """

    needed: int | None = None
