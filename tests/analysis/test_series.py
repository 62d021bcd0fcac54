"""Dense hourly/daily series from a real store (Parquet + DuckDB)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from wallwatch.analysis.series.build import (
    DAILY,
    HOURLY,
    SeriesError,
    SeriesRequest,
    build_and_store,
    read_series,
    series_summary,
)
from wallwatch.analysis.store import VERDICTS_SCHEMA, Store

T0 = datetime(2024, 3, 4)


def verdict(uid: str, hour: float, probe: str, verdict: str = "ok", method: str | None = None,
            cc: str = "XA", asn: int = 64500, feature: str = "text", target: str | None = None,
            share: float | None = None) -> dict:
    moment = T0 + timedelta(hours=hour)
    return {
        "measurement_uid": uid, "measurement_start_time": moment, "date": moment.date(), "probe_cc": cc,
        "probe_asn": asn, "probe_network_name": f"Net {asn}", "probe_key": probe, "test_name": "whatsapp",
        "software_name": "wallwatch", "service": "whatsapp", "feature": feature, "target": target,
        "verdict": verdict, "method": method, "confidence": 0.9, "rule_id": f"r.{method or verdict}",
        "rules_version": "1", "blocked_share": share,
    }


@pytest.fixture
def store(tmp_path: Path) -> Store:
    rows = [
        verdict("m1", 0.1, "p1"),
        verdict("m2", 0.5, "p1"),  # same probe again in the hour: one probe
        verdict("m3", 0.7, "p2", "blocked", "tls_sni"),
        # One measurement, two targets, one blocked: one blocked measurement, one probe.
        verdict("m4", 1.2, "p3", "blocked", "dns", target="a"),
        verdict("m4", 1.2, "p3", "ok", target="b"),
        verdict("m5", 1.4, "p4", "down"),
        verdict("m6", 1.5, "p5", "down"),
        verdict("m7", 4.2, "p1", "unknown"),
        verdict("m8", 26.0, "p1"),
        verdict("m9", 2.0, "p7", cc="XB", asn=64600),
    ]
    result = Store(tmp_path / "data")
    result.write("verdicts", pa.Table.from_pylist(rows, schema=VERDICTS_SCHEMA))
    return result


def _rows(table: pa.Table, **match) -> list[dict]:
    return [row for row in table.to_pylist() if all(row[k] == v for k, v in match.items())]


def test_hourly_grid_is_dense_and_counts_distinct_probes(store: Store) -> None:
    hourly, daily, build = build_and_store(store)
    xa = _rows(hourly, probe_cc="XA")
    assert [row["hour"] for row in xa] == [T0 + timedelta(hours=h) for h in range(27)]
    first, second = xa[0], xa[1]
    assert (first["n_measurements"], first["n_probes"], first["n_probes_blocked"]) == (3, 2, 1)
    assert first["blocked_tls_sni"] == 1 and first["blocked_share"] == 0.5 and first["state"] == "blocked"
    assert first["example_blocked_uid"] == "m3"
    # m4 has one blocked and one ok target: one measurement, blocked by dns, probe both ok and blocked.
    assert (second["n_measurements"], second["n_blocked"], second["blocked_dns"]) == (3, 1, 1)
    assert (second["n_probes_decisive"], second["n_probes_down"], second["state"]) == (1, 2, "down")
    # Attempts blocked inside the blocked measurements: m3's one target; m4's one of two.
    assert (first["attempt_blocked_share"], second["attempt_blocked_share"]) == (1.0, 0.5)
    empty = xa[2]
    assert (empty["n_measurements"], empty["state"], empty["blocked_share"]) == (0, "insufficient", None)
    assert empty["attempt_blocked_share"] is None
    assert xa[4]["n_unknown"] == 1 and xa[4]["state"] == "insufficient"
    # XB's series spans XB's own data (one hour), not XA's: another country's data changes nothing.
    assert len(_rows(hourly, probe_cc="XB")) == 1
    assert build.n_series == 2 and build.hourly_rows == 28
    assert [row["day"].date() for row in _rows(daily, probe_cc="XA")] == [date(2024, 3, 4), date(2024, 3, 5)]
    assert _rows(daily, probe_cc="XA")[0]["n_probes"] == 5  # p1..p5


def test_series_are_stored_and_rebuilding_is_idempotent(store: Store) -> None:
    build_and_store(store)
    build_and_store(store)
    stored = read_series(store, "hour")
    assert stored.num_rows == 28
    assert set(store.datasets()) >= {HOURLY, DAILY}
    assert read_series(store, "day", countries=["XB"]).num_rows == 1
    connection = store.connect()
    try:
        (blocked,) = connection.execute(f"SELECT sum(n_blocked) FROM {HOURLY}").fetchall()[0]
    finally:
        connection.close()
    assert blocked == 2


def test_window_and_country_filters(store: Store) -> None:
    request = SeriesRequest(start=T0, end=T0 + timedelta(hours=5), countries=("XA",))
    hourly, _, build = build_and_store(store, request)
    assert build.n_series == 1 and hourly.num_rows == 6
    assert sum(hourly.column("n_measurements").to_pylist()) == 7


def test_partial_state_and_min_probes(tmp_path: Path) -> None:
    rows = [verdict(f"m{i}", 0.1 * i, f"p{i}", "blocked" if i < 2 else "ok", "dns" if i < 2 else None)
            for i in range(8)]
    store = Store(tmp_path / "d")
    store.write("verdicts", pa.Table.from_pylist(rows, schema=VERDICTS_SCHEMA))
    hourly, _, _ = build_and_store(store)
    assert hourly.column("state").to_pylist() == ["partial"]
    strict, _, _ = build_and_store(store, SeriesRequest(min_probes=10))
    assert strict.column("state").to_pylist() == ["insufficient"]


def test_attempt_share_tells_on_and_off_from_comprehensive_blocking(tmp_path: Path) -> None:
    """Two probes blocked every hour; the probe's own `blocked_share` says how much of each
    measurement's attempts were: about half on day one ("on and off"), all on day two."""
    rows = [verdict("a1", 1, "p1", "blocked", "protocol_dpi", share=0.47),
            verdict("b1", 1.5, "p2", "blocked", "protocol_dpi", share=0.53),
            verdict("c1", 2, "p3", share=0.0),
            verdict("a2", 25, "p1", "blocked", "protocol_dpi", share=1.0),
            verdict("b2", 25.5, "p2", "blocked", "protocol_dpi", share=1.0)]
    store = Store(tmp_path / "d")
    store.write("verdicts", pa.Table.from_pylist(rows, schema=VERDICTS_SCHEMA))
    _, daily, _ = build_and_store(store)
    assert [(r["state"], r["n_blocked"], round(r["attempt_blocked_share"], 2)) for r in daily.to_pylist()] == [
        ("blocked", 2, 0.5), ("blocked", 2, 1.0)]


