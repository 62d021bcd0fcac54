"""The store's commit log: which files are visible, changed all at once or not at all.

A data folder is written by one writer at a time (`writer_lock`) and read by anyone at any
time. Every file a writer makes is written under a temporary name, fsync'd and renamed
(rename(2) is atomic; fsync(2) before it so a crash never leaves a named but empty file, and
of the folder after it so the name itself is durable: [Pillai2014]); appends to a
JSON-lines log are fsync'd too. None of that is visible yet: a file is part of
the store only once a *commit* names it. A commit is one small JSON file
`_store/log/<seq>.json`, itself written to a temporary name, fsync'd and renamed, so it
exists whole or not at all; it lists the Parquet files it adds and removes per dataset, the
new committed length of each log it appended to, the raw copies its rows point at, and a few
named marks. Readers build their state from the last checkpoint plus the commits after it
and look at nothing else, so one ingest batch (measurements, observations, verdicts,
quarantine and ledger entries) appears at once, and a kill or a full disk at any point
leaves the store as it was at the last commit. This is the design of Delta Lake's
transaction log ([DeltaLake2020]: data files plus an ordered log of atomic JSON commits and
periodic checkpoints) on a local file system, where one lock file serialises writers.

The writer that takes the lock after one that died (the lock file still says "writing")
removes the debris: temporary files, renamed files no commit names, log bytes past their
committed length (`recover`). Files a commit removes (a `mode="replace"` write) stay on
disk `RETAIN_S` seconds so that a reader who listed them just before can still read them,
then go.

A test-only hook makes the failures reproducible: with `WALLWATCH_STORE_KILL_AT=N` the
process SIGKILLs itself at the N-th write step (`step`), and `WALLWATCH_STORE_TRACE=FILE`
appends each step's name to FILE; tests/analysis/test_store_crash.py kills ingests so.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

STORE_DIR = "_store"
LOG_DIR = f"{STORE_DIR}/log"
LOCK_NAME = f"{STORE_DIR}/lock"
BROKEN_DIR = f"{STORE_DIR}/broken"
STAGING_DIR = f"{STORE_DIR}/staging"
TMP_SUFFIX = ".tmp"
# A checkpoint (the whole state in one file) every this many commits keeps a reader's work
# bounded however long a writer runs; Delta Lake checkpoints every 10 commits by default, our
# commits are larger (a whole ingest batch) and the state is smaller, so less often.
CHECKPOINT_EVERY = 64
# Files a commit removed stay this long for readers that listed them just before.
RETAIN_S = 600.0
# Parts of the data folder that are not datasets.
NOT_DATASETS = frozenset({STORE_DIR, "raw", "quarantine", "report"})


class StoreCorrupt(Exception):
    """The commit log cannot be read (a file named by a commit is missing, a commit unreadable)."""


class StoreLocked(Exception):
    """Another process holds the data folder's writer lock."""


# -- the test hook --------------------------------------------------------------------------

_KILL_AT = int(os.environ.get("WALLWATCH_STORE_KILL_AT") or 0)
_TRACE = os.environ.get("WALLWATCH_STORE_TRACE")
_step_counter = itertools.count(1)
_step_lock = threading.Lock()


def step(name: str) -> None:
    """One write step (before and after each write, fsync and rename). Free unless a test asks."""
    if not _KILL_AT and not _TRACE:
        return
    with _step_lock:
        number = next(_step_counter)
        if _TRACE:
            with open(_TRACE, "a") as trace:
                trace.write(f"{number} {name}\n")
        if number == _KILL_AT:
            os.kill(os.getpid(), signal.SIGKILL)


# -- durable file operations -------------------------------------------------------------------


