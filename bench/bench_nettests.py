"""Wall time of every messaging nettest in the lab, unblocked next to fully blocked.

Run as root: `.venv/bin/python bench/bench_nettests.py [--runs 3] [--timeout 2]`.
One lab; for each nettest the unblocked and the fully blocked policy alternate
(so machine noise hits both alike); prints per nettest the median of each and
their ratio. Fully blocked means every endpoint's address black-holed (TCP
connects and UDP time out), the slowest case for a probe: what a user waits
for at worst. Times include the probe's process start (~0.5 s of imports).
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
from wallwatch.lab.topology import Lab

UNBLOCKED = {"name": "none", "rules": []}
# Each service's lab addresses (lab/addresses.py); the resolver stays reachable, so names resolve.
SERVICE_BLOCKS = {
    "whatsapp": ["198.19.1.0/24", "198.19.2.0/24", "198.19.3.0/24"],
    "telegram": ["198.19.10.0/24"],
    "signal": ["198.19.11.0/24"],
    "facebook_messenger": ["198.19.12.0/24"],
    "wechat": ["198.19.13.0/24"],
    "skype": ["198.19.14.0/24"],
    "viber": ["198.19.15.0/24"],
    "facetime": ["198.19.16.0/24"],
    "keyword": ["198.19.17.0/24"],
}


def blocked(nettest: str) -> dict[str, object]:
    return {"name": f"{nettest}-blackholed", "rules": [
        {"name": f"block-{n}", "match": {"ip.dst": {"cidr": cidr}}, "action": "blackhole-ip"}
        for n, cidr in enumerate(SERVICE_BLOCKS[nettest])]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=2.0, help="the probe's per-step timeout")
    args = parser.parse_args()
    missing = missing_lab_features()
    if missing:
        sys.exit("lab unavailable: " + "; ".join(missing))
    times: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp, Lab.up(policy=UNBLOCKED, state_path=Path(tmp) / "lab.json") as lab:
        for _ in range(args.runs):
            for nettest in SERVICE_BLOCKS:
                for label, policy in (("unblocked", UNBLOCKED), ("blocked", blocked(nettest))):
                    lab.set_policy(policy)
                    started = time.perf_counter()
                    measurement = probe_in_lab(lab, Path(tmp) / "m.jsonl", args.timeout, nettest=nettest)
                    times.setdefault((nettest, label), []).append(time.perf_counter() - started)
                    verdicts = {f: v["verdict"] for f, v in measurement["test_keys"]["x_wallwatch"]["features"].items()}
                    print(f"  {nettest:19s} {label:10s} {times[(nettest, label)][-1]:6.2f} s  {verdicts}")
    print(f"\nnettest wall time (median of {args.runs}, per-step timeout {args.timeout:g} s, including process start):")
    print(f"  {'nettest':19s} {'unblocked':>10s} {'blocked':>10s} {'ratio':>7s}")
    for nettest in SERVICE_BLOCKS:
        free = statistics.median(times[(nettest, "unblocked")])
        cut = statistics.median(times[(nettest, "blocked")])
        print(f"  {nettest:19s} {free:9.2f}s {cut:9.2f}s {cut / free:6.2f}x")


if __name__ == "__main__":
    main()
