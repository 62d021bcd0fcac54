"""A columnar ingest engine: DuckDB parses the records and SQL derives observations and verdicts.

`wallwatch ingest --engine columnar` (or `ingest(..., engine="columnar")`). The Python
path (ingest_worker.py) builds each record's rows in the interpreter; here the
per-record work runs in DuckDB's native code instead:

* ISA-L gunzips each file (faster than DuckDB's zlib), each non-blank line gets a
  `"__ww_line"` key spliced in, and DuckDB's `read_json` (yyjson, multithreaded)
  reads only the fields the extractors read, every leaf typed `JSON` so the SQL can
  check its JSON type exactly as the Python code's `isinstance` checks do (DuckDB's
  typed reads cast leniently: `false` -> 'false', "7" -> 7);
* observations are `UNNEST`s of `queries`/`tcp_connect`/`tls_handshakes`/`requests`
  joined as observations._Builder joins them (one registered row per (transaction_id, ip,
  port), ranks for repeated handshakes, round trips matched by transaction id, else by TLS
  server name, else by the URL's IP); verdict facts are `GROUP BY` aggregates and
  the YAML rules are compiled into one `CASE` cascade per rule set (`rules_sql`), each
  verdict still naming its `rule_id` and `rules_version`;
* pure scalar functions whose exact Python semantics matter (`classify`, `is_bogon`,
  `url_host`, `split_address`, the HTTP title and fingerprint) run in Python once per
  *distinct* value and are joined back as tables, as the fingerprints are.

The SQL covers an IM test (whatsapp, telegram, signal, facebook_messenger) whose leaves
have the expected JSON types and whose round trips all have a transaction id or none has
an address. Everything else (web_connectivity and the tunnels, wallwatch's own records,
odd leaf types, bad time or ASN, bad JSON, top-level arrays, `.json` documents, damaged
`.gz` files, a uid stored by both paths within one file) is routed explicitly to the
Python path, record by record or file by file, and counted in `ColumnarStats`; nothing is
approximated. The oracle test
(tests/analysis/test_ingest_columnar.py) diffs both engines' datasets row for row.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

from wallwatch.analysis.ingest import Ingester, IngestSummary, no_cyclic_gc
from wallwatch.analysis.ingest_worker import Batch, FileEnd, FileReader, _keep_raw_copy, read_chunks
from wallwatch.analysis.observations import _title, _url_port, classify, is_bogon, split_address, url_host
from wallwatch.analysis.store import MEASUREMENTS_SCHEMA, OBSERVATIONS_SCHEMA, VERDICTS_SCHEMA, Store
from wallwatch.analysis.verdicts import RuleSet

# The tests whose observations the SQL derives; the others take the Python path.
SQL_TESTS = ("whatsapp", "telegram", "signal", "facebook_messenger")
LINE_KEY = b'"__ww_line"'
# A DuckDB pass runs once this many records or bytes of JSON are pending: large enough that
# per-query costs vanish, small enough that the pass file (/dev/shm) and DuckDB's tables stay
# a few hundred MB (OONI web_connectivity records are 15-350 KB).
RECORDS_PER_PASS = 20_000
BYTES_PER_PASS = 128 * 1024 * 1024
# DuckDB's default cap is 16 MB per object; OONI's biggest are ~1 MB (ooni/data Readme).
MAX_OBJECT_BYTES = 256 * 1024 * 1024
# Failed reads of one pass before all its lines go to the Python path.
MAX_READ_RETRIES = 16
_LINE_HINT = re.compile(r"in line (\d+)")

_J = "JSON"
_COLUMNS = {
    "__ww_line": "BIGINT",
    **{key: _J for key in ("measurement_uid", "report_id", "input", "test_name", "test_version",
                           "measurement_start_time", "probe_cc", "probe_asn", "probe_network_name",
                           "software_name", "software_version", "data_format_version", "resolver_ip")},
    "annotations": f"STRUCT(probe_id {_J})",
    "test_keys": (
        f"STRUCT(queries STRUCT(hostname {_J}, engine {_J}, failure {_J}, "
        f"answers STRUCT(ipv4 {_J}, ipv6 {_J}, hostname {_J})[], transaction_id {_J}, "
        f"resolver_address {_J}, resolver_hostname {_J}, tags {_J})[], "
        f"tcp_connect {_J}, "
        f"tls_handshakes STRUCT(address {_J}, server_name {_J}, failure {_J}, tls_version {_J}, "
        f"transaction_id {_J}, tags {_J})[], "
        f"requests STRUCT(request STRUCT(url {_J}), response STRUCT(code {_J}, body {_J}, headers {_J}), "
        f"failure {_J}, transaction_id {_J}, address {_J}, tags {_J})[], "
        f"x_wallwatch {_J}, "
        + ", ".join(f"facebook_{k}_dns_consistent {_J}"
                    for k in ("b_api", "b_graph", "edge", "external_cdn", "scontent_cdn", "star", "stun"))
        + ")"
    ),
}


def _columns_sql() -> str:
    return "{" + ", ".join(f"'{name}': '{kind}'" for name, kind in _COLUMNS.items()) + "}"


@dataclass
class ColumnarStats:
    """Where each record went: SQL, or the Python path (and why)."""

    sql_records: int = 0
    python_records: int = 0  # records of the routed lines below
    python_files: int = 0  # whole files routed (not .jsonl[.gz], damaged gzip, DuckDB could not read)
    routed_lines: int = 0  # lines routed one by one (not an object, odd shape, other tests)

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


# -- SQL ----------------------------------------------------------------------------

_MACROS = r"""
CREATE OR REPLACE TEMP MACRO jtype(j) AS coalesce(json_type(j), 'NULL');
CREATE OR REPLACE TEMP MACRO jstr(j) AS CASE WHEN json_type(j) = 'VARCHAR' THEN json_extract_string(j, '$') END;
-- a string or null: what `isinstance(x, str)`-or-None code reads exactly
CREATE OR REPLACE TEMP MACRO str_ok(j) AS jtype(j) IN ('VARCHAR', 'NULL');
-- observations.failure_string: null/false/"" -> NULL, a string -> itself (other types: Python)
CREATE OR REPLACE TEMP MACRO fail_ok(j) AS jtype(j) IN ('VARCHAR', 'NULL') OR j::VARCHAR = 'false';
CREATE OR REPLACE TEMP MACRO fail(j) AS nullif(jstr(j), '');
CREATE OR REPLACE TEMP MACRO int_ok(j) AS jtype(j) IN ('BIGINT', 'UBIGINT', 'NULL');
CREATE OR REPLACE TEMP MACRO jint(j) AS CASE WHEN json_type(j) IN ('BIGINT', 'UBIGINT') THEN j::VARCHAR::HUGEINT END;
-- verdicts._counted and _is_timeout
CREATE OR REPLACE TEMP MACRO counted(f) AS f IS NOT NULL
    AND f NOT IN ('network_unreachable', 'host_unreachable', 'android_dns_cache_no_data');
CREATE OR REPLACE TEMP MACRO is_timeout(f) AS f IS NOT NULL AND (f IN ('generic_timeout_error',
    'connect_operation_timed_out', 'timeout') OR contains(f, 'timed_out') OR contains(f, 'timeout'));
