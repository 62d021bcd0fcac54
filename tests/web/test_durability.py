"""Nothing acknowledged is lost, nothing is stored twice: `serve` killed with SIGKILL mid-run, twice.

Clients submit continuously (each a distinct measurement, retried after a failure as a probe
would); the server process is SIGKILLed while requests are in flight and the live pipeline is
ingesting, then restarted on the same data folder, which replays its write-ahead log. At the
end every acknowledged uid is stored, once, with its verdicts, and the killed server left no
pipeline process behind.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from pathlib import Path

import httpx
import pyarrow.compute as pc
import pytest

from tests.web.observatory import Observatory, jsonl, wallwatch_measurement
from wallwatch.analysis.store import Store

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

START = dt.datetime(2017, 9, 20)


class Submitters:
    """`threads` clients, each POSTing one new measurement at a time to whatever `url` is now."""

    def __init__(self, url: str, threads: int = 4) -> None:
        self.url = url
        self.acked: list[str] = []
        self.failures = 0
        self.stop = threading.Event()
        self._seq = iter(range(10**9))
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(threads)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self, worker: int) -> None:
        with httpx.Client(timeout=10) as client:
            while not self.stop.is_set():
                with self._lock:
                    seq = next(self._seq)
                when = START + dt.timedelta(minutes=seq % 3000)
                body = jsonl([wallwatch_measurement(when=when, probe=f"w{worker}", seq=seq,
                                                    probe_asn=(4134, 4837, 9808)[seq % 3])])
                while not self.stop.is_set():  # the same body until acknowledged, as a probe retries
                    try:
                        response = client.post(f"{self.url}/api/v1/measurements", content=body)
                    except httpx.HTTPError:
                        self.failures += 1
                        time.sleep(0.05)
                        continue
                    if response.status_code == 200:
                        with self._lock:
                            self.acked.extend(response.json()["measurement_uids"])
                        break
                    self.failures += 1
                    time.sleep(0.05)


def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def test_acknowledged_measurements_survive_sigkill_and_are_stored_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = Observatory(data).start()
    clients = Submitters(server.url)
    clients.start()
    killed_pipelines = []
    try:
        for round_seconds in (2.0, 1.5):
            time.sleep(round_seconds)
            assert len(clients.acked) > 20, server.log_text()[-3000:]
            killed_pipelines.append(server.status()["pipeline"]["pid"])
            server.kill()  # SIGKILL to the serve process alone, requests in flight
            server = Observatory(data, log=server.log).start()
            clients.url = server.url
        time.sleep(1.0)
    finally:
        clients.join()
    try:
        server.wait_idle(60)
    finally:
        server.stop()
    for pid in killed_pipelines:  # each died with its serve (PR_SET_PDEATHSIG): never two writers
        assert _gone(pid), f"the pipeline {pid} of a killed serve is still running"
    store = Store(data)
    uids = store.read("measurements").column("measurement_uid")
    stored = uids.to_pylist()
    assert len(stored) == len(set(stored)), "a measurement was stored twice"
    missing = set(clients.acked) - set(stored)
    assert not missing, f"{len(missing)} acknowledged measurements lost (of {len(clients.acked)})"
    verdicts = store.read("verdicts")
    per_uid = pc.value_counts(verdicts.column("measurement_uid")).to_pylist()
    assert {row["counts"] for row in per_uid} == {3}  # text, media, calls: every stored one complete
    assert len(per_uid) == len(stored)
    assert clients.failures > 0  # the kills did interrupt requests
    assert os.listdir(data / "_live" / "wal") == []
