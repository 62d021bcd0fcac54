"""Fully-encrypted-traffic (FET) detection, as the Great Firewall did it in 2021-2023.

Wu et al., "How the Great Firewall of China Detects and Blocks Fully Encrypted
Traffic", USENIX Security 2023 (Algorithm 1), found that the GFW does not
recognise encrypted protocols: it *exempts* traffic that looks like something
else and treats what is left as fully encrypted. The rules are applied to the
first data packet (client to server) of a TCP connection. This module follows
the authors' executable version of Algorithm 1, `artifacts/utils/detect.py` in
gfw-report/usenixsecurity23-artifact, exemption by exemption:

    Ex1  average popcount per byte <= 3.4 or >= 4.6
    Ex2  the first 6 bytes are printable (0x20-0x7e)
    Ex3  more than 50% of the bytes are printable
    Ex4  a run of more than 20 contiguous printable bytes
    Ex5  a TLS or HTTP fingerprint at the start

A packet no rule exempts is a *candidate* for blocking; the censor then
applies the probabilistic and residual parts (the constants below).
Sans-IO: bytes in, a `FetVerdict` out.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from wallwatch.protocols.errors import ProtocolError

# "printable" is 0x20-0x7e inclusive: detect.py's `ascii_set = set(range(0x20, 0x7f))`.
PRINTABLE_MIN = 0x20
PRINTABLE_MAX = 0x7E

# Ex1: random data averages 4 set bits per byte; the GFW exempts anything
# outside (3.4, 4.6) (paper §4.1, detect.py `p <= 3.4 or p >= 4.6`).
POPCOUNT_LOW = 3.4
POPCOUNT_HIGH = 4.6
# Ex2: detect.py `n >= 6` on the number of leading printable bytes (paper §4.2).
PRINTABLE_PREFIX_LEN = 6
# Ex3: detect.py `f > 0.5` (paper §4.3).
PRINTABLE_FRACTION_MAX = 0.5
# Ex4: detect.py `l > 20` (paper §4.4).
PRINTABLE_RUN_MAX = 20
# Ex5, TLS: byte 0 is 0x16 (handshake) or 0x17 (application data), byte 1 is
# 0x03. For byte 2 the paper's Algorithm 1 and detect.py's comment say
# [\x00-\x09], but detect.py's code tests `range(0x00, 0x10)` and the
# fingerprint experiment (test-protocol-fingerprints/generate_fingerprints.py)
# probed 0x00-0x0f. We follow the executable code, 0x00-0x0f: it is the oracle
# the authors compared their measurements with.
TLS_FIRST_BYTES = (0x16, 0x17)
TLS_THIRD_BYTE_MAX = 0x0F
TLS_THIRD_BYTE_MAX_PAPER = 0x09
# Ex5, HTTP: the trailing space is part of the fingerprint (detect.py).
HTTP_PREFIXES = (b"GET ", b"PUT ", b"POST ", b"HEAD ")

# --- what the censor does with a candidate (not part of detection) ---------
# The paper (abstract, §7): the GFW "strategically only monitors 26% of
# connections", and only towards IP ranges of popular data centres; a censor
# emulation blocks a candidate with this probability.
BLOCK_PROBABILITY = 0.26
# Residual blocking of the (client IP, server IP, server port) triple after a
# trigger: "up to three minutes" (artifact README.md) / "for 180 seconds"
# (artifacts/ceased-dynamic-blocking/README.md).
RESIDUAL_BLOCK_SECONDS = 180
# The GFW stopped this dynamic blocking between Tuesday 2023-03-07 (the
# authors' last positive test) and Wednesday 2023-03-15 (the AE reviewers'
# report), artifacts/ceased-dynamic-blocking/README.md. It was first seen in
# early November 2021 (paper abstract).
ACTIVE_SINCE = dt.date(2021, 11, 1)
LAST_SEEN_ACTIVE = dt.date(2023, 3, 7)
FIRST_SEEN_CEASED = dt.date(2023, 3, 15)

EX1_POPCOUNT = "ex1-popcount"
EX2_PRINTABLE_PREFIX = "ex2-printable-prefix"
EX3_PRINTABLE_FRACTION = "ex3-printable-fraction"
EX4_PRINTABLE_RUN = "ex4-printable-run"
EX5_PROTOCOL_FINGERPRINT = "ex5-protocol-fingerprint"

_PRINTABLE = bytes(range(PRINTABLE_MIN, PRINTABLE_MAX + 1))
_TO_SEPARATOR = bytes(b if PRINTABLE_MIN <= b <= PRINTABLE_MAX else 0 for b in range(256))


@dataclass(frozen=True, slots=True)
class FetVerdict:
    """The facts about one first data packet and what Algorithm 1 makes of them.

    `exemption` is the first rule (in the paper's order Ex1..Ex5) that exempts
    the packet, `exemptions` all that do; `blocked_candidate` is True when
    none does.
    """

    blocked_candidate: bool
    exemption: str | None
    exemptions: tuple[str, ...]
    popcount_avg: float
    printable_fraction: float
    printable_prefix: int
    longest_printable_run: int
    fingerprint: str | None
    length: int


def protocol_fingerprint(data: bytes) -> str | None:
    """The Ex5 fingerprint the data starts with ('tls', 'GET ', ...), or None."""
    if len(data) >= 3 and data[0] in TLS_FIRST_BYTES and data[1] == 0x03 and data[2] <= TLS_THIRD_BYTE_MAX:
        return "tls"
    for prefix in HTTP_PREFIXES:
        if data.startswith(prefix):
            return prefix.decode("ascii")
    return None


def _printable_prefix(data: bytes) -> int:
    stripped = data.lstrip(_PRINTABLE)
    return len(data) - len(stripped)


def _longest_printable_run(data: bytes) -> int:
    # Non-printable bytes become 0x00 (itself not printable), so splitting on
    # 0x00 leaves exactly the printable runs; translate and split run in C.
    return max(map(len, data.translate(_TO_SEPARATOR).split(b"\x00")))


def detect(data: bytes) -> FetVerdict:
    """Apply Algorithm 1 to the first data packet of a TCP connection.

    Raises ProtocolError on an empty payload: a bare ACK or SYN is not a data
    packet, and detect.py would divide by zero.
    """
    if not data:
        raise ProtocolError("FET detection needs the first data packet; the payload is empty")
    length = len(data)
    # One big integer's bit_count is the popcount of all bytes, in C.
    popcount_avg = int.from_bytes(data, "big").bit_count() / length
    printable_count = length - len(data.translate(None, _PRINTABLE))
    printable_fraction = printable_count / length
    prefix = _printable_prefix(data)
    run = _longest_printable_run(data)
    fingerprint = protocol_fingerprint(data)
    rules = (
        (EX1_POPCOUNT, popcount_avg <= POPCOUNT_LOW or popcount_avg >= POPCOUNT_HIGH),
        (EX2_PRINTABLE_PREFIX, prefix >= PRINTABLE_PREFIX_LEN),
        (EX3_PRINTABLE_FRACTION, printable_fraction > PRINTABLE_FRACTION_MAX),
        (EX4_PRINTABLE_RUN, run > PRINTABLE_RUN_MAX),
        (EX5_PROTOCOL_FINGERPRINT, fingerprint is not None),
    )
    exemptions = tuple(name for name, holds in rules if holds)
    return FetVerdict(
        blocked_candidate=not exemptions,
        exemption=exemptions[0] if exemptions else None,
        exemptions=exemptions,
        popcount_avg=popcount_avg,
        printable_fraction=printable_fraction,
        printable_prefix=prefix,
        longest_printable_run=run,
        fingerprint=fingerprint,
        length=length,
    )


def dynamic_blocking_active(day: dt.date) -> bool:
    """Whether the GFW's dynamic FET blocking was in force on `day`.

    The cessation happened on an unknown day in 2023-03-08..15; we take the
    first day it was seen ceased, 2023-03-15, as the end (exclusive).
    """
    return ACTIVE_SINCE <= day < FIRST_SEEN_CEASED
