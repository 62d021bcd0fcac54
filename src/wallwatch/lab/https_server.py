"""The lab's emulated HTTPS services: WhatsApp's registration, web and media, and every other service's sites.

HTTP/1.1 over asyncio streams with h11 doing the protocol: h11 is sans-IO, the
house's own model, small, and already what uvicorn and httpx build on, so it
adds no new code path; a hand-written parser would need its own hardening.
Each service is served only on its own lab address with the lab certificate.
Every media host (`/.../video.mp4`) and web client (`/app.js`) also serves a
bulk object by byte range (RFC 9110 §14) for the probe's throughput rounds
(probe/throughput.py), whichever service it stands for.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import random
import re
import secrets
import ssl
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import h11

log = logging.getLogger(__name__)

IDLE_TIMEOUT = 30.0  # seconds a keep-alive connection may sit idle
TLS_HANDSHAKE_TIMEOUT = 10.0
MAX_HEAD_BYTES = 16 * 1024
# A phone photo WhatsApp sends is compressed to roughly 100-300 KB; 4 MiB
# leaves room for the probe's larger objects while bounding memory.
MAX_UPLOAD_BYTES = 4 * 1024 * 1024
MAX_STORED_OBJECTS = 64
SAMPLE_SIZE = 200 * 1024
# The bulk objects the probe's throughput measurement fetches by byte range
# (probe/throughput.py): a short video (WhatsApp sends up to 16 MB) and a web
# client's script bundle (WhatsApp Web loads several MB of JavaScript). 4 MiB
# holds a one-second window at 20 Mbit/s, the fastest throttle the lab tests.
BULK_SIZE = 4 * 1024 * 1024
SERVER_HEADER = "wallwatch-lab"
# Each service's CDN has its own path shape: WhatsApp /d/, Telegram /file/, Signal /attachments/,
# Messenger /v/, WeChat's Moments /mmsns/, Skype's media objects /v1/objects/ [SkPy], Viber /download/.
MEDIA_PATHS = ("/d/", "/file/", "/attachments/", "/v/", "/mmsns/", "/v1/objects/", "/download/")
UPLOAD_PATHS = ("/upload", "/v1/objects")  # WhatsApp's and Viber's (ours), Skype's media objects [SkPy]


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    host: str | None
    body: bytes
    range: str | None = None  # the Range header, as sent (RFC 9110 §14.2)


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    # A page made on the fly is sent in chunks (RFC 9112 §7.1), without a Content-Length, as large
    # sites send theirs (lab/websites.py).
    chunked: bool = False
    headers: tuple[tuple[str, str], ...] = ()  # further response headers
    content_range: str | None = None


_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


def ranged(request: Request, data: bytes, content_type: str) -> Response:
    """`data`, or the one byte range the request asks for (RFC 9110 §14: 206 with Content-Range;
    416 for a range that starts past the end). Multi-range requests get the whole object, which
    RFC 9110 §14.2 allows a server to do."""
    match = _RANGE.match((request.range or "").strip())
    if match is None:
        return Response(200, data, content_type)
    first = int(match.group(1))
    last = min(int(match.group(2)) if match.group(2) else len(data) - 1, len(data) - 1)
    if first >= len(data) or last < first:
        return Response(416, b"", content_type, content_range=f"bytes */{len(data)}")
    return Response(206, data[first : last + 1], content_type, content_range=f"bytes {first}-{last}/{len(data)}")


def bulk_object(seed: int, size: int = BULK_SIZE) -> bytes:
    """A fixed, incompressible object (seeded: every lab serves the same bytes)."""
    return random.Random(seed).randbytes(size)


def json_response(status: int, payload: object) -> Response:
    return Response(status, json.dumps(payload, separators=(",", ":")).encode(), "application/json")


NOT_FOUND = Response(404, b"not found\n")
Handler = Callable[[Request], Response]


# --- the three services ------------------------------------------------------


def registration_handler(request: Request) -> Response:
    """v.whatsapp.net: `GET /v2/register` without parameters, as OONI ts-018 sends it.

    The real server answers 200 with a JSON failure naming the missing
    parameter; OONI counts any HTTP response as "registration server reachable".
    """
    if request.path.split("?", 1)[0] == "/v2/register":
        return json_response(200, {"status": "fail", "reason": "missing_param"})
    return NOT_FOUND


WEB_PAGE = b"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>WhatsApp Web</title></head>
<body><h1>WhatsApp Web</h1><p>wallwatch lab: an emulated web.whatsapp.com.</p></body></html>
"""


