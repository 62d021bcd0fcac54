"""The store survives what a day brings (issue 9): `wallwatch ingest` killed with SIGKILL at write
steps chosen at random (seeded), a full disk, debris of an interrupted write; readers see only
committed files; a replace is atomic.

The kill points come from the store's test hook (analysis/commitlog.py `step`): an uninterrupted
run traces every write step (before and after each write, fsync, rename; half-way through log
appends and commit files), then each child run SIGKILLs itself at one of them. After each kill
the store must read, every measurement it shows must have exactly its observations and verdicts,
and a re-run must end with exactly the rows of the uninterrupted run.
`WALLWATCH_KILL_POINTS=N` runs N points instead of the default few dozen (CI's fuzz run).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pyarrow as pa
import pytest

from wallwatch.analysis.commitlog import RETAIN_S, load_snapshot, recover
from wallwatch.analysis.store import Store

REPO = Path(__file__).resolve().parents[2]
KILL_POINTS = int(os.environ.get("WALLWATCH_KILL_POINTS") or 14)
SEED = 20170920  # the day WhatsApp text died in China


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALLWATCH_STORE_")}
    return dict(env, PYTHONPATH=str(REPO / "src"), **extra)


def _ingest(inputs: Path, data: Path, **env: str) -> subprocess.CompletedProcess:
    # Two workers and small batches: several commits, each with its three datasets, quarantine
    # and ledger entries, and files finishing in every order.
    return subprocess.run([sys.executable, "-m", "wallwatch.cli", "ingest", str(inputs), "--data", str(data),
                           "--workers", "2", "--batch-size", "12"], capture_output=True, text=True, timeout=120,
                          env=_env(**env))


# Forks one ingest per request, after the imports (~0.5 s of CPU a run saved): the same `ingest`
# call `wallwatch ingest` makes, killed by the same hook (the CLI itself is killed by the timed
# kills, the full disk and the reference run below).
_FORKER = r"""
import json, os, sys, traceback
import wallwatch.analysis.commitlog as commitlog
from wallwatch.analysis.ingest.pipeline import ingest
for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            commitlog._KILL_AT = request["kill_at"]
            ingest([request["inputs"]], request["data"], workers=2, batch_size=12)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(json.dumps(os.waitstatus_to_exitcode(status)), flush=True)
"""


@pytest.fixture(scope="module")
def forker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[subprocess.Popen]:
    log = tmp_path_factory.mktemp("forker") / "stderr"
    with log.open("wb") as errors:
        process = subprocess.Popen([sys.executable, "-c", _FORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=errors, env=_env(), text=True)
    yield process
    process.stdin.close()
    process.wait(timeout=30)


def _forked_ingest(forker: subprocess.Popen, inputs: Path, data: Path, kill_at: int = 0) -> int:
    forker.stdin.write(orjson.dumps({"inputs": str(inputs), "data": str(data), "kill_at": kill_at}).decode() + "\n")
    forker.stdin.flush()
    return int(forker.stdout.readline())


@pytest.fixture(scope="module")
def corpus(samples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four files of measurements (one big enough to span commits), with bad lines among them."""
    import gzip

    from wallwatch.analysis.ingest.pipeline import discover

    records = [orjson.loads(p.read_bytes()) for p in discover([samples_dir])]
    folder = tmp_path_factory.mktemp("crash") / "in"
    folder.mkdir()
    lines: list[list[bytes]] = [[], [], [], []]
    for i in range(60):
        record = dict(records[i % len(records)], report_id=f"crash-{i}")
        record.pop("measurement_uid", None)
        lines[0 if i < 30 else 1 + i % 3].append(orjson.dumps(record))
        if i % 11 == 0:
            lines[0 if i < 30 else 1 + i % 3].append(b"{not json %d" % i)
    for index, part in enumerate(lines):
        data = b"\n".join(part) + b"\n"
        if index % 2:
            (folder / f"part-{index}.jsonl").write_bytes(data)
        else:
            with gzip.open(folder / f"part-{index}.jsonl.gz", "wb") as handle:
                handle.write(data)
    return folder