"""

# One row per record: the header, and whether the SQL may derive its rows.
_RECORDS = r"""
CREATE OR REPLACE TEMP TABLE rec AS
WITH r AS (
  SELECT __ww_line AS gline, *, jstr(measurement_start_time) AS mst_s, jstr(probe_asn) AS asn_s,
         test_keys.tcp_connect AS tcp_json
  FROM raw
), h AS (
  SELECT *,
    jtype(test_name) = 'VARCHAR' AND jstr(test_name) IN ({sql_tests})
    AND test_keys IS NOT NULL AND jtype(test_keys.x_wallwatch) = 'NULL'
    AND str_ok(measurement_uid) AND str_ok(report_id) AND str_ok(input) AND str_ok(test_version)
    AND str_ok(probe_network_name) AND str_ok(software_name) AND str_ok(software_version)
    AND str_ok(data_format_version) AND str_ok(resolver_ip) AND str_ok(annotations.probe_id)
    AND coalesce(jstr(software_name), '') <> 'wallwatch'
    AND coalesce(regexp_full_match(left(mst_s, 19), '[0-9]{{4}}.[0-9]{{2}}.[0-9]{{2}}.[0-9]{{2}}.[0-9]{{2}}.[0-9]{{2}}')
                 AND left(mst_s, 4) <> '0000', false)
    AND (jtype(probe_asn) = 'NULL' OR (jtype(probe_asn) = 'BIGINT' AND jint(probe_asn) >= 0)
         OR (jtype(probe_asn) = 'VARCHAR' AND regexp_full_match(asn_s, '([aA][sS])?[0-9]{{1,18}}')))
    AND (tcp_json IS NULL OR json_type(tcp_json) = 'ARRAY') AS shape_ok,
    CASE WHEN jtype(probe_asn) = 'BIGINT' THEN jint(probe_asn)
         WHEN jtype(probe_asn) = 'VARCHAR' THEN try_cast(regexp_replace(asn_s, '^[aA][sS]', '') AS HUGEINT) END AS asn_n
  FROM r
)
SELECT gline, shape_ok,
  jstr(test_name) AS test_name, jstr(input) AS input,
  jstr(probe_network_name) AS probe_network_name, jstr(report_id) AS report_id,
  jstr(test_version) AS test_version, coalesce(nullif(jstr(software_name), ''), 'unknown') AS software_name,
  jstr(software_version) AS software_version, jstr(data_format_version) AS data_format_version,
  jstr(resolver_ip) AS resolver_ip,
  CASE WHEN jstr(annotations.probe_id) IS NOT NULL THEN 'probe:' || jstr(annotations.probe_id)
       WHEN coalesce(jstr(report_id), '') <> '' THEN 'report:' || jstr(report_id)
       ELSE 'unknown' END AS probe_key,
  CASE WHEN coalesce(jstr(measurement_uid), '') <> '' THEN jstr(measurement_uid)
       ELSE 'ww-' || left(sha256(concat_ws(chr(31), coalesce(jstr(report_id), ''), coalesce(jstr(input), ''),
            coalesce(mst_s, ''), coalesce(jstr(test_name), ''))), 32) END AS measurement_uid,
  CASE WHEN shape_ok THEN try(make_timestamp(
       mst_s[1:4]::BIGINT, mst_s[6:7]::BIGINT, mst_s[9:10]::BIGINT,
       mst_s[12:13]::BIGINT, mst_s[15:16]::BIGINT, mst_s[18:19]::DOUBLE)) END AS measurement_start_time,
  coalesce(nullif(jstr(probe_cc), ''), 'ZZ') AS probe_cc,
  CASE WHEN NOT shape_ok OR asn_n IS NULL OR asn_n >= 2147483648 THEN 0 ELSE asn_n END::INTEGER AS probe_asn,
  test_keys
FROM h
"""

_QUERIES = r"""
CREATE OR REPLACE TEMP TABLE q AS
SELECT gline, qi, q.hostname AS hj, q.engine AS ej, q.failure AS fj, q.answers AS answers, q.transaction_id AS tj,
       q.resolver_address AS raj, q.resolver_hostname AS rhj, q.tags AS tags
FROM (SELECT gline, unnest(range(len(test_keys.queries)::BIGINT)) AS qi, unnest(test_keys.queries) AS q
      FROM rec WHERE shape_ok AND len(test_keys.queries) > 0)
WHERE q IS NOT NULL;

CREATE OR REPLACE TEMP TABLE a AS
SELECT gline, qi, ai, jstr(a.ipv4) AS ipv4, jstr(a.ipv6) AS ipv6, jstr(a.hostname) AS ahost,
       str_ok(a.ipv4) AND str_ok(a.ipv6) AND str_ok(a.hostname) AS ok
FROM (SELECT gline, qi, unnest(range(len(answers)::BIGINT)) AS ai, unnest(answers) AS a FROM q WHERE len(answers) > 0)
WHERE a IS NOT NULL;

CREATE OR REPLACE TEMP TABLE tcp AS
SELECT gline, ti, t->'$.ip' AS ipj, t->'$.port' AS portj, t->'$.status' AS status,
       t->'$.transaction_id' AS tj, t->'$.tags' AS tags, json_type(t) = 'OBJECT' AS is_obj
FROM (SELECT gline, unnest(range(json_array_length(tcp_json)::BIGINT)) AS ti, unnest(json_extract(tcp_json, '$[*]')) AS t
      FROM (SELECT gline, test_keys.tcp_connect AS tcp_json FROM rec WHERE shape_ok)
      WHERE json_array_length(tcp_json) > 0);

CREATE OR REPLACE TEMP TABLE tls AS
SELECT gline, ti, t.address AS addrj, t.server_name AS snj, t.failure AS fj, t.tls_version AS vj,
       t.transaction_id AS tj, t.tags AS tags
FROM (SELECT gline, unnest(range(len(test_keys.tls_handshakes)::BIGINT)) AS ti, unnest(test_keys.tls_handshakes) AS t
      FROM rec WHERE shape_ok AND len(test_keys.tls_handshakes) > 0)
WHERE t IS NOT NULL;

CREATE OR REPLACE TEMP TABLE http AS
SELECT gline, ti, t.request.url AS urlj, t.response.code AS codej, t.response.body AS bodyj,
       t.response.headers AS headersj, t.failure AS fj, t.transaction_id AS tj, t.address AS addrj, t.tags AS tags
FROM (SELECT gline, unnest(range(len(test_keys.requests)::BIGINT)) AS ti, unnest(test_keys.requests) AS t
      FROM rec WHERE shape_ok AND len(test_keys.requests) > 0)
