"""The fast ingest path (msgspec partial decode, worker processes, raw copies) changes speed, not results."""

from __future__ import annotations

import copy
import gzip
from pathlib import Path
from typing import Any

import orjson
import pytest

from wallwatch.analysis.verdicts.fingerprints import load_fingerprints
from wallwatch.analysis.ingest.pipeline import discover, ingest, read_raw
from wallwatch.analysis.ingest.decode import decode_fields
from wallwatch.analysis.ingest.header import read_header
from wallwatch.analysis.ingest.worker import iter_lines
from wallwatch.analysis.verdicts.observations import make_observations
from wallwatch.analysis.store import Store
from wallwatch.analysis.verdicts.rules import judge_measurement


def _derive(record: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    header, meta, test_keys = read_header(record)
    facts = make_observations(header, test_keys, meta["input"], load_fingerprints())
    return facts.rows, judge_measurement(header, meta, test_keys, facts)


def _variants(samples_dir: Path) -> list[dict[str, Any]]:
    """Every sample, plus a wallwatch-made one and a facebook one whose probe saw non-FB answers."""
    records = [orjson.loads(p.read_bytes()) for p in discover([samples_dir])]
    wallwatch = copy.deepcopy(next(r for r in records if r["test_name"] == "whatsapp"))
    wallwatch.update(software_name="wallwatch", annotations={"probe_id": "p1"}, report_id="ww-variant")
    wallwatch.pop("measurement_uid", None)
    wallwatch["test_keys"]["x_wallwatch"] = {"rules_version": "v/1", "lab": {"run_id": "r"}, "features": {
        "text": {"verdict": "blocked", "method": "tcp_reset", "confidence": 0.9, "rule": "x.reset"}}}
    facebook = copy.deepcopy(next(r for r in records if r["test_name"] == "facebook_messenger"))
    facebook["test_keys"]["facebook_b_api_dns_consistent"] = False
    facebook.update(report_id="fb-variant")
    facebook.pop("measurement_uid", None)
    return [*records, wallwatch, facebook]


def test_partial_decode_derives_what_the_full_parse_derives(samples_dir: Path) -> None:
    # If ingest/decode.py forgot a field the extractors read, rows or verdicts would differ here.
    for record in _variants(samples_dir):
        text = orjson.dumps(record)
        partial = decode_fields(text)
        assert partial is not None, record["test_name"]  # real samples take the fast path
        assert _derive(partial) == _derive(orjson.loads(text)), record["test_name"]


def test_odd_shapes_fall_back_to_the_full_parse(samples_dir: Path) -> None:
    base = orjson.loads((samples_dir / "ts-018-whatsapp.example.json").read_bytes())
    for test_keys in ({"queries": [None]}, {"requests": "x"}, {"tcp_connect": 5}):
        assert decode_fields(orjson.dumps(dict(base, test_keys=test_keys))) is None
    assert decode_fields(b"[1, 2]") is None and decode_fields(b"{not json") is None


def test_workers_store_what_one_process_stores(samples_dir: Path, tmp_path: Path) -> None:
    records = _variants(samples_dir)
    inputs = tmp_path / "in"
    inputs.mkdir()
    for part in range(3):  # three files; the last also repeats a measurement of the first
        chosen = records[part::3] + ([records[0]] if part == 2 else [])
        with gzip.open(inputs / f"part-{part}.jsonl.gz", "wb") as handle:
            handle.write(b"".join(orjson.dumps(r) + b"\n" for r in chosen))
    results = {}
    for workers in (1, 2):
        summary = ingest([inputs], tmp_path / f"data-{workers}", workers=workers)
        assert (summary.read, summary.stored, summary.duplicated) == (len(records) + 1, len(records), 1)
        store = Store(tmp_path / f"data-{workers}")
        results[workers] = {
            dataset: sorted(map(str, store.connect().execute(
                f"SELECT * EXCLUDE (measurement_start_time) FROM {dataset} ORDER BY ALL").fetchall()))
            for dataset in ("observations", "verdicts")
        }
    assert results[1] == results[2]
    assert len(results[2]["verdicts"]) > len(records)


@pytest.mark.parametrize("layout", ["jsonl.gz", "jsonl", "json", "json-array"])
def test_raw_text_is_kept_and_read_back(samples_dir: Path, tmp_path: Path, layout: str) -> None:
    records = [orjson.loads((samples_dir / name).read_bytes()) for name in
               ("ts-029-signal.example.json", "ts-019-facebook-messenger.example.json")]
    lines = [orjson.dumps(r) for r in records]
    if layout == "jsonl.gz":
        path = tmp_path / "in.jsonl.gz"
        path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    elif layout == "jsonl":
        path = tmp_path / "in.jsonl"
        path.write_bytes(b"\n\n".join(lines) + b"\n")  # a blank line between: line numbers count it
    elif layout == "json":
        path, records, lines = tmp_path / "in.json", records[:1], [(samples_dir / "ts-029-signal.example.json")
                                                                   .read_bytes().strip()]
        path.write_bytes(lines[0])
    else:
        path = tmp_path / "in.json"
        path.write_bytes(orjson.dumps(records, option=orjson.OPT_INDENT_2))
    data = tmp_path / "data"
    assert ingest([path], data).stored == len(records)
    store = Store(data)
    uids = [row[0] for row in store.connect().execute(
        "SELECT measurement_uid FROM measurements ORDER BY raw_line, raw_item").fetchall()]
    for uid, record, line in zip(uids, records, lines):
        raw = read_raw(store, uid)
        assert orjson.loads(raw) == record
        if layout != "json-array":
            assert raw == line  # the bytes as they were, not a re-serialisation
    kept = list((data / "raw").rglob("*.gz"))
    assert len(kept) == 1 and not list((data / "raw").rglob("*.partial"))
    with pytest.raises(KeyError):
        read_raw(store, "no-such-uid")


def test_keep_raw_false_keeps_no_copy(samples_dir: Path, data_dir: Path) -> None:
    ingest([samples_dir / "ts-018-whatsapp.example.json"], data_dir, keep_raw=False)
    assert not (data_dir / "raw").exists()
    row = Store(data_dir).connect().execute("SELECT raw_file, raw_line FROM measurements").fetchone()
    assert row == (None, None)


def test_lines_split_across_read_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wallwatch.analysis.ingest.worker as worker

    monkeypatch.setattr(worker, "READ_CHUNK", 7)  # every line straddles chunks
    lines = [b'{"a": 1}', b"", b"   ", b'{"b": "' + b"x" * 30 + b'"}', b'{"c": 3}']
    path = tmp_path / "t.jsonl.gz"
    path.write_bytes(gzip.compress(b"\n".join(lines)))  # no final newline
    assert [(n, bytes(t)) for n, t in iter_lines(path)] == [(1, lines[0]), (4, lines[3]), (5, lines[4])]


def test_whitespace_lines_are_not_records(tmp_path: Path, data_dir: Path) -> None:
    path = tmp_path / "blank.jsonl"
    path.write_bytes(b"\n" + b" " * 40 + b"\n\t\r\n")
    summary = ingest([path], data_dir)
    assert (summary.read, summary.quarantined) == (0, 0)



@pytest.mark.timeout(120)
def test_many_files_do_not_deadlock_the_workers(samples_dir: Path, tmp_path: Path) -> None:
    # More queued file names than a pipe buffer holds (64 KiB) while workers wait on the parent.
    record = orjson.loads((samples_dir / "ts-019-facebook-messenger.example.json").read_bytes())
    record.pop("measurement_uid", None)
    inputs = tmp_path / ("long-directory-name-" * 12)
    inputs.mkdir()
    for index in range(300):
        (inputs / f"{index:04d}-{'x' * 80}.jsonl").write_bytes(orjson.dumps(dict(record, report_id=f"r{index}")))
    summary = ingest([inputs], tmp_path / "data", workers=2, keep_raw=False)
    assert (summary.files_seen, summary.stored) == (300, 300)


@pytest.mark.timeout(60)
def test_a_failing_worker_fails_the_run_and_leaves_no_process(
        samples_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import multiprocessing

    import wallwatch.analysis.ingest.worker as worker

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("reader bug")

    monkeypatch.setattr(worker, "iter_lines", broken)  # forked workers inherit the patch
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("ts-018-whatsapp.example.json", "ts-029-signal.example.json", "ts-020-telegram.example.json"):
        (inputs / name).write_bytes((samples_dir / name).read_bytes())
    with pytest.raises(RuntimeError, match="reader bug"):
        ingest([inputs], tmp_path / "data", workers=2)
    assert multiprocessing.active_children() == []
    assert Store(tmp_path / "data").read_jsonl("ingested_files") == []  # nothing was marked done


def test_a_record_that_breaks_an_extractor_is_quarantined_and_the_run_goes_on(
        samples_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wallwatch.analysis.ingest.worker as worker

    real = worker.make_observations

    def broken_on_signal(header: Any, *args: Any) -> Any:
        if header.test_name == "signal":
            raise ValueError("extractor bug")
        return real(header, *args)

    monkeypatch.setattr(worker, "make_observations", broken_on_signal)
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("ts-018-whatsapp.example.json", "ts-029-signal.example.json", "ts-020-telegram.example.json"):
        (inputs / name).write_bytes((samples_dir / name).read_bytes())
    summary = ingest([inputs], tmp_path / "data", workers=2)
    assert (summary.read, summary.stored, summary.quarantined) == (3, 2, 1)
    assert summary.quarantine_reasons == {"unprocessable": 1}
