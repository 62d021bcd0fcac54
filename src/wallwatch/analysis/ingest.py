"""Ingest OONI measurements (and wallwatch's own) into the store, streaming and resumable.

Input: files or folders of `.json` (one measurement, as OONI's API and the spec
examples serve them), `.jsonl` and `.jsonl.gz` / `.json.gz` (one measurement per
line, OONI's raw archive layout `raw/<YYYYMMDD>/<HH>/<CC>/<test>/*.jsonl.gz`).
Each record is read once: header -> observations -> verdicts, appended to
column batches that are flushed to Parquet every `batch_size` measurements, so
memory is bounded by one batch whatever the file size.

Resumability, two ways:
* a ledger of finished files (`<data>/ingested_files.jsonl`) keyed by path, size,
  mtime and a sha256 of the first and last 64 KiB: an unchanged file is skipped;
* dedup by `measurement_uid` across files and runs: OONI's own uid when present,
  else "ww-" + sha256(report_id, input, measurement_start_time, test_name)[:32]
  (the fields of OONI's fastpath ReplacingMergeTree key, ooni/backend docs/Database.md).

A record that cannot be read goes to `<data>/quarantine/<date>.jsonl` with the reason
and is counted; the run continues.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import hashlib
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
import pyarrow as pa

from wallwatch.analysis.fingerprints import FingerprintDB, load_fingerprints
from wallwatch.analysis.observations import Header, make_observations
from wallwatch.analysis.store import MEASUREMENTS_SCHEMA, OBSERVATIONS_SCHEMA, VERDICTS_SCHEMA, Store
from wallwatch.analysis.verdicts import RuleSet, default_rule_sets, judge_measurement

SUFFIXES = (".json", ".jsonl", ".jsonl.gz", ".json.gz")
LEDGER = "ingested_files"
# A .json file is parsed whole up to this size; bigger ones are read line by line
# (OONI's largest single measurements are ~1 MB, ooni/data Readme).
MAX_WHOLE_JSON_BYTES = 64 * 1024 * 1024
# Raw text kept in a quarantine row; enough to see what went wrong.
MAX_QUARANTINE_RECORD_CHARS = 1_000_000
FINGERPRINT_CHUNK = 64 * 1024
DEFAULT_BATCH = 2000


class RecordError(ValueError):
    """A record that is not a usable measurement; the message is the quarantine reason."""


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

    def as_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "quarantine_reasons"}
        data["quarantine_reasons"] = dict(self.quarantine_reasons)
        return data


@dataclass(frozen=True, slots=True)
class RawRecord:
    source: str
    line: int
    text: bytes


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


def _open(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.name.endswith(".gz") else path.open("rb")


def iter_raw_records(path: Path) -> Iterator[RawRecord]:
    """Raw records of one file: a whole `.json` document, or one per non-blank line."""
    source = str(path)
    if path.name.endswith(".json") and path.stat().st_size <= MAX_WHOLE_JSON_BYTES:
        text = path.read_bytes()
        stripped = text.strip()
        if stripped.startswith(b"{") and b"\n{" not in stripped:
            yield RawRecord(source, 1, stripped)
            return
        if stripped.startswith(b"["):
            yield RawRecord(source, 1, stripped)  # a JSON array: split in parse_records
            return
    with _open(path) as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                yield RawRecord(source, number, line)


def parse_records(raw: RawRecord) -> Iterator[tuple[RawRecord, Any]]:
    """(raw, decoded) pairs; a JSON array yields its elements. Raises RecordError on bad JSON."""
    try:
        value = orjson.loads(raw.text)
    except orjson.JSONDecodeError as exc:
        raise RecordError(f"invalid_json: {exc}") from None
    if isinstance(value, list):
        for item in value:
            yield RawRecord(raw.source, raw.line, orjson.dumps(item)), item
    else:
        yield raw, value


# -- the header --------------------------------------------------------------------


def parse_time(value: Any) -> dt.datetime:
    """OONI's "YYYY-MM-DD hh:mm:ss" (df-000), also accepting ISO 8601 "T" and "Z" (UTC, returned naive)."""
    if not isinstance(value, str) or len(value) < 19:
        raise RecordError(f"bad_measurement_start_time: {value!r}")
    try:
        return dt.datetime(int(value[0:4]), int(value[5:7]), int(value[8:10]),
                           int(value[11:13]), int(value[14:16]), int(value[17:19]))
    except ValueError:
        raise RecordError(f"bad_measurement_start_time: {value!r}") from None