def test_verdicts_stored_before_the_share_column_still_build(tmp_path: Path) -> None:
    rows = [verdict("m1", 0.1, "p1", "blocked", "dns", target="a"), verdict("m1", 0.1, "p1", "ok", target="b"),
            verdict("m1", 0.1, "p1", "ok", target="c"), verdict("m1", 0.1, "p1", "ok", target="d")]
    old = pa.Table.from_pylist(rows, schema=VERDICTS_SCHEMA).drop(["blocked_share"])
    directory = tmp_path / "d" / "verdicts" / "date=2024-03-04"
    directory.mkdir(parents=True)
    import pyarrow.parquet as pq

    pq.write_table(old.drop(["date"]), directory / "part-0.parquet")
    hourly, _, _ = build_and_store(Store(tmp_path / "d"))
    assert hourly.column("attempt_blocked_share").to_pylist() == [0.25]


def test_bad_requests_are_clear_errors(store: Store) -> None:
    with pytest.raises(SeriesError, match="two upper-case"):
        build_and_store(store, SeriesRequest(countries=("xa; drop",)))
    with pytest.raises(SeriesError, match="before it starts"):
        build_and_store(store, SeriesRequest(start=T0 + timedelta(days=2), end=T0))


def test_empty_store_gives_empty_series(tmp_path: Path) -> None:
    hourly, daily, build = build_and_store(Store(tmp_path / "empty"))
    assert hourly.num_rows == daily.num_rows == build.n_series == 0
    assert "state" in hourly.column_names


def test_summary_per_series(store: Store) -> None:
    hourly, _, _ = build_and_store(store)
    (xa,) = [row for row in series_summary(hourly) if row["probe_cc"] == "XA"]
    assert (xa["buckets"], xa["with_data"], xa["measurements"], xa["blocked"], xa["down"]) == (27, 4, 8, 1, 1)
    assert xa["last_state"] == "ok"


