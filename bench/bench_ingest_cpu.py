"""One-process ingest CPU per measurement, this tree next to another checkout, alternately, as ratios.

    .venv/bin/python bench/bench_ingest_cpu.py --base /path/to/other/checkout [--count 2000] [--rounds 5]
                                               [--instructions]

Issue 10 asks that the whole fingerprint database and the failure taxonomy cost ingest no more
than 10% of its throughput. On a shared 2-core machine wall-clock rates move by tens of percent
from one minute to the next, so this bench compares CPU time (user + system) per measurement of
bench_ingest.py's pass (c1) (parse + observations + verdicts + Parquet writes, raw kept, one
process), on its two corpora (`mixed`, `im`: bench_ingest.make_corpus). Each round runs both
trees on both corpora, one fresh process each, base and this tree in turn (the order flips every
round), so both see the same load; the median and the best of the rounds are printed with their
ratios. On a loaded machine even that moves: an A/A run (this tree against itself, 5 rounds of 4,000)
read 1.00x on one corpus and 1.09x on the other. `--instructions` also counts the instructions each
tree executes per measurement under valgrind's callgrind (one ingest of the corpus minus one of no
file: the fixed costs cancel), a figure the machine's load does not move; it takes a few minutes.

A detached worktree of an older commit makes a base: `git worktree add --detach /tmp/base 3f2cf72`.
`--pure` instead compares this tree with itself: its pure-Python source ($WALLWATCH_PURE_PYTHON=1)
as the base, its hot path compiled by mypyc (scripts/compile.py) as "this".
"""

from __future__ import annotations

import argparse
import gzip
import os
import re
import shutil
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
print((sum(after[:4]) - sum(before[:4])) / max(summary.stored, 1) * 1e6)
"""


PURE = "WALLWATCH_PURE_PYTHON"


def _env(source: Path, pure: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != PURE}
    env["PYTHONPATH"] = str(source)
    if pure:
        env[PURE] = "1"
    return env


def cpu_per_measurement(python: str, source: Path, corpus: Path, pure: bool = False) -> float:
    env = _env(source, pure)
    result = subprocess.run([python, "-c", _ONE_RUN, str(corpus)], env=env, capture_output=True, text=True,
                            check=True, timeout=1800)
    return float(result.stdout.split()[-1])


_INSTRUCTIONS = re.compile(rb"Collected : (\d+)")


def instructions(python: str, source: Path, corpus: Path, empty: Path, pure: bool = False) -> float:
    """Instructions per measurement of one ingest of `corpus`, less those of an ingest of no file."""
    counts = []
    for directory in (empty, corpus):
        result = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", python, "-c",
                                 _ONE_RUN, str(directory)], env=_env(source, pure),
                                capture_output=True, check=True, timeout=3600)
        match = _INSTRUCTIONS.search(result.stderr)
        assert match is not None, result.stderr[-500:]
        counts.append(int(match.group(1)))
    measurements = sum(1 for path in corpus.glob("*.jsonl.gz") for _ in gzip.open(path, "rb"))
    return (counts[1] - counts[0]) / measurements


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, help="another checkout (its src/ is imported)")
    parser.add_argument("--pure", action="store_true", help="base: this tree's pure-Python source")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--instructions", action="store_true", help="also count instructions (valgrind)")
    args = parser.parse_args()
    if (args.base is None) == (not args.pure):
        parser.error("give --base CHECKOUT or --pure")
    this_src = HERE.parent / "src"
    trees = {"base": this_src if args.pure else args.base.resolve() / "src", "this": this_src}
    pure = {"base": args.pure, "this": False}
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start; "
          f"base {'this tree, pure Python' if args.pure else args.base}")
    with tempfile.TemporaryDirectory(prefix="ww-bench-cpu-") as tmp:
        corpora = {name: Path(tmp) / name for name in ("mixed", "im")}
        make_corpus(corpora["mixed"], args.count, 4)
        make_corpus(corpora["im"], args.count, 4, IM_TESTS)
        samples: dict[tuple[str, str], list[float]] = {}
        for round_ in range(args.rounds):
            order = list(trees) if round_ % 2 == 0 else list(reversed(trees))
            for corpus, directory in corpora.items():
                for tree in order:
                    value = cpu_per_measurement(sys.executable, trees[tree], directory, pure[tree])
                    samples.setdefault((corpus, tree), []).append(value)
        print(f"(c1) CPU µs per measurement over {args.rounds} alternating rounds ({args.count} measurements)")
        for corpus in corpora:
            base, this = samples[(corpus, "base")], samples[(corpus, "this")]
            median_base, median_this = statistics.median(base), statistics.median(this)
            runs = " ".join(f"{b:.0f}/{t:.0f}" for b, t in zip(base, this))
            print(f"  {corpus:5s}  median base {median_base:5.0f} this {median_this:5.0f} ({median_this / median_base:4.2f}x)"
                  f"  best base {min(base):5.0f} this {min(this):5.0f} ({min(this) / min(base):4.2f}x)"
                  f"  (rounds base/this: {runs})")
        if args.instructions and shutil.which("valgrind") is None:
            print("(c1) instructions: skipped, valgrind (Debian package `valgrind`) is not installed")
        elif args.instructions:
            empty = Path(tmp) / "empty"
            empty.mkdir()
            print("(c1) instructions per measurement (callgrind)")
            for corpus, directory in corpora.items():
                base, this = (instructions(sys.executable, trees[tree], directory, empty, pure[tree])
                              for tree in ("base", "this"))
                print(f"  {corpus:5s}  base {base:12,.0f}  this {this:12,.0f}  this/base {this / base:5.3f}x")


if __name__ == "__main__":
    main()
