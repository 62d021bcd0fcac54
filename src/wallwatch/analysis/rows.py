"""The rows of the core datasets, each defined once: `measurements`, `observations`, `verdicts`.

Each class IS its table's schema (`tables.arrow_schema` derives the Arrow schema
from it: names, order, types), as oonidata's `models/observations.py` dataclasses
are its ClickHouse tables. The ingest hot path builds rows as dicts from the
class's `tables.row_template`; `docs/storage.md` says what each column means.
Timestamps are UTC stored without a zone: DuckDB TIMESTAMP, ClickHouse DateTime64.
"""

from __future__ import annotations

from dataclasses import dataclass
import datetime as dt  # the module: `date` is also a column name

from wallwatch.analysis.tables import Float32, Int32, arrow_schema


@dataclass(frozen=True, slots=True, kw_only=True)
class MeasurementHead:
    """The columns every row of every core dataset begins with: which measurement, when, where."""

    measurement_uid: str
    measurement_start_time: dt.datetime
    date: dt.date  # the partition of every core dataset
    probe_cc: str  # "ZZ" when the measurement has none
    probe_asn: Int32  # 0 when missing or private-use beyond int32


@dataclass(frozen=True, slots=True, kw_only=True)
class Header(MeasurementHead):
    """The measurement-level facts every observation and verdict row repeats: the columns every
    row begins with, and the test (not a table: ingest/header.py makes it, the extractors copy it)."""

    test_name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MeasurementRow(MeasurementHead):
    """One stored measurement: who measured what, and where its original text is kept."""

    probe_network_name: str | None = None
    probe_key: str  # the best distinct-probe identity (ingest/header.py `probe_key`)
    report_id: str | None = None
    input: str | None = None
    test_name: str
    test_version: str | None = None
    software_name: str
    software_version: str | None = None
    data_format_version: str | None = None
    resolver_ip: str | None = None
    source: str  # the input file's path
    ingested_at: dt.datetime
    # Where the original text is kept: <root>/<raw_file> (a gzip copy of the input file),
    # line `raw_line` (0: the whole file is one document), element `raw_item` of a JSON array.
    raw_file: str | None = None
    raw_line: Int32 | None = None
    raw_item: Int32 | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ObservationRow(MeasurementHead):
    """Facts: one endpoint (or one DNS resolution) of a measurement (verdicts/observations.py).

    OONI's failure strings are kept verbatim; None is "no failure" or "not attempted".
    """

    test_name: str
    service: str
    feature: str
    target: str | None = None
    observation_idx: Int32  # set once the measurement's rows are complete
    hostname: str | None = None
    ip: str | None = None
    port: Int32 | None = None
    transaction_id: int | None = None
    is_control: bool = False
    dns_engine: str | None = None  # None: an endpoint row, not a resolution
    dns_resolver: str | None = None
    dns_failure: str | None = None
    dns_answers: list[str] | None = None
    dns_fingerprint: str | None = None
    dns_bogon: bool | None = None
    tcp_success: bool | None = None
    tcp_failure: str | None = None
    tls_server_name: str | None = None  # "" when the handshake was made without SNI
    tls_failure: str | None = None
    tls_version: str | None = None
    http_url: str | None = None
    http_failure: str | None = None
    http_status: Int32 | None = None
    http_body_length: int | None = None
    http_title: str | None = None
    http_fingerprint: str | None = None
    tunnel_failure: str | None = None
    tunnel_bootstrap_s: float | None = None
    dns_ctrl_consistent: bool | None = None
    ctrl_dns_failure: str | None = None
    ctrl_tcp_success: bool | None = None
    ctrl_http_failure: str | None = None
    ctrl_http_status: Int32 | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class VerdictRow(MeasurementHead):
    """A judgment: one measurement x service x feature (x target), by a named, versioned rule."""

    probe_network_name: str | None = None
    probe_key: str
    test_name: str
    software_name: str
    service: str
    feature: str
    target: str | None = None
    verdict: str
    method: str | None = None  # a Method with "blocked", a Throttling kind with "throttled", else None
    confidence: Float32
    rule_id: str
    rules_version: str
    # Of the feature's attempts (targets) in this measurement, the share blocked, where the
    # measurement says: wallwatch's probe does (its feature `blocked_share`); OONI's rows are
    # per target and leave it null (the series derive it from their target verdicts).
    blocked_share: Float32 | None = None
    # Confirmed blocking: a known blocking fingerprint (verdicts/fingerprints.py) decided the verdict
    # and its expected_countries include the probe's country. The fingerprint columns name the row
    # that decided it (also for one expected elsewhere, or a known false positive, scope `fp`).
    confirmed: bool = False
    fingerprint: str | None = None  # the row's name, e.g. ooni.cn_0
    fingerprint_scope: str | None = None  # nat | isp | prod | inst | vbw | fp | ...
    fingerprint_location: str | None = None  # dns | body | header.<name>
    fingerprint_found_in: str | None = None  # the DNS name queried, or the URL of the response that matched
    # The probe-side fault (verdicts/failures.py) an `unknown` verdict rests on, verbatim.
    probe_fault: str | None = None
    # A failure string of the feature's rows that the failure taxonomy (verdicts/data/failures.csv) does
    # not list, verbatim (the first one): never evidence on its own; `wallwatch ingest` counts them.
    unclassified_failure: str | None = None


MEASUREMENTS_SCHEMA = arrow_schema(MeasurementRow)
OBSERVATIONS_SCHEMA = arrow_schema(ObservationRow)
VERDICTS_SCHEMA = arrow_schema(VerdictRow)
