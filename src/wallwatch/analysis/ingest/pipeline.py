"""Ingest OONI measurements (and wallwatch's own) into the store, streaming, parallel and resumable.

Input: files or folders of `.json` (one measurement, as OONI's API and the spec
examples serve them), `.jsonl` and `.jsonl.gz` / `.json.gz` (one measurement per
line, OONI's raw archive layout `raw/<YYYYMMDD>/<HH>/<CC>/<test>/*.jsonl.gz`).
Each record is read once: header -> observations -> verdicts (`worker.py`),
in worker processes, one file at a time per worker; this parent process dedups,
collects the Arrow batches and writes Parquet every `batch_size` measurements.
Memory is bounded by `batch_size` measurements' rows here plus a few
`RECORDS_PER_BATCH` batches in flight (the result queue is bounded).

Every batch is one commit (`Store.transaction`, analysis/commitlog.py): its measurements,
observations, verdicts, quarantine rows, the ledger entries of the files it finished and
the raw copies its rows point at become visible together or not at all, whatever kills
the run. The run holds the data folder's writer lock throughout.

Resumability, two ways:
* a ledger of finished files (`<data>/ingested_files.jsonl`) keyed by path, size,
  mtime and a sha256 of the first and last 64 KiB: an unchanged file is skipped;
  a file enters the ledger in the commit that holds its last rows;
* dedup by `measurement_uid` across files and runs: OONI's own uid when present,
  else "ww-" + sha256(report_id, input, measurement_start_time, test_name)[:32]
  (the fields of OONI's fastpath ReplacingMergeTree key, ooni/backend docs/Database.md).
  With several workers, which of two copies of one measurement in two files of the
  same run is kept depends on which file finishes first; counts do not.

The raw text is kept as the input file itself (a gzip copy under `<data>/raw/`)
and each measurement row points at it (`raw_file`, `raw_line`, `raw_item`), as
OONI's own `jsonl` table points from measurement_uid to (s3path, linenum)
(ooni/backend docs/Database.md): no record is re-serialised; `read_raw` gets one back.

A record that cannot be read goes to `<data>/quarantine/<date>.jsonl` with the reason
and is counted; the run continues (a re-read file's rows an interrupted run already
quarantined are not written twice: a commit mark counts them). A file that is not a
regular file, or whose first records are none of them measurements, is skipped whole
with one line in `IngestSummary.files_not_read`.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import datetime as dt
import hashlib
import multiprocessing
import os
import queue
import signal
import stat
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from wallwatch.analysis.archive.bucket import S3Object, endpoint_url, list_objects
from wallwatch.analysis.verdicts.fingerprints import FingerprintDB, load_fingerprints
from wallwatch.analysis.ingest.header import (  # noqa: F401 - re-exported: the header API lives here too
    RecordError,
    parse_asn,
    parse_time,
    probe_key,
    read_header,
    stable_uid,
)
from wallwatch.analysis.commitlog import Snapshot, fsync_all
from wallwatch.analysis.ingest.cluster import FileLost, connect, read_on_cluster
from wallwatch.analysis.ingest.worker import (
    DEFAULT_MAX_LINE_BYTES,
    RAW_DIR,
    RECORDS_PER_BATCH,
    Batch,
    Source,
    WorkerConfig,
    raw_name,
    read_files,
    read_raw_line,
)
from wallwatch.analysis.store import Store
from wallwatch.analysis.verdicts.rules import RuleSet, default_rule_sets

SUFFIXES = (".json", ".jsonl", ".jsonl.gz", ".json.gz")
LEDGER = "ingested_files"
LEDGER_LOG = f"{LEDGER}.jsonl"
QUARANTINE_DIR = "quarantine"
FINGERPRINT_CHUNK = 64 * 1024
# Measurements per Parquet write: large writes keep files few and big (one file per
# partition per write); 20k measurements are ~30 MB of derived rows.
DEFAULT_BATCH = 20_000
# How long the parent waits on the result queue before checking that its workers live.
WORKER_POLL_S = 1.0


@dataclass
class IngestSummary:
    files_seen: int = 0
    files_skipped: int = 0
    read: int = 0
    stored: int = 0
    duplicated: int = 0
    quarantined: int = 0
    observations: int = 0
    verdicts: int = 0
    quarantine_reasons: Counter[str] = field(default_factory=Counter)
    tests: Counter[str] = field(default_factory=Counter)  # stored measurements per test name
    # Files not read at all, with why: not a regular file (a FIFO, a device), or not measurements.
    files_not_read: list[str] = field(default_factory=list)
    # Where this run's quarantined records went (one file per UTC day).
    quarantine_file: str = ""
    # Verdicts naming a failure string the taxonomy does not list (verdicts/failures.py), per string:
    # what a maintainer should class in verdicts/data/failures.csv.
    unclassified_failures: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        counters = ("quarantine_reasons", "tests", "unclassified_failures")
        data = {k: v for k, v in self.__dict__.items() if k not in counters}
        for name in counters:
            data[name] = dict(getattr(self, name))
        return data


# -- reading files -----------------------------------------------------------------


def discover(paths: Iterable[Path | str | S3Object], not_read: list[str] | None = None,
             endpoint: str | None = None) -> Iterator[Source]:
    """Measurement files under `paths`, sorted; OONI minipipeline `analysis*.json` files are not measurements.

    A path that is not a regular file (a FIFO, a socket, a device) is never opened: it is named
    in `not_read` (a FIFO opened for reading blocks until a writer comes). An `s3://bucket/prefix`
    names every measurement object under it (listed on `endpoint`, default archive.bucket's)."""
    for path in paths:
        if isinstance(path, S3Object):
            yield path
            continue
        if isinstance(path, str) and path.startswith("s3://"):
            yield from list_objects(path, endpoint_url(endpoint))
            continue
        path = Path(path)
        if path.is_dir():
            for child in sorted(p for p in path.rglob("*") if _is_measurement_file(p)):
                if child.is_file():
                    yield child
                elif not child.is_dir() and not_read is not None:
                    not_read.append(f"{child}: not a regular file, skipped")
        elif path.is_file():
            yield path
        elif path.exists():
            if not_read is None:
                raise OSError(f"{path}: not a regular file")
            not_read.append(f"{path}: not a regular file, skipped")
        else:
            raise FileNotFoundError(path)


def _is_measurement_file(path: Path) -> bool:
    name = path.name
    return name.endswith(SUFFIXES) and not name.startswith("analysis") and name != "MANIFEST.tsv"


# -- the run -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileKey:
    path: str
    size: int
    mtime_ns: int
    edges_sha256: str

    @classmethod
    def of(cls, path: Source) -> FileKey:
        """A local file's key; an S3 object's is its URL, size, last-modified time and ETag (the
        object's content identity: no byte of it needs to be read to know it again)."""
        if isinstance(path, S3Object):
            return cls(path.url, path.size, path.mtime_ns, f"etag:{path.etag}")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # never blocks, even on a FIFO
        with os.fdopen(fd, "rb") as handle:
            stat_ = os.fstat(fd)
            if not stat.S_ISREG(stat_.st_mode):
                raise OSError(f"{path}: not a regular file")
            digest = hashlib.sha256()
            digest.update(handle.read(FINGERPRINT_CHUNK))
            if stat_.st_size > FINGERPRINT_CHUNK:
                handle.seek(max(FINGERPRINT_CHUNK, stat_.st_size - FINGERPRINT_CHUNK))
                digest.update(handle.read(FINGERPRINT_CHUNK))
        return cls(str(path.resolve()), stat_.st_size, stat_.st_mtime_ns, digest.hexdigest())

    @property
    def ledger_key(self) -> tuple[str, int, int, str]:
        return (self.path, self.size, self.mtime_ns, self.edges_sha256)

    @property
    def raw_key(self) -> str:
        """A name for this version of the file's raw copy (a changed file gets a new one)."""
        return hashlib.sha256("\x1f".join(map(str, self.ledger_key)).encode()).hexdigest()[:20]


@dataclass(frozen=True, slots=True)
class _WorkerFailed:
    file_index: int
    trace: str
    # An OSError (a full disk while keeping a raw copy) is raised again as itself in the parent.
    errno: int | None = None
    strerror: str | None = None
    filename: str | None = None


_WORKER_DONE = "done"


@contextmanager
def no_cyclic_gc() -> Iterator[None]:
    """Pause CPython's cyclic garbage collector (reference counting still frees everything).

    Ingest allocates millions of small acyclic dicts while holding a large live set
    (the seen uids, pending batches); every generation-2 pass walks all of it. Measured
    on the bench corpus: the msgspec decode alone takes 2.3x longer with the collector on.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies (prctl(2) PR_SET_PDEATHSIG), so a
    `kill -9` of `wallwatch ingest` leaves no worker blocked on a queue nobody reads. If the
    parent died before the call, exit now (the signal is only sent for a death after it)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the parent's poll still ends the run
        pass
    if os.getppid() != parent_pid:
        os._exit(1)


def _work(tasks: Any, results: Any, config: WorkerConfig, seen: set[str], parent_pid: int) -> None:
    """A worker process: read the files it is given until the None sentinel."""
    die_with_parent(parent_pid)
    gc.disable()  # see no_cyclic_gc; this process ends with the run
    current = [-1]

    def task_list() -> Iterator[tuple[int, Source, str]]:
        while (task := tasks.get()) is not None:
            current[0] = task[0]
            yield task

    try:
        for batch in read_files(task_list(), config, seen):
            results.put(batch)
    except OSError as exc:
        results.put(_WorkerFailed(current[0], traceback.format_exc(), exc.errno, exc.strerror,
                                  None if exc.filename is None else str(exc.filename)))
        return
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
        results.put(_WorkerFailed(current[0], traceback.format_exc()))
        return
    results.put(_WORKER_DONE)


class Ingester:
    """One ingest run into `store`: call `ingest_paths`, read `summary`.

    `workers`: processes reading files in parallel (default: one per CPU, at most one
    per file); 1 reads in this process. `lock_wait`: seconds to wait for another writer
    of the data folder (default: fail at once, naming it). `max_line_bytes`: the longest
    line read whole (longer ones are quarantined, or streamed when they are a JSON array).
    """

    def __init__(self, store: Store, *, batch_size: int = DEFAULT_BATCH, keep_raw: bool = True,
                 rule_sets: Mapping[str, RuleSet] | None = None, fingerprints: FingerprintDB | None = None,
                 on_file: Callable[[Source, IngestSummary], None] | None = None, workers: int | None = None,
                 lock_wait: float = 0.0, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
                 s3_endpoint: str | None = None, cluster: str | None = None, resident: bool = False) -> None:
        self.store = store
        self.s3_endpoint = s3_endpoint
        self.cluster = cluster
        # The caller holds the writer lock across runs (the live pipeline, web/live.py): nobody else
        # can commit, so the stored uids and the ledger are read once and then kept up to date here
        # rather than read again from the whole store on every run.
        self.resident = resident
        self._state_loaded = False
        self.batch_size = batch_size
        self.workers = workers
        self.on_file = on_file
        self.lock_wait = lock_wait
        self.summary = IngestSummary()
        ingested_at = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
        # A worker's batch is never larger than a commit: small commits (a live collector's) stay small.
        self.config = WorkerConfig(store.root, keep_raw, rule_sets or default_rule_sets(),
                                   fingerprints or load_fingerprints(), ingested_at, max_line_bytes,
                                   min(RECORDS_PER_BATCH, batch_size))
        self.seen_uids: set[str] = set()
        self.done_files: set[tuple[str, int, int, str]] = set()
        self._files: list[tuple[Source, FileKey]] = []
        self._admitted: set[tuple[str, int, int, str]] = set()
        self._tables: dict[str, list[pa.Table]] = {"measurements": [], "observations": [], "verdicts": []}
        self._pending = 0
        self._quarantine: list[dict[str, Any]] = []
        self._ended: list[int] = []
        self._snapshot: Snapshot | None = None
        # Per file index: quarantine rows this run produced, and how many an interrupted run
        # committed before (a re-read file's first that-many rows are not written again).
        self._quarantined_rows: Counter[int] = Counter()
        self._quarantine_done: dict[int, int] = {}
        self._referenced_raw: set[str] = set()  # raw copies rows of this run point at
        self._new_raw: set[str] = set()  # ... not yet committed
        self.summary.quarantine_file = str(store.root / _quarantine_log())

    def _load_state(self) -> None:
        """What is committed (read with the writer lock held, after any recovery), and a fresh
        start for what one run tracks per file."""
        snapshot = self.store.snapshot()
        assert snapshot is not None  # the writer lock adopts a folder with no commit yet
        self._snapshot = snapshot
        self._files, self._admitted = [], set()
        self._quarantined_rows, self._quarantine_done = Counter(), {}
        self._referenced_raw = set()
        if self.resident and self._state_loaded:
            return
        self.seen_uids = self._stored_uids(snapshot)
        self.done_files = {_ledger_key(row) for row in self.store.read_jsonl(LEDGER)}
        self._state_loaded = True

    def forget_files(self, paths: Iterable[Path]) -> None:
        """Drop finished files from the in-memory ledger (a resident ingester's files that are
        gone for good, such as the live pipeline's deleted WAL segments): the ledger on disk keeps
        them, memory need not."""
        gone = {str(Path(path).resolve()) for path in paths}
        self.done_files = {key for key in self.done_files if key[0] not in gone}

    def _stored_uids(self, snapshot: Snapshot) -> set[str]:
        files = self.store.committed_files("measurements", snapshot)
        if not files:
            return set()
        # pyarrow rather than DuckDB: no DuckDB threads exist in this process when workers fork.
        dataset = pads.dataset([str(path) for path in files], format="parquet")
        return set(dataset.to_table(columns=["measurement_uid"]).column(0).to_pylist())

    # -- the run ---------------------------------------------------------------

    def ingest_paths(self, paths: Iterable[Path | str | S3Object]) -> IngestSummary:
        with self.store.writer(self.lock_wait):
            self._load_state()
            found = list(discover(paths, self.summary.files_not_read, self.s3_endpoint))
            todo = [index for path in found if (index := self._admit(path)) is not None]
            workers = self.workers or min(os.cpu_count() or 1, len(todo))
            with no_cyclic_gc():
                if self.cluster and todo:
                    self._read_on_cluster(todo)
                elif workers <= 1 or len(todo) <= 1:
                    self._read_here(todo)
                else:
                    self._read_in_workers(todo, workers)
                self.flush()
        return self.summary

    def ingest_file(self, path: Source) -> None:
        with self.store.writer(self.lock_wait):
            self._load_state()
            index = self._admit(path)
            if index is not None:
                with no_cyclic_gc():
                    self._read_here([index])
                    self.flush()

    def _admit(self, path: Source) -> int | None:
        """The file's index for reading, or None when the ledger says it is done (or it cannot be)."""
        self.summary.files_seen += 1
        try:
            key = FileKey.of(path)
        except OSError as exc:
            self.summary.files_not_read.append(f"{path}: {exc.strerror or exc}, skipped")
            return None
        if key.ledger_key in self.done_files or key.ledger_key in self._admitted:
            self.summary.files_skipped += 1  # done, or given twice in this run (one raw copy, one reader)
            return None
        self._admitted.add(key.ledger_key)
        self._files.append((path, key))
        index = len(self._files) - 1
        assert self._snapshot is not None
        done = self._snapshot.marks.get(_progress_mark(key))
        if done:
            self._quarantine_done[index] = int(done)
        return index

    def _tasks(self, todo: list[int]) -> Iterator[tuple[int, Source, str]]:
        for index in todo:
            path, key = self._files[index]
            yield index, path, key.raw_key

    def _read_here(self, todo: list[int]) -> None:
        for batch in read_files(self._tasks(todo), self.config, self.seen_uids):
            self._take(batch)

    def _read_in_workers(self, todo: list[int], workers: int) -> None:
        # fork: the workers share the config and the stored uids without pickling them.
        context = multiprocessing.get_context("fork")
        # A Queue (its feeder thread writes the pipe) so queuing thousands of file names never
        # blocks the parent while the workers wait for it to take their results.
        tasks = context.Queue()
        results = context.Queue(maxsize=2 * workers)  # bounded: backpressure keeps memory flat
        processes = [context.Process(target=_work, args=(tasks, results, self.config, self.seen_uids, os.getpid()),
                                     daemon=True)
                     for _ in range(workers)]
        for process in processes:
            process.start()
        finished = False
        try:
            for task in self._tasks(todo):
                tasks.put(task)
            for _ in processes:
                tasks.put(None)
            running = workers
            while running:
                try:
                    message = results.get(timeout=WORKER_POLL_S)
                except queue.Empty:
                    if any(p.exitcode not in (None, 0) for p in processes):
                        raise RuntimeError("an ingest worker died") from None
                    continue
                if message == _WORKER_DONE:
                    running -= 1
                elif isinstance(message, _WorkerFailed):
                    if message.errno is not None:
                        raise OSError(message.errno, message.strerror, message.filename)
                    failed = self._files[message.file_index][0] if message.file_index >= 0 else "?"
                    raise RuntimeError(f"ingest worker failed on {failed}:\n{message.trace}")
                else:
                    self._take(message)
            finished = True
        finally:
            for process in processes:
                if finished:
                    process.join(timeout=5)
                if process.is_alive():  # the parent failed: a worker may wait on a full queue forever
                    process.terminate()
                    process.join(timeout=5)
            tasks.close()
            tasks.cancel_join_thread()  # sentinels nobody will read after a failure must not block exit
            results.close()

    def _read_on_cluster(self, todo: list[int]) -> None:
        """The files' tasks on the Dask cluster `self.cluster` (ingest/cluster.py); this process
        stays the one writer, taking each file's batches as a local worker's."""
        assert self.cluster is not None
        try:
            with connect(self.cluster, self.workers) as client:
                for index, outcome in read_on_cluster(client, self._tasks(todo), self.config, self.seen_uids):
                    if isinstance(outcome, FileLost):
                        self.summary.files_not_read.append(f"{self._files[index][0]}: {outcome.why}")
                        continue
                    for batch in outcome:
                        self._take(batch)
        finally:
            # A worker killed while keeping a raw copy leaves its partial file; no task of this run
            # runs any more and no other writer exists, so what is left of them goes.
            for index in todo:
                for partial in (self.store.root / RAW_DIR / self._files[index][1].raw_key).glob("*.partial"):
                    partial.unlink(missing_ok=True)

    def _take(self, batch: Batch) -> None:
        self.summary.read += batch.read
        self.summary.duplicated += batch.duplicated
        for index, row in batch.quarantine:
            self._quarantined_rows[index] += 1
            if self._quarantined_rows[index] <= self._quarantine_done.get(index, 0):
                continue  # committed by an earlier, interrupted run that read this file too
            self.summary.quarantined += 1
            self.summary.quarantine_reasons[row["reason"].split(":", 1)[0]] += 1
            self._quarantine.append(row)
        if batch.measurements is not None:
            self._add_rows(batch)
        for index, why in batch.not_measurements:
            self.summary.files_not_read.append(f"{self._files[index][0]}: {why}; skipped as not measurements")
        for index in batch.ended:
            self._end_file(index)
        if self._pending >= self.batch_size:
            self.flush()

    def _end_file(self, index: int) -> None:
        self._ended.append(index)
        path, key = self._files[index]
        raw_file = f"{RAW_DIR}/{key.raw_key}/{raw_name(path)}"
        assert self._snapshot is not None
        if (self.config.keep_raw and raw_file not in self._referenced_raw
                and raw_file not in self._snapshot.raw):
            (self.store.root / raw_file).unlink(missing_ok=True)  # no row points at it
        if self.on_file:
            self.on_file(path, self.summary)

    def _add_rows(self, batch: Batch) -> None:
        assert batch.measurements is not None and batch.observations is not None and batch.verdicts is not None
        measurements, observations, verdicts = batch.measurements, batch.observations, batch.verdicts
        uids = measurements.column("measurement_uid").to_pylist()
        repeated = [uid for uid in uids if uid in self.seen_uids]
        if repeated:  # the same measurement in another file read by another worker in this run
            drop = pa.array(repeated, pa.string())
            measurements = measurements.filter(pc.invert(pc.is_in(measurements["measurement_uid"], drop)))
            observations = observations.filter(pc.invert(pc.is_in(observations["measurement_uid"], drop)))
            verdicts = verdicts.filter(pc.invert(pc.is_in(verdicts["measurement_uid"], drop)))
            self.summary.duplicated += len(repeated)
        self.seen_uids.update(uids)
        for entry in pc.value_counts(measurements["test_name"]).to_pylist():
            self.summary.tests[entry["values"]] += entry["counts"]
        if self.config.keep_raw and measurements.num_rows:
            raw = set(pc.unique(measurements["raw_file"]).drop_null().to_pylist())
            self._new_raw.update(raw - self._referenced_raw)
            self._referenced_raw.update(raw)
        unclassified = verdicts["unclassified_failure"]
        if unclassified.null_count < len(unclassified):
            for entry in pc.value_counts(unclassified.drop_null()).to_pylist():
                self.summary.unclassified_failures[entry["values"]] += entry["counts"]
        self.summary.stored += measurements.num_rows
        self._pending += measurements.num_rows
        self._tables["measurements"].append(measurements)
        self._tables["observations"].append(observations)
        self._tables["verdicts"].append(verdicts)

    def flush(self) -> None:
        """One commit: the collected rows, the quarantine, the ledger entries of finished files and
        the raw copies the rows point at become visible together, or (killed, disk full) none of them."""
        if not (self._pending or self._quarantine or self._ended):
            return
        assert self._snapshot is not None
        quarantine_log = _quarantine_log()
        with self.store.transaction() as transaction:
            if self._pending:
                tables = {name: pa.concat_tables(parts) for name, parts in self._tables.items()}
                self.store.write("measurements", tables["measurements"], mode="append")
                observations = self.store.write("observations", tables["observations"], mode="append")
                verdicts = self.store.write("verdicts", tables["verdicts"], mode="append")
            if self._quarantine:
                transaction.append_log(quarantine_log, b"".join(orjson.dumps(row) + b"\n" for row in self._quarantine))
            ended = set(self._ended)
            for index, count in self._quarantined_rows.items():  # progress of files not finished yet
                if index not in ended and count > self._quarantine_done.get(index, 0):
                    transaction.marks[_progress_mark(self._files[index][1])] = count
            for index in ended:
                mark = _progress_mark(self._files[index][1])
                if mark in self._snapshot.marks:
                    transaction.marks[mark] = None
            if self._ended:
                keys = [self._files[index][1] for index in self._ended]
                transaction.append_log(LEDGER_LOG, b"".join(orjson.dumps(
                    {**dataclasses.asdict(key), "ingested_at": self.config.ingested_at.isoformat()}) + b"\n"
                    for key in keys))
            if self._new_raw:
                _fsync_files(self.store.root, sorted(self._new_raw))
                transaction.raw.update(self._new_raw)
        # Committed: only now is it counted as done.
        if self._pending:
            self.summary.observations += observations
            self.summary.verdicts += verdicts
        if self._quarantine:
            self.summary.quarantine_file = str(self.store.root / quarantine_log)
        for index in self._ended:
            self.done_files.add(self._files[index][1].ledger_key)
            self._quarantine_done[index] = self._quarantined_rows.get(index, 0)
        for index, count in self._quarantined_rows.items():
            self._quarantine_done[index] = max(self._quarantine_done.get(index, 0), count)
        self._snapshot = transaction.snapshot
        self._tables = {name: [] for name in self._tables}
        self._pending = 0
        self._quarantine = []
        self._ended = []
        self._new_raw = set()


def _quarantine_log() -> str:
    return f"{QUARANTINE_DIR}/{dt.datetime.now(dt.UTC).date().isoformat()}.jsonl"


def _progress_mark(key: FileKey) -> str:
    """The commit mark holding how many quarantine rows of a file an unfinished run committed."""
    return f"ingest.quarantined.{key.raw_key}"


def _fsync_files(root: Path, relpaths: list[str]) -> None:
    """fsync each file and its folder (a raw copy and its new `raw/<key>/` entry) before a commit
    names them, many at once (commitlog.fsync_all)."""
    paths = [root / relpath for relpath in relpaths]
    fsync_all([*paths, *sorted({path.parent for path in paths}), *([root / RAW_DIR] if paths else [])])


def _ledger_key(row: Mapping[str, Any]) -> tuple[str, int, int, str]:
    return (str(row.get("path")), int(row.get("size") or -1), int(row.get("mtime_ns") or -1),
            str(row.get("edges_sha256")))


def ingest(paths: Iterable[Path | str | S3Object], data_dir: Path, **options: Any) -> IngestSummary:
    """Ingest `paths` (files, folders, `s3://` URLs or listed S3 objects) into the store at `data_dir`;
    the summary counts read/stored/duplicated/quarantined.

    Options: keep_raw (default True), workers (default: one per CPU), batch_size, rule_sets, fingerprints,
    s3_endpoint (for s3:// paths; default archive.bucket.endpoint_url()), cluster (a Dask scheduler's
    address or scheduler file, or "local": the files are read on that cluster, ingest/cluster.py).
    """
    return Ingester(Store(data_dir), **options).ingest_paths(
        [p if isinstance(p, S3Object) or str(p).startswith("s3://") else Path(p) for p in paths])


def read_raw(store: Store, measurement_uid: str) -> bytes:
    """The original JSON text of a stored measurement (KeyError if unknown or stored with keep_raw=False)."""
    import duckdb

    connection = store.connect()
    try:
        row = connection.execute("SELECT raw_file, raw_line, raw_item FROM measurements WHERE measurement_uid = ? "
                                 "AND raw_file IS NOT NULL LIMIT 1", [measurement_uid]).fetchone()
    except duckdb.BinderException:  # a store written before raw copies existed (inline `raw` column)
        row = None
    finally:
        connection.close()
    if row is None:
        raise KeyError(f"no raw text kept for {measurement_uid}")
    return read_raw_line(store.root, row[0], row[1], row[2])
