"""The collector: OONI's probe-services collector API, and a bulk endpoint for wallwatch's monitors.

OONI's API (ooni/backend `ooniprobe/routers/reports.py` [ooni-backend]), so that an OONI probe
submits unchanged:

* ``POST /report`` opens a report: ``{test_name, probe_cc, probe_asn, software_name, ...}`` ->
  ``{report_id, backend_version, supported_formats}``;
* ``POST /report/{report_id}`` submits one measurement: ``{"format": "json", "content": {...}}`` ->
  ``{"measurement_uid": ...}``;
* ``POST /report/{report_id}/close``.

And ``POST /api/v1/measurements``: JSON lines, one measurement each (carrying its own report_id),
all accepted or none -> ``{"measurement_uids": [...]}`` in line order; what `wallwatch monitor`
drains its spool with.

An answer of success means durable: the measurement's line is in the write-ahead log and
fdatasync'd (`web/wal.py`, group commit). Resubmitting gets the same uid and stores nothing new
(the uid is the batch ingest's, and the live pipeline deduplicates by it). Bad input is a 4xx
with the reason in ``detail``, and nothing of the request is stored: 400 malformed JSON, wrong
types, missing fields, inconsistent with its report; 401 a missing or unknown bearer token (when
tokens are configured); 404 an unknown report; 409 a closed one; 413 a body over the limit;
415 an unknown content encoding; 503 the disk is behind (retry later).
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import time
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import msgspec
import orjson
from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import BaseModel, Field
from starlette.routing import Route

from wallwatch import __version__
from wallwatch.web.reports import Report, ReportBook
from wallwatch.web.submissions import (
    MEASUREMENT_SCHEMA,
    Accepted,
    Rejected,
    ReportInfo,
    accept,
    accept_text,
    new_report_id,
)
from wallwatch.web.wal import WalFull, WriteAheadLog

# OONI's largest single measurements are about 1 MB (ooni/data Readme); 8 MiB leaves room
# without letting one request hold the server's memory.
DEFAULT_MAX_MEASUREMENT_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_BULK_BYTES = 64 * 1024 * 1024
BACKEND_VERSION = f"wallwatch-{__version__}"
JSON = "application/json"
NDJSON = "application/x-ndjson"


@dataclass
class Collector:
    """What the collector's handlers share (kept on `app.state.collector`)."""

    wal: WriteAheadLog
    book: ReportBook
    tokens: frozenset[str] = frozenset()
    max_measurement_bytes: int = DEFAULT_MAX_MEASUREMENT_BYTES
    max_bulk_bytes: int = DEFAULT_MAX_BULK_BYTES
    accepted: int = 0
    rejected: Counter[int] = field(default_factory=Counter)
    # Report opens and closes are fsync'd one at a time, in order, off the event loop.
    book_io: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, "reports"))


class Problem(BaseModel):
    detail: str = Field(description="Why the request was refused; nothing of it was stored.")


class OpenReportRequest(BaseModel):
    """OONI's open-report request (ooni/backend `OpenReportRequest`)."""

    data_format_version: str
    format: str
    probe_asn: str = "AS0"
    probe_cc: str = "ZZ"
    software_name: str
    software_version: str
    test_name: str = ""
    test_start_time: str
    test_version: str


class OpenReportResponse(BaseModel):
    backend_version: str
    report_id: str
    supported_formats: list[str]


class SubmitResponse(BaseModel):
    measurement_uid: str = Field(description="The stored measurement's uid; the same on every resubmission.")


class BulkResponse(BaseModel):
    measurement_uids: list[str] = Field(description="One uid per submitted line, in order.")


def _problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    reasons = {400: "Malformed JSON, wrong types, missing fields or a measurement inconsistent with its report",
               401: "A bearer token is required and was missing or unknown",
               404: "No such report (never opened, or expired)",
               409: "The report is closed",
               413: "The body is over the size limit",
               415: "Unsupported Content-Encoding (identity or gzip)",
               503: "The disk is behind: retry later"}
    return {code: {"model": Problem, "description": reasons[code]} for code in codes}


SUBMIT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["format", "content"],
    "properties": {"format": {"type": "string", "enum": ["json"]}, "content": MEASUREMENT_SCHEMA},
}


def _collector(request: Request) -> Collector:
    return request.app.state.collector


