"""Peak memory of `censor replay` on a SYN scan: every flow kept to the end vs flows ended as live.

    .venv/bin/python bench/bench_replay.py [--flows 500000] [--max-flows 65536]

One capture (a raw-IP pcap of `--flows` SYNs from one scanner, each to a distinct address
and port: one flow each, 50,000 SYNs per second of capture time, written by
tests/censor/captures.py), replayed side by side in one run by two child processes,
each measured by its own rusage (wait4):

  (a) before: `censor/replay.py` as it was before flows ended as live (commit bb987df,
      read from git and run against today's engine), which kept every flow to the end,
      printing JSON lines after the whole capture, as its CLI did;
  (b) after:  `wallwatch censor replay --json --max-flows N`: flows end on the live
      timeouts by capture time or by LRU eviction beyond N, printed and forgotten.

It prints peak RSS, CPU seconds and the ratio (a)/(b), and (b)'s peak per configured flow.
(a) needs the repository's git history; without it only (b) is measured.

Measured 2026-12-04 (2 CPUs, shared machine), --flows 500000 --max-flows 65536:

  no rules (every SYN decides its flow at once):
    (a) before   peak RSS   1,538 MB    29.3 s CPU
    (b) after    peak RSS     266 MB    23.3 s CPU     (a)/(b) 5.8x
  --policy policies/whatsapp-all.yaml (every flow keeps its analyzers, undecided):
    (a) before   peak RSS   1,917 MB    31.8 s CPU
    (b) after    peak RSS     291 MB    24.3 s CPU     (a)/(b) 6.6x

(b) stays at ~4.5 KB per configured flow whatever the capture's length; (a) grows with it
(issue 9 saw 2.5 GB on its capture).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))

from tests.censor.captures import write_syn_scan  # noqa: E402

BEFORE_COMMIT = "bb987df"
POLICY = "name: none\nrules: []\n"

# (a) in a child: the old replay module from git, loaded under its own name, then its CLI's
# JSON output (every flow, after the capture, then the summary).
BEFORE_CHILD = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("replay_before", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules["replay_before"] = module  # dataclasses look their module up
spec.loader.exec_module(module)
from wallwatch.censor.policy import load_policy
report = module.replay_capture(sys.argv[2], load_policy(sys.argv[3]))
with open("/dev/null", "w") as out:
    for flow in report.flows:
        out.write(json.dumps(flow.to_json(), default=str) + "\\n")
    out.write(json.dumps(report.summary_json(), default=str) + "\\n")
print(len(report.flows))
"""


def measure(argv: list[str]) -> tuple[float, float, float]:
    """(peak RSS MB, CPU s, wall s) of one child process, from its own rusage."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    start = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv[:4]} failed with {os.waitstatus_to_exitcode(status)}")
    return usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime, time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flows", type=int, default=500_000)
    parser.add_argument("--max-flows", type=int, default=65536)
    parser.add_argument("--policy", type=Path, default=None,
                        help="policy file (default: no rules, so every SYN decides its flow at once)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wallwatch-bench-replay-") as tmp:
        workdir = Path(tmp)
        policy = args.policy.resolve() if args.policy else workdir / "none.yaml"
        if not args.policy:
            policy.write_text(POLICY)
        capture = write_syn_scan(workdir / "scan.pcap", args.flows)
        print(f"{args.flows:,} SYN-scan flows, {capture.stat().st_size / 2**20:.0f} MB capture; "
              f"load average {os.getloadavg()[0]:.2f}")
        results: dict[str, tuple[float, float, float]] = {}
        old = subprocess.run(["git", "-C", str(REPO), "show", f"{BEFORE_COMMIT}:src/wallwatch/censor/replay.py"],
                             capture_output=True, text=True)
        if old.returncode == 0:
            before = workdir / "replay_before.py"
            before.write_text(old.stdout)
            results["(a) before"] = measure([sys.executable, "-c", BEFORE_CHILD, str(before), str(capture),
                                             str(policy)])
        else:
            print(f"(a) skipped: no git history ({old.stderr.strip()})")
        results["(b) after"] = measure([sys.executable, "-m", "wallwatch.cli", "censor", "replay", str(capture),
                                        "--policy", str(policy), "--json", "--max-flows", str(args.max_flows)])
    for label, (rss, cpu, wall) in results.items():
        print(f"  {label:12s} peak RSS {rss:7,.0f} MB  {cpu:6.1f} s CPU  {wall:6.1f} s wall")
    after = results["(b) after"][0]
    if "(a) before" in results:
        print(f"  (a)/(b) peak RSS: {results['(a) before'][0] / after:.1f}x")
    print(f"  (b) with --max-flows {args.max_flows:,}: {after * 2**20 / args.max_flows / 1024:.1f} KB per configured flow "
          "(interpreter and imports included)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
