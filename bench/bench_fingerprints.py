"""Fingerprint matching cost per measurement: the old 55-row subset vs OONI's whole database (1,955 rows).

Side by side in one run, on the real samples (tests/data/ooni-samples): the observation extractor
(`make_observations`, which matches every DNS answer and every HTTP response of a redirect chain)
with each database; printed as µs per measurement and their ratio. Both databases use the same
matcher (one Hyperscan literal scan per body and header, fingerprints.py); header values and bodies
up to 1 KiB are matched once per process, so after the first round those come from the cache, as
they do for the recurring responses of real data; bodies above that (the samples' 7-145 KB pages)
are scanned every time.

Measured 2026-12-04 (2 shared CPUs, --rounds 200): old 55 rows ~48 µs, all 1,955 rows ~55 µs per
measurement (1.14x); with the first pass's Aho-Corasick matcher all rows took ~405 µs (2.0x the
199 µs of the 55-row subset before it).

    .venv/bin/python bench/bench_fingerprints.py [--rounds 200]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import orjson

from wallwatch.analysis.ingest.header import read_header
from wallwatch.analysis.verdicts.fingerprints import build_db, load_fingerprints
from wallwatch.analysis.verdicts.observations import make_observations

SAMPLES = Path(__file__).resolve().parents[1] / "tests" / "data" / "ooni-samples"
# The rows wallwatch shipped before the whole database (a hand-picked subset of ooni/blocking-fingerprints).
OLD_DNS = ("ooni.by_4 ooni.cn_0 ooni.cn_1 ooni.cn_2 ooni.cn_3 ooni.cn_4 ooni.cn_5 ooni.cn_6 ooni.cn_7 ooni.cn_9 "
           "ooni.id_41 ooni.id_44 ooni.id_95 ooni.ir_4 ooni.ir_5 ooni.mm_3 ooni.mn_0 ooni.my_2 ooni.ru_89 ooni.ru_90 "
           "ooni.ru_96 ooni.ru_97 ooni.ru_98 ooni.th_9 ooni.tr_6 cl.dns_br_1234 cl.dns_br_allzero cl.dns_br_localhost "
           "cl.dns_nat_it_adm_block cl.dns_nat_it_agcom_block cl.dns_prod_opendns_1").split()
OLD_HTTP = ("ooni.ae_0 ooni.by_2 ooni.by_3 ooni.id_0 ooni.id_6 ooni.in_0 ooni.ir_0 ooni.ir_2 ooni.ir_3 ooni.it_0 "
            "ooni.kr_1 ooni.kr_2 ooni.ru_0 ooni.ru_4 ooni.ru_5 ooni.ru_6 ooni.ru_25 ooni.ru_28 ooni.ru_29 ooni.qa_1 "
            "ooni.om_1 ooni.pk_1 ooni.au_0 ooni.hu_1").split()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    full = load_fingerprints()
    old = build_db("old-55", [r for r in full.dns if r.name in OLD_DNS], [r for r in full.http if r.name in OLD_HTTP])
    records = []
    for path in sorted(SAMPLES.rglob("*.json")):
        if path.name.startswith("analysis"):
            continue
        header, meta, test_keys = read_header(orjson.loads(path.read_bytes()))
        records.append((header, test_keys, meta["input"]))
    print(f"{len(records)} measurements, {len(old.rows)} vs {len(full.rows)} rows, {args.rounds} rounds")
    results = {}
    for _ in range(3):  # alternate, best of three: both sides see the same machine load
        for name, db in (("old 55 rows", old), ("all rows", full)):
            start = time.perf_counter()
            for _ in range(args.rounds):
                for header, test_keys, test_input in records:
                    make_observations(header, test_keys, test_input, db)
            per = (time.perf_counter() - start) / (args.rounds * len(records)) * 1e6
            results[name] = min(results.get(name, per), per)
    for name, per in results.items():
        print(f"{name:12s} {per:8.1f} µs per measurement (observations incl. matching)")
    print(f"ratio all/old: {results['all rows'] / results['old 55 rows']:.2f}x")


if __name__ == "__main__":
    main()