WHERE t IS NOT NULL;
"""

# Records whose events the SQL cannot join exactly as observations._Builder does.
_ODD = r"""
CREATE OR REPLACE TEMP TABLE odd AS
SELECT DISTINCT gline FROM (
  SELECT gline FROM q WHERE NOT (str_ok(hj) AND int_ok(tj) AND str_ok(raj) AND str_ok(rhj) AND fail_ok(fj)
                                 AND (jtype(ej) IN ('VARCHAR', 'NULL') OR ej::VARCHAR = 'false')
                                 AND jtype(tags) IN ('ARRAY', 'NULL'))
  UNION ALL SELECT gline FROM a WHERE NOT ok
  UNION ALL SELECT gline FROM tcp WHERE NOT is_obj OR NOT int_ok(tj) OR NOT str_ok(ipj) OR NOT int_ok(portj)
        OR jtype(status) NOT IN ('OBJECT', 'NULL') OR NOT fail_ok(status->'$.failure')
        OR jtype(status->'$.success') NOT IN ('BOOLEAN', 'NULL') OR jtype(tags) NOT IN ('ARRAY', 'NULL')
  UNION ALL SELECT gline FROM tls WHERE NOT int_ok(tj) OR NOT str_ok(addrj) OR NOT str_ok(snj) OR NOT fail_ok(fj)
        OR NOT str_ok(vj) OR jtype(tags) NOT IN ('ARRAY', 'NULL')
  UNION ALL SELECT gline FROM http WHERE NOT int_ok(tj) OR jtype(urlj) <> 'VARCHAR' OR NOT str_ok(addrj)
        OR NOT fail_ok(fj) OR NOT int_ok(codej) OR jtype(tags) NOT IN ('ARRAY', 'NULL')
  -- round trips either all without transaction id and address (old probes: matched by URL host)
  -- or all with a transaction id (matched by (transaction_id, ip, port)); a mix takes the Python path
  UNION ALL SELECT gline FROM http GROUP BY gline
        HAVING count(*) FILTER (WHERE jtype(tj) = 'NULL' AND jtype(addrj) = 'NULL') NOT IN (0, count(*))
            OR count(*) FILTER (WHERE jtype(tj) <> 'NULL') NOT IN (0, count(*))
  UNION ALL SELECT gline FROM rec WHERE shape_ok AND measurement_start_time IS NULL
);
UPDATE rec SET shape_ok = false WHERE gline IN (SELECT gline FROM odd);
DELETE FROM q WHERE gline IN (SELECT gline FROM odd);
DELETE FROM a WHERE gline IN (SELECT gline FROM odd);
DELETE FROM tcp WHERE gline IN (SELECT gline FROM odd);
DELETE FROM tls WHERE gline IN (SELECT gline FROM odd);
DELETE FROM http WHERE gline IN (SELECT gline FROM odd);
"""

# Records kept: shape_ok, first line of each uid, not stored before.
_KEEP = r"""
CREATE OR REPLACE TEMP TABLE keep AS
SELECT gline FROM (
  SELECT gline, measurement_uid, row_number() OVER (PARTITION BY measurement_uid ORDER BY gline) AS nth
  FROM rec WHERE shape_ok) k
WHERE nth = 1 AND measurement_uid NOT IN (SELECT uid FROM seen_uids);
"""

# observations._Builder.add_dns / _add_answers, one row per (tid, hostname or '', engine).
_DNS = r"""
CREATE OR REPLACE TEMP TABLE qv AS
SELECT gline, qi, jstr(hj) AS hostname, jint(tj)::BIGINT AS tid,
       coalesce(nullif(jstr(ej), ''), 'system') AS engine, fail(fj) AS failure,
       coalesce(nullif(jstr(raj), ''), jstr(rhj)) AS resolver, tags::VARCHAR AS tags
FROM q WHERE gline IN (SELECT gline FROM keep);

CREATE OR REPLACE TEMP TABLE av AS
SELECT gline, qi, ai,
  CASE WHEN ipv4 <> '' THEN ipv4 WHEN ipv6 <> '' THEN ipv6 ELSE ahost END AS value,
  coalesce(ipv4 <> '', false) OR coalesce(ipv6 <> '', false) AS is_ip
FROM a WHERE gline IN (SELECT gline FROM keep);

-- observations: ip_to_host.setdefault(ip, hostname) in query then answer order
CREATE OR REPLACE TEMP TABLE ip_host AS
SELECT av.gline, av.value AS ip, arg_min(qv.hostname, (av.qi, av.ai)) AS hostname
FROM av JOIN qv USING (gline, qi)
WHERE av.is_ip AND av.value IS NOT NULL AND coalesce(qv.hostname, '') <> ''
GROUP BY av.gline, av.value;

CREATE OR REPLACE TEMP TABLE dns_rows AS
WITH keyed AS (
  SELECT *, coalesce(hostname, '') AS hkey FROM qv
), firsts AS (
  SELECT gline, tid, hkey, engine, min(qi) AS first_qi,
         arg_min(failure, qi) FILTER (WHERE failure IS NOT NULL AND failure <> 'dns_no_answer') AS failure
  FROM keyed GROUP BY gline, tid, hkey, engine
), answers AS (
  SELECT k.gline, k.tid, k.hkey, k.engine,
         list(av.value ORDER BY av.qi, av.ai) AS answers,
         arg_min(fp.name, (av.qi, av.ai)) FILTER (WHERE fp.name IS NOT NULL) AS fingerprint,
         CASE WHEN count(*) FILTER (WHERE av.is_ip) > 0 THEN bool_or(b.bogon) FILTER (WHERE av.is_ip) END AS bogon
  FROM keyed k JOIN av ON av.gline = k.gline AND av.qi = k.qi
  LEFT JOIN dns_fp fp ON fp.pattern = av.value
  LEFT JOIN bogons b ON b.ip = av.value AND av.is_ip
  WHERE av.value IS NOT NULL
  GROUP BY k.gline, k.tid, k.hkey, k.engine
)
SELECT f.gline, f.first_qi, k.hostname, f.tid, f.engine, k.resolver, k.tags,
       coalesce(f.failure, CASE WHEN coalesce(len(an.answers), 0) = 0 THEN 'dns_no_answer' END) AS failure,
       coalesce(an.answers, []) AS answers, an.fingerprint, an.bogon
FROM firsts f
JOIN keyed k ON k.gline = f.gline AND k.qi = f.first_qi
LEFT JOIN answers an ON an.gline = f.gline AND an.tid IS NOT DISTINCT FROM f.tid AND an.hkey = f.hkey
                     AND an.engine = f.engine;
"""

# observations._Builder.add_tcp / add_tls / add_http, as joins and ranks.
_ENDPOINTS = r"""
CREATE OR REPLACE TEMP TABLE tcpv AS
SELECT gline, ti, jint(tj)::BIGINT AS tid, jstr(ipj) AS ip, jint(portj)::INTEGER AS port, tags::VARCHAR AS tags,
       fail(status->'$.failure') AS failure,
       CASE WHEN json_exists(status, '$.success') THEN coalesce((status->>'$.success') = 'true', false)
            ELSE fail(status->'$.failure') IS NULL END AS success
FROM tcp WHERE gline IN (SELECT gline FROM keep);

CREATE OR REPLACE TEMP TABLE tlsv AS
SELECT t.gline, t.ti, jint(t.tj)::BIGINT AS tid, s.ip, s.port, jstr(t.snj) AS server_name, fail(t.fj) AS failure,
       jstr(t.vj) AS tls_version, t.tags::VARCHAR AS tags,
       row_number() OVER (PARTITION BY t.gline, jint(t.tj), s.ip, s.port ORDER BY t.ti) AS key_rank
FROM tls t LEFT JOIN addresses s ON s.address IS NOT DISTINCT FROM jstr(t.addrj)
WHERE t.gline IN (SELECT gline FROM keep);

CREATE OR REPLACE TEMP TABLE httpv AS
SELECT t.gline, t.ti, jint(t.tj)::BIGINT AS tid, s.ip, s.port, jstr(t.urlj) AS url, u.host, u.url_port,
       fail(t.fj) AS failure, jint(t.codej)::INTEGER AS status, jstr(t.bodyj) AS body,
       t.headersj::VARCHAR AS headers, t.tags::VARCHAR AS tags
