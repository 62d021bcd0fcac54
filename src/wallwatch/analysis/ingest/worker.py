"""One file's share of an ingest: lines -> header -> observations -> verdicts -> Arrow batches.

This is the part of `ingest` that runs in worker processes (see ingest.py for the
parent: dedup across files, Parquet writes, ledger). It is pure with respect to
the store: it reads one input file and yields `Batch`es of Arrow tables plus the
quarantine rows, then one `FileEnd`. The one side effect is the kept raw copy of
the input (`raw/<key>/<name>`), made before any row points at it.

Speed notes (bench/bench_ingest.py measures them):
* gunzip with ISA-L (python-isal `igzip`), 2-4x faster than zlib on inflate;
* lines are memoryview slices of 4 MiB read chunks, never copied;
* each line is decoded by msgspec into only the fields read (`decode.py`);
  bad JSON or odd shapes fall back to `orjson.loads`, the old path, record by record;
* rows become Arrow tables here, in the worker, so the parent only concatenates.
"""

from __future__ import annotations

import datetime as dt
import gzip
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
from isal import igzip, isal_zlib

from wallwatch.analysis.verdicts.fingerprints import FingerprintDB
from wallwatch.analysis.ingest.decode import decode_fields
from wallwatch.analysis.ingest.header import RecordError, read_header
from wallwatch.analysis.rows import MEASUREMENTS_SCHEMA, OBSERVATIONS_SCHEMA, VERDICTS_SCHEMA, MeasurementRow
from wallwatch.analysis.store import DEFAULT_PARTITIONS
from wallwatch.analysis.tables import row_template
from wallwatch.analysis.verdicts.observations import make_observations
from wallwatch.analysis.verdicts.rules import RuleSet, judge_measurement

# A .json file is parsed whole up to this size; bigger ones are read line by line
# (OONI's largest single measurements are ~1 MB, ooni/data Readme).
MAX_WHOLE_JSON_BYTES = 64 * 1024 * 1024
# Raw text kept in a quarantine row; enough to see what went wrong.
MAX_QUARANTINE_RECORD_CHARS = 1_000_000
READ_CHUNK = 4 * 1024 * 1024
COMPRESSED_CHUNK = 1024 * 1024
# Records per Batch sent to the parent: small enough to bound a worker's memory,
# large enough that per-message costs (pickling Arrow tables) stay negligible.
RECORDS_PER_BATCH = 1000
RAW_DIR = "raw"
# Every column of a measurement row at its default (rows.MeasurementRow), copied for each row.
_MEASUREMENT_TEMPLATE = row_template(MeasurementRow)
# An observation or verdict column named as a measurement column holds its measurement's value
# (observations.py and rules.py copy it from the same header and meta).
MEASUREMENT_COLUMNS = frozenset(MEASUREMENTS_SCHEMA.names)
# Batches are ordered by the partition keys (store.DEFAULT_PARTITIONS) of:
_BY_DATE_AND_TEST = itemgetter(*DEFAULT_PARTITIONS["measurements"])  # measurements, observations
_BY_DATE = itemgetter(*DEFAULT_PARTITIONS["verdicts"])  # verdicts


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    data_root: Path
    keep_raw: bool
    rule_sets: Mapping[str, RuleSet]
    fingerprints: FingerprintDB
    ingested_at: dt.datetime


@dataclass(slots=True)
class Batch:
    """Rows of up to RECORDS_PER_BATCH records of one file (tables None when nothing was stored)."""

    file_index: int
    read: int = 0
    duplicated: int = 0
    measurements: pa.Table | None = None
    observations: pa.Table | None = None
    verdicts: pa.Table | None = None
    quarantine: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class FileEnd:
    file_index: int


# -- reading lines ------------------------------------------------------------------


def read_chunks(path: Path) -> Iterator[bytes]:
    """The file's bytes, gunzipped when it is a .gz, a few MiB at a time.

    A truncated or corrupt .gz raises EOFError/BadGzipFile only after every byte
    that could be inflated was yielded, so the records before the damage are kept.
    """
    with path.open("rb") as handle:
        if not path.name.endswith(".gz"):
            while chunk := handle.read(READ_CHUNK):
                yield chunk
            return
        # Inflate by hand (not GzipFile.read) so the data before a truncation is not lost;
        # a new decompressor per gzip member, as gzip files may be concatenated (RFC 1952 §2.2).
        inflater = isal_zlib.decompressobj(wbits=31)
        started = False
        while compressed := handle.read(COMPRESSED_CHUNK):
            while compressed:
                started = True
                try:
                    data = inflater.decompress(compressed, READ_CHUNK)
                except isal_zlib.error as exc:
                    raise gzip.BadGzipFile(f"corrupt gzip data: {exc}") from None
                if data:
                    yield data
                if inflater.eof:
                    compressed = inflater.unused_data.lstrip(b"\0")  # trailing zero padding is allowed
                    inflater = isal_zlib.decompressobj(wbits=31)
                    started = False
                else:
                    compressed = inflater.unconsumed_tail
        if started and not inflater.eof:
            raise EOFError("compressed file ended before the end-of-stream marker was reached")


