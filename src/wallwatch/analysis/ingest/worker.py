"""One file's share of an ingest: lines -> header -> observations -> verdicts -> Arrow batches.

This is the part of `ingest` that runs in worker processes (see pipeline.py for the
parent: dedup across files, commits, ledger). It is pure with respect to the store:
it reads input files one after another and yields `Batch`es of Arrow tables plus the
quarantine rows and the files that ended, a batch spanning files. The one side effect
is the kept raw copy of each input (`raw/<key>/<name>`), made before any row points at
it and visible only once a commit names it.

Memory is bounded by configuration, not input: a line over `max_line_bytes` is never
held whole (`split_lines`), a JSON array that long is read element by element, and a
batch holds at most `records_per_batch` records whatever the number of files.

Speed notes (bench/bench_ingest.py measures them):
* gunzip with ISA-L (python-isal `igzip`), 2-4x faster than zlib on inflate;
* lines are memoryview slices of 4 MiB read chunks, never copied;
* each line is decoded by msgspec into only the fields read (`decode.py`);
  bad JSON or odd shapes fall back to `orjson.loads`, the old path, record by record;
* rows become Arrow tables here, in the worker, so the parent only concatenates.
"""

from __future__ import annotations

import codecs
import datetime as dt
import gzip
import hashlib
import json
import os
import shutil
import stat
import threading
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import pyarrow as pa
from isal import igzip, isal_zlib

from wallwatch.analysis.archive.bucket import S3Object, s3_filesystem
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
# The longest line read whole, by default: 32x OONI's largest measurements.
DEFAULT_MAX_LINE_BYTES = 32 * 1024 * 1024
# A JSON array on one line longer than this is read element by element even under the limit.
ARRAY_STREAM_BYTES = 4 * 1024 * 1024
# Raw text kept in a quarantine row; enough to see what went wrong.
MAX_QUARANTINE_RECORD_CHARS = 1_000_000
READ_CHUNK = 4 * 1024 * 1024
COMPRESSED_CHUNK = 1024 * 1024
# Bytes asked of S3 at a time when an object is streamed (one ranged GET each).
S3_BLOCK = 8 * 1024 * 1024
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
    # A line longer than this is quarantined without being held whole (a JSON array that long is
    # read element by element instead); memory per worker is bounded by it, not by the input.
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    # Records per Batch: RECORDS_PER_BATCH, or fewer when the parent commits more often.
    records_per_batch: int = RECORDS_PER_BATCH


@dataclass(slots=True)
class Batch:
    """Rows of up to RECORDS_PER_BATCH records of one or more files (tables None when nothing
    was stored), their quarantine rows (file index, row), and the files that ended with it
    (every row of an ended file is in this batch or an earlier one)."""

    read: int = 0
    duplicated: int = 0
    measurements: pa.Table | None = None
    observations: pa.Table | None = None
    verdicts: pa.Table | None = None
    quarantine: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    ended: list[int] = field(default_factory=list)
    # Files skipped as a whole: (file index, why), e.g. their first records are not measurements.
    not_measurements: list[tuple[int, str]] = field(default_factory=list)


# -- reading lines ------------------------------------------------------------------


# What ingest reads: a local file, or an object of an S3 bucket (OONI's archive, archive/bucket.py).
Source = Path | S3Object


def read_chunks(path: Source) -> Iterator[bytes]:
    """The file's bytes, gunzipped when it is a .gz, a few MiB at a time.

    A truncated or corrupt .gz raises EOFError/BadGzipFile only after every byte
    that could be inflated was yielded, so the records before the damage are kept.
    The file is opened non-blocking and must be a regular file: a FIFO or a device given
    as a path is refused (OSError) instead of blocking the reader for ever. An S3 object is
    streamed (ranged reads of a few MiB), never held whole.
    """
    with _open_source(path) as handle:
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


def _open_source(path: Source) -> BinaryIO:
    if isinstance(path, S3Object):
        return s3_filesystem(path.endpoint_url).open(f"{path.bucket}/{path.key}", "rb",
                                                     block_size=S3_BLOCK, cache_type="readahead")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"not a regular file: {path}")
    return os.fdopen(fd, "rb")