def fsync_dir(directory: Path) -> None:
    """Make a directory's entries (a rename, a new file) durable (fsync(2) on the directory)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_name(path: Path) -> Path:
    """The name a file is written under before it is renamed to `path`: hidden and `.tmp`, so no
    glob of `*.parquet` (DuckDB's, a user's) ever sees a half-written file."""
    return path.with_name(f".{path.name}{TMP_SUFFIX}")


def write_bytes_durably(path: Path, data: bytes) -> None:
    """`data` at `path`, whole or not at all: temporary name, fsync, rename, fsync of the folder."""
    partial = temporary_name(path)
    step(f"write {path.name}")
    with open(partial, "wb") as handle:
        half = len(data) // 2
        handle.write(data[:half])
        handle.flush()
        step(f"half-written {path.name}")
        handle.write(data[half:])
        handle.flush()
        os.fsync(handle.fileno())
    step(f"fsync'd {path.name}")
    os.replace(partial, path)
    step(f"renamed {path.name}")
    fsync_dir(path.parent)


def finish_file(partial: Path, path: Path) -> None:
    """A file fully written at `partial`: fsync it and rename it to `path` (the folder is fsync'd
    by the commit, once for all its files)."""
    finish_files([(partial, path)])


# fsync(2)s in flight at once: ext4 folds concurrent fsyncs into one journal commit, so 120 files
# take ~0.04 s from 16 threads and ~0.6 s one after another (measured on this project's machine).
FSYNC_THREADS = 16


def fsync_all(paths: Iterable[Path]) -> None:
    """fsync files and folders, many at once (see FSYNC_THREADS)."""
    paths = list(paths)

    def sync(path: Path) -> None:
        (fsync_dir if path.is_dir() else fsync_path)(path)

    if len(paths) <= 1:
        for path in paths:
            sync(path)
        return
    with ThreadPoolExecutor(max_workers=min(FSYNC_THREADS, len(paths))) as pool:
        list(pool.map(sync, paths))


def finish_files(pairs: Iterable[tuple[Path, Path]]) -> None:
    """Files fully written at temporary names: fsync them all, then rename each to its name."""
    pairs = list(pairs)
    for partial, path in pairs:
        step(f"written {path.name}")
    fsync_all(partial for partial, _ in pairs)
    for partial, path in pairs:
        step(f"fsync'd {path.name}")
        os.replace(partial, path)
        step(f"renamed {path.name}")


# -- the state ------------------------------------------------------------------------------


@dataclass
class Snapshot:
    """What the store holds after commit `seq`: live files per dataset (paths relative to the
    root), each log's committed length, the raw copies rows point at, and named marks."""

    seq: int = -1
    files: dict[str, set[str]] = field(default_factory=dict)
    logs: dict[str, int] = field(default_factory=dict)
    raw: set[str] = field(default_factory=set)
    marks: dict[str, Any] = field(default_factory=dict)
    retired: dict[str, float] = field(default_factory=dict)  # removed file -> when (time.time())

    def apply(self, commit: Mapping[str, Any]) -> None:
        for dataset, paths in commit.get("remove", {}).items():
            live = self.files.get(dataset, set())
            for path in paths:
                live.discard(path)
                self.retired[path] = commit.get("at", 0.0)
        for dataset, paths in commit.get("add", {}).items():
            self.files.setdefault(dataset, set()).update(paths)
        self.logs.update(commit.get("logs", {}))
        self.raw.update(commit.get("raw", ()))
        for name, value in commit.get("marks", {}).items():
            if value is None:
                self.marks.pop(name, None)
            else:
                self.marks[name] = value
        for path in commit.get("deleted", ()):
            self.retired.pop(path, None)
        self.seq = commit["seq"]

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "files": {k: sorted(v) for k, v in self.files.items()}, "logs": self.logs,
                "raw": sorted(self.raw), "marks": self.marks, "retired": self.retired}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Snapshot:
        return cls(data["seq"], {k: set(v) for k, v in data["files"].items()}, dict(data["logs"]),
                   set(data["raw"]), dict(data["marks"]), dict(data["retired"]))

    def datasets(self) -> list[str]:
        return sorted(name for name, paths in self.files.items() if paths)

    def known(self) -> set[str]:
        """Every data file a commit names, live or retired."""
        return set().union(*self.files.values(), self.retired) if self.files else set(self.retired)


def _commit_name(seq: int) -> str:
    return f"{seq:012d}.json"


def _checkpoint_name(seq: int) -> str:
    return f"{seq:012d}.checkpoint.json"


def load_snapshot(root: Path) -> Snapshot | None:
    """The committed state, or None for a folder no commit was ever written to."""
    log_dir = root / LOG_DIR
    for attempt in range(5):
        try:
            return _load(log_dir)
        except FileNotFoundError:  # a checkpoint removed old commits while we listed them: list again
            if attempt == 4:
                raise
            time.sleep(0.01)
    return None


