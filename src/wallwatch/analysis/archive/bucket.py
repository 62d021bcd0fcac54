"""OONI's S3 bucket: where its measurements are, how its keys read, and anonymous access to it.

OONI publishes every measurement it has collected in the `ooni-data-eu-fra` bucket (region
eu-central-1, free to read anonymously under the AWS Open Data programme) [ooni-backend-docs]
[ooni-data]. Two layouts of compressed JSON lines (one measurement a line) hold them:

* `raw/<YYYYMMDD>/<HH>/<CC>/<testname>/<YYYYMMDDHH>_<CC>_<testname>.<host>.<n>.jsonl.gz`, the
  measurements uploaded in that hour, from 2020-10-20 on; the same folders hold `.tar.gz`
  "postcans" of the same measurements as they were POSTed, which are not read here;
* `jsonl/<testname>/<CC>/<YYYYMMDD>/00/<name>.jsonl.gz`, the older measurements reprocessed.

`testname` is the test name with its underscores removed (`webconnectivity`, `facebookmessenger`).
OONI's own client lists the same two layouts, switching at 2020-10-20 (oonidata `dataclient.py`).

Access goes through fsspec/s3fs [s3fs] with unsigned requests (`anon=True`): no credentials are
read or sent. The endpoint is an option whose default is OONI's real one; tests and benches run a
local S3 server (moto) on loopback and always name it.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

OONI_BUCKET = "ooni-data-eu-fra"
OONI_REGION = "eu-central-1"
# The bucket's regional endpoint [ooni-backend-docs]: the default of --endpoint-url.
OONI_ENDPOINT_URL = "https://s3.eu-central-1.amazonaws.com"
ENDPOINT_ENV = "WALLWATCH_S3_ENDPOINT_URL"
RAW_PREFIX = "raw"
LEGACY_PREFIX = "jsonl"
# The first day of the raw/ layout; earlier days are read from jsonl/ (as oonidata's client does).
RAW_LAYOUT_SINCE = dt.date(2020, 10, 20)
# Only these objects are measurements (one JSON document a line, gzipped); the postcans beside them
# (.tar.gz) hold the same measurements again.
MEASUREMENT_SUFFIXES = (".jsonl.gz", ".json.gz", ".jsonl", ".json")
_DAY = re.compile(r"^\d{8}$")
_HOUR = re.compile(r"^\d{2}$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")


def endpoint_url(given: str | None = None) -> str:
    """The S3 endpoint to use: the option, else $WALLWATCH_S3_ENDPOINT_URL, else OONI's real one."""
    return given or os.environ.get(ENDPOINT_ENV) or OONI_ENDPOINT_URL


def compact_test_name(name: str) -> str:
    """A test name as the bucket's folders write it: `web_connectivity` -> `webconnectivity`."""
    return name.replace("_", "").lower()


_filesystems: dict[tuple[int, str], Any] = {}


def s3_filesystem(endpoint: str) -> Any:
    """An anonymous s3fs filesystem on `endpoint`, one per process (a forked or Dask worker process
    makes its own: an s3fs instance's event loop and connections are not shared across a fork)."""
    key = (os.getpid(), endpoint)
    if key not in _filesystems:
        import s3fs

        _filesystems[key] = s3fs.S3FileSystem(
            anon=True, endpoint_url=endpoint, client_kwargs={"region_name": OONI_REGION},
            skip_instance_cache=True, use_listings_cache=False,
            config_kwargs={"retries": {"max_attempts": 5, "mode": "standard"}})
    return _filesystems[key]


def split_url(url: str) -> tuple[str, str]:
    """`s3://bucket/key` -> (bucket, key); ValueError for anything else."""
    if not url.startswith("s3://"):
        raise ValueError(f"not an s3:// URL: {url}")
    bucket, _, key = url[5:].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {url}")
    return bucket, key


@dataclass(frozen=True, slots=True)
class S3Object:
    """One object of a bucket, as listed: enough to read it and to know it again (the ingest ledger
    keys it by URL, size, last-modified time and ETag)."""

    url: str
    size: int
    etag: str
    mtime_ns: int
    endpoint_url: str

    @property
    def bucket(self) -> str:
        return split_url(self.url)[0]

    @property
    def key(self) -> str:
        return split_url(self.url)[1]

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    def __str__(self) -> str:
        return self.url

    @classmethod
    def from_info(cls, info: dict[str, Any], endpoint: str) -> S3Object:
        """From an s3fs listing entry (`name` is bucket/key)."""
        modified = info.get("LastModified")
        mtime_ns = int(modified.timestamp() * 1e9) if isinstance(modified, dt.datetime) else 0
        return cls(url=f"s3://{info['name']}", size=int(info.get("size") or info.get("Size") or 0),
                   etag=str(info.get("ETag") or "").strip('"'), mtime_ns=mtime_ns, endpoint_url=endpoint)


def is_measurement_key(key: str) -> bool:
    name = key.rsplit("/", 1)[-1]
    return name.endswith(MEASUREMENT_SUFFIXES) and not name.startswith("analysis")


def list_objects(url: str, endpoint: str) -> list[S3Object]:
    """The measurement objects at `url`: one object, or every one under a prefix, sorted by key."""
    fs = s3_filesystem(endpoint)
    bucket, key = split_url(url)
    path = f"{bucket}/{key}".rstrip("/")
    if key and fs.isfile(path):
        return [S3Object.from_info(fs.info(path), endpoint)]
    found = fs.find(path, detail=True)
    return [S3Object.from_info(info, endpoint) for name, info in sorted(found.items())
            if info.get("type") != "directory" and is_measurement_key(name)]


