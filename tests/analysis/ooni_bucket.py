"""A local S3 server (moto, on loopback) holding a small bucket laid out like OONI's archive.

Never OONI's real bucket: every test names this server's endpoint. The bucket is built from the
real samples in tests/data/ooni-samples: each measurement goes into
`raw/20240115/<HH>/<CC>/<testname>/2024011500_<CC>_<testname>.n0.0.jsonl.gz` (the upload-hour layout,
[ooni-backend-docs]), with a `.tar.gz` postcan beside each file (which sync and ingest must skip),
and the 2016 facebook_messenger sample also under the older `jsonl/` layout of its own day.
"""

from __future__ import annotations

import gzip
import io
import logging
import tarfile
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from wallwatch.analysis.archive.bucket import compact_test_name

UPLOAD_DAY = "20240115"
LEGACY_KEY = "jsonl/facebookmessenger/IT/20161125/00/20161125_IT_facebookmessenger.l.0.jsonl.gz"


@contextmanager
def moto_server() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 (a free port); yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def writer(endpoint: str) -> Any:
    """An s3fs filesystem that may write to the local server (moto takes any credentials)."""
    import s3fs

    return s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=endpoint, skip_instance_cache=True,
                             use_listings_cache=False, client_kwargs={"region_name": "eu-central-1"})


@dataclass(frozen=True)
class Bucket:
    endpoint: str
    name: str
    keys: tuple[str, ...]  # the measurement files in raw/ (not the postcans, not jsonl/)
    records: int  # measurements in those files

    @property
    def url(self) -> str:
        return f"s3://{self.name}"


def samples(samples_dir: Path, copies: int = 1) -> list[dict[str, Any]]:
    from wallwatch.analysis.ingest.pipeline import discover

    records = [orjson.loads(path.read_bytes()) for path in discover([samples_dir])]
    out = []
    for copy in range(copies):
        for index, record in enumerate(records):
            record = dict(record)
            if copy:  # a distinct measurement: OONI's uid is per upload
                record["report_id"] = f"copy-{copy}-{index}-{record.get('report_id')}"
                record.pop("measurement_uid", None)
            out.append(record)
    return out


def make_bucket(endpoint: str, records: list[dict[str, Any]], *, name: str | None = None) -> Bucket:
    """A new bucket holding `records` in OONI's layout; hour = the record's position mod 3."""
    fs = writer(endpoint)
    bucket = name or f"ooni-test-{uuid.uuid4().hex[:10]}"
    fs.mkdir(bucket)
    files: dict[str, list[bytes]] = defaultdict(list)
    for index, record in enumerate(records):
        country, test = record.get("probe_cc") or "ZZ", compact_test_name(record["test_name"])
        hour = f"{index % 3:02d}"
        key = f"raw/{UPLOAD_DAY}/{hour}/{country}/{test}/{UPLOAD_DAY}{hour}_{country}_{test}.n0.0.jsonl.gz"
        files[key].append(orjson.dumps(record))
    for key, lines in files.items():
        put(fs, bucket, key, gzip.compress(b"\n".join(lines) + b"\n"))
        put(fs, bucket, f"{key.removesuffix('.jsonl.gz')}.tar.gz", _postcan(lines))
    legacy = [line for line in (orjson.dumps(r) for r in records) if b'"facebook_messenger"' in line][:1]
    if legacy:
        put(fs, bucket, LEGACY_KEY, gzip.compress(legacy[0] + b"\n"))
    return Bucket(endpoint, bucket, tuple(sorted(files)), len(records))


def put(fs: Any, bucket: str, key: str, body: bytes) -> None:
    """Write an object anyone may read, as in an AWS Open Data bucket (sync and ingest read anonymously)."""
    fs.call_s3("put_object", Bucket=bucket, Key=key, Body=body, ACL="public-read")


def _postcan(lines: list[bytes]) -> bytes:
    """A stand-in for a postcan: a tar.gz of the same measurements (never to be read as one)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for index, line in enumerate(lines):
            info = tarfile.TarInfo(f"{index}.post")
            info.size = len(line)
            tar.addfile(info, io.BytesIO(line))
    return buffer.getvalue()


DATASETS = ("measurements", "observations", "verdicts")


def stored_rows(data_dir: Path, ignore: tuple[str, ...] = ("ingested_at",)) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the three datasets, sorted, without the `ignore` columns (those a dataset has)."""
    from wallwatch.analysis.store import Store

    connection = Store(data_dir).connect()
    try:
        out = {}
        for dataset in DATASETS:
            columns = {row[0] for row in connection.execute(f"DESCRIBE {dataset}").fetchall()}
            skip = [name for name in ignore if name in columns]
            exclude = f" EXCLUDE ({', '.join(skip)})" if skip else ""
            out[dataset] = connection.execute(f"SELECT *{exclude} FROM {dataset} ORDER BY ALL").fetchall()
        return out
    finally:
        connection.close()


def ledger(data_dir: Path) -> list[dict[str, Any]]:
    from wallwatch.analysis.store import Store

    return Store(data_dir).read_jsonl("ingested_files")
