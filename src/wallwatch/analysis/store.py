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
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import duckdb
import orjson
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

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


class StoreError(Exception):
    """Bad use of the store: unknown dataset name, missing partition column, ..."""


def _check_name(name: str) -> str:
    if not name or not all(ch.isalnum() or ch in "_-" for ch in name):
        raise StoreError(f"dataset/log name must be [A-Za-z0-9_-]+, got {name!r}")
    return name


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class Store:
    """Datasets of hive-partitioned Parquet under `root`, queried through DuckDB views."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    # -- paths ---------------------------------------------------------------

    def dataset_dir(self, dataset: str) -> Path:
        return self.root / _check_name(dataset)

    def log_path(self, name: str) -> Path:
        return self.root / f"{_check_name(name)}.jsonl"

    def datasets(self) -> list[str]:
        """Names of datasets that hold at least one Parquet file, sorted."""
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
        directory.mkdir(parents=True, exist_ok=True)
        if partitions and _plain_partition_values(table, partitions):
            _write_partitions(table, directory, partitions, mode)
            return table.num_rows
        partition_schema = pa.schema([table.schema.field(col) for col in partitions])
        pads.write_dataset(
            table,
            directory,
            format="parquet",
            partitioning=pads.partitioning(partition_schema, flavor="hive"),
            # A unique name per call, so appends never overwrite earlier files.
            basename_template=f"part-{uuid.uuid4().hex}-{{i}}.parquet",
            existing_data_behavior="delete_matching" if mode == "replace" else "overwrite_or_ignore",
            file_options=pads.ParquetFileFormat().make_write_options(compression="zstd"),
            max_rows_per_group=ROW_GROUP_ROWS,
        )
        return table.num_rows

    def drop_partitions(self, dataset: str, column: str, values: Iterable[Any]) -> int:
        """Delete whole top-level partitions `<column>=<value>` of a derived dataset; return how many.

        For a rebuild that no longer has rows on some dates (the live series, `web/live.py`, when a
        silence folds into a gap row): `write(mode="replace")` only replaces the partitions a table
        touches, so dates it no longer has would keep stale files.
        """
        removed = 0
        for value in values:
            leaf = self.dataset_dir(dataset) / f"{_check_name(column)}={quote(str(value), safe='')}"
            if leaf.is_dir():
                shutil.rmtree(leaf)
                removed += 1
        return removed

    def append_jsonl(self, name: str, rows: Iterable[Mapping[str, Any]]) -> int:
        """Append rows to the append-only log `<root>/<name>.jsonl`; return how many were written."""
        path = self.log_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [orjson.dumps(row, option=orjson.OPT_NON_STR_KEYS, default=str) + b"\n" for row in rows]
        if lines:
            with path.open("ab") as handle:
                handle.write(b"".join(lines))
        return len(lines)

    def read_jsonl(self, name: str) -> list[dict[str, Any]]:
        """All rows of a log written with `append_jsonl` (empty when it does not exist)."""
        path = self.log_path(name)
        if not path.exists():
            return []
        with path.open("rb") as handle:
            return [orjson.loads(line) for line in handle if line.strip()]

    # -- reading -------------------------------------------------------------

    def connect(self, database: str = ":memory:") -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with one view per dataset (core datasets always exist, maybe empty)."""
        connection = duckdb.connect(database)
        names = set(self.datasets()) | set(KNOWN_SCHEMAS)
        for name in sorted(names):
            connection.execute(f"CREATE OR REPLACE VIEW {name} AS {self._select_sql(name)}")
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

    def _select_sql(self, dataset: str) -> str:
        directory = self.dataset_dir(dataset)
        if _has_parquet(directory):
            glob = _sql_string(str(directory / "**" / "*.parquet"))
            return f"SELECT * FROM read_parquet({glob}, hive_partitioning = true, union_by_name = true)"
        return _empty_select(KNOWN_SCHEMAS[dataset])


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


def _write_partitions(table: pa.Table, directory: Path, partitions: Sequence[str], mode: WriteMode) -> None:
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
    for key, runs in groups.items():
        leaf = directory.joinpath(*(f"{col}={quote(str(value), safe='')}" for col, value in zip(partitions, key)))
        if mode == "replace" and leaf.is_dir():
            for old in leaf.iterdir():
                if old.is_file():
                    old.unlink()
        leaf.mkdir(parents=True, exist_ok=True)
        rows = pa.concat_tables([data.slice(start, end - start) for start, end in runs])  # zero-copy
        jobs.append((rows, leaf / name))
    if len(jobs) == 1:
        _write_file(*jobs[0])
        return
    # pq.write_table encodes and compresses without holding the GIL: partitions go in parallel.
    with ThreadPoolExecutor(max_workers=min(len(jobs), WRITE_THREADS)) as pool:
        for done in [pool.submit(_write_file, rows, path) for rows, path in jobs]:
            done.result()


def _write_file(rows: pa.Table, path: Path) -> None:
    pq.write_table(rows, path, compression="zstd", row_group_size=ROW_GROUP_ROWS)


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
