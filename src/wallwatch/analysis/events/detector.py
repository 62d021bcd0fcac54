"""Change detection on one hourly series: when did blocking start and stop, when did volume collapse.

Dependency-free and deterministic: plain functions over hourly samples
(`hour` is an integer count of hours since the Unix epoch). Silence is read
from the hour numbers, never from rows: an hour with no probes and an absent
hour are the same, so the dense grid and the sparse-aware grid of `series.py`
(long silences folded into one gap row) give identical results. Same input,
same output, same `DETECTOR_VERSION`.

Blocking: a two-state Bernoulli log-likelihood-ratio CUSUM (Page 1954;
Basseville & Nikiforov 1993 §2.2) over *k blocked distinct probes out of n
decisive ones* per hour. OONI's detector feeds the hourly *median* of a
blocked score (ooni/data oonipipeline/analysis/detector.py), which is a step
at 50% and so cannot see partial blocking; its own plan (docs/implementation-
plan.md §3.6) proposes exactly this Bernoulli increment instead. Empty hours
carry no evidence; ok/blocked states give hysteresis; an evidence floor keeps
one flaky hour from opening a segment. After a silence of more than a day the
accumulated evidence decays with a 48 h half-life, as in OONI's detector
(ooni/data analysis/detector.py `CusumDetector._decay`), so stale evidence from
before the silence does not decide what happens after it; after a silence of
more than two weeks the detector starts afresh and an open block is closed at
the end of its evidence (`Segment.extra["closed_by_silence"]`): we do not know
when it ended, and claiming it lasted through months without data would be
worse.

Volume: a Poisson CUSUM (Lucas 1985) of the hourly measurement count against a
trailing-median baseline (the baseline IODA uses, InetIntel/watchtower-sentry
filters/MovingStat.py), with a minimum duration so that a probe that is
offline for a few hours is not an event.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

# ww-cusum-2: gap decay and silence closing (ww-cusum-1 let evidence wait out any silence).
DETECTOR_VERSION = "ww-cusum-2"


@dataclass(frozen=True)
class BlockingParams:
    """Parameters of the blocking CUSUM; every event records them."""

    # Share of decisive probes reported blocked when nothing is blocked (rule
    # false positives, flaky networks). 3% is above the noise we see in OONI
    # samples for messaging tests and keeps the in-control drift negative.
    p0: float = 0.03
    # Smallest blocked share the detector is tuned to catch: partial blocking
    # (one ISP's subset of links, a rollout) at 25-30% must be an event.
    p1: float = 0.25
    # Upper bound of the blocked share assumed while deciding that a block ended
    # (log-likelihood stays finite at a share of 1.0).
    p_max: float = 0.95
    # Alarm thresholds in nats (log-likelihood ratio). 10/10: no false segments
    # on quiet series at 2% noise and about one partial (30%) block split in
    # fifty at 4 probes/hour; 8/6 split partial blocks 1 in 5 (bench/eval_events.py).
    h_open: float = 10.0
    h_close: float = 10.0
    # Evidence floor before a segment opens: at least this many blocked
    # distinct-probe observations spread over at least this many hours.
    min_blocked_probes: int = 2
    min_blocked_hours: int = 2
    # Silences longer than this many hours decay the CUSUM statistics by
    # 0.5 ** (silence / gap_halflife_hours): OONI's 24 h / 48 h.
    gap_decay_after_hours: int = 24
    gap_halflife_hours: float = 48.0
    # After a silence longer than this (14 days, the series' dense-gap limit)
    # the detector forgets: a candidate run is dropped, an open block closes
    # at the hour after its last decisive sample.
    max_silence_hours: int = 14 * 24

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(frozen=True)
class VolumeParams:
    """Parameters of the volume-collapse CUSUM."""

    # A collapse is a drop to 10% of the trailing median or less.
    collapse_ratio: float = 0.1
    # Trailing window of the baseline median: one week, as IODA's active
    # probing and telescope signals (ioda-ui Help.js "Detection Criteria").
    baseline_hours: int = 168
    # Hours of history before the detector is armed (two days: a diurnal cycle
    # seen twice), and the smallest baseline (measurements/hour) worth watching.
    warmup_hours: int = 48
    min_baseline: float = 1.0
    # 15 nats: at a baseline of 2.5 measurements/hour a silence must last
    # about seven hours, at 10/hour the six-hour floor below decides.
    h_open: float = 15.0
    h_close: float = 8.0
    # A collapse must have lasted this many low hours: probes go offline for a
    # few hours routinely (phones asleep, batch uploads).
    min_low_hours: int = 6

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(frozen=True)
class HourCounts:
    """One hour of one series: distinct decisive probes, and how many of them were blocked.

    `n_blocked` may be fractional: a probe that measured several times in the
    hour counts as the share of its measurements that were blocked (the
    series' `blocked_weight`), so every probe weighs one.
    """

    hour: int
    n_probes: int
    n_blocked: float


@dataclass(frozen=True)
class Segment:
    """A run of one state on one series, as the detector saw it.

    `onset` is the estimated first hour of the change (the start of the CUSUM
    run that crossed the threshold), `alarm` the hour at which it crossed
    (what a live run would have reported), `end` the first hour back to
    normal (exclusive) or None while ongoing. Hours are epoch hours.
    """

    onset: int
    alarm: int
    end: int | None
    last_seen: int
    peak_share: float
    n_probe_hours: int = 0
    n_blocked_probe_hours: float = 0.0
    extra: dict[str, float] = field(default_factory=dict, compare=False)


def _llr_pair(p_a: float, p_b: float) -> tuple[float, float]:
    """Per-probe log-likelihood ratios of share p_b against p_a for (blocked, ok)."""
    return math.log(p_b / p_a), math.log((1.0 - p_b) / (1.0 - p_a))


def min_blocked_probe_hours(params: BlockingParams = BlockingParams()) -> int:
    """The fewest blocked probe-hours that can open a blocking segment.

    With no working probe in between, each blocked probe-hour adds log(p1/p0)
    nats to the CUSUM (2.1 nats with the defaults), which must reach `h_open`;
    the evidence floor also asks `min_blocked_probes` of them. Working probes
    subtract, so this is a floor: mixed hours need more.
    """
    needed = math.ceil(params.h_open / math.log(params.p1 / params.p0) - 1e-9)
    return max(needed, params.min_blocked_probes)


def minimum_evidence_brief(params: BlockingParams = BlockingParams()) -> str:
    """`minimum_evidence` in a few words, for a chart's subtitle."""
    return f"an event needs at least {min_blocked_probe_hours(params)} blocked probe-hours on a network"


def minimum_evidence(params: BlockingParams = BlockingParams()) -> str:
    """The detector's minimum evidence for an event, in words a reader can check against a chart.

    Stated on every page that shows blocked hours or days, so that blocking seen with
    less evidence (a day or two of one probe per network) is not read as a missed event.
    """
    n = min_blocked_probe_hours(params)
    return (f"An event needs at least {n} blocked probe-hours on a network (say one probe blocked in each of "
            f"{n} hours or days, or several probes in fewer hours, over at least {params.min_blocked_hours} "
            f"hours), and more when some probes there still get through: a working probe-hour counts against "
            f"it (detector {DETECTOR_VERSION}, p0 = {params.p0:g}, p1 = {params.p1:g}, threshold "
            f"{params.h_open:g} nats). Blocking seen with less evidence is shown but is not an event.")


def detect_blocking(hours: Sequence[HourCounts], params: BlockingParams = BlockingParams()) -> list[Segment]:
    """Blocked segments of one series; `hours` sorted by hour (gaps allowed)."""
    up_blocked, up_ok = _llr_pair(params.p0, params.p1)
    segments: list[Segment] = []
    s_up = 0.0
    run: _OpenBlock | None = None  # the candidate run since the CUSUM last left zero
    block: _OpenBlock | None = None
    previous: int | None = None  # hour of the last decisive sample
    for sample in hours:
        n, k = sample.n_probes, min(sample.n_blocked, sample.n_probes)
        if n <= 0:
            continue
        gap = 0 if previous is None else sample.hour - previous
        if previous is not None and gap - 1 > params.max_silence_hours:
            if block is not None:
                segments.append(block.close_by_silence(previous))
            block, run, s_up = None, None, 0.0
        elif gap > params.gap_decay_after_hours:
            decay = 0.5 ** (gap / params.gap_halflife_hours)
            s_up *= decay
            if block is not None:
                block.s_down *= decay
        previous = sample.hour
        if block is None:
            increment = k * up_blocked + (n - k) * up_ok
            if s_up <= 0.0 and increment > 0.0:
                run = _OpenBlock(onset=sample.hour)
            s_up = max(0.0, s_up + increment)
            if s_up <= 0.0 or run is None:
                run = None
                continue
            run.add(sample.hour, n, k)
            if (
                s_up >= params.h_open
                and run.blocked_probe_hours >= params.min_blocked_probes
                and run.blocked_hours >= params.min_blocked_hours
            ):
                block, run, s_up = _refine_onset(run, params), None, 0.0
                block.alarm = sample.hour
            continue
        closed_at = block.step(sample.hour, n, k, params)
        if closed_at is not None:
            segments.append(block.segment(end=closed_at))
            block = None
    if block is not None:
        segments.append(block.segment(end=None))
    return segments


def _refine_onset(run: _OpenBlock, params: BlockingParams) -> _OpenBlock:
    """Move the onset to the maximum-likelihood change point of the run.

    The run starts where the CUSUM last left zero, which can be a stray
    blocked probe hours before the block. For every suffix of the run, score
    it against the blocked share *it* shows (the generalized likelihood ratio
    of Basseville & Nikiforov 1993 §2.4.3, not the design minimum p1), and
    start where that score is highest: a stray's ok neighbours then cost what
    they should.
    """
    best, best_index = float("-inf"), 0
    n_total = k_total = 0
    for index in range(len(run.samples) - 1, -1, -1):
        _, n, k = run.samples[index]
        n_total, k_total = n_total + n, k_total + k
        share = min(max(k_total / n_total, params.p1), params.p_max)
        llr_blocked, llr_ok = _llr_pair(params.p0, share)
        score = k_total * llr_blocked + (n_total - k_total) * llr_ok
        if score > best:
            best, best_index = score, index
    refined = _OpenBlock(onset=run.samples[best_index][0])
    for sample in run.samples[best_index:]:
        refined.add(*sample)
    refined.samples, refined.recording = [], False
    return refined


class _OpenBlock:
    """Bookkeeping of a (candidate or open) blocked segment and its back-to-ok CUSUM."""

    def __init__(self, onset: int) -> None:
        self.onset = self.alarm = self.last_seen = onset
        self.probe_hours = self.blocked_hours = 0
        self.blocked_probe_hours = 0.0
        self.peak_share = 0.0
        self.s_down = 0.0
        self.down_start: int | None = None
        # Hours seen while the back-to-ok CUSUM runs: counted only if it falls
        # back to zero (the block went on), dropped if the segment closes.
        self.pending: list[tuple[int, int, float]] = []
        self.samples: list[tuple[int, int, float]] = []  # kept while a candidate run
        self.recording = True

    def add(self, hour: int, n: int, k: float) -> None:
        if self.recording:
            self.samples.append((hour, n, k))
        self.probe_hours += n
        self.blocked_probe_hours += k
        if k > 0:
            self.blocked_hours += 1
            self.last_seen = hour
            self.peak_share = max(self.peak_share, k / n)

    def step(self, hour: int, n: int, k: float, params: BlockingParams) -> int | None:
        """Feed one hour; return the end hour if the segment just closed."""
        # Test "back to p0" against the share seen so far in this segment, so a
        # full block ends within an hour of ok probes and a partial one needs more.
        share = self.blocked_probe_hours / self.probe_hours if self.probe_hours else params.p1
        p_high = min(max(share, params.p1), params.p_max)
        down_blocked, down_ok = _llr_pair(p_high, params.p0)
        increment = k * down_blocked + (n - k) * down_ok
        if self.s_down <= 0.0 and increment > 0.0:
            self.down_start = hour
        self.s_down = max(0.0, self.s_down + increment)
        if self.s_down >= params.h_close and self.down_start is not None:
            return self.down_start
        if self.s_down <= 0.0:
            for held in self.pending:
                self.add(*held)
            self.pending.clear()
            self.down_start = None
            self.add(hour, n, k)
        else:
            self.pending.append((hour, n, k))
        return None

    def close_by_silence(self, last_hour: int) -> Segment:
        """The segment when data stops for good: it ends where the back-to-ok test began, else after the data."""
        if self.s_down > 0.0 and self.down_start is not None:
            return self.segment(end=self.down_start, closed_by_silence=True)
        for held in self.pending:
            self.add(*held)
        self.pending.clear()
        return self.segment(end=last_hour + 1, closed_by_silence=True)

    def segment(self, end: int | None, closed_by_silence: bool = False) -> Segment:
        return Segment(
            onset=self.onset,
            alarm=self.alarm,
            end=end,
            last_seen=self.last_seen,
            peak_share=round(self.peak_share, 4),
            n_probe_hours=self.probe_hours,
            n_blocked_probe_hours=round(self.blocked_probe_hours, 3),
            extra={"closed_by_silence": 1.0} if closed_by_silence else {},
        )


@dataclass(frozen=True)
class HourVolume:
    """One hour of one network: how many measurements arrived."""

    hour: int
    n_measurements: int


def detect_volume_collapse(hours: Sequence[HourVolume], params: VolumeParams = VolumeParams()) -> list[Segment]:
    """Collapse segments of one network's measurement volume; `hours` sorted, absent hours silent."""
    return _detect_volume_collapse(_with_silent_hours(hours, params), params)


def _with_silent_hours(hours: Sequence[HourVolume], params: VolumeParams) -> Iterator[HourVolume]:
    """`hours` with every absent hour between two samples as a zero-measurement hour.

    A long silence is not unrolled in full: after `baseline_hours +
    warmup_hours` zero hours the detector's state no longer changes (its
    baseline window holds only zeros, or a collapse is open and only its last
    low hour moves), so the rest of the silence is skipped to its last hour.
    That keeps a months-long silence (a folded gap row) cheap and gives the
    same segments as the fully dense grid.
    """
    enough = params.baseline_hours + params.warmup_hours + 1
    previous: int | None = None
    for sample in hours:
        if previous is not None and sample.hour - previous > 1:
            silent = range(previous + 1, sample.hour)
            for hour in silent[:enough]:
                yield HourVolume(hour, 0)
            if len(silent) > enough:
                yield HourVolume(silent[-1], 0)
        yield sample
        previous = sample.hour


def _detect_volume_collapse(hours: Iterable[HourVolume], params: VolumeParams) -> list[Segment]:
    log_ratio = math.log(params.collapse_ratio)
    segments: list[Segment] = []
    window = _TrailingMedian(params.baseline_hours)
    first_hour: int | None = None
    s_up = 0.0
    streak_start: int | None = None  # first hour of the current run of low hours
    collapse: dict[str, float] | None = None  # baseline, s_down, down_start, onset, alarm, last_low
    for sample in hours:
        x = sample.n_measurements
        if first_hour is None:
            if x <= 0:
                continue
            first_hour = sample.hour
        if collapse is None:
            baseline = window.median()
            armed = sample.hour - first_hour >= params.warmup_hours and baseline >= params.min_baseline
            if not armed:
                window.push(x)
                continue
            increment = x * log_ratio + baseline * (1.0 - params.collapse_ratio)
            s_up = max(0.0, s_up + increment)
            if increment > 0.0:
                streak_start = sample.hour if streak_start is None else streak_start
            else:
                streak_start = None
            # The collapse must be *consecutive* low hours: two short gaps a few
            # hours apart are two gaps, not a collapse.
            if (
                s_up >= params.h_open
                and streak_start is not None
                and sample.hour - streak_start + 1 >= params.min_low_hours
            ):
                collapse = {"baseline": baseline, "s_down": 0.0, "down_start": -1.0,
                            "onset": streak_start, "alarm": sample.hour, "last_low": sample.hour}
                s_up, streak_start = 0.0, None
            else:
                # Hours of a candidate collapse stay out of the baseline only
                # once it is confirmed; until then they are ordinary history.
                window.push(x)
            continue
        baseline = collapse["baseline"]
        increment = -x * log_ratio - baseline * (1.0 - params.collapse_ratio)
        if collapse["s_down"] <= 0.0 and increment > 0.0:
            collapse["down_start"] = sample.hour
        collapse["s_down"] = max(0.0, collapse["s_down"] + increment)
        if collapse["s_down"] <= 0.0:
            collapse["last_low"] = sample.hour
        if collapse["s_down"] >= params.h_close:
            segments.append(_volume_segment(collapse, end=int(collapse["down_start"])))
            collapse = None
            s_up = 0.0
            window.push(x)
    if collapse is not None:
        segments.append(_volume_segment(collapse, end=None))
    return segments


def _volume_segment(state: dict[str, float], end: int | None) -> Segment:
    return Segment(
        onset=int(state["onset"]),
        alarm=int(state["alarm"]),
        end=end,
        last_seen=int(state["last_low"]),
        peak_share=0.0,
        extra={"baseline_per_hour": round(state["baseline"], 3)},
    )


class _TrailingMedian:
    """Median of the last `size` values, kept sorted (O(size) per push)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.order: list[int] = []
        self.fifo: list[int] = []
        self.head = 0

    def push(self, value: int) -> None:
        self.fifo.append(value)
        bisect.insort(self.order, value)
        if len(self.fifo) - self.head > self.size:
            old = self.fifo[self.head]
            self.head += 1
            del self.order[bisect.bisect_left(self.order, old)]
            if self.head > 4 * self.size:
                self.fifo, self.head = self.fifo[self.head :], 0

    def median(self) -> float:
        count = len(self.order)
        if count == 0:
            return 0.0
        middle = count // 2
        if count % 2:
            return float(self.order[middle])
        return (self.order[middle - 1] + self.order[middle]) / 2.0
