"""Ingest + verdict throughput next to the parse ceiling and oonidata's typed parse, same files, same run.

    .venv/bin/python bench/bench_ingest.py [--count 2000] [--files 4] [--repeat 3]

Two corpora, each the real samples in tests/data/ooni-samples replicated round-robin
with fresh report ids (so every record is a distinct measurement) into `--files`
.jsonl.gz files in a temp dir:

  mixed: all 19 samples (web_connectivity 2016-2025 incl. the 235/352 KB minipipeline
         cases, IM tests, tor, openvpn): ~46 KB a measurement;
  im:    only the IM-test samples (whatsapp, telegram, signal, facebook_messenger),
         typical of wallwatch's own data: ~30 KB a measurement.

Passes over the same files, each repeated `--repeat` times in interleaved rounds and
the best kept (the machine is shared; the best run is the least disturbed):

  (a)  gzip + orjson.loads of every line: the parse ceiling the issue names;
  (b)  oonidata 0.3.0 (PyPI) `load_measurement` into its typed models, parse only;
  (c)  wallwatch ingest: parse + observations + verdicts + Parquet writes, raw kept
       (as a gzip copy of each input file), one worker process per CPU;
  (c1) the same with one process: the per-core rate, with the hot path compiled by mypyc when it
       is built (scripts/compile.py; analysis/compiled.py);
  (c1p) the same, one process, the pure-Python source ($WALLWATCH_PURE_PYTHON=1): before compiling;
  (c') the same as (c) with keep_raw=False.
(c1) and (c1p) run in a child process each (the source or the extensions are chosen at import),
timed inside the child.

A DuckDB-SQL engine (read_json + SQL observations/verdicts) measured 0.3-0.6x (c) on both corpora and
was removed (git keeps it: commit 591a5f5 and earlier); no workload was found where it won.

oonidata pins cryptography~=38 and click~=8.0, which conflict with wallwatch's own
requirements (cryptography>=42), so it is not installed into the project venv; the
bench runs it in a side venv (`$WALLWATCH_OONIDATA_PYTHON`, default
/tmp/wallwatch-oonidata-venv/bin/python, created with
`python3 -m venv /tmp/wallwatch-oonidata-venv && /tmp/wallwatch-oonidata-venv/bin/pip install oonidata==0.3.0 orjson`).
If it is missing the bench says why and still prints the rest.
Targets: (c) >= 5x (b) (issue 3); one process (c1) >= 2x (b) and >= 1x (a) (issue 13).

Measured 2026-11-30 (2 CPUs, quiet machine, defaults; per-stage costs in docs/storage.md):

              (a)       (b)        (c)      (c1)      (c')    (c)/(b)
  mixed   4,392/s   2,876/s   5,295/s   3,484/s   5,390/s   1.84x  (was 4,608/s, 1.59x)
  im      7,135/s   3,023/s   6,202/s   4,428/s   6,123/s   2.05x  (was 4,902/s, 1.63x)
  --count 8000 --files 8 --repeat 2:
  mixed   4,376/s   2,795/s   6,188/s   3,675/s   6,457/s   2.21x  (was 5,564/s, 1.93x)
  im      7,043/s   3,020/s   6,950/s   4,467/s   6,981/s   2.30x  (was 5,742/s, 1.90x)

Target not met: 5x is ~15,100/s, 132 µs of CPU per measurement on 2 cores for everything, and
gunzip + decode alone take ~70 (im) / ~110 (mixed) µs of it.
"""

from __future__ import annotations

import argparse
import gzip
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson

SAMPLES = Path(__file__).resolve().parents[1] / "tests" / "data" / "ooni-samples"
OONIDATA_PYTHON = os.environ.get("WALLWATCH_OONIDATA_PYTHON", "/tmp/wallwatch-oonidata-venv/bin/python")
IM_TESTS = frozenset({"whatsapp", "telegram", "signal", "facebook_messenger"})
TARGET = 5.0

_OONIDATA_SCRIPT = r"""
import gzip, sys, time, orjson
from oonidata.dataclient import load_measurement
paths = sys.argv[1:]
n = failed = 0
start = time.perf_counter()
for path in paths:
    with gzip.open(path, "rb") as handle:
        for line in handle:
            n += 1
            try:
                load_measurement(msmt=orjson.loads(line))
            except Exception:
                failed += 1  # e.g. the 2019 telegram sample: oonidata's model requires `input`
print(n, time.perf_counter() - start, failed)
"""


