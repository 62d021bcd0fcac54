"""OONI's archive: its key layout, the selection a sync lists, and a resumable fetch, against a local
S3 server (moto on loopback) laid out like OONI's bucket; never the real one."""

from __future__ import annotations

import datetime as dt
import gzip
import os
from pathlib import Path

import orjson
import pytest

from tests.analysis.ooni_bucket import (
    LEGACY_KEY,
    UPLOAD_DAY,
    ledger,
    make_bucket,
    put,
    samples,
    stored_rows,
    writer,
)
from wallwatch.analysis.archive.bucket import (
    OONI_ENDPOINT_URL,
    ArchiveKey,
    Selection,
    endpoint_url,
    list_archive,
    list_objects,
    parse_key,
    raw_prefixes,
)
from wallwatch.analysis.archive.sync import SyncError, folder_lock, partial_path, sync
from wallwatch.analysis.ingest.pipeline import ingest, read_raw
from wallwatch.analysis.store import Store

DAY = dt.datetime(2024, 1, 15)


def test_keys_of_both_layouts_are_read() -> None:
    assert parse_key("raw/20210817/15/US/webconnectivity/2021081715_US_webconnectivity.n0.0.jsonl.gz") == \
        ArchiveKey(dt.datetime(2021, 8, 17, 15), "US", "webconnectivity")
    assert parse_key("jsonl/webconnectivity/IT/20200921/00/20200921_IT_webconnectivity.l.0.jsonl.gz") == \
        ArchiveKey(dt.datetime(2020, 9, 21), "IT", "webconnectivity")
    # a postcan, a stray file, a bad hour: not measurement files
    assert parse_key("raw/20210817/15/US/webconnectivity/2021081715_US_webconnectivity.n0.0.tar.gz") is None
    assert parse_key("raw/20210817/15/US/webconnectivity/README") is None
    assert parse_key("raw/20210817/25/US/webconnectivity/x.jsonl.gz") is None


def test_a_narrow_selection_lists_narrow_prefixes() -> None:
    whole_day = Selection.of(DAY, DAY + dt.timedelta(days=1))
    assert list(raw_prefixes(whole_day)) == ["raw/20240115/"]
    two_hours = Selection.of(DAY + dt.timedelta(hours=1, minutes=30), DAY + dt.timedelta(hours=3),
                             countries=["it"], tests=["web_connectivity", "whatsapp"])
    assert list(raw_prefixes(two_hours)) == [
        "raw/20240115/01/IT/webconnectivity/", "raw/20240115/01/IT/whatsapp/",
        "raw/20240115/02/IT/webconnectivity/", "raw/20240115/02/IT/whatsapp/"]
    assert list(raw_prefixes(Selection.of(dt.datetime(2019, 1, 1), dt.datetime(2019, 1, 2)))) == []  # jsonl/ then
    with pytest.raises(ValueError):
        Selection.of(DAY, DAY)


def test_the_default_endpoint_is_oonis_and_tests_never_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    assert endpoint_url("http://127.0.0.1:1") == "http://127.0.0.1:1"
    assert endpoint_url() == os.environ["WALLWATCH_S3_ENDPOINT_URL"] != OONI_ENDPOINT_URL  # tests/conftest.py
    monkeypatch.delenv("WALLWATCH_S3_ENDPOINT_URL")
    assert endpoint_url() == OONI_ENDPOINT_URL == "https://s3.eu-central-1.amazonaws.com"


