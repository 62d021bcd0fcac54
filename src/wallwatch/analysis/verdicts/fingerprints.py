"""DNS and HTTP block page fingerprints (OONI's blocking-fingerprints idea, shipped as data).

The rows live in `analysis/verdicts/data/fingerprints_{dns,http}.csv`, a versioned subset
of https://github.com/ooni/blocking-fingerprints (the file headers name the
commit). Matching follows the upstream Readme: `full` is equality, `prefix`
is startswith, `contains` is substring, `regexp` is a regular expression; HTTP
rows say where to look (`body` or `header.<lowercase name>`). A match is
evidence of interference on its own, which is why OONI's fastpath calls such
measurements "confirmed" (ooni/backend fastpath/core.py).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import ahocorasick_rs

DATA_PACKAGE = "wallwatch.analysis.verdicts.data"
_VERSION_RE = re.compile(r"version\s+(\S+)")


@dataclass(frozen=True, slots=True)
class Fingerprint:
    name: str
    scope: str  # nat | isp | prod | inst | vbw | br | fp (upstream Readme)
    location_found: str  # dns | body | header.<name>
    pattern_type: str  # full | prefix | contains | regexp
    pattern: str
    confidence_no_fp: int
    expected_countries: tuple[str, ...]

    def matches(self, value: str) -> bool:
        if self.pattern_type == "full":
            return value == self.pattern
        if self.pattern_type == "prefix":
            return value.startswith(self.pattern)
        if self.pattern_type == "contains":
            return self.pattern in value
        return re.search(self.pattern, value) is not None


@dataclass(frozen=True, slots=True)
class FingerprintDB:
    version: str
    dns_full: Mapping[str, Fingerprint]
    http: tuple[Fingerprint, ...]
    # Derived from `http` (see __post_init__): the body rows, and header name -> rows.
    _body: tuple[Fingerprint, ...] = field(default=(), init=False, repr=False, compare=False)
    _by_header: Mapping[str, tuple[Fingerprint, ...]] = field(default_factory=dict, init=False, repr=False,
                                                               compare=False)
    _header_lengths: frozenset[int] = field(default=frozenset(), init=False, repr=False, compare=False)
    _body_prefilter: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_header: dict[str, list[Fingerprint]] = {}
        for row in self.http:
            if row.location_found != "body":
                by_header.setdefault(row.location_found.removeprefix("header."), []).append(row)
        object.__setattr__(self, "_body", tuple(row for row in self.http if row.location_found == "body"))
        object.__setattr__(self, "_by_header", {name: tuple(rows) for name, rows in by_header.items()})
        object.__setattr__(self, "_header_lengths", frozenset(map(len, by_header)))
        body = self._body
        if body and all(row.pattern_type == "contains" for row in body):
            # One Aho-Corasick pass (Rust `aho-corasick`, SIMD prefilters) tells whether any body
            # pattern occurs at all: if one does, leftmost-first search reports at least one
            # match. Only then are the rows tried in file order, so the answer is unchanged;
            # most bodies are not block pages and pay one scan instead of one per pattern.
            automaton = ahocorasick_rs.AhoCorasick([row.pattern for row in body],
                                                   matchkind=ahocorasick_rs.MatchKind.LeftmostFirst)
            object.__setattr__(self, "_body_prefilter", automaton)

    def match_dns(self, answer: str) -> Fingerprint | None:
        """The fingerprint a DNS answer (IP or CNAME) matches, if any (all DNS rows are `full`)."""
        return self.dns_full.get(answer)

    def match_http(self, body: str | None, headers: Mapping[str, str] | None) -> Fingerprint | None:
        """The first HTTP fingerprint (in file order) that matches a response body or one of its headers."""
        candidates: list[Fingerprint] = []
        if body and (self._body_prefilter is None or self._body_prefilter.find_matches_as_indexes(body)):
            for fingerprint in self._body:
                # Inlined `matches` for the common `contains` rows: this runs on every response body.
                if fingerprint.pattern in body if fingerprint.pattern_type == "contains" else fingerprint.matches(body):
                    candidates.append(fingerprint)
                    break
        if headers:
            lengths = self._header_lengths
            lowered: dict[str, str] = {}
            for key, value in headers.items():
                # Only names as long as a fingerprinted one can match: most headers skip lower().
                if len(key) in lengths:
                    lowered[key.lower()] = value
            for name, rows in self._by_header.items():
                value = lowered.get(name)
                if isinstance(value, str):
                    candidates.extend(row for row in rows if row.matches(value))
        if len(candidates) <= 1:
            return candidates[0] if candidates else None
        order = {id(row): index for index, row in enumerate(self.http)}
        return min(candidates, key=lambda row: order[id(row)])

def _read_rows(filename: str) -> tuple[str, list[Fingerprint]]:
    text = resources.files(DATA_PACKAGE).joinpath(filename).read_text(encoding="utf-8")
    comments = [line for line in text.splitlines() if line.startswith("#")]
    version_match = _VERSION_RE.search(comments[0]) if comments else None
    version = version_match.group(1) if version_match else "unversioned"
    data_lines: Iterable[str] = (line for line in text.splitlines() if line and not line.startswith("#"))
    rows = [
        Fingerprint(
            name=row["name"],
            scope=row["scope"],
            location_found=row["location_found"],
            pattern_type=row["pattern_type"],
            pattern=row["pattern"],
            confidence_no_fp=int(row["confidence_no_fp"] or 0),
            expected_countries=tuple(cc.strip() for cc in row["expected_countries"].split(",") if cc.strip()),
        )
        for row in csv.DictReader(data_lines)
    ]
    return version, rows


@lru_cache(maxsize=1)
def load_fingerprints() -> FingerprintDB:
    dns_version, dns_rows = _read_rows("fingerprints_dns.csv")
    http_version, http_rows = _read_rows("fingerprints_http.csv")
    if any(row.pattern_type != "full" for row in dns_rows):
        raise ValueError("DNS fingerprints must be `full` matches (upstream: all 226 DNS rows are)")
    return FingerprintDB(
        version=f"dns:{dns_version},http:{http_version}",
        dns_full={row.pattern: row for row in dns_rows},
        # False-positive rows never count as evidence of blocking.
        http=tuple(row for row in http_rows if row.scope != "fp"),
    )
