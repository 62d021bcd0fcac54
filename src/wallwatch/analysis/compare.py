"""wallwatch's verdicts next to OONI's own flags: a confusion table, every disagreement with its reason.

OONI's probes write their own conclusion into each measurement: web_connectivity's
`blocking` (false, or dns / tcp_ip / http-failure / http-diff) and `accessible`
(ts-017); the IM tests' `*_status` ("ok" / "blocked") and `*_blocking` booleans
(ts-018 whatsapp, ts-019 facebook_messenger, ts-020 telegram, ts-029 signal);
a tunnel test's `failure` (ts-016/023 vanilla_tor, ts-040 openvpn, ts-026
riseupvpn, ts-030 torsf, ts-015 psiphon, ts-023 tor). `compare` judges each
measurement with the same code as `wallwatch ingest` (no store needed) and puts
the two side by side per (measurement, feature).

Agreement: wallwatch `blocked` where OONI flags blocking, or wallwatch `ok` /
`down` where OONI flags none (OONI's `blocking: false` covers a site that is
down: `accessible: false`). Everything else is a disagreement, and each gets the
reason the evidence gives: a fingerprint OONI's flag missed, a probe fault OONI
counted, a known false positive, a rule that found what OONI's flag did not, or
a flag wallwatch finds no evidence for.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from wallwatch.analysis.ingest.header import RecordError, read_header
from wallwatch.analysis.verdicts.fingerprints import FingerprintDB, load_fingerprints
from wallwatch.analysis.verdicts.observations import make_observations
from wallwatch.analysis.verdicts.rules import judge_measurement

OONI_BLOCKING = "blocking"
OONI_OK = "ok"
OONI_NONE = "no flag"

# The IM tests' flag per feature: (key, value meaning blocked) pairs, any of which flags blocking.
_IM_FLAGS: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "whatsapp": {"registration": ("registration_server_status",), "text": ("whatsapp_endpoints_status",),
                 "web": ("whatsapp_web_status",)},
    "telegram": {"text": ("telegram_tcp_blocking", "telegram_http_blocking"), "web": ("telegram_web_status",)},
    "facebook_messenger": {feature: ("facebook_tcp_blocking", "facebook_dns_blocking")
                           for feature in ("text", "media", "web", "calls", "endpoints")},
    "signal": {feature: ("signal_backend_status",) for feature in ("text", "media", "calls", "contacts", "storage")},
}
TUNNEL_TESTS = frozenset({"vanilla_tor", "tor", "torsf", "psiphon", "openvpn", "riseupvpn"})


def ooni_flag(test_name: str, feature: str, test_keys: Mapping[str, Any]) -> tuple[str, str]:
    """(blocking | ok | no flag, the keys as OONI wrote them) for one feature of a measurement."""
    if test_name == "web_connectivity":
        blocking, accessible = test_keys.get("blocking"), test_keys.get("accessible")
        detail = f"blocking={_text(blocking)}, accessible={_text(accessible)}"
        if isinstance(blocking, str):
            return OONI_BLOCKING, detail
        return (OONI_OK if blocking is False else OONI_NONE), detail
    keys = _IM_FLAGS.get(test_name, {}).get(feature)
    if keys:
        values = {key: test_keys.get(key) for key in keys if key in test_keys}
        detail = ", ".join(f"{key}={_text(value)}" for key, value in values.items()) or "none"
        if any(value is True or value == "blocked" for value in values.values()):
            return OONI_BLOCKING, detail
        if values and all(value is False or value == "ok" for value in values.values()):
            return OONI_OK, detail
        return OONI_NONE, detail
    if test_name in TUNNEL_TESTS:
        failure = test_keys.get("failure")
        return (OONI_BLOCKING if failure else OONI_OK), f"failure={_text(failure)}"
    return OONI_NONE, "none"


def _text(value: Any) -> str:
    return orjson.dumps(value).decode() if not isinstance(value, str) else value


@dataclass(frozen=True, slots=True)
class Comparison:
    source: str
    measurement_uid: str
    test_name: str
    input: str | None
    probe_cc: str
    feature: str
    verdict: str
    method: str | None
    rule_id: str
    confirmed: bool
    fingerprint: str | None
    probe_fault: str | None
    ooni: str
    ooni_detail: str
    agree: bool
    reason: str | None

    def to_record(self) -> dict[str, Any]:
        return asdict(self)


def agrees(verdict: str, ooni: str) -> bool:
    # Throttled is reachable (slowed): OONI's flags, which only say reachable or not, call it accessible.
    return (verdict == "blocked" and ooni == OONI_BLOCKING) or (
        verdict in ("ok", "down", "throttled") and ooni == OONI_OK)


def reason(row: Mapping[str, Any], ooni: str) -> str:
    """Why wallwatch's verdict and OONI's flag differ, from the evidence the verdict cites."""
    verdict, rule = row["verdict"], row["rule_id"]
    if verdict == "blocked" and row["fingerprint"] and ooni != OONI_BLOCKING:
        return (f"a fingerprint OONI's flag missed: {row['fingerprint']} ({row['fingerprint_scope']}, "
                f"{row['fingerprint_location']})")
    if row["probe_fault"] and ooni == OONI_BLOCKING:
        return f"a probe fault OONI's flag counted as blocking: {row['probe_fault']}"
    if row["unclassified_failure"] and verdict == "unknown" and ooni == OONI_BLOCKING:
        return f"a failure string wallwatch's taxonomy does not class yet: {row['unclassified_failure']}"
    if rule.endswith("known_false_positive") and ooni == OONI_BLOCKING:
        return f"a known false positive of OONI's: the page matches {row['fingerprint']} (scope fp)"
    if rule.endswith("vague_blockpage"):
        return f"only a vague blocking word ({row['fingerprint']}): not evidence on its own"
    if verdict == "blocked":
        return f"wallwatch's rule {rule} ({row['method']}) found interference OONI's flag did not"
    if ooni == OONI_BLOCKING:
        return f"OONI's flag without evidence wallwatch accepts: {rule} says {verdict}"
    if ooni == OONI_NONE:
        return "OONI's probe wrote no flag for this feature"
    return f"wallwatch could not judge: {rule}"


def compare_record(record: Any, source: str, fingerprints: FingerprintDB) -> list[Comparison]:
    """One measurement's verdicts next to OONI's flags (empty if it is not a measurement or not judged)."""
    try:
        header, meta, test_keys = read_header(record)
    except RecordError:
        return []
    facts = make_observations(header, test_keys, meta["input"], fingerprints)
    out = []
    for row in judge_measurement(header, meta, test_keys, facts):
        ooni, detail = ooni_flag(header.test_name, row["feature"], test_keys)
        agree = agrees(row["verdict"], ooni)
        out.append(Comparison(
            source=source, measurement_uid=header.measurement_uid, test_name=header.test_name, input=meta["input"],
            probe_cc=header.probe_cc, feature=row["feature"], verdict=row["verdict"], method=row["method"],
            rule_id=row["rule_id"], confirmed=row["confirmed"], fingerprint=row["fingerprint"],
            probe_fault=row["probe_fault"], ooni=ooni, ooni_detail=detail, agree=agree,
            reason=None if agree else reason(row, ooni)))
    return out


def iter_records(path: Path) -> Iterator[Any]:
    """The records of one measurement file (.json, .jsonl, .jsonl.gz; a JSON array's elements)."""
    from wallwatch.analysis.ingest.worker import iter_lines

    for _, line in iter_lines(path):
        try:
            value = orjson.loads(bytes(line))
        except orjson.JSONDecodeError:
            continue
        yield from (value if isinstance(value, list) else [value])


def compare_paths(paths: Iterable[Path], root: Path | None = None) -> list[Comparison]:
    from wallwatch.analysis.ingest.pipeline import discover

    fingerprints = load_fingerprints()
    out: list[Comparison] = []
    for path in discover(paths):
        source = str(path.relative_to(root)) if root is not None and path.is_relative_to(root) else str(path)
        for record in iter_records(path):
            out.extend(compare_record(record, source, fingerprints))
    return out


def confusion(comparisons: Iterable[Comparison]) -> Counter[tuple[str, str]]:
    """(wallwatch verdict, OONI flag) -> how many (measurement, feature) pairs."""
    return Counter((c.verdict, c.ooni) for c in comparisons)
