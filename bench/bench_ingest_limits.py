"""Ingest under hostile or unusual input, and the cost of the crash-safe store, side by side.

    .venv/bin/python bench/bench_ingest_limits.py [--src OTHER/src] [--only bomb,array,files,throughput]

Each case runs `wallwatch.analysis.ingest.pipeline.ingest` in a child process, once per code
tree given (`--src`, default: this checkout's `src/` only; add e.g. the `src/` of a checkout of
main to see before -> after in one run), and prints, per tree, the wall time, the peak RSS of
the ingest's parent process, of its largest worker, and of the whole process tree (sampled
every 50 ms from /proc, summed over the tree). A tree whose total passes `--rss-cap-mb` is
killed and reported as such (the old line buffer needed several GB for these files).

Cases (issue 9, "Memory bounded by configuration, not by input"; target: under 500 MB each):

  bomb:   a gzip bomb, one line of `--bomb-mb` MB (default 1024) with no newline, ~1 MB compressed;
  array:  one JSON array of `--array` (default 50,000) IM-test measurements (~30 KB each) on one
          line, gzipped: 1.4 GB of JSON that no reader may hold whole;
  files:  `--files` (default 10,000) small .jsonl files of one measurement each.

  throughput: bench_ingest.py's mixed corpus (`--count` measurements in 4 .jsonl.gz files), best
          of `--repeat` interleaved rounds per tree: the atomic, fsync'd store must cost no more
          than 5% (issue 9), so the figure to read is the ratio of the trees' rates.

Measured 2026-12 (2 CPUs, shared machine), main @ cdc038b -> this branch: see docs/storage.md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
from isal import igzip

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_ingest import IM_TESTS, SAMPLES, make_corpus  # noqa: E402 - the bench's own sibling

OWN_SRC = HERE.parent / "src"
TARGET_MB = 500
THROUGHPUT_BUDGET = 0.05

# Runs in the child: one ingest, then what it cost. VmHWM is this process image's peak RSS
# (proc(5); ru_maxrss would carry the forking bench's own peak over execve(2)); RUSAGE_CHILDREN is
# the largest waited-for worker (multiprocessing joins them), in KiB (getrusage(2)).
_CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from wallwatch.analysis.ingest.pipeline import ingest
data, workers, paths = Path(sys.argv[1]), int(sys.argv[2]), [Path(p) for p in sys.argv[3:]]
start = time.perf_counter()
summary = ingest(paths, data, workers=workers or None)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "summary": summary.as_dict(),
                  "parent_kb": int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM"))),
                  "worker_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants, from /proc/<pid>/task/<tid>/children (proc(5))."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as handle:
                    todo.extend(int(child) for child in handle.read().split())
        except OSError:
            continue
    return found


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_child(src: Path, data: Path, paths: list[Path], workers: int, timeout: float,
              rss_cap_mb: int) -> dict:
    """One ingest in a child process; its cost, or why it was stopped."""
    env = dict(os.environ, PYTHONPATH=str(src))
    process = subprocess.Popen([sys.executable, "-c", _CHILD, str(data), str(workers), *map(str, paths)],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    peak_kb, started, stopped = 0, time.perf_counter(), None
    while process.poll() is None:
        peak_kb = max(peak_kb, sum(_rss_kb(pid) for pid in _tree(process.pid)))
        if peak_kb > rss_cap_mb * 1024:
            stopped = f"killed at {peak_kb / 1024:,.0f} MB total RSS (cap {rss_cap_mb:,} MB)"
        elif time.perf_counter() - started > timeout:
            stopped = f"killed after {timeout:.0f} s"
        if stopped:
            os.killpg(process.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    out, err = process.communicate()
    if stopped:
        return {"stopped": stopped, "total_kb": peak_kb, "seconds": time.perf_counter() - started}
    if process.returncode != 0:
        return {"stopped": "failed: " + (err.decode(errors="replace").strip().splitlines() or ["?"])[-1],
                "total_kb": peak_kb, "seconds": time.perf_counter() - started}
    result = json.loads(out.decode().strip().splitlines()[-1])
    result["total_kb"] = peak_kb
    return result


# -- corpora ---------------------------------------------------------------------------


def _im_records() -> list[dict]:
    from wallwatch.analysis.ingest.pipeline import discover

    records = [orjson.loads(p.read_bytes()) for p in discover([SAMPLES])]
    return [r for r in records if r.get("test_name") in IM_TESTS]


def make_bomb(path: Path, megabytes: int) -> Path:
    """One line of `megabytes` MB without a newline; deflate shrinks it ~1000x (RFC 1951 §3.2.5)."""
    block = b'{"test_name": "' + b"A" * (4 * 1024 * 1024 - 15)
    with igzip.open(path, "wb", compresslevel=3) as handle:
        handle.write(block)
        filler = b"A" * (4 * 1024 * 1024)
        for _ in range(megabytes // 4 - 1):
            handle.write(filler)
    return path


def make_array(path: Path, count: int) -> Path:
    """One JSON array of `count` measurements on one line (as some exporters write them)."""
    records = _im_records()
    with igzip.open(path, "wb", compresslevel=1) as handle:
        handle.write(b"[")
        for i in range(count):
            record = dict(records[i % len(records)], report_id=f"array-{i}")
            record.pop("measurement_uid", None)
            handle.write((b"," if i else b"") + orjson.dumps(record))
        handle.write(b"]\n")
    return path


def make_small_files(directory: Path, count: int) -> Path:
    records = _im_records()
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        record = dict(records[i % len(records)], report_id=f"small-{i}")
        record.pop("measurement_uid", None)
        (directory / f"m-{i:05d}.jsonl").write_bytes(orjson.dumps(record) + b"\n")
    return directory


# -- the cases -------------------------------------------------------------------------


def _label(src: Path) -> str:
    return str(src.parent) if src.name == "src" else str(src)


def memory_case(name: str, paths: list[Path], srcs: list[Path], scratch: Path, args: argparse.Namespace) -> None:
    print(f"{name}:")
    for index, src in enumerate(srcs):
        result = run_child(src, scratch / f"data-{name}-{index}", paths, 0, args.timeout, args.rss_cap_mb)
        total = result["total_kb"] / 1024
        if "stopped" in result:
            print(f"  {_label(src):40s} {result['stopped']} ({result['seconds']:.0f} s, peak total {total:,.0f} MB)")
            continue
        summary = result["summary"]
        verdict = "under" if total < TARGET_MB else "OVER"
        print(f"  {_label(src):40s} {result['seconds']:7.1f} s  parent {result['parent_kb'] / 1024:6,.0f} MB  "
              f"largest worker {result['worker_kb'] / 1024:6,.0f} MB  total {total:6,.0f} MB "
              f"({verdict} {TARGET_MB} MB)  stored {summary['stored']}, quarantined {summary['quarantined']}")


def throughput_case(srcs: list[Path], scratch: Path, args: argparse.Namespace) -> None:
    paths = make_corpus(scratch / "throughput", args.count, 4)
    best: dict[Path, float] = {}
    for round_ in range(args.repeat):
        for index, src in enumerate(srcs):
            result = run_child(src, scratch / f"data-tp-{round_}-{index}", paths, 0, args.timeout, args.rss_cap_mb)
            if "stopped" in result:
                raise SystemExit(f"throughput run of {src} stopped: {result['stopped']}")
            rate = result["summary"]["stored"] / result["seconds"]
            best[src] = max(best.get(src, 0.0), rate)
    print(f"throughput, mixed corpus, {args.count} measurements, best of {args.repeat} (measurements/s):")
    first = best[srcs[0]]
    for src in srcs:
        print(f"  {_label(src):40s} {best[src]:8,.0f}/s  {best[src] / first:5.3f}x the first tree")
    if len(srcs) > 1:
        change = best[srcs[-1]] / best[srcs[0]] - 1
        print(f"  last vs first: {change:+.1%} (budget: -{THROUGHPUT_BUDGET:.0%}: "
              f"{'MET' if change >= -THROUGHPUT_BUDGET else 'NOT MET'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, action="append", default=[],
                        help="another code tree's src/ to run first (e.g. a checkout of main); repeatable")
    parser.add_argument("--only", default="bomb,array,files,throughput")
    parser.add_argument("--bomb-mb", type=int, default=1024)
    parser.add_argument("--array", type=int, default=50_000)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--rss-cap-mb", type=int, default=6000)
    args = parser.parse_args()
    srcs = [src.resolve() for src in args.src] + [OWN_SRC]
    cases = set(args.only.split(","))
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
    with tempfile.TemporaryDirectory(prefix="ww-bench-limits-") as tmp:
        scratch = Path(tmp)
        if "bomb" in cases:
            bomb = make_bomb(scratch / "bomb.jsonl.gz", args.bomb_mb)
            memory_case(f"gzip bomb, one {args.bomb_mb} MB line ({bomb.stat().st_size / 1e6:.1f} MB compressed)",
                        [bomb], srcs, scratch, args)
        if "array" in cases:
            array = make_array(scratch / "array.jsonl.gz", args.array)
            with gzip.open(array, "rb") as handle:
                size = sum(len(chunk) for chunk in iter(lambda: handle.read(1 << 22), b""))
            memory_case(f"one-line JSON array of {args.array:,} measurements ({size / 1e6:,.0f} MB)",
                        [array], srcs, scratch, args)
        if "files" in cases:
            folder = make_small_files(scratch / "small", args.files)
            memory_case(f"{args.files:,} small files", [folder], srcs, scratch, args)
        if "throughput" in cases:
            throughput_case(srcs, scratch, args)


if __name__ == "__main__":
    main()