async def authorize(request: Request) -> None:
    """Bearer tokens ([RFC6750] §2.1), when the server was given any: every submitter needs one."""
    tokens: frozenset[str] = request.app.state.collector.tokens
    if not tokens:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    # Compare against every token in constant time, so timing tells nothing about any of them.
    known = any(hmac.compare_digest(token.encode(), candidate.encode()) for candidate in tokens)
    if scheme.lower() != "bearer" or not token or not known:
        raise HTTPException(401, "a valid bearer token is required (Authorization: Bearer <token>)",
                            headers={"WWW-Authenticate": 'Bearer realm="wallwatch collector"'})


router = APIRouter(tags=["collector"])


@router.post("/report", response_model=OpenReportResponse, responses=_problems(400, 401, 503),
             dependencies=[Depends(authorize)])
async def open_report(body: OpenReportRequest, request: Request) -> Response:
    """Open a report (OONI's API); its measurements are then submitted to `/report/{report_id}`."""
    collector = _collector(request)
    # Normalised as OONI's collector does: a malformed country or network becomes the hidden one.
    asn = body.probe_asn.upper()
    if not (3 <= len(asn) <= 12 and asn.startswith("AS") and asn[2:].isdigit()):
        asn = "AS0"
    cc = body.probe_cc.upper().replace("_", "")
    if len(cc) != 2 or not cc.isalpha():
        cc = "ZZ"
    test_name = body.test_name.lower()
    report = Report(new_report_id(test_name or "unknown", cc, asn), test_name, cc, asn, time.time())
    await asyncio.get_running_loop().run_in_executor(collector.book_io, collector.book.record_open, report)
    return _json({"backend_version": BACKEND_VERSION, "report_id": report.report_id, "supported_formats": ["json"]})


@router.post("/report/{report_id}", response_model=SubmitResponse,
             responses=_problems(400, 401, 404, 409, 413, 415, 503),
             openapi_extra={"requestBody": {"required": True, "content": {JSON: {"schema": SUBMIT_SCHEMA}}}})
async def submit_measurement(report_id: str, request: Request) -> Response:
    """Submit one measurement into an open report (OONI's API); answered once it is durable."""
    await authorize(request)
    return await _submit_measurement(request)


async def _submit_measurement(request: Request) -> Response:
    report_id = request.path_params["report_id"]
    collector = _collector(request)
    report = collector.book.get(report_id)
    if report is None:
        raise _refuse(collector, 404, f"no report {report_id[:80]!r}: open one with POST /report")
    if report.closed_at is not None:
        raise _refuse(collector, 409, f"report {report_id[:80]!r} is closed")
    body = await _read_body(request, collector, collector.max_measurement_bytes)
    try:
        accepted = _accept_envelope(body, report.info, _client_ip(request))
    except Rejected as exc:
        raise _refuse(collector, 400, str(exc)) from None
    await _log(collector, [accepted])
    return _json({"measurement_uid": accepted.measurement_uid})


@router.post("/report/{report_id}/close", responses=_problems(401, 404, 503), dependencies=[Depends(authorize)])
async def close_report(report_id: str, request: Request) -> Response:
    """Close a report (OONI's API): later submissions into it are refused. Closing twice is fine."""
    collector = _collector(request)
    report = collector.book.get(report_id)
    if report is None:
        raise _refuse(collector, 404, f"no report {report_id[:80]!r}")
    if report.closed_at is None:
        await asyncio.get_running_loop().run_in_executor(collector.book_io, collector.book.record_close,
                                                         report_id, time.time())
    return _json({})


@router.post("/api/v1/measurements", response_model=BulkResponse,
             responses=_problems(400, 401, 413, 415, 503),
             openapi_extra={"requestBody": {"required": True, "content": {
                 NDJSON: {"schema": {"type": "string", "description": "JSON lines: one measurement "
                                     "(with its report_id) per line"}}}}})
async def submit_bulk(request: Request) -> Response:
    """Submit measurements as JSON lines, each with its own report_id: all are stored or none."""
    await authorize(request)
    return await _submit_bulk(request)


async def _submit_bulk(request: Request) -> Response:
    collector = _collector(request)
    body = await _read_body(request, collector, collector.max_bulk_bytes)
    client_ip = _client_ip(request)
    accepted: list[Accepted] = []
    for number, line in _lines(body):
        try:
            accepted.append(accept_text(line, client_ip=client_ip))
        except Rejected as exc:
            raise _refuse(collector, 400, f"line {number}: {exc}") from None
    if not accepted:
        raise _refuse(collector, 400, "no measurements in the body (JSON lines, one measurement per line)")
    await _log(collector, accepted)
    return _json({"measurement_uids": [a.measurement_uid for a in accepted]})


