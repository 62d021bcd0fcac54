"""The test helper's HTTP(S) server: `POST /` with a control request, a control response back.

OONI's helpers take the request at `/` (probe-cli `oohelperd/handler.go`:
POST only, a JSON body, 200 with the JSON response, 400 for a request that
does not parse). h11 speaks HTTP/1.1 here, as everywhere in wallwatch: it is
sans-IO and already a dependency. One request per connection, as the probe
sends it (`Connection: close`); at most `max_inflight` measurements run at
once, so memory is bounded by configuration and not by how many probes call.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass

import h11
import orjson

from wallwatch.helper.measure import HelperConfig, measure
from wallwatch.protocols import webconnectivity as th
from wallwatch.protocols.errors import ProtocolError

log = logging.getLogger("wallwatch.helper")

READ_TIMEOUT = 10.0  # a client that has not sent its request by then is gone
MAX_INFLIGHT = 64  # measurements at once; each holds a few sockets and at most one page
SERVER_HEADER = "wallwatch-helper"


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str = "application/json"


async def _read_request(connection: h11.Connection, reader: asyncio.StreamReader) -> tuple[h11.Request, bytes] | None:
    head: h11.Request | None = None
    body = bytearray()
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            connection.receive_data(await asyncio.wait_for(reader.read(65536), READ_TIMEOUT))
        elif isinstance(event, h11.Request):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > th.MAX_REQUEST_BYTES:
                raise ProtocolError("request body too large")
        elif isinstance(event, h11.EndOfMessage) and head is not None:
            return head, bytes(body)
        else:
            return None  # the client closed


class HelperServer:
    """Answers control requests with `measure`; `serve_connection` is one client connection."""

    def __init__(self, config: HelperConfig, max_inflight: int = MAX_INFLIGHT) -> None:
        self.config = config
        self._slots = asyncio.Semaphore(max_inflight)
        self.served = 0

    async def answer(self, method: str, target: str, body: bytes) -> Reply:
        if target.split("?", 1)[0] != "/":
            return Reply(404, b'{"error":"not found"}')
        if method == "GET":
            return Reply(200, b"wallwatch web_connectivity test helper: POST a control request to /\n",
                         "text/plain; charset=utf-8")
        if method != "POST":
            return Reply(405, b'{"error":"POST a control request"}')
        try:
            request = th.parse_request(body)
        except ProtocolError as exc:
            return Reply(400, orjson.dumps({"error": str(exc)}))
        async with self._slots:
            response = await measure(request, self.config)
        self.served += 1
        return Reply(200, orjson.dumps(response))

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=th.MAX_REQUEST_BYTES)
        try:
            try:
                received = await _read_request(connection, reader)
            except (h11.RemoteProtocolError, ProtocolError) as exc:
                received, reply = None, Reply(400, orjson.dumps({"error": str(exc)}))
            else:
                if received is None:
                    return
                head, body = received
                reply = await self.answer(head.method.decode("latin-1"), head.target.decode("latin-1"), body)
            headers = [("content-type", reply.content_type), ("content-length", str(len(reply.body))),
                       ("server", SERVER_HEADER), ("connection", "close")]
            writer.write(connection.send(h11.Response(status_code=reply.status, headers=headers)))
            writer.write(connection.send(h11.Data(data=reply.body)))
            writer.write(connection.send(h11.EndOfMessage()))
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError, ssl.SSLError, h11.LocalProtocolError) as exc:
            log.debug("connection dropped: %s", exc)
        finally:
            writer.close()


async def start(config: HelperConfig, host: str, port: int, *, tls: ssl.SSLContext | None = None,
                max_inflight: int = MAX_INFLIGHT) -> tuple[asyncio.AbstractServer, HelperServer]:
    """Listen on host:port (TLS when `tls` is given); returns the server and its handler."""
    helper = HelperServer(config, max_inflight)
    server = await asyncio.start_server(helper.serve_connection, host, port, ssl=tls)
    return server, helper


def server_tls_context(cert_chain: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_chain, key)
    context.set_alpn_protocols(["http/1.1"])
    return context