def iter_lines(path: Path) -> Iterator[tuple[int, bytes | memoryview]]:
    """(line number, text) of each non-blank line; a small `.json` document is line 0 (the whole file)."""
    if path.name.endswith(".json") and path.stat().st_size <= MAX_WHOLE_JSON_BYTES:
        text = path.read_bytes()
        stripped = text.strip()
        if (stripped.startswith(b"{") and b"\n{" not in stripped) or stripped.startswith(b"["):
            yield 0, stripped  # one document, or a JSON array split by the caller
            return
    yield from _split_lines(read_chunks(path))


def _split_lines(chunks: Iterable[bytes]) -> Iterator[tuple[int, bytes | memoryview]]:
    number = 0
    pending = b""  # the start of a line cut by the end of the previous chunk
    for chunk in chunks:
        start = 0
        if pending:
            newline = chunk.find(b"\n")
            if newline < 0:
                pending += chunk
                continue
            number += 1
            line = pending + chunk[:newline]
            pending, start = b"", newline + 1
            if not _blank(line, 0, len(line)):
                yield number, line
        view = memoryview(chunk)
        while (newline := chunk.find(b"\n", start)) >= 0:
            number += 1
            if not _blank(chunk, start, newline):
                yield number, view[start:newline]
            start = newline + 1
        pending = chunk[start:]
    if pending and not _blank(pending, 0, len(pending)):
        yield number + 1, pending


def _blank(data: bytes, start: int, end: int) -> bool:
    # Every measurement starts with "{" or "[" after optional whitespace; only look deeper when short.
    return end - start < 16 and not data[start:end].strip()


# -- one file -----------------------------------------------------------------------


class FileReader:
    """Turns one input file into Batches; `seen` are uids already stored (never stored again)."""

    def __init__(self, index: int, path: Path, raw_key: str, config: WorkerConfig, seen: set[str]) -> None:
        self.index = index
        self.path = path
        self.source = str(path)
        self.config = config
        self.seen = seen
        self.local_seen: set[str] = set()
        self.raw_file = f"{RAW_DIR}/{raw_key}/{_raw_name(path)}" if config.keep_raw else None
        self._reset()

    def _reset(self) -> None:
        self.batch = Batch(self.index)
        # Per stored measurement: its row, its observation rows, its verdict rows.
        self.measurements: list[dict[str, Any]] = []
        self.observations: list[list[dict[str, Any]]] = []
        self.verdicts: list[list[dict[str, Any]]] = []

    def batches(self) -> Iterator[Batch | FileEnd]:
        if self.raw_file is not None:
            _keep_raw_copy(self.path, self.config.data_root / self.raw_file)
        try:
            for number, line in iter_lines(self.path):
                self._read_line(number, line)
                if self.batch.read >= RECORDS_PER_BATCH:
                    yield self._take()
        except (OSError, EOFError) as exc:  # incl. gzip.BadGzipFile: a truncated or corrupt .gz
            # What was read stays; the rest is one quarantined "record".
            self._quarantine(-1, b"", f"unreadable_file: {exc}")
        if self.batch.read or self.batch.quarantine:
            yield self._take()
        if self.raw_file is not None and not self.local_seen:
            (self.config.data_root / self.raw_file).unlink(missing_ok=True)  # nothing points at it
        yield FileEnd(self.index)

    def _take(self) -> Batch:
        batch = self.batch
        if self.measurements:
            batch.measurements, batch.observations, batch.verdicts = self._tables()
        self._reset()
        return batch

    def _tables(self) -> tuple[pa.Table, pa.Table, pa.Table]:
        """The batch's three tables, rows ordered by partition (stable: file order kept within each),
        so the parent's Parquet write finds each partition in a few runs and needs no sort."""
        measurement_rows = self.measurements
        by_test = _stable_order(measurement_rows, _BY_DATE_AND_TEST)  # measurements, observations
        by_date = _stable_order(measurement_rows, _BY_DATE)  # verdicts
        measurements = rows_to_table([measurement_rows[i] for i in by_test], MEASUREMENTS_SCHEMA)
        # Row i of `measurements` is measurement by_test[i]: where each one's shared columns are.
        position = [0] * len(by_test)
        for row_index, measurement_index in enumerate(by_test):
            position[measurement_index] = row_index
        observations = _rows_with_header(measurements, self.observations, by_test, position,
                                         OBSERVATIONS_SCHEMA)
        verdicts = _rows_with_header(measurements, self.verdicts, by_date, position, VERDICTS_SCHEMA)
        return measurements, observations, verdicts

    def _read_line(self, number: int, line: bytes | memoryview) -> None:
        record = decode_fields(line)
        if record is not None:
            self.batch.read += 1
            self._read_record(number, None, line, record)
            return
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            if not bytes(line).strip():
                return  # a long run of whitespace (short ones never get here, see _blank)
            self.batch.read += 1
            self._quarantine(number, line, f"invalid_json: {exc}")
            return
        if isinstance(value, list):
            for item_index, item in enumerate(value):
                self.batch.read += 1
                self._read_record(number, item_index, None, item)
        else:
            self.batch.read += 1
            self._read_record(number, None, line, value)

    def _read_record(self, number: int, item: int | None, line: bytes | memoryview | None, record: Any) -> None:
        try:
            header, meta, test_keys = read_header(record)
        except RecordError as exc:
            self._quarantine(number, line if line is not None else orjson.dumps(record), str(exc))
            return
        uid = header.measurement_uid
        if uid in self.seen or uid in self.local_seen:
            self.batch.duplicated += 1
            return
        self.local_seen.add(uid)
        facts = make_observations(header, test_keys, meta["input"], self.config.fingerprints)
        self.observations.append(facts.rows)
        self.verdicts.append(judge_measurement(header, meta, test_keys, facts, self.config.rule_sets))
        row = _MEASUREMENT_TEMPLATE.copy()
        row.update(meta)
        row.update(
            measurement_uid=uid, measurement_start_time=header.measurement_start_time, date=header.date,
            probe_cc=header.probe_cc, probe_asn=header.probe_asn, test_name=header.test_name, source=self.source,
            ingested_at=self.config.ingested_at, raw_file=self.raw_file,
            raw_line=number if self.raw_file else None, raw_item=item if self.raw_file else None,
        )
        self.measurements.append(row)

    def _quarantine(self, number: int, line: bytes | memoryview, reason: str) -> None:
        text = bytes(line).decode("utf-8", "replace").rstrip("\r\n")
        self.batch.quarantine.append({
            "source": self.source, "line": number or 1, "reason": reason,
            "record": text[:MAX_QUARANTINE_RECORD_CHARS],
            "truncated": len(text) > MAX_QUARANTINE_RECORD_CHARS,
        })


