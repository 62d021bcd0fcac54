"""The oracle: the columnar engine stores exactly what the Python path stores.

Both engines ingest the same files into two stores; the `observations`, `verdicts`
and `measurements` datasets must be equal row for row (modulo row order and the
`ingested_at` stamp), and so must the summaries and the quarantine.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from wallwatch.analysis.ingest import discover, ingest
from wallwatch.analysis.ingest_columnar import ColumnarStats, ingest_columnar
from wallwatch.analysis.store import Store

IM_TESTS = frozenset({"whatsapp", "telegram", "signal", "facebook_messenger"})


def _samples(samples_dir: Path, tests: frozenset[str] | None = None) -> list[dict[str, Any]]:
    records = [orjson.loads(p.read_bytes()) for p in discover([samples_dir])]
    return [r for r in records if tests is None or r.get("test_name") in tests]


def _corpus(directory: Path, samples: list[dict[str, Any]], count: int, files: int) -> list[Path]:
    """The bench's corpus: samples round-robin with fresh report ids, `files` .jsonl.gz files."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"corpus-{i}.jsonl.gz" for i in range(files)]
    handles = [gzip.open(p, "wb", compresslevel=1) for p in paths]
    try:
        for i in range(count):
            record = dict(samples[i % len(samples)], report_id=f"oracle-{directory.name}-{i}")
            record.pop("measurement_uid", None)
            handles[i % files].write(orjson.dumps(record) + b"\n")
    finally:
        for handle in handles:
            handle.close()
    return paths


def _perturbed(record: dict[str, Any], kind: int) -> dict[str, Any]:
    """A copy of an IM measurement with interference written into its events, so that every
    verdict rule and fact has something to disagree about (the samples are mostly "ok")."""
    record = json.loads(json.dumps(record))
    keys = record["test_keys"]
    tcp, tls = keys.get("tcp_connect") or [], keys.get("tls_handshakes") or []
    queries, requests = keys.get("queries") or [], keys.get("requests") or []
    for index, entry in enumerate(tcp):
        if kind == 0 or (kind == 3 and index % 2):
            entry["status"] = {"success": False, "failure": "connection_reset"}
        elif kind == 4:
            entry["status"] = {"failure": "generic_timeout_error"}  # no "success" key at all
        elif kind == 5 and index % 3 == 0:
            entry["status"] = {"success": False, "failure": "network_unreachable"}
        elif kind == 6:
            entry["status"] = {"success": False, "failure": "connection_refused"}
    for index, entry in enumerate(tls):
        if kind == 1:
            entry["failure"] = "generic_timeout_error"
        elif kind == 2 and index % 2:
            entry["failure"] = "connection_reset"
        elif kind == 5:
            entry["failure"] = "ssl_invalid_hostname"
            entry["server_name"] = "" if index % 2 else entry.get("server_name")
    for index, query in enumerate(queries):
        if kind == 1 and index % 2 == 0:
            query["answers"] = [{"answer_type": "A", "ipv4": "10.10.34.35"}, {"answer_type": "A", "ipv4": "8.7.198.45"}]
        elif kind == 2:
            query["failure"], query["answers"] = "dns_nxdomain_error", None
        elif kind == 4 and index % 2:
            query["failure"], query["answers"] = "generic_timeout_error", []
        elif kind == 6:
            query["failure"], query["answers"] = "dns_no_answer", None
    for index, entry in enumerate(requests):
        if kind in (0, 2):
            entry["failure"], entry["response"] = "connection_reset", None
        elif kind == 3:
            entry["response"] = {"code": 200, "body": "<html><title> Blocked </title></html>",
                                 "headers": {"Server": "Protected by WireFilter 8000"}}
        elif kind == 4 and index % 2:
            entry["failure"] = "generic_timeout_error"
    return record


def _rows(store: Store, dataset: str) -> list[tuple[Any, ...]]:
    table = store.read(dataset)
    drop = [name for name in ("ingested_at",) if name in table.column_names]
    rows = table.drop(drop).to_pylist()
    return sorted((tuple(sorted((k, repr(v)) for k, v in row.items())) for row in rows))


def _quarantine(store: Store) -> list[dict[str, Any]]:
    rows = [json.loads(line) for path in sorted((store.root / "quarantine").glob("*.jsonl"))
            for line in path.read_text().splitlines()]
    return sorted(rows, key=lambda row: (row["source"], row["line"], row["reason"]))


def _raw_copies(store: Store) -> list[tuple[str, bytes]]:
    return sorted((str(p.relative_to(store.root)), p.read_bytes()) for p in (store.root / "raw").rglob("*")
                  if p.is_file()) if (store.root / "raw").is_dir() else []


def _both(paths: list[Path], tmp_path: Path) -> ColumnarStats:
    python_store, columnar_store = Store(tmp_path / "python"), Store(tmp_path / "columnar")
    expected = ingest(paths, python_store.root, workers=1)
    got, stats = ingest_columnar(paths, columnar_store.root)
    assert got.as_dict() == expected.as_dict()
    for dataset in ("observations", "verdicts", "measurements"):
        want, have = _rows(python_store, dataset), _rows(columnar_store, dataset)
        assert len(have) == len(want), dataset
        diff = [row for row in have if row not in set(want)]
        assert not diff, f"{dataset}: {len(diff)} rows differ, first: {dict(diff[0])}"
        assert have == want, dataset
    assert _quarantine(columnar_store) == _quarantine(python_store)
    assert _raw_copies(columnar_store) == _raw_copies(python_store)
    assert stats.sql_records + stats.python_records == expected.read
    return stats


