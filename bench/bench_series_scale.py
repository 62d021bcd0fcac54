"""Series and events over millions of verdict rows, on one machine with DuckDB: is it enough?

    .venv/bin/python bench/bench_series_scale.py [--rows 1000000,5000000] [--days 90]

Writes synthetic verdict rows into a store (`Store.write`, the datasets ingest writes), then times
what `wallwatch series` and `wallwatch events` do over them: `build_and_store` (the hourly and daily
grids, DuckDB over the Parquet files, and their Parquet writes), `detect_events` (the CUSUM
detector, series by series, in Python) and `add_rule_evidence` (DuckDB).

The rows: 20 countries x 5 networks x 20 probes each, six service/features (whatsapp text and
media, telegram, signal, facebook_messenger text, web page over 50 URLs), uniform over `--days`
days; 3% of measurements blocked at random plus, in 4 countries, one service blocked on every
network for a week (so the detector has events to find and group).

A year of OONI's archive is ~500 M measurements (bench_cluster.py's docstring gives the
sources), ~1.2 verdict rows each on the mixed corpus (web_connectivity: one; the IM tests: one per
feature), so ~600 M verdict rows; the printed projection scales the measured time linearly to it.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

VERDICT_ROWS_PER_YEAR = 600_000_000

SYNTHETIC = """
WITH base AS (
  SELECT i,
         hash(i) AS h,
         TIMESTAMP '2024-01-01' + to_seconds(CAST(hash(i * 7 + 1) % ({days} * 86400) AS BIGINT)) AS t,
         ['AF','BY','CN','CU','EG','ET','IN','IR','KZ','MM','MY','PK','RU','SA','SY','TH','TM','TR','VE','VN']
           [1 + CAST(hash(i * 3 + 2) % 20 AS INTEGER)] AS cc,
         CAST(hash(i * 5 + 3) % 5 AS INTEGER) AS net,
         CAST(hash(i * 11 + 4) % 6 AS INTEGER) AS sf
  FROM range({rows}) r(i)
), judged AS (
  SELECT *,
         (['whatsapp','whatsapp','telegram','signal','facebook_messenger','web'])[sf + 1] AS service,
         (['text','media','text','text','text','page'])[sf + 1] AS feature,
         (cc IN ('CN','IR','RU','TM') AND sf = 0 AND t BETWEEN TIMESTAMP '2024-01-20' AND TIMESTAMP '2024-01-27')
           OR h % 100 < 3 AS is_blocked
  FROM base
)
SELECT 'u' || i AS measurement_uid, t AS measurement_start_time, CAST(t AS DATE) AS date, cc AS probe_cc,
       CAST(1000 + net AS INTEGER) AS probe_asn, 'AS' || (1000 + net) AS probe_network_name,
       'probe:' || cc || '-' || net || '-' || CAST(hash(i * 13 + 5) % 20 AS INTEGER) AS probe_key,
       CASE WHEN service = 'web' THEN 'web_connectivity' ELSE service END AS test_name,
       'ooniprobe-android' AS software_name, service, feature,
       CASE WHEN service = 'web' THEN 'https://site' || CAST(hash(i * 17 + 6) % 50 AS INTEGER) || '.example/'
            ELSE NULL END AS target,
       CASE WHEN is_blocked THEN 'blocked' ELSE 'ok' END AS verdict,
       CASE WHEN is_blocked THEN 'tcp_reset' ELSE NULL END AS method,
       CAST(0.9 AS FLOAT) AS confidence, 'bench.synthetic' AS rule_id, 'bench/1' AS rules_version,
       CAST(NULL AS FLOAT) AS blocked_share, false AS confirmed, NULL AS fingerprint, NULL AS fingerprint_scope,
       NULL AS fingerprint_location, NULL AS fingerprint_found_in, NULL AS probe_fault
FROM judged
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1000000,5000000")
    parser.add_argument("--days", type=int, default=90)
    args = parser.parse_args()
    import duckdb

    from wallwatch.analysis.events.grouping import add_rule_evidence, detect_events
    from wallwatch.analysis.rows import VERDICTS_SCHEMA
    from wallwatch.analysis.series.build import build_and_store
    from wallwatch.analysis.store import Store

    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
    for rows in (int(n) for n in args.rows.split(",")):
        with tempfile.TemporaryDirectory(prefix="ww-bench-series-") as tmp:
            store = Store(Path(tmp) / "data")
            start = time.perf_counter()
            table = duckdb.sql(SYNTHETIC.format(rows=rows, days=args.days)).to_arrow_table()
            table = table.cast(VERDICTS_SCHEMA)
            store.write("verdicts", table, mode="append")
            del table
            made = time.perf_counter() - start
            start = time.perf_counter()
            hourly, _daily, build = build_and_store(store)
            series_s = time.perf_counter() - start
            start = time.perf_counter()
            events = detect_events(hourly)
            detect_s = time.perf_counter() - start
            start = time.perf_counter()
            connection = store.connect()
            try:
                add_rule_evidence(connection, events)
            finally:
                connection.close()
            evidence_s = time.perf_counter() - start
        total = series_s + detect_s + evidence_s
        print(f"{rows:>11,} verdict rows ({made:.0f} s to make): series {series_s:6.1f} s ({build.hourly_rows:,} "
              f"hourly rows, {build.n_series:,} series), detect {detect_s:6.1f} s ({len(events)} events), "
              f"evidence {evidence_s:5.1f} s; {rows / total:,.0f} rows/s -> a year "
              f"(~{VERDICT_ROWS_PER_YEAR / 1e6:.0f} M rows) ~{VERDICT_ROWS_PER_YEAR / (rows / total) / 3600:.1f} h")


if __name__ == "__main__":
    main()
