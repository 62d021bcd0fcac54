"""The SQL behind `series`: one place, portable subset (SELECT/JOIN/GROUP BY/CASE/date_trunc).

Densifying uses a grid-plan *table* handed in by the caller (which buckets of
each series are rows, `series.grid_plan`) rather than a generator function
(DuckDB `range`, ClickHouse `numbers`), so the same text runs on either
engine. Counts of measurements and probes are DISTINCT because `verdicts`
holds one row per measurement x service x feature x target.
"""

from __future__ import annotations

# One blocked_<method> column per method, in stage order; one throttled_<kind> per kind; the states.
from wallwatch.vocabulary import METHODS, THROTTLINGS, State

SERIES_KEY = ("probe_cc", "probe_asn", "service", "feature")


def _method_flags() -> str:
    known = ", ".join(f"'{method}'" for method in METHODS)
    flags = [
        f"max(CASE WHEN verdict = 'blocked' AND method = '{method}' THEN 1 ELSE 0 END) AS blocked_{method}"
        for method in METHODS
    ]
    flags.append(
        "max(CASE WHEN verdict = 'blocked' AND (method IS NULL OR method NOT IN "
        f"({known})) THEN 1 ELSE 0 END) AS blocked_other"
    )
    return ",\n         ".join(flags)


def _throttling_flags() -> str:
    return ",\n           ".join(
        f"max(CASE WHEN verdict = 'throttled' AND method = '{kind}' THEN 1 ELSE 0 END) AS throttled_{kind}"
        for kind in THROTTLINGS)


def _method_sums() -> str:
    return ", ".join(f"sum(blocked_{method}) AS blocked_{method}" for method in (*METHODS, "other"))


def _throttling_sums() -> str:
    return ", ".join(f"sum(throttled_{kind}) AS throttled_{kind}" for kind in THROTTLINGS)


def _attempt_share(with_probe_share: bool) -> str:
    """A measurement's share of blocked attempts: the probe's own where the verdict row carries
    it (wallwatch), else the share of its blocked targets among the decisive ones (OONI's rows
    are per endpoint). `attempt_share_weight` sums it over blocked measurements."""
    probe_share = "max(blocked_share)" if with_probe_share else "NULL"
    return f"coalesce({probe_share}, avg(CASE verdict WHEN 'blocked' THEN 1.0 WHEN 'ok' THEN 0.0 END))"