def _load(log_dir: Path) -> Snapshot | None:
    try:
        names = os.listdir(log_dir)
    except FileNotFoundError:
        return None
    commits: dict[int, str] = {}
    checkpoints: list[int] = []
    for name in names:
        if name.startswith(".") or not name.endswith(".json"):
            continue  # a temporary file: not committed
        number = name.split(".", 1)[0]
        if not number.isdigit():
            continue
        if name.endswith(".checkpoint.json"):
            checkpoints.append(int(number))
        else:
            commits[int(number)] = name
    if not commits and not checkpoints:
        return None
    snapshot = Snapshot()
    if checkpoints:
        snapshot = Snapshot.from_json(orjson.loads((log_dir / _checkpoint_name(max(checkpoints))).read_bytes()))
    seq = snapshot.seq + 1
    while seq in commits:  # in order, and only an unbroken run: seq N+1 is written after N
        snapshot.apply(orjson.loads((log_dir / commits[seq]).read_bytes()))
        seq += 1
    return snapshot


# -- the writer lock ------------------------------------------------------------------------


@dataclass
class _Held:
    fd: int
    count: int


_held: dict[str, _Held] = {}
_held_lock = threading.Lock()


def _forget_inherited_locks() -> None:
    """In a forked child: drop our copies of the lock descriptors. flock(2) locks belong to the
    open file description, which the parent still holds, so the lock stays the parent's and is
    freed when the parent dies even if a child lingers."""
    for held in _held.values():
        try:
            os.close(held.fd)
        except OSError:
            pass
    _held.clear()


os.register_at_fork(after_in_child=_forget_inherited_locks)


def _holder(lock_path: Path) -> dict[str, Any]:
    try:
        return orjson.loads(lock_path.read_bytes() or b"{}")
    except (OSError, orjson.JSONDecodeError):
        return {}


def _describe(holder: Mapping[str, Any]) -> str:
    if not holder.get("pid"):
        return "another process (it has not written its PID yet)"
    return f"PID {holder['pid']} ({holder.get('command', '?')}, since {holder.get('since', '?')})"


@contextmanager
def writer_lock(root: Path, wait: float = 0.0) -> Iterator[bool]:
    """Hold the data folder's writer lock; yields True when this call took it (False: already
    held by this process). `wait`: seconds to wait for another holder (0: fail at once with a
    message naming it; math.inf: wait for ever). An flock(2) lock is released by the kernel when
    its holder dies, so a stale lock file of a dead process never blocks."""
    key = os.path.realpath(root)
    with _held_lock:
        if key in _held:
            _held[key].count += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield False
        finally:
            with _held_lock:
                _held[key].count -= 1
        return
    lock_path = root / LOCK_NAME
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        _acquire(fd, lock_path, wait)
    except BaseException:
        os.close(fd)
        raise
    previous = _holder(lock_path)
    _write_holder(fd, "writing")
    with _held_lock:
        _held[key] = _Held(fd, 1)
    clean = False
    try:
        if previous.get("state") != "clean" or load_snapshot(root) is None:
            recover(root)  # the last writer died mid-write (or this folder predates the commit log)
        yield True
        clean = True
    finally:
        with _held_lock:
            _held.pop(key, None)
        if clean:
            try:
                _write_holder(fd, "clean")
            except OSError:
                pass  # a full disk: the next writer recovers, which is always safe
        os.close(fd)  # releases the flock


def _acquire(fd: int, lock_path: Path, wait: float) -> None:
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                holder = _holder(lock_path)
                raise StoreLocked(f"the data folder {lock_path.parent.parent} is being written by "
                                  f"{_describe(holder)}; one writer at a time: wait for it to finish "
                                  f"(or stop it) and run again") from None
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))


def _write_holder(fd: int, state: str) -> None:
    record = {"pid": os.getpid(), "command": " ".join(os.path.basename(a) if i == 0 else a
                                                      for i, a in enumerate(sys.argv))[:200],
              "since": time.strftime("%Y-%m-%d %H:%M:%S"), "state": state}
    data = orjson.dumps(record) + b"\n"
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)


def holds_lock(root: Path) -> bool:
    return os.path.realpath(root) in _held


# -- committing -----------------------------------------------------------------------------


