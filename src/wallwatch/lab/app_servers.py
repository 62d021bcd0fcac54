"""The emulated messaging servers that speak an app's own protocol (not HTTPS): one coroutine per connection.

Each answers the real protocol's first exchange with the codec the probe and
the censor use (`wallwatch.protocols`), so the probe proves the service by
its own protocol, and a censor sees the real opening bytes:

* `serve_mtproto_dc`: a Telegram data centre. obfuscated2 transport, the
  client's req_pq_multi answered with resPQ echoing its nonce
  (core.telegram.org/mtproto/auth_key, step 1);
* `serve_mqtt`: Messenger's chat edge. MQTT CONNECT answered with CONNACK
  ([MQTT311] §3.1, §3.2); the TLS around it is the listener's;
* `serve_mmtls_long_link`, `short_link_handler`: WeChat's long link (an mmtls
  ClientHello record on the stream, answered by a ServerHello record echoing
  the client random) and short link (the same records as the body of an HTTP
  POST to `/mmtls/<hex>`), [CitizenLab2024];
* `serve_viber_chat`, `ViberRelay`: Viber's 154-byte chat hello answered by
  its 24-byte ack echoing the nonce; a call ping (type 3) answered by a pong
  (type 9) echoing the call id ([libprotoident], [nDPI]);
* `serve_apns_courier`: Apple's push courier, connect answered by connect
  response with status ok ([pypush]); the TLS (ALPN apns-security-v3) is the
  listener's.

Anything that is not the protocol is closed with a FIN after draining (so a
control payload sees a clean close, as at a real server), never reset.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Callable

from wallwatch.lab.https_server import NOT_FOUND, Request, Response
from wallwatch.protocols import apns, mmtls, viber
from wallwatch.protocols.errors import Incomplete, ProtocolError
from wallwatch.protocols.stun import build_binding_response, parse_stun

log = logging.getLogger(__name__)

IDLE_TIMEOUT = 30.0  # a client that says nothing for this long is gone
CLOSE_DRAIN_TIMEOUT = 1.0  # how long to read the peer's leftovers before closing
MAX_OPENING = 64 * 1024  # bytes buffered before an opening must have parsed
# resPQ's pq and key fingerprint are the DC's; these are the example values of the MTProto
# documentation's worked key exchange (core.telegram.org/mtproto/samples-auth_key).
SAMPLE_PQ = bytes.fromhex("17ED48941A08F981")
SAMPLE_FINGERPRINT = -0x3F2C8D14C1C3B2E5  # an int64 as TL carries it; only its presence matters here


async def close_cleanly(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """FIN, not RST: closing with unread bytes makes Linux reset (RFC 1122 §4.2.2.13), so read them first."""
    try:
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(CLOSE_DRAIN_TIMEOUT):
            while await reader.read(65536):
                pass
    except (TimeoutError, ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def _read_more(reader: asyncio.StreamReader, buffer: bytes) -> bytes:
    chunk = await asyncio.wait_for(reader.read(65536), IDLE_TIMEOUT)
    if not chunk:
        raise ConnectionResetError("the client closed")
    if len(buffer) + len(chunk) > MAX_OPENING:
        raise ProtocolError("opening too long")
    return buffer + chunk


async def serve_mtproto_dc(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One obfuscated2 connection: answer each req_pq_multi with resPQ, until the client leaves."""
    from wallwatch.protocols import mtproto

    try:
        buffer = b""
        while len(buffer) < mtproto.HEADER_SIZE:
            buffer = await _read_more(reader, buffer)
        session = mtproto.server(buffer[: mtproto.HEADER_SIZE])
        plain = session.receive.apply(buffer[mtproto.HEADER_SIZE:])
        tag = session.header.tag
        while True:
            framed = mtproto.unframe(tag, plain)
            if isinstance(framed, Incomplete):
                chunk = await asyncio.wait_for(reader.read(65536), IDLE_TIMEOUT)
                if not chunk:
                    break
                plain += session.receive.apply(chunk)
                continue
            packet, used = framed
            plain = plain[used:]
            nonce = mtproto.parse_req_pq_multi(packet)
            answer = mtproto.build_res_pq(nonce, os.urandom(16), SAMPLE_PQ, (SAMPLE_FINGERPRINT,),
                                          mtproto.client_message_id(time.time()))
            writer.write(session.send.apply(mtproto.frame(tag, answer)))
            await writer.drain()
    except ProtocolError as exc:
        log.info("mtproto dc: closing a connection that is not MTProto: %s", exc)
    except (asyncio.TimeoutError, ConnectionError, OSError):
        writer.close()
        return
    await close_cleanly(reader, writer)


