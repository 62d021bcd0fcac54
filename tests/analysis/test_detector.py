"""The change detector on hand-made and seeded-random hourly series."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from wallwatch.analysis.events.detector import (
    BlockingParams,
    HourCounts,
    HourVolume,
    VolumeParams,
    detect_blocking,
    detect_volume_collapse,
)

WEEK = 7 * 24


def _series(rng: random.Random, hours: int, share_at, probes: int = 4, noise: float = 0.02,
            silent=lambda hour: False) -> list[HourCounts]:
    out = []
    for hour in range(hours):
        n = 0 if silent(hour) else probes
        share = share_at(hour) or noise
        out.append(HourCounts(hour, n, sum(rng.random() < share for _ in range(n))))
    return out


def test_full_block_has_exact_onset_and_end() -> None:
    hours = [HourCounts(h, 4, 4 if 100 <= h < 150 else 0) for h in range(300)]
    (segment,) = detect_blocking(hours)
    assert (segment.onset, segment.end) == (100, 150)
    assert segment.alarm == 101  # the evidence floor wants blocked probes in two hours
    assert segment.peak_share == 1.0
    assert segment.n_blocked_probe_hours == 200


def test_block_still_on_at_the_end_is_ongoing() -> None:
    hours = [HourCounts(h, 3, 3 if h >= 200 else 0) for h in range(240)]
    (segment,) = detect_blocking(hours)
    assert segment.onset == 200 and segment.end is None and segment.last_seen == 239


def test_hours_without_probes_neither_open_nor_close_a_block() -> None:
    hours = [HourCounts(h, 0 if 120 <= h < 140 else 4, 4 if 100 <= h < 160 else 0) for h in range(300)]
    (segment,) = detect_blocking(hours)
    assert (segment.onset, segment.end) == (100, 160)


def test_one_flaky_hour_is_not_a_block() -> None:
    hours = [HourCounts(h, 4, 3 if h == 50 else 0) for h in range(200)]
    assert detect_blocking(hours) == []


def test_stray_blocked_probe_before_a_block_does_not_move_the_onset() -> None:
    hours = [HourCounts(h, 4, 4 if 100 <= h < 150 else (1 if h == 97 else 0)) for h in range(300)]
    (segment,) = detect_blocking(hours)
    assert segment.onset == 100


def test_partial_blocking_at_30_percent_is_one_segment() -> None:
    rng = random.Random(5)
    hours = _series(rng, 4 * WEEK, lambda h: 0.3 if 300 <= h < 450 else 0.0)
    (segment,) = detect_blocking(hours)
    assert abs(segment.onset - 300) <= 2
    assert segment.end is not None and abs(segment.end - 450) <= 6
    assert 0.2 < segment.n_blocked_probe_hours / segment.n_probe_hours < 0.4


def test_quiet_series_with_noise_have_no_segments() -> None:
    for seed in range(20):
        rng = random.Random(seed)
        assert detect_blocking(_series(rng, 4 * WEEK, lambda h: 0.0)) == [], seed


def test_a_lower_threshold_is_noisier_so_the_threshold_matters() -> None:
    rng = random.Random(11)
    noisy = [_series(rng, 4 * WEEK, lambda h: 0.0, noise=0.06) for _ in range(10)]
    loose = BlockingParams(h_open=4.0, min_blocked_hours=1, min_blocked_probes=1)
    assert sum(len(detect_blocking(s, loose)) for s in noisy) > sum(len(detect_blocking(s)) for s in noisy)


def test_detection_is_deterministic() -> None:
    hours = _series(random.Random(3), 2 * WEEK, lambda h: 1.0 if 100 <= h < 130 else 0.0)
    assert detect_blocking(hours) == detect_blocking(list(hours))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 8)), max_size=300))
def test_any_counts_give_ordered_well_formed_segments(counts: list[tuple[int, int]]) -> None:
    hours = [HourCounts(h, n, k) for h, (n, k) in enumerate(counts)]  # k may exceed n: clamped
    segments = detect_blocking(hours)
    previous_end = -1
    for segment in segments:
        assert previous_end <= segment.onset <= segment.alarm
        assert segment.end is None or segment.end > segment.onset
        previous_end = segment.end if segment.end is not None else 10**9
    assert all(s.end is not None for s in segments[:-1])


def _volume(rng: random.Random, hours: int, factor_at, rate: float = 5.0) -> list[HourVolume]:
    # Binomial counts around `rate` per hour (20 chances at rate/20).
    return [HourVolume(h, sum(rng.random() < rate * factor_at(h) / 20 for _ in range(20))) for h in range(hours)]


def test_volume_collapse_has_onset_and_end() -> None:
    rng = random.Random(1)
    hours = _volume(rng, 3 * WEEK, lambda h: 0.0 if 200 <= h < 230 else 1.0)
    (segment,) = detect_volume_collapse(hours)
    assert (segment.onset, segment.end) == (200, 230)
    assert segment.alarm == 205  # six consecutive silent hours
    assert segment.extra["baseline_per_hour"] >= 3


def test_short_silences_and_warmup_are_not_collapses() -> None:
    rng = random.Random(2)
    silences = {(100 + 30 * i + j) for i in range(10) for j in range(4)}  # 4-hour gaps
    hours = _volume(rng, 3 * WEEK, lambda h: 0.0 if h in silences or 10 <= h < 30 else 1.0)
    assert detect_volume_collapse(hours) == []
    # The same silences count once they last long enough.
    long_gap = _volume(rng, 3 * WEEK, lambda h: 0.0 if 300 <= h < 320 else 1.0)
    assert len(detect_volume_collapse(long_gap)) == 1


def test_collapse_to_nothing_until_the_end_is_ongoing_and_needs_a_baseline() -> None:
    hours = [HourVolume(h, 0 if h >= 150 else 6) for h in range(200)]
    (segment,) = detect_volume_collapse(hours)
    assert segment.onset == 150 and segment.end is None
    sparse = [HourVolume(h, 0 if h >= 150 or h % 3 else 1) for h in range(200)]  # median 0: not watched
    assert detect_volume_collapse(sparse, VolumeParams()) == []


# -- silences: gap decay, silence closing, and dense == folded ------------------------------


def test_evidence_before_a_silence_of_days_decays() -> None:
    """Four blocked probe-hours (~8.5 nats) then five silent days then two more: no block once decayed."""
    before = [HourCounts(h, 1, 1) for h in range(4)]
    after = [HourCounts(h, 1, 1) for h in range(124, 126)]
    assert detect_blocking(before + after) == []
    # Without the decay (an endless half-life) the same hours add up to a block: the decay is what decides.
    never = BlockingParams(gap_halflife_hours=1e12)
    (segment,) = detect_blocking(before + after, never)
    assert segment.onset == 0
    # A silence of less than a day does not decay anything.
    (close,) = detect_blocking(before + [HourCounts(h, 1, 1) for h in range(20, 22)])
    assert close.onset == 0


def test_a_block_whose_data_stops_for_weeks_ends_at_its_last_evidence() -> None:
    blocked = [HourCounts(h, 4, 4) for h in range(100, 150)]
    later_ok = [HourCounts(h, 4, 0) for h in range(150 + 60 * 24, 150 + 61 * 24)]
    (segment,) = detect_blocking(blocked + later_ok)
    assert (segment.onset, segment.end, segment.last_seen) == (100, 150, 149)
    assert segment.extra == {"closed_by_silence": 1.0}
    # Blocked again after the silence: a new segment, not one spanning two months without data.
    later_blocked = [HourCounts(h, 4, 4) for h in range(150 + 60 * 24, 150 + 61 * 24)]
    first, second = detect_blocking(blocked + later_blocked)
    assert first.end == 150 and second.onset == 150 + 60 * 24 and second.end is None
    # Within two weeks the block simply goes on.
    week_later = [HourCounts(h, 4, 4) for h in range(150 + 7 * 24, 150 + 8 * 24)]
    (one,) = detect_blocking(blocked + week_later)
    assert one.end is None and one.extra == {}


def test_volume_detector_gives_the_same_segments_with_silent_hours_absent() -> None:
    rng = random.Random(7)
    # A baseline, a 30-hour collapse, a 60-day silence, data again, and a silence to the end.
    dense = _volume(rng, 100 * 24, lambda h: 0.0 if 300 <= h < 330 or 600 <= h < 600 + 60 * 24
                    or h >= 90 * 24 else 1.0)
    folded = [h for h in dense if h.n_measurements or h.hour in (dense[-1].hour,)]
    expected = detect_volume_collapse(dense)
    assert [(s.onset, s.end) for s in expected] == [(300, 330), (600, 600 + 60 * 24), (90 * 24, None)]
    assert detect_volume_collapse(folded) == expected
    assert [s.last_seen for s in detect_volume_collapse(folded)] == [s.last_seen for s in expected]


def test_blocking_detector_ignores_whether_empty_hours_are_rows() -> None:
    rng = random.Random(8)
    dense = _series(rng, 60 * 24, lambda h: 1.0 if 200 <= h < 400 or 40 * 24 <= h < 41 * 24 else None,
                    silent=lambda h: 500 <= h < 30 * 24 or h % 7 == 0)
    decisive = [h for h in dense if h.n_probes]
    assert detect_blocking(decisive) == detect_blocking(dense)
    assert len(detect_blocking(dense)) == 2


def test_the_stated_minimum_evidence_is_what_the_detector_needs() -> None:
    """The number every page states (`minimum_evidence`) is the detector's own: n - 1 blocked
    probe-hours open nothing, n do, whether spread over days or packed into two hours."""
    from wallwatch.analysis.events.detector import min_blocked_probe_hours, minimum_evidence

    n = min_blocked_probe_hours()
    assert f"at least {n} blocked probe-hours" in minimum_evidence()
    daily = [HourCounts(1000 + 24 * day, 1, 1.0) for day in range(n)]
    assert detect_blocking(daily[:-1]) == [] and len(detect_blocking(daily)) == 1
    packed = [HourCounts(1000, n - 1, n - 1.0), HourCounts(1001, 1, 1.0)]
    assert len(detect_blocking(packed)) == 1
    assert detect_blocking([HourCounts(1000, n - 2, n - 2.0), HourCounts(1001, 1, 1.0)]) == []
    strict = BlockingParams(h_open=20.0)
    assert min_blocked_probe_hours(strict) > n and "20 nats" in minimum_evidence(strict)
