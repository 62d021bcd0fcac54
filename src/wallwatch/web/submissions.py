"""What the collector accepts: one measurement checked, its identity computed, its line for the WAL.

The checks are the envelope fields the pipeline reads (ooni/spec df-000-base [ooni-spec]) with
the types df-000 gives them, plus what OONI's collector checks when a measurement is submitted
into a report (ooni/backend `ooniprobe/routers/reports.py` [ooni-backend]: the report's country,
network and test name must be the measurement's). `MEASUREMENT_SCHEMA` states the same rules as
JSON Schema for the OpenAPI document; `tests/web/test_collector_api.py` holds the two together.

Identity: the uid is `analysis.ingest.header.stable_uid`, the one the batch ingest gives the same
record (OONI's uid when the record has one, else a hash of OONI's fastpath dedup key: report_id,
input, measurement_start_time, test_name). So a resubmission is acknowledged with the same uid,
and a measurement submitted live and the same measurement ingested from a file are one row.

Privacy: the probe's address is never stored. `probe_ip` is overwritten with 127.0.0.1, what
df-000 asks probes to write when the user has not opted in ([df-000-probe-ip]; what OONI's probes
send), and
if the submitting client's own public address appears anywhere in the text it is scrubbed as
the probe scrubs its own (`probe.measurement.scrub_addresses`). Nothing else about the client
is kept: the server's access log is off (`web/serve.py`).
"""

from __future__ import annotations

import functools
import ipaddress
import re
import secrets
import string
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypedDict

import msgspec
import orjson

from wallwatch.analysis.ingest.header import RecordError, parse_asn, read_header
from wallwatch.probe.measurement import HIDDEN_IP, scrub_addresses

# OONI's collector: "probe_cc = two letters, uppercase"; "probe_asn = AS-prefixed, 3 <= len <= 12";
# "test_name = 1 <= len(test_name) <= 30, lowercase" (ooni/backend routers/reports.py).
CC_PATTERN = r"^[A-Z]{2}$"
ASN_PATTERN = r"^AS[0-9]{1,10}$"
TEST_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,29}$"
# df-000's "YYYY-MM-DD hh:mm:ss" (UTC); ISO 8601's "T" is read too (analysis.ingest.header.parse_time).
TIME_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[ T][0-9]{2}:[0-9]{2}:[0-9]{2}"
MAX_REPORT_ID = 256
_CC, _ASN, _TEST_NAME = re.compile(CC_PATTERN), re.compile(ASN_PATTERN), re.compile(TEST_NAME_PATTERN)

# Fields the pipeline needs and df-000 marks as always present.
REQUIRED_FIELDS = ("test_name", "measurement_start_time", "test_keys", "probe_cc", "probe_asn", "software_name")
# Optional fields that, when present, must be text (df-000); `input` and the network name may be null.
TEXT_FIELDS = ("software_version", "test_version", "data_format_version", "test_start_time", "probe_ip",
               "report_id")
NULLABLE_TEXT_FIELDS = ("input", "probe_network_name", "resolver_ip")

MEASUREMENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "One OONI-format measurement (ooni/spec data-formats/df-000-base.md); other fields are kept "
                   "as they are.",
    "required": list(REQUIRED_FIELDS),
    "properties": {
        "test_name": {"type": "string", "pattern": TEST_NAME_PATTERN},
        "measurement_start_time": {"type": "string", "pattern": TIME_PATTERN,
                                   "description": "UTC, \"YYYY-MM-DD hh:mm:ss\""},
        "test_keys": {"type": "object"},
        "probe_cc": {"type": "string", "pattern": CC_PATTERN},
        "probe_asn": {"type": "string", "pattern": ASN_PATTERN},
        "software_name": {"type": "string", "minLength": 1},
        **{name: {"type": "string"} for name in TEXT_FIELDS if name != "report_id"},
        "report_id": {"type": "string", "minLength": 1, "maxLength": MAX_REPORT_ID},
        **{name: {"type": ["string", "null"]} for name in NULLABLE_TEXT_FIELDS},
        "annotations": {"type": "object"},
    },
}


