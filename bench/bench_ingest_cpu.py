"""One-process ingest CPU per measurement, this tree next to another checkout, alternately, as ratios.

    .venv/bin/python bench/bench_ingest_cpu.py --base /path/to/other/checkout [--count 2000] [--rounds 5]

Issue 10 asks that the whole fingerprint database and the failure taxonomy cost ingest no more
than 10% of its throughput. On a shared 2-core machine wall-clock rates move by tens of percent
from one minute to the next, so this bench compares CPU time (user + system) per measurement of
bench_ingest.py's pass (c1) (parse + observations + verdicts + Parquet writes, raw kept, one
process), on its two corpora (`mixed`, `im`: bench_ingest.make_corpus). Each round runs both
trees on both corpora, one fresh process each, base and this tree in turn (the order flips every
round), so both see the same load; the median of the rounds is printed with the ratio.

A detached worktree of an older commit makes a base: `git worktree add --detach /tmp/base 3f2cf72`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_ingest import IM_TESTS, make_corpus  # noqa: E402  (a sibling script, not a package)

# Run in a fresh interpreter per tree: loads the rules and fingerprints first (as a long ingest
# amortises them), then times one ingest of the corpus with one worker.
_ONE_RUN = r"""
import os, sys, tempfile
from pathlib import Path
from wallwatch.analysis.ingest.pipeline import ingest
from wallwatch.analysis.verdicts.rules import default_rule_sets
default_rule_sets()
try:
    from wallwatch.analysis.verdicts.fingerprints import load_fingerprints
    load_fingerprints()
except ImportError:
    pass
paths = sorted(Path(sys.argv[1]).glob("*.jsonl.gz"))
with tempfile.TemporaryDirectory(prefix="ww-bench-cpu-") as tmp:
    before = os.times()
    summary = ingest(paths, Path(tmp) / "data", keep_raw=True, workers=1)
    after = os.times()
print((sum(after[:4]) - sum(before[:4])) / summary.stored * 1e6)
"""


def cpu_per_measurement(python: str, source: Path, corpus: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(source)}
    result = subprocess.run([python, "-c", _ONE_RUN, str(corpus)], env=env, capture_output=True, text=True,
                            check=True, timeout=1800)
    return float(result.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, required=True, help="another checkout (its src/ is imported)")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    trees = {"base": args.base.resolve() / "src", "this": HERE.parent / "src"}
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start; base {args.base}")
    with tempfile.TemporaryDirectory(prefix="ww-bench-cpu-") as tmp:
        corpora = {name: Path(tmp) / name for name in ("mixed", "im")}
        make_corpus(corpora["mixed"], args.count, 4)
        make_corpus(corpora["im"], args.count, 4, IM_TESTS)
        samples: dict[tuple[str, str], list[float]] = {}
        for round_ in range(args.rounds):
            order = list(trees) if round_ % 2 == 0 else list(reversed(trees))
            for corpus, directory in corpora.items():
                for tree in order:
                    value = cpu_per_measurement(sys.executable, trees[tree], directory)
                    samples.setdefault((corpus, tree), []).append(value)
    print(f"(c1) CPU µs per measurement, median of {args.rounds} alternating rounds ({args.count} measurements)")
    for corpus in corpora:
        base, this = (statistics.median(samples[(corpus, tree)]) for tree in ("base", "this"))
        runs = " ".join(f"{b:.0f}/{t:.0f}" for b, t in zip(samples[(corpus, "base")], samples[(corpus, "this")]))
        print(f"  {corpus:5s}  base {base:6.0f}  this {this:6.0f}  this/base {this / base:5.2f}x   (rounds base/this: {runs})")


if __name__ == "__main__":
    main()