def aggregate_sql(grain: str, where: str, *, with_attempt_share: bool = True) -> str:
    """Sparse counts per series and `grain` ('hour' or 'day') bucket from `verdicts`.

    Three plain GROUP BYs instead of many COUNT(DISTINCT CASE ...), each only
    summing or taking maxima:

    1. per measurement: its status is the strongest of its targets' verdicts
       (blocked > throttled > ok > down > unknown): one blocked target makes it
       blocked; a throttled one, reachable but slowed, is decisive like ok;
    2. per probe: how many of its measurements had each status;
    3. per bucket: probe counts, and `blocked_weight`, the sum over decisive
       probes of the share of their decisive measurements that were blocked;
       `throttled_weight` the same for throttled measurements.

    `blocked_weight` is what the detector counts as "blocked probes": each probe
    weighs one whatever its cadence, a probe measuring every five minutes at 2%
    noise weighs ~0.02 (not "blocked at least once": 22% of its hours), and
    blocking of 30% of attempts still shows as 0.3 per probe.

    `attempt_share_weight` is the other axis: inside each *blocked* measurement, the
    share of the feature's attempts that were blocked (`_attempt_share`), summed. A
    rule firing on every flow gives 1 per blocked measurement; "on and off" blocking
    (a probability per flow) gives less, which a share of probes cannot show when one
    probe measures once a day. `with_attempt_share=False` for verdicts stored before
    the `blocked_share` column existed (targets' verdicts only).
    """
    if grain not in ("hour", "day"):
        raise ValueError(f"grain must be 'hour' or 'day', got {grain!r}")
    return f"""
SELECT probe_cc, probe_asn, service, feature, bucket,
       max(probe_network_name) AS probe_network_name,
       sum(n_measurements) AS n_measurements,
       count(*) AS n_probes,
       sum(CASE WHEN m_ok + m_blocked + m_throttled > 0 THEN 1 ELSE 0 END) AS n_probes_decisive,
       sum(CASE WHEN m_blocked > 0 THEN 1 ELSE 0 END) AS n_probes_blocked,
       sum(CASE WHEN m_throttled > 0 THEN 1 ELSE 0 END) AS n_probes_throttled,
       sum(CASE WHEN m_ok > 0 THEN 1 ELSE 0 END) AS n_probes_ok,
       sum(CASE WHEN m_down > 0 THEN 1 ELSE 0 END) AS n_probes_down,
       sum(CASE WHEN m_ok + m_blocked + m_throttled > 0
                THEN CAST(m_blocked AS DOUBLE) / (m_ok + m_blocked + m_throttled) ELSE 0 END) AS blocked_weight,
       sum(CASE WHEN m_ok + m_blocked + m_throttled > 0
                THEN CAST(m_throttled AS DOUBLE) / (m_ok + m_blocked + m_throttled) ELSE 0 END) AS throttled_weight,
       sum(m_ok) AS n_ok, sum(m_blocked) AS n_blocked, sum(m_throttled) AS n_throttled, sum(m_down) AS n_down,
       sum(m_unknown) AS n_unknown,
       sum(m_attempt_share) AS attempt_share_weight,
       {_method_sums()},
       {_throttling_sums()},
       min(example_blocked_uid) AS example_blocked_uid,
       min(example_throttled_uid) AS example_throttled_uid
FROM (
  SELECT probe_cc, probe_asn, service, feature, bucket, probe_key,
         max(probe_network_name) AS probe_network_name,
         count(*) AS n_measurements,
         sum(CASE WHEN status = 3 THEN 1 ELSE 0 END) AS m_ok,
         sum(CASE WHEN status = 5 THEN 1 ELSE 0 END) AS m_blocked,
         sum(CASE WHEN status = 4 THEN 1 ELSE 0 END) AS m_throttled,
         sum(CASE WHEN status = 2 THEN 1 ELSE 0 END) AS m_down,
         sum(CASE WHEN status = 1 THEN 1 ELSE 0 END) AS m_unknown,
         sum(CASE WHEN status = 5 THEN attempt_share ELSE 0.0 END) AS m_attempt_share,
         {_method_sums()},
         {_throttling_sums()},
         min(example_blocked_uid) AS example_blocked_uid,
         min(example_throttled_uid) AS example_throttled_uid
  FROM (
    SELECT probe_cc, probe_asn, service, feature, date_trunc('{grain}', measurement_start_time) AS bucket,
           probe_key, measurement_uid,
           max(probe_network_name) AS probe_network_name,
           max(CASE verdict WHEN 'blocked' THEN 5 WHEN 'throttled' THEN 4 WHEN 'ok' THEN 3 WHEN 'down' THEN 2
               ELSE 1 END) AS status,
           {_attempt_share(with_attempt_share)} AS attempt_share,
           {_method_flags()},
           {_throttling_flags()},
           min(CASE WHEN verdict = 'blocked' THEN measurement_uid END) AS example_blocked_uid,
           min(CASE WHEN verdict = 'throttled' THEN measurement_uid END) AS example_throttled_uid
    FROM verdicts
    WHERE {where}
    GROUP BY probe_cc, probe_asn, service, feature, date_trunc('{grain}', measurement_start_time),
             probe_key, measurement_uid
  ) AS per_measurement
  GROUP BY probe_cc, probe_asn, service, feature, bucket, probe_key
) AS per_probe
GROUP BY probe_cc, probe_asn, service, feature, bucket
"""


def window_sql(where: str) -> str:
    """Each country's first and last measurement: the window its series span."""
    return (f"SELECT probe_cc, min(measurement_start_time), max(measurement_start_time) FROM verdicts "
            f"WHERE {where} GROUP BY probe_cc ORDER BY probe_cc")


