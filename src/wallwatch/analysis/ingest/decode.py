"""Decode one measurement line into only the fields the pipeline reads.

A measurement is mostly bytes nobody here looks at: `network_events`, TLS peer
certificates, `x_doh`, request headers, ... (an OONI web_connectivity record is
15-350 KB). `orjson.loads` builds a Python object for every one of them; msgspec
decoding into a `TypedDict` that names only the fields read by `ingest.read_header`,
`observations.make_observations` and `verdicts.judge_measurement` skips the rest
in C without building anything (msgspec docs, "Structs / TypedDict: unknown fields
are skipped"), and still hands plain dicts to the same code, so the fast path and
the fallback produce the same rows by construction.

Every leaf is `Any` (OONI wrote `failure: false`, ports as strings, MaybeBinary
bodies, ...: the extractors already normalise those). Only the containers are
typed; a record whose containers have another shape (a `null` inside `queries`,
`requests` as a string, a top-level array, bad JSON) fails the typed decode and
takes the fallback: `orjson.loads` of the whole record, exactly the old path.
"""

from __future__ import annotations

from typing import Any, TypedDict

import msgspec

# NB: `TypedDict(total=False)`: a key absent from the record stays absent, so
# `dict.get`, `in` and `isinstance(..., dict)` in the extractors behave as on orjson's dicts.


class _Answer(TypedDict, total=False):
    ipv4: Any
    ipv6: Any
    hostname: Any


class _Query(TypedDict, total=False):
    hostname: Any
    engine: Any
    failure: Any
    answers: list[_Answer] | None
    transaction_id: Any
    resolver_address: Any
    resolver_hostname: Any
    tags: Any


class _Status(TypedDict, total=False):
    success: Any
    failure: Any


class _TcpConnect(TypedDict, total=False):
    ip: Any
    port: Any
    status: _Status | None
    transaction_id: Any
    tags: Any


class _TlsHandshake(TypedDict, total=False):
    address: Any
    server_name: Any
    failure: Any
    tls_version: Any
    transaction_id: Any
    tags: Any
    echconfig: Any  # echcheck >= 0.2.0: empty for the control handshake (ts-039)
    outer_server_name: Any


class _Request(TypedDict, total=False):
    url: Any
    headers: Any


class _Response(TypedDict, total=False):
    code: Any
    body: Any
    headers: Any


class _HttpTransaction(TypedDict, total=False):
    request: _Request | None
    response: _Response | None
    failure: Any
    transaction_id: Any
    address: Any
    tags: Any


_TestKeys = TypedDict(  # noqa: UP013 - keys like `facebook_b_api_dns_consistent` read by verdicts
    "_TestKeys",
    {
        "queries": list[_Query] | None,
        # openvpn (ts-040) writes a dict here; its values are read leniently as they are.
        "tcp_connect": list[_TcpConnect] | dict[str, Any] | None,
        "tls_handshakes": list[_TlsHandshake] | None,
        "requests": list[_HttpTransaction] | None,
        "http_experiment_failure": Any,
        "control": Any,
        "control_failure": Any,
        "failure": Any,
        "success": Any,
        "error": Any,
        "bootstrap_time": Any,
        "x_wallwatch": Any,
        # tor (ts-023), dnscheck (ts-028), echcheck (ts-039), the middlebox tests (ts-006, ts-007):
        "targets": Any,
        "lookups": Any,
        "bootstrap_failure": Any,
        "target": Any,
        "tampering": Any,
        **{f"facebook_{key}_dns_consistent": Any
           for key in ("b_api", "b_graph", "edge", "external_cdn", "scontent_cdn", "star", "stun")},
    },
    total=False,
)


class _Annotations(TypedDict, total=False):
    probe_id: Any


class _Measurement(TypedDict, total=False):
    measurement_uid: Any
    report_id: Any
    input: Any
    test_name: Any
    test_version: Any
    test_keys: _TestKeys
    measurement_start_time: Any
    probe_cc: Any
    probe_asn: Any
    probe_network_name: Any
    resolver_ip: Any
    software_name: Any
    software_version: Any
    data_format_version: Any
    annotations: _Annotations | None


_DECODER = msgspec.json.Decoder(_Measurement)


def decode_fields(text: bytes | memoryview) -> dict[str, Any] | None:
    """The record's read fields as plain dicts, or None when it needs the fallback (orjson) path."""
    try:
        return _DECODER.decode(text)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
