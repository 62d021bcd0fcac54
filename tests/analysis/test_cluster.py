"""Ingest on a real Dask cluster: a `dask scheduler` and two `dask worker` processes on loopback,
reading an OONI-shaped bucket on a local S3 server (moto) and the same files synced to a folder.
The datasets must equal a local run's, and a worker killed mid-file (SIGKILL) loses nothing and
stores nothing twice."""

from __future__ import annotations

import datetime as dt
import gzip
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from typer.testing import CliRunner

import wallwatch
from tests.analysis.ooni_bucket import UPLOAD_DAY, ledger, make_bucket, samples, stored_rows
from wallwatch.analysis.archive.bucket import Selection, list_archive
from wallwatch.analysis.archive.sync import sync
from wallwatch.analysis.ingest.pipeline import Ingester, ingest, read_raw
from wallwatch.analysis.store import Store
from wallwatch.cli import app

pytestmark = pytest.mark.slow
DASK = Path(sys.executable).with_name("dask")
IM_TESTS = {"whatsapp", "telegram", "signal", "facebook_messenger"}
# Measurements in the file a worker is killed reading: ~1-2 s of one core, long enough to be seen running.
BIG = 3000


@contextmanager
def dask_cluster(folder: Path, workers: int = 2) -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    """A scheduler and `workers` single-threaded worker processes (no nanny: a killed worker stays
    dead), all on 127.0.0.1; yields the scheduler file and the worker processes."""
    scheduler_file = folder / "scheduler.json"
    src = str(Path(wallwatch.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    logs = (folder / "dask.log").open("wb")
    started: list[subprocess.Popen[bytes]] = []
    try:
        started.append(subprocess.Popen([str(DASK), "scheduler", "--host", "127.0.0.1", "--port", "0",
                                         "--no-dashboard", "--dashboard-address", "127.0.0.1:0",
                                         "--scheduler-file", str(scheduler_file)],
                                        env=env, stdout=logs, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 60
        while not scheduler_file.exists():
            assert time.monotonic() < deadline and started[0].poll() is None, (folder / "dask.log").read_text()
            time.sleep(0.1)
        for index in range(workers):
            started.append(subprocess.Popen([str(DASK), "worker", "--scheduler-file", str(scheduler_file),
                                             "--host", "127.0.0.1", "--nthreads", "1", "--no-nanny",
                                             "--no-dashboard", "--dashboard-address", "127.0.0.1:0",
                                             "--name", f"w{index}"],
                                            env=env, stdout=logs, stderr=subprocess.STDOUT))
        from distributed import Client

        with Client(scheduler_file=str(scheduler_file), timeout=60) as client:
            client.wait_for_workers(workers, timeout=60)
        yield str(scheduler_file), started[1:]
    finally:
        for process in reversed(started):  # ours, by pid
            if process.poll() is None:
                process.terminate()
        for process in started:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        logs.close()


def test_a_cluster_stores_what_a_local_run_stores(samples_dir: Path, s3_endpoint: str, tmp_path: Path) -> None:
    bucket = make_bucket(s3_endpoint, samples(samples_dir, copies=3))
    day = dt.datetime(2024, 1, 15)
    objects = list_archive(Selection.of(day, day + dt.timedelta(days=1)), endpoint=s3_endpoint, bucket=bucket.name)
    folder = tmp_path / "archive"
    assert sync(objects, folder).fetched == len(bucket.keys)
    local = ingest([folder], tmp_path / "local", workers=1)
    assert local.stored == bucket.records
    with dask_cluster(tmp_path) as (scheduler, _):
        on_cluster = ingest([folder], tmp_path / "cluster", cluster=scheduler)
        # Straight from the bucket, through the command.
        result = CliRunner().invoke(app, ["ingest", f"{bucket.url}/raw/{UPLOAD_DAY}/", "--cluster", scheduler,
                                          "--endpoint-url", s3_endpoint, "--data", str(tmp_path / "cluster-s3")])
        assert result.exit_code == 0, result.output
    assert (on_cluster.read, on_cluster.stored, on_cluster.quarantined, on_cluster.files_not_read) == \
        (local.read, local.stored, 0, [])
    # The same rows, column for column (the same paths: the same source and raw copy names too).
    assert stored_rows(tmp_path / "cluster") == stored_rows(tmp_path / "local")
    where = ("ingested_at", "source", "raw_file")
    assert stored_rows(tmp_path / "cluster-s3", where) == stored_rows(tmp_path / "local", where)
    assert sorted(e["path"] for e in ledger(tmp_path / "cluster")) == sorted(e["path"] for e in ledger(tmp_path / "local"))


def _log(folder: Path) -> str:
    return (folder / "dask.log").read_text(errors="replace")[-4000:]


def _big_file(samples_dir: Path, path: Path, count: int) -> None:
    records = [r for r in samples(samples_dir) if r["test_name"] in IM_TESTS]
    with gzip.open(path, "wb", compresslevel=1) as handle:
        for index in range(count):
            record = dict(records[index % len(records)], report_id=f"big-{index}")
            record.pop("measurement_uid", None)
            handle.write(orjson.dumps(record) + b"\n")


def _executing(client: Any) -> dict[str, list[str]]:
    def keys(dask_worker: Any) -> list[str]:
        return [str(task.key) for task in dask_worker.state.executing]

    return client.run(keys)


def test_a_worker_killed_mid_file_loses_nothing_and_stores_nothing_twice(samples_dir: Path,
                                                                          tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    _big_file(samples_dir, folder / "a-big.jsonl.gz", BIG)  # first: read while the test watches
    for name in ("ts-018-whatsapp.example.json", "ts-020-telegram.example.json", "backend/openvpn.json"):
        (folder / Path(name).name).write_bytes((samples_dir / name).read_bytes())
    local = ingest([folder], tmp_path / "local", workers=1)
    with dask_cluster(tmp_path) as (scheduler, workers):
        from distributed import Client

        with Client(scheduler_file=scheduler, timeout=60) as client:
            pids = client.run(os.getpid)
            ingester = Ingester(Store(tmp_path / "cluster"), cluster=scheduler)
            run = threading.Thread(target=ingester.ingest_paths, args=([folder],))
            run.start()
            deadline, victim = time.monotonic() + 60, None
            while victim is None and time.monotonic() < deadline:
                victim = next((address for address, keys in _executing(client).items()
                               if any("a-big" in key for key in keys)), None)
                time.sleep(0.02)
            assert victim is not None, "the big file was never seen running"
            os.kill(pids[victim], signal.SIGKILL)  # mid-file: the task was executing on it
            run.join(timeout=120)
            assert not run.is_alive()
        # The victim is dead, the other one did the rest.
        assert sorted(process.poll() is None for process in workers) == [False, True], _log(tmp_path)
    summary = ingester.summary
    assert (summary.stored, summary.files_not_read) == (local.stored, []), _log(tmp_path)
    assert stored_rows(tmp_path / "cluster") == stored_rows(tmp_path / "local")
    paths = [entry["path"] for entry in ledger(tmp_path / "cluster")]
    assert sorted(paths) == sorted(set(paths)) and len(paths) == 4  # each file once in the ledger
    connection = Store(tmp_path / "cluster").connect()
    total, distinct, uid = connection.execute(
        "SELECT count(*), count(DISTINCT measurement_uid), max(measurement_uid) FROM measurements "
        "WHERE source LIKE '%a-big%'").fetchone()
    assert total == distinct == BIG
    assert orjson.loads(read_raw(Store(tmp_path / "cluster"), uid))["report_id"].startswith("big-")
    assert not list((tmp_path / "cluster" / "raw").rglob("*.partial"))  # the dead attempt's debris is gone


def test_a_local_cluster_for_one_run(samples_dir: Path, tmp_path: Path) -> None:
    summary = ingest([samples_dir], tmp_path / "data", cluster="local", workers=1)
    local = ingest([samples_dir], tmp_path / "local", workers=1)
    assert summary.stored == local.stored > 0
    assert stored_rows(tmp_path / "data") == stored_rows(tmp_path / "local")