# -- the archive's layout -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ArchiveKey:
    """What a key of the archive says: the hour its measurements were uploaded (the day, at 00:00,
    in the jsonl/ layout), the probes' country and the test (compact name)."""

    hour: dt.datetime
    country: str
    test: str


def parse_key(key: str) -> ArchiveKey | None:
    """The hour, country and test of a measurement file of either layout; None for anything else."""
    parts = key.split("/")
    if len(parts) != 6 or not is_measurement_key(key):
        return None
    if parts[0] == RAW_PREFIX:
        _, day, hour, country, test, _ = parts
    elif parts[0] == LEGACY_PREFIX:
        _, test, country, day, hour, _ = parts
    else:
        return None
    if not (_DAY.match(day) and _HOUR.match(hour) and _COUNTRY.match(country)):
        return None
    try:
        moment = dt.datetime.strptime(day + hour, "%Y%m%d%H")
    except ValueError:
        return None
    return ArchiveKey(moment, country, test)


@dataclass(frozen=True, slots=True)
class Selection:
    """Which part of the archive: uploads in [since, until) (UTC, naive), some countries and tests
    (empty: all). Test names may be written either way (`web_connectivity` or `webconnectivity`)."""

    since: dt.datetime
    until: dt.datetime
    countries: frozenset[str] = frozenset()
    tests: frozenset[str] = frozenset()

    @classmethod
    def of(cls, since: dt.datetime, until: dt.datetime, countries: Iterable[str] = (),
           tests: Iterable[str] = ()) -> Selection:
        if until <= since:
            raise ValueError(f"--until ({until:%Y-%m-%d %H:%M}) must be after --since ({since:%Y-%m-%d %H:%M})")
        return cls(since, until, frozenset(c.upper() for c in countries), frozenset(map(compact_test_name, tests)))

    def wants(self, key: ArchiveKey, legacy: bool) -> bool:
        if self.countries and key.country not in self.countries:
            return False
        if self.tests and key.test not in self.tests:
            return False
        if legacy:  # a day's file: wanted when the day overlaps the window
            return key.hour < self.until and key.hour + dt.timedelta(days=1) > self.since
        return self.since <= key.hour < self.until

    def days(self) -> Iterator[dt.date]:
        day = self.since.date()
        while dt.datetime.combine(day, dt.time()) < self.until:
            yield day
            day += dt.timedelta(days=1)

    def hours(self, day: dt.date) -> Iterator[int]:
        for hour in range(24):
            start = dt.datetime.combine(day, dt.time(hour))
            if self.since < start + dt.timedelta(hours=1) and start < self.until:
                yield hour


def raw_prefixes(selection: Selection) -> Iterator[str]:
    """The raw/ prefixes to list: narrow ones (hour, country, test) when the selection names them,
    so a small selection lists little; a whole day in one listing otherwise."""
    for day in selection.days():
        if day < RAW_LAYOUT_SINCE:
            continue
        hours = list(selection.hours(day))
        if not selection.countries and len(hours) == 24:
            yield f"{RAW_PREFIX}/{day:%Y%m%d}/"
            continue
        for hour in hours:
            base = f"{RAW_PREFIX}/{day:%Y%m%d}/{hour:02d}/"
            if not selection.countries:
                yield base
                continue
            for country in sorted(selection.countries):
                if selection.tests:
                    yield from (f"{base}{country}/{test}/" for test in sorted(selection.tests))
                else:
                    yield f"{base}{country}/"


def _legacy_prefixes(fs: Any, bucket: str, selection: Selection) -> Iterator[str]:
    days = [day for day in selection.days() if day < RAW_LAYOUT_SINCE]
    if not days:
        return
    tests = sorted(selection.tests) or [p.rstrip("/").rsplit("/", 1)[-1]
                                        for p in fs.ls(f"{bucket}/{LEGACY_PREFIX}/", detail=False)]
    for test in tests:
        countries = sorted(selection.countries) or [
            p.rstrip("/").rsplit("/", 1)[-1] for p in _ls_or_empty(fs, f"{bucket}/{LEGACY_PREFIX}/{test}/")]
        for country in countries:
            yield from (f"{LEGACY_PREFIX}/{test}/{country}/{day:%Y%m%d}/" for day in days)


def _ls_or_empty(fs: Any, path: str) -> list[str]:
    try:
        return list(fs.ls(path, detail=False))
    except FileNotFoundError:
        return []


def list_archive(selection: Selection, *, endpoint: str, bucket: str = OONI_BUCKET) -> list[S3Object]:
    """Every measurement file of the selection, sorted by key (the order they are fetched in)."""
    fs = s3_filesystem(endpoint)
    found: dict[str, S3Object] = {}
    for legacy, prefixes in ((False, raw_prefixes(selection)), (True, _legacy_prefixes(fs, bucket, selection))):
        for prefix in prefixes:
            try:
                listing = fs.find(f"{bucket}/{prefix}", detail=True)
            except FileNotFoundError:
                continue
            for name, info in listing.items():
                key = name.split("/", 1)[1]
                parsed = parse_key(key)
                if parsed is not None and info.get("type") != "directory" and selection.wants(parsed, legacy):
                    found[key] = S3Object.from_info(info, endpoint)
    return [found[key] for key in sorted(found)]
