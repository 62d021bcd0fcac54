"""DNS messages, as facts.

dnspython's wire codec does the work (RFC 1035 name compression, EDNS, every
record type); this module only turns its objects into small frozen facts and
back, and folds dnspython's many exceptions into `ProtocolError`, so the probe,
the lab's DNS server and the censor's analyzer and injector share one codec.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass
from typing import Sequence

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from wallwatch.protocols.errors import Incomplete, ProtocolError

# DNS over TCP: each message follows a two-byte big-endian length (RFC 1035
# §4.2.2), so 65,535 bytes is the most one can carry.
TCP_LENGTH_SIZE = 2
MAX_TCP_MESSAGE = 0xFFFF
# The fixed header every DNS message starts with (RFC 1035 §4.1.1).
HEADER_SIZE = 12


@dataclass(frozen=True, slots=True)
class DnsAnswer:
    name: str
    rtype: str
    ttl: int
    value: str


@dataclass(frozen=True, slots=True)
class DnsFacts:
    id: int
    is_response: bool
    qname: str | None
    qtype: str | None
    rcode: str
    answers: tuple[DnsAnswer, ...]

    @property
    def addresses(self) -> tuple[str, ...]:
        """The A and AAAA values of the answer section, in order."""
        return tuple(a.value for a in self.answers if a.rtype in ("A", "AAAA"))


def _name_text(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()


def parse_dns(data: bytes) -> DnsFacts:
    """Parse one DNS message (the UDP payload, or a TCP message without its length prefix)."""
    try:
        message = dns.message.from_wire(data, ignore_trailing=True)
    except (dns.exception.DNSException, ValueError, IndexError, UnicodeError, TypeError) as exc:
        raise ProtocolError(f"not a DNS message: {exc.__class__.__name__}: {exc}") from None
    question = message.question[0] if message.question else None
    answers = tuple(
        DnsAnswer(_name_text(rrset.name), dns.rdatatype.to_text(rrset.rdtype), rrset.ttl, rdata.to_text())
        for rrset in message.answer
        for rdata in rrset
    )
    return DnsFacts(
        id=message.id,
        is_response=bool(message.flags & dns.flags.QR),
        qname=_name_text(question.name) if question is not None else None,
        qtype=dns.rdatatype.to_text(question.rdtype) if question is not None else None,
        rcode=dns.rcode.to_text(message.rcode()),
        answers=answers,
    )


def frame_tcp(message: bytes) -> bytes:
    """`message` as it goes over TCP: behind its two-byte length (RFC 1035 §4.2.2)."""
    if len(message) > MAX_TCP_MESSAGE:
        raise ProtocolError(f"a DNS message of {len(message)} bytes does not fit TCP's 16-bit length")
    return len(message).to_bytes(TCP_LENGTH_SIZE, "big") + message


def unframe_tcp(data: bytes, *, max_length: int = MAX_TCP_MESSAGE) -> tuple[bytes, int] | Incomplete:
    """The first message of a DNS-over-TCP stream and the bytes it used (RFC 1035 §4.2.2).

    Incomplete(needed) until the length and then the whole message are there;
    ProtocolError for a length shorter than a DNS header or above `max_length`
    (a reader that buffers less than 64 KiB says so).
    """
    if len(data) < TCP_LENGTH_SIZE:
        return Incomplete(TCP_LENGTH_SIZE)
    length = int.from_bytes(data[:TCP_LENGTH_SIZE], "big")
    if length < HEADER_SIZE or length > max_length:
        raise ProtocolError(f"a DNS-over-TCP length of {length} is outside {HEADER_SIZE}..{max_length}")
    end = TCP_LENGTH_SIZE + length
    if len(data) < end:
        return Incomplete(end)
    return bytes(data[TCP_LENGTH_SIZE:end]), end


def build_query(qname: str, qtype: str = "A", *, query_id: int | None = None) -> bytes:
    """A recursive query, as a stub resolver sends it (RD set, RFC 1035 §4.1.1)."""
    try:
        message = dns.message.make_query(qname, qtype)
    except (dns.exception.DNSException, ValueError) as exc:
        raise ProtocolError(f"cannot build a query for {qname!r}/{qtype}: {exc}") from None
    message.id = random.getrandbits(16) if query_id is None else query_id
    return message.to_wire()


def build_response(
    query: bytes, addresses: Sequence[str], *, ttl: int = 60, rcode: str = "NOERROR"
) -> bytes:
    """Answer `query` with A/AAAA records for its question name.

    Used by the lab's resolver for honest answers and by the censor for forged
    ones; addresses of the other family than the question asks are left out,
    as a real authority would.
    """
    try:
        request = dns.message.from_wire(query, ignore_trailing=True)
    except (dns.exception.DNSException, ValueError, IndexError, UnicodeError, TypeError) as exc:
        raise ProtocolError(f"not a DNS query: {exc}") from None
    if not request.question:
        raise ProtocolError("DNS query has no question")
    response = dns.message.make_response(request)
    response.flags |= dns.flags.RA
    response.set_rcode(dns.rcode.from_text(rcode))
    question = request.question[0]
    wanted = {dns.rdatatype.A: 4, dns.rdatatype.AAAA: 6}.get(question.rdtype)
    matching = [a for a in addresses if ipaddress.ip_address(a).version == wanted]
    if matching and rcode == "NOERROR":
        rrset = dns.rrset.from_text_list(question.name, ttl, dns.rdataclass.IN, question.rdtype, matching)
        response.answer.append(rrset)
    return response.to_wire()
