"""The measurement header: time, place, identity (ooni/spec data-formats/df-000-base.md)."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Mapping
from typing import Any

from wallwatch.analysis.verdicts.observations import Header


class RecordError(ValueError):
    """A record that is not a usable measurement; the message is the quarantine reason."""


# What may follow "YYYY-MM-DD hh:mm:ss": fractional seconds, then a zone: "Z" or an offset
# ("+05:00", "+0500", "+05"), as RFC 3339 §5.6 and ISO 8601 write them.
_TIME_SUFFIX = re.compile(r"(?:\.\d{1,9})?(?:(?P<z>[Zz])|(?P<sign>[+-])(?P<hh>\d{2})(?::?(?P<mm>\d{2}))?)?")


def parse_time(value: Any) -> dt.datetime:
    """OONI's "YYYY-MM-DD hh:mm:ss" (df-000, UTC), also ISO 8601 with "T", fractional seconds
    (dropped, as before) and a zone: "Z", or an offset such as "+05:00", converted to UTC.
    Returned naive, in UTC; anything else after the seconds is refused, never ignored."""
    if not isinstance(value, str) or len(value) < 19 or value[10] not in " Tt":
        raise RecordError(f"bad_measurement_start_time: {value!r}")
    try:
        moment = dt.datetime(int(value[0:4]), int(value[5:7]), int(value[8:10]),
                             int(value[11:13]), int(value[14:16]), int(value[17:19]))
    except ValueError:
        raise RecordError(f"bad_measurement_start_time: {value!r}") from None
    if len(value) == 19:
        return moment
    suffix = _TIME_SUFFIX.fullmatch(value, 19)
    if suffix is None:
        raise RecordError(f"bad_measurement_start_time: {value!r} (unreadable after the seconds)")
    if suffix["sign"]:
        hours, minutes = int(suffix["hh"]), int(suffix["mm"] or 0)
        if hours > 23 or minutes > 59:
            raise RecordError(f"bad_measurement_start_time: {value!r} (offset out of range)")
        offset = dt.timedelta(hours=hours, minutes=minutes)
        moment = moment - offset if suffix["sign"] == "+" else moment + offset
    return moment


# A test name becomes a folder name (`test_name=<t>` partitions): OONI's are short snake_case
# (ooni/spec nettests/ts-*.md); anything longer or with control characters is no test's name.
MAX_TEST_NAME = 64


def _check_test_name(test_name: str) -> str:
    if len(test_name) > MAX_TEST_NAME or not test_name.isprintable():
        shown = test_name[:40] + ("..." if len(test_name) > 40 else "")
        raise RecordError(f"bad_test_name: {shown!r} ({len(test_name)} characters; at most {MAX_TEST_NAME} "
                          f"printable ones)")
    return test_name


def parse_asn(value: Any) -> int:
    """ "AS30722" or 30722 -> 30722; "AS0"/missing -> 0. Values beyond int32 are private-use (RFC 6996) -> 0."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str):
        digits = value[2:] if value[:2].upper() == "AS" else value
        if not digits.isdigit():
            raise RecordError(f"bad_probe_asn: {value!r}")
        number = int(digits)
    elif value is None:
        return 0
    else:
        raise RecordError(f"bad_probe_asn: {value!r}")
    return number if 0 <= number < 2**31 else 0


def stable_uid(record: Mapping[str, Any]) -> str:
    uid = record.get("measurement_uid")
    if isinstance(uid, str) and uid:
        return uid
    key = "\x1f".join(str(record.get(k) or "") for k in ("report_id", "input", "measurement_start_time", "test_name"))
    return "ww-" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def probe_key(record: Mapping[str, Any], test_keys: Mapping[str, Any]) -> str:
    """The best distinct-probe identity available: OONI's `probe_id` annotation if any, else the
    report id (one report = one probe run), else the lab run id for wallwatch measurements."""
    annotations = record.get("annotations")
    if isinstance(annotations, dict) and isinstance(annotations.get("probe_id"), str):
        return "probe:" + annotations["probe_id"]
    report_id = record.get("report_id")
    if isinstance(report_id, str) and report_id:
        return "report:" + report_id
    extension = test_keys.get("x_wallwatch")
    lab = extension.get("lab") if isinstance(extension, dict) else None
    if isinstance(lab, dict) and lab.get("run_id"):
        return "lab:" + str(lab["run_id"])
    return "unknown"


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else (None if value is None else str(value))


def read_header(record: Any) -> tuple[Header, dict[str, Any], Mapping[str, Any]]:
    """(header, meta, test_keys) of a record; `meta` holds the measurement row's other columns
    read from it (names of `rows.MeasurementRow`). Raises RecordError for a record that is no measurement."""
    if not isinstance(record, dict):
        raise RecordError(f"not_a_measurement: top-level {type(record).__name__}")
    test_name = record.get("test_name")
    if not isinstance(test_name, str) or not test_name:
        raise RecordError("missing_field: test_name")
    _check_test_name(test_name)
    test_keys = record.get("test_keys")
    if not isinstance(test_keys, dict):
        raise RecordError("missing_field: test_keys")
    start = parse_time(record.get("measurement_start_time"))
    probe_cc = record.get("probe_cc")
    probe_cc = probe_cc if isinstance(probe_cc, str) and probe_cc else "ZZ"
    header = Header(measurement_uid=stable_uid(record), measurement_start_time=start, date=start.date(),
                    probe_cc=probe_cc, probe_asn=parse_asn(record.get("probe_asn")), test_name=test_name)
    meta = {
        "probe_network_name": _text(record.get("probe_network_name")),
        "probe_key": probe_key(record, test_keys),
        "software_name": _text(record.get("software_name")) or "unknown",
        "report_id": _text(record.get("report_id")),
        "input": _text(record.get("input")),
        "test_version": _text(record.get("test_version")),
        "software_version": _text(record.get("software_version")),
        "data_format_version": _text(record.get("data_format_version")),
        "resolver_ip": _text(record.get("resolver_ip")),
    }
    return header, meta, test_keys