class _Envelope(msgspec.Struct):
    format: str
    content: msgspec.Raw  # the measurement's text, kept as received (`accept_text`)


_ENVELOPE = msgspec.json.Decoder(_Envelope)


def _accept_envelope(body: bytes, report: ReportInfo, client_ip: str | None) -> Accepted:
    """OONI's submission body, `{"format": "json", "content": <measurement>}`."""
    try:
        envelope = _ENVELOPE.decode(body)
    except msgspec.DecodeError:  # malformed JSON, or another shape: parse it whole to say which
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise Rejected(f"malformed JSON: {exc}") from None
        if not isinstance(value, dict) or "content" not in value:
            raise Rejected('the body must be {"format": "json", "content": <measurement>}') from None
        if value.get("format") != "json":
            raise Rejected(f"unsupported format {str(value.get('format'))[:20]!r}: only \"json\"") from None
        return accept(value["content"], report=report, client_ip=client_ip)
    if envelope.format != "json":
        raise Rejected(f"unsupported format {envelope.format[:20]!r}: only \"json\"")
    return accept_text(bytes(envelope.content), report=report, client_ip=client_ip)


async def _fast(handler: Callable[[Request], Awaitable[Response]], request: Request) -> Response:
    await authorize(request)
    return await handler(request)


def fast_routes() -> list[Route]:
    """The two submission endpoints as plain Starlette routes, to be put in front of the app's routes.

    FastAPI documents them (their `APIRoute`s above stay in the OpenAPI document and answer the same
    way); these answer them, without FastAPI's per-request dependency and validation machinery,
    which they do not use: they read and check their bodies themselves. A trivial handler with a
    28 KB body costs ~157 µs of CPU a request through an APIRoute with a dependency and ~83 µs
    through a Starlette route (measured on this project's machine), and these are the requests a
    collector gets thousands of a second.
    """
    return [Route("/report/{report_id}", functools.partial(_fast, _submit_measurement), methods=["POST"]),
            Route("/api/v1/measurements", functools.partial(_fast, _submit_bulk), methods=["POST"])]


def _lines(body: bytes) -> Iterable[tuple[int, bytes]]:
    for number, line in enumerate(body.split(b"\n"), start=1):
        if line.strip():
            yield number, line


async def _log(collector: Collector, accepted: list[Accepted]) -> None:
    try:
        await collector.wal.append(b"".join(a.line for a in accepted), len(accepted))
    except WalFull as exc:
        raise _refuse(collector, 503, f"the server's disk is behind ({exc}); retry later",
                      headers={"Retry-After": "1"}) from None
    collector.accepted += len(accepted)


async def _read_body(request: Request, collector: Collector, limit: int) -> bytes:
    """The body, refused (413) as soon as it passes `limit`, gunzipped if so encoded (same limit)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _refuse(collector, 413, f"body of {declared} bytes is over the limit of {limit}")
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", ""):
        raise _refuse(collector, 415, f"unsupported Content-Encoding {encoding[:20]!r}: identity or gzip")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _refuse(collector, 413, f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    if encoding == "gzip":
        inflater = zlib.decompressobj(wbits=31)
        try:
            body = inflater.decompress(body, limit + 1)
        except zlib.error as exc:
            raise _refuse(collector, 400, f"malformed gzip body: {exc}") from None
        if len(body) > limit or inflater.unconsumed_tail:
            raise _refuse(collector, 413, f"body is over the limit of {limit} bytes once decompressed")
        if not inflater.eof:
            raise _refuse(collector, 400, "malformed gzip body: the stream ends before its end marker")
    return body


def _client_ip(request: Request) -> str | None:
    # Used only to scrub the submitter's own address from what it sent; never stored or logged.
    return request.client.host if request.client else None


def _refuse(collector: Collector, status: int, reason: str, headers: dict[str, str] | None = None) -> HTTPException:
    collector.rejected[status] += 1
    return HTTPException(status, reason, headers=headers)


def _json(value: Any) -> Response:
    return Response(orjson.dumps(value), media_type=JSON)