FROM http t LEFT JOIN addresses s ON s.address IS NOT DISTINCT FROM jstr(t.addrj)
LEFT JOIN url_hosts u ON u.url = jstr(t.urlj)
WHERE t.gline IN (SELECT gline FROM keep);

-- by_tid_addr: one registered row per (tid, ip, port) of tcp entries and handshakes, made by the
-- first of them; tcp fields from the last tcp entry (each overwrites), TLS from the first handshake.
CREATE OR REPLACE TEMP TABLE reg AS
WITH k AS (
  SELECT gline, tid, ip, port, 0 AS kind, ti, tags FROM tcpv
  UNION ALL SELECT gline, tid, ip, port, 1, ti, tags FROM tlsv WHERE key_rank = 1
), firsts AS (
  SELECT gline, tid, ip, port, arg_min({'kind': kind, 'ti': ti, 'tags': tags}, (kind, ti)) AS first
  FROM k GROUP BY gline, tid, ip, port
), last_tcp AS (
  SELECT gline, tid, ip, port, arg_max({'success': success, 'failure': failure}, ti) AS tcp
  FROM tcpv GROUP BY gline, tid, ip, port
)
SELECT f.gline, f.tid, f.ip, f.port, f.first.kind * 1000000 + f.first.ti AS ord, f.first.kind AS kind,
  f.first.tags AS tags, c.tcp.success AS tcp_success, c.tcp.failure AS tcp_failure,
  t.gline IS NOT NULL AS has_tls, t.ti AS tls_ti, t.server_name, t.failure AS tls_failure, t.tls_version,
  CASE WHEN f.ip IS NOT NULL AND f.ip <> '' THEN ih.hostname END AS dns_host
FROM firsts f
LEFT JOIN last_tcp c ON c.gline = f.gline AND c.tid IS NOT DISTINCT FROM f.tid
  AND c.ip IS NOT DISTINCT FROM f.ip AND c.port IS NOT DISTINCT FROM f.port
LEFT JOIN tlsv t ON t.key_rank = 1 AND t.gline = f.gline AND t.tid IS NOT DISTINCT FROM f.tid
  AND t.ip IS NOT DISTINCT FROM f.ip AND t.port IS NOT DISTINCT FROM f.port
LEFT JOIN ip_host ih ON ih.gline = f.gline AND ih.ip = f.ip;

-- Endpoint rows before the round trips: registered rows, and a fresh row for every further
-- handshake to an address that already has one (_fresh_endpoint).
CREATE OR REPLACE TEMP TABLE ep0 AS
SELECT gline, ord, tid, ip, port, tags,
  CASE WHEN kind = 0 THEN dns_host ELSE coalesce(server_name, dns_host) END AS class_host,
  tcp_success, tcp_failure, has_tls, server_name, tls_failure, tls_version
FROM reg
UNION ALL
SELECT gline, 1000000 + ti, tid, ip, port, tags, server_name, NULL, NULL, true, server_name, failure, tls_version
FROM tlsv WHERE key_rank > 1;

-- by_host: a server name -> the row of its first handshake.
CREATE OR REPLACE TEMP TABLE by_host AS
SELECT t.gline, t.server_name AS host, arg_min(CASE WHEN t.key_rank = 1 THEN r.ord ELSE 1000000 + t.ti END, t.ti) AS ord
FROM tlsv t LEFT JOIN reg r ON t.key_rank = 1 AND r.gline = t.gline AND r.tid IS NOT DISTINCT FROM t.tid
  AND r.ip IS NOT DISTINCT FROM t.ip AND r.port IS NOT DISTINCT FROM t.port
WHERE coalesce(t.server_name, '') <> ''
GROUP BY t.gline, t.server_name;

-- _http_row. With transaction ids: the first round trip per (tid, ip, port) takes that registered
-- row. Without (and without address): the first round trip per URL host takes by_host's row; the
-- others (and hosts with no handshake) take, in order, the tcp-only rows whose ip is the URL's host
-- and whose port is the URL's (_tcp_row_for_ip); what finds nothing makes a new row.
CREATE OR REPLACE TEMP TABLE http_claims AS
WITH h AS (
  SELECT httpv.*, tid IS NOT NULL AS with_tid,
    row_number() OVER (PARTITION BY gline, tid, ip, port ORDER BY ti) AS key_rank,
    row_number() OVER (PARTITION BY gline, host ORDER BY ti) AS host_rank
  FROM httpv
), first_pass AS (
  SELECT h.*,
    CASE WHEN h.with_tid AND h.key_rank = 1 THEN r.ord
         WHEN NOT h.with_tid AND coalesce(h.host, '') <> '' AND h.host_rank = 1 THEN b.ord END AS claimed
  FROM h
  LEFT JOIN reg r ON h.with_tid AND r.gline = h.gline AND r.tid = h.tid AND r.ip IS NOT DISTINCT FROM h.ip
    AND r.port IS NOT DISTINCT FROM h.port
  LEFT JOIN by_host b ON NOT h.with_tid AND b.gline = h.gline AND b.host = h.host
), by_ip AS (
  SELECT *, row_number() OVER (PARTITION BY gline, host, url_port ORDER BY ti) AS ip_rank
  FROM first_pass WHERE claimed IS NULL AND NOT with_tid AND coalesce(host, '') <> ''
), candidates AS (
  SELECT gline, ip, port, ord, row_number() OVER (PARTITION BY gline, ip, port ORDER BY ord) AS ip_rank
  FROM ep0 WHERE NOT has_tls AND ip IS NOT NULL AND port IS NOT NULL
)
SELECT f.gline, f.ti, f.tid, f.ip, f.port, f.url, f.host, f.failure, f.status, f.body, f.headers, f.tags,
  coalesce(f.claimed, c.ord) AS claimed
FROM first_pass f
LEFT JOIN by_ip b ON b.gline = f.gline AND b.ti = f.ti
LEFT JOIN candidates c ON c.gline = b.gline AND c.ip = b.host AND c.port = b.url_port AND c.ip_rank = b.ip_rank;

CREATE OR REPLACE TEMP TABLE ep AS
SELECT e.gline, e.ord, e.tid, e.ip, e.port, e.tags, e.class_host, coalesce(e.class_host, e.server_name) AS hostname,
  e.tcp_success, e.tcp_failure, CASE WHEN e.has_tls THEN coalesce(e.server_name, '') END AS tls_server_name,
  e.tls_failure, e.tls_version, c.url AS http_url, c.failure AS http_failure, c.status AS http_status,
  c.body, c.headers
FROM ep0 e LEFT JOIN http_claims c ON c.gline = e.gline AND c.claimed = e.ord
UNION ALL
SELECT gline, 2000000 + ti, tid, ip, port, tags, host, host, NULL, NULL, NULL, NULL, NULL, url, failure, status,
  body, headers
