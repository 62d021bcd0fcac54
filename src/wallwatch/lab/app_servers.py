"""The emulated messaging servers that speak an app's own protocol (not HTTPS): one coroutine per connection.

Each answers the real protocol's first exchange with the codec the probe and
the censor use (`wallwatch.protocols`), so the probe proves the service by
its own protocol, and a censor sees the real opening bytes:

* `serve_mtproto_dc`: a Telegram data centre. obfuscated2 transport, the
  client's req_pq_multi answered with resPQ echoing its nonce
  (core.telegram.org/mtproto/auth_key, step 1);
* `serve_mqtt`: Messenger's chat edge. MQTT CONNECT answered with CONNACK
  ([MQTT311] §3.1, §3.2); the TLS around it is the listener's.

Anything that is not the protocol is closed with a FIN after draining (so a
control payload sees a clean close, as at a real server), never reset.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from wallwatch.protocols.errors import Incomplete, ProtocolError

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
