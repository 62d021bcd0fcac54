"""Submitting measurements to a collector, and the local spool that holds them until it has them.

`CollectorClient` speaks to `wallwatch serve`'s bulk endpoint (`POST /api/v1/measurements`: JSON
lines, all stored or none, one uid per line; docs/observatory.md). It uses the standard library's
HTTP client with no proxy taken from the environment: a measurement goes to the collector named,
nowhere else.

`Spool` is what makes a monitor lose nothing while the collector is away: each measurement is
appended to `<dir>/spool.jsonl` and fdatasync'd *before* any attempt to send it, and the byte
offset of the first one not yet acknowledged is kept in `<dir>/spool.offset` (replaced
atomically, fsync'd). Draining sends from that offset in order and advances it only after the
collector's answer, so a crash between the two resends a batch, which the collector acknowledges
again with the same uids (its uid is a function of the measurement) and stores once. A
measurement the collector refuses as malformed (400/413) would block the spool forever: it is
moved to `<dir>/rejected.jsonl` with the reason, and the rest goes on.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

BULK_PATH = "/api/v1/measurements"
DEFAULT_TIMEOUT_S = 30.0
# Lines per POST when draining: large enough to be cheap, small enough that a refused line costs a
# retry of little.
DRAIN_BATCH = 200
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_LINE = re.compile(r"^line (\d+): ")


class CollectorUnavailable(Exception):
    """The collector could not take the measurements now (unreachable, 5xx, 401/403): keep them, retry later."""


@dataclass
class CollectorRefused(Exception):
    """The collector refused a measurement as malformed: resending it would never work."""

    status: int
    detail: str
    line: int | None  # 1-based line of the batch the refusal names, when it names one

    def __str__(self) -> str:
        return f"HTTP {self.status}: {self.detail}"


class CollectorClient:
    def __init__(self, url: str, *, token: str | None = None, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"collector URL must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def submit_lines(self, lines: Sequence[bytes]) -> list[str]:
        """POST JSON lines (each a measurement, with its report_id); the uids, in order."""
        request = urllib.request.Request(self.url + BULK_PATH, data=b"".join(_line(raw) for raw in lines),
                                         method="POST", headers={"Content-Type": "application/x-ndjson",
                                                                 "User-Agent": "wallwatch-monitor"})
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with _OPENER.open(request, timeout=self.timeout) as response:
                uids = orjson.loads(response.read())["measurement_uids"]
        except urllib.error.HTTPError as exc:
            detail = _detail(exc)
            if exc.code in (400, 413):
                match = _LINE.match(detail)
                raise CollectorRefused(exc.code, detail, int(match.group(1)) if match else None) from None
            raise CollectorUnavailable(f"HTTP {exc.code}: {detail}") from None
        except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
            raise CollectorUnavailable(f"{exc.__class__.__name__}: {exc}") from None
        if len(uids) != len(lines):
            raise CollectorUnavailable(f"the collector answered {len(uids)} uids for {len(lines)} measurements")
        return list(uids)

    def submit(self, measurements: Sequence[Mapping[str, Any]]) -> list[str]:
        return self.submit_lines([orjson.dumps(m) for m in measurements])


def _line(raw: bytes) -> bytes:
    return raw if raw.endswith(b"\n") else raw + b"\n"


def _detail(exc: urllib.error.HTTPError) -> str:
    try:
        return str(orjson.loads(exc.read()).get("detail"))
    except (orjson.JSONDecodeError, AttributeError, OSError):
        return exc.reason if isinstance(exc.reason, str) else "no detail"


@dataclass
class DrainResult:
    sent: int = 0
    rejected: int = 0
    error: str | None = None  # why draining stopped early (the collector is away)
    uids: tuple[str, ...] = ()


class Spool:
    """Measurements not yet acknowledged by the collector, on disk, in order (one monitor per spool)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "spool.jsonl"
        self.offset_path = directory / "spool.offset"
        self.rejected_path = directory / "rejected.jsonl"
        self._lock = (directory / "spool.lock").open("a")
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise RuntimeError(f"another monitor uses the spool {directory}") from None

    def close(self) -> None:
        fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
        self._lock.close()

    def append(self, measurement: Mapping[str, Any]) -> None:
        """Durably add one measurement at the end."""
        _append_synced(self.path, orjson.dumps(measurement) + b"\n")

    def _offset(self) -> int:
        try:
            offset = int(self.offset_path.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0
        size = self.path.stat().st_size if self.path.exists() else 0
        return offset if 0 <= offset <= size else 0  # a spool truncated after the offset was written

    def _set_offset(self, offset: int) -> None:
        partial = self.offset_path.with_name(self.offset_path.name + ".partial")
        with partial.open("w") as handle:
            handle.write(str(offset))
            handle.flush()
            os.fsync(handle.fileno())
        partial.replace(self.offset_path)
        if self.path.exists() and offset >= self.path.stat().st_size:
            # Everything acknowledged: start the files afresh (offset first, so a crash here is harmless).
            _replace_synced(self.offset_path, b"0")
            _replace_synced(self.path, b"")

    def pending(self) -> Iterator[tuple[int, bytes]]:
        """(end offset, line) of every measurement not yet acknowledged, oldest first."""
        if not self.path.exists():
            return
        offset = self._offset()
        with self.path.open("rb") as handle:
            handle.seek(offset)
            for line in handle:
                offset += len(line)
                if line.endswith(b"\n") and line.strip():  # a torn last line was never spooled whole
                    yield offset, line

    def count(self) -> int:
        return sum(1 for _ in self.pending())

    def drain(self, client: CollectorClient, batch: int = DRAIN_BATCH) -> DrainResult:
        """Send everything pending, in order, `batch` at a time, until done or the collector is away."""
        result = DrainResult()
        uids: list[str] = []
        size = batch
        while chunk := list(itertools.islice(self.pending(), size)):
            try:
                uids += client.submit_lines([line for _, line in chunk])
            except CollectorUnavailable as exc:
                result.error = str(exc)
                break
            except CollectorRefused as exc:
                if exc.line is None and len(chunk) > 1:
                    size = 1  # a refusal of the body as a whole (too large): find the culprit alone
                    continue
                bad = exc.line - 1 if exc.line is not None and exc.line <= len(chunk) else 0
                if bad:
                    # All or none: the lines before the refused one were fine but not stored; send them alone.
                    size = bad
                    continue
                self._reject(chunk[0][1], str(exc))
                self._set_offset(chunk[0][0])
                result.rejected += 1
                size = batch
                continue
            self._set_offset(chunk[-1][0])
            result.sent += len(chunk)
            size = batch
        result.uids = tuple(uids)
        return result

    def _reject(self, line: bytes, reason: str) -> None:
        _append_synced(self.rejected_path, orjson.dumps({"reason": reason, "measurement": orjson.loads(line)})
                       + b"\n")


def _append_synced(path: Path, data: bytes) -> None:
    with path.open("ab") as handle:
        handle.write(data)
        handle.flush()
        os.fdatasync(handle.fileno())


def _replace_synced(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    with partial.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    partial.replace(path)
