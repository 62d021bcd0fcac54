"""Ingest's file-level work on a Dask distributed cluster [Rocklin2015], one task per input file.

`wallwatch ingest --cluster ADDRESS` (a scheduler's address, a scheduler file, or `local` for a
cluster of worker processes on this machine) hands each file to the cluster; everything else of
the run stays where it was, in the one process that holds the data folder's writer lock.

Who writes: the workers return rows, the client writes them. A task is `worker.read_files` over
one file: it returns the file's `Batch`es (Arrow tables, quarantine rows, the file's end), which
Dask moves as Arrow IPC buffers; the client takes them exactly as it takes a local worker's and
commits them through the store (`Ingester.flush`: one commit per batch, the ledger entry of a file
in the commit holding its last rows). Workers writing their own Parquet into the store's atomic
batches was the other way; it was not taken because the store is one writer by design
(commitlog.py: the flock, the recovery of a dead writer's debris, the dedup against what is
committed) and a worker on another machine may not even see the data folder. Returning rows
keeps exactly-once where it already holds:

* a worker killed mid-file returns nothing: the scheduler gives the task to another worker (up to
  `distributed.scheduler.allowed-failures` times, then the file is reported and left out of the
  ledger, so the next run reads it), and nothing of the dead attempt was stored;
* a task that somehow ran twice is still taken once (one future, one result), and a measurement
  seen twice is dropped by uid in the client as across local workers.

What workers need from the client: the worker configuration (rules and fingerprint rows; the
fingerprint matcher itself is rebuilt once per worker, its automata do not pickle) and the uids
already stored, each sent once (`Client.scatter(..., broadcast=True)`). Raw copies are written by
the workers under the data folder (`raw/<key>/...`, visible only once a commit names them), so with
raw copies kept the workers must see the data folder (the same machine, or a shared file system);
on a cluster that does not, ingest with `--no-raw`.

Memory: at most two tasks per worker thread are in flight, and a task holds one file's rows. OONI
closes its archive files at ~20 MB of compressed measurements (ooni/backend
`api/ooni_api_uploader.py`, `postcan_byte_thresh`), which bounds a task's result [ooni-backend-docs].
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import logging
import os
import pickle
import re
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from wallwatch.analysis.compiled import register_pickling
from wallwatch.analysis.ingest.worker import Batch, Source, WorkerConfig, read_files
from wallwatch.analysis.verdicts.fingerprints import Fingerprint, FingerprintDB

LOCAL = "local"
# Tasks in flight per worker thread: one running, one queued behind it, so a worker never waits
# for the client between files while the client holds at most this many files' rows.
TASKS_PER_THREAD = 2
# How long to wait for a scheduler and for its first worker.
CONNECT_TIMEOUT_S = 60


class ClusterError(RuntimeError):
    """The cluster cannot run this ingest (no workers, or workers that cannot see the data folder)."""


@dataclass(frozen=True, slots=True)
class FileLost:
    """A file whose task failed on the cluster: `why` (e.g. the workers running it died too often)."""

    why: str


@dataclass(frozen=True)
class ShippedConfig:
    """A WorkerConfig as it travels to workers: the fingerprint rows rather than the matcher."""

    fields: dict[str, Any]
    fingerprint_version: str
    fingerprint_rows: tuple[Fingerprint, ...]
    digest: str

    @classmethod
    def of(cls, config: WorkerConfig) -> ShippedConfig:
        fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name != "fingerprints"}
        rows = config.fingerprints.rows
        digest = hashlib.sha256(pickle.dumps((fields, config.fingerprints.version, rows))).hexdigest()
        return cls(fields, config.fingerprints.version, rows, digest)

    def config(self) -> WorkerConfig:
        """The configuration, built once per worker process and run."""
        built = _CONFIGS.get(self.digest)
        if built is None:
            _CONFIGS.clear()  # one run's at a time: an earlier run's matcher is not kept
            built = WorkerConfig(fingerprints=FingerprintDB(self.fingerprint_version, self.fingerprint_rows),
                                 **self.fields)
            _CONFIGS[self.digest] = built
        return built


_CONFIGS: dict[str, WorkerConfig] = {}


@dataclass(frozen=True)
class StoredUids:
    """The uids already stored (a holder: `scatter` would send a bare set element by element)."""

    uids: frozenset[str]


def read_file(index: int, source: Source, raw_key: str, shipped: ShippedConfig, stored: StoredUids) -> list[Batch]:
    """The task: one file's batches, as a local worker makes them."""
    config = shipped.config()
    if config.keep_raw and not (config.data_root / "_store").is_dir():
        raise ClusterError(f"this worker ({os.uname().nodename}) cannot see the data folder {config.data_root}, "
                           "where raw copies are written: ingest with --no-raw, or share the folder")
    enabled = gc.isenabled()
    gc.disable()  # as in every ingest process: the collector's passes cost more than the decoding
    try:
        return list(read_files([(index, source, raw_key)], config, stored.uids))
    finally:
        if enabled:
            gc.enable()


