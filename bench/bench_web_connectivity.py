"""web_connectivity over 200 inputs in the lab: concurrent next to one at a time, unblocked next to blocked.

Run as root: `.venv/bin/python bench/bench_web_connectivity.py [--inputs 200] [--parallelism 8] [--timeout 2]`.
One lab. The inputs are the 2017 list's URLs, each with a distinct query, cycled
to `--inputs`; every run is the real probe (`wallwatch probe run web_connectivity
--input-file ...`) in the client namespace, the lab's helper as its control.
Prints the wall time of the whole list measured `--parallelism` at a time and
one at a time (unblocked: the concurrency ratio), and of the list measured
concurrently under the 2017 policy, where six of the thirteen sites are blocked,
each by another technique (DNS injection, a GFW poison answer, IP black-hole,
reset on the Host, reset on the SNI, a block page): a blocked input costs its
timeouts. Times include the probe's process start (~0.5 s of imports).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from wallwatch.lab.capabilities import missing_lab_features
from wallwatch.lab.topology import Lab
from wallwatch.probe.nettests.web_connectivity import shipped_list

UNBLOCKED: dict[str, Any] = {"name": "none", "rules": []}
BLOCKED_2017: dict[str, Any] = {"name": "web-2017", "rules": [
    {"name": "dns-sink", "match": {"dns.qname": {"suffix": "www.facebook.com"}}, "action": "dns-inject"},
    {"name": "dns-poison", "match": {"dns.qname": {"suffix": "twitter.com"}}, "action": "dns-inject",
     "answer": "8.7.198.45"},
    {"name": "ip", "match": {"ip.dst": "198.19.40.1"}, "action": "blackhole-ip"},
    {"name": "host-reset", "match": {"http.host": {"suffix": "voachinese.com"}}, "action": "reset"},
    {"name": "sni-reset", "match": {"tls.sni": {"suffix": "youtube.com"}}, "action": "reset"},
    {"name": "page", "match": {"http.host": {"suffix": "rfa.org"}}, "action": "blockpage"},
]}


def inputs(count: int) -> list[str]:
    base = shipped_list()
    return [f"{url}{'&' if '?' in url else '?'}wallwatch_bench={n}" for n, url in
            ((n, base[n % len(base)]) for n in range(count))]


def run(lab: Lab, input_file: Path, output: Path, parallelism: int, timeout: float) -> tuple[float, Counter[str]]:
    output.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "wallwatch.cli", "probe", "run", "web_connectivity", "--input-file", str(input_file),
            "--option", f"parallelism={parallelism}", "--timeout", str(timeout), "--output", str(output)]
    started = time.perf_counter()
    result = lab.run_in_client(argv, timeout=3600)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"probe failed: {result.stderr[-2000:]}")
    blocking = Counter(str(json.loads(line)["test_keys"]["blocking"]) for line in output.read_text().splitlines())
    return elapsed, blocking


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--inputs", type=int, default=200)
    parser.add_argument("--parallelism", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=2.0, help="the probe's per-step timeout")
    args = parser.parse_args()
    missing = missing_lab_features()
    if missing:
        sys.exit("lab unavailable: " + "; ".join(missing))
    with tempfile.TemporaryDirectory() as tmp, Lab.up(policy=UNBLOCKED, state_path=Path(tmp) / "lab.json") as lab:
        input_file, output = Path(tmp) / "inputs.txt", Path(tmp) / "out.jsonl"
        input_file.write_text("\n".join(inputs(args.inputs)) + "\n")
        concurrent, seen = run(lab, input_file, output, args.parallelism, args.timeout)
        print(f"  unblocked, {args.parallelism} at a time: {concurrent:7.2f} s  {dict(seen)}")
        one, seen = run(lab, input_file, output, 1, args.timeout)
        print(f"  unblocked, one at a time:  {one:7.2f} s  {dict(seen)}")
        lab.set_policy(BLOCKED_2017)
        blocked, seen = run(lab, input_file, output, args.parallelism, args.timeout)
        print(f"  2017 policy, {args.parallelism} at a time: {blocked:7.2f} s  {dict(seen)}")
    print(f"\nweb_connectivity over {args.inputs} inputs (per-step timeout {args.timeout:g} s, including process start):")
    print(f"  one at a time / {args.parallelism} at a time (unblocked): {one / concurrent:5.2f}x "
          f"({one:.2f} s / {concurrent:.2f} s)")
    print(f"  blocked / unblocked ({args.parallelism} at a time):       {blocked / concurrent:5.2f}x "
          f"({blocked:.2f} s / {concurrent:.2f} s)")


if __name__ == "__main__":
    main()