def _rows(data: Path) -> dict[str, list[tuple]]:
    """Every dataset's rows, sorted, without `ingested_at` (the one column that differs by run)."""
    store = Store(data)
    connection = store.connect()
    out = {}
    for dataset in ("measurements", "observations", "verdicts"):
        table = connection.execute(f"SELECT * EXCLUDE (ingested_at) FROM {dataset}" if dataset == "measurements"
                                   else f"SELECT * FROM {dataset}").fetchall()
        out[dataset] = sorted(table, key=repr)
    out["quarantine"] = sorted(
        (row["source"], row["line"], row["reason"]) for name in sorted(os.listdir(data / "quarantine"))
        for row in map(orjson.loads, store.read_log(f"quarantine/{name}").splitlines())
    ) if (data / "quarantine").is_dir() else []
    out["ledger"] = sorted(row["path"] for row in store.read_jsonl("ingested_files"))
    out["raw"] = sorted(p.relative_to(data).as_posix() for p in (data / "raw").rglob("*") if p.is_file()) \
        if (data / "raw").is_dir() else []
    connection.close()
    return out


@pytest.fixture(scope="module")
def reference(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, list[tuple]], int]:
    """The rows of an uninterrupted run, and how many write steps it took."""
    base = tmp_path_factory.mktemp("reference")
    trace = base / "trace"
    result = _ingest(corpus, base / "data", WALLWATCH_STORE_TRACE=str(trace))
    assert result.returncode == 0, result.stderr
    steps = trace.read_text().splitlines()
    assert any("commit" in s or "000000000001.json" in s for s in steps)
    rows = _rows(base / "data")
    assert len(rows["measurements"]) == 60 and len(rows["quarantine"]) == 6 and len(rows["ledger"]) == 4
    return rows, len(steps)


def _consistent(data: Path, reference: dict[str, list[tuple]]) -> None:
    """What a killed run left is a prefix of the reference, whole measurement by whole measurement."""
    rows = _rows(data)
    uids = {row[0] for row in rows["measurements"]}
    for dataset in ("observations", "verdicts"):
        expected = [row for row in reference[dataset] if row[0] in uids]
        assert rows[dataset] == expected, f"{dataset} of the visible measurements differ"
    assert set(rows["measurements"]) <= set(reference["measurements"])
    assert set(rows["quarantine"]) <= set(reference["quarantine"])
    assert len(rows["quarantine"]) == len(set(rows["quarantine"]))


def _kill_points(total: int) -> list[int]:
    rng = random.Random(SEED)
    return sorted(rng.sample(range(1, total + 1), min(KILL_POINTS, total)))


def test_kill_at_any_write_step_loses_nothing_and_stores_nothing_twice(
        corpus: Path, reference: tuple[dict[str, list[tuple]], int], forker: subprocess.Popen,
        tmp_path: Path) -> None:
    rows, total = reference
    points = _kill_points(total)
    rng = random.Random(SEED + 1)
    kills = 0
    for number, point in enumerate(points):
        data = tmp_path / f"data-{point}"
        killed = _forked_ingest(forker, corpus, data, point)
        # Two workers finish files in varying order, so a run's commits (and steps) vary a little:
        # a point past this run's last step lets it finish.
        assert killed in (-signal.SIGKILL, 0), point
        kills += killed == -signal.SIGKILL
        _consistent(data, rows)  # readers, with no writer having recovered anything
        if number % 4 == 0:  # sometimes the re-run is killed too, at a point of its own
            again = _forked_ingest(forker, corpus, data, rng.randint(1, total))
            assert again in (0, -signal.SIGKILL)
            _consistent(data, rows)
        assert _forked_ingest(forker, corpus, data) == 0, point
        assert _rows(data) == rows, f"killed at step {point}: the re-run differs from an uninterrupted run"
        leftovers = [p for p in data.rglob("*") if p.name.endswith((".tmp", ".partial"))]
        assert leftovers == [], leftovers
        shutil.rmtree(data)
    assert kills >= len(points) * 3 // 4, f"only {kills} of {len(points)} runs were killed"


TIMED_KILLS = 4


