"""The collector's two ways to read a measurement agree: `accept_text` (decodes only the envelope's
fields, keeps the text) and `accept` (parses it all) give the same uid and the same stored measurement,
or the same refusal."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from wallwatch.analysis.ingest.pipeline import discover
from wallwatch.web.submissions import Rejected, ReportInfo, accept, accept_text

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "ooni-samples"


@functools.cache
def _variants() -> list[tuple[str, bytes, ReportInfo | None]]:
    records = [orjson.loads(p.read_bytes()) for p in discover([SAMPLES])]
    out: list[tuple[str, bytes, ReportInfo | None]] = []
    for record in records:
        report = ReportInfo(record.get("report_id") or "r1", record["test_name"], record["probe_cc"],
                            record["probe_asn"])
        out.append(("as is", orjson.dumps(record), report))
        out.append(("pretty, with newlines", json.dumps(record, indent=2).encode(), report))
        out.append(("public probe_ip", orjson.dumps({**record, "probe_ip": "203.0.113.9"}), report))
        out.append(("no report_id, into a report", orjson.dumps({k: v for k, v in record.items()
                                                                  if k != "report_id"}), report))
        out.append(("no report_id, bulk", orjson.dumps({k: v for k, v in record.items() if k != "report_id"}),
                    None))
        out.append(("test_keys a list", orjson.dumps({**record, "test_keys": [1]}), report))
        out.append(("annotations text", orjson.dumps({**record, "annotations": "x"}), report))
        out.append(("asn a number", orjson.dumps({**record, "probe_asn": 3}), report))
        out.append(("client address inside", orjson.dumps({**record, "resolver_ip": "1.2.3.4"}), report))
    return out


def _outcome(function: Any, text: bytes, report: ReportInfo | None) -> tuple[str, Any]:
    try:
        accepted = function(text, report=report, client_ip="1.2.3.4")
    except Rejected as exc:
        return "refused", str(exc)
    return accepted.measurement_uid, orjson.loads(accepted.line)


@pytest.mark.parametrize("case", range(len(_variants())))
def test_fast_and_full_reading_agree(case: int) -> None:
    label, text, report = _variants()[case]
    fast = _outcome(accept_text, text, report)
    full = _outcome(lambda t, **kw: accept(copy.deepcopy(orjson.loads(t)), **kw), text, report)
    assert fast == full, label
    if fast[0] != "refused":
        assert b"\n" not in accept_text(text, report=report).line[:-1]  # one line in the WAL
        assert "1.2.3.4" not in json.dumps(fast[1])  # the submitter's (public) address is scrubbed
