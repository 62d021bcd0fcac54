"""The lab's DNS resolver: the authority for every emulated name.

It answers A queries for the emulated names with their lab addresses, NODATA
for other types of those names, and NXDOMAIN for everything else -- there is
no upstream to recurse to. UDP and TCP (RFC 7766: a resolver must offer both;
a censor that injects over UDP leaves TCP answers honest, which the probe can
compare). Built on `wallwatch.protocols.dns`, the codec the probe and censor use.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Mapping

from wallwatch.protocols.dns import build_response, frame_tcp, parse_dns, unframe_tcp
from wallwatch.protocols.errors import Incomplete, ProtocolError

log = logging.getLogger(__name__)

DNS_PORT = 53
# Lab answers never change during a run; 300 s is the TTL CensorLab's forged
# answers use and a common authority default.
ANSWER_TTL = 300
TCP_IDLE_TIMEOUT = 10.0  # RFC 7766 §6.2.3 suggests seconds, not minutes, for idle TCP


def answer(query: bytes, names: Mapping[str, str]) -> bytes | None:
    """The response to `query`, or None for bytes that are not a DNS query (dropped silently)."""
    try:
        facts = parse_dns(query)
    except ProtocolError:
        return None
    if facts.is_response or facts.qname is None:
        return None
    try:
        address = names.get(facts.qname)
        if address is None:
            return build_response(query, [], rcode="NXDOMAIN")
        return build_response(query, [address], ttl=ANSWER_TTL)
    except ProtocolError:
        return None


class _UdpResolver(asyncio.DatagramProtocol):
    def __init__(self, names: Mapping[str, str]) -> None:
        self._names = names
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        response = answer(data, self._names)
        if response is not None and self._transport is not None:
            self._transport.sendto(response, addr)


async def _serve_tcp_client(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, names: Mapping[str, str]
) -> None:
    buffer = b""
    try:
        while True:
            framed = unframe_tcp(buffer)
            while isinstance(framed, Incomplete):  # read exactly what the framing says is missing
                assert framed.needed is not None
                buffer += await asyncio.wait_for(reader.readexactly(framed.needed - len(buffer)), TCP_IDLE_TIMEOUT)
                framed = unframe_tcp(buffer)
            query, used = framed
            buffer = buffer[used:]
            response = answer(query, names)
            if response is None:
                break
            writer.write(frame_tcp(response))
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError, ProtocolError):
        pass
    finally:
        writer.close()


async def start_dns(address: str, names: Mapping[str, str], port: int = DNS_PORT) -> list[object]:
    """Start UDP and TCP listeners on `address`; returns the transport and server to close."""
    loop = asyncio.get_running_loop()
    udp_transport, _ = await loop.create_datagram_endpoint(
        lambda: _UdpResolver(names), local_addr=(address, port)
    )
    tcp_server = await asyncio.start_server(
        lambda r, w: _serve_tcp_client(r, w, names), address, port
    )
    log.info("DNS resolver on %s:%d (udp, tcp) for %d names", address, port, len(names))
    return [udp_transport, tcp_server]
