"""A resumable copy of part of OONI's archive into a local folder laid out like the bucket.

`DEST/<key>` mirrors each object's key (`DEST/raw/20240101/00/IT/webconnectivity/...jsonl.gz`),
so `wallwatch ingest DEST` reads it and a second sync finds what it already has:

* a file is written under a hidden partial name and renamed into place only once whole (fsync'd
  before the rename, its folder after it [Pillai2014]); its modification time is then set to the
  object's, so a file at its final name with the object's size and time is whole and is never
  fetched again;
* an interrupted download leaves its partial file, named with the object's ETag: the next sync
  goes on from its end with a ranged read, unless the object changed since (another ETag: the
  partial is dropped and the file redone). When the ETag is the object's MD5 (a single-part upload,
  S3's documented ETag for those [S3ETag2006]) the bytes are checked against it, the kept part included;
  a mismatch redoes the file once, then fails it;
* one sync at a time writes a folder (an flock on `DEST/.wallwatch-sync.lock`).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from wallwatch.analysis.archive.bucket import S3Object, s3_filesystem
from wallwatch.analysis.commitlog import fsync_path

LOCK_NAME = ".wallwatch-sync.lock"
PARTIAL_SUFFIX = ".partial"
CHUNK = 1024 * 1024
# Objects fetched at once: S3 serves each connection at a few tens of MB/s.
DEFAULT_THREADS = 4
_MD5_ETAG = re.compile(r"^[0-9a-f]{32}$")


class SyncError(RuntimeError):
    """The folder is busy, or a file could not be fetched whole."""


@dataclass
class SyncSummary:
    listed: int = 0
    fetched: int = 0  # downloaded from the start
    resumed: int = 0  # downloaded from where an interrupted sync stopped
    present: int = 0  # already whole in the folder: not fetched again
    bytes_fetched: int = 0
    failed: list[str] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)  # every selected file's local path


def local_path(dest: Path, obj: S3Object) -> Path:
    return dest / obj.key


def partial_path(path: Path, obj: S3Object) -> Path:
    """Where `obj` is written until whole: hidden, named with its ETag (a changed object's partial
    is never resumed as if it were the new one's)."""
    tag = re.sub(r"[^0-9A-Za-z-]", "", obj.etag)[:40] or "none"
    return path.with_name(f".{path.name}.{tag}{PARTIAL_SUFFIX}")


def is_present(path: Path, obj: S3Object) -> bool:
    """Whole already: at its final name (so renamed after a complete download), the object's size and time."""
    try:
        stat_ = path.stat()
    except FileNotFoundError:
        return False
    return stat_.st_size == obj.size and (obj.mtime_ns == 0 or stat_.st_mtime_ns == obj.mtime_ns)


@contextmanager
def folder_lock(dest: Path) -> Iterator[None]:
    dest.mkdir(parents=True, exist_ok=True)
    fd = os.open(dest / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SyncError(f"another sync is writing {dest}") from None
        yield
    finally:
        os.close(fd)


def sync(objects: list[S3Object], dest: Path, *, threads: int = DEFAULT_THREADS,
         on_file: Callable[[S3Object, str, int], None] | None = None) -> SyncSummary:
    """Fetch `objects` into `dest`; `on_file(object, outcome, bytes fetched)` after each, outcome one
    of fetched, resumed, present, failed. A file that fails is named in `summary.failed` (the rest go on)."""
    summary = SyncSummary(listed=len(objects), paths=[local_path(dest, obj) for obj in objects])
    with folder_lock(dest), ThreadPoolExecutor(max(1, threads)) as pool:
        futures = {pool.submit(fetch, obj, dest): obj for obj in objects}
        for future in as_completed(futures):
            obj = futures[future]
            try:
                outcome, fetched = future.result()
            except (OSError, SyncError) as exc:
                summary.failed.append(f"{obj.url}: {exc}")
                outcome, fetched = "failed", 0
            if outcome != "failed":
                setattr(summary, outcome, getattr(summary, outcome) + 1)
            summary.bytes_fetched += fetched
            if on_file:
                on_file(obj, outcome, fetched)
    return summary


def fetch(obj: S3Object, dest: Path) -> tuple[str, int]:
    """Fetch one object unless it is whole already: (fetched | resumed | present, bytes downloaded)."""
    path = local_path(dest, obj)
    if is_present(path, obj):
        return "present", 0
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(path, obj)
    for stale in path.parent.glob(f".{path.name}.*{PARTIAL_SUFFIX}"):
        if stale != partial:
            stale.unlink(missing_ok=True)  # the object changed since that download began
    offset = partial.stat().st_size if partial.exists() else 0
    if offset > obj.size:
        partial.unlink()
        offset = 0
    outcome = "resumed" if offset else "fetched"
    fetched = _download(obj, partial, offset)
    if not _checks_out(partial, obj):
        partial.unlink()  # a bad kept part, or bytes garbled on the way: once more from the start
        outcome = "fetched"
        fetched += _download(obj, partial, 0)
        if not _checks_out(partial, obj):
            partial.unlink()
            raise SyncError(f"the bytes read do not match the object's size/ETag ({obj.size} bytes, {obj.etag})")
    if obj.mtime_ns:
        os.utime(partial, ns=(obj.mtime_ns, obj.mtime_ns))
    fsync_path(partial)
    os.replace(partial, path)
    fsync_path(path.parent)
    return outcome, fetched


def _download(obj: S3Object, partial: Path, offset: int) -> int:
    """Append the object's bytes from `offset` to `partial` (a ranged read); the number written."""
    fs = s3_filesystem(obj.endpoint_url)
    written = 0
    with open(partial, "ab" if offset else "wb") as out:
        out.truncate(offset)
        if offset >= obj.size:
            return 0
        with fs.open(f"{obj.bucket}/{obj.key}", "rb", block_size=4 * CHUNK, cache_type="none") as remote:
            remote.seek(offset)
            while chunk := remote.read(CHUNK):
                out.write(chunk)
                written += len(chunk)
    return written


def _checks_out(partial: Path, obj: S3Object) -> bool:
    if partial.stat().st_size != obj.size:
        return False
    if not _MD5_ETAG.match(obj.etag):
        return True  # a multipart ETag is not the content's MD5: the size is all there is to check
    digest = hashlib.md5(usedforsecurity=False)
    with open(partial, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest() == obj.etag
