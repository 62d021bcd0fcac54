"""First data packets built to pass exactly one exemption of Wu et al. 2023 (or none).

Each is built from byte values chosen by their bits, not by running the
detector: `RANDOMISH` bytes have exactly 4 set bits (the popcount of random
data, so Ex1 does not apply) and are all outside 0x20-0x7e (so Ex2-Ex4 do
not), and its first byte is no TLS/HTTP fingerprint (Ex5). Printable filler
uses letters with 4 set bits too ('c' 0x63, 'e' 0x65, 'f' 0x66, 'i' 0x69),
so adding it never moves the popcount.
"""

from __future__ import annotations

from itertools import cycle, islice

LENGTH = 200
_FOUR_BITS_UNPRINTABLE = bytes([0x87, 0x8B, 0x8D, 0x8E, 0x93, 0x95, 0x96, 0x99, 0x9A, 0x9C])
_FOUR_BITS_PRINTABLE = b"cefi"


def _fill(pattern: bytes, length: int = LENGTH) -> bytes:
    return bytes(islice(cycle(pattern), length))


RANDOMISH = _fill(_FOUR_BITS_UNPRINTABLE)

# name -> (payload, the exemption the paper's rules give, or None = suspicious)
CASES: dict[str, tuple[bytes, str | None]] = {
    "random-looking": (RANDOMISH, None),
    "low-popcount": (_fill(bytes([0x81, 0x82, 0x84, 0x88, 0x90, 0x03, 0x05])), "ex1-popcount"),
    "high-popcount": (_fill(bytes([0xF7, 0xFB, 0xFD, 0xFE, 0xEF, 0xDF])), "ex1-popcount"),
    "six-printable-first": (b"cefice" + RANDOMISH[6:], "ex2-printable-prefix"),
    "five-printable-first": (b"cefic" + RANDOMISH[5:], None),
    "two-thirds-printable": (_fill(bytes([0x87]) + b"ce" + bytes([0x8B]) + b"fi"), "ex3-printable-fraction"),
    "half-printable": (_fill(bytes([0x87]) + b"c" + bytes([0x8B]) + b"e"), None),
    "21-printable-run": (RANDOMISH[:60] + b"cefi" * 5 + b"c" + RANDOMISH[81:], "ex4-printable-run"),
    "20-printable-run": (RANDOMISH[:60] + b"cefi" * 5 + RANDOMISH[80:], None),
    "tls-record-then-random": (b"\x16\x03\x01" + RANDOMISH[3:], "ex5-protocol-fingerprint"),
    "http-get-then-random": (b"GET " + RANDOMISH[4:], "ex5-protocol-fingerprint"),
}
