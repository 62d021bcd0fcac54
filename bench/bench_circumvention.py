"""Wall time of the circumvention nettest in the lab: nothing blocked, fingerprints blocked, fully encrypted blocked.

Run as root: `.venv/bin/python bench/bench_circumvention.py [--runs 3]`. One lab
with every circumvention server (lab/vpn_servers.py), the policies alternating
so machine noise hits all alike; prints the median of each and its ratio to the
unblocked run. Every option is bounded (probe/nettests/circumvention.py), so a
blocked run shows what a user waits for before the probe says what still works.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from wallwatch.lab.capabilities import missing_lab_features
from wallwatch.lab.scenario import probe_in_lab
from wallwatch.lab.topology import CIRCUMVENTION_SERVERS, Lab

POLICIES = {
    "unblocked": {"name": "none", "rules": []},
    "fingerprints": {"name": "vpn-2017-fingerprints", "rules": [
        {"name": "openvpn", "match": {"openvpn.handshake": True}, "action": "drop"},
        {"name": "wireguard", "match": {"wireguard.handshake": True}, "action": "drop"},
        {"name": "tor-tls", "match": {"tor.tls": True}, "action": "reset"}]},
    "fully encrypted": {"name": "fet", "rules": [
        {"name": "fully-encrypted", "match": {"fet.suspicious": True}, "action": "drop"}]},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    missing = missing_lab_features()
    if missing:
        sys.exit("lab unavailable: " + "; ".join(missing))
    times: dict[str, list[float]] = {label: [] for label in POLICIES}
    with tempfile.TemporaryDirectory() as tmp, Lab.up(policy=POLICIES["unblocked"], state_path=Path(tmp) / "lab.json",
                                                      vpn_servers=list(CIRCUMVENTION_SERVERS)) as lab:
        for _ in range(args.runs):
            for label, policy in POLICIES.items():
                lab.set_policy(policy)
                started = time.perf_counter()
                measurement = probe_in_lab(lab, Path(tmp) / "m.jsonl", 3.0, nettest="circumvention")
                times[label].append(time.perf_counter() - started)
                print(f"  {label:16s} {times[label][-1]:6.2f} s  {measurement['test_keys']['x_wallwatch']['summary']}")
    unblocked = statistics.median(times["unblocked"])
    print(f"\ncircumvention nettest wall time (median of {args.runs}, including process start):")
    for label, runs in times.items():
        median = statistics.median(runs)
        print(f"  {label:16s} {median:6.2f} s   {median / unblocked:5.2f}x unblocked")


if __name__ == "__main__":
    main()
