"""Test helpers for the observatory: a real `wallwatch serve` in a subprocess, and measurements to feed it.

`Observatory` runs `python -m wallwatch.cli serve` on 127.0.0.1 and a free port over a data
folder, waits until it answers (and, with the live pipeline, until the pipeline has caught up),
and can be stopped with SIGTERM or killed with SIGKILL. `wallwatch_measurement` makes a small
wallwatch-format measurement whose features carry the verdicts given (the probe's own, which
the pipeline keeps), so a test can write a censorship timeline measurement by measurement.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson

REPO = Path(__file__).resolve().parents[2]
FEATURES = ("text", "media", "calls")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Observatory:
    def __init__(self, data: Path, *, live: bool = True, args: Sequence[str] = (), log: Path | None = None,
                 port: int | None = None) -> None:
        self.data = data
        self.live = live
        self.args = list(args)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = log or data.parent / f"serve-{self.port}.log"

    def start(self, timeout: float = 60.0) -> Observatory:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO),
                                                             os.environ.get("PYTHONPATH", "")])}
        # Segments sealed every 0.1 s (the default is 0.5 s): tests wait less for each cycle.
        commit = [] if "--commit-seconds" in self.args else ["--commit-seconds", "0.1"]
        command = [sys.executable, "-m", "wallwatch.cli", "serve", "--data", str(self.data), "--port",
                   str(self.port), "--live" if self.live else "--no-live", *commit, *self.args]
        with self.log.open("ab") as sink:
            self.process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited with {self.process.returncode}:\n{self.log_text()[-4000:]}")
            try:
                status = httpx.get(f"{self.url}/api/v1/status", timeout=2).json()
                if not self.live or (status["pipeline"] and status["pipeline"]["ready"]):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"serve did not come up in {timeout} s:\n{self.log_text()[-4000:]}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def status(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/api/v1/status", timeout=5).json()

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Until everything accepted so far has gone through the pipeline (see /api/v1/status)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status()
            wal, pipeline = status["wal"], status["pipeline"]
            if (wal["open_bytes"] == 0 and wal["segments_waiting"] == 0 and pipeline["ready"]
                    and wal["last_sealed"] in (None, pipeline["last_segment"])):
                return
            time.sleep(0.03)
        raise TimeoutError(f"the live pipeline did not catch up in {timeout} s:\n{self.log_text()[-4000:]}")

    def stop(self, timeout: float = 30.0) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(10)

    def kill(self) -> None:
        """SIGKILL the serve process alone (its pipeline must die with it: PR_SET_PDEATHSIG)."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def __enter__(self) -> Observatory:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wallwatch_measurement(*, when: dt.datetime, probe_cc: str = "CN", probe_asn: int = 4134, probe: str = "p1",
                          blocked: Mapping[str, str] | None = None, down: Sequence[str] = (), seq: int = 0,
                          network_name: str = "CHINANET", extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A wallwatch whatsapp measurement taken at `when` whose features are ok except `blocked`
    (feature -> method) and `down`; `probe` is its probe_id, `seq` keeps report ids distinct."""
    blocked = dict(blocked or {})
    features = {}
    for feature in FEATURES:
        if feature in blocked:
            verdict = {"verdict": "blocked", "method": blocked[feature], "confidence": 0.9,
                       "rule": f"wa.{feature}.blocked", "blocked_share": 1.0}
        elif feature in down:
            verdict = {"verdict": "down", "method": None, "confidence": 0.8, "rule": f"wa.{feature}.down"}
        else:
            verdict = {"verdict": "ok", "method": None, "confidence": 1.0, "rule": "feature.all_ok"}
        features[feature] = verdict
    stamp = when.strftime("%Y-%m-%d %H:%M:%S")
    return {
        "annotations": {"probe_id": probe, "engine_name": "wallwatch", "platform": "linux"},
        "data_format_version": "0.2.0",
        "input": None,
        "measurement_start_time": stamp,
        "probe_asn": f"AS{probe_asn}",
        "probe_cc": probe_cc,
        "probe_ip": "127.0.0.1",
        "probe_network_name": network_name,
        "report_id": f"{when:%Y%m%dT%H%M%SZ}_whatsapp_{probe_cc}_{probe_asn}_n1_{probe}x{seq:08d}",
        "resolver_ip": "198.19.0.53",
        "software_name": "wallwatch",
        "software_version": "0.1.0",
        "test_keys": {"x_wallwatch": {"rules_version": "wallwatch-whatsapp-verdicts/1", "features": features},
                      **(extra or {})},
        "test_name": "whatsapp",
        "test_runtime": 1.5,
        "test_start_time": stamp,
        "test_version": "0.1.0",
    }


def timeline(start: dt.datetime, hours: int, *, probes: int = 3, networks: Sequence[int] = (4134, 4837),
             blocked_from: Mapping[int, int] | None = None, feature: str = "text", method: str = "protocol_dpi",
             probe_cc: str = "CN") -> list[dict[str, Any]]:
    """Hourly measurements from `probes` probes per network; `blocked_from[asn]` = the hour from
    which that network's `feature` is blocked (a block that spreads network by network)."""
    blocked_from = dict(blocked_from or {})
    out, seq = [], 0
    for hour in range(hours):
        when = start + dt.timedelta(hours=hour)
        for asn in networks:
            for probe in range(probes):
                seq += 1
                blocked = {feature: method} if asn in blocked_from and hour >= blocked_from[asn] else None
                out.append(wallwatch_measurement(when=when + dt.timedelta(minutes=probe), probe_cc=probe_cc,
                                                 probe_asn=asn, probe=f"{asn}-{probe}", blocked=blocked, seq=seq))
    return out


def jsonl(measurements: Sequence[Mapping[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(m) + b"\n" for m in measurements)


def wal_lines(data: Path) -> list[dict[str, Any]]:
    """Every measurement line in the write-ahead log (sealed and open segments)."""
    for _ in range(10):  # a segment renamed (sealed) between listing and reading: list again
        lines: list[dict[str, Any]] = []
        try:
            # In write order: the name after open-/sealed- is the segment's creation time.
            for segment in sorted((data / "_live" / "wal").glob("*.jsonl"), key=lambda p: p.name.split("-", 1)[1]):
                lines += [orjson.loads(line) for line in segment.read_bytes().splitlines() if line.strip()]
        except FileNotFoundError:
            continue
        return lines
    raise RuntimeError("the WAL kept changing while being read")


class WebhookReceiver:
    """A local HTTP endpoint that records every POST (arrival time, headers, body); the first
    `fail_first` requests, or all when `always_fail`, are answered 500."""

    def __init__(self, *, fail_first: int = 0, always_fail: bool = False) -> None:
        import http.server
        import threading

        self.received: list[dict[str, Any]] = []
        self.fail_first = fail_first
        self.always_fail = always_fail
        self.requests = 0
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.requests += 1
                if receiver.always_fail or receiver.requests <= receiver.fail_first:
                    self.send_response(500)
                    self.end_headers()
                    return
                receiver.received.append({"at": time.time(), "headers": {k.lower(): v for k, v in self.headers.items()},
                                          "body": body, "json": orjson.loads(body)})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.received)
