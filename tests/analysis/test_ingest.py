"""Ingest: every real sample reads, re-ingest adds nothing, bad records are quarantined, formats agree."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import orjson

from wallwatch.analysis.ingest.pipeline import LEDGER, discover, ingest, parse_asn, stable_uid
from wallwatch.analysis.store import Store


def _measurement_files(samples_dir: Path) -> list[Path]:
    return list(discover([samples_dir]))


def test_every_sample_file_ingests(samples_dir: Path, data_dir: Path) -> None:
    files = _measurement_files(samples_dir)
    manifest = [line.split("\t") for line in (samples_dir / "MANIFEST.tsv").read_text().splitlines()[1:]]
    expected = {row[0] for row in manifest if row[3] == "measurement"}
    assert {str(f.relative_to(samples_dir)) for f in files} == expected
    summary = ingest([samples_dir], data_dir)
    assert (summary.read, summary.stored, summary.quarantined) == (len(files), len(files), 0)
    connection = Store(data_dir).connect()
    by_test = dict(connection.execute("SELECT test_name, count(*) FROM measurements GROUP BY 1").fetchall())
    expected_tests = {}
    for row in manifest:
        if row[3] == "measurement":
            expected_tests[row[4]] = expected_tests.get(row[4], 0) + 1
    assert by_test == expected_tests
    # Every measurement of a test we judge gets at least one verdict naming its rule.
    judged = connection.execute(
        "SELECT count(DISTINCT measurement_uid) FROM verdicts WHERE rule_id IS NOT NULL AND rules_version IS NOT NULL"
    ).fetchone()
    assert judged == (len(files),)
    # Old data formats keep their facts: the 2019 telegram (df 0.3.0) has 12 DC connects.
    tcp = connection.execute(
        "SELECT count(*) FROM observations o JOIN measurements m USING (measurement_uid) "
        "WHERE m.data_format_version = '0.3.0' AND o.tcp_success"
    ).fetchone()
    assert tcp == (12,)


def test_reingest_adds_nothing_and_dedups_across_files(samples_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    first = ingest([samples_dir], data_dir)
    again = ingest([samples_dir], data_dir)
    assert again.files_skipped == first.files_seen and again.stored == 0
    # The same measurement in another file (another name, another format) is a duplicate.
    copy = tmp_path / "copy.jsonl.gz"
    record = orjson.loads((samples_dir / "ts-018-whatsapp.example.json").read_bytes())
    with gzip.open(copy, "wb") as handle:
        handle.write(orjson.dumps(record) + b"\n")
    third = ingest([copy], data_dir)
    assert (third.read, third.stored, third.duplicated) == (1, 0, 1)
    store = Store(data_dir)
    assert store.read("measurements").num_rows == first.stored
    assert len(store.read_jsonl(LEDGER)) == first.files_seen + 1


def test_bad_records_are_quarantined_and_the_run_continues(samples_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    good = orjson.loads((samples_dir / "ts-029-signal.example.json").read_bytes())
    other = dict(good, report_id="another-report")
    lines = [
        orjson.dumps(good),
        b"{not json",
        b"[1, 2]",
        orjson.dumps({"test_name": "signal"}),
        orjson.dumps(dict(good, report_id="r3", measurement_start_time="yesterday")),
        orjson.dumps(dict(good, report_id="r4", probe_asn="ASX")),
        b"",
        orjson.dumps(other),
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    summary = ingest([path], data_dir)
    assert (summary.read, summary.stored, summary.quarantined) == (8, 2, 6)
    assert summary.quarantine_reasons == {
        "invalid_json": 1, "not_a_measurement": 2, "missing_field": 1, "bad_measurement_start_time": 1,
        "bad_probe_asn": 1,
    }
    quarantine_files = list((data_dir / "quarantine").glob("*.jsonl"))
    rows = [json.loads(line) for f in quarantine_files for line in f.read_text().splitlines()]
    assert [row["line"] for row in rows] == [2, 3, 3, 4, 5, 6]
    assert rows[0]["record"] == "{not json" and rows[0]["source"] == str(path)


def test_truncated_gzip_keeps_what_was_read(samples_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    record = orjson.loads((samples_dir / "ts-020-telegram.example.json").read_bytes())
    blob = b"".join(orjson.dumps(dict(record, report_id=f"r{i}")) + b"\n" for i in range(50))
    path = tmp_path / "cut.jsonl.gz"
    compressed = gzip.compress(blob)
    path.write_bytes(compressed[: len(compressed) * 2 // 3])
    summary = ingest([path], data_dir)
    assert 0 < summary.stored < 50
    assert summary.quarantine_reasons.get("unreadable_file") == 1


def test_changed_file_is_read_again(samples_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    record = orjson.loads((samples_dir / "ts-018-whatsapp.example.json").read_bytes())
    path = tmp_path / "grow.jsonl"
    path.write_bytes(orjson.dumps(record) + b"\n")
    assert ingest([path], data_dir).stored == 1
    with path.open("ab") as handle:
        handle.write(orjson.dumps(dict(record, report_id="second")) + b"\n")
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    summary = ingest([path], data_dir)
    assert (summary.files_skipped, summary.stored, summary.duplicated) == (0, 1, 1)


def test_header_parsing() -> None:
    assert parse_asn("AS30722") == 30722 and parse_asn(30722) == 30722 and parse_asn(None) == 0
    assert parse_asn("AS4200000000") == 0  # private-use 32-bit ASN (RFC 6996) does not fit int32
    uid = stable_uid({"report_id": "r", "input": None, "measurement_start_time": "t", "test_name": "x"})
    assert uid.startswith("ww-") and uid == stable_uid({"report_id": "r", "measurement_start_time": "t", "test_name": "x"})
    assert stable_uid({"measurement_uid": "20240101_IT_x"}) == "20240101_IT_x"
