"""Evaluation harness for event detection: synthetic verdicts with known events, scored.

Runs the same path as `wallwatch events` (verdicts -> series.build_series ->
events.detect_events) on synthetic countries from
`tests/analysis/synthetic_events.py` and prints, per scenario kind and
overall: recall, onset delay in samples (hours), alarm delay (when a live run
would have said so), false events per quiet series-week, and events per true
event, against the targets of issue 3. Misses are printed as misses.

    .venv/bin/python bench/eval_events.py [--replicates 6] [--seed 20240304] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "analysis"))

from synthetic_events import KINDS, KindScore, scenarios, score, verdicts  # noqa: E402
from wallwatch.analysis.events.grouping import DetectionParams, detect_events  # noqa: E402
from wallwatch.analysis.series.build import build_series  # noqa: E402

TARGETS = {
    "recall": ">= 0.95",
    "median onset delay": "<= 1 sample",
    "false events on quiet series": "0",
    "events per true event": "exactly 1",
}


def run(replicates: int, seed: int, params: DetectionParams = DetectionParams()) -> tuple[list[KindScore], dict]:
    timings = {}
    started = time.perf_counter()
    countries = scenarios(replicates=replicates, seed=seed)
    table = verdicts(countries, seed=seed + 1)
    timings["generate_s"] = time.perf_counter() - started
    connection = duckdb.connect()
    try:
        connection.register("verdicts", table)
        started = time.perf_counter()
        hourly = build_series(connection, "hour")
        timings["series_s"] = time.perf_counter() - started
    finally:
        connection.close()
    started = time.perf_counter()
    events = detect_events(hourly, params)
    timings["detect_s"] = time.perf_counter() - started
    timings.update(verdict_rows=table.num_rows, hourly_rows=hourly.num_rows, events=len(events))
    return score(countries, events), timings


def _median(values: tuple[int, ...] | list[int]) -> float:
    return statistics.median(values) if values else float("nan")


def _p90(values: tuple[int, ...] | list[int]) -> float:
    if not values:
        return float("nan")
    ordered = sorted(abs(v) for v in values)
    return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


def table(scores: list[KindScore]) -> tuple[str, dict]:
    header = (f"{'scenario':<16}{'true':>5}{'recall':>8}{'onset med':>10}{'|onset|p90':>11}{'alarm med':>10}"
              f"{'net onset':>10}{'nets':>8}{'ev/true':>8}{'exact1':>7}{'false':>6}{'quiet sw':>9}")
    lines = [header, "-" * len(header)]
    for s in scores:
        lines.append(
            f"{s.kind:<16}{s.true_events:>5}{_fmt(s.recall, 2):>8}{_fmt(_median(s.onset_delays), 1):>10}"
            f"{_fmt(_p90(s.onset_delays), 0):>11}{_fmt(_median(s.alarm_delays), 1):>10}"
            f"{_fmt(_median(s.network_onset_delays), 1):>10}"
            f"{f'{s.networks_found}/{s.networks_true}':>8}{_fmt(s.events_per_true, 2):>8}"
            f"{s.exactly_one:>7}{s.false_events:>6}{s.quiet_series_weeks:>9.0f}"
        )
    true_events = sum(s.true_events for s in scores)
    recalled = sum(s.recalled for s in scores)
    onsets = [d for s in scores for d in s.onset_delays]
    alarms = [d for s in scores for d in s.alarm_delays]
    nets = [d for s in scores for d in s.network_onset_delays]
    exact = sum(s.exactly_one for s in scores)
    per_true = sum(s.events_per_true * s.recalled for s in scores if s.recalled) / recalled if recalled else 0.0
    false_total = sum(s.false_events for s in scores)
    quiet_weeks = sum(s.quiet_series_weeks for s in scores)
    quiet_false = sum(s.false_events for s in scores if s.kind == "quiet")
    lines.append("-" * len(header))
    lines.append(
        f"{'all':<16}{true_events:>5}{_fmt(recalled / true_events, 2):>8}{_fmt(_median(onsets), 1):>10}"
        f"{_fmt(_p90(onsets), 0):>11}{_fmt(_median(alarms), 1):>10}{_fmt(_median(nets), 1):>10}"
        f"{f'{sum(s.networks_found for s in scores)}/{sum(s.networks_true for s in scores)}':>8}"
        f"{_fmt(per_true, 2):>8}{exact:>7}{false_total:>6}{quiet_weeks:>9.0f}"
    )
    summary = {
        "recall": recalled / true_events,
        "median_onset_delay_samples": _median(onsets),
        "median_alarm_delay_samples": _median(alarms),
        "false_events_per_quiet_series_week": false_total / quiet_weeks if quiet_weeks else 0.0,
        "false_events_on_quiet_countries": quiet_false,
        "false_events_total": false_total,
        "events_per_true_event": per_true,
        "true_events_with_exactly_one_event": f"{exact}/{recalled}",
    }
    checks = [
        ("recall", summary["recall"] >= 0.95, f"{summary['recall']:.3f}", TARGETS["recall"]),
        ("median onset delay", summary["median_onset_delay_samples"] <= 1,
         f"{summary['median_onset_delay_samples']:.1f} samples", TARGETS["median onset delay"]),
        ("false events on quiet series", false_total == 0,
         f"{false_total} ({summary['false_events_per_quiet_series_week']:.4f} per quiet series-week)",
         TARGETS["false events on quiet series"]),
        ("events per true event", exact == recalled and recalled > 0,
         f"{per_true:.2f} mean, {exact}/{recalled} exactly one", TARGETS["events per true event"]),
    ]
    lines.append("")
    for name, ok, got, want in checks:
        lines.append(f"{'MET ' if ok else 'MISS'}  {name:<30} {got:<45} target {want}")
    summary["all_targets_met"] = all(ok for _, ok, _, _ in checks)
    return "\n".join(lines), summary


def _fmt(value: float, digits: int) -> str:
    return "-" if value != value else f"{value:.{digits}f}"  # NaN -> "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=6, help="countries per scenario kind")
    parser.add_argument("--seed", type=int, default=20240304)
    parser.add_argument("--json", action="store_true", help="also print the summary as JSON")
    args = parser.parse_args(argv)
    scores, timings = run(args.replicates, args.seed)
    text, summary = table(scores)
    print(f"wallwatch event-detection evaluation: {args.replicates} synthetic countries per kind "
          f"({', '.join(KINDS)}), 4 weeks hourly, seed {args.seed}")
    print("delays in samples (hours): onset = detected onset - true onset; alarm = when a live run would alert;"
          " net onset = per network; quiet sw = quiet series-weeks\n")
    print(text)
    print(f"\n{timings['verdict_rows']:,} verdict rows -> {timings['hourly_rows']:,} series-hours -> "
          f"{timings['events']} events; generate {timings['generate_s']:.2f}s, series {timings['series_s']:.2f}s, "
          f"detect+group {timings['detect_s']:.2f}s")
    if args.json:
        print(json.dumps({**summary, **timings}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
