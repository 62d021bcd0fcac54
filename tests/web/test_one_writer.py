"""One writer per data folder: `serve`'s live pipeline and a batch `wallwatch ingest` never write the
same folder at once (docs/storage.md). The pipeline holds the store's writer lock for its life, so
an ingest into a running observatory's folder fails at once naming it; a pipeline started while
another writer holds the lock waits, while the collector keeps acknowledging into its WAL, and
catches up when the lock is free.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.web.observatory import REPO, Observatory, jsonl, timeline
from wallwatch.analysis.store import Store

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

START = dt.datetime(2017, 9, 20)


def _ingest(data: Path, path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200",
           "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-m", "wallwatch.cli", "ingest", str(path), "--data", str(data)],
                          capture_output=True, text=True, timeout=120, env=env)


def _stored(data: Path) -> int:
    store = Store(data)
    return store.read("measurements").num_rows if "measurements" in store.datasets() else 0


def test_batch_ingest_into_a_running_observatory_fails_naming_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    live, offline = timeline(START, 6, networks=(4134,)), timeline(START, 6, networks=(4837,))
    batch_file = tmp_path / "batch.jsonl"
    batch_file.write_bytes(jsonl(offline))
    with Observatory(data) as server:
        assert httpx.post(f"{server.url}/api/v1/measurements", content=jsonl(live), timeout=30).status_code == 200
        server.wait_idle()
        result = _ingest(data, batch_file)
        assert result.returncode == 3, (result.stdout[-2000:], result.stderr[-2000:])
        said = " ".join((result.stdout + result.stderr).split())
        assert "live pipeline" in said and "PID" in said, said
        assert _stored(data) == len(live)  # the refused ingest stored nothing
    # Once serve has stopped, the same command completes into the same datasets.
    result = _ingest(data, batch_file)
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-2000:])
    assert _stored(data) == len(live) + len(offline)


def test_pipeline_waits_for_another_writer_while_the_collector_acknowledges(tmp_path: Path) -> None:
    data = tmp_path / "data"
    measurements = timeline(START, 4, networks=(4134,))
    server = Observatory(data)
    started: list[BaseException | None] = []

    def start() -> None:
        try:
            server.start(timeout=90)
            started.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            started.append(exc)

    store = Store(data)
    with store.writer():  # another writer (a long batch ingest) holds the folder
        thread = threading.Thread(target=start, daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline, server.log_text()[-3000:]
            try:
                status = httpx.get(f"{server.url}/api/v1/status", timeout=2).json()
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert not (status["pipeline"] or {}).get("ready"), status
        response = httpx.post(f"{server.url}/api/v1/measurements", content=jsonl(measurements), timeout=30)
        assert response.status_code == 200, response.text  # durable in the WAL, not yet in the store
        time.sleep(1.0)
        assert _stored(data) == 0
        assert "waits for it" in server.log_text(), server.log_text()[-3000:]
    try:
        thread.join(90)
        assert started == [None], started
        server.wait_idle()
        assert _stored(data) == len(measurements)
    finally:
        server.stop()
