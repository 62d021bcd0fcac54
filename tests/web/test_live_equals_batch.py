"""Live = batch: the same measurements submitted to `serve` and ingested with `wallwatch ingest` end in
the same verdicts, series and events.

The live side gets them as an observatory would: in small batches over time (each one its own
pipeline cycle, touching one country or several, the data's window growing), a late batch of
old measurements (a monitor draining its spool), and a duplicate. The batch side is the CLI:
`wallwatch ingest`, `series`, `events`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest

from tests.web.observatory import REPO, Observatory, jsonl, timeline, wallwatch_measurement
from wallwatch.analysis.events.grouping import add_rule_evidence, detect_events
from wallwatch.analysis.events.lifecycle import replay_log
from wallwatch.analysis.series.build import read_series
from wallwatch.analysis.store import Store

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

START = dt.datetime(2017, 9, 18)


def _measurements() -> list[dict[str, Any]]:
    """China: WhatsApp text blocked on AS4134 from day 2, AS4837 joins on day 3, an ISP outage
    (down, not blocked) on AS9808; Iran: media blocked for a day then restored."""
    china = timeline(START, 5 * 24, networks=(4134, 4837, 9808), blocked_from={4134: 36, 4837: 60})
    for m in china:
        hour = int(m["measurement_start_time"][11:13])
        if m["probe_asn"] == "AS9808" and m["measurement_start_time"][:10] == "2017-09-20" and 8 <= hour < 14:
            m["test_keys"]["x_wallwatch"]["features"]["text"] = {
                "verdict": "down", "method": None, "confidence": 0.8, "rule": "wa.text.down"}
    iran = timeline(START + dt.timedelta(hours=12), 4 * 24, networks=(58224,), probes=2, probe_cc="IR",
                    feature="media", method="tls_sni", blocked_from={58224: 30})
    for m in iran:  # restored after a day
        if m["measurement_start_time"] >= "2017-09-20 18:00:00":
            m["test_keys"]["x_wallwatch"]["features"]["media"] = {
                "verdict": "ok", "method": None, "confidence": 1.0, "rule": "feature.all_ok"}
    return sorted(china + iran, key=lambda m: m["measurement_start_time"])


def _wallwatch(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "wallwatch.cli", *args], capture_output=True, text=True,
                            timeout=180, env={**os.environ, "COLUMNS": "200",
                                              "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    assert result.returncode == 0, (args, result.stdout[-2000:], result.stderr[-3000:])
    return result


def _sorted(table: pa.Table, keys: list[str], drop: tuple[str, ...] = ()) -> pa.Table:
    table = table.drop_columns([c for c in drop if c in table.column_names])
    return table.sort_by([(k, "ascending") for k in keys]).combine_chunks()


def _detected(data: Path) -> list[dict[str, Any]]:
    """What `wallwatch events --no-rebuild` finds over the folder's stored series."""
    store = Store(data)
    connection = store.connect()
    try:
        return [e.to_record() for e in add_rule_evidence(connection, detect_events(read_series(store, "hour")))]
    finally:
        connection.close()


def _lifecycle(data: Path, *, onsets: bool) -> set[tuple[Any, ...]]:
    """Each logged event's key, networks, end (and onset), as its log entries left it."""
    state = replay_log(Store(data).read_jsonl("events"))
    return {(*s.key, s.end.isoformat() if s.end else None, tuple(sorted(s.networks)))
            + ((s.snapshot["onset"],) if onsets else ()) for s in state.values()}


def test_live_submissions_and_batch_ingest_end_the_same(tmp_path: Path) -> None:
    measurements = _measurements()
    # Live: China in time order, a few hours at a time (each a cycle or a few; China's window grows,
    # so its series are rebuilt whole), then Iran's days (only Iran's series rebuilt), half a day of
    # one network's measurements arriving late (a monitor draining its spool) and a resubmission.
    live = tmp_path / "live"
    china = [m for m in measurements if m["probe_cc"] == "CN"]
    # Late: half a day of one network, inside China's window and inside that series' own span (a
    # country is rebuilt from a day on, not whole: its window's edges did not move).
    late = [m for m in china if m["probe_asn"] == "AS9808"
            and "2017-09-19 06:00:00" <= m["measurement_start_time"] < "2017-09-19 18:00:00"]
    china = [m for m in china if m not in late]
    iran = [m for m in measurements if m["probe_cc"] == "IR"]
    batches = ([china[i:i + 90] for i in range(0, len(china), 90)] + [iran[i:i + 48] for i in range(0, len(iran), 48)]
               + [late, china[:10]])
    with Observatory(live) as server:
        for index, batch_ in enumerate(batches):
            response = httpx.post(f"{server.url}/api/v1/measurements", content=jsonl(batch_), timeout=30)
            assert response.status_code == 200, response.text
            if index % 4 == 0:
                server.wait_idle()  # some cycles alone, others with several segments
            else:
                time.sleep(0.15)
        server.wait_idle()
    cycles = [json.loads(line) for line in (live / "_live" / "cycles.jsonl").read_text().splitlines()]
    # (how batches fall into cycles depends on the machine: test_live_series.py covers each scope on its own)
    assert len(cycles) >= 5 and any("since" in c["scope"] for c in cycles), cycles  # incremental ran

    # Batch: the same measurements from a file, through the CLI.
    batch = tmp_path / "batch"
    source = tmp_path / "measurements.jsonl"
    source.write_bytes(jsonl(measurements))
    _wallwatch("ingest", str(source), "--data", str(batch))
    _wallwatch("series", "--data", str(batch))
    _wallwatch("events", "--data", str(batch), "--no-rebuild")

    live_store, batch_store = Store(live), Store(batch)
    keys = ["measurement_uid", "service", "feature"]
    assert _sorted(live_store.read("verdicts"), keys).equals(_sorted(batch_store.read("verdicts"), keys))
    assert live_store.read("measurements").num_rows == len(measurements)
    for grain in ("hour", "day"):
        columns = ["probe_cc", "probe_asn", "service", "feature", grain]
        assert _sorted(read_series(live_store, grain), columns).equals(_sorted(read_series(batch_store, grain),
                                                                                columns)), grain
    detected = _detected(live)
    assert detected == _detected(batch)
    assert {(e["probe_cc"], e["service"], e["feature"]) for e in detected if e["type"] == "blocking"} == {
        ("CN", "whatsapp", "text"), ("IR", "whatsapp", "media")}
    # The log records what was known when: the same events, networks and ends. One thing differs by
    # design: while Iran's days arrived after China's, Iran looked silent (a volume collapse opened
    # on the 20th); its late data moved that collapse's onset to the 22nd, and the log, which appends
    # only lifecycle changes, keeps the onset it logged (docs/observatory.md, "What the log says").
    assert _lifecycle(live, onsets=False) == _lifecycle(batch, onsets=False)
    blocking = {e for e in _lifecycle(batch, onsets=True) if e[0] == "blocking"}
    assert blocking <= _lifecycle(live, onsets=True)
