"""Ingest OONI measurements (and wallwatch's own) into the store, streaming, parallel and resumable.

Input: files or folders of `.json` (one measurement, as OONI's API and the spec
examples serve them), `.jsonl` and `.jsonl.gz` / `.json.gz` (one measurement per
line, OONI's raw archive layout `raw/<YYYYMMDD>/<HH>/<CC>/<test>/*.jsonl.gz`).
Each record is read once: header -> observations -> verdicts (`worker.py`),
in worker processes, one file at a time per worker; this parent process dedups,
collects the Arrow batches and writes Parquet every `batch_size` measurements.
Memory is bounded by `batch_size` measurements' rows here plus a few
`RECORDS_PER_BATCH` batches in flight (the result queue is bounded).

Resumability, two ways:
* a ledger of finished files (`<data>/ingested_files.jsonl`) keyed by path, size,
  mtime and a sha256 of the first and last 64 KiB: an unchanged file is skipped;
  a file enters the ledger only after all its rows are written;
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
and is counted; the run continues.
"""

from __future__ import annotations

import dataclasses
import gc
import datetime as dt
import hashlib
import multiprocessing
import os
import queue
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

from wallwatch.analysis.verdicts.fingerprints import FingerprintDB, load_fingerprints
from wallwatch.analysis.ingest.header import (  # noqa: F401 - re-exported: the header API lives here too
    RecordError,
    parse_asn,
    parse_time,
    probe_key,
    read_header,
    stable_uid,
)
from wallwatch.analysis.ingest.worker import Batch, FileEnd, FileReader, WorkerConfig, read_raw_line
from wallwatch.analysis.store import Store
from wallwatch.analysis.verdicts.rules import RuleSet, default_rule_sets

SUFFIXES = (".json", ".jsonl", ".jsonl.gz", ".json.gz")
LEDGER = "ingested_files"
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


def discover(paths: Iterable[Path]) -> Iterator[Path]:
    """Measurement files under `paths`, sorted; OONI minipipeline `analysis*.json` files are not measurements."""
    for path in paths:
        if path.is_dir():
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                if _is_measurement_file(child):
                    yield child
        elif path.is_file():
            yield path
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
    def of(cls, path: Path) -> FileKey:
        stat = path.stat()
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            digest.update(handle.read(FINGERPRINT_CHUNK))
            if stat.st_size > FINGERPRINT_CHUNK:
                handle.seek(max(FINGERPRINT_CHUNK, stat.st_size - FINGERPRINT_CHUNK))
                digest.update(handle.read(FINGERPRINT_CHUNK))
        return cls(str(path.resolve()), stat.st_size, stat.st_mtime_ns, digest.hexdigest())

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


def _work(tasks: Any, results: Any, config: WorkerConfig, seen: set[str]) -> None:
    """A worker process: read the files it is given until the None sentinel."""
    gc.disable()  # see no_cyclic_gc; this process ends with the run
    while (task := tasks.get()) is not None:
        index, path, raw_key = task
        try:
            for message in FileReader(index, path, raw_key, config, seen).batches():
                results.put(message)
        except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
            results.put(_WorkerFailed(index, traceback.format_exc()))
            return
    results.put(_WORKER_DONE)