async def serve_mqtt(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One MQTT connection: CONNECT -> CONNACK (accepted), then wait for the client to leave."""
    from wallwatch.protocols.mqtt import build_connack, parse_connect

    try:
        buffer = b""
        while True:
            parsed = parse_connect(buffer)
            if not isinstance(parsed, Incomplete):
                break
            buffer = await _read_more(reader, buffer)
        writer.write(build_connack(0))
        await writer.drain()
    except ProtocolError as exc:
        log.info("mqtt: closing a connection that is not MQTT: %s", exc)
    except (asyncio.TimeoutError, ConnectionError, OSError):
        writer.close()
        return
    await close_cleanly(reader, writer)


async def _serve_opening(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str,
                         answer: Callable[[bytes], bytes | Incomplete]) -> None:
    """Read until `answer` (a codec: the opening so far -> the reply) has a reply, send it, then wait for
    the client to leave; what is not the protocol is closed with a FIN (`close_cleanly`)."""
    try:
        buffer = b""
        while True:
            reply = answer(buffer) if buffer else Incomplete()
            if not isinstance(reply, Incomplete):
                break
            buffer = await _read_more(reader, buffer)
        writer.write(reply)
        await writer.drain()
    except ProtocolError as exc:
        log.info("%s: closing a connection that is not the protocol: %s", name, exc)
    except (asyncio.TimeoutError, ConnectionError, OSError):
        writer.close()
        return
    await close_cleanly(reader, writer)


def mmtls_answer(opening: bytes) -> bytes | Incomplete:
    """A ServerHello record for an mmtls ClientHello record (the long link's opening, the short link's body)."""
    hello = mmtls.parse_client_hello(opening)
    if isinstance(hello, Incomplete):
        return hello
    return mmtls.build_server_hello(hello, os.urandom(mmtls.RANDOM_SIZE))


async def serve_mmtls_long_link(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _serve_opening(reader, writer, "mmtls long link", mmtls_answer)


def short_link_handler(request: Request) -> Response:
    """WeChat's short link: `POST /mmtls/<8 hex digits>`, an mmtls ClientHello record as the body."""
    path = request.path.split("?", 1)[0]
    if request.method != "POST" or not path.startswith(mmtls.SHORT_LINK_PATH_PREFIX):
        return NOT_FOUND
    try:
        answer = mmtls_answer(request.body)
    except ProtocolError:
        return Response(400, b"not mmtls\n")
    if isinstance(answer, Incomplete):
        return Response(400, b"a truncated mmtls record\n")
    return Response(200, answer, "application/octet-stream")


def viber_answer(opening: bytes) -> bytes | Incomplete:
    nonce = viber.parse_hello(opening)
    return nonce if isinstance(nonce, Incomplete) else viber.build_hello_ack(nonce)


async def serve_viber_chat(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _serve_opening(reader, writer, "viber chat", viber_answer)


def apns_answer(opening: bytes) -> bytes | Incomplete:
    command = apns.parse_command(opening)
    if isinstance(command, Incomplete):
        return command
    if command.command != apns.CONNECT:
        raise ProtocolError(f"command {command.command} before connect")
    return apns.build_connect_response(os.urandom(32))


async def serve_apns_courier(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _serve_opening(reader, writer, "apns courier", apns_answer)


class Relay(asyncio.DatagramProtocol):
    """A call relay: answers each datagram its protocol knows (`answer`), drops anything else, as relays do."""

    def __init__(self) -> None:
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def answer(self, data: bytes, addr: tuple[str, int]) -> bytes:
        """The reply to `data` from `addr`; ProtocolError for what is not the relay's protocol."""
        raise NotImplementedError

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            response = self.answer(data, addr)
        except ProtocolError:
            return
        if self._transport is not None:
            self._transport.sendto(response, addr)


class StunRelay(Relay):
    """Answers STUN Binding requests with the sender's address (RFC 5389 §7.3)."""

    def answer(self, data: bytes, addr: tuple[str, int]) -> bytes:
        return build_binding_response(parse_stun(data), addr[0], addr[1])


class ViberRelay(Relay):
    """A Viber call relay: each ping answered with a pong carrying its call id."""

    def answer(self, data: bytes, addr: tuple[str, int]) -> bytes:
        call_id = viber.parse_datagram(data, viber.PING_TYPE, viber.PING_SIZE)
        return viber.build_pong(call_id, os.urandom(8))