WEB_BUNDLE_PATH = "/app.js"


@functools.lru_cache(maxsize=1)
def web_bundle() -> bytes:
    return bulk_object(20170925)  # seed: the day WhatsApp was blocked outright


def web_handler(request: Request) -> Response:
    path = request.path.split("?", 1)[0]
    if request.method in ("GET", "HEAD") and path == "/":
        return Response(200, WEB_PAGE, "text/html; charset=utf-8")
    if request.method in ("GET", "HEAD") and path == WEB_BUNDLE_PATH:
        return ranged(request, web_bundle(), "application/javascript")
    return NOT_FOUND


def site_handler(host: str) -> Handler:
    """A web client or API host of another service: a small page naming it, for any path.

    What the probe checks is that the service's own server answered over a valid TLS
    connection (OONI counts any HTTP response the same way); the page says which host.
    """
    page = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{host}</title></head>\n"
            f"<body><h1>{host}</h1><p>wallwatch lab: an emulated {host}.</p></body></html>\n").encode()

    def handle(request: Request) -> Response:
        if request.method in ("GET", "HEAD") and request.path.split("?", 1)[0] == WEB_BUNDLE_PATH:
            return ranged(request, web_bundle(), "application/javascript")  # a web client's script bundle
        if request.method in ("GET", "HEAD", "POST", "PUT"):
            return Response(200, page, "text/html; charset=utf-8")
        return NOT_FOUND

    return handle


def sample_photo(size: int = SAMPLE_SIZE) -> bytes:
    """A fixed, photo-sized, incompressible object framed like a JPEG (SOI ... EOI).

    Seeded, so every lab serves the same bytes and a probe can check a digest.
    """
    filler = random.Random(20170718).randbytes(size - 4)  # seed: the 2017-07-18 media block
    return b"\xff\xd8" + filler + b"\xff\xd9"


VIDEO_NAME = "video.mp4"


@dataclass
class MediaStore:
    """Uploaded objects, in memory, oldest evicted first; every object may be fetched by range."""

    objects: OrderedDict[str, bytes] = field(default_factory=OrderedDict)
    sample: bytes = field(default_factory=sample_photo)
    _video: bytes | None = None

    @property
    def video(self) -> bytes:
        if self._video is None:
            self._video = bulk_object(20170718)
        return self._video

    def handle(self, request: Request) -> Response:
        path = request.path.split("?", 1)[0]
        if request.method == "POST" and path in UPLOAD_PATHS:
            return self._upload(request.body)
        prefix = next((p for p in MEDIA_PATHS if path.startswith(p)), None)
        if request.method in ("GET", "HEAD") and prefix is not None:
            # The segment after the CDN's prefix names the object ("sample.jpg": the fixed sample,
            # VIDEO_NAME: the bulk object the throughput rounds fetch by range); Skype's views
            # follow it (/v1/objects/<id>/views/imgpsh_fullsize).
            object_id = path[len(prefix):].split("/", 1)[0]
            if object_id == VIDEO_NAME:
                return ranged(request, self.video, "video/mp4")
            data = self.sample if object_id == "sample.jpg" else self.objects.get(object_id)
            if data is None:
                return NOT_FOUND
            return ranged(request, data, "image/jpeg")
        return NOT_FOUND

    def _upload(self, body: bytes) -> Response:
        if not body:
            return json_response(400, {"status": "fail", "reason": "empty_body"})
        object_id = secrets.token_hex(16)
        self.objects[object_id] = body
        while len(self.objects) > MAX_STORED_OBJECTS:
            self.objects.popitem(last=False)
        digest = hashlib.sha256(body).hexdigest()
        return json_response(200, {"id": object_id, "size": len(body), "sha256": digest, "url": f"/d/{object_id}"})