class Transaction:
    """The changes of one commit, made durable as they are made and visible at `commit`.

    Only the holder of the writer lock makes transactions (Store.transaction)."""

    def __init__(self, root: Path, snapshot: Snapshot) -> None:
        self.root = root
        self.snapshot = snapshot
        self.add: dict[str, list[str]] = {}
        self.remove: dict[str, set[str]] = {}
        self.logs: dict[str, int] = {}
        self.raw: set[str] = set()
        self.marks: dict[str, Any] = {}
        self.deleted: list[str] = []  # retired files deleted from disk: the state forgets them
        self._dirs: set[Path] = set()
        self._made: list[Path] = []  # files to delete if the transaction is abandoned
        self._lock = threading.Lock()

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def made(self, dataset: str, path: Path) -> None:
        """A data file finished (fsync'd, renamed) by this transaction: part of the commit."""
        with self._lock:
            self.add.setdefault(dataset, []).append(self.relative(path))
            self._made.append(path)
            self._dirs.add(path.parent)

    def making(self, path: Path) -> None:
        """A file about to be written (deleted if the transaction is abandoned)."""
        with self._lock:
            self._made.append(path)

    def retire(self, dataset: str, relpaths: Iterable[str]) -> None:
        self.remove.setdefault(dataset, set()).update(relpaths)

    def append_log(self, relpath: str, data: bytes) -> None:
        """Append `data` to the log `relpath` (fsync'd; visible at commit)."""
        if not data:
            return
        path = self.root / relpath
        start = self.logs.get(relpath, self.snapshot.logs.get(relpath, 0))
        path.parent.mkdir(parents=True, exist_ok=True)
        step(f"append {relpath}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            # Write at the committed end (not O_APPEND): bytes an abandoned write left there are
            # overwritten, and the log never holds uncommitted text before committed text.
            half = len(data) // 2
            os.ftruncate(fd, start)
            _pwrite_all(fd, data[:half], start)
            step(f"half-appended {relpath}")
            _pwrite_all(fd, data[half:], start + half)
            os.fsync(fd)
        finally:
            os.close(fd)
        step(f"appended {relpath}")
        self.logs[relpath] = start + len(data)
        self._dirs.add(path.parent)

    def empty(self) -> bool:
        return not (self.add or self.remove or self.logs or self.raw or self.marks)

    def commit(self) -> Snapshot:
        """Write the commit file (the moment the changes become visible); returns the new state."""
        if self.empty():
            return self.snapshot
        fsync_all(sorted(self._dirs))  # the renames and new log files are on disk before the commit is
        seq = self.snapshot.seq + 1
        commit = {"seq": seq, "at": time.time(), "pid": os.getpid(),
                  "add": {k: sorted(v) for k, v in self.add.items()},
                  "remove": {k: sorted(v) for k, v in self.remove.items()},
                  "logs": self.logs, "raw": sorted(self.raw), "marks": self.marks, "deleted": self.deleted}
        log_dir = self.root / LOG_DIR
        log_dir.mkdir(parents=True, exist_ok=True)
        path = log_dir / _commit_name(seq)
        try:
            write_bytes_durably(path, orjson.dumps(commit))
        except BaseException:
            if path.exists():  # renamed, then the folder's fsync failed: committed all the same
                self.snapshot.apply(commit)
                self._made = []
            raise
        self.snapshot.apply(commit)
        self._made = []
        if seq % CHECKPOINT_EVERY == 0:
            checkpoint(self.root, self.snapshot)
        return self.snapshot

    def abandon(self) -> None:
        """Undo what can be undone (after an error, e.g. ENOSPC); `recover` does the rest later."""
        for path in self._made:
            for candidate in (path, temporary_name(path)):
                try:
                    candidate.unlink()
                except OSError:
                    pass
        for relpath in self.logs:
            try:
                os.truncate(self.root / relpath, self.snapshot.logs.get(relpath, 0))
            except OSError:
                pass


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def checkpoint(root: Path, snapshot: Snapshot) -> None:
    """The whole state as of `snapshot.seq` in one file; then forget what no reader needs: commits
    up to the previous checkpoint (a reader that listed them just before uses that one) and files
    removed more than RETAIN_S ago."""
    log_dir = root / LOG_DIR
    write_bytes_durably(log_dir / _checkpoint_name(snapshot.seq), orjson.dumps(snapshot.to_json()))
    older = sorted(int(n.split(".", 1)[0]) for n in os.listdir(log_dir)
                   if n.endswith(".checkpoint.json") and int(n.split(".", 1)[0]) < snapshot.seq)
    if older:
        previous = older[-1]
        for name in os.listdir(log_dir):
            number = name.split(".", 1)[0]
            if number.isdigit() and (int(number) < previous or (int(number) == previous and
                                                                  not name.endswith(".checkpoint.json"))):
                (log_dir / name).unlink(missing_ok=True)


def delete_retired(root: Path, snapshot: Snapshot, older_than: float = RETAIN_S) -> list[str]:
    """Delete files removed by commits more than `older_than` seconds ago; returns their paths
    (the caller commits them as `deleted` so the state forgets them)."""
    now = time.time()
    gone = [path for path, at in snapshot.retired.items() if now - at >= older_than]
    for path in gone:
        (root / path).unlink(missing_ok=True)
    return gone


# -- recovery -------------------------------------------------------------------------------


def dataset_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return [entry for entry in root.iterdir()
            if entry.is_dir() and entry.name not in NOT_DATASETS and not entry.name.startswith((".", "_"))]


def recover(root: Path) -> list[Path]:
    """Remove the debris of an interrupted write (called with the writer lock held). A folder
    written before the commit log existed is adopted first: its files become commit 0.
    Returns what was removed (or set aside)."""
    snapshot = load_snapshot(root)
    if snapshot is None:
        return adopt(root)
    removed: list[Path] = []
    known = snapshot.known()
    for directory in dataset_dirs(root):
        for path in list(directory.rglob("*")):
            if path.is_dir():
                continue
            relpath = path.relative_to(root).as_posix()
            if path.name.endswith(TMP_SUFFIX) or (path.name.endswith(".parquet") and relpath not in known):
                path.unlink(missing_ok=True)
                removed.append(path)
        _remove_empty_dirs(directory)
    raw_dir = root / "raw"
    if raw_dir.is_dir():
        for path in list(raw_dir.rglob("*")):
            if path.is_file() and path.relative_to(root).as_posix() not in snapshot.raw:
                path.unlink(missing_ok=True)  # a copy made for rows that were never committed
                removed.append(path)
        _remove_empty_dirs(raw_dir)
    for log in _log_files(root):
        relpath = log.relative_to(root).as_posix()
        committed = snapshot.logs.get(relpath)
        if committed is None:
            log.unlink(missing_ok=True)  # started by a write that never committed
            removed.append(log)
        elif log.stat().st_size > committed:
            os.truncate(log, committed)
            removed.append(log)
    for path in (root / LOG_DIR).iterdir():
        if path.name.startswith("."):
            path.unlink(missing_ok=True)
            removed.append(path)
    staging = root / STAGING_DIR
    if staging.is_dir():
        shutil.rmtree(staging, ignore_errors=True)
        removed.append(staging)
    return removed


def _log_files(root: Path) -> list[Path]:
    logs = [path for path in root.glob("*.jsonl") if path.is_file()]
    quarantine = root / "quarantine"
    if quarantine.is_dir():
        logs.extend(path for path in quarantine.glob("*.jsonl") if path.is_file())
    return logs


def _remove_empty_dirs(top: Path) -> None:
    for directory in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        try:
            directory.rmdir()
        except OSError:
            pass


def adopt(root: Path) -> list[Path]:
    """Commit 0 of a folder written before the commit log: every `part-*.parquet` file whose footer
    reads (a truncated one, left by a kill of the old writer, is moved to `_store/broken/`),
    every raw copy, every log up to its last whole line."""
    import pyarrow.parquet as pq

    set_aside: list[Path] = []
    add: dict[str, list[str]] = {}
    for directory in dataset_dirs(root):
        for path in sorted(directory.rglob("part-*.parquet")):
            try:
                pq.read_metadata(path)
            except Exception:  # noqa: BLE001 - any unreadable footer: not data we can serve
                target = root / BROKEN_DIR / path.relative_to(root)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
                set_aside.append(path)
                continue
            add.setdefault(directory.name, []).append(path.relative_to(root).as_posix())
    raw_dir = root / "raw"
    raw = sorted(p.relative_to(root).as_posix() for p in raw_dir.rglob("*")
                 if p.is_file() and not p.name.endswith(".partial")) if raw_dir.is_dir() else []
    logs = {}
    for log in _log_files(root):
        data = log.read_bytes()
        whole = data.rfind(b"\n") + 1
        if whole < len(data):
            os.truncate(log, whole)
        logs[log.relative_to(root).as_posix()] = whole
    transaction = Transaction(root, Snapshot())
    transaction.add, transaction.logs, transaction.raw = add, logs, set(raw)
    transaction.marks = {"adopted": True}
    transaction.commit()
    return set_aside


def is_no_space(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)
