"""The live pipeline's series, refreshed batch by batch, are always those a whole rebuild would write.

Verdicts arrive in batches (in time order, late, after silences longer than the dense-gap limit,
on new series, on several countries at once); after each batch the store's hourly and daily
series are compared with `build_series` over everything so far. Each refresh scope is exercised:
everything (the window's edges moved), whole countries, and countries from a date on.
"""

from __future__ import annotations

import contextlib
import random
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from wallwatch.analysis.series.build import SeriesRequest, build_series, read_series
from wallwatch.analysis.store import VERDICTS_SCHEMA
from wallwatch.web.live import LiveSeries, _RecordingStore

T0 = datetime(2024, 3, 4)


def _verdicts(rng: random.Random, hours: list[float], cc: str, asn: int, feature: str, seq: list[int]) -> list[dict]:
    rows = []
    for hour in hours:
        seq[0] += 1
        moment = T0 + timedelta(hours=hour)
        verdict = rng.choice(["ok", "ok", "blocked", "down"])
        rows.append({
            "measurement_uid": f"m{seq[0]}", "measurement_start_time": moment, "date": moment.date(), "probe_cc": cc,
            "probe_asn": asn, "probe_network_name": f"Net {asn}", "probe_key": f"p{rng.randrange(4)}",
            "test_name": "whatsapp", "software_name": "wallwatch", "service": "whatsapp", "feature": feature,
            "target": None, "verdict": verdict, "method": "tls_sni" if verdict == "blocked" else None,
            "confidence": 0.9, "rule_id": "r", "rules_version": "1", "blocked_share": None})
    return rows


def _whole(store: _RecordingStore, grain: str) -> pa.Table:
    with contextlib.closing(store.connect()) as connection:
        table = build_series(connection, grain, SeriesRequest())
    keys = ["probe_cc", "probe_asn", "service", "feature", grain]
    return table.sort_by([(k, "ascending") for k in keys])


def test_each_refresh_leaves_the_series_a_whole_rebuild_would(tmp_path: Path) -> None:
    rng = random.Random(20170920)
    store = _RecordingStore(tmp_path / "data")
    series = LiveSeries(store)
    seq = [0]
    batches = [
        # (hours, country, asn, feature)
        ([0, 1, 2, 5, 30], "XA", 1, "text"),
        ([3, 4], "XB", 2, "text"),                       # a second country, inside the window
        ([5, 24 * 30], "XB", 2, "media"),                # a series silent for 30 days (the window grows)
        ([6, 7, 8], "XA", 1, "text"),                    # more of the same series, inside the window
        ([7.5], "XA", 1, "media"),                       # a new series
        ([30.5, 31, 29], "XA", 1, "text"),               # the last hour again, and one before it
        ([24 * 20], "XB", 2, "text"),                    # the window's end moves 19 days on
        ([24 * 19 + 3, 24 * 19 + 4], "XB", 2, "text"),   # inside, after a silence longer than 14 days
        ([24 * 19 + 5], "XA", 1, "text"),                # the other country, after its own long silence
        ([24 * 10], "XA", 1, "text"),                    # late data in the middle of that silence
        ([24 * 20 - 2, 24 * 20 - 1], "XB", 2, "text"),   # rebuilt from day 19 on: XB media's silence
                                                         # reaches across that day and folds the same
        ([24 * 19 + 6], "XA", 3, "text"),                # a new network
    ]
    # One batch over two countries: one with history (bounded), one new (whole).
    batches.append(([24 * 20 - 3], "XB", 2, "text", [([24 * 5, 24 * 6], "XC", 9, "text")]))
    scopes = []
    for hours, cc, asn, feature, *more in batches:
        rows = _verdicts(rng, hours, cc, asn, feature, seq)
        for extra in (more[0] if more else []):
            rows += _verdicts(rng, *extra, seq)
        table = pa.Table.from_pylist(rows, schema=VERDICTS_SCHEMA)
        store.write("verdicts", table, mode="append")
        touched = store.take_touched()
        with contextlib.closing(store.connect()) as connection:
            if series.windows is None:
                series.load(connection)
                series.refresh(connection, None)
            else:
                series.refresh(connection, touched)
        scopes.append(series.last_scope)
        for grain in ("hour", "day"):
            stored = read_series(store, grain)
            whole = _whole(store, grain)
            assert stored.num_rows == whole.num_rows, (hours, cc, grain, series.last_scope)
            assert stored.select(whole.column_names).cast(whole.schema).equals(whole), (hours, cc, grain,
                                                                                        series.last_scope)
            assert series.tables[grain].num_rows == whole.num_rows
    assert "all" in scopes and any("whole:" in s for s in scopes) and any("since" in s for s in scopes), scopes
    assert scopes[-1] == "whole:XC since 2024-03-23:XB", scopes
    # The stored series hold no date a whole rebuild does not have (stale dates are dropped).
    dates = set(pc.unique(read_series(store, "hour").column("date")).to_pylist())
    assert dates == set(pc.unique(_whole(store, "hour").column("date")).to_pylist())
