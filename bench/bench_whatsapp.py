"""Wall time of the whatsapp nettest in the lab: unblocked next to fully blocked and throttled.

Run as root: `.venv/bin/python bench/bench_whatsapp.py [--runs 3]`. One lab,
every policy, alternating runs so machine noise hits all alike; prints the
median of each and its ratio to the unblocked run. The fully blocked run is
bounded by the probe's timeouts, so it shows what a user waits for in the worst
case; the throttled runs show what the throughput rounds against a control cost
(probe/throughput.py: sized to the rate, two or three rounds).
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
MEDIA_SNI = {"tls.sni": {"suffix": "mmg.whatsapp.net"}}
THROTTLED = {
    "media 64 kbit/s": {"name": "slow-media", "rules": [
        {"name": "slow-media", "match": MEDIA_SNI, "action": "throttle", "rate": "64kbit"}]},
    "media 20 Mbit/s": {"name": "media-20m", "rules": [
        {"name": "media-20m", "match": MEDIA_SNI, "action": "throttle", "rate": "20mbit"}]},
    "media +400 ms": {"name": "laggy-media", "rules": [
        {"name": "laggy-media", "match": MEDIA_SNI, "action": "throttle", "delay_ms": 400}]},
    "calls +150 ms": {"name": "laggy-calls", "rules": [
        {"name": "laggy-calls", "match": {"proto": "udp", "ip.dst": {"cidr": "198.19.3.0/24"}},
         "action": "throttle", "delay_ms": 150, "jitter_ms": 30}]},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=4.0, help="the probe's per-operation timeout")
    args = parser.parse_args()
    missing = missing_lab_features()
    if missing:
        sys.exit("lab unavailable: " + "; ".join(missing))
    policies = {"unblocked": UNBLOCKED, "fully blocked": FULLY_BLOCKED, **THROTTLED}
    times: dict[str, list[float]] = {label: [] for label in policies}
    with tempfile.TemporaryDirectory() as tmp, Lab.up(policy=UNBLOCKED, state_path=Path(tmp) / "lab.json") as lab:
        for _ in range(args.runs):
            for label, policy in policies.items():
                lab.set_policy(policy)
                started = time.perf_counter()
                measurement = probe_in_lab(lab, Path(tmp) / "m.jsonl", args.timeout)
                times[label].append(time.perf_counter() - started)
                verdicts = {f: v["verdict"] for f, v in measurement["test_keys"]["x_wallwatch"]["features"].items()}
                print(f"  {label:16s} {times[label][-1]:6.2f} s  {verdicts}")
    unblocked = statistics.median(times["unblocked"])
    print(f"\nwhatsapp nettest wall time (median of {args.runs}, probe timeout {args.timeout:g} s, including process "
          "start, with the throughput rounds):")
    for label, runs in times.items():
        median = statistics.median(runs)
        print(f"  {label:16s} {median:6.2f} s   {median / unblocked:5.2f}x unblocked")


if __name__ == "__main__":
    main()