FROM http_claims WHERE claimed IS NULL;
"""

_OBSERVATIONS = r"""
CREATE OR REPLACE TEMP TABLE obs AS
WITH rows AS (
  SELECT d.gline, 0 AS part, d.first_qi AS pos, d.hostname, NULL::VARCHAR AS ip, NULL::INTEGER AS port,
         d.tid AS transaction_id, d.engine AS dns_engine, d.resolver AS dns_resolver, d.failure AS dns_failure,
         d.answers AS dns_answers, d.fingerprint AS dns_fingerprint, d.bogon AS dns_bogon,
         NULL::BOOLEAN AS tcp_success, NULL::VARCHAR AS tcp_failure, NULL::VARCHAR AS tls_server_name,
         NULL::VARCHAR AS tls_failure, NULL::VARCHAR AS tls_version, NULL::VARCHAR AS http_url,
         NULL::VARCHAR AS http_failure, NULL::INTEGER AS http_status, NULL::VARCHAR AS body,
         NULL::VARCHAR AS headers, d.hostname AS class_host, d.tags
  FROM dns_rows d
  UNION ALL
  SELECT e.gline, 1, e.ord, e.hostname, e.ip, e.port, e.tid, NULL, NULL,
         NULL, NULL, NULL, NULL, e.tcp_success, e.tcp_failure, e.tls_server_name, e.tls_failure, e.tls_version,
         e.http_url, e.http_failure, e.http_status, e.body, e.headers, e.class_host, e.tags
  FROM ep e
)
SELECT r.gline, rec.measurement_uid, rec.measurement_start_time, rec.measurement_start_time::DATE AS date,
  rec.probe_cc, rec.probe_asn, rec.test_name, c.service, c.feature, c.target,
  (row_number() OVER (PARTITION BY r.gline ORDER BY r.part, r.pos) - 1)::INTEGER AS observation_idx,
  r.hostname, r.ip, r.port, r.transaction_id, false AS is_control, r.dns_engine, r.dns_resolver, r.dns_failure,
  r.dns_answers, r.dns_fingerprint, r.dns_bogon, r.tcp_success, r.tcp_failure, r.tls_server_name, r.tls_failure,
  r.tls_version, r.http_url, r.http_failure, r.http_status, hf.body_length AS http_body_length,
  hf.title AS http_title, hf.fingerprint AS http_fingerprint, NULL::VARCHAR AS tunnel_failure,
  NULL::DOUBLE AS tunnel_bootstrap_s, NULL::BOOLEAN AS dns_ctrl_consistent, NULL::VARCHAR AS ctrl_dns_failure,
  NULL::BOOLEAN AS ctrl_tcp_success, NULL::VARCHAR AS ctrl_http_failure, NULL::INTEGER AS ctrl_http_status
FROM rows r JOIN rec USING (gline)
LEFT JOIN classes c ON c.test_name = rec.test_name AND c.input IS NOT DISTINCT FROM rec.input
  AND c.host IS NOT DISTINCT FROM r.class_host AND c.ip IS NOT DISTINCT FROM r.ip
  AND c.port IS NOT DISTINCT FROM r.port AND c.tags IS NOT DISTINCT FROM r.tags
LEFT JOIN http_facts hf ON r.http_url IS NOT NULL AND hf.body IS NOT DISTINCT FROM r.body
  AND hf.headers IS NOT DISTINCT FROM r.headers;
"""

# MeasurementFacts.any_network_success
_ONLINE = r"""
CREATE OR REPLACE TEMP TABLE online AS
SELECT gline, bool_or(ok) AS online FROM (
  SELECT gline, failure IN ('dns_nxdomain_error', 'dns_no_answer', 'dns_refused_error', 'dns_servfail_error') AS ok
    FROM qv
  UNION ALL SELECT gline, len(answers) > 0 FROM dns_rows
  UNION ALL SELECT gline, success FROM tcpv
  UNION ALL SELECT gline, failure IS NULL FROM tlsv
  UNION ALL SELECT gline, failure IS NULL AND coalesce(status, 0) <> 0 FROM httpv
) GROUP BY gline;
"""

# verdicts.feature_facts per (measurement, service, feature, target), IM tests (no control, no tunnel).
_FACTS = r"""
CREATE OR REPLACE TEMP TABLE facts AS
WITH o AS (
  SELECT *, dns_engine IS NOT NULL AS is_dns,
    dns_engine IS NULL AND NOT (NOT (counted(tcp_failure) OR counted(tls_failure) OR counted(http_failure))
      AND (tcp_failure IS NOT NULL OR tls_failure IS NOT NULL OR http_failure IS NOT NULL)) AS is_ep,
    CASE WHEN http_url IS NOT NULL THEN http_status IS NOT NULL OR http_failure IS NULL
         WHEN tls_server_name IS NOT NULL THEN tls_failure IS NULL
         ELSE (tcp_success IS TRUE OR (tcp_success IS NULL AND (tls_server_name IS NOT NULL
               OR http_status IS NOT NULL))) AND tcp_failure IS NULL END AS reached
  FROM obs
)
SELECT gline, service, feature, target,
  count(*) FILTER (WHERE is_dns) AS n_dns,
  count(*) FILTER (WHERE is_dns AND len(dns_answers) > 0) AS n_dns_ok,
  count(*) FILTER (WHERE is_dns AND len(dns_answers) = 0 AND counted(dns_failure)
                   AND dns_failure <> 'dns_no_answer') AS n_dns_failed,
  count(*) FILTER (WHERE is_dns AND len(dns_answers) = 0 AND dns_failure = 'dns_nxdomain_error') AS n_dns_nxdomain,
  count(*) FILTER (WHERE is_dns AND coalesce(dns_fingerprint, '') <> '') AS n_dns_fingerprint,
  count(*) FILTER (WHERE is_dns AND (dns_failure = 'dns_bogon_error' OR dns_bogon IS TRUE)) AS n_dns_bogon,
  0 AS n_dns_inconsistent,
  count(*) FILTER (WHERE is_ep) AS n_endpoints,
  count(*) FILTER (WHERE is_ep AND reached) AS n_ok,
  count(*) FILTER (WHERE is_ep AND NOT reached) AS n_failed,
  count(*) FILTER (WHERE is_ep AND tcp_success IS TRUE) AS n_tcp_ok,
  count(*) FILTER (WHERE is_ep AND counted(tcp_failure) AND tcp_failure = 'connection_reset') AS n_tcp_reset,
  count(*) FILTER (WHERE is_ep AND counted(tcp_failure) AND is_timeout(tcp_failure)) AS n_tcp_timeout,
  count(*) FILTER (WHERE is_ep AND counted(tcp_failure) AND tcp_failure = 'connection_refused') AS n_tcp_refused,
  0 AS n_tcp_failed_ctrl_ok, 0 AS n_tcp_reset_ctrl_ok, 0 AS n_tcp_failed_ctrl_failed,
  count(*) FILTER (WHERE is_ep AND counted(tls_failure)) AS n_tls_failed,
  count(*) FILTER (WHERE is_ep AND counted(tls_failure) AND tls_failure = 'connection_reset') AS n_tls_reset,
  count(*) FILTER (WHERE is_ep AND counted(tls_failure) AND is_timeout(tls_failure)) AS n_tls_timeout,
  count(*) FILTER (WHERE is_ep AND counted(tls_failure) AND starts_with(tls_failure, 'ssl_')) AS n_tls_cert,
  count(*) FILTER (WHERE is_ep AND counted(http_failure) AND http_status IS NULL) AS n_http_failed,
  count(*) FILTER (WHERE is_ep AND counted(http_failure) AND http_status IS NULL
                   AND http_failure = 'connection_reset') AS n_http_reset,
  count(*) FILTER (WHERE is_ep AND coalesce(http_fingerprint, '') <> '') AS n_blockpage,
  false AS has_control,
  coalesce(bool_or(is_ep AND http_url IS NOT NULL AND http_status IS NOT NULL), false) AS final_http_ok,
  NULL::BOOLEAN AS status_class_match, NULL::BOOLEAN AS ctrl_dns_ok, NULL::BOOLEAN AS ctrl_http_ok,
  false AS tunnel_ok, false AS tunnel_reset,
  min(observation_idx) AS first_idx
