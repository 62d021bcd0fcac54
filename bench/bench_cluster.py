"""Ingest on a Dask cluster with 1 and 2 workers next to one local process, same files, same run,
and what the measured rates mean for a year of OONI's archive.

    .venv/bin/python bench/bench_cluster.py [--count 4000] [--files 8] [--repeat 2] [--cores 8,32,128]

The corpus is bench_ingest.py's mixed one (every real sample, replicated with fresh report ids
into `--files` .jsonl.gz files). Passes, interleaved, best of `--repeat`:

  (c1)  `ingest(workers=1)`: one process reads and writes (the per-core rate);
  (k1)  `ingest(cluster=...)` on a LocalCluster of 1 worker process (1 thread): a worker reads,
        this process (the one writer) takes its Arrow batches and writes;
  (k2)  the same with 2 worker processes.

The clusters are started before the timed runs (a cluster outlives many ingests); each run still
connects, scatters the configuration and the stored uids, and tears its client down. The writer's
CPU per measurement (this process: the client, the scheduler's thread, Parquet writes) is printed
too: with one writer it bounds any cluster at 1 / (writer CPU per measurement).

Scaling efficiency = (k2) / (2 x (k1)). On this machine (2 cores, shared with other developers'
test runs) the writer and the scheduler share the cores with the two workers, so (k2) is a floor.

Projection: hours to reprocess one year of OONI's archive on N cores, N - 1 of them workers at
the (k1) rate each times the measured efficiency, capped by the one writer's ceiling. Assumptions
(printed with the figures): a year is YEAR_MEASUREMENTS measurements; they cost what the mixed
corpus costs (OONI's mix is mostly web_connectivity, which this corpus weighs more than IM tests);
the bucket delivers them as fast as they are read (S3 in the same region; not measured here); the
efficiency measured at 2 workers holds at N.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ingest import make_corpus  # noqa: E402 - the same corpus as the ingest bench

# OONI's published totals: 683 million measurements since 2012 on 2022-11-18 [OONIExplorer2022], more
# than a billion by 2023-05-30 [OONIExplorer2023], more than 2 billion in 2025 [OONIExplorer2025]:
# about half a billion a year lately. The projection uses this figure.
YEAR_MEASUREMENTS = 500_000_000


def run(paths: list[Path], data: Path, **options: object) -> tuple[float, float, int]:
    """(measurements/s, this process's CPU µs per measurement, stored)."""
    from wallwatch.analysis.ingest.pipeline import ingest

    start, cpu = time.perf_counter(), time.process_time()
    summary = ingest(paths, data, **options)
    seconds, cpu_s = time.perf_counter() - start, time.process_time() - cpu
    return summary.stored / seconds, cpu_s / max(summary.stored, 1) * 1e6, summary.stored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=4000)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--cores", default="8,32,128,512")
    args = parser.parse_args()
    from distributed import LocalCluster

    logging.getLogger("distributed").setLevel(logging.WARNING)
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
    clusters = {n: LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                                dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR) for n in (1, 2)}
    try:
        with tempfile.TemporaryDirectory(prefix="ww-bench-cluster-") as tmp:
            scratch = Path(tmp)
            paths = make_corpus(scratch / "mixed", args.count, args.files)
            passes = {
                "(c1) one process": {"workers": 1},
                "(k1) cluster, 1 worker": {"cluster": clusters[1].scheduler_address},
                "(k2) cluster, 2 workers": {"cluster": clusters[2].scheduler_address},
            }
            best: dict[str, tuple[float, float]] = {}
            for round_ in range(args.repeat):
                for label, options in passes.items():
                    rate, cpu_us, stored = run(paths, scratch / f"data-{round_}-{label[1:3]}", **options)
                    assert stored == args.count, stored
                    if rate > best.get(label, (0.0, 0.0))[0]:
                        best[label] = (rate, cpu_us)
    finally:
        for cluster in clusters.values():
            cluster.close()
    print(f"mixed corpus, {args.count} measurements in {args.files} files; best of {args.repeat}:")
    for label, (rate, cpu_us) in best.items():
        print(f"  {label:26s} {rate:8.0f}/s   (this process: {cpu_us:5.0f} µs CPU a measurement)")
    one, two = best["(k1) cluster, 1 worker"][0], best["(k2) cluster, 2 workers"][0]
    efficiency = two / (2 * one)
    writer_us = best["(k2) cluster, 2 workers"][1]
    ceiling = 1e6 / writer_us
    print(f"  scaling 1 -> 2 workers: {two / one:.2f}x, efficiency {efficiency:.0%}; "
          f"the one writer's ceiling ~{ceiling:,.0f}/s ({writer_us:.0f} µs of its CPU a measurement)")
    per_core = best["(c1) one process"][0]
    print(f"projection: one year of OONI's archive = {YEAR_MEASUREMENTS / 1e6:,.0f} M measurements "
          f"(OONI's published totals, see the docstring), at the mixed corpus's cost")
    print(f"  one process, {per_core:,.0f}/s: {YEAR_MEASUREMENTS / per_core / 3600:,.0f} h")
    for cores in (int(c) for c in args.cores.split(",")):
        workers = max(cores - 1, 1)  # one core for the writer and the scheduler
        rate = min(workers * one * efficiency, ceiling)
        bound = "writer-bound" if math.isclose(rate, ceiling) else f"{workers} workers"
        print(f"  {cores:4d} cores: {rate:9,.0f}/s -> {YEAR_MEASUREMENTS / rate / 3600:7,.1f} h ({bound})")


if __name__ == "__main__":
    main()