def _stable_order(rows: list[dict[str, Any]], key: Callable[[dict[str, Any]], Any]) -> list[int]:
    return sorted(range(len(rows)), key=lambda index: key(rows[index]))  # sorted() is stable


def _rows_with_header(measurements: pa.Table, per_measurement: list[list[dict[str, Any]]], order: list[int],
                      position: list[int], schema: pa.Schema) -> pa.Table:
    """The rows of each measurement, in `order`, as a table of `schema`.

    Observation and verdict rows repeat columns of their measurement's row (uid, time, date,
    probe, test, ...; same names, types and values by construction in rows.py, observations.py
    and rules.py); those are taken from `measurements` by index instead of being converted
    from Python once per row (`position[m]`: measurement m's row in `measurements`).
    """
    rows = [row for index in order for row in per_measurement[index]]
    owners = pa.array([position[index] for index in order for _ in per_measurement[index]], pa.int32())
    own = pa.schema([field for field in schema if field.name not in MEASUREMENT_COLUMNS])
    converted = dict(zip(own.names, rows_to_table(rows, own).columns))
    return pa.Table.from_arrays([measurements.column(name).take(owners) if name not in converted
                                 else converted[name] for name in schema.names], schema=schema)


def rows_to_table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows that hold every column of `schema` -> an Arrow table, converted column by column.

    Same conversion as `pa.Table.from_pylist` (which runs `row.get(name)` for every cell in
    Python) but the transpose happens in C: an itemgetter per row, then `zip(*...)`; ~1.3x
    faster on observation rows (39 columns). A missing key raises KeyError instead of
    becoming null: every row here is made complete (observation template, verdict rows).
    """
    if not rows:
        return schema.empty_table()
    if len(schema) == 1:  # itemgetter of one name returns the value, not a 1-tuple
        columns: Iterable[Sequence[Any]] = ([row[schema.names[0]] for row in rows],)
    else:
        columns = zip(*map(itemgetter(*schema.names), rows))
    return pa.Table.from_arrays([pa.array(column, field.type) for column, field in zip(columns, schema)],
                                schema=schema)


# -- raw copies ---------------------------------------------------------------------


def _raw_name(path: Path) -> str:
    return path.name if path.name.endswith(".gz") else path.name + ".gz"


def _keep_raw_copy(source: Path, destination: Path) -> None:
    """The input as it was read: a .gz is copied byte for byte, anything else gzipped (ISA-L level 1)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".partial")
    if source.name.endswith(".gz"):
        shutil.copyfile(source, partial)
    else:
        # The gzip header's mtime is the source's, not the clock's: copies of one file are the same
        # bytes whenever they are made (the engines' oracle test compares them).
        with source.open("rb") as reader, igzip.IGzipFile(partial, "wb", compresslevel=1,
                                                         mtime=int(source.stat().st_mtime)) as writer:
            shutil.copyfileobj(reader, writer, READ_CHUNK)
    partial.replace(destination)


def read_raw_line(data_root: Path, raw_file: str, raw_line: int, raw_item: int | None = None) -> bytes:
    """The original text of one stored measurement, from its kept raw copy (line 0: the whole file)."""
    chunks = read_chunks(data_root / raw_file)
    lines = [(0, b"".join(chunks))] if raw_line == 0 else _split_lines(chunks)
    for number, line in lines:
        if number == raw_line:
            text = bytes(line).strip()
            return text if raw_item is None else orjson.dumps(orjson.loads(text)[raw_item])
    raise KeyError(f"{raw_file} has no line {raw_line}")