def test_kill_at_a_random_moment_loses_nothing(corpus: Path, reference: tuple[dict[str, list[tuple]], int],
                                              forker: subprocess.Popen, tmp_path: Path) -> None:
    """Timed kills reach what the step hook does not: a worker keeping a raw copy, the parent
    between batches. Only the parent is killed; its workers die with it (PR_SET_PDEATHSIG)."""
    import time

    rows, _ = reference
    rng = random.Random(SEED + 2)
    for attempt in range(TIMED_KILLS):
        data = tmp_path / f"data-{attempt}"
        child = subprocess.Popen([sys.executable, "-m", "wallwatch.cli", "ingest", str(corpus), "--data", str(data),
                                  "--workers", "2", "--batch-size", "12"], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, env=_env())
        while not (data / "_store" / "lock").exists() and child.poll() is None:
            time.sleep(0.005)  # the run has started (imports done): kill it somewhere in its work
        time.sleep(rng.uniform(0.0, 0.6))
        child.kill()
        child.wait()
        _consistent(data, rows)
        assert _forked_ingest(forker, corpus, data) == 0
        assert _rows(data) == rows, f"timed kill {attempt}: the re-run differs from an uninterrupted run"
        shutil.rmtree(data)


def test_readers_during_an_ingest_see_whole_batches(
        corpus: Path, reference: tuple[dict[str, list[tuple]], int], tmp_path: Path) -> None:
    rows, _ = reference
    data = tmp_path / "data"
    writer = subprocess.Popen([sys.executable, "-m", "wallwatch.cli", "ingest", str(corpus), "--data", str(data),
                               "--workers", "2", "--batch-size", "7"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, env=_env())
    seen = set()
    try:
        while writer.poll() is None:
            if (data / "_store" / "log").is_dir():
                _consistent(data, rows)
                seen.add(len(Store(data).read("measurements")))
    finally:
        writer.wait(timeout=120)
    assert writer.returncode == 0, writer.stderr.read()[-2000:]
    assert _rows(data) == rows
    assert len(seen) >= 2, f"the reader saw only {sorted(seen)}: no batch was read mid-run"


def _mount_tmpfs(path: Path, size_kb: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", f"ww-enospc-{uuid.uuid4().hex[:8]}", str(path)],
                   check=True, capture_output=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real file system that fills up: a tmpfs mounted for the test (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    try:
        _mount_tmpfs(mount, 64)
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, capture_output=True)


def test_a_full_disk_fails_the_run_cleanly_and_a_later_run_completes_it(
        corpus: Path, reference: tuple[dict[str, list[tuple]], int], small_disk: Path) -> None:
    rows, _ = reference
    reference_size = 0
    data = small_disk / "data"
    for size_kb in (384, 768, 1152, 1536, 4096):
        subprocess.run(["mount", "-o", f"remount,size={size_kb}k", str(small_disk)], check=True)
        result = _ingest(corpus, data)
        if result.returncode == 0:
            break
        assert result.returncode == 4, result.stderr[-3000:]  # the clean "no space" exit, no traceback
        assert "No space left on device" in result.stdout and "Traceback" not in result.stderr, result.stderr
        _consistent(data, rows)
        reference_size = size_kb
    else:
        pytest.fail("the ingest never fitted")
    assert reference_size, "the disk never filled: make it smaller"
    assert _rows(data) == rows
    assert [p for p in data.rglob("*") if p.name.endswith((".tmp", ".partial"))] == []


# -- the store's own guarantees ------------------------------------------------------------


def _table(day: str, n: int, value: int) -> pa.Table:
    import datetime as dt

    return pa.table({"date": [dt.date.fromisoformat(day)] * n, "n": [value] * n})


def test_readers_see_only_committed_files(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.write("series_x", _table("2024-01-01", 3, 1))
    # A file in the dataset's folder that no commit names (a killed writer's renamed file) is
    # not there for readers, not even through a glob-shaped name.
    stray = tmp_path / "series_x" / "date=2024-01-02" / "part-deadbeef-0.parquet"
    stray.parent.mkdir(parents=True)
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"n": [9]}), stray)
    (tmp_path / "series_x" / "date=2024-01-01" / ".part-x-0.parquet.tmp").write_bytes(b"PAR1 half")
    assert store.connect().execute("SELECT count(*), sum(n) FROM series_x").fetchone() == (3, 3)
    # The next writer removes both.
    with store.writer():
        pass
    recover(tmp_path)
    assert not stray.exists() and not (tmp_path / "series_x" / "date=2024-01-01" / ".part-x-0.parquet.tmp").exists()


