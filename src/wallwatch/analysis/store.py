"""The one storage layer of the pipeline: hive-partitioned Parquet read through DuckDB.

Every dataset lives under ``<root>/<dataset>/<col>=<value>/.../part-*.parquet``
(hive layout, https://duckdb.org/docs/stable/data/partitioning/hive_partitioning).
``Store.connect()`` hands out an in-memory DuckDB connection with one view per
dataset, so callers write plain SQL over ``measurements``, ``observations``,
``verdicts`` (and whatever else was written) without knowing about files.

Only this module knows the physical layout; the SQL callers write against the
views sticks to a portable subset (SELECT/JOIN/GROUP BY, CASE, COALESCE,
date_trunc) so that it can later run on ClickHouse, where OONI keeps its own
tables (ooni/data docs/architecture.md §4). The core datasets' rows are typed classes in
``analysis/rows.py``, their schemas derived from them; ``docs/storage.md`` documents them.

Write semantics (see docs/storage.md):

* ``mode="replace"`` (default) replaces every partition the table touches and
  leaves the others alone, so rebuilding a derived dataset (series, events)
  for some dates is idempotent.
* ``mode="append"`` adds new files next to the existing ones; ingest uses it
  after deduplicating by ``measurement_uid`` itself.

Every change is atomic and crash-safe (``analysis/commitlog.py``): files are written to a
temporary name, fsync'd and renamed, and become visible only when a commit names them;
``Store.transaction()`` groups several writes (ingest: one batch's three datasets, its
quarantine and ledger entries) into one commit. One writer at a time holds the folder's lock
(``Store.writer()``); readers never wait and see the last commit.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import duckdb
import orjson
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from wallwatch.analysis.commitlog import (
    LOG_DIR,
    STAGING_DIR,
    Snapshot,
    StoreLocked,  # noqa: F401 - re-exported: callers catch it from here
    Transaction,
    delete_retired,
    finish_file,
    finish_files,
    load_snapshot,
    temporary_name,
    writer_lock,
)
from wallwatch.analysis.rows import MEASUREMENTS_SCHEMA, OBSERVATIONS_SCHEMA, VERDICTS_SCHEMA
from wallwatch.analysis.tables import run_bounds

WriteMode = Literal["replace", "append"]

ROW_GROUP_ROWS = 128 * 1024
# Threads writing partition files at once (Parquet encoding releases the GIL).
WRITE_THREADS = max(1, min(4, os.cpu_count() or 1))

# Known datasets and their columns (one row class each, analysis/rows.py), so that an empty store
# still has typed views (a query over no data returns no rows instead of failing on a missing glob).
KNOWN_SCHEMAS: Mapping[str, pa.Schema] = {
    "measurements": MEASUREMENTS_SCHEMA,
    "observations": OBSERVATIONS_SCHEMA,
    "verdicts": VERDICTS_SCHEMA,
}

# How each core dataset is partitioned: by day, and measurements/observations
# also by test so that one nettest can be rebuilt or exported alone.
DEFAULT_PARTITIONS: Mapping[str, tuple[str, ...]] = {
    "measurements": ("date", "test_name"),
    "observations": ("date", "test_name"),
    "verdicts": ("date",),
}


# A path component (a hive `col=value` folder) longer than this is refused: NAME_MAX is 255 bytes
# on Linux file systems (limits.h), and a value URI-encodes to up to 3 bytes a byte.
MAX_PATH_COMPONENT = 200


class StoreError(Exception):
    """Bad use of the store: unknown dataset name, missing partition column, ..."""


def _check_name(name: str) -> str:
    if not name or len(name) > 64 or not all(ch.isascii() and (ch.isalnum() or ch in "_-") for ch in name):
        raise StoreError(f"dataset/log name must be [A-Za-z0-9_-]{{1,64}}, got {name!r}")
    return name


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class Store:
    """Datasets of hive-partitioned Parquet under `root`, queried through DuckDB views."""

    def __init__(self, root: Path | str, *, lock_wait: float = 0.0) -> None:
        self.root = Path(root)
        # Seconds a write waits for another process's writer lock before failing (StoreLocked).
        self.lock_wait = lock_wait
        self._transaction: Transaction | None = None
        self._snapshot: Snapshot | None = None  # the state while this object holds the lock

    # -- the writer lock and transactions -------------------------------------------------

    @contextmanager
    def writer(self, wait: float | None = None) -> Iterator[Store]:
        """Hold the data folder's writer lock for a while (a whole ingest run): one writer at a
        time; a second fails at once with StoreLocked naming the holder's PID, or waits `wait`
        seconds. Taking it after a writer died removes that writer's debris first."""
        self.root.mkdir(parents=True, exist_ok=True)
        with writer_lock(self.root, self.lock_wait if wait is None else wait):
            yield self

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Writes (`write`, `append_jsonl`, or the Transaction's own calls) that become visible
        together when the block ends, or not at all if it raises or the process dies.
        Nested calls join the outer transaction."""
        if self._transaction is not None:
            yield self._transaction
            return
        with self.writer():
            transaction = Transaction(self.root, self._current_snapshot())
            self._transaction = transaction
            try:
                yield transaction
                transaction.deleted = delete_retired(self.root, transaction.snapshot)
                self._snapshot = transaction.commit()
            except BaseException:
                transaction.abandon()
                self._snapshot = None
                raise
            finally:
                self._transaction = None

    def _current_snapshot(self) -> Snapshot:
        """The committed state (called with the lock held: nobody else can change it)."""
        cached = self._snapshot
        if cached is not None and not (self.root / LOG_DIR / f"{cached.seq + 1:012d}.json").exists():
            return cached
        snapshot = load_snapshot(self.root)
        if snapshot is None:  # writer_lock adopts the folder when it has no commit yet
            raise StoreError(f"{self.root}: no commit log after taking the writer lock")
        self._snapshot = snapshot
        return snapshot

    def snapshot(self) -> Snapshot | None:
        """The committed state now (None: a folder no commit was written to, read the old way)."""
        return load_snapshot(self.root)

    def committed_files(self, dataset: str, snapshot: Snapshot | None = None) -> list[Path]:
        """The Parquet files of `dataset` a reader sees."""
        directory = self.dataset_dir(dataset)
        snapshot = snapshot if snapshot is not None else self.snapshot()
        if snapshot is None:  # written before the commit log, never by a writer since
            return sorted(directory.rglob("*.parquet")) if directory.is_dir() else []
        return [self.root / path for path in sorted(snapshot.files.get(dataset, ()))]

    # -- paths ---------------------------------------------------------------

    def dataset_dir(self, dataset: str) -> Path:
        return self.root / _check_name(dataset)

    def log_path(self, name: str) -> Path:
        return self.root / f"{_check_name(name)}.jsonl"

    def datasets(self) -> list[str]:
        """Names of datasets that hold at least one committed Parquet file, sorted."""
        snapshot = self.snapshot()
        if snapshot is not None:
            return snapshot.datasets()
        if not self.root.is_dir():
            return []
        return sorted(
            entry.name
            for entry in self.root.iterdir()
            if entry.is_dir() and not entry.name.startswith((".", "_")) and _has_parquet(entry)
        )

    # -- writing -------------------------------------------------------------

    def write(
        self,
        dataset: str,
        table: pa.Table,
        partition_by: Sequence[str] | None = None,
        *,
        mode: WriteMode = "replace",
    ) -> int:
        """Write `table` as hive-partitioned Parquet under `<root>/<dataset>/`; return rows written.

        `partition_by` defaults to ("date",) (or the dataset's own default, see
        DEFAULT_PARTITIONS). mode="replace" deletes the partitions the table
        touches before writing; mode="append" only adds files.
        """
        directory = self.dataset_dir(dataset)
        partitions = tuple(partition_by) if partition_by is not None else DEFAULT_PARTITIONS.get(dataset, ("date",))
        missing = [col for col in partitions if col not in table.column_names]
        if missing:
            raise StoreError(f"{dataset}: partition columns {missing} not in table columns {table.column_names}")
        if table.num_rows == 0:
            return 0
        with self.transaction() as transaction:
            directory.mkdir(parents=True, exist_ok=True)
            if partitions and _plain_partition_values(table, partitions):
                _write_partitions(transaction, dataset, table, directory, partitions, mode)
            else:
                _write_through_dataset(transaction, dataset, table, directory, partitions, mode)
        return table.num_rows

    def compact(self, dataset: str, *, min_files: int = 8, max_bytes: int = 256 * 1024 * 1024) -> int:
        """Merge each partition's small files into one, in one commit; returns how many files went.

        A long-running writer that commits many small batches (a live collector) leaves many small
        files per partition, and every query opens each one; compaction rewrites them as one file
        (rows unchanged, their order within the partition not kept), as Delta Lake's OPTIMIZE does
        [DeltaLake2020]. A partition with fewer than `min_files` files under `max_bytes` / 4 each
        is left alone; merged files are at most ~`max_bytes` (read whole, so that bounds memory).
        Readers that connected before keep the old files for RETAIN_S seconds."""
        removed = 0
        with self.transaction() as transaction:
            by_leaf: dict[str, list[Path]] = {}
            for relpath in sorted(transaction.snapshot.files.get(dataset, ())):
                by_leaf.setdefault(relpath.rsplit("/", 1)[0], []).append(self.root / relpath)
            for leaf, files in by_leaf.items():
                small = [(path, path.stat().st_size) for path in files if path.stat().st_size < max_bytes // 4]
                for group in _groups(small, max_bytes):
                    if len(group) < min_files:
                        continue
                    schema = pa.unify_schemas([pq.read_schema(path) for path in group])
                    table = pads.dataset([str(path) for path in group], schema=schema, format="parquet").to_table()
                    target = self.root / leaf / f"part-{uuid.uuid4().hex}-0.parquet"
                    _write_file(transaction, dataset, table, target)
                    finish_files([(temporary_name(target), target)])
                    transaction.made(dataset, target)
                    transaction.retire(dataset, [path.relative_to(self.root).as_posix() for path in group])
                    removed += len(group)
        return removed

    def drop_partitions(self, dataset: str, column: str, values: Iterable[Any]) -> int:
        """Retire whole top-level partitions `<column>=<value>` of a derived dataset, in one commit
        (or the enclosing transaction's); return how many held files.

        For a rebuild that no longer has rows on some dates (the live series, `web/live.py`, when a
        silence folds into a gap row): `write(mode="replace")` only replaces the partitions a table
        touches, so dates it no longer has would keep stale files. The files go as a replaced
        partition's do: out of the state at the commit, off the disk RETAIN_S seconds later, so a
        reader never sees a partition half dropped and a kill before the commit drops nothing.
        """
        dropped = 0
        with self.transaction() as transaction:
            for value in values:
                leaf = self.dataset_dir(dataset) / _component(_check_name(column), value)
                prefix = leaf.relative_to(self.root).as_posix() + "/"
                live = transaction.snapshot.files.get(dataset, set())
                committed = [path for path in live if path.startswith(prefix)]
                earlier = transaction.add.get(dataset, [])  # written by this same transaction
                made_here = [path for path in earlier if path.startswith(prefix)]
                for path in made_here:
                    earlier.remove(path)
                    (self.root / path).unlink(missing_ok=True)
                if committed or made_here:
                    transaction.retire(dataset, committed)
                    dropped += 1
        return dropped

    def append_jsonl(self, name: str, rows: Iterable[Mapping[str, Any]]) -> int:
        """Append rows to the append-only log `<root>/<name>.jsonl`; return how many were written."""
        lines = [orjson.dumps(row, option=orjson.OPT_NON_STR_KEYS, default=str) + b"\n" for row in rows]
        if lines:
            with self.transaction() as transaction:
                transaction.append_log(self.log_path(name).relative_to(self.root).as_posix(), b"".join(lines))
        return len(lines)

    def read_log(self, relpath: str) -> bytes:
        """The committed bytes of a log (`events.jsonl`, `quarantine/<date>.jsonl`, ...)."""
        path = self.root / relpath
        snapshot = self.snapshot()
        length = None if snapshot is None else snapshot.logs.get(relpath, 0)
        try:
            with path.open("rb") as handle:
                return handle.read() if length is None else handle.read(length)
        except FileNotFoundError:
            return b""

    def read_jsonl(self, name: str) -> list[dict[str, Any]]:
        """All rows of a log written with `append_jsonl` (empty when it does not exist)."""
        data = self.read_log(self.log_path(name).relative_to(self.root).as_posix())
        return [orjson.loads(line) for line in data.splitlines() if line.strip()]

    # -- reading -------------------------------------------------------------

    def connect(self, database: str = ":memory:") -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with one view per dataset (core datasets always exist, maybe empty)."""
        connection = duckdb.connect(database)
        snapshot = self.snapshot()  # one state for every view: they agree with each other
        names = set(snapshot.datasets() if snapshot is not None else self.datasets()) | set(KNOWN_SCHEMAS)
        for name in sorted(names):
            connection.execute(f"CREATE OR REPLACE VIEW {name} AS {self._select_sql(name, snapshot)}")
        return connection

    def read(self, dataset: str, where: str | None = None) -> pa.Table:
        """The whole dataset (optionally filtered by a SQL predicate) as an Arrow table."""
        connection = self.connect()
        try:
            sql = f"SELECT * FROM {_check_name(dataset)}" + (f" WHERE {where}" if where else "")
            if dataset not in KNOWN_SCHEMAS and dataset not in self.datasets():
                raise StoreError(f"no dataset {dataset!r} under {self.root}")
            return connection.sql(sql).to_arrow_table()
        finally:
            connection.close()

    def _select_sql(self, dataset: str, snapshot: Snapshot | None) -> str:
        # The committed files by name, never a glob: a file no commit names is not there.
        files = self.committed_files(dataset, snapshot)
        if files:
            listed = "[" + ", ".join(_sql_string(str(path)) for path in files) + "]"
            return f"SELECT * FROM read_parquet({listed}, hive_partitioning = true, union_by_name = true)"
        return _empty_select(KNOWN_SCHEMAS[dataset])


def _groups(files: list[tuple[Path, int]], max_bytes: int) -> Iterator[list[Path]]:
    """Consecutive files in groups of at most `max_bytes` in all."""
    group: list[Path] = []
    size = 0
    for path, length in files:
        if group and size + length > max_bytes:
            yield group
            group, size = [], 0
        group.append(path)
        size += length
    if group:
        yield group


def _plain_partition_values(table: pa.Table, partitions: Sequence[str]) -> bool:
    """Partition columns our own writer formats exactly as pyarrow's hive flavour does: no nulls,
    dates, strings or integers (anything else goes through `pyarrow.dataset.write_dataset`)."""
    for col in partitions:
        column = table.column(col)
        kind = column.type
        if column.null_count or not (pa.types.is_date32(kind) or pa.types.is_string(kind)
                                     or pa.types.is_integer(kind)):
            return False
    return True


def _write_partitions(transaction: Transaction, dataset: str, table: pa.Table, directory: Path,
                      partitions: Sequence[str], mode: WriteMode) -> None:
    """Hive-partitioned Parquet, one file per partition per call, with `pq.write_table`.

    Same layout and semantics as `write_dataset(..., partitioning=hive)` (partition columns
    live in the path, values URI-encoded; "replace" empties each touched partition first), at a
    fraction of its per-file cost: ~1 ms instead of ~5 ms a file, which dominates when a batch
    spans many days and tests (measured in bench/bench_ingest.py's corpus: 17 partitions).
    Each file holds its partition's rows in table order (what a stable sort by partition gives).
    """
    table, groups = _partition_runs(table, partitions)
    data = table.drop_columns(list(partitions))
    name = f"part-{uuid.uuid4().hex}-0.parquet"
    jobs = []
    leaves = []
    for key, runs in groups.items():
        leaf = directory.joinpath(*(_component(col, value) for col, value in zip(partitions, key)))
        leaves.append(leaf)
        rows = pa.concat_tables([data.slice(start, end - start) for start, end in runs])  # zero-copy
        jobs.append((transaction, dataset, rows, leaf / name))
    if mode == "replace":
        _retire_leaves(transaction, dataset, leaves)
    for leaf in leaves:
        leaf.mkdir(parents=True, exist_ok=True)
    if len(jobs) == 1:
        _write_file(*jobs[0])
    else:
        # pq.write_table encodes and compresses without holding the GIL: partitions go in parallel.
        with ThreadPoolExecutor(max_workers=min(len(jobs), WRITE_THREADS)) as pool:
            for done in [pool.submit(_write_file, *job) for job in jobs]:
                done.result()
    # Then all fsync'd at once and renamed (commitlog.finish_files): one by one, in the writing
    # threads, the fsyncs cost more than the writes.
    finish_files((temporary_name(path), path) for _, _, _, path in jobs)
    for _, _, _, path in jobs:
        transaction.made(dataset, path)


def _component(col: str, value: Any) -> str:
    text = f"{col}={quote(str(value), safe='')}"
    if len(text.encode()) > MAX_PATH_COMPONENT:
        raise StoreError(f"partition value too long for a folder name ({len(text)} > {MAX_PATH_COMPONENT}): "
                         f"{text[:80]}...")
    return text


def _retire_leaves(transaction: Transaction, dataset: str, leaves: Iterable[Path]) -> None:
    """mode="replace": the committed files of these partitions go when the new ones come."""
    wanted = {leaf.relative_to(transaction.root).as_posix() for leaf in leaves}
    live = transaction.snapshot.files.get(dataset, set())
    transaction.retire(dataset, [path for path in live if path.rsplit("/", 1)[0] in wanted])
    earlier = transaction.add.get(dataset, [])  # written by this same transaction: replaced too
    for path in [p for p in earlier if p.rsplit("/", 1)[0] in wanted]:
        earlier.remove(path)
        (transaction.root / path).unlink(missing_ok=True)


def _write_file(transaction: Transaction, dataset: str, rows: pa.Table, path: Path) -> None:
    partial = temporary_name(path)
    transaction.making(partial)
    transaction.making(path)
    pq.write_table(rows, partial, compression="zstd", row_group_size=ROW_GROUP_ROWS)


def _write_through_dataset(transaction: Transaction, dataset: str, table: pa.Table, directory: Path,
                           partitions: Sequence[str], mode: WriteMode) -> None:
    """Partition values our writer does not format (nulls, other types): pyarrow's writer lays
    the files out in a staging folder, then each is fsync'd and renamed into the dataset."""
    staging = transaction.root / STAGING_DIR / uuid.uuid4().hex
    staging.mkdir(parents=True)
    try:
        partition_schema = pa.schema([table.schema.field(col) for col in partitions])
        pads.write_dataset(
            table,
            staging,
            format="parquet",
            partitioning=pads.partitioning(partition_schema, flavor="hive") if partitions else None,
            basename_template=f"part-{uuid.uuid4().hex}-{{i}}.parquet",
            file_options=pads.ParquetFileFormat().make_write_options(compression="zstd"),
            max_rows_per_group=ROW_GROUP_ROWS,
        )
        made = sorted(path for path in staging.rglob("*.parquet"))
        leaves = sorted({directory / path.parent.relative_to(staging) for path in made})
        for leaf in leaves:
            if len(leaf.name.encode()) > MAX_PATH_COMPONENT:
                raise StoreError(f"partition value too long for a folder name: {leaf.name[:80]}...")
        if mode == "replace":
            _retire_leaves(transaction, dataset, leaves)
        for path in made:
            final = directory / path.relative_to(staging)
            final.parent.mkdir(parents=True, exist_ok=True)
            partial = temporary_name(final)
            transaction.making(partial)
            os.replace(path, partial)
            finish_file(partial, final)
            transaction.made(dataset, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# With more runs than this per partition, one stable sort (a `take` of every column) is cheaper
# than gathering the runs as slices.
_MAX_RUNS_PER_PARTITION = 64

Runs = dict[tuple[Any, ...], list[tuple[int, int]]]


def _partition_runs(table: pa.Table, partitions: Sequence[str]) -> tuple[pa.Table, Runs]:
    """The table (sorted by partition only when its rows are interleaved) and, per partition
    key in first-seen order, the (start, end) row ranges that hold its rows, in table order.

    Ingest batches arrive grouped by partition (the ingest worker orders each batch's rows), so
    their concatenation is a few runs per partition and is written without a sort.
    """
    runs = _runs(table, partitions)
    if sum(map(len, runs.values())) > _MAX_RUNS_PER_PARTITION * len(runs):
        table = table.sort_by([(col, "ascending") for col in partitions])  # stable: table order kept
        runs = _runs(table, partitions)
    return table, runs


def _runs(table: pa.Table, partitions: Sequence[str]) -> Runs:
    bounds = run_bounds(table, partitions)
    starts = [start for start, _ in bounds]
    keys = zip(*(table.column(col).take(starts).to_pylist() for col in partitions))
    runs: Runs = {}
    for key, bound in zip(keys, bounds):
        runs.setdefault(key, []).append(bound)
    return runs


def _has_parquet(directory: Path) -> bool:
    return directory.is_dir() and next(directory.rglob("*.parquet"), None) is not None


_DUCKDB_TYPES = {
    pa.string(): "VARCHAR",
    pa.timestamp("us"): "TIMESTAMP",
    pa.date32(): "DATE",
    pa.int32(): "INTEGER",
    pa.int64(): "BIGINT",
    pa.float32(): "FLOAT",
    pa.float64(): "DOUBLE",
    pa.bool_(): "BOOLEAN",
    pa.list_(pa.string()): "VARCHAR[]",
}


def _empty_select(schema: pa.Schema) -> str:
    columns = ", ".join(f"CAST(NULL AS {_DUCKDB_TYPES[field.type]}) AS {field.name}" for field in schema)
    return f"SELECT {columns} WHERE 1 = 0"