class Rejected(ValueError):
    """A submission the collector refuses; the message is the reason given to the client."""


@dataclass(frozen=True, slots=True)
class ReportInfo:
    """What a report was opened for: its measurements must say the same (as OONI's collector checks)."""

    report_id: str
    test_name: str
    probe_cc: str
    probe_asn: str


@dataclass(frozen=True, slots=True)
class Accepted:
    measurement_uid: str
    line: bytes  # the measurement as stored, one JSON line with its newline


def accept(content: Any, *, report: ReportInfo | None = None, client_ip: str | None = None) -> Accepted:
    """Check one measurement; return its uid and the line to log. Raises Rejected with the reason.

    `report`: the report it is submitted into (OONI's API), whose id the measurement takes when it
    has none; without one (the bulk endpoint) the measurement must carry its own report_id.
    """
    if not isinstance(content, dict):
        raise Rejected(f"a measurement must be a JSON object, got {_json_type(content)}")
    _check_fields(content)
    if report is not None:
        _check_report(content, report)
    elif not content.get("report_id"):
        raise Rejected("missing field: report_id (one per run, as OONI's probes make them)")
    try:
        header, _, _ = read_header(content)
    except RecordError as exc:
        raise Rejected(str(exc)) from None
    if "probe_ip" in content:
        content["probe_ip"] = HIDDEN_IP
    line = orjson.dumps(content)
    if client_ip and _is_public(client_ip) and client_ip.encode() in line:
        line = orjson.dumps(scrub_addresses(content, {client_ip}))
    return Accepted(header.measurement_uid, line + b"\n")


class _Head(TypedDict, total=False):
    """The fields `accept` reads. Decoding into this skips everything else in C (msgspec: unknown
    fields are skipped), and `test_keys`/`annotations` stay raw JSON text, never built."""

    test_name: Any
    measurement_start_time: Any
    test_keys: msgspec.Raw
    annotations: msgspec.Raw
    probe_cc: Any
    probe_asn: Any
    probe_ip: Any
    software_name: Any
    software_version: Any
    test_version: Any
    data_format_version: Any
    test_start_time: Any
    report_id: Any
    input: Any
    probe_network_name: Any
    resolver_ip: Any
    measurement_uid: Any


_HEAD = msgspec.json.Decoder(_Head)


def accept_text(text: bytes, *, report: ReportInfo | None = None, client_ip: str | None = None) -> Accepted:
    """`accept` for a measurement given as its JSON text, at a fraction of the cost.

    A measurement is mostly test keys nobody here reads (an OONI IM measurement is ~30 KB; parsing
    all of it costs ~200 µs, decoding only the envelope's fields ~30 µs, measured on the OONI
    samples). When nothing in it must change (probe_ip already hidden, a report_id of its own, one
    line, no client address in it) the text is logged exactly as received; otherwise, and for
    any shape the envelope decoder does not expect, it takes `accept`'s full parse, which also
    words the refusals.
    """
    try:
        head = _HEAD.decode(text)
    except msgspec.ValidationError:
        return _accept_parsed(text, report, client_ip)
    except msgspec.DecodeError as exc:
        raise Rejected(f"malformed JSON: {exc}") from None
    if (head.get("probe_ip", HIDDEN_IP) != HIDDEN_IP or (report is not None and not head.get("report_id"))
            or b"\n" in text or not _raw_object(head.get("test_keys")) or not _raw_object(head.get("annotations"), True)
            or (client_ip and _is_public(client_ip) and client_ip.encode() in text)):
        return _accept_parsed(text, report, client_ip)
    record: dict[str, Any] = dict(head)
    record["test_keys"] = {}  # an object (checked above); its content is not read here
    record.pop("annotations", None)
    _check_fields(record)
    if report is not None:
        _check_report(record, report)
    elif not record.get("report_id"):
        raise Rejected("missing field: report_id (one per run, as OONI's probes make them)")
    try:
        header, _, _ = read_header(record)
    except RecordError as exc:
        raise Rejected(str(exc)) from None
    return Accepted(header.measurement_uid, text.strip() + b"\n")