def test_replace_is_one_commit_and_old_readers_keep_their_files(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.write("series_x", pa.concat_tables([_table("2024-01-01", 2, 1), _table("2024-01-02", 2, 1)]))
    before = store.connect()
    store.write("series_x", pa.concat_tables([_table("2024-01-01", 5, 2), _table("2024-01-02", 5, 2)]))
    # A connection made before the replace still reads its files (kept RETAIN_S seconds).
    assert before.execute("SELECT count(*), sum(n) FROM series_x").fetchone() == (4, 4)
    assert store.connect().execute("SELECT count(*), sum(n) FROM series_x").fetchone() == (10, 20)
    snapshot = load_snapshot(tmp_path)
    assert snapshot is not None and len(snapshot.retired) == 2 and RETAIN_S > 0


def test_a_failed_write_leaves_the_store_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import wallwatch.analysis.store as store_module

    store = Store(tmp_path)
    store.write("series_x", _table("2024-01-01", 2, 1))
    real = store_module.finish_files

    def failing(pairs: object) -> None:  # the first file renamed, then the disk is full
        first, *_ = list(pairs)
        real([first])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_module, "finish_files", failing)
    with pytest.raises(OSError):
        store.write("series_x", pa.concat_tables([_table("2024-01-01", 5, 2), _table("2024-01-02", 5, 2)]))
    assert store.connect().execute("SELECT count(*), sum(n) FROM series_x").fetchone() == (2, 2)
    assert sorted(p.name for p in (tmp_path / "series_x").rglob("*") if p.is_file()) == \
        sorted(Path(p).name for p in load_snapshot(tmp_path).files["series_x"])


def test_a_folder_written_before_the_commit_log_is_adopted(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    leaf = tmp_path / "series_x" / "date=2024-01-01"
    leaf.mkdir(parents=True)
    pq.write_table(pa.table({"n": [1, 2]}), leaf / "part-old-0.parquet")
    (leaf / "part-cut-0.parquet").write_bytes(b"PAR1 truncated by a kill of the old writer")
    (tmp_path / "events.jsonl").write_bytes(b'{"a": 1}\n{"a": 2}\n{"a": ')  # a torn last line
    store = Store(tmp_path)
    with store.writer():
        pass
    assert store.connect().execute("SELECT sum(n) FROM series_x").fetchone() == (3,)
    assert store.read_jsonl("events") == [{"a": 1}, {"a": 2}]
    assert (tmp_path / "_store" / "broken" / "series_x" / "date=2024-01-01" / "part-cut-0.parquet").exists()


def test_commits_are_checkpointed(tmp_path: Path) -> None:
    from wallwatch.analysis.commitlog import CHECKPOINT_EVERY, LOG_DIR

    store = Store(tmp_path)
    with store.writer():
        for i in range(CHECKPOINT_EVERY * 2 + 3):
            store.append_jsonl("events", [{"i": i}])
    names = os.listdir(tmp_path / LOG_DIR)
    assert sum(name.endswith(".checkpoint.json") for name in names) == 2
    assert len(names) < CHECKPOINT_EVERY + 10  # commits before the previous checkpoint are gone
    assert [row["i"] for row in store.read_jsonl("events")] == list(range(CHECKPOINT_EVERY * 2 + 3))


def test_compaction_merges_small_files_in_one_commit(tmp_path: Path) -> None:
    store = Store(tmp_path)
    for i in range(10):  # ten small batches, as a live collector commits them
        store.write("series_x", pa.concat_tables([_table("2024-01-01", 2, i), _table("2024-01-02", 1, i)]),
                    mode="append")
    store.write("series_x", _table("2024-01-03", 1, 7), mode="append")  # one file: left alone
    before = sorted(store.connect().execute("SELECT date, n FROM series_x").fetchall())
    old_reader = store.connect()
    assert store.compact("series_x") == 20
    files = store.committed_files("series_x")
    assert sorted(path.parent.name for path in files) == ["date=2024-01-01", "date=2024-01-02", "date=2024-01-03"]
    assert sorted(store.connect().execute("SELECT date, n FROM series_x").fetchall()) == before
    assert sorted(old_reader.execute("SELECT date, n FROM series_x").fetchall()) == before
    assert store.compact("series_x") == 0
