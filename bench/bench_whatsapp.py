"""Wall time of the whatsapp nettest in the lab: unblocked next to fully blocked.

Run as root: `.venv/bin/python bench/bench_whatsapp.py [--runs 3]`. One lab,
both policies, alternating runs so machine noise hits both alike; prints the
median of each and their ratio. The fully blocked run is bounded by the probe's
timeouts, so it shows what a user waits for in the worst case.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path


from wallwatch.lab.demo import probe_in_lab  # noqa: E402
from wallwatch.lab.capabilities import missing_lab_features  # noqa: E402
from wallwatch.lab.topology import Lab  # noqa: E402

UNBLOCKED = {"name": "none", "rules": []}
FULLY_BLOCKED = {"name": "everything", "rules": [
    {"name": "dns", "match": {"dns.qname": {"suffix": ["whatsapp.net", "whatsapp.com"]}},
     "action": "dns-inject", "answer": ["198.19.250.1"]},
    {"name": "chat-ip", "match": {"ip.dst": {"cidr": "198.19.1.0/24"}}, "action": "blackhole-ip"},
    {"name": "https-ip", "match": {"ip.dst": {"cidr": "198.19.2.0/24"}}, "action": "blackhole-ip"},
    {"name": "relays", "match": {"ip.dst": {"cidr": "198.19.3.0/24"}}, "action": "blackhole-ip"},
]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=4.0, help="the probe's per-operation timeout")
    args = parser.parse_args()
    missing = missing_lab_features()
    if missing:
        sys.exit("lab unavailable: " + "; ".join(missing))
    times: dict[str, list[float]] = {"unblocked": [], "fully blocked": []}
    with tempfile.TemporaryDirectory() as tmp, Lab.up(policy=UNBLOCKED, state_path=Path(tmp) / "lab.json") as lab:
        for _ in range(args.runs):
            for label, policy in (("unblocked", UNBLOCKED), ("fully blocked", FULLY_BLOCKED)):
                lab.set_policy(policy)
                started = time.perf_counter()
                measurement = probe_in_lab(lab, Path(tmp) / "m.jsonl", args.timeout)
                times[label].append(time.perf_counter() - started)
                verdicts = {f: v["verdict"] for f, v in measurement["test_keys"]["x_wallwatch"]["features"].items()}
                print(f"  {label:14s} {times[label][-1]:6.2f} s  {verdicts}")
    unblocked, blocked = statistics.median(times["unblocked"]), statistics.median(times["fully blocked"])
    print(f"\nwhatsapp nettest wall time (median of {args.runs}, probe timeout {args.timeout:g} s, including process start):")
    print(f"  unblocked      {unblocked:6.2f} s")
    print(f"  fully blocked  {blocked:6.2f} s")
    print(f"  ratio blocked/unblocked: {blocked / unblocked:.2f}x")


if __name__ == "__main__":
    main()
