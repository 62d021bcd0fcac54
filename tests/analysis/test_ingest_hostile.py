"""Ingest against hostile and unusual input (issue 9): every failure is one record's, memory is
bounded by configuration, a second writer is refused, workers die with their parent; and files
that are not measurements are skipped as a whole (issue 10)."""

from __future__ import annotations

import datetime as dt
import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from wallwatch.analysis.ingest.header import parse_time
from wallwatch.analysis.ingest.pipeline import ingest
from wallwatch.analysis.ingest.worker import ArrayItem, LongLine, raw_name, split_lines
from wallwatch.analysis.store import Store, StoreLocked

REPO = Path(__file__).resolve().parents[2]


def _good(samples_dir: Path, **changes: object) -> dict:
    return dict(orjson.loads((samples_dir / "ts-029-signal.example.json").read_bytes()), **changes)


def _quarantine(data_dir: Path) -> list[dict]:
    return [orjson.loads(line) for path in sorted((data_dir / "quarantine").glob("*.jsonl"))
            for line in path.read_bytes().splitlines()]


# -- per record ------------------------------------------------------------------------------


def test_deep_nesting_is_one_quarantined_record(samples_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    deep_object = b'{"test_name":"x","test_keys":' + b'{"a":' * 1000 + b"1" + b"}" * 1000 + b"}"
    deep_array = b"[" * 1000 + b"]" * 1000
    path = tmp_path / "deep.jsonl"
    path.write_bytes(b"\n".join([orjson.dumps(_good(samples_dir)), deep_object, deep_array,
                                 orjson.dumps(_good(samples_dir, report_id="after"))]) + b"\n")
    summary = ingest([path], data_dir, workers=1)
    assert (summary.read, summary.stored) == (4, 2)
    assert summary.quarantined == 2, summary.quarantine_reasons


def test_a_long_test_name_is_quarantined_not_a_folder(samples_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "names.jsonl"
    path.write_bytes(b"\n".join([orjson.dumps(_good(samples_dir)),
                                 orjson.dumps(_good(samples_dir, report_id="r2", test_name="t" * 300)),
                                 orjson.dumps(_good(samples_dir, report_id="r3", test_name="bad\x00name"))]) + b"\n")
    summary = ingest([path], data_dir, workers=1)
    assert (summary.stored, dict(summary.quarantine_reasons)) == (1, {"bad_test_name": 2})
    # and the store itself refuses a folder name over the bound, whoever writes it
    import pyarrow as pa

    from wallwatch.analysis.store import StoreError

    with pytest.raises(StoreError, match="too long"):
        Store(data_dir).write("other", pa.table({"date": ["x" * 300], "n": [1]}))
    assert len(raw_name(Path("a" * 254 + ".jsonl")).encode()) <= 200


def test_a_fifo_is_skipped_with_a_message_never_opened(samples_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "good.jsonl").write_bytes(orjson.dumps(_good(samples_dir)) + b"\n")
    os.mkfifo(folder / "pipe.jsonl")  # no writer: an open for reading would block for ever
    os.mkfifo(tmp_path / "given.jsonl")
    summary = ingest([folder, tmp_path / "given.jsonl"], data_dir, workers=1)
    assert summary.stored == 1
    assert sorted(Path(line.split(":")[0]).name for line in summary.files_not_read) == ["given.jsonl", "pipe.jsonl"]
    assert all("not a regular file" in line for line in summary.files_not_read)


@pytest.mark.parametrize(("text", "utc"), [
    ("2024-01-01 10:00:00", dt.datetime(2024, 1, 1, 10)),
    ("2024-01-01T10:00:00Z", dt.datetime(2024, 1, 1, 10)),
    ("2024-01-01T10:00:00.123456Z", dt.datetime(2024, 1, 1, 10)),
    ("2024-01-01T03:00:00+05:00", dt.datetime(2023, 12, 31, 22)),
    ("2024-01-01T22:30:00-0230", dt.datetime(2024, 1, 2, 1)),
    ("2024-01-01T10:00:00+00:00", dt.datetime(2024, 1, 1, 10)),
])
def test_an_offset_is_converted_to_utc(text: str, utc: dt.datetime) -> None:
    assert parse_time(text) == utc


@pytest.mark.parametrize("text", ["2024-01-01T10:00:00 CET", "2024-01-01T10:00:00+25:00", "2024-01-01T10:00:00junk"])
def test_an_unknown_suffix_is_refused(text: str) -> None:
    from wallwatch.analysis.ingest.header import RecordError

    with pytest.raises(RecordError, match="bad_measurement_start_time"):
        parse_time(text)


def test_an_offset_reaches_the_stored_row(samples_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "offset.jsonl"
    path.write_bytes(orjson.dumps(_good(samples_dir, measurement_start_time="2024-01-01T01:00:00+05:00")) + b"\n")
    ingest([path], data_dir, workers=1)
    got = Store(data_dir).connect().execute("SELECT measurement_start_time, date FROM measurements").fetchall()
    assert got == [(dt.datetime(2023, 12, 31, 20), dt.date(2023, 12, 31))]


# -- files that are not measurements (issue 10, item 6) -----------------------------------------


def test_ground_truth_and_logs_are_skipped_whole(samples_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "replay-out"
    folder.mkdir()
    (folder / "measurements.jsonl").write_bytes(orjson.dumps(_good(samples_dir)) + b"\n")
    truth = [{"scenario": "cn", "day": f"2017-09-{d:02d}", "isp": "a", "asn": 4134, "cc": "CN", "service": "whatsapp",
              "feature": "text", "expected": "blocked", "report_id": f"r{d}"} for d in range(1, 29)]
    (folder / "ground_truth.jsonl").write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in truth))
    log = tmp_path / "censor.log"
    log.write_text("".join(f"2026-01-01 10:00:{i:02d} INFO flow {i} allowed\n" for i in range(50)))
    tiny = tmp_path / "tiny.jsonl"  # fewer records than the probation: still none is a measurement
    tiny.write_text('{"level": "info", "msg": "hello"}\n')
    summary = ingest([folder, log, tiny], data_dir, workers=1)
    assert (summary.stored, summary.quarantined) == (1, 0)
    skipped = sorted(Path(line.split(":")[0]).name for line in summary.files_not_read)
    assert skipped == ["censor.log", "ground_truth.jsonl", "tiny.jsonl"]
    assert all("not measurements" in line for line in summary.files_not_read)
    assert _quarantine(data_dir) == []
    again = ingest([folder, log, tiny], data_dir, workers=1)  # in the ledger: not read again
    assert (again.files_skipped, again.files_not_read) == (4, [])


def test_bad_records_after_a_measurement_are_still_quarantined(samples_dir: Path, data_dir: Path,
                                                                tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join([b"{not json"] * 3 + [orjson.dumps(_good(samples_dir))] + [b"[1]"] * 20) + b"\n")
    summary = ingest([path], data_dir, workers=1)
    assert (summary.stored, summary.quarantined, summary.files_not_read) == (1, 23, [])


def test_the_summary_names_the_quarantine_file(samples_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "one.jsonl"
    path.write_bytes(orjson.dumps(_good(samples_dir)) + b"\n")
    result = _cli(["ingest", str(path), "--data", str(tmp_path / "data")])
    assert result.returncode == 0, result.stderr
    assert f"quarantine file: {tmp_path / 'data' / 'quarantine'}" in " ".join(result.stdout.split())


# -- memory bounded by configuration ----------------------------------------------------------


def test_a_long_line_is_quarantined_without_being_held(samples_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    # 64 MiB of one line without a newline, then a good record: the limit is 1 MiB.
    path = tmp_path / "bomb.jsonl.gz"
    with gzip.open(path, "wb", compresslevel=1) as handle:
        handle.write(b'{"test_name": "' + b"A" * (64 << 20) + b"\n" + orjson.dumps(_good(samples_dir)) + b"\n")
    # VmHWM, the peak RSS of this process image (proc(5)); ru_maxrss would count the forking
    # pytest process's own peak, which execve(2) carries over.
    script = ("import sys; from wallwatch.analysis.ingest.pipeline import ingest; "
              "s = ingest([sys.argv[1]], sys.argv[2], workers=1, max_line_bytes=1 << 20); "
              "peak = next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')); "
              "print(s.stored, s.quarantined, peak, *s.quarantine_reasons)")
    result = subprocess.run([sys.executable, "-c", script, str(path), str(data_dir)], capture_output=True,
                            text=True, timeout=120, env=_env())
    assert result.returncode == 0, result.stderr
    stored, quarantined, peak_kb, *reasons = result.stdout.split()
    assert (int(stored), int(quarantined), reasons) == (1, 1, ["line_too_long"])
    peak_kb = int(peak_kb)
    # The old line buffer held the whole line (and copied it at every chunk): ~3x 64 MiB.
    assert peak_kb < 200 * 1024, f"peak RSS {peak_kb / 1024:.0f} MB"
    row = _quarantine(data_dir)[0]
    assert row["truncated"] and row["reason"].startswith("line_too_long: 67108879 bytes")


def test_lines_are_split_in_linear_time() -> None:
    chunks = [b"x" * 1000] * 5000 + [b"\nshort\n"]  # one 5 MB line in 5,000 chunks
    started = time.perf_counter()
    lines = list(split_lines(iter(chunks), max_line_bytes=8 << 20))
    assert [len(line) for _, line in lines] == [5_000_000, 5]
    assert time.perf_counter() - started < 2.0  # the old `pending += chunk` copied ~12 GB here


def test_a_long_json_array_is_read_element_by_element(samples_dir: Path) -> None:
    records = [_good(samples_dir, report_id=f"a{i}") for i in range(30)]
    text = b"  [" + b" , ".join(orjson.dumps(r) for r in records) + b"]\n" + orjson.dumps(records[0]) + b"\n"
    chunks = [text[i:i + 1000] for i in range(0, len(text), 1000)]
    lines = list(split_lines(iter(chunks), max_line_bytes=50_000))  # the array is ~20x that
    items = [line for _, line in lines if isinstance(line, ArrayItem)]
    assert [item.value["report_id"] for item in items] == [f"a{i}" for i in range(30)]
    assert [item.index for item in items] == list(range(30))
    assert [number for number, _ in lines] == [1] * 30 + [2]
    assert bytes(lines[-1][1]) == orjson.dumps(records[0])


def test_an_array_element_over_the_limit_ends_the_array_not_the_run(samples_dir: Path) -> None:
    big = _good(samples_dir, report_id="big", padding="x" * 200_000)
    text = b"[" + orjson.dumps(_good(samples_dir)) + b"," + orjson.dumps(big) + b"]\n{}\n"
    lines = list(split_lines(iter([text[i:i + 4096] for i in range(0, len(text), 4096)]), max_line_bytes=60_000))
    kinds = [type(line).__name__ for _, line in lines]
    assert kinds == ["ArrayItem", "BadArrayRest", "bytes"] or kinds == ["ArrayItem", "BadArrayRest", "memoryview"]
    assert "line_too_long" in lines[1][1].reason


def test_a_long_array_is_stored_and_its_raw_text_read_back(samples_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    from wallwatch.analysis.ingest.pipeline import read_raw

    records = [_good(samples_dir, report_id=f"arr{i}") for i in range(40)]
    path = tmp_path / "array.jsonl.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(b"[" + b",".join(orjson.dumps(r) for r in records) + b"]\n")
    summary = ingest([path], data_dir, workers=1, max_line_bytes=64_000)
    assert (summary.read, summary.stored, summary.quarantined) == (40, 40, 0)
    uid = Store(data_dir).connect().execute(
        "SELECT measurement_uid FROM measurements WHERE report_id = 'arr17'").fetchone()[0]
    assert orjson.loads(read_raw(Store(data_dir), uid))["report_id"] == "arr17"


def test_long_line_marker_keeps_line_numbers() -> None:
    lines = list(split_lines(iter([b"a\n" + b"{" + b"x" * 100, b"y" * 100, b"\nb\n"]), max_line_bytes=50))
    assert [(n, type(line).__name__) for n, line in lines] == [(1, "memoryview"), (2, "LongLine"), (3, "memoryview")]
    assert isinstance(lines[1][1], LongLine) and lines[1][1].length == 201


def test_many_small_files_send_few_batches(samples_dir: Path, tmp_path: Path) -> None:
    from wallwatch.analysis.ingest.worker import WorkerConfig, read_files
    from wallwatch.analysis.verdicts.fingerprints import load_fingerprints
    from wallwatch.analysis.verdicts.rules import default_rule_sets

    folder = tmp_path / "small"
    folder.mkdir()
    tasks = []
    for i in range(1500):
        path = folder / f"m{i}.jsonl"
        path.write_bytes(orjson.dumps(_good(samples_dir, report_id=f"s{i}")) + b"\n")
        tasks.append((i, path, f"k{i}"))
    config = WorkerConfig(tmp_path / "data", False, default_rule_sets(), load_fingerprints(), dt.datetime(2026, 1, 1))
    batches = list(read_files(tasks, config, set()))
    # One batch per 1,000 records, not one per file (10k files took 1.3 GB in the parent).
    assert [batch.measurements.num_rows for batch in batches] == [1000, 500]
    assert sorted(i for batch in batches for i in batch.ended) == list(range(1500))


# -- one writer; workers die with the parent -------------------------------------------------


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO / "src"))


def _cli(args: list[str], **kwargs: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wallwatch.cli", *args], capture_output=True, text=True,
                          timeout=120, env=_env(), **kwargs)


def test_a_second_writer_is_refused_naming_the_holder(samples_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "one.jsonl"
    path.write_bytes(orjson.dumps(_good(samples_dir)) + b"\n")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from wallwatch.analysis.store import Store\n"
        "with Store(sys.argv[1]).writer():\n    print('held', flush=True); time.sleep(60)"), str(data_dir)],
        stdout=subprocess.PIPE, env=_env())
    try:
        assert holder.stdout.readline().strip() == b"held"
        result = _cli(["ingest", str(path), "--data", str(data_dir)])
        assert result.returncode == 3
        assert f"PID {holder.pid}" in " ".join(result.stdout.split())
        with pytest.raises(StoreLocked, match=f"PID {holder.pid}"):
            ingest([path], data_dir)
        series = _cli(["series", "--data", str(data_dir)])  # any writer, said in one line
        assert series.returncode == 3 and f"PID {holder.pid}" in series.stderr and "Traceback" not in series.stderr
    finally:
        holder.kill()
        holder.wait()
    # The holder died (SIGKILL): its lock went with it, and the next writer goes ahead.
    summary = ingest([path], data_dir)
    assert summary.stored == 1


def test_two_ingests_at_once_store_each_measurement_once(samples_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(40):
        (folder / f"m{i}.jsonl").write_bytes(orjson.dumps(_good(samples_dir, report_id=f"t{i}")) + b"\n")
    runs = [subprocess.Popen([sys.executable, "-m", "wallwatch.cli", "ingest", str(folder), "--data", str(data_dir),
                              "--wait", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
            for _ in range(2)]
    for run in runs:
        _, err = run.communicate(timeout=120)
        assert run.returncode == 0, err
    assert Store(data_dir).connect().execute("SELECT count(*), count(DISTINCT measurement_uid) FROM measurements"
                                             ).fetchone() == (40, 40)


def _children(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as handle:
            found.extend(int(child) for child in handle.read().split())
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.timeout(120)
def test_workers_die_with_their_parent(samples_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    record = _good(samples_dir)
    for part in range(4):
        with gzip.open(folder / f"p{part}.jsonl.gz", "wb", compresslevel=1) as handle:
            handle.write(b"".join(orjson.dumps(dict(record, report_id=f"w{part}-{i}")) + b"\n" for i in range(2000)))
    parent = subprocess.Popen([sys.executable, "-m", "wallwatch.cli", "ingest", str(folder), "--data", str(data_dir),
                               "--workers", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(),
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        workers: list[int] = []
        while len(workers) < 2 and time.monotonic() < deadline and parent.poll() is None:
            workers = [pid for pid in _children(parent.pid) if _alive(pid)]
            time.sleep(0.05)
        assert len(workers) >= 2, "the workers never started"
        time.sleep(0.2)  # reading, and soon blocked on the full result queue
        workers = [pid for pid in workers if _alive(pid)]
        assert workers, "the workers finished before the kill: the test shows nothing (give them more to read)"
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in workers if _alive(pid)], "workers outlived their parent"
    finally:
        for pid in [parent.pid, *(_children(parent.pid) if _alive(parent.pid) else [])]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    # and the store still reads; a re-run finishes the job
    Store(data_dir).connect().execute("SELECT count(*) FROM verdicts").fetchone()
    ingest([folder], data_dir)
    assert Store(data_dir).connect().execute(
        "SELECT count(*), count(DISTINCT measurement_uid) FROM measurements").fetchone() == (8000, 8000)


def test_a_file_given_twice_is_read_once(samples_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(6):
        (folder / f"m{i}.jsonl").write_bytes(orjson.dumps(_good(samples_dir, report_id=f"twice{i}")) + b"\n")
    summary = ingest([folder, folder / "m3.jsonl", folder], data_dir, workers=2)
    assert (summary.files_seen, summary.files_skipped, summary.stored, summary.duplicated) == (13, 7, 6, 0)
    from wallwatch.analysis.ingest.pipeline import read_raw

    store = Store(data_dir)
    for (uid,) in store.connect().execute("SELECT measurement_uid FROM measurements").fetchall():
        assert orjson.loads(read_raw(store, uid))["report_id"].startswith("twice")


def test_an_array_over_the_stream_size_is_streamed_under_the_limit(samples_dir: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import wallwatch.analysis.ingest.worker as worker

    records = [_good(samples_dir, report_id=f"s{i}") for i in range(5)]
    line = b"[" + b",".join(orjson.dumps(r) for r in records) + b"]"
    small = b"[" + orjson.dumps(records[0]) + b"]"
    monkeypatch.setattr(worker, "ARRAY_STREAM_BYTES", 2 * len(small))
    for text in (line + b"\n" + small + b"\n", line):  # a whole line; the last line of a file
        lines = list(split_lines(iter([text]), max_line_bytes=1 << 30))
        assert [type(x).__name__ for _, x in lines][:5] == ["ArrayItem"] * 5
        assert [x.value["report_id"] for _, x in lines[:5]] == [f"s{i}" for i in range(5)]
    assert bytes(lines_of(line + b"\n" + small + b"\n")[-1][1]) == small  # a short array stays one line


def lines_of(text: bytes) -> list:
    return list(split_lines(iter([text[i:i + 3000] for i in range(0, len(text), 3000)]), max_line_bytes=1 << 30))
