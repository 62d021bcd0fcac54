"""The dashboard served for real (uvicorn on loopback) over the 2017 replay, and a real headless Chromium.

Chromium is Debian's (`/usr/bin/chromium`) driven by Playwright through its
executable path: no browser is downloaded. Every request the browser makes to
anything but the test server is refused and recorded, so a page that reaches
for a CDN fails its test.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# The calendar the serve app would load from its YAML file ([SCMP2017], [NYT2017], [Congress2017]).
CALENDAR = [
    {"date": "2017-07-18", "title": "Photos, video and voice messages fail, text still works (SCMP, Vice)"},
    {"date": "2017-09-25", "title": "WhatsApp largely blocked, text included (New York Times)",
     "url": "https://www.nytimes.com/2017/09/25/business/china-whatsapp-blocked.html"},
    {"date": "2017-10-18", "title": "19th Party Congress opens"},
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Served:
    """A uvicorn server in a thread, serving `app` on 127.0.0.1 until `stop`."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = _free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, name="dashboard-test-server", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def dashboard_app(data: Path, calendar: list[dict[str, Any]] | None = None) -> Any:
    """The app as the contract with `wallwatch serve` has it: a store, a calendar, the router."""
    from fastapi import FastAPI

    from wallwatch.analysis.store import Store
    from wallwatch.web.dashboard import router

    app = FastAPI()
    app.state.store = Store(data)
    app.state.calendar = calendar if calendar is not None else CALENDAR
    app.include_router(router)
    return app


@pytest.fixture(scope="session")
def dashboard_data(replay_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("dashboard") / "data"
    shutil.copytree(replay_data, target)
    return target


@pytest.fixture(scope="session")
def dashboard(dashboard_data: Path) -> Iterator[str]:
    served = Served(dashboard_app(dashboard_data))
    try:
        yield served.url
    finally:
        served.stop()


# Module scope, not session: while playwright's sync API is open it holds an asyncio loop running in
# this thread, and any later test's asyncio.run (the probe's nettests) would fail.
@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"Debian's chromium is not installed at {CHROMIUM} (scripts/install.sh installs it)")
    playwright_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with playwright_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1300, "height": 900}, accept_downloads=True)
        context.outside = []  # type: ignore[attr-defined]

        def only_loopback(route: Any) -> None:
            url = route.request.url
            if url.startswith(("http://127.0.0.1:", "data:", "blob:", "about:")):
                route.continue_()
            else:
                context.outside.append(url)  # type: ignore[attr-defined]
                route.abort()

        context.route("**/*", only_loopback)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser_context: Any, tmp_path: Path) -> Iterator[Any]:
    """A fresh tab; on the way out it checks nothing outside loopback was asked for."""
    tab = browser_context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    tab.errors = errors  # type: ignore[attr-defined]
    try:
        yield tab
    finally:
        tab.close()
    assert browser_context.outside == [], f"the page asked for something outside loopback: {browser_context.outside}"
    assert errors == [], f"JavaScript errors: {errors}"


def screenshot(page: Any, tmp_path: Path, name: str) -> Path:
    """A full-page screenshot under the test's own temp dir (looked at by a person, as a journalist would)."""
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    return path