def test_every_real_sample(samples_dir: Path, tmp_path: Path) -> None:
    lines = b"".join(orjson.dumps(record) + b"\n" for record in _samples(samples_dir))
    path = tmp_path / "samples.jsonl"
    path.write_bytes(lines)
    stats = _both([path], tmp_path)
    assert stats.sql_records >= 5  # the modern IM samples take the SQL path


@pytest.mark.parametrize("corpus", ["mixed", "im"])
def test_bench_corpora(samples_dir: Path, tmp_path: Path, corpus: str) -> None:
    samples = _samples(samples_dir, IM_TESTS if corpus == "im" else None)
    paths = _corpus(tmp_path / corpus, samples, 120, 3)
    stats = _both(paths, tmp_path)
    assert stats.sql_records > 0


def test_interference_variants(samples_dir: Path, tmp_path: Path) -> None:
    samples = _samples(samples_dir, IM_TESTS)
    lines = [orjson.dumps(dict(_perturbed(record, kind), report_id=f"variant-{i}-{kind}"))
             for i, record in enumerate(samples) for kind in range(7)]
    path = tmp_path / "variants.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    stats = _both([path], tmp_path)
    assert stats.sql_records >= 5 * 7
    verdicts = Store(tmp_path / "columnar").read("verdicts")
    assert {"ok", "blocked", "unknown"} <= set(verdicts.column("verdict").to_pylist())
    assert len(set(verdicts.column("rule_id").to_pylist())) >= 10  # 13 distinct rules fire today


def test_odd_shapes_bad_lines_and_duplicates(samples_dir: Path, tmp_path: Path) -> None:
    whatsapp = orjson.loads((samples_dir / "ts-018-whatsapp.example.json").read_bytes())
    signal = orjson.loads((samples_dir / "ts-029-signal.example.json").read_bytes())
    odd_port = json.loads(json.dumps(whatsapp))
    odd_port["report_id"] = "odd-port"
    odd_port["test_keys"]["tcp_connect"][0]["port"] = "443"  # a string port: the Python path reads it
    false_failure = json.loads(json.dumps(signal))
    false_failure["report_id"] = "false-failure"
    false_failure["test_keys"]["queries"][0]["failure"] = False  # old-format "no failure"
    bad_time = dict(whatsapp, report_id="bad-time", measurement_start_time="2022-13-40 99:00:00")
    bad_asn = dict(whatsapp, report_id="bad-asn", probe_asn="ASX")
    lines = [
        orjson.dumps(whatsapp), b"", b"   ", orjson.dumps(whatsapp),  # the repeat is a duplicate
        orjson.dumps([signal, {"x": 1}]), b"{}", b"42", orjson.dumps(odd_port), b"{not json",
        orjson.dumps(false_failure), orjson.dumps(bad_time), orjson.dumps(bad_asn),
        orjson.dumps(dict(signal, report_id="plain")),
    ]
    path = tmp_path / "odd.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    nothing_stored = tmp_path / "nothing.jsonl"  # keeps no raw copy
    nothing_stored.write_bytes(b"{bad\n" + orjson.dumps(whatsapp) + b"\n")
    stats = _both([path, nothing_stored], tmp_path)
    assert stats.sql_records >= 3 and stats.routed_lines >= 8


def test_a_uid_in_both_paths_of_one_file_is_read_by_python(samples_dir: Path, tmp_path: Path) -> None:
    whatsapp = orjson.loads((samples_dir / "ts-018-whatsapp.example.json").read_bytes())
    path = tmp_path / "collision.jsonl"  # line 1 takes the SQL path, the array on line 2 the Python path
    path.write_bytes(orjson.dumps(dict(whatsapp, probe_cc="DE")) + b"\n" + orjson.dumps([whatsapp]) + b"\n")
    stats = _both([path], tmp_path)
    assert stats.sql_records == 0 and stats.routed_lines == 2


def test_a_failed_read_routes_the_pass_to_python(samples_dir: Path, tmp_path: Path) -> None:
    whatsapp = orjson.loads((samples_dir / "ts-018-whatsapp.example.json").read_bytes())
    broken = json.loads(json.dumps(whatsapp))
    broken["report_id"] = "queries-as-string"
    broken["test_keys"]["queries"] = "not a list"  # DuckDB's typed read refuses the whole pass
    path = tmp_path / "broken.jsonl.gz"
    path.write_bytes(gzip.compress(orjson.dumps(whatsapp) + b"\n" + orjson.dumps(broken) + b"\n"))
    stats = _both([path], tmp_path)
    assert stats.sql_records == 0 and stats.python_records == 2


def test_cli_engine_switch(samples_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from wallwatch.cli import app

    sample = samples_dir / "ts-029-signal.example.json"
    result = CliRunner().invoke(app, ["ingest", "--engine", "columnar", "--data", str(tmp_path / "columnar"),
                                      str(sample)])
    assert result.exit_code == 0, result.output
    ingest([sample], tmp_path / "python", workers=1)
    for dataset in ("observations", "verdicts"):
        assert _rows(Store(tmp_path / "columnar"), dataset) == _rows(Store(tmp_path / "python"), dataset)
    bad = CliRunner().invoke(app, ["ingest", "--engine", "rust", "--data", str(tmp_path / "x"), str(sample)])
    assert bad.exit_code != 0
