"""One day of a replay for one ISP: every nettest in one probe process, next to one process each.

Run as root: `.venv/bin/python bench/bench_replay_day.py [--runs 3] [--timeout 2] [--policy text-blocked]`.
One lab; the day's nettests are cn-2017-09's (OpenVPN aside: it needs a VPN server) under one of
its policies. The two ways alternate, so machine noise hits both alike:

* together: `wallwatch probe run A B C ...`, one interpreter, a thread and event loop per nettest
  (what `wallwatch lab replay` does since it grew to eight services);
* apart: `wallwatch probe run A`, `... B`, ... started at once, one process each (what it did before).

Prints the median wall time and CPU time of each and their ratios: the replay's days are these.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from wallwatch.lab.capabilities import missing_lab_features
from wallwatch.lab.scenario import load_scenario, probe_in_lab, probe_many_in_lab
from wallwatch.lab.topology import Lab

ROOT = Path(__file__).resolve().parents[1]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=2.0, help="the probe's per-step timeout")
    parser.add_argument("--policy", default="text-blocked", help="a policy of scenarios/cn-2017-09.yaml")
    args = parser.parse_args()
    missing = missing_lab_features()
    if missing:
        sys.exit("lab unavailable: " + "; ".join(missing))
    scenario = load_scenario(ROOT / "scenarios" / "cn-2017-09.yaml")
    probes = [p for p in scenario.probes if p != "openvpn"]
    wall: dict[str, list[float]] = {"together": [], "apart": []}
    cpu: dict[str, list[float]] = {"together": [], "apart": []}
    with tempfile.TemporaryDirectory() as tmp, Lab.up(policy=scenario.policies[args.policy].censor_policy(),
                                                      state_path=Path(tmp) / "lab.json") as lab:
        out = Path(tmp)

        def together() -> None:
            measurements, error = probe_many_in_lab(lab, out / "day.jsonl", args.timeout, probes,
                                                    options=scenario.options)
            assert error is None and len(measurements) == len(probes), error

        def apart() -> None:
            def one(nettest: str) -> None:
                extra = [a for k, v in scenario.options.get(nettest, {}).items() for a in ("--option", f"{k}={v}")]
                probe_in_lab(lab, out / f"{nettest}.jsonl", args.timeout, extra, nettest=nettest)

            with ThreadPoolExecutor(max_workers=len(probes)) as pool:
                list(pool.map(one, probes))

        for _ in range(args.runs):
            for label, run in (("together", together), ("apart", apart)):
                cpu_before, started = children_cpu(), time.perf_counter()
                run()
                wall[label].append(time.perf_counter() - started)
                cpu[label].append(children_cpu() - cpu_before)
                print(f"  {label:9s} {wall[label][-1]:6.2f} s wall  {cpu[label][-1]:6.2f} s CPU")
    print(f"\none ISP's day of {len(probes)} nettests under {args.policy!r} (median of {args.runs}, "
          f"per-step timeout {args.timeout:g} s):")
    w = {k: statistics.median(v) for k, v in wall.items()}
    c = {k: statistics.median(v) for k, v in cpu.items()}
    print(f"  {'':9s} {'wall':>8s} {'CPU':>8s}")
    for label in ("together", "apart"):
        print(f"  {label:9s} {w[label]:7.2f}s {c[label]:7.2f}s")
    print(f"  apart/together: {w['apart'] / w['together']:.2f}x wall, {c['apart'] / c['together']:.2f}x CPU")


if __name__ == "__main__":
    main()