def make_corpus(directory: Path, count: int, files: int, tests: frozenset[str] | None = None) -> list[Path]:
    from wallwatch.analysis.ingest.pipeline import discover

    samples = [orjson.loads(p.read_bytes()) for p in discover([SAMPLES])]
    if tests is not None:
        samples = [s for s in samples if s.get("test_name") in tests]
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"corpus-{i}.jsonl.gz" for i in range(files)]
    handles = [gzip.open(p, "wb", compresslevel=1) for p in paths]
    try:
        for i in range(count):
            record = dict(samples[i % len(samples)], report_id=f"bench-{directory.name}-{i}")
            record.pop("measurement_uid", None)
            handles[i % files].write(orjson.dumps(record) + b"\n")
    finally:
        for handle in handles:
            handle.close()
    return paths


def parse_ceiling(paths: list[Path], _: Path) -> tuple[int, float, float]:
    n, start, cpu = 0, time.perf_counter(), time.process_time()
    for path in paths:
        with gzip.open(path, "rb") as handle:
            for line in handle:
                orjson.loads(line)
                n += 1
    return n, time.perf_counter() - start, time.process_time() - cpu


def oonidata_parse(paths: list[Path], _: Path) -> tuple[int, float, float] | str:
    if not Path(OONIDATA_PYTHON).exists():
        return f"oonidata side venv not found at {OONIDATA_PYTHON} (see the module docstring)"
    result = subprocess.run([OONIDATA_PYTHON, "-c", _OONIDATA_SCRIPT, *map(str, paths)],
                            capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        return f"oonidata failed: {result.stderr.strip().splitlines()[-1:]}"
    n, seconds, failed = result.stdout.split()
    if int(failed):
        print(f"    (b) oonidata: {failed} of {n} records failed its model (counted in its time)")
    return int(n), float(seconds), float(seconds)


def wallwatch_ingest(keep_raw: bool, workers: int | None) -> Callable[[list[Path], Path], tuple[int, float, float]]:
    def run(paths: list[Path], data_dir: Path) -> tuple[int, float, float]:
        from wallwatch.analysis.ingest.pipeline import ingest

        start, before = time.perf_counter(), os.times()
        summary = ingest(paths, data_dir, keep_raw=keep_raw, workers=workers)
        seconds, after = time.perf_counter() - start, os.times()
        cpu = sum(after[:4]) - sum(before[:4])  # user+system of this process and its (joined) workers
        if summary.stored != sum(1 for p in paths for _ in gzip.open(p, "rb")):
            raise AssertionError(f"stored {summary.stored}: {summary.as_dict()}")
        return summary.stored, seconds, cpu
    return run


_INGEST_SCRIPT = r"""
import os, sys, time
from pathlib import Path
from wallwatch.analysis import compiled
from wallwatch.analysis.ingest.pipeline import ingest
import wallwatch.analysis.verdicts.observations as observations
from wallwatch.analysis.verdicts.fingerprints import load_fingerprints
from wallwatch.analysis.verdicts.rules import default_rule_sets
default_rule_sets(), load_fingerprints()  # loaded before the clock starts, as a long ingest amortises them
start, before = time.perf_counter(), os.times()
summary = ingest([Path(p) for p in sys.argv[2:]], Path(sys.argv[1]), workers=1)
seconds, after = time.perf_counter() - start, os.times()
print(summary.stored, seconds, sum(after[:4]) - sum(before[:4]), compiled.is_compiled(observations))
"""


def one_process(pure: bool) -> Callable[[list[Path], Path], tuple[int, float, float] | str]:
    """ingest(workers=1) in a child process: compiled when built (or not, `pure`)."""
    def run(paths: list[Path], data_dir: Path) -> tuple[int, float, float] | str:
        env = {k: v for k, v in os.environ.items() if k != "WALLWATCH_PURE_PYTHON"}
        if pure:
            env["WALLWATCH_PURE_PYTHON"] = "1"
        result = subprocess.run([sys.executable, "-c", _INGEST_SCRIPT, str(data_dir), *map(str, paths)], env=env,
                                capture_output=True, text=True, timeout=1800)
        if result.returncode != 0:
            return f"failed: {result.stderr.strip().splitlines()[-1:]}"
        stored, seconds, cpu, is_compiled = result.stdout.split()
        if not pure and is_compiled != "True":
            return "the hot path is not compiled here (run scripts/compile.py)"
        return int(stored), float(seconds), float(cpu)
    return run


def bench_corpus(name: str, paths: list[Path], scratch: Path, repeat: int) -> dict[str, tuple[float, float]]:
    passes: dict[str, Callable[[list[Path], Path], tuple[int, float, float] | str]] = {
        "(a)  gzip + orjson.loads only": parse_ceiling,
        "(b)  oonidata 0.3.0 parse only": oonidata_parse,
        "(c)  wallwatch ingest+verdicts": wallwatch_ingest(True, None),
        "(c1) same, one process": one_process(pure=False),
        "(c1p) one process, pure Python": one_process(pure=True),
        "(c') same as (c), keep_raw=False": wallwatch_ingest(False, None),
    }
    best: dict[str, tuple[float, float]] = {}  # name -> (measurements/s, CPU µs per measurement)
    for round_ in range(repeat):
        for label, run in passes.items():
            data_dir = scratch / f"data-{name}-{round_}-{len(best)}-{label[:4].strip('( )')}"
            outcome = run(paths, data_dir)
            if isinstance(outcome, str):
                print(f"    {label}: skipped: {outcome}")
                passes = {k: v for k, v in passes.items() if k != label}
                break
            n, seconds, cpu = outcome
            rate = n / seconds
            if rate > best.get(label, (0.0, 0.0))[0]:
                best[label] = (rate, cpu / n * 1e6)
    return best


def report(name: str, best: dict[str, tuple[float, float]]) -> bool | None:
    print(f"  {name}: best of the rounds, measurements/s (CPU µs per measurement, all processes)")
    for label, (rate, cpu_us) in best.items():
        print(f"    {label:34s} {rate:9.0f}/s  ({cpu_us:5.0f} µs CPU)")
    ceiling = best["(a)  gzip + orjson.loads only"][0]
    base = best.get("(b)  oonidata 0.3.0 parse only", (0.0, 0.0))[0]
    ours = best["(c)  wallwatch ingest+verdicts"][0]
    line = f"    (c) = {ours / ceiling:.2f}x the parse ceiling (a)"
    met = None
    if base:
        met = ours >= TARGET * base
        line += (f", {ours / base:.2f}x oonidata (b); target {TARGET:.0f}x = {TARGET * base:.0f}/s: "
                 f"{'MET' if met else 'NOT MET'}")
    print(line)
    for label in ("(c1) same, one process", "(c1p) one process, pure Python", "(c') same as (c), keep_raw=False"):
        if base and label in best:
            print(f"    {label}: {best[label][0] / base:.2f}x oonidata, {best[label][0] / ceiling:.2f}x (a)")
    if "(c1) same, one process" in best and "(c1p) one process, pure Python" in best:
        one, pure = best["(c1) same, one process"][0], best["(c1p) one process, pure Python"][0]
        print(f"    compiled / pure Python, one process: {one / pure:.2f}x")
        if base:
            print(f"    issue 13 targets, one process: (c1) >= 2x (b): {one / base:.2f}x "
                  f"{'MET' if one >= 2 * base else 'NOT MET'}; (c1) >= 1x (a): {one / ceiling:.2f}x "
                  f"{'MET' if one >= ceiling else 'NOT MET'}")
    if base and not met and "(c1) same, one process" in best:
        # Workers share nothing but the parent's Parquet writes, so the rate scales with cores
        # up to the parent's share; this is the floor, not a promise.
        cores = math.ceil(TARGET * base / best["(c1) same, one process"][0])
        print(f"    at the one-process rate the {TARGET:.0f}x target needs >= {cores} free cores "
              f"(this machine: {os.cpu_count()}, shared)")
    return met


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
    verdicts = []
    with tempfile.TemporaryDirectory(prefix="ww-bench-") as tmp:
        scratch = Path(tmp)
        for name, tests in (("mixed", None), ("im", IM_TESTS)):
            paths = make_corpus(scratch / name, args.count, args.files, tests)
            size_mb = sum(p.stat().st_size for p in paths) / 1e6
            raw_mb = sum(len(line) for p in paths for line in gzip.open(p, "rb")) / 1e6
            print(f"corpus {name}: {args.count} measurements in {args.files} .jsonl.gz files, "
                  f"{size_mb:.1f} MB compressed / {raw_mb:.1f} MB JSON ({raw_mb * 1e3 / args.count:.0f} KB each)")
            verdicts.append(report(name, bench_corpus(name, paths, scratch, args.repeat)))
    if all(v is not None for v in verdicts):
        print(f"issue 3 target ((c) >= {TARGET:.0f}x oonidata): " + ", ".join(
            f"{name} {'met' if v else 'not met'}" for name, v in zip(("mixed", "im"), verdicts)))


if __name__ == "__main__":
    sys.exit(main())