# -- the sparse-aware grid: long silences fold into one gap row -------------------------------


def _unfold(rows: list[dict], grain: str = "hour") -> list[datetime]:
    step = timedelta(hours=1) if grain == "hour" else timedelta(days=1)
    return [row[grain] + step * i for row in rows for i in range(row["n_buckets"])]


@pytest.fixture
def sparse_store(tmp_path: Path) -> Store:
    """XA measured at hour 0-1, 10 days later, then 60 days later; XB once, in the middle."""
    rows = [verdict("a1", 0.2, "p1"), verdict("a2", 1.3, "p2", "blocked", "dns"),
            verdict("a3", 10 * 24 + 5.5, "p1"), verdict("a4", 70 * 24 + 3.1, "p1"),
            verdict("b1", 40 * 24 + 0.5, "p7", cc="XB", asn=64600)]
    result = Store(tmp_path / "sparse")
    result.write("verdicts", pa.Table.from_pylist(rows, schema=VERDICTS_SCHEMA))
    return result


def test_long_silences_fold_into_one_gap_row_and_nothing_is_lost(sparse_store: Store) -> None:
    hourly, daily, build = build_and_store(sparse_store)
    window = [T0 + timedelta(hours=h) for h in range(70 * 24 + 4)]
    # Unfolding gives the fully dense grid of the country's window, bucket for bucket.
    assert _unfold(_rows(hourly, probe_cc="XA")) == window
    assert _unfold(_rows(hourly, probe_cc="XB")) == [T0 + timedelta(hours=40 * 24)]
    xa = _rows(hourly, probe_cc="XA")
    # The 10-day silence is short: dense. The 60-day one keeps 48 h each side and one gap row.
    gaps = [row for row in xa if row["n_buckets"] > 1]
    assert len(gaps) == 1
    (gap,) = gaps
    assert gap["hour"] == T0 + timedelta(hours=10 * 24 + 5 + 49)
    assert gap["n_buckets"] == (70 * 24 + 3) - (10 * 24 + 5) - 1 - 2 * 48
    assert (gap["state"], gap["n_measurements"], gap["n_probes"], gap["blocked_share"]) == ("insufficient", 0, 0, None)
    assert len(xa) == (10 * 24 + 5 + 1) + 48 + 1 + 48 + 1
    # XB: one measurement in the middle of XA's 70-day window: XB's own window is that one hour.
    xb = _rows(hourly, probe_cc="XB")
    assert len(xb) == 1
    assert build.hourly_rows == len(xa) + len(xb) < len(window) // 4
    # Days fold the same way, with a margin of two days.
    assert _unfold(_rows(daily, probe_cc="XA"), "day") == [T0 + timedelta(days=d) for d in range(71)]
    summary = {row["probe_cc"]: row for row in series_summary(hourly)}
    assert summary["XA"]["buckets"] == len(window) and summary["XA"]["with_data"] == 4
    assert summary["XA"]["insufficient"] == len(window) - 4 and summary["XA"]["blocked"] == 1


def test_dense_gap_limit_is_a_parameter(sparse_store: Store) -> None:
    dense, _, _ = build_and_store(sparse_store, SeriesRequest(max_dense_gap=timedelta(days=100)))
    assert set(dense.column("n_buckets").to_pylist()) == {1}
    assert dense.num_rows == (70 * 24 + 4) + 1
    tight, _, _ = build_and_store(sparse_store, SeriesRequest(max_dense_gap=timedelta(days=5),
                                                              gap_margin=timedelta(hours=6)))
    assert len([n for n in tight.column("n_buckets").to_pylist() if n > 1]) == 2  # XA's two long silences
    with pytest.raises(SeriesError, match="twice gap_margin"):
        build_and_store(sparse_store, SeriesRequest(max_dense_gap=timedelta(hours=10)))