FROM o WHERE feature <> 'uptime'
GROUP BY gline, service, feature, target;
"""

# verdicts._extra_facts: facebook_messenger's own DNS consistency facts per feature.
_FB_KEYS = {"text": ("b_api", "b_graph", "edge"), "media": ("external_cdn", "scontent_cdn"),
            "web": ("star",), "calls": ("stun",)}


def _fb_inconsistent_sql() -> str:
    cases = []
    for feature, keys in _FB_KEYS.items():
        terms = " + ".join(f"(coalesce(rec.test_keys.facebook_{k}_dns_consistent::VARCHAR = 'false', false))::INT"
                           for k in keys)
        cases.append(f"WHEN '{feature}' THEN {terms}")
    return ("CASE WHEN rec.test_name = 'facebook_messenger' THEN CASE f.feature " + " ".join(cases)
            + " ELSE 0 END ELSE 0 END")


# -- rules as SQL -------------------------------------------------------------------

_SQL_OPS = {"eq": "=", "ne": "<>", "gt": ">", "ge": ">=", "lt": "<", "le": "<="}
FACT_COLUMNS = frozenset({
    "n_dns", "n_dns_ok", "n_dns_failed", "n_dns_nxdomain", "n_dns_fingerprint", "n_dns_bogon", "n_dns_inconsistent",
    "n_endpoints", "n_ok", "n_failed", "n_tcp_ok", "n_tcp_reset", "n_tcp_timeout", "n_tcp_refused",
    "n_tcp_failed_ctrl_ok", "n_tcp_reset_ctrl_ok", "n_tcp_failed_ctrl_failed", "n_tls_failed", "n_tls_reset",
    "n_tls_timeout", "n_tls_cert", "n_http_failed", "n_http_reset", "n_blockpage", "n_probe_dns_inconsistent",
    "probe_online", "has_control", "final_http_ok", "status_class_match", "ctrl_dns_ok", "ctrl_http_ok",
    "tunnel_ok", "tunnel_reset"})


def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def _condition_sql(fact: str, op: str, value: Any) -> str:
    """verdicts.Condition.holds: a missing fact is None; None fails every comparison but eq/ne."""
    column = f"f.{fact}" if fact in FACT_COLUMNS else "NULL"
    if op == "eq":
        return f"({column} IS NOT DISTINCT FROM {_literal(value)})"
    if op == "ne":
        return f"({column} IS DISTINCT FROM {_literal(value)})"
    if op == "in":
        return f"coalesce({column} IN ({', '.join(map(_literal, value))}), false)" if value else "false"
    return f"coalesce({column} {_SQL_OPS[op]} {_literal(value)}, false)"


def rules_sql(rule_set: RuleSet) -> str:
    """The rule set as one `CASE` cascade (first match wins) yielding the index of the rule that fired."""
    arms = []
    for index, rule in enumerate(rule_set.rules):
        terms = [_condition_sql(c.fact, c.op, c.value) for c in rule.all_of]
        if rule.any_of:
            terms.append("(" + " OR ".join("(" + (" AND ".join(_condition_sql(c.fact, c.op, c.value) for c in group)
                                                 or "true") + ")" for group in rule.any_of) + ")")
        arms.append(f"WHEN {' AND '.join(terms) or 'true'} THEN {index}")
    return "CASE " + " ".join(arms) + " END"


# -- distinct-value tables (pure Python functions applied once per distinct value) ----


def _register(con: Any, name: str, columns: dict[str, tuple[list[Any], pa.DataType]]) -> None:
    table = pa.table({key: pa.array(values, kind) for key, (values, kind) in columns.items()})
    con.register(name + "_arrow", table)
    _run(con, f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT * FROM {name}_arrow")
    con.unregister(name + "_arrow")


def _run(con: Any, sql: str) -> None:
    """Run statements to completion (DuckDB refuses new work while a result is unfinished)."""
    con.execute(sql).fetchall()


def _distinct(con: Any, sql: str) -> list[tuple[Any, ...]]:
    return con.execute(sql).fetchall()


# -- the engine ---------------------------------------------------------------------


@dataclass
class _Pending:
    """Lines of one DuckDB pass: (file index, line number, text) by global line id."""

    lines: list[tuple[int, int, bytes]] = field(default_factory=list)
    chunks: dict[int, bytes] = field(default_factory=dict)  # gline -> spliced text, for DuckDB
    routed: set[int] = field(default_factory=set)  # glines the Python path reads
    files: list[int] = field(default_factory=list)  # file indices, in order
    size: int = 0


class ColumnarIngester(Ingester):
    """`Ingester` whose records are derived by DuckDB SQL (see the module docstring)."""

    def __init__(self, store: Store, **options: Any) -> None:
        options.pop("workers", None)  # DuckDB's own threads do the parallel part
        super().__init__(store, **options)
        self.stats = ColumnarStats()
        self._scratch = Path(tempfile.mkdtemp(prefix="ww-columnar-", dir=_scratch_root()))
        self._pending_pass = _Pending()
        self._con: Any = None
        self._stored_files: set[int] = set()  # files with a stored measurement (others keep no raw copy)

    def ingest_paths(self, paths: Iterable[Path]) -> IngestSummary:
        from wallwatch.analysis.ingest import discover

        todo = [index for path in discover(paths) if (index := self._admit(path)) is not None]
        try:
            with no_cyclic_gc():
                for index in todo:
                    self._read_file(index)
                self._run_pass()
                self.flush()
        finally:
            if self._con is not None:
                self._con.close()
            for child in self._scratch.iterdir():
                child.unlink()
            self._scratch.rmdir()
        return self.summary

    # -- files -> lines -------------------------------------------------------------

    def _reader(self, index: int) -> FileReader:
        path, key = self._files[index]
        return FileReader(index, path, key.raw_key, self.config, self.seen_uids)

    def _read_file(self, index: int) -> None:
        path, _ = self._files[index]
        if not path.name.endswith((".jsonl", ".jsonl.gz")):
            self._python_file(index)
            return
        try:
            data = b"".join(read_chunks(path))
        except (OSError, EOFError):  # a damaged .gz: the Python reader keeps what precedes the damage
            self._python_file(index)
            return
        raw_file = self._reader(index).raw_file
        if raw_file is not None:
            _keep_raw_copy(path, self.config.data_root / raw_file)
        pending = self._pending_pass
        pending.files.append(index)
        for number, line in enumerate(data.split(b"\n"), 1):
            stripped = line.strip()
            if not stripped:
                continue
            gline = len(pending.lines)
            pending.lines.append((index, number, line))
            if stripped[:1] != b"{" or stripped[1:].lstrip()[:1] == b"}" or LINE_KEY in stripped:
                pending.routed.add(gline)  # arrays, non-objects, {}: the Python path's reasons
                continue
            pending.chunks[gline] = b'{"__ww_line":%d,' % gline + stripped[1:]
            pending.size += len(stripped)
        if len(pending.lines) >= RECORDS_PER_PASS or pending.size >= BYTES_PER_PASS:
            self._run_pass()

    def _python_file(self, index: int) -> None:
        self.stats.python_files += 1
        for message in self._reader(index).batches():
            if isinstance(message, Batch):
                self.stats.python_records += message.read
            self._take(message)

    def _take_python(self, reader: FileReader) -> None:
        if reader.local_seen:
            self._stored_files.add(reader.index)
        batch = reader._take()
        self.stats.python_records += batch.read
        self._take(batch)

    # -- one DuckDB pass ------------------------------------------------------------

    def _connection(self) -> Any:
        if self._con is None:
            import duckdb

            self._con = duckdb.connect(config={"threads": max(1, os.cpu_count() or 1),
                                                  # rows carry their line id, so no order need be kept
                                                  "preserve_insertion_order": False})
            _run(self._con, _MACROS)
            fingerprints = self.config.fingerprints
            _register(self._con, "dns_fp", {"pattern": (list(fingerprints.dns_full), pa.string()),
                                            "name": ([f.name for f in fingerprints.dns_full.values()], pa.string())})
        return self._con

    def _run_pass(self) -> None:
        pending, self._pending_pass = self._pending_pass, _Pending()
        sql: dict[str, pa.Table] | None = None
        if pending.chunks:
            con = self._connection()
            if self._read_pass(con, pending):
                sql = self._derive(con, pending)
        self._take_pass(pending, sql)

    def _read_pass(self, con: Any, pending: _Pending) -> bool:
        """Load the pass into table `raw`. A line DuckDB cannot read (bad JSON, a container of
        another shape) fails the whole read and is named in the error ("in line N"): that line and
        the one before it (an unclosed object spills onto the next line) go to the Python path,
        which finds exactly what is wrong with each and quarantines it or reads it; then retry."""
        import duckdb

        path = self._scratch / "pass.jsonl"
        order = sorted(pending.chunks)  # pass-file line -> gline
        try:
            for _ in range(MAX_READ_RETRIES):
                path.write_bytes(b"\n".join(pending.chunks[gline] for gline in order))
                try:
                    _run(con, f"CREATE OR REPLACE TEMP TABLE raw AS SELECT * FROM read_json('{path}', "
                                f"format='newline_delimited', columns={_columns_sql()}, "
                                f"maximum_object_size={MAX_OBJECT_BYTES})")
                    return True
                except duckdb.Error as exc:
                    hint = _LINE_HINT.search(str(exc))
                    if hint is None:
                        break
                    bad = int(hint.group(1))
                    culprits = order[max(0, bad - 2):bad]
                    if not culprits:
                        break
                    pending.routed.update(culprits)
                    order = order[:max(0, bad - 2)] + order[bad:]
                    if not order:
                        return False
            pending.routed.update(order)  # no usable hint, or too many bad lines: all of it
            return False
        finally:
            path.unlink(missing_ok=True)

    def _take_pass(self, pending: _Pending, sql: dict[str, pa.Table] | None) -> None:
        """Hand each file's rows on in file order (as the one-process Python path does, so an earlier
        file's copy of a measurement wins): its SQL rows, then its routed lines read by the Python
        path. A uid stored by both within one file would make the kept copy depend on that split,
        so such a file is read again wholly by the Python path, in line order."""
        glines_of: dict[int, list[int]] = {index: [] for index in pending.files}
        for gline, (index, _, _) in enumerate(pending.lines):
            glines_of[index].append(gline)
        for index in pending.files:
            glines = glines_of[index]
            part = _slice(sql, glines[0], glines[-1] + 1) if sql is not None and glines else None
            reader = self._reader(index)
            for gline in (g for g in glines if g in pending.routed):
                reader._read_line(pending.lines[gline][1], pending.lines[gline][2])
            if part is not None and reader.local_seen.intersection(
                    part["measurements"].column("measurement_uid").to_pylist()):
                part, reader = None, self._reader(index)
                for gline in glines:
                    reader._read_line(pending.lines[gline][1], pending.lines[gline][2])
            self.stats.routed_lines += len(glines) if part is None else sum(g in pending.routed for g in glines)
            if part is not None:
                self._take_sql(part, pending)
            self._take_python(reader)
            if reader.raw_file is not None and index not in self._stored_files:
                (self.config.data_root / reader.raw_file).unlink(missing_ok=True)  # nothing points at it
            self._take(FileEnd(index))

    def _derive(self, con: Any, pending: _Pending) -> dict[str, pa.Table]:
        """The pass's SQL records: measurements (with `gline` and `kept`), observations and verdicts (with `gline`)."""
        _run(con, _RECORDS.format(sql_tests=", ".join(f"'{t}'" for t in SQL_TESTS)))
        _run(con, _QUERIES)
        _run(con, _ODD)
        _register(con, "seen_uids", {"uid": (list(self.seen_uids), pa.string())})
        _run(con, _KEEP)
        self._python_tables(con)
        _run(con, _DNS)
        _run(con, _ENDPOINTS)
        self._python_tables_late(con)
        _run(con, _OBSERVATIONS)
        _run(con, _ONLINE)
        _run(con, _FACTS)
        pending.routed.update(row[0] for row in con.execute("SELECT gline FROM rec WHERE NOT shape_ok").fetchall())
        return self._sql_tables(con, pending)

    def _python_tables(self, con: Any) -> None:
        """Tables of the pure functions the SQL needs before it builds endpoints."""
        ips = _distinct(con, "SELECT DISTINCT CASE WHEN ipv4 <> '' THEN ipv4 WHEN ipv6 <> '' THEN ipv6 END FROM a "
                             "WHERE gline IN (SELECT gline FROM keep) AND (ipv4 <> '' OR ipv6 <> '')")
        values = [row[0] for row in ips if row[0] is not None]
        _register(con, "bogons", {"ip": (values, pa.string()), "bogon": ([is_bogon(v) for v in values], pa.bool_())})
        addresses = [row[0] for row in _distinct(
            con, "SELECT DISTINCT jstr(addrj) FROM tls WHERE gline IN (SELECT gline FROM keep) UNION "
                 "SELECT DISTINCT jstr(addrj) FROM http WHERE gline IN (SELECT gline FROM keep)")]
        split = [split_address(a) for a in addresses]
        _register(con, "addresses", {"address": (addresses, pa.string()), "ip": ([s[0] for s in split], pa.string()),
                                     "port": ([s[1] for s in split], pa.int32())})
        urls = [row[0] for row in _distinct(con, "SELECT DISTINCT jstr(urlj) FROM http "
                                                 "WHERE gline IN (SELECT gline FROM keep)")]
        _register(con, "url_hosts", {"url": (urls, pa.string()), "host": ([url_host(u) for u in urls], pa.string()),
                                     "url_port": ([_url_port(u) for u in urls], pa.int32())})

    def _python_tables_late(self, con: Any) -> None:
        combos = _distinct(con, """
            SELECT DISTINCT rec.test_name, rec.input, r.host, r.ip, r.port, r.tags FROM (
              SELECT gline, hostname AS host, NULL::VARCHAR AS ip, NULL::INTEGER AS port, tags FROM dns_rows
              UNION ALL SELECT gline, class_host, ip, port, tags FROM ep) r JOIN rec USING (gline)""")
        targets = [classify(t, i, h, ip, port, orjson.loads(tags) if tags is not None else None)
                   for t, i, h, ip, port, tags in combos]
        _register(con, "classes", {
            "test_name": ([c[0] for c in combos], pa.string()), "input": ([c[1] for c in combos], pa.string()),
            "host": ([c[2] for c in combos], pa.string()), "ip": ([c[3] for c in combos], pa.string()),
            "port": ([c[4] for c in combos], pa.int32()), "tags": ([c[5] for c in combos], pa.string()),
            "service": ([t.service for t in targets], pa.string()), "feature": ([t.feature for t in targets], pa.string()),
            "target": ([t.target for t in targets], pa.string())})
        responses = _distinct(con, "SELECT DISTINCT body, headers FROM ep WHERE http_url IS NOT NULL")
        facts = [self._http_facts(body, headers) for body, headers in responses]
        _register(con, "http_facts", {
            "body": ([r[0] for r in responses], pa.string()), "headers": ([r[1] for r in responses], pa.string()),
            "body_length": ([f[0] for f in facts], pa.int64()), "title": ([f[1] for f in facts], pa.string()),
            "fingerprint": ([f[2] for f in facts], pa.string())})

    def _http_facts(self, body: str | None, headers_json: str | None) -> tuple[int | None, str | None, str | None]:
        """observations._Builder.add_http's body length, title and block page fingerprint."""
        headers = orjson.loads(headers_json) if headers_json is not None else None
        fingerprint = None
        if body is not None or headers:
            match = self.config.fingerprints.match_http(body, headers if isinstance(headers, dict) else None)
            fingerprint = match.name if match else None
        return (len(body) if body is not None else None), _title(body), fingerprint

    def _sql_tables(self, con: Any, pending: _Pending) -> dict[str, pa.Table]:
        rule_sets = {name: rule_set for name, rule_set in self.config.rule_sets.items() if name in SQL_TESTS}
        verdict_arms = []
        for test_name, rule_set in rule_sets.items():
            ids = ", ".join(_literal(rule.id) for rule in rule_set.rules)
            verdicts = ", ".join(_literal(rule.verdict) for rule in rule_set.rules)
            methods = ", ".join(_literal(rule.method) for rule in rule_set.rules)
            confidences = ", ".join(repr(float(rule.confidence)) for rule in rule_set.rules)
            verdict_arms.append(
                f"SELECT '{test_name}' AS t, {_literal(rule_set.rules_version)} AS rules_version, "
                f"[{ids}] AS ids, [{verdicts}] AS verdicts, [{methods}]::VARCHAR[] AS methods, "
                f"[{confidences}]::DOUBLE[] AS confidences, '{test_name}' AS sql_key")
        cascade = {name: rules_sql(rule_set) for name, rule_set in rule_sets.items()}
        which = "CASE rec.test_name " + " ".join(f"WHEN '{t}' THEN {sql}" for t, sql in cascade.items()) + " END"
        fb = _fb_inconsistent_sql()
        verdicts_sql = f"""
            WITH f AS (
              SELECT facts.* EXCLUDE (first_idx), facts.first_idx, coalesce(o.online, false) AS probe_online,
                     {fb.replace('f.feature', 'facts.feature')} AS n_probe_dns_inconsistent
              FROM facts JOIN rec USING (gline) LEFT JOIN online o USING (gline)
            ), judged AS (
              SELECT f.*, {which} AS rule_index FROM f JOIN rec USING (gline)
            ), rs AS ({' UNION ALL '.join(verdict_arms) if verdict_arms else "SELECT NULL AS t"})
            SELECT j.gline, rec.measurement_uid, rec.measurement_start_time, rec.measurement_start_time::DATE AS date,
              rec.probe_cc, rec.probe_asn, rec.probe_network_name, rec.probe_key, rec.test_name, rec.software_name,
              j.service, j.feature, j.target, rs.verdicts[j.rule_index + 1] AS verdict,
              rs.methods[j.rule_index + 1] AS method, rs.confidences[j.rule_index + 1]::FLOAT AS confidence,
              rs.ids[j.rule_index + 1] AS rule_id, rs.rules_version, NULL::FLOAT AS blocked_share
            FROM judged j JOIN rec USING (gline) JOIN rs ON rs.t = rec.test_name
            ORDER BY j.gline, j.first_idx"""
        return {
            "observations": con.sql("SELECT * FROM obs ORDER BY gline, observation_idx").to_arrow_table(),
            "verdicts": con.sql(verdicts_sql).to_arrow_table(),
            "measurements": con.sql("""
                SELECT rec.measurement_uid, rec.measurement_start_time, rec.measurement_start_time::DATE AS date,
                  rec.probe_cc, rec.probe_asn, probe_network_name, probe_key, report_id, input, test_name,
                  test_version, software_name, software_version, data_format_version, resolver_ip, gline,
                  gline IN (SELECT gline FROM keep) AS kept
                FROM rec WHERE shape_ok ORDER BY gline""").to_arrow_table(),
        }

    def _take_sql(self, part: dict[str, pa.Table], pending: _Pending) -> None:
        """One file's SQL rows as a Batch (read = its SQL records, duplicated = those not kept)."""
        measurements = part["measurements"]
        read = measurements.num_rows
        measurements = measurements.filter(measurements.column("kept"))
        n = measurements.num_rows
        batch = Batch(-1, read=read, duplicated=read - n)
        self.stats.sql_records += read
        if n:
            numbers = [pending.lines[g][1] for g in measurements.column("gline").to_pylist()]
            index = pending.lines[measurements.column("gline")[0].as_py()][0]
            self._stored_files.add(index)
            raw_file = self._reader(index).raw_file
            measurements = measurements.drop(["gline", "kept"]) \
                .append_column("source", pa.array([str(self._files[index][0])] * n, pa.string())) \
                .append_column("ingested_at", pa.array([self.config.ingested_at] * n, pa.timestamp("us"))) \
                .append_column("raw_file", pa.array([raw_file] * n, pa.string())) \
                .append_column("raw_line", pa.array(numbers if raw_file is not None else [None] * n, pa.int32())) \
                .append_column("raw_item", pa.nulls(n, pa.int32()))
            batch.measurements = measurements.cast(MEASUREMENTS_SCHEMA)
            batch.observations = part["observations"].drop(["gline"]).cast(OBSERVATIONS_SCHEMA)
            batch.verdicts = part["verdicts"].drop(["gline"]).cast(VERDICTS_SCHEMA)
        self._take(batch)


def _slice(tables: dict[str, pa.Table], start: int, stop: int) -> dict[str, pa.Table]:
    """The rows of glines [start, stop): one file's share of a pass."""
    import pyarrow.compute as pc

    return {name: table.filter(pc.and_(pc.greater_equal(table["gline"], start), pc.less(table["gline"], stop)))
            for name, table in tables.items()}


def _scratch_root() -> str | None:
    """/dev/shm when present: the pass file is written and read once, memory is the right place for it."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def ingest_columnar(paths: Iterable[Path], data_dir: Path, **options: Any) -> tuple[IngestSummary, ColumnarStats]:
    """Ingest `paths` into the store at `data_dir` with the columnar engine; the summary and the routing counts."""
    ingester = ColumnarIngester(Store(data_dir), **options)
    summary = ingester.ingest_paths([Path(p) for p in paths])
    return summary, ingester.stats

