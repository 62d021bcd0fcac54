"""`wallwatch monitor`: nettests on a schedule with jitter, a durable spool while the collector is away,
drained in order when it is back, and a clean stop on SIGTERM.

The nettest is the real openvpn one aimed at a closed port on loopback (no network beyond this
machine; a refused handshake is a real measurement, made in a fraction of a second).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from tests.web.observatory import REPO, Observatory, free_port, wal_lines
from wallwatch.probe.measurement import Stamp
from wallwatch.probe.monitor import Monitor, parse_duration
from wallwatch.probe.nettests import NETTESTS
from wallwatch.probe.settings import ProbeSettings
from wallwatch.probe.submit import CollectorClient, Spool

pytestmark = [pytest.mark.timeout(120)]

TARGET = "openvpn://lo/?address=127.0.0.1:9&transport=tcp"


def _spooled(spool: Path) -> list[dict]:
    """The measurements still waiting in a spool (read as the monitor would: from its offset)."""
    path, offset_path = spool / "spool.jsonl", spool / "spool.offset"
    if not path.exists():
        return []
    offset = int(offset_path.read_text() or 0) if offset_path.exists() else 0
    data = path.read_bytes()
    return [orjson.loads(line) for line in data[offset if offset <= len(data) else 0:].splitlines() if line.strip()]


def _wait(condition, timeout: float = 30.0, what: str = "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def test_monitor_spools_while_the_collector_is_away_then_drains_in_order_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    spool = tmp_path / "spool"
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("WALLWATCH_LAB", None)
    monitor = subprocess.Popen(
        [sys.executable, "-m", "wallwatch.cli", "monitor", "openvpn", "--collector", f"http://127.0.0.1:{port}",
         "--every", "0.5s", "--jitter", "0.2", "--spool", str(spool), "--timeout", "0.3", "--target", TARGET,
         "--probe-cc", "CN", "--probe-asn", "AS4134"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        _wait(lambda: len(_spooled(spool)) >= 3, what="the monitor did not spool while the collector was away")
        with Observatory(tmp_path / "data", live=False, port=port) as server:
            _wait(lambda: not _spooled(spool) and len(wal_lines(server.data)) >= 3, what="spool not drained")
            time.sleep(1.2)  # a round or two more, submitted as they come
            monitor.send_signal(signal.SIGTERM)
            code = monitor.wait(20)
            stored = wal_lines(server.data)
    finally:
        if monitor.poll() is None:
            monitor.kill()
    err = monitor.stderr.read().decode() if monitor.stderr else ""
    assert code == 0, err[-3000:]
    assert "stopped after" in err and "0 left in" in err, err[-2000:]
    assert _spooled(spool) == []
    # In the order they were measured, each once, with the stamp given.
    starts = [m["measurement_start_time"] for m in stored]
    assert starts == sorted(starts)
    assert len({m["report_id"] for m in stored}) == len(stored) >= 4
    assert {(m["test_name"], m["probe_cc"], m["probe_asn"]) for m in stored} == {("openvpn", "CN", "AS4134")}


def _measure(name: str) -> dict:
    return NETTESTS[name].run_once(ProbeSettings(), Stamp(probe_cc="CN", probe_asn="AS4134"), step_timeout=0.3,
                                   targets=[TARGET])


def test_rounds_keep_their_period_with_jitter(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    started: list[float] = []
    try:
        monitor = Monitor(["openvpn"], lambda name: (started.append(time.monotonic()), _measure(name))[1],
                          CollectorClient("http://127.0.0.1:9"), spool, every=0.4, jitter=0.25, retry=0.1,
                          rounds=6, rng=random.Random(7))
        stats = monitor.run()
    finally:
        spool.close()
    assert (stats.rounds, stats.measured, stats.sent) == (6, 6, 0) and stats.last_error  # collector never there
    assert len(_spooled(tmp_path / "spool")) == 6
    # Anchored: round n starts within 0.25 x 0.4 s of n x 0.4 s after the first round's anchor ...
    offsets = [moment - started[0] for moment in started]
    for n, offset in enumerate(offsets):
        assert abs(offset - n * 0.4) <= 0.1 + 0.1 + 0.05, offsets  # jitter of both rounds + scheduling slack
    # ... and the gaps are not all the period: the jitter is there.
    gaps = [b - a for a, b in zip(started, started[1:])]
    assert max(gaps) - min(gaps) > 0.02, gaps


def test_a_refused_measurement_is_set_aside_and_the_rest_go_in_order(tmp_path: Path) -> None:
    good = [_measure("openvpn") for _ in range(3)]
    bad = {**_measure("openvpn"), "probe_cc": "cn"}  # the collector wants two upper-case letters
    spool = Spool(tmp_path / "spool")
    try:
        for measurement in (good[0], bad, good[1], good[2]):
            spool.append(measurement)
        with Observatory(tmp_path / "data", live=False) as server:
            result = spool.drain(CollectorClient(server.url), batch=10)
            stored = wal_lines(server.data)
    finally:
        spool.close()
    assert (result.sent, result.rejected, result.error) == (3, 1, None)
    assert [m["report_id"] for m in stored] == [m["report_id"] for m in good]
    (rejected,) = [orjson.loads(line) for line in (tmp_path / "spool" / "rejected.jsonl").read_bytes().splitlines()]
    assert rejected["measurement"]["report_id"] == bad["report_id"] and "probe_cc" in rejected["reason"]
    assert _spooled(tmp_path / "spool") == []


def test_durations() -> None:
    assert [parse_duration(t) for t in ("15m", "1h30m", "90s", "0.5s", "2", "1h")] == [900, 5400, 90, 0.5, 2, 3600]
    for text in ("", "soon", "-5", "0", "5d"):
        with pytest.raises(ValueError):
            parse_duration(text)


def test_a_spool_has_one_monitor(tmp_path: Path) -> None:
    first = Spool(tmp_path / "spool")
    try:
        with pytest.raises(RuntimeError, match="another monitor"):
            Spool(tmp_path / "spool")
    finally:
        first.close()
