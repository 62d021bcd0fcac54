"""The OONI envelope (ooni/spec df-000-base, data_format_version 0.2.0) and JSONL output."""

from __future__ import annotations

import datetime as dt
import re
import secrets
import socket
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import orjson

import wallwatch

DATA_FORMAT_VERSION = "0.2.0"
SOFTWARE_NAME = "wallwatch"
# What OONI writes when the user hides these (df-000).
HIDDEN_ASN, HIDDEN_CC, HIDDEN_IP = "AS0", "ZZ", "127.0.0.1"

_ALPHABET = string.ascii_letters + string.digits


def ooni_time(moment: dt.datetime) -> str:
    """ "YYYY-MM-DD hh:mm:ss" in UTC, df-000's timestamp format."""
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def parse_measurement_time(text: str) -> dt.datetime:
    """df-000's "YYYY-MM-DD hh:mm:ss" (UTC) -> an aware datetime; ValueError naming the expected shape."""
    try:
        moment = dt.datetime.strptime(text.strip(), "%Y-%m-%d %H:%M:%S")
    except ValueError:
        raise ValueError(f"measurement time {text!r} is not \"YYYY-MM-DD hh:mm:ss\" (UTC)") from None
    return moment.replace(tzinfo=dt.timezone.utc)


# Annotation keys as OONI writes them (df-000 `annotations`: flat string -> string).
_ANNOTATION_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# Keys the envelope writes itself; a user annotation must not overwrite them.
RESERVED_ANNOTATIONS = frozenset({"engine_name", "engine_version", "platform", "wallwatch_wall_time"})


def parse_annotations(pairs: Sequence[str]) -> dict[str, str]:
    """["key=value", ...] -> {key: value}; ValueError on a malformed pair or a reserved key."""
    annotations: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not _ANNOTATION_KEY.match(key):
            raise ValueError(f"annotation {pair!r} is not key=value (key: letters, digits, _ . -)")
        if key in RESERVED_ANNOTATIONS:
            raise ValueError(f"annotation key {key!r} is written by wallwatch itself")
        annotations[key] = value
    return annotations


@dataclass(frozen=True)
class Stamp:
    """What the envelope says about where and when the probe ran (df-000).

    The defaults hide the probe as OONI does. `measurement_time` is for
    scenario replays: it becomes `measurement_start_time`/`test_start_time`
    (and the report id's date), and the real start goes to
    `annotations.wallwatch_wall_time`.
    """

    probe_asn: str = HIDDEN_ASN
    probe_cc: str = HIDDEN_CC
    probe_network_name: str = ""
    measurement_time: dt.datetime | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)
    publish_ip: bool = False


def make_report_id(start: dt.datetime, test_name: str, probe_cc: str, probe_asn: str) -> str:
    """OONI's shape: 20221207T095248Z_whatsapp_IT_30722_n1_<16 random characters>."""
    stamp = start.astimezone(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    asn_number = probe_asn[2:] if probe_asn.upper().startswith("AS") else probe_asn
    suffix = "".join(secrets.choice(_ALPHABET) for _ in range(16))
    return f"{stamp}_{test_name}_{probe_cc}_{asn_number}_n1_{suffix}"


def local_address_towards(ip: str) -> str:
    """The source address the kernel would use to reach `ip` (a UDP connect sends no packet)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe_socket:
        try:
            probe_socket.connect((ip, 53))
            return str(probe_socket.getsockname()[0])
        except OSError:
            return HIDDEN_IP


def build_measurement(
    test_keys: dict[str, Any],
    *,
    test_name: str,
    test_version: str,
    started_at: dt.datetime,
    runtime: float,
    probe_asn: str = HIDDEN_ASN,
    probe_cc: str = HIDDEN_CC,
    probe_ip: str = HIDDEN_IP,
    probe_network_name: str = "",
    resolver_ip: str = "",
    annotations: Mapping[str, str] | None = None,
    measurement_time: dt.datetime | None = None,
    input: str | None = None,
) -> dict[str, Any]:
    """The envelope; with `measurement_time` the stamps are that (simulated) time and the real one is kept."""
    stamped_at = measurement_time or started_at
    start = ooni_time(stamped_at)
    extra = {**(annotations or {})}
    if measurement_time is not None:
        extra["wallwatch_wall_time"] = ooni_time(started_at)
    return {
        "annotations": {**extra, "engine_name": SOFTWARE_NAME, "engine_version": wallwatch.__version__,
                        "platform": "linux"},
        "data_format_version": DATA_FORMAT_VERSION,
        "extensions": {"dnst": 0, "httpt": 0, "netevents": 0, "tcpconnect": 0, "tlshandshake": 0, "tunnel": 0},
        "input": input,
        "measurement_start_time": start,
        "probe_asn": probe_asn,
        "probe_cc": probe_cc,
        "probe_ip": probe_ip,
        "probe_network_name": probe_network_name,
        "report_id": make_report_id(stamped_at, test_name, probe_cc, probe_asn),
        "resolver_asn": HIDDEN_ASN,
        "resolver_ip": resolver_ip,
        "resolver_network_name": "",
        "software_name": SOFTWARE_NAME,
        "software_version": wallwatch.__version__,
        "test_keys": test_keys,
        "test_name": test_name,
        "test_runtime": round(runtime, 6),
        "test_start_time": start,
        "test_version": test_version,
    }


def finish_measurement(
    test_keys: dict[str, Any],
    *,
    test_name: str,
    test_version: str,
    started_at: dt.datetime,
    runtime: float,
    stamp: Stamp,
    resolver_ip: str,
    probe_addresses: set[str],
    input: str | None = None,
) -> dict[str, Any]:
    """Envelope + scrubbing, the same for every nettest: the probe's own addresses never leave unless published."""
    local_ip = local_address_towards(resolver_ip) if resolver_ip else HIDDEN_IP
    measurement = build_measurement(
        test_keys, test_name=test_name, test_version=test_version, started_at=started_at, runtime=runtime,
        probe_asn=stamp.probe_asn, probe_cc=stamp.probe_cc, probe_network_name=stamp.probe_network_name,
        probe_ip=local_ip if stamp.publish_ip else HIDDEN_IP, resolver_ip=resolver_ip,
        annotations=stamp.annotations, measurement_time=stamp.measurement_time, input=input,
    )
    if stamp.publish_ip:
        return measurement
    return scrub_addresses(measurement, probe_addresses | {local_ip})


SCRUBBED = "[scrubbed]"  # what OONI's netxlite writes in place of the probe's address


def scrub_addresses(measurement: dict[str, Any], addresses: set[str]) -> dict[str, Any]:
    """Replace the probe's own addresses wherever they appear as text (OONI scrubs the same way).

    Loopback and the hidden placeholder are left alone: they identify no one.
    """
    secret = sorted(a for a in addresses if a and a not in (HIDDEN_IP, "::1"))
    if not secret:
        return measurement
    # Whole addresses only: 198.18.0.2 must not eat the front of 198.18.0.25.
    pattern = re.compile(r"(?<![0-9A-Fa-f.:])(?:" + "|".join(map(re.escape, secret)) + r")(?![0-9A-Fa-f]|\.[0-9])")
    return orjson.loads(pattern.sub(SCRUBBED, orjson.dumps(measurement).decode()))


def append_jsonl(path: str | Path, measurement: dict[str, Any]) -> None:
    """One measurement per line; appended with one write so concurrent runs do not interleave lines."""
    line = orjson.dumps(measurement) + b"\n"
    path = Path(path)
    if path.parent != Path(""):
        path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as handle:
        handle.write(line)
