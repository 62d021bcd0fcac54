"""`wallwatch monitor`: run nettests on a schedule and submit every measurement to a collector.

In 2017 WhatsApp's blocking was noticed because automated monitors kept testing it [NYT2017]. A
monitor is that: every `--every` (15 minutes by default) it runs its nettests, spools each
measurement durably (`probe/submit.py`), and drains the spool to the collector, in order. While
the collector is unreachable the spool grows and is retried every `retry` seconds (doubling up to
the period); nothing measured is lost, and the collector deduplicates what is sent twice.

The schedule is anchored: round n starts at start + n x period, plus a random offset of up to
`jitter` x period either way, so that monitors started together do not probe (and submit) in
lockstep, and a slow round does not push the ones after it. A round that would start after the
next one is due is skipped, not queued.

SIGTERM (or SIGINT) stops it cleanly: no new round starts, a nettest already running finishes and
its measurement is spooled, one last drain is tried, and it exits 0. What was not sent stays in
the spool for the next start.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from wallwatch.probe.submit import CollectorClient, DrainResult, Spool

log = logging.getLogger("wallwatch.monitor")

DEFAULT_EVERY_S = 15 * 60
DEFAULT_JITTER = 0.1
DEFAULT_RETRY_S = 30.0
_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?$")


def parse_duration(text: str) -> float:
    """'15m', '1h30m', '90s', '0.5s' or a plain number of seconds -> seconds (ValueError otherwise)."""
    text = text.strip().lower()
    try:
        seconds = float(text)
    except ValueError:
        match = _DURATION.match(text)
        if not text or match is None or not any(match.groups()):
            raise ValueError(f"duration {text!r} is not like 15m, 1h30m, 90s or a number of seconds") from None
        hours, minutes, secs = (float(part) if part else 0.0 for part in match.groups())
        seconds = hours * 3600 + minutes * 60 + secs
    if seconds <= 0:
        raise ValueError(f"duration {text!r} must be positive")
    return seconds


@dataclass
class MonitorStats:
    rounds: int = 0
    measured: int = 0
    failed: int = 0
    sent: int = 0
    rejected: int = 0
    last_error: str | None = None
    uids: list[str] = field(default_factory=list)


Measure = Callable[[str], dict[str, Any]]


class Monitor:
    """Runs `measure(nettest)` for each nettest every `every` seconds; spools and drains the results."""

    def __init__(self, nettests: Sequence[str], measure: Measure, client: CollectorClient, spool: Spool, *,
                 every: float = DEFAULT_EVERY_S, jitter: float = DEFAULT_JITTER, retry: float = DEFAULT_RETRY_S,
                 rounds: int | None = None, rng: random.Random | None = None,
                 on_round: Callable[[int, MonitorStats], None] | None = None) -> None:
        if not 0 <= jitter < 0.5:
            raise ValueError("jitter is a fraction of the period, from 0 to below 0.5")
        self.nettests = tuple(nettests)
        self.measure = measure
        self.client = client
        self.spool = spool
        self.every = every
        self.jitter = jitter
        self.retry = retry
        self.rounds = rounds
        self.rng = rng or random.Random()
        self.on_round = on_round
        self.stop = threading.Event()
        self.stats = MonitorStats()

    def run(self) -> MonitorStats:
        anchor = time.monotonic()
        round_number = 0
        self._drain()  # what an earlier run left in the spool goes first
        while not self.stop.is_set() and (self.rounds is None or round_number < self.rounds):
            due = anchor + round_number * self.every + self.rng.uniform(-self.jitter, self.jitter) * self.every
            self._wait_until(max(due, anchor))
            if self.stop.is_set():
                break
            self._round()
            self.stats.rounds += 1
            if self.on_round is not None:
                self.on_round(round_number, self.stats)
            round_number += 1
            # Rounds missed while this one ran (or while the machine slept) are skipped, not queued.
            behind = int((time.monotonic() - anchor) // self.every) - round_number
            if behind > 0:
                log.warning("skipping %d round(s): the last one took longer than the period", behind)
                round_number += behind
        self._drain()
        return self.stats

    def _round(self) -> None:
        for nettest in self.nettests:
            try:
                measurement = self.measure(nettest)
            except Exception as exc:  # noqa: BLE001 - one nettest failing must not stop the monitor
                self.stats.failed += 1
                log.error("%s failed: %s: %s", nettest, exc.__class__.__name__, exc)
                continue
            self.spool.append(measurement)  # durable before any attempt to send it
            self.stats.measured += 1
        self._drain()

    def _wait_until(self, moment: float) -> None:
        """Sleep until `moment` (or a stop), draining the spool meanwhile if it holds anything."""
        backoff = self.retry
        while not self.stop.is_set():
            left = moment - time.monotonic()
            if left <= 0:
                return
            if self.spool.count() == 0:
                self.stop.wait(left)
                continue
            self.stop.wait(min(left, backoff))
            if self.stop.is_set() or time.monotonic() >= moment:
                return
            if self._drain().error is not None:
                backoff = min(backoff * 2, self.every)
            else:
                backoff = self.retry

    def _drain(self) -> DrainResult:
        result = self.spool.drain(self.client)
        self.stats.sent += result.sent
        self.stats.rejected += result.rejected
        self.stats.uids += result.uids
        if result.error is not None:
            self.stats.last_error = result.error
            log.warning("collector unavailable, %d measurement(s) kept in the spool: %s", self.spool.count(),
                        result.error)
        return result
