"""Ingest + verdict throughput next to the parse ceiling and oonidata's typed parse, same files, same run.

    .venv/bin/python bench/bench_ingest.py [--count 2000] [--files 4]

Corpus: the real samples in ../shared/ooni-samples replicated round-robin with fresh
report ids (so every record is a distinct measurement) into `--files` .jsonl.gz files
in a temp dir. Three passes over the same files:

  (a) orjson.loads of every line (gunzip + parse): the ceiling for any Python ingest;
  (b) oonidata 0.3.0 (PyPI) `load_measurement` into its typed models, parse only;
  (c) wallwatch ingest: parse + observations + verdicts + Parquet writes.

oonidata pins cryptography~=38 and click~=8.0, which conflict with wallwatch's own
requirements (cryptography>=42), so it is not installed into the project venv; the
bench runs it in a side venv (`$WALLWATCH_OONIDATA_PYTHON`, default
/tmp/wallwatch-oonidata-venv/bin/python, created with
`python3 -m venv /tmp/wallwatch-oonidata-venv && /tmp/wallwatch-oonidata-venv/bin/pip install oonidata==0.3.0`).
If it is missing the bench says why and still prints (a) and (c).
Target (issue 3): (c) >= 5x (b).
"""

from __future__ import annotations

import argparse
import gzip
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "ooni-samples"
OONIDATA_PYTHON = os.environ.get("WALLWATCH_OONIDATA_PYTHON", "/tmp/wallwatch-oonidata-venv/bin/python")

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


def make_corpus(directory: Path, count: int, files: int) -> list[Path]:
    from wallwatch.analysis.ingest import discover

    samples = [orjson.loads(p.read_bytes()) for p in discover([SAMPLES])]
    paths = [directory / f"corpus-{i}.jsonl.gz" for i in range(files)]
    handles = [gzip.open(p, "wb", compresslevel=1) for p in paths]
    try:
        for i in range(count):
            record = dict(samples[i % len(samples)], report_id=f"bench-{i}")
            record.pop("measurement_uid", None)
            handles[i % files].write(orjson.dumps(record) + b"\n")
    finally:
        for handle in handles:
            handle.close()
    return paths


def parse_ceiling(paths: list[Path]) -> tuple[int, float]:
    n, start = 0, time.perf_counter()
    for path in paths:
        with gzip.open(path, "rb") as handle:
            for line in handle:
                orjson.loads(line)
                n += 1
    return n, time.perf_counter() - start


def oonidata_parse(paths: list[Path]) -> tuple[int, float] | str:
    if not Path(OONIDATA_PYTHON).exists():
        return f"oonidata side venv not found at {OONIDATA_PYTHON} (see the module docstring)"
    result = subprocess.run([OONIDATA_PYTHON, "-c", _OONIDATA_SCRIPT, *map(str, paths)],
                            capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        return f"oonidata failed: {result.stderr.strip().splitlines()[-1:]}"
    n, seconds, failed = result.stdout.split()
    if int(failed):
        print(f"(b) oonidata: {failed} of {n} records failed to parse (counted in its time)")
    return int(n), float(seconds)


def wallwatch_ingest(paths: list[Path], data_dir: Path, keep_raw: bool) -> tuple[int, float]:
    from wallwatch.analysis.ingest import ingest

    start = time.perf_counter()
    summary = ingest(paths, data_dir, keep_raw=keep_raw)
    return summary.stored, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--files", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ww-bench-") as tmp:
        tmp_path = Path(tmp)
        paths = make_corpus(tmp_path, args.count, args.files)
        size_mb = sum(p.stat().st_size for p in paths) / 1e6
        raw_mb = sum(len(line) for p in paths for line in gzip.open(p, "rb")) / 1e6
        print(f"corpus: {args.count} measurements in {args.files} .jsonl.gz files, "
              f"{size_mb:.1f} MB compressed / {raw_mb:.1f} MB JSON")
        rates: dict[str, float] = {}
        n, s = parse_ceiling(paths)
        rates["(a) orjson.loads only"] = n / s
        outcome = oonidata_parse(paths)
        if isinstance(outcome, str):
            print(f"(b) oonidata: skipped: {outcome}")
        else:
            rates["(b) oonidata 0.3.0 parse"] = outcome[0] / outcome[1]
        n, s = wallwatch_ingest(paths, tmp_path / "data", keep_raw=True)
        assert n == args.count, n
        rates["(c) wallwatch ingest+verdicts"] = n / s
        n, s = wallwatch_ingest(paths, tmp_path / "data-noraw", keep_raw=False)
        rates["(c') same, --no-raw"] = n / s
        for name, rate in rates.items():
            print(f"{name:34s} {rate:10.0f} measurements/s")
        base = rates.get("(b) oonidata 0.3.0 parse")
        ceiling = rates["(a) orjson.loads only"]
        if base:
            print(f"parse ceiling / oonidata parse = {ceiling / base:.2f}x: any ingest that parses every record "
                  f"{'cannot' if ceiling < 5 * base else 'can'} reach 5x oonidata on this corpus")
        for name in ("(c) wallwatch ingest+verdicts", "(c') same, --no-raw"):
            line = f"{name}: {rates[name] / ceiling:.2f}x the parse ceiling"
            if base:
                verdict = "meets" if rates[name] >= 5 * base else "misses"
                line += f", {rates[name] / base:.2f}x oonidata parse-only ({verdict} the 5x target)"
            print(line)


if __name__ == "__main__":
    sys.exit(main())
