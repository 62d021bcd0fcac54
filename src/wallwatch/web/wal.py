"""The collector's write-ahead log: a measurement is on disk, fsync'd, before it is acknowledged.

Layout, under ``<data>/_live/wal/``::

    open-<ns>.jsonl     the one segment being appended to
    sealed-<ns>.jsonl   closed segments, oldest first, waiting for the live pipeline

A segment is plain JSON lines, one accepted measurement a line: an ordinary input of
`wallwatch ingest`. The live pipeline (`web/live.py`) ingests sealed segments with the batch
ingest's own code and deletes them once their rows are written, so the WAL holds only what is
not yet in the datasets. `<ns>` is the creation time in nanoseconds: names sort in write order
and are never reused, so the ingest ledger never mistakes one segment for another.

Group commit: concurrent requests hand their lines to one writer task, which writes everything
pending with one ``write`` and makes it durable with one ``fdatasync``; every request whose lines
that sync covered is answered after it, and requests arriving meanwhile wait for the next. This
is the group commit of databases' write-ahead logs ([PostgreSQL-WAL], `commit_delay`): one sync
per batch instead of per request, the throughput of the disk's sync rate times the batch size.

Sealing: a segment is closed when it is `seal_after` seconds old or `max_segment_bytes` long
(fdatasync, rename to sealed-, fsync of the directory so the rename survives a power cut), and
the live pipeline never sees a growing file.

Recovery (`recover`, at start-up): an open segment left by a crash may end in a torn line
(its bytes were being written, so its fdatasync never returned and nobody was acknowledged for
it): it is cut at the last newline and sealed. Lines written but not yet synced when the
*process* was killed are in the page cache and survive; they were not acknowledged, so storing
them is harmless, and a client that retries gets the same uid and its copy is deduplicated.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from wallwatch.analysis.commitlog import fsync_dir as fsync_directory

OPEN_PREFIX = "open-"
SEALED_PREFIX = "sealed-"
SUFFIX = ".jsonl"
# A segment is sealed this long after its first line: the live pipeline's batching interval
# (its "commit every ~second"); the deciding measurement waits at most this long to be read.
DEFAULT_SEAL_AFTER = 0.5
DEFAULT_MAX_SEGMENT_BYTES = 64 * 1024 * 1024
# Lines accepted but not yet written: beyond this the collector answers 503 (back-pressure)
# instead of growing without bound when the disk stalls.
DEFAULT_MAX_PENDING_BYTES = 256 * 1024 * 1024


class WalFull(Exception):
    """The writer is this far behind; the request should be retried later (HTTP 503)."""


def sealed_segments(directory: Path) -> list[Path]:
    """The sealed segments waiting in `directory`, oldest first."""
    if not directory.is_dir():
        return []
    return sorted(entry for entry in directory.iterdir()
                  if entry.name.startswith(SEALED_PREFIX) and entry.name.endswith(SUFFIX))


def recover(directory: Path) -> list[Path]:
    """Seal every open segment a crash left, cutting a torn last line; return the sealed segments."""
    directory.mkdir(parents=True, exist_ok=True)
    for segment in sorted(directory.glob(f"{OPEN_PREFIX}*{SUFFIX}")):
        _cut_torn_tail(segment)
        if segment.stat().st_size == 0:
            segment.unlink()
            continue
        segment.rename(segment.with_name(SEALED_PREFIX + segment.name.removeprefix(OPEN_PREFIX)))
    fsync_directory(directory)
    return sealed_segments(directory)


def _cut_torn_tail(segment: Path) -> None:
    with segment.open("r+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        keep = size
        # Walk back from the end to the last newline; a file of whole lines is left alone.
        while keep > 0:
            step = min(keep, 64 * 1024)
            handle.seek(keep - step)
            chunk = handle.read(step)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                keep = keep - step + newline + 1
                break
            keep -= step
        if keep != size:
            handle.truncate(keep)
            handle.flush()
            os.fsync(handle.fileno())


@dataclass
class _Segment:
    path: Path
    fd: int
    size: int = 0
    first_write: float | None = None


class WriteAheadLog:
    """Group-committed, fsync'd appends to JSON-lines segments; used from one asyncio loop.

    `append(data)` returns once `data` (whole lines) is durable. One thread does the writes
    and syncs in order, so the event loop never blocks on the disk.
    """

    def __init__(self, directory: Path, *, seal_after: float = DEFAULT_SEAL_AFTER,
                 max_segment_bytes: int = DEFAULT_MAX_SEGMENT_BYTES,
                 max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES) -> None:
        self.directory = directory
        self.seal_after = seal_after
        self.max_segment_bytes = max_segment_bytes
        self.max_pending_bytes = max_pending_bytes
        self._pending: list[tuple[bytes, int, asyncio.Future[None]]] = []
        self._pending_bytes = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._segment: _Segment | None = None
        # One thread: writes, syncs and seals happen in submission order.
        self._disk = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wal")
        self.synced_batches = 0
        self.synced_lines = 0
        self.last_sealed: str | None = None  # name of the newest segment sealed by this process

    @property
    def open_bytes(self) -> int:
        """Bytes written to the open segment, not yet sealed for the pipeline."""
        segment = self._segment
        return segment.size if segment is not None else 0

    # -- life cycle ------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._disk, recover, self.directory)
        self._wakeup = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="wal-writer")

    async def close(self) -> None:
        """Write what is pending, seal the open segment, stop the writer."""
        if self._task is None:
            return
        self._closing = True
        assert self._wakeup is not None
        self._wakeup.set()
        await self._task
        self._task = None
        await asyncio.get_running_loop().run_in_executor(self._disk, self._seal)
        self._disk.shutdown(wait=True)

    # -- appending -------------------------------------------------------------------

    async def append(self, data: bytes, lines: int = 1) -> None:
        """Return once `data` (`lines` whole JSON lines) is written and fdatasync'd."""
        if self._task is None or self._closing or self._wakeup is None:
            raise RuntimeError("the write-ahead log is not running")
        if self._task.done():  # the writer died (a disk error): fail loudly rather than hang
            self._task.result()
        if self._pending_bytes + len(data) > self.max_pending_bytes:
            raise WalFull(f"{self._pending_bytes} bytes waiting for the disk")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((data, lines, future))
        self._pending_bytes += len(data)
        self._wakeup.set()
        await future

    async def _run(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            timeout = self._seconds_to_seal()
            try:
                if timeout is None:
                    await self._wakeup.wait()
                else:
                    await asyncio.wait_for(self._wakeup.wait(), timeout)
            except TimeoutError:
                pass
            self._wakeup.clear()
            batch, self._pending, self._pending_bytes = self._pending, [], 0
            if batch:
                try:
                    await loop.run_in_executor(self._disk, self._write, [data for data, _, _ in batch])
                except BaseException as exc:  # nothing in this batch is durable: say so to every waiter
                    for _, _, future in batch:
                        if not future.done():
                            future.set_exception(OSError(f"write-ahead log: {exc}"))
                    raise
                self.synced_batches += 1
                for _, lines, future in batch:
                    self.synced_lines += lines
                    if not future.done():  # a cancelled request (client gone) has no one to tell
                        future.set_result(None)
            if self._due_to_seal():
                await loop.run_in_executor(self._disk, self._seal)
            if self._closing and not self._pending:
                return

    def _seconds_to_seal(self) -> float | None:
        segment = self._segment
        if segment is None or segment.first_write is None:
            return None
        return max(0.0, segment.first_write + self.seal_after - time.monotonic())

    def _due_to_seal(self) -> bool:
        segment = self._segment
        if segment is None or segment.first_write is None:
            return False
        return (segment.size >= self.max_segment_bytes
                or time.monotonic() - segment.first_write >= self.seal_after)

    # -- the disk thread -------------------------------------------------------------

    def _write(self, chunks: Iterable[bytes]) -> None:
        data = b"".join(chunks)
        segment = self._segment or self._open_segment()
        view = memoryview(data)
        while view:  # os.write may write less than asked (a signal, a full pipe): finish the batch
            written = os.write(segment.fd, view)
            view = view[written:]
        os.fdatasync(segment.fd)
        segment.size += len(data)
        if segment.first_write is None:
            segment.first_write = time.monotonic()

    def _open_segment(self) -> _Segment:
        path = self.directory / f"{OPEN_PREFIX}{time.time_ns():020d}{SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        fsync_directory(self.directory)  # the file's name must survive with its first acknowledged line
        self._segment = _Segment(path, fd)
        return self._segment

    def _seal(self) -> None:
        segment = self._segment
        if segment is None:
            return
        os.fdatasync(segment.fd)
        os.close(segment.fd)
        if segment.size == 0:
            segment.path.unlink(missing_ok=True)
        else:
            sealed = segment.path.with_name(SEALED_PREFIX + segment.path.name.removeprefix(OPEN_PREFIX))
            segment.path.rename(sealed)
            self.last_sealed = sealed.name
        fsync_directory(self.directory)
        # Only now: until the rename, status readers must see the bytes as still open (not yet handed over).
        self._segment = None