# --- HTTP/1.1 over asyncio streams -------------------------------------------


class _BodyTooLarge(Exception):
    pass


async def _next_event(connection: h11.Connection, reader: asyncio.StreamReader) -> object:
    while True:
        event = connection.next_event()
        if event is not h11.NEED_DATA:
            return event
        data = await asyncio.wait_for(reader.read(65536), IDLE_TIMEOUT)
        connection.receive_data(data)  # b"" marks EOF


async def _read_request(connection: h11.Connection, reader: asyncio.StreamReader) -> Request | None:
    event = await _next_event(connection, reader)
    if not isinstance(event, h11.Request):
        return None  # ConnectionClosed: the client is done
    headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in event.headers}
    body = bytearray()
    while True:
        part = await _next_event(connection, reader)
        if isinstance(part, h11.Data):
            body += part.data
            if len(body) > MAX_UPLOAD_BYTES:
                raise _BodyTooLarge()
        elif isinstance(part, h11.EndOfMessage):
            break
        else:
            return None
    return Request(event.method.decode("latin-1"), event.target.decode("latin-1"), headers.get("host"), bytes(body),
                   headers.get("range"))


async def _send(connection: h11.Connection, writer: asyncio.StreamWriter, response: Response, head_only: bool) -> None:
    headers = [("content-type", response.content_type), ("server", SERVER_HEADER)]
    if not response.chunked:
        headers.insert(1, ("content-length", str(len(response.body))))
    headers += response.headers
    if response.content_range is not None:
        headers.append(("content-range", response.content_range))
    writer.write(connection.send(h11.Response(status_code=response.status, headers=headers)))
    if response.body and not head_only:
        writer.write(connection.send(h11.Data(data=response.body)))
    writer.write(connection.send(h11.EndOfMessage()))
    await writer.drain()


async def serve_http_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler) -> None:
    connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
    try:
        while True:
            try:
                request = await _read_request(connection, reader)
            except _BodyTooLarge:
                await _send(connection, writer, Response(413, b"too large\n"), head_only=False)
                break
            except h11.RemoteProtocolError as exc:
                if connection.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    await _send(connection, writer, Response(exc.error_status_hint, b"bad request\n"), head_only=False)
                break
            if request is None:
                break
            try:
                response = handler(request)
            except Exception:  # a handler bug must not kill the server; the client sees a 500
                log.exception("handler failed for %s %s", request.method, request.path)
                response = Response(500, b"internal error\n")
            await _send(connection, writer, response, head_only=request.method == "HEAD")
            if connection.our_state is h11.MUST_CLOSE:
                break
            connection.start_next_cycle()
    except (asyncio.TimeoutError, ConnectionError, ssl.SSLError, h11.LocalProtocolError):
        pass
    finally:
        writer.close()


def server_ssl_context(cert_chain: Path, key: Path, alpn: tuple[str, ...] = ("http/1.1",)) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_chain, key)
    context.set_alpn_protocols(list(alpn))
    return context


async def start_https(
    address: str, handler: Handler, context: ssl.SSLContext | None, port: int = 443
) -> asyncio.AbstractServer:
    """Serve `handler` on address:port, over TLS with `context`, or plain HTTP with None."""
    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_http_connection(reader, writer, handler)

    if context is None:
        return await asyncio.start_server(on_connection, address, port)
    return await asyncio.start_server(
        on_connection, address, port, ssl=context, ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT
    )