def test_listing_selects_by_hour_country_and_test(samples_dir: Path, s3_endpoint: str) -> None:
    bucket = make_bucket(s3_endpoint, samples(samples_dir))
    everything = list_archive(Selection.of(DAY, DAY + dt.timedelta(days=1)), endpoint=s3_endpoint,
                              bucket=bucket.name)
    assert [obj.key for obj in everything] == list(bucket.keys)  # no postcan, nothing of jsonl/
    assert all(obj.size > 0 and obj.etag and obj.mtime_ns for obj in everything)
    hour_one = list_archive(Selection.of(DAY + dt.timedelta(hours=1), DAY + dt.timedelta(hours=2),
                                         countries=["IT"], tests=["web_connectivity"]),
                            endpoint=s3_endpoint, bucket=bucket.name)
    assert [obj.key for obj in hour_one] == [k for k in bucket.keys if k.startswith(f"raw/{UPLOAD_DAY}/01/IT/webc")]
    assert hour_one
    legacy = list_archive(Selection.of(dt.datetime(2016, 11, 25, 12), dt.datetime(2016, 11, 25, 13)),
                          endpoint=s3_endpoint, bucket=bucket.name)
    assert [obj.key for obj in legacy] == [LEGACY_KEY]  # a day's file of the old layout
    assert [o.key for o in list_objects(f"{bucket.url}/raw/{UPLOAD_DAY}/01/", s3_endpoint)] == \
        [k for k in bucket.keys if k.startswith(f"raw/{UPLOAD_DAY}/01/")]


def _read_all(paths: list[Path]) -> list[bytes]:
    return sorted(line for path in paths for line in gzip.decompress(path.read_bytes()).splitlines())