def dense_sql(min_probes: int) -> str:
    """The planned buckets of every series, empty ones zero-filled and marked 'insufficient'.

    The caller registers `series_sparse` (the result of `aggregate_sql`) and
    `series_plan` (series key, bucket, n_buckets: `series.grid_plan`); a plan
    row with `n_buckets` > 1 is a gap row standing for a long silence.
    `blocked_share` is blocked_weight / decisive probes (throttled_share
    likewise). `state` says what the bucket shows: 'down' when more probes saw
    the service down than saw it work, throttled or blocked (an outage, not
    censorship), 'insufficient' below `min_probes` decisive probes, 'blocked'
    from a share of one half, 'partial' from a fifth (OONI's hourly median is a
    step at 50% and hides partial blocking: ooni/data
    docs/implementation-plan.md §3.6), 'throttled' when not blocked but half
    the probes saw it slowed, else 'ok'. Blocking comes first: a feature cut
    for some is worse news than one slowed for others.
    """
    zero = [
        "n_measurements", "n_probes", "n_probes_decisive", "n_probes_blocked", "n_probes_throttled", "n_probes_ok",
        "n_probes_down", "n_ok", "n_blocked", "n_throttled", "n_down", "n_unknown",
        *(f"blocked_{method}" for method in METHODS), "blocked_other",
        *(f"throttled_{kind}" for kind in THROTTLINGS),
    ]
    filled = ",\n       ".join(f"COALESCE(agg.{col}, 0) AS {col}" for col in zero)
    return f"""
WITH keys AS (
  SELECT probe_cc, probe_asn, service, feature, max(probe_network_name) AS probe_network_name
  FROM series_sparse GROUP BY probe_cc, probe_asn, service, feature
),
grid AS (
  SELECT plan.probe_cc, plan.probe_asn, plan.service, plan.feature, keys.probe_network_name,
         plan.bucket, plan.n_buckets
  FROM series_plan AS plan JOIN keys
    ON keys.probe_cc = plan.probe_cc AND keys.probe_asn = plan.probe_asn
   AND keys.service = plan.service AND keys.feature = plan.feature
),
dense AS (
  SELECT grid.probe_cc, grid.probe_asn, grid.probe_network_name, grid.service, grid.feature,
         grid.bucket,
       {filled},
       COALESCE(agg.blocked_weight, 0.0) AS blocked_weight,
       COALESCE(agg.throttled_weight, 0.0) AS throttled_weight,
       COALESCE(agg.attempt_share_weight, 0.0) AS attempt_share_weight,
       agg.example_blocked_uid,
       agg.example_throttled_uid,
       grid.n_buckets
  FROM grid LEFT JOIN series_sparse AS agg
    ON agg.probe_cc = grid.probe_cc AND agg.probe_asn = grid.probe_asn
   AND agg.service = grid.service AND agg.feature = grid.feature AND agg.bucket = grid.bucket
)
SELECT *,
       CASE WHEN n_probes_decisive > 0 THEN blocked_weight / n_probes_decisive END AS blocked_share,
       CASE WHEN n_probes_decisive > 0 THEN throttled_weight / n_probes_decisive END AS throttled_share,
       CASE WHEN n_blocked > 0 THEN attempt_share_weight / n_blocked END AS attempt_blocked_share,
       CASE WHEN n_probes_down > n_probes_decisive THEN '{State.DOWN.value}'
            WHEN n_probes_decisive < {int(min_probes)} OR n_probes_decisive = 0 THEN '{State.INSUFFICIENT.value}'
            WHEN 2 * blocked_weight >= n_probes_decisive THEN '{State.BLOCKED.value}'
            WHEN 5 * blocked_weight >= n_probes_decisive THEN '{State.PARTIAL.value}'
            WHEN 2 * throttled_weight >= n_probes_decisive THEN '{State.THROTTLED.value}'
            ELSE '{State.OK.value}' END AS state
FROM dense
ORDER BY probe_cc, probe_asn, service, feature, bucket
"""


SUMMARY_COLUMNS = (
    "probe_cc", "probe_asn", "probe_network_name", "service", "feature", "buckets", "with_data",
    "measurements", "blocked", "partial", "throttled", "down", "insufficient", "max_blocked_share", "last_state",
)


def summary_sql(grain: str) -> str:
    """Per-series summary of a registered `series_grid` (arg_max: ClickHouse argMax).

    `buckets` and `insufficient` count the buckets gap rows stand for, so they
    are the same as on a fully dense grid.
    """
    return f"""
SELECT probe_cc, probe_asn, max(probe_network_name), service, feature,
       sum(n_buckets), sum(CASE WHEN n_measurements > 0 THEN 1 ELSE 0 END), sum(n_measurements),
       sum(CASE WHEN state = 'blocked' THEN 1 ELSE 0 END),
       sum(CASE WHEN state = 'partial' THEN 1 ELSE 0 END),
       sum(CASE WHEN state = 'throttled' THEN 1 ELSE 0 END),
       sum(CASE WHEN state = 'down' THEN 1 ELSE 0 END),
       sum(CASE WHEN state = 'insufficient' THEN n_buckets ELSE 0 END),
       max(blocked_share),
       arg_max(state, {grain})
FROM series_grid
GROUP BY probe_cc, probe_asn, service, feature
ORDER BY probe_cc, service, feature, probe_asn
"""


def network_volume_sql() -> str:
    """Measurements per network and hour from a registered `series_grid` (hourly rows).

    Per service the most-measured feature (a measurement covers several
    features of its service), summed over services: the same volume the
    volume-collapse detector watches (`events._volume_segments`).
    `n_buckets` > 1 only where every series of the network is in a gap row.
    """
    return """
SELECT probe_cc, probe_asn, max(probe_network_name) AS probe_network_name, hour,
       CAST(sum(n_measurements) AS BIGINT) AS n_measurements,
       min(n_buckets) AS n_buckets
FROM (
  SELECT probe_cc, probe_asn, service, hour, max(probe_network_name) AS probe_network_name,
         max(n_measurements) AS n_measurements, min(n_buckets) AS n_buckets
  FROM series_grid
  GROUP BY probe_cc, probe_asn, service, hour
) AS per_service
GROUP BY probe_cc, probe_asn, hour
ORDER BY probe_cc, probe_asn, hour
"""