def parse_asn(value: Any) -> int:
    """ "AS30722" or 30722 -> 30722; "AS0"/missing -> 0. Values beyond int32 are private-use (RFC 6996) -> 0."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str):
        digits = value[2:] if value[:2].upper() == "AS" else value
        if not digits.isdigit():
            raise RecordError(f"bad_probe_asn: {value!r}")
        number = int(digits)
    elif value is None:
        return 0
    else:
        raise RecordError(f"bad_probe_asn: {value!r}")
    return number if 0 <= number < 2**31 else 0


def stable_uid(record: Mapping[str, Any]) -> str:
    uid = record.get("measurement_uid")
    if isinstance(uid, str) and uid:
        return uid
    key = "\x1f".join(str(record.get(k) or "") for k in ("report_id", "input", "measurement_start_time", "test_name"))
    return "ww-" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def probe_key(record: Mapping[str, Any], test_keys: Mapping[str, Any]) -> str:
    """The best distinct-probe identity available: OONI's `probe_id` annotation if any, else the
    report id (one report = one probe run), else the lab run id for wallwatch measurements."""
    annotations = record.get("annotations")
    if isinstance(annotations, dict) and isinstance(annotations.get("probe_id"), str):
        return "probe:" + annotations["probe_id"]
    report_id = record.get("report_id")
    if isinstance(report_id, str) and report_id:
        return "report:" + report_id
    extension = test_keys.get("x_wallwatch")
    lab = extension.get("lab") if isinstance(extension, dict) else None
    if isinstance(lab, dict) and lab.get("run_id"):
        return "lab:" + str(lab["run_id"])
    return "unknown"


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else (None if value is None else str(value))


def read_header(record: Any) -> tuple[Header, dict[str, Any], Mapping[str, Any]]:
    if not isinstance(record, dict):
        raise RecordError(f"not_a_measurement: top-level {type(record).__name__}")
    test_name = record.get("test_name")
    if not isinstance(test_name, str) or not test_name:
        raise RecordError("missing_field: test_name")
    test_keys = record.get("test_keys")
    if not isinstance(test_keys, dict):
        raise RecordError("missing_field: test_keys")
    start = parse_time(record.get("measurement_start_time"))
    probe_cc = record.get("probe_cc")
    probe_cc = probe_cc if isinstance(probe_cc, str) and probe_cc else "ZZ"
    header = Header(stable_uid(record), start, start.date(), probe_cc, parse_asn(record.get("probe_asn")), test_name)
    meta = {
        "probe_network_name": _text(record.get("probe_network_name")),
        "probe_key": probe_key(record, test_keys),
        "software_name": _text(record.get("software_name")) or "unknown",
        "report_id": _text(record.get("report_id")),
        "input": _text(record.get("input")),
        "test_version": _text(record.get("test_version")),
        "software_version": _text(record.get("software_version")),
        "data_format_version": _text(record.get("data_format_version")),
        "resolver_ip": _text(record.get("resolver_ip")),
    }
    return header, meta, test_keys


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


class Ingester:
    """One ingest run into `store`: call `ingest_paths`, read `summary`."""

    def __init__(self, store: Store, *, batch_size: int = DEFAULT_BATCH, keep_raw: bool = True,
                 rule_sets: Mapping[str, RuleSet] | None = None, fingerprints: FingerprintDB | None = None,
                 on_file: Callable[[Path, IngestSummary], None] | None = None) -> None:
        self.store = store
        self.batch_size = batch_size
        self.keep_raw = keep_raw
        self.rule_sets = rule_sets or default_rule_sets()
        self.fingerprints = fingerprints or load_fingerprints()
        self.on_file = on_file
        self.summary = IngestSummary()
        self.seen_uids = self._stored_uids()
        self.done_files = {_ledger_key(row) for row in store.read_jsonl(LEDGER)}
        self._measurements: list[dict[str, Any]] = []
        self._observations: list[dict[str, Any]] = []
        self._verdicts: list[dict[str, Any]] = []
        self._quarantine: list[dict[str, Any]] = []
        self._ingested_at = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)

    def _stored_uids(self) -> set[str]:
        connection = self.store.connect()
        try:
            return {uid for (uid,) in connection.execute("SELECT measurement_uid FROM measurements").fetchall()}
        finally:
            connection.close()

    def ingest_paths(self, paths: Iterable[Path]) -> IngestSummary:
        for path in discover(paths):
            self.ingest_file(path)
        self.flush()
        return self.summary

    def ingest_file(self, path: Path) -> None:
        self.summary.files_seen += 1
        key = FileKey.of(path)
        if (key.path, key.size, key.mtime_ns, key.edges_sha256) in self.done_files:
            self.summary.files_skipped += 1
            return
        try:
            for raw in iter_raw_records(path):
                self._ingest_raw(raw)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            # A truncated .gz: what was read stays; the rest is one quarantined "record".
            self._quarantine_raw(RawRecord(str(path), -1, b""), f"unreadable_file: {exc}")
        # Flushing before the ledger entry means a crash re-reads the file and dedup drops repeats.
        self.flush()
        self.store.append_jsonl(LEDGER, [{**dataclasses.asdict(key), "ingested_at": self._ingested_at.isoformat()}])
        self.done_files.add((key.path, key.size, key.mtime_ns, key.edges_sha256))
        if self.on_file:
            self.on_file(path, self.summary)

    def _ingest_raw(self, raw: RawRecord) -> None:
        try:
            records = list(parse_records(raw))
        except RecordError as exc:
            self.summary.read += 1
            self._quarantine_raw(raw, str(exc))
            return
        for item_raw, record in records:
            self.summary.read += 1
            try:
                self._ingest_record(item_raw, record)
            except RecordError as exc:
                self._quarantine_raw(item_raw, str(exc))
            if len(self._measurements) >= self.batch_size:
                self.flush()

    def _ingest_record(self, raw: RawRecord, record: Any) -> None:
        header, meta, test_keys = read_header(record)
        if header.measurement_uid in self.seen_uids:
            self.summary.duplicated += 1
            return
        facts = make_observations(header, test_keys, meta["input"], self.fingerprints)
        verdicts = judge_measurement(header, meta, test_keys, facts, self.rule_sets)
        self.seen_uids.add(header.measurement_uid)
        self.summary.stored += 1
        self._observations.extend(facts.rows)
        self._verdicts.extend(verdicts)
        self._measurements.append({
            "measurement_uid": header.measurement_uid,
            "measurement_start_time": header.measurement_start_time,
            "date": header.date,
            "probe_cc": header.probe_cc,
            "probe_asn": header.probe_asn,
            "test_name": header.test_name,
            "source": raw.source,
            "ingested_at": self._ingested_at,
            "raw": raw.text.decode("utf-8", "replace") if self.keep_raw else None,
            **{k: meta[k] for k in ("probe_network_name", "probe_key", "report_id", "input", "test_version",
                                     "software_name", "software_version", "data_format_version", "resolver_ip")},
        })

    def _quarantine_raw(self, raw: RawRecord, reason: str) -> None:
        self.summary.quarantined += 1
        self.summary.quarantine_reasons[reason.split(":", 1)[0]] += 1
        text = raw.text.decode("utf-8", "replace").rstrip("\r\n")
        self._quarantine.append({
            "source": raw.source, "line": raw.line, "reason": reason,
            "record": text[:MAX_QUARANTINE_RECORD_CHARS],
            "truncated": len(text) > MAX_QUARANTINE_RECORD_CHARS,
        })

    def flush(self) -> None:
        if self._measurements:
            self.store.write("measurements", pa.Table.from_pylist(self._measurements, MEASUREMENTS_SCHEMA),
                             mode="append")
            self.summary.observations += self.store.write(
                "observations", pa.Table.from_pylist(self._observations, OBSERVATIONS_SCHEMA), mode="append")
            self.summary.verdicts += self.store.write(
                "verdicts", pa.Table.from_pylist(self._verdicts, VERDICTS_SCHEMA), mode="append")
        if self._quarantine:
            today = dt.datetime.now(dt.UTC).date().isoformat()
            (self.store.root / "quarantine").mkdir(parents=True, exist_ok=True)
            _append_quarantine(self.store.root / "quarantine" / f"{today}.jsonl", self._quarantine)
        self._measurements, self._observations, self._verdicts, self._quarantine = [], [], [], []


def _append_quarantine(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("ab") as handle:
        handle.write(b"".join(orjson.dumps(row) + b"\n" for row in rows))
        handle.flush()
        os.fsync(handle.fileno())


def _ledger_key(row: Mapping[str, Any]) -> tuple[str, int, int, str]:
    return (str(row.get("path")), int(row.get("size") or -1), int(row.get("mtime_ns") or -1),
            str(row.get("edges_sha256")))


def ingest(paths: Iterable[Path], data_dir: Path, **options: Any) -> IngestSummary:
    """Ingest `paths` into the store at `data_dir`; the summary counts read/stored/duplicated/quarantined."""
    return Ingester(Store(data_dir), **options).ingest_paths([Path(p) for p in paths])