def test_real_ooni_samples_span_nine_years_in_a_few_thousand_rows(samples_dir: Path, data_dir: Path) -> None:
    from wallwatch.analysis.ingest.pipeline import ingest

    ingest([samples_dir], data_dir)
    store = Store(data_dir)
    hourly, daily, build = build_and_store(store)
    assert (build.end - build.start) > timedelta(days=8 * 365) and build.n_series >= 10
    # Each country's window: its first to its last measured hour (Italy's spans seven years).
    connection = store.connect()
    windows = {cc: int((last - first).total_seconds() // 3600) + 1 for cc, first, last in connection.execute(
        "SELECT probe_cc, date_trunc('hour', min(measurement_start_time)), "
        "date_trunc('hour', max(measurement_start_time)) FROM verdicts GROUP BY probe_cc").fetchall()}
    connection.close()
    assert windows["IT"] > 7 * 365 * 24
    # Every series accounts for every hour of its country's window, folded; the grid stays small.
    per_series: dict[tuple, int] = {}
    for row in hourly.select(["probe_cc", "probe_asn", "service", "feature", "n_buckets"]).to_pylist():
        key = (row["probe_cc"], row["probe_asn"], row["service"], row["feature"])
        per_series[key] = per_series.get(key, 0) + row["n_buckets"]
    assert all(total == windows[cc] for (cc, *_), total in per_series.items())
    assert hourly.num_rows < 200 * build.n_series and daily.num_rows < 20 * build.n_series


def test_a_countrys_series_and_events_do_not_depend_on_other_countries(tmp_path: Path) -> None:
    """XA's block is still on at its last measurement; XB measured once, a month later. XA's grid
    must span XA's own data: when it ran to XB's last hour (the folder's window), XA gained a
    month of trailing silence and the detector closed XA's block for it ("closed by silence"),
    so adding another country's data changed what XA's series said."""
    from wallwatch.analysis.events.grouping import detect_events

    xa = [verdict(f"a{p}-{h}", h + 0.1 * p, f"p{p}", "blocked" if h >= 24 else "ok", "dns" if h >= 24 else None)
          for p in range(3) for h in range(4 * 24)]
    results = {}
    for name, rows in (("alone", xa), ("with XB", [*xa, verdict("b1", 40 * 24, "q1", cc="XB", asn=64600)])):
        store = Store(tmp_path / name)
        store.write("verdicts", pa.Table.from_pylist(rows, schema=VERDICTS_SCHEMA))
        hourly, daily, _ = build_and_store(store)
        events = [e for e in detect_events(hourly) if e.probe_cc == "XA"]
        results[name] = (_rows(hourly, probe_cc="XA"), _rows(daily, probe_cc="XA"),
                         [e.to_record() for e in events])
    assert results["alone"] == results["with XB"]
    (event,) = results["alone"][2]
    assert event["end"] is None and event["evidence"]["closed_by_silence"] == []
    # Each country's grid spans its own first to last measurement.
    assert results["alone"][0][-1]["hour"] == T0 + timedelta(hours=4 * 24 - 1)


def test_countries_rebuilt_alone_over_their_windows_get_the_rows_of_a_whole_rebuild(sparse_store: Store) -> None:
    """What the live pipeline relies on (web/live.py): a country's rows depend only on its own
    verdicts and window, and a grid started later (a bounded rebuild) has the whole build's rows
    from the day its series can change on."""
    import pyarrow.compute as pc

    from wallwatch.analysis.series.build import build_for_countries, build_series

    connection = sparse_store.connect()
    try:
        windows = {cc: (lo, hi) for cc, lo, hi in connection.execute(
            "SELECT probe_cc, min(measurement_start_time), max(measurement_start_time) FROM verdicts "
            "GROUP BY probe_cc").fetchall()}
        for grain in ("hour", "day"):
            whole = build_series(connection, grain)
            for cc in ("XA", "XB"):
                alone = build_for_countries(connection, grain, {cc: windows[cc]})
                assert alone.equals(whole.filter(pc.equal(whole.column("probe_cc"), cc))), (grain, cc)
            both = build_for_countries(connection, grain, windows)
            assert both.equals(whole), grain
            # XA's grid started REACH (web/live.py: 14 days + 48 h + 1 day) before its last measured
            # day, 70: from that day on its rows are the whole build's (the silence before folds alike).
            reach = timedelta(days=14) + timedelta(hours=48) + timedelta(days=1)
            later = build_for_countries(connection, grain, {"XA": (T0 + timedelta(days=70) - reach, windows["XA"][1])})
            day = pa.scalar((T0 + timedelta(days=70)).date(), pa.date32())
            xa = whole.filter(pc.and_(pc.equal(whole.column("probe_cc"), "XA"), pc.greater_equal(whole.column("date"), day)))
            assert xa.num_rows and later.filter(pc.greater_equal(later.column("date"), day)).equals(xa), grain
    finally:
        connection.close()
