"""The observatory's one HTTP application: collector, live pipeline, feeds and dashboard on one port.

`create_app(ServeConfig(...))` builds it; `wallwatch serve` runs it with uvicorn (`web/serve.py`).
What it keeps on `app.state`, for its routers and the dashboard's:

* `store`: `analysis.store.Store` over the data folder (the datasets a batch run also writes);
* `calendar`: the annotations of `--calendar` (`web.calendar.Annotation`s);
* `collector`: the write-ahead log, the report book, tokens and limits (`web.collector.Collector`);
* `pipeline`: the live pipeline's supervisor (None when the pipeline is off);
* `config`: the `ServeConfig`.

The dashboard is `wallwatch.web.dashboard.router` when that package is installed; until then `/`
is a plain page linking to what is served.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from wallwatch import __version__
from wallwatch.analysis.events.feeds import DEFAULT_TAG_AUTHORITY, FeedOptions
from wallwatch.analysis.store import Store
from wallwatch.web import api, collector
from wallwatch.web.alerts import load_alerts
from wallwatch.web.calendar import load_calendar
from wallwatch.web.live import PipelineConfig, PipelineSupervisor, live_dir, wal_dir
from wallwatch.web.reports import ReportBook
from wallwatch.web.wal import DEFAULT_SEAL_AFTER, WriteAheadLog

log = logging.getLogger("wallwatch.serve")


@dataclass(frozen=True)
class ServeConfig:
    data: Path
    tokens: frozenset[str] = field(default=frozenset(), repr=False)
    alerts: Path | None = None
    calendar: Path | None = None
    # Run the live pipeline (off: the collector only stores; `wallwatch ingest` can read the WAL later).
    live: bool = True
    seal_after: float = DEFAULT_SEAL_AFTER
    max_measurement_bytes: int = collector.DEFAULT_MAX_MEASUREMENT_BYTES
    max_bulk_bytes: int = collector.DEFAULT_MAX_BULK_BYTES
    tag_authority: str = DEFAULT_TAG_AUTHORITY

    def check(self) -> None:
        """Fail before serving on what would otherwise fail later, in the pipeline: bad config files."""
        FeedOptions(tag_authority=self.tag_authority).check()
        if self.alerts is not None:
            load_alerts(self.alerts)
        if self.calendar is not None:
            load_calendar(self.calendar)


class AlreadyServing(RuntimeError):
    """Another `wallwatch serve` holds this data folder."""


@contextlib.contextmanager
def collector_lock(data: Path) -> Iterator[None]:
    """One collector per data folder (`<data>/_live/collector.lock`, flock; released when its holder dies)."""
    path = live_dir(data) / "collector.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AlreadyServing(f"another `wallwatch serve` is running on {data}") from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def create_app(config: ServeConfig) -> FastAPI:
    config.check()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with collector_lock(config.data):
            wal = WriteAheadLog(wal_dir(config.data), seal_after=config.seal_after)
            await wal.start()
            book = ReportBook(live_dir(config.data) / "reports.jsonl")
            book.load()
            app.state.collector = collector.Collector(wal, book, config.tokens, config.max_measurement_bytes,
                                                      config.max_bulk_bytes)
            supervisor = None
            if config.live:
                supervisor = PipelineSupervisor(PipelineConfig(config.data, config.alerts, config.calendar,
                                                               config.tag_authority))
                supervisor.start()
            app.state.pipeline = supervisor
            watcher = asyncio.create_task(_watch(supervisor)) if supervisor else None
            try:
                yield
            finally:
                if watcher is not None:
                    watcher.cancel()
                await wal.close()  # the last lines sealed for the pipeline's next start
                if supervisor is not None:
                    await asyncio.get_running_loop().run_in_executor(None, supervisor.stop)
                app.state.collector.book_io.shutdown(wait=True)

    app = FastAPI(title="wallwatch observatory", version=__version__, lifespan=lifespan,
                  summary="OONI-compatible collector, live censorship events, alerts and dashboard",
                  description="Submit measurements with OONI's collector API (`/report`) or as JSON lines "
                              "(`/api/v1/measurements`); read events (`/api/v1/events`, `/feed.atom`). "
                              "See docs/observatory.md.")
    app.state.config = config
    app.state.store = Store(config.data)
    app.state.calendar = load_calendar(config.calendar) if config.calendar else []
    app.include_router(collector.router)
    app.router.routes[0:0] = collector.fast_routes()  # answer the hot submission endpoints (see there)
    app.include_router(api.router)
    _add_dashboard(app)
    return app


async def _watch(supervisor: PipelineSupervisor) -> None:
    while True:
        await asyncio.sleep(1.0)
        supervisor.check()


def _add_dashboard(app: FastAPI) -> None:
    try:
        from wallwatch.web.dashboard import router as dashboard  # built alongside (issue 11, item 5)
    except ModuleNotFoundError as exc:
        if exc.name not in ("wallwatch.web.dashboard",):
            raise
        app.add_api_route("/", _home, methods=["GET"], response_class=HTMLResponse, include_in_schema=False)
        return
    app.include_router(dashboard)


async def _home() -> HTMLResponse:
    return HTMLResponse(
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>wallwatch observatory</title></head>"
        "<body><h1>wallwatch observatory</h1><ul>"
        "<li><a href='/feed.atom'>Events as an Atom feed</a></li>"
        "<li><a href='/api/v1/events'>Events (JSON)</a></li>"
        "<li><a href='/api/v1/status'>Collector and pipeline status</a></li>"
        "<li><a href='/docs'>API (OpenAPI)</a></li></ul></body></html>")


__all__ = ["AlreadyServing", "ServeConfig", "create_app"]