def test_sync_fetches_once_and_resumes_a_partial_file(samples_dir: Path, s3_endpoint: str, tmp_path: Path) -> None:
    bucket = make_bucket(s3_endpoint, samples(samples_dir))
    objects = list_archive(Selection.of(DAY, DAY + dt.timedelta(days=1)), endpoint=s3_endpoint, bucket=bucket.name)
    dest = tmp_path / "archive"
    first = sync(objects, dest)
    assert (first.fetched, first.present, first.resumed, first.failed) == (len(objects), 0, 0, [])
    assert first.bytes_fetched == sum(obj.size for obj in objects)
    assert len(_read_all(first.paths)) == bucket.records
    assert not list(dest.rglob("*.partial"))
    again = sync(objects, dest)  # a file fetched whole is never fetched again
    assert (again.fetched, again.present, again.bytes_fetched) == (0, len(objects), 0)

    # An interrupted sync: one file half written under its partial name, another one's partial garbled.
    half, garbled = objects[0], objects[1]
    for obj in (half, garbled):
        (dest / obj.key).unlink()
    whole = writer(s3_endpoint).cat(f"{half.bucket}/{half.key}")
    partial_path(dest / half.key, half).write_bytes(whole[: len(whole) // 2])
    partial_path(dest / garbled.key, garbled).write_bytes(b"\0" * 10)
    resumed = sync(objects, dest)
    assert (resumed.resumed, resumed.fetched, resumed.present) == (1, 1, len(objects) - 2)
    # Only the missing half of the first is read; the garbled one is resumed, fails its MD5 (its
    # ETag) and is fetched again whole.
    assert resumed.bytes_fetched == (len(whole) - len(whole) // 2) + (garbled.size - 10) + garbled.size
    assert (dest / half.key).read_bytes() == whole
    assert _read_all(resumed.paths) == _read_all(first.paths)
    assert not list(dest.rglob("*.partial"))


def test_a_changed_object_is_fetched_again(samples_dir: Path, s3_endpoint: str, tmp_path: Path) -> None:
    bucket = make_bucket(s3_endpoint, samples(samples_dir)[:3])
    selection = Selection.of(DAY, DAY + dt.timedelta(days=1))
    dest = tmp_path / "archive"
    sync(list_archive(selection, endpoint=s3_endpoint, bucket=bucket.name), dest)
    key = bucket.keys[0]
    old = list_archive(selection, endpoint=s3_endpoint, bucket=bucket.name)[0]
    partial_path(dest / key, old).write_bytes(b"stale")  # a partial of the old version
    new_text = gzip.compress(orjson.dumps({"test_name": "x", "test_keys": {}}) + b"\n")
    put(writer(s3_endpoint), bucket.name, key, new_text)
    objects = list_archive(selection, endpoint=s3_endpoint, bucket=bucket.name)
    summary = sync(objects, dest)
    assert summary.fetched == 1 and (dest / key).read_bytes() == new_text
    assert not list(dest.rglob("*.partial"))  # the old version's partial is gone too


def test_one_sync_at_a_time_writes_a_folder(tmp_path: Path) -> None:
    with folder_lock(tmp_path), pytest.raises(SyncError, match="another sync"):
        with folder_lock(tmp_path):
            pass


def test_ingest_reads_s3_urls_once_as_a_synced_folder_reads(samples_dir: Path, s3_endpoint: str,
                                                            tmp_path: Path) -> None:
    bucket = make_bucket(s3_endpoint, samples(samples_dir, copies=2))
    prefix = f"{bucket.url}/raw/{UPLOAD_DAY}/"
    streamed = ingest([prefix], tmp_path / "from-s3", s3_endpoint=s3_endpoint, workers=2)
    assert streamed.stored == bucket.records and streamed.quarantined == 0
    entries = ledger(tmp_path / "from-s3")
    assert sorted(entry["path"] for entry in entries) == [f"{bucket.url}/{key}" for key in bucket.keys]
    assert all(entry["edges_sha256"].startswith("etag:") for entry in entries)
    # Exactly once: a second run finds every object in the ledger and reads none of it.
    again = ingest([prefix], tmp_path / "from-s3", s3_endpoint=s3_endpoint)
    assert (again.files_skipped, again.read, again.stored) == (len(bucket.keys), 0, 0)

    # The same objects synced to a folder, then ingested from it, store the same rows.
    objects = list_archive(Selection.of(DAY, DAY + dt.timedelta(days=1)), endpoint=s3_endpoint, bucket=bucket.name)
    sync(objects, tmp_path / "archive")
    local = ingest([tmp_path / "archive"], tmp_path / "from-folder", workers=1)
    assert local.stored == streamed.stored
    where = ("ingested_at", "source", "raw_file")
    assert stored_rows(tmp_path / "from-s3", where) == stored_rows(tmp_path / "from-folder", where)
    # Each row points at its raw copy, which holds the object's bytes, downloaded once.
    store = Store(tmp_path / "from-s3")
    uid = store.read("measurements").column("measurement_uid")[0].as_py()
    assert orjson.loads(read_raw(store, uid))["test_name"]
    without_raw = ingest([prefix], tmp_path / "no-raw", s3_endpoint=s3_endpoint, keep_raw=False, workers=1)
    assert without_raw.stored == bucket.records and not (tmp_path / "no-raw" / "raw").exists()
    assert stored_rows(tmp_path / "no-raw", (*where, "raw_line", "raw_item")) == \
        stored_rows(tmp_path / "from-s3", (*where, "raw_line", "raw_item"))


def test_the_sync_command_fetches_resumes_and_ingests(samples_dir: Path, s3_endpoint: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from wallwatch.cli import app

    bucket = make_bucket(s3_endpoint, samples(samples_dir))
    runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})
    window = ["--since", "2024-01-15T01:00", "--until", "2024-01-15T03:00", "--endpoint-url", s3_endpoint,
              "--bucket", bucket.name]
    wanted = [k for k in bucket.keys if k.split("/")[2] in ("01", "02")]
    dest = tmp_path / "archive"
    result = runner.invoke(app, ["sync", *window, str(dest)])
    assert result.exit_code == 0, result.output
    assert f"{len(wanted)} fetched, 0 resumed, 0 already there" in result.output
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*.jsonl.gz")) == wanted
    result = runner.invoke(app, ["sync", *window, str(dest), "--ingest", "--data", str(tmp_path / "data")])
    assert result.exit_code == 0, result.output
    assert f"0 fetched, 0 resumed, {len(wanted)} already there" in result.output
    assert "stored" in result.output and ledger(tmp_path / "data")
    # Straight from the bucket, no folder: the same measurements.
    result = runner.invoke(app, ["sync", *window, "--ingest", "--data", str(tmp_path / "direct")])
    assert result.exit_code == 0, result.output
    where = ("ingested_at", "source", "raw_file")
    assert stored_rows(tmp_path / "direct", where) == stored_rows(tmp_path / "data", where)
    result = runner.invoke(app, ["ingest", f"{bucket.url}/raw/{UPLOAD_DAY}/01/", "--endpoint-url", s3_endpoint,
                                 "--data", str(tmp_path / "direct")])
    assert result.exit_code == 0, result.output  # already in the ledger: read again by none
    assert "files_skipped" in result.output
    assert runner.invoke(app, ["sync", *window]).exit_code != 0  # neither a folder nor --ingest