def _raw_object(raw: msgspec.Raw | None, missing_ok: bool = False) -> bool:
    if raw is None:
        return missing_ok
    return memoryview(raw)[:1].tobytes() == b"{"


def _accept_parsed(text: bytes, report: ReportInfo | None, client_ip: str | None) -> Accepted:
    try:
        content = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise Rejected(f"malformed JSON: {exc}") from None
    return accept(content, report=report, client_ip=client_ip)


def _check_fields(content: Mapping[str, Any]) -> None:
    for name in REQUIRED_FIELDS:
        if name not in content:
            raise Rejected(f"missing field: {name}")
    for name in ("test_name", "measurement_start_time", "probe_cc", "probe_asn", "software_name", *TEXT_FIELDS):
        if name in content and not isinstance(content[name], str):
            raise Rejected(f"wrong type: {name} must be a string, got {_json_type(content[name])}")
    for name in NULLABLE_TEXT_FIELDS:
        if content.get(name) is not None and not isinstance(content[name], str):
            raise Rejected(f"wrong type: {name} must be a string or null, got {_json_type(content[name])}")
    for name in ("test_keys", "annotations"):
        if name in content and not isinstance(content[name], dict):
            raise Rejected(f"wrong type: {name} must be an object, got {_json_type(content[name])}")
    if not _TEST_NAME.match(content["test_name"]):
        raise Rejected(f"bad test_name {content['test_name'][:40]!r}: lower-case letters, digits and _, "
                       f"at most 30")
    if not _CC.match(content["probe_cc"]):
        raise Rejected(f"bad probe_cc {content['probe_cc'][:10]!r}: two upper-case letters (ZZ when hidden)")
    if not _ASN.match(content["probe_asn"]):
        raise Rejected(f"bad probe_asn {content['probe_asn'][:20]!r}: \"AS\" and a number (AS0 when hidden)")
    if not content["software_name"]:
        raise Rejected("bad software_name: empty")
    report_id = content.get("report_id")
    if report_id is not None and len(report_id) > MAX_REPORT_ID:
        raise Rejected(f"bad report_id: longer than {MAX_REPORT_ID} characters")


def _check_report(content: dict[str, Any], report: ReportInfo) -> None:
    given = content.get("report_id")
    if given is None or given == "":
        content["report_id"] = report.report_id
    elif given != report.report_id:
        raise Rejected(f"inconsistent measurement: its report_id {given[:80]!r} is not the report it is "
                       f"submitted to")
    # OONI's collector rejects a body whose country, network or test differs from its report's.
    if report.probe_cc != "ZZ" and content["probe_cc"] != report.probe_cc:
        raise Rejected(f"inconsistent measurement: probe_cc {content['probe_cc']} in a report opened for "
                       f"{report.probe_cc}")
    if report.probe_asn != "AS0" and parse_asn(content["probe_asn"]) != parse_asn(report.probe_asn):
        raise Rejected(f"inconsistent measurement: probe_asn {content['probe_asn']} in a report opened for "
                       f"{report.probe_asn}")
    if report.test_name and content["test_name"] != report.test_name:
        raise Rejected(f"inconsistent measurement: test_name {content['test_name']} in a report opened for "
                       f"{report.test_name}")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else type(value).__name__


@functools.lru_cache(maxsize=4096)
def _is_public(address: str) -> bool:
    """Loopback and private addresses identify no one outside (and 127.0.0.1 is df-000's placeholder)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return not (ip.is_loopback or ip.is_private or ip.is_unspecified or ip.is_link_local)


_REPORT_ALPHABET = string.ascii_letters + string.digits


def new_report_id(test_name: str, probe_cc: str, probe_asn: str, now: datetime | None = None) -> str:
    """OONI's shape, `20221207T095248Z_whatsapp_IT_30722_n1_<16 random>`: six `_`-separated parts,
    so the test name loses its underscores as in OONI's backend (`webconnectivity`)."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    suffix = "".join(secrets.choice(_REPORT_ALPHABET) for _ in range(16))
    return f"{stamp}_{test_name.replace('_', '')}_{probe_cc}_{parse_asn(probe_asn)}_n1_{suffix}"
