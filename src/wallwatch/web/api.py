"""Read endpoints: the events as they are logged, the Atom feed served live, annotations, status.

Everything here is read from the data folder on each request (the event log `events.jsonl`
that the live pipeline appends to, the calendar given at start-up), so what is served is what
a batch `wallwatch events --feed atom` over the same folder would write.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import StringConstraints

from wallwatch.analysis.events.feeds import ATOM_MEDIA_TYPE, FeedError, FeedOptions, atom_feed
from wallwatch.analysis.events.grouping import EVENT_LOG
from wallwatch.analysis.events.lifecycle import replay_log
from wallwatch.web.calendar import Annotation, annotations_for
from wallwatch.web.wal import sealed_segments

router = APIRouter(tags=["events"])

Country = Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{2}$")]
Service = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_*]{1,40}$")]
EventKind = Literal["blocking", "volume_collapse"]
Countries = Annotated[list[Country], Query(description="Only these countries (ISO codes); repeatable.",
                                           max_length=50)]
Services = Annotated[list[Service], Query(description="Only these services; repeatable.", max_length=50)]
Kinds = Annotated[list[EventKind], Query(description="Only these event types; repeatable.", max_length=2)]


async def read_event_log(request: Request) -> list[dict[str, Any]]:
    """The lifecycle log; a line the pipeline is still writing is waited for once, then refused (503)."""
    store = request.app.state.store
    for attempt in range(3):
        try:
            return store.read_jsonl(EVENT_LOG)
        except orjson.JSONDecodeError:
            await asyncio.sleep(0.05 * (attempt + 1))
    raise HTTPException(503, "the event log is being written; retry")


def _calendar(request: Request) -> list[Annotation]:
    return getattr(request.app.state, "calendar", None) or []


@router.get("/api/v1/events")
async def list_events(request: Request, country: Countries = [], service: Services = []) -> Response:  # noqa: B006
    """Every logged event (its latest snapshot), with the calendar's annotations beside it."""
    calendar = _calendar(request)
    state = replay_log(await read_event_log(request))
    events = sorted((s.snapshot for s in state.values()), key=lambda r: (r["onset"], r["probe_cc"], r["service"]))
    wanted_cc = {c.upper() for c in country or ()}
    events = [e for e in events if (not wanted_cc or e.get("probe_cc") in wanted_cc)
              and (not service or e.get("service") in service)]
    body = [{**event, "annotations": [a.to_record() for a in annotations_for(event, calendar)]} for event in events]
    return Response(orjson.dumps({"events": body}), media_type="application/json")


@router.get("/api/v1/annotations")
async def list_annotations(request: Request) -> Response:
    """The calendar the server was started with (`--calendar`)."""
    return Response(orjson.dumps({"annotations": [a.to_record() for a in _calendar(request)]}),
                    media_type="application/json")


@router.get("/feed.atom", response_class=Response,
            responses={200: {"content": {ATOM_MEDIA_TYPE: {}}, "description": "An Atom 1.0 feed (RFC 4287)"}})
async def feed(request: Request, country: Countries = [], service: Services = [],  # noqa: B006
               type: Kinds = []) -> Response:  # noqa: B006 - FastAPI copies defaults per request
    """The event lifecycle as an Atom feed, one entry per change, with calendar context."""
    config = request.app.state.config
    options = FeedOptions(countries=tuple(c.upper() for c in country or ()), services=tuple(service or ()),
                          event_types=tuple(type or ()), self_url=str(request.url),
                          tag_authority=config.tag_authority)
    calendar = _calendar(request)

    def context(entry: Mapping[str, Any]) -> list[str]:
        return [a.label() for a in annotations_for(entry.get("event") or {}, calendar)]

    try:
        document = atom_feed(await read_event_log(request), options, context)
    except FeedError as exc:
        raise HTTPException(500, str(exc)) from None
    return Response(document, media_type=ATOM_MEDIA_TYPE)


def _mtime(path: Path) -> float | None:
    """A waiting segment's time, or None once the pipeline has taken it (it deletes what it
    ingested, so a segment listed a moment ago may be gone)."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return None


@router.get("/api/v1/status")
async def status(request: Request) -> Response:
    """What the collector accepted and refused since start, and how far the live pipeline lags.

    Everything accepted has become verdicts, series and events when `wal.open_bytes` is 0, no
    segment waits, and the pipeline's `last_segment` is the WAL's `last_sealed`.
    """
    state = request.app.state
    collector = state.collector
    waiting = [m for m in map(_mtime, sealed_segments(collector.wal.directory)) if m is not None]
    oldest = min(waiting, default=None)
    supervisor = getattr(state, "pipeline", None)
    body = {
        "accepted": collector.accepted,
        "refused": {str(code): count for code, count in sorted(collector.rejected.items())},
        "wal": {"synced_batches": collector.wal.synced_batches, "synced_lines": collector.wal.synced_lines,
                "open_bytes": collector.wal.open_bytes, "last_sealed": collector.wal.last_sealed,
                "segments_waiting": len(waiting),
                "oldest_waiting_s": None if oldest is None else round(time.time() - oldest, 3)},
        "pipeline": None if supervisor is None else supervisor.status(),
    }
    return Response(orjson.dumps(body), media_type="application/json")