@contextmanager
def connect(address: str, workers: int | None = None) -> Iterator[Any]:
    """A client of the cluster at `address`: a scheduler address (tcp://host:port), a scheduler
    file (`*.json`, as `dask scheduler --scheduler-file` writes), or `local`: `workers` worker
    processes (default one per CPU) of one thread each on this machine, on loopback, for this run."""
    from distributed import Client, LocalCluster

    if address == LOCAL:
        logging.getLogger("distributed").setLevel(logging.WARNING)  # its scheduler runs here: no INFO chatter
        cluster = LocalCluster(n_workers=workers or os.cpu_count() or 1, threads_per_worker=1, processes=True,
                               host="127.0.0.1", dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR)
        try:
            with Client(cluster) as client:
                yield client
        finally:
            cluster.close()
        return
    if address.endswith(".json") and Path(address).is_file():
        client = Client(scheduler_file=address, timeout=CONNECT_TIMEOUT_S)
    else:
        client = Client(address, timeout=CONNECT_TIMEOUT_S)
    try:
        client.wait_for_workers(1, timeout=CONNECT_TIMEOUT_S)
        yield client
    finally:
        client.close()


def read_on_cluster(client: Any, tasks: Iterable[tuple[int, Source, str]], config: WorkerConfig,
                    stored: set[str]) -> Iterator[tuple[int, list[Batch] | FileLost]]:
    """Each file's batches (or why it was lost) as its task finishes, in the order they finish.

    An exception a task raised (a bug, a full disk while writing a raw copy) is raised here as
    itself, as a local worker's failure is; only a file whose workers died is yielded as lost."""
    from distributed import as_completed
    from distributed.scheduler import KilledWorker

    threads = sum(client.nthreads().values())
    if not threads:
        raise ClusterError("the cluster has no workers")
    register_pickling()  # rule sets and fingerprint rows may be mypyc-compiled frozen dataclasses
    shipped = client.scatter(ShippedConfig.of(config), broadcast=True, hash=False)
    uids = client.scatter(StoredUids(frozenset(stored)), broadcast=True, hash=False)
    run = uuid.uuid4().hex[:8]
    todo = iter(tasks)
    index_of: dict[Any, int] = {}

    def submit(task: tuple[int, Source, str]) -> Any:
        index, source, raw_key = task
        key = f"wallwatch-ingest-{run}-{index}-{_safe(source.name)}"  # names the file in the dashboard
        future = client.submit(read_file, index, source, raw_key, shipped, uids, key=key, pure=False)
        index_of[future.key] = index
        return future

    window = as_completed([submit(task) for task in islice(todo, TASKS_PER_THREAD * threads)])
    try:
        for future in window:
            index = index_of.pop(future.key)
            try:
                result = future.result()
            except KilledWorker as exc:
                result = FileLost(f"the workers running it died ({exc}); not in the ledger: run again to read it")
            future.release()
            next_task = next(todo, None)
            if next_task is not None:
                window.add(submit(next_task))
            yield index, result
    finally:
        client.cancel([*window.futures, shipped, uids])


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:80]