class Ingester:
    """One ingest run into `store`: call `ingest_paths`, read `summary`.

    `workers`: processes reading files in parallel (default: one per CPU, at most one
    per file); 1 reads in this process.
    """

    def __init__(self, store: Store, *, batch_size: int = DEFAULT_BATCH, keep_raw: bool = True,
                 rule_sets: Mapping[str, RuleSet] | None = None, fingerprints: FingerprintDB | None = None,
                 on_file: Callable[[Path, IngestSummary], None] | None = None, workers: int | None = None) -> None:
        self.store = store
        self.batch_size = batch_size
        self.workers = workers
        self.on_file = on_file
        self.summary = IngestSummary()
        ingested_at = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
        self.config = WorkerConfig(store.root, keep_raw, rule_sets or default_rule_sets(),
                                   fingerprints or load_fingerprints(), ingested_at)
        self.seen_uids = self._stored_uids()
        self.done_files = {_ledger_key(row) for row in store.read_jsonl(LEDGER)}
        self._files: list[tuple[Path, FileKey]] = []
        self._tables: dict[str, list[pa.Table]] = {"measurements": [], "observations": [], "verdicts": []}
        self._pending = 0
        self._quarantine: list[dict[str, Any]] = []
        self._ended: list[int] = []

    def _stored_uids(self) -> set[str]:
        directory = self.store.dataset_dir("measurements")
        if not directory.is_dir():
            return set()
        # pyarrow rather than DuckDB: no DuckDB threads exist in this process when workers fork.
        dataset = pads.dataset(directory, format="parquet", partitioning="hive")
        return set(dataset.to_table(columns=["measurement_uid"]).column(0).to_pylist())

    # -- the run ---------------------------------------------------------------

    def ingest_paths(self, paths: Iterable[Path]) -> IngestSummary:
        todo = [index for path in discover(paths) if (index := self._admit(path)) is not None]
        workers = self.workers or min(os.cpu_count() or 1, len(todo))
        with no_cyclic_gc():
            if workers <= 1 or len(todo) <= 1:
                for index in todo:
                    self._read_here(index)
            else:
                self._read_in_workers(todo, workers)
            self.flush()
        return self.summary

    def ingest_file(self, path: Path) -> None:
        index = self._admit(path)
        if index is not None:
            with no_cyclic_gc():
                self._read_here(index)
                self.flush()

    def _admit(self, path: Path) -> int | None:
        """The file's index for reading, or None when the ledger says it is done."""
        self.summary.files_seen += 1
        key = FileKey.of(path)
        if key.ledger_key in self.done_files:
            self.summary.files_skipped += 1
            return None
        self._files.append((path, key))
        return len(self._files) - 1

    def _read_here(self, index: int) -> None:
        path, key = self._files[index]
        for message in FileReader(index, path, key.raw_key, self.config, self.seen_uids).batches():
            self._take(message)

    def _read_in_workers(self, todo: list[int], workers: int) -> None:
        # fork: the workers share the config and the stored uids without pickling them.
        context = multiprocessing.get_context("fork")
        # A Queue (its feeder thread writes the pipe) so queuing thousands of file names never
        # blocks the parent while the workers wait for it to take their results.
        tasks = context.Queue()
        results = context.Queue(maxsize=2 * workers)  # bounded: backpressure keeps memory flat
        processes = [context.Process(target=_work, args=(tasks, results, self.config, self.seen_uids), daemon=True)
                     for _ in range(workers)]
        for process in processes:
            process.start()
        finished = False
        try:
            for index in todo:
                path, key = self._files[index]
                tasks.put((index, path, key.raw_key))
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
                    raise RuntimeError(f"ingest worker failed on {self._files[message.file_index][0]}:\n"
                                       f"{message.trace}")
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

    def _take(self, message: Batch | FileEnd) -> None:
        if isinstance(message, FileEnd):
            self._ended.append(message.file_index)
            if self.on_file:
                self.on_file(self._files[message.file_index][0], self.summary)
            return
        self.summary.read += message.read
        self.summary.duplicated += message.duplicated
        for row in message.quarantine:
            self.summary.quarantined += 1
            self.summary.quarantine_reasons[row["reason"].split(":", 1)[0]] += 1
        self._quarantine.extend(message.quarantine)
        if message.measurements is not None:
            self._add_rows(message)
        if self._pending >= self.batch_size:
            self.flush()

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
        """Write the collected rows, then the quarantine, then the ledger entries of finished files."""
        if self._pending:
            tables = {name: pa.concat_tables(parts) for name, parts in self._tables.items()}
            self.store.write("measurements", tables["measurements"], mode="append")
            self.summary.observations += self.store.write("observations", tables["observations"], mode="append")
            self.summary.verdicts += self.store.write("verdicts", tables["verdicts"], mode="append")
        self._tables = {name: [] for name in self._tables}
        self._pending = 0
        if self._quarantine:
            today = dt.datetime.now(dt.UTC).date().isoformat()
            (self.store.root / "quarantine").mkdir(parents=True, exist_ok=True)
            _append_quarantine(self.store.root / "quarantine" / f"{today}.jsonl", self._quarantine)
            self._quarantine = []
        if self._ended:
            keys = [self._files[index][1] for index in self._ended]
            self.store.append_jsonl(LEDGER, [{**dataclasses.asdict(key), "ingested_at": self.config.ingested_at
                                              .isoformat()} for key in keys])
            self.done_files.update(key.ledger_key for key in keys)
            self._ended = []


def _append_quarantine(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("ab") as handle:
        handle.write(b"".join(orjson.dumps(row) + b"\n" for row in rows))
        handle.flush()
        os.fsync(handle.fileno())


def _ledger_key(row: Mapping[str, Any]) -> tuple[str, int, int, str]:
    return (str(row.get("path")), int(row.get("size") or -1), int(row.get("mtime_ns") or -1),
            str(row.get("edges_sha256")))


def ingest(paths: Iterable[Path], data_dir: Path, **options: Any) -> IngestSummary:
    """Ingest `paths` into the store at `data_dir`; the summary counts read/stored/duplicated/quarantined.

    Options: keep_raw (default True), workers (default: one per CPU), batch_size, rule_sets, fingerprints.
    """
    return Ingester(Store(data_dir), **options).ingest_paths([Path(p) for p in paths])


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