@dataclass(frozen=True, slots=True)
class LongLine:
    """A line longer than the limit: its first bytes (for the quarantine row) and its length."""

    head: bytes
    length: int


@dataclass(frozen=True, slots=True)
class ArrayItem:
    """One element of a JSON array too long to hold as one line, read on its own."""

    index: int
    value: Any


@dataclass(frozen=True, slots=True)
class BadArrayRest:
    """The rest of such an array could not be read (bad JSON, an element over the limit,
    nesting too deep): one quarantined record for all of it."""

    index: int
    reason: str
    head: bytes


Line = bytes | memoryview | LongLine | ArrayItem | BadArrayRest


def iter_lines(path: Source, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[tuple[int, Line]]:
    """(line number, text) of each non-blank line; a small `.json` document is line 0 (the whole file).
    Lines over `max_line_bytes` come as LongLine, or as ArrayItems when they are a JSON array."""
    size = path.size if isinstance(path, S3Object) else path.stat().st_size
    if path.name.endswith(".json") and size <= min(MAX_WHOLE_JSON_BYTES, max_line_bytes):
        text = b"".join(read_chunks(path))
        stripped = text.strip()
        if (stripped.startswith(b"{") and b"\n{" not in stripped) or stripped.startswith(b"["):
            yield 0, stripped  # one document, or a JSON array split by the caller
            return
    yield from split_lines(read_chunks(path), max_line_bytes)


def split_lines(chunks: Iterable[bytes], max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[tuple[int, Line]]:
    """Non-blank lines of a stream of chunks, in memory bounded by `max_line_bytes` + one chunk.

    A line cut by chunk ends is gathered as a list of parts and joined once (never `+=`, which
    copies the whole pending line at every chunk: quadratic in its length). Past the limit the
    parts are dropped and the line is skipped to its newline (LongLine), unless it is a JSON
    array, which is read element by element (`_array_items`).
    """
    stream = iter(chunks)
    pushed: list[bytes] = []  # bytes handed back after an array that ended mid-chunk
    number = 0
    parts: list[bytes] = []  # the start of a line cut by the end of the previous chunk(s)
    size = 0
    while True:
        chunk = pushed.pop() if pushed else next(stream, None)
        if chunk is None:
            break
        start = 0
        if parts:
            newline = chunk.find(b"\n")
            if newline < 0:
                parts.append(chunk)
                size += len(chunk)
                if _stream(parts[0], size, max_line_bytes):
                    number += 1
                    rest = yield from _long_line(number, parts, stream, max_line_bytes)
                    parts, size = [], 0
                    if rest:
                        pushed.append(rest)
                continue
            number += 1
            parts.append(chunk[:newline])
            line = b"".join(parts)
            parts, size, start = [], 0, newline + 1
            if _stream(line, len(line), max_line_bytes):
                rest = yield from _long_line(number, [line], iter(()), max_line_bytes)
                if rest:
                    raise AssertionError("a whole line has nothing after it")  # pragma: no cover
            elif not _blank(line, 0, len(line)):
                yield number, line
        view = memoryview(chunk)
        while (newline := chunk.find(b"\n", start)) >= 0:
            number += 1
            if _stream(chunk[start:start + 64], newline - start, max_line_bytes):
                yield from _long_line(number, [chunk[start:newline]], iter(()), max_line_bytes)
            elif not _blank(chunk, start, newline):
                yield number, view[start:newline]
            start = newline + 1
        if start < len(chunk):
            parts, size = [chunk[start:]], len(chunk) - start
            if _stream(parts[0], size, max_line_bytes):
                number += 1
                rest = yield from _long_line(number, parts, stream, max_line_bytes)
                parts, size = [], 0
                if rest:
                    pushed.append(rest)
    if parts:
        line = b"".join(parts)
        if _stream(line, len(line), max_line_bytes):
            yield from _long_line(number + 1, [line], iter(()), max_line_bytes)
        elif not _blank(line, 0, len(line)):
            yield number + 1, line


def _stream(start: bytes, size: int, max_line_bytes: int) -> bool:
    """Whether a line (of which `start` is the beginning) is not to be held whole: it is over the
    limit, or it is a JSON array over ARRAY_STREAM_BYTES (orjson would turn all of it into Python
    objects at once, ~5-10x its size, where the streaming reader holds one element)."""
    return size > max_line_bytes or (size > ARRAY_STREAM_BYTES and start[:64].lstrip()[:1] == b"[")


def _long_line(number: int, parts: list[bytes], stream: Iterator[bytes],
               max_line_bytes: int) -> Generator[tuple[int, Line], None, bytes]:
    """Yield what a line over the limit holds; return the bytes after its newline (to split on)."""
    first = parts[0].lstrip()
    if first.startswith(b"["):
        return (yield from _array_items(number, parts, stream, max_line_bytes))
    head = b"".join(parts)[:MAX_QUARANTINE_RECORD_CHARS]
    length = sum(map(len, parts))
    parts.clear()  # the line is not held
    for chunk in stream:
        newline = chunk.find(b"\n")
        if newline >= 0:
            yield number, LongLine(head, length + newline)
            return chunk[newline + 1:]
        length += len(chunk)
    yield number, LongLine(head, length)
    return b""


_WHITESPACE = " \t\r\n"


def _array_items(number: int, parts: list[bytes], stream: Iterator[bytes],
                 max_item_bytes: int) -> Generator[tuple[int, Line], None, bytes]:
    """The elements of a JSON array on one line, one at a time; returns the bytes after the line.

    Each element is parsed by the stdlib's C scanner `JSONDecoder.raw_decode`, which returns
    where the value ends, over a window of the text that holds the current element and one
    chunk: an element that does not parse yet is retried with one more chunk, up to
    `max_item_bytes` (then the rest of the array is one BadArrayRest and the line is skipped).
    No library here both streams an array and bounds each element (ijson does the first).
    """
    decoder = json.JSONDecoder()
    utf8 = codecs.getincrementaldecoder("utf-8")("replace")
    text = utf8.decode(b"".join(parts))
    parts.clear()
    pos = text.index("[") + 1
    index = 0
    need_separator = False  # after an element: "," or "]" comes next
    exhausted = False

    def more() -> bool:
        nonlocal text, pos, exhausted
        if exhausted:
            return False
        chunk = next(stream, None)
        if chunk is None:
            exhausted = True
            text = text[pos:] + utf8.decode(b"", final=True)
        else:
            text = text[pos:] + utf8.decode(chunk)
        pos = 0
        return True

    def bad(reason: str) -> Generator[tuple[int, Line], None, bytes]:
        yield number, BadArrayRest(index, reason, text[pos:pos + 1000].encode())
        return (yield from _skip_to_newline(text[pos:], stream, utf8))

    while True:
        while pos < len(text) and text[pos] in _WHITESPACE:
            pos += 1
        if pos >= len(text):
            if more():
                continue
            return (yield from bad("invalid_json: the array is not closed"))
        if text[pos] == "]" and (index == 0 or need_separator):
            # The line ends at the next newline (whatever else is on it is not read).
            return (yield from _skip_to_newline(text[pos + 1:], stream, utf8))
        if need_separator:
            if text[pos] != ",":
                return (yield from bad(f"invalid_json: expected ',' or ']' after element {index - 1}"))
            pos += 1
            need_separator = False
            continue
        try:
            value, end = decoder.raw_decode(text, pos)
            if end == len(text) and not exhausted:
                raise ValueError("may go on in the next chunk")  # e.g. a number cut by the window
        except RecursionError:
            return (yield from bad(f"too_deep: element {index} is nested deeper than the parser allows"))
        except ValueError:
            if len(text) - pos > max_item_bytes:
                return (yield from bad(f"line_too_long: element {index} is longer than {max_item_bytes} bytes"))
            if more():
                continue
            return (yield from bad(f"invalid_json: element {index} does not parse"))
        yield number, ArrayItem(index, value)
        index += 1
        pos = end
        need_separator = True
        if pos > READ_CHUNK:
            text, pos = text[pos:], 0


def _skip_to_newline(text: str, stream: Iterator[bytes], utf8: codecs.IncrementalDecoder
                     ) -> Generator[tuple[int, Line], None, bytes]:
    newline = text.find("\n")
    if newline >= 0:
        return text[newline + 1:].encode() + utf8.getstate()[0]
    for chunk in stream:
        at = chunk.find(b"\n")
        if at >= 0:
            return chunk[at + 1:]
    return b""
    yield  # a generator


def _blank(data: bytes, start: int, end: int) -> bool:
    # Every measurement starts with "{" or "[" after optional whitespace; only look deeper when short.
    return end - start < 16 and not data[start:end].strip()


# -- one worker's rows ----------------------------------------------------------------


class BatchBuilder:
    """The rows a worker gathers from one or more files until a batch is full.

    Batches span files: 10,000 files of one measurement each make 10 batches of 1,000, not
    10,000 batches of one (each a set of three Arrow tables with their own buffers and schema,
    pickled and held by the parent until the next Parquet write)."""

    def __init__(self, records_per_batch: int = RECORDS_PER_BATCH) -> None:
        self.limit = records_per_batch
        self._reset()

    def _reset(self) -> None:
        self.batch = Batch()
        # The batch's uids: a measurement twice in one batch is stored once (across batches the
        # parent drops repeats, as it does across workers).
        self.uids: set[str] = set()
        # Per stored measurement: its row, its observation rows, its verdict rows.
        self.measurements: list[dict[str, Any]] = []
        self.observations: list[list[dict[str, Any]]] = []
        self.verdicts: list[list[dict[str, Any]]] = []

    def full(self) -> bool:
        return self.batch.read >= self.limit or len(self.batch.ended) >= RECORDS_PER_BATCH

    def pending(self) -> bool:
        batch = self.batch
        return bool(batch.read or batch.quarantine or batch.ended or batch.not_measurements)

    def take(self) -> Batch:
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


def read_files(tasks: Iterable[tuple[int, Source, str]], config: WorkerConfig, seen: set[str]) -> Iterator[Batch]:
    """Batches of the files (index, path, raw key) in order; every file's end is in one of them."""
    builder = BatchBuilder(config.records_per_batch)
    for index, path, raw_key in tasks:
        yield from FileReader(index, path, raw_key, config, seen, builder).batches()
    if builder.pending():
        yield builder.take()


# -- one file -----------------------------------------------------------------------

# A file whose first this-many records are none of them measurements (not JSON, or JSON without
# `test_name` and `test_keys`, the two fields every OONI measurement has: df-000-base) is not a
# measurement file (a replay's ground_truth.jsonl, a log): skipped as a whole with one message
# instead of one quarantine row per line.
PROBATION_RECORDS = 8


class FileReader:
    """Turns one input file into rows of `builder`; `seen` are uids already stored (never stored again)."""

    def __init__(self, index: int, path: Source, raw_key: str, config: WorkerConfig, seen: set[str],
                 builder: BatchBuilder | None = None) -> None:
        self.index = index
        self.path = path
        self.source = str(path)
        self.config = config
        self.seen = seen
        self.raw_file = f"{RAW_DIR}/{raw_key}/{raw_name(path)}" if config.keep_raw else None
        self.builder = builder or BatchBuilder(config.records_per_batch)
        # Quarantine rows held while none of the file's records was a measurement yet.
        self._held: list[dict[str, Any]] | None = []
        self._not_measurement: str | None = None

    def batches(self) -> Iterator[Batch]:
        reading: Source = self.path
        if self.raw_file is not None:
            copy = self.config.data_root / self.raw_file
            _keep_raw_copy(self.path, copy)
            if isinstance(self.path, S3Object):
                reading = copy  # the object was downloaded once, into its raw copy: read that
        try:
            for number, line in iter_lines(reading, self.config.max_line_bytes):
                self._read_line(number, line)
                if self._not_measurement is not None:
                    break
                if self.builder.full():
                    yield self.builder.take()
        except (OSError, EOFError) as exc:  # incl. gzip.BadGzipFile: a truncated or corrupt .gz
            # What was read stays; the rest is one quarantined "record".
            self._quarantine(-1, b"", f"unreadable_file: {exc}")
        if self._held:  # the file ended before any measurement: none of it is one
            count = len(self._held)
            self._not_measurement = (f"none of its {count} records is a measurement" if count > 1 else
                                     "its one record is not a measurement") + f" ({self._example()})"
        batch = self.builder.batch
        if self._not_measurement is not None:
            batch.not_measurements.append((self.index, self._not_measurement))
        elif self._held is not None:
            self._release()
        batch.ended.append(self.index)

    def _example(self) -> str:
        return self._held[0]["reason"][:120] if self._held else ""

    def _release(self) -> None:
        held, self._held = self._held, None
        self.builder.batch.quarantine.extend((self.index, row) for row in held or ())

    def _read_line(self, number: int, line: Line) -> None:
        batch = self.builder.batch
        if isinstance(line, LongLine):
            batch.read += 1
            self._quarantine(number, line.head, f"line_too_long: {line.length} bytes, more than the "
                             f"{self.config.max_line_bytes} a line may have (--max-line-mb)", force=True,
                             truncated=True)
            return
        if isinstance(line, ArrayItem):
            batch.read += 1
            self._read_record(number, line.index, None, line.value)
            return
        if isinstance(line, BadArrayRest):
            batch.read += 1
            self._quarantine(number, line.head, f"{line.reason} (the rest of the array is skipped)", force=True,
                             truncated=True)
            return
        try:
            record = decode_fields(line)
        except RecursionError:
            record = None
        if record is not None:
            batch.read += 1
            self._read_record(number, None, line, record)
            return
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            if not bytes(line).strip():
                return  # a long run of whitespace (short ones never get here, see _blank)
            batch.read += 1
            self._quarantine(number, line, f"invalid_json: {exc}")
            return
        except RecursionError:
            batch.read += 1
            self._quarantine(number, line, "too_deep: nested deeper than the parser allows")
            return
        if isinstance(value, list):
            for item_index, item in enumerate(value):
                batch.read += 1
                self._read_record(number, item_index, None, item)
        else:
            batch.read += 1
            self._read_record(number, None, line, value)

    def _read_record(self, number: int, item: int | None, line: bytes | memoryview | None, record: Any) -> None:
        if self._held is not None and isinstance(record, dict) and ("test_name" in record or "test_keys" in record):
            self._release()  # a measurement (maybe a bad one): this is a measurement file
        try:
            self._store_record(number, item, record)
        except RecordError as exc:
            self._quarantine(number, line if line is not None else _dump(record), str(exc))
        except RecursionError:
            self._quarantine(number, line if line is not None else _dump(record),
                             "too_deep: nested deeper than the parser allows")
        except Exception as exc:  # noqa: BLE001 - one record's failure is that record's, the run goes on
            self._quarantine(number, line if line is not None else _dump(record),
                             f"unprocessable: {type(exc).__name__}: {exc}"[:500])

    def _store_record(self, number: int, item: int | None, record: Any) -> None:
        header, meta, test_keys = read_header(record)
        uid = header.measurement_uid
        if uid in self.seen or uid in self.builder.uids:
            self.builder.batch.duplicated += 1
            return
        facts = make_observations(header, test_keys, meta["input"], self.config.fingerprints)
        verdicts = judge_measurement(header, meta, test_keys, facts, self.config.rule_sets)
        row = _MEASUREMENT_TEMPLATE.copy()
        row.update(meta)
        row.update(
            measurement_uid=uid, measurement_start_time=header.measurement_start_time, date=header.date,
            probe_cc=header.probe_cc, probe_asn=header.probe_asn, test_name=header.test_name, source=self.source,
            ingested_at=self.config.ingested_at, raw_file=self.raw_file,
            raw_line=number if self.raw_file else None, raw_item=item if self.raw_file else None,
        )
        self.builder.uids.add(uid)
        self.builder.observations.append(facts.rows)
        self.builder.verdicts.append(verdicts)
        self.builder.measurements.append(row)

    def _quarantine(self, number: int, line: bytes | memoryview, reason: str, *, force: bool = False,
                    truncated: bool = False) -> None:
        text = bytes(line[:MAX_QUARANTINE_RECORD_CHARS * 4]).decode("utf-8", "replace").rstrip("\r\n")
        row = {
            "source": self.source, "line": number or 1, "reason": reason,
            "record": text[:MAX_QUARANTINE_RECORD_CHARS],
            "truncated": truncated or len(text) > MAX_QUARANTINE_RECORD_CHARS or len(line) > len(text) * 4,
        }
        if self._held is not None and not force:
            self._held.append(row)
            if len(self._held) >= PROBATION_RECORDS:
                self._not_measurement = (f"its first {len(self._held)} records are not measurements "
                                         f"({self._example()})")
            return
        self.builder.batch.quarantine.append((self.index, row))


def _dump(record: Any) -> bytes:
    try:
        return orjson.dumps(record)
    except (TypeError, orjson.JSONEncodeError, RecursionError):
        return b"(a value nested too deep to write back as JSON)"


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


# A raw copy's file name is the input's (+ ".gz"), cut to this many bytes: NAME_MAX is 255.
MAX_RAW_NAME_BYTES = 200


def raw_name(path: Source) -> str:
    """The raw copy's file name: the input's, gzipped, and bounded (a long name keeps its end and
    gains a hash of the whole, so two long names never collide)."""
    name = path.name if path.name.endswith(".gz") else path.name + ".gz"
    if len(name.encode()) <= MAX_RAW_NAME_BYTES:
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    tail = name.encode("utf-8", "surrogateescape")[-(MAX_RAW_NAME_BYTES - 17):].decode("utf-8", "ignore")
    return f"{digest}-{tail}"


def _keep_raw_copy(source: Source, destination: Path) -> None:
    """The input as it was read: a .gz is copied byte for byte, anything else gzipped (ISA-L level 1).

    Written under a name of this process's own and renamed into place: on a cluster a file's task
    may run again elsewhere while a worker thought dead still writes (both copies are the same bytes).
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(f"{destination.name}.{os.getpid()}.{threading.get_ident()}.partial")
    if source.name.endswith(".gz") and isinstance(source, Path):
        shutil.copyfile(source, partial)  # copy_file_range(2): no bytes through Python
    elif source.name.endswith(".gz"):
        with _open_source(source) as reader, open(partial, "wb") as writer:
            shutil.copyfileobj(reader, writer, READ_CHUNK)
    else:
        # The gzip header's mtime is the source's, not the clock's: copies of one file are the same
        # bytes whenever they are made (the engines' oracle test compares them).
        mtime = source.mtime_ns // 10**9 if isinstance(source, S3Object) else int(source.stat().st_mtime)
        with _open_source(source) as reader, igzip.IGzipFile(partial, "wb", compresslevel=1, mtime=mtime) as writer:
            shutil.copyfileobj(reader, writer, READ_CHUNK)
    partial.replace(destination)
    # Start its write-back now, off the reading path: the parent fsyncs it again before the commit
    # that names it (which is what makes it durable), and then finds little left to write.
    threading.Thread(target=_fsync_quietly, args=(destination,), daemon=True).start()


def _fsync_quietly(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass  # the parent's fsync before the commit reports it


def read_raw_line(data_root: Path, raw_file: str, raw_line: int, raw_item: int | None = None) -> bytes:
    """The original text of one stored measurement, from its kept raw copy (line 0: the whole file)."""
    chunks = read_chunks(data_root / raw_file)
    if raw_line == 0:
        text = b"".join(chunks).strip()
        return text if raw_item is None else orjson.dumps(orjson.loads(text)[raw_item])
    for number, line in split_lines(chunks, DEFAULT_MAX_LINE_BYTES):
        if number != raw_line:
            continue
        if isinstance(line, ArrayItem):  # an array too long to hold: streamed to the element
            if line.index == raw_item:
                return orjson.dumps(line.value)
            continue
        if isinstance(line, (LongLine, BadArrayRest)):
            break
        text = bytes(line).strip()
        return text if raw_item is None else orjson.dumps(orjson.loads(text)[raw_item])
    raise KeyError(f"{raw_file} has no line {raw_line}" + ("" if raw_item is None else f" item {raw_item}"))
