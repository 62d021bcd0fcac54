"""Open and closed reports of OONI's collector API, kept durable so a restart forgets none.

OONI's probes open a report (`POST /report`), submit each measurement into it and close it.
OONI's own collector keeps no state (any well-formed report id is accepted); this one does, so
that a measurement for a report that was never opened, or was closed, is refused (404/409) rather
than stored under an identity no probe was given.

The book is an append-only log, `<data>/_live/reports.jsonl`, one line per open and per close,
each fsync'd before the answer: a probe that was told its report id can always submit into it,
whatever happens to the server in between. At start-up the log is replayed and rewritten with
only the reports younger than `max_age` (a probe run lasts minutes; OONI's probes open a new
report per run), so it stays small.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from wallwatch.web.submissions import ReportInfo
from wallwatch.analysis.commitlog import fsync_dir as fsync_directory

# How long a report stays open for submissions: a nettest run, with room for a probe that
# queued its measurements while offline.
DEFAULT_MAX_AGE_S = 7 * 24 * 3600


@dataclass
class Report:
    report_id: str
    test_name: str
    probe_cc: str
    probe_asn: str
    opened_at: float
    closed_at: float | None = None

    @property
    def info(self) -> ReportInfo:
        return ReportInfo(self.report_id, self.test_name, self.probe_cc, self.probe_asn)


class ReportBook:
    """Reports by id, replayed from and appended to their log. Not thread-safe: one event loop
    calls it, and its writes are short (one line and an fsync, run in a thread by the caller)."""

    def __init__(self, path: Path, *, max_age_s: float = DEFAULT_MAX_AGE_S) -> None:
        self.path = path
        self.max_age_s = max_age_s
        self.reports: dict[str, Report] = {}

    def load(self, now: float | None = None) -> None:
        """Replay the log, drop expired reports, and rewrite it (atomically) with the rest."""
        now = time.time() if now is None else now
        self.reports = {}
        if self.path.exists():
            with self.path.open("rb") as handle:
                for line in handle:
                    try:
                        entry = orjson.loads(line)
                    except orjson.JSONDecodeError:
                        continue  # a torn last line: its open was never acknowledged
                    self._apply(entry)
        self.reports = {rid: r for rid, r in self.reports.items() if now - r.opened_at <= self.max_age_s}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".partial")
        with partial.open("wb") as handle:
            handle.write(b"".join(orjson.dumps({"open": asdict(r)}) + b"\n" for r in self.reports.values()))
            handle.write(b"".join(orjson.dumps({"close": rid, "at": r.closed_at}) + b"\n"
                                  for rid, r in self.reports.items() if r.closed_at is not None))
            handle.flush()
            os.fsync(handle.fileno())
        partial.replace(self.path)
        fsync_directory(self.path.parent)

    def _apply(self, entry: dict) -> None:
        if "open" in entry:
            report = Report(**entry["open"])
            self.reports[report.report_id] = report
        elif "close" in entry and entry["close"] in self.reports:
            self.reports[entry["close"]].closed_at = entry.get("at")

    def get(self, report_id: str, now: float | None = None) -> Report | None:
        report = self.reports.get(report_id)
        now = time.time() if now is None else now
        if report is not None and now - report.opened_at > self.max_age_s:
            return None
        return report

    def record_open(self, report: Report) -> None:
        """Durably log an open (blocking: call it in a thread), then make it visible."""
        self._append({"open": asdict(report)})
        self.reports[report.report_id] = report

    def record_close(self, report_id: str, at: float) -> None:
        self._append({"close": report_id, "at": at})
        self.reports[report_id].closed_at = at

    def _append(self, entry: dict) -> None:
        with self.path.open("ab") as handle:
            handle.write(orjson.dumps(entry) + b"\n")
            handle.flush()
            os.fdatasync(handle.fileno())
