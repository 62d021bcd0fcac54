"""OONI's blocking fingerprint database, shipped whole as versioned data, matched in one pass.

The rows live in `analysis/verdicts/data/fingerprints_{dns,http}.csv`: unmodified
copies of https://github.com/ooni/blocking-fingerprints at the commit named in
`data/fingerprints.json` (the manifest: version, source, commit, sha256 and row
count of each file) and `data/PROVENANCE.md` [OONIFingerprints]. Matching
follows the upstream Readme and oonidata's `fingerprintdb.py`: `full` is
equality, `prefix` is startswith, `contains` is substring, `regexp` is a
regular expression searched with `.` matching newlines (oonidata compiles them
with `re.DOTALL`); all matches are case-sensitive. A DNS row matches an answer
(IPv4, IPv6 or CNAME); an HTTP row matches a response body or one header
(`header.<lowercase name>`), in any response of a redirect chain.

Scope `fp` rows are known false positives: a page that looks like interference
but is not (a CDN challenge, a parked domain, a default server page). They are
kept and matched, so a verdict can say "a known false positive", but they are
never evidence of blocking. A match of any other scope is evidence on its own,
which is why OONI's fastpath calls such measurements "confirmed" (ooni/backend
fastpath/core.py); a row whose `expected_countries` do not include the probe's
country is still evidence, but not confirmation.

Speed: every row of one location (DNS answers, bodies, each header name) goes
into one Aho-Corasick automaton (Rust `aho-corasick` via ahocorasick-rs) of
literals: `contains`, `prefix` and `full` patterns themselves, and for each
`regexp` the literal text every match must begin with, so a regular expression
runs only where its literal occurs. One scan of a body finds every candidate
row; `bench/bench_fingerprints.py` measures the cost per measurement.
"""

from __future__ import annotations

import base64
import binascii
import csv
import hashlib
import io
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import ahocorasick_rs

DATA_PACKAGE = "wallwatch.analysis.verdicts.data"
MANIFEST = "fingerprints.json"
PROVENANCE = "PROVENANCE.md"
FILES = {"dns": "fingerprints_dns.csv", "http": "fingerprints_http.csv"}
COLUMNS = ("name", "scope", "other_names", "location_found", "pattern_type", "pattern", "confidence_no_fp",
           "expected_countries", "source", "exp_url", "notes")
PATTERN_TYPES = ("full", "prefix", "contains", "regexp")
# Upstream Readme: nat, isp, prod (middlebox product), inst (school/office), vbw (vague blocking
# word), fp (a known false positive); the data also holds `injb` (injected block) and `prov`.
FALSE_POSITIVE_SCOPE = "fp"
# A "vague blocking word" in a page ("Access Denied"): CDNs and origin servers say it too (a 403 from
# an object store matched it on OONI's signal_022 sample), so an HTTP row of this scope is named as
# a hint but never decides "blocked" alone. DNS rows of it (1.2.3.4, 0.0.0.0, 127.0.0.1) are answers
# no public name has, and stay evidence.
VAGUE_SCOPE = "vbw"
# OONI writes ZZ for "no country": a product fingerprint expected in ZZ is expected anywhere.
ANY_COUNTRY = "ZZ"


class FingerprintError(ValueError):
    """Fingerprint data that does not say what it means (a bad column, pattern type or regexp)."""


@dataclass(frozen=True, slots=True)
class Fingerprint:
    name: str
    scope: str
    location_found: str  # dns | body | header.<lowercase name>
    pattern_type: str  # full | prefix | contains | regexp
    pattern: str
    confidence_no_fp: int
    expected_countries: tuple[str, ...]
    order: int = 0  # position in its file: the first row (in file order) that matches is named

    @property
    def false_positive(self) -> bool:
        """A known false positive (scope `fp`): never evidence of blocking."""
        return self.scope == FALSE_POSITIVE_SCOPE

    @property
    def vague(self) -> bool:
        """An HTTP row of a vague blocking word: a hint, never evidence alone."""
        return self.scope == VAGUE_SCOPE and self.location_found != "dns"

    def expected_in(self, probe_cc: str | None) -> bool:
        """Whether a match confirms blocking in `probe_cc`: rows with no countries (or ZZ) are expected anywhere."""
        countries = self.expected_countries
        return not countries or probe_cc in countries or ANY_COUNTRY in countries

    def matches(self, value: str) -> bool:
        """The plain, one-row test (the reference the combined matcher is tested against)."""
        if self.pattern_type == "full":
            return value == self.pattern
        if self.pattern_type == "prefix":
            return value.startswith(self.pattern)
        if self.pattern_type == "contains":
            return self.pattern in value
        return _compiled(self.pattern).search(value) is not None


@dataclass(frozen=True, slots=True)
class FingerprintMatch:
    """Which row matched, and where: `location` is dns | body | header.<name>; `where` the
    DNS name queried or the URL of the response (one of a redirect chain)."""

    fingerprint: Fingerprint
    location: str
    where: str | None = None


@lru_cache(maxsize=4096)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.DOTALL)


_REGEX_META = frozenset(".^$*+?{}[]\\|()")


def required_literal(pattern: str) -> str:
    """The literal text every match of `pattern` starts with ("" when there is none we can see).

    Hand-written because `re` exposes no parser: this reads plain characters and
    escaped punctuation up to the first operator, drops a character that a
    quantifier makes optional, and gives up on any top-level alternation.
    """
    if _has_alternation(pattern):
        return ""
    out: list[str] = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            following = pattern[index + 1 : index + 2]
            if not following or following.isalnum():  # \d, \w, \1 ...: a class or a reference
                break
            literal, step = following, 2
        elif char in _REGEX_META:
            break
        else:
            literal, step = char, 1
        after = pattern[index + step : index + step + 1]
        if after in ("*", "?", "{"):
            break
        out.append(literal)
        if after == "+":
            break
        index += step
    return "".join(out)


def _has_alternation(pattern: str) -> bool:
    escaped = False
    for char in pattern:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "|":
            return True
    return False


class _PatternSet:
    """Every row of one location, matched by one Aho-Corasick scan (plus regexps without a literal)."""

    def __init__(self, rows: Sequence[Fingerprint]) -> None:
        self.rows = tuple(rows)
        literals: dict[str, list[Fingerprint]] = {}
        self.unanchored: list[Fingerprint] = []  # regexps with no literal: searched every time
        for row in self.rows:
            literal = row.pattern if row.pattern_type != "regexp" else required_literal(row.pattern)
            if literal:
                literals.setdefault(literal, []).append(row)
            else:
                self.unanchored.append(row)
        self.by_literal = tuple(literals.values())
        self.full = {row.pattern: row for row in reversed(self.rows) if row.pattern_type == "full"}
        self.only_full = all(row.pattern_type == "full" for row in self.rows)
        self.automaton = (ahocorasick_rs.AhoCorasick(list(literals), matchkind=ahocorasick_rs.MatchKind.Standard)
                          if literals else None)

    def matches(self, text: str) -> list[Fingerprint]:
        """Every row matching `text`, in file order."""
        if self.only_full:  # DNS: a dict lookup, no scan
            row = self.full.get(text)
            return [row] if row is not None else []
        found: dict[int, Fingerprint] = {}
        if self.automaton is not None:
            length = len(text)
            tried: set[int] = set()  # a regexp searched from its literal's first occurrence was searched for all
            for literal_index, start, end in self.automaton.find_matches_as_indexes(text, overlapping=True):
                for row in self.by_literal[literal_index]:
                    if row.order in found or row.order in tried:
                        continue
                    if row.pattern_type == "regexp":
                        tried.add(row.order)
                    kind = row.pattern_type
                    if kind == "contains" or (kind == "prefix" and start == 0) or (
                            kind == "full" and start == 0 and end == length) or (
                            kind == "regexp" and _compiled(row.pattern).search(text, start) is not None):
                        found[row.order] = row
        for row in self.unanchored:
            if _compiled(row.pattern).search(text) is not None:
                found[row.order] = row
        return [found[order] for order in sorted(found)]


def best(matches: Iterable[FingerprintMatch]) -> FingerprintMatch | None:
    """The match a verdict names: the first evidence row in file order, then vague words, then false positives."""
    return min(matches, key=lambda m: (m.fingerprint.false_positive, m.fingerprint.vague, m.fingerprint.order),
               default=None)


@dataclass(frozen=True, slots=True)
class FingerprintDB:
    version: str
    rows: tuple[Fingerprint, ...]
    _by_name: Mapping[tuple[bool, str], Fingerprint] = field(default_factory=dict, init=False, repr=False,
                                                              compare=False)
    _dns: _PatternSet | None = field(default=None, init=False, repr=False, compare=False)
    _body: _PatternSet | None = field(default=None, init=False, repr=False, compare=False)
    _headers: Mapping[str, _PatternSet] = field(default_factory=dict, init=False, repr=False, compare=False)
    _header_lengths: frozenset[int] = field(default=frozenset(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_location: dict[str, list[Fingerprint]] = {}
        for row in self.rows:
            by_location.setdefault(row.location_found, []).append(row)
        headers = {location.removeprefix("header."): _PatternSet(rows) for location, rows in by_location.items()
                   if location.startswith("header.")}
        object.__setattr__(self, "_by_name", {(row.location_found == "dns", row.name): row for row in self.rows})
        object.__setattr__(self, "_dns", _PatternSet(by_location.get("dns", ())))
        object.__setattr__(self, "_body", _PatternSet(by_location.get("body", ())))
        object.__setattr__(self, "_headers", headers)
        object.__setattr__(self, "_header_lengths", frozenset(map(len, headers)))

    @property
    def dns(self) -> tuple[Fingerprint, ...]:
        return tuple(row for row in self.rows if row.location_found == "dns")

    @property
    def http(self) -> tuple[Fingerprint, ...]:
        return tuple(row for row in self.rows if row.location_found != "dns")

    def get_dns(self, name: str | None) -> Fingerprint | None:
        return self._by_name.get((True, name)) if name else None

    def get_http(self, name: str | None) -> Fingerprint | None:
        return self._by_name.get((False, name)) if name else None

    def match_dns(self, answer: str) -> Fingerprint | None:
        """The first row (file order) a DNS answer (an IPv4, IPv6 or CNAME) matches."""
        assert self._dns is not None
        found = self._dns.matches(answer)
        return found[0] if found else None

    @property
    def dns_matcher(self) -> Callable[[str], Fingerprint | None]:
        """`match_dns`, or when every DNS row is `full` (all 226 upstream ones are) the dict lookup
        it amounts to: the extractor calls it once per DNS answer (~30 per IM measurement)."""
        assert self._dns is not None
        return self._dns.full.get if self._dns.only_full else self.match_dns

    def match_http_all(self, body: str | None, headers: Mapping[str, Any] | None,
                       where: str | None = None) -> list[FingerprintMatch]:
        """Every row matching one response: its body, and each header (names case-insensitive)."""
        assert self._body is not None
        matches = [FingerprintMatch(row, "body", where) for row in self._body.matches(body)] if body else []
        if headers:
            lengths = self._header_lengths
            for key, value in headers.items():
                # Only names as long as a fingerprinted one can match: most headers skip lower().
                if len(key) not in lengths:
                    continue
                patterns = self._headers.get(key.lower())
                text = maybe_binary_text(value)
                if patterns is not None and text:
                    location = "header." + key.lower()
                    matches.extend(FingerprintMatch(row, location, where) for row in patterns.matches(text))
        return matches

    def match_http(self, body: str | None, headers: Mapping[str, Any] | None) -> Fingerprint | None:
        """The row a response is named by (see `best`): evidence before known false positives."""
        chosen = best(self.match_http_all(body, headers))
        return chosen.fingerprint if chosen else None


def maybe_binary_text(value: Any) -> str | None:
    """OONI MaybeBinaryData (df-001): a str, or {"format": "base64", "data": ...} decoded as UTF-8
    (bad bytes replaced: a block page in a legacy encoding still matches on its ASCII parts)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and value.get("format") == "base64" and isinstance(value.get("data"), str):
        try:
            return base64.b64decode(value["data"]).decode("utf-8", "replace")
        except (binascii.Error, ValueError):
            return None
    return None


# -- the shipped data ------------------------------------------------------------------


def parse_rows(text: str, kind: str, source: str) -> list[Fingerprint]:
    """Validated rows of one upstream CSV (`kind` dns or http); FingerprintError says what is wrong."""
    reader = csv.DictReader(io.StringIO(text))
    missing = [column for column in COLUMNS if column not in (reader.fieldnames or ())]
    if missing:
        raise FingerprintError(f"{source}: missing columns {missing}")
    rows: list[Fingerprint] = []
    names: set[str] = set()
    for line, record in enumerate(reader, start=2):
        where = f"{source} line {line} ({record.get('name')})"
        name, location, kind_of_pattern, pattern = (record["name"] or "", record["location_found"] or "",
                                                    record["pattern_type"] or "", record["pattern"] or "")
        if not name or name in names:
            raise FingerprintError(f"{where}: a name must be present and unique")
        if kind_of_pattern not in PATTERN_TYPES:
            raise FingerprintError(f"{where}: pattern_type must be one of {PATTERN_TYPES}")
        if not pattern:
            raise FingerprintError(f"{where}: empty pattern")
        if kind == "dns" and location != "dns":
            raise FingerprintError(f"{where}: a DNS row's location_found must be dns")
        if kind == "http" and not (location == "body" or (location.startswith("header.") and len(location) > 7)):
            raise FingerprintError(f"{where}: location_found must be body or header.<name>")
        if kind_of_pattern == "regexp":
            try:
                _compiled(pattern)
            except re.error as exc:
                raise FingerprintError(f"{where}: bad regexp: {exc}") from None
        try:
            confidence = int(record["confidence_no_fp"] or 0)
        except ValueError:
            raise FingerprintError(f"{where}: confidence_no_fp must be an integer") from None
        names.add(name)
        rows.append(Fingerprint(
            name=name, scope=(record["scope"] or "").strip(), location_found=location.lower(),
            pattern_type=kind_of_pattern, pattern=pattern, confidence_no_fp=confidence,
            expected_countries=tuple(cc.strip().upper() for cc in (record["expected_countries"] or "").split(",")
                                     if cc.strip()),
        ))
    return rows


def build_db(version: str, dns_rows: Sequence[Fingerprint], http_rows: Sequence[Fingerprint]) -> FingerprintDB:
    """A database of both files' rows, numbered in file order (DNS first). Names are unique within a
    file, not across the two (upstream has `ooni.th_9` in both)."""
    rows = [Fingerprint(row.name, row.scope, row.location_found, row.pattern_type, row.pattern,
                        row.confidence_no_fp, row.expected_countries, order)
            for order, row in enumerate([*dns_rows, *http_rows])]
    return FingerprintDB(version=version, rows=tuple(rows))


def read_manifest(directory: Path | None = None) -> dict[str, Any]:
    return json.loads(_read(directory, MANIFEST))


def _read(directory: Path | None, name: str) -> str:
    # Bytes decoded as they are (no newline translation): the manifest's sha256 is of the file's bytes.
    if directory is not None:
        return (directory / name).read_bytes().decode("utf-8")
    return resources.files(DATA_PACKAGE).joinpath(name).read_bytes().decode("utf-8")


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_from(directory: Path | None) -> FingerprintDB:
    """The database in `directory` (None: the shipped one), checked against its manifest."""
    manifest = read_manifest(directory)
    parsed: dict[str, list[Fingerprint]] = {}
    for kind, filename in FILES.items():
        text = _read(directory, filename)
        expected = manifest["files"][filename]
        if sha256_text(text) != expected["sha256"]:
            raise FingerprintError(f"{filename} differs from its manifest (sha256): use `wallwatch fingerprints "
                                   "update` to replace the data, never an edit by hand")
        parsed[kind] = parse_rows(text, kind, filename)
    return build_db(str(manifest["version"]), parsed["dns"], parsed["http"])


@lru_cache(maxsize=1)
def load_fingerprints() -> FingerprintDB:
    """The shipped database (cached: built once per process)."""
    return load_from(None)


def shipped_directory() -> Path:
    """Where the shipped data lives on disk (what `wallwatch fingerprints update` replaces)."""
    return Path(str(resources.files(DATA_PACKAGE)))


def update(directory: Path, dns_csv: Path | None, http_csv: Path | None, *, version: str, source: str,
           note: str) -> dict[str, Any]:
    """Validate new upstream CSVs, then replace the data in `directory` with them, files unmodified.

    Both files are validated (and together, as a database) before anything is
    written; each is then written atomically, the manifest last, and the update is
    appended to PROVENANCE.md so the history of the data stays beside it.
    """
    if dns_csv is None and http_csv is None:
        raise FingerprintError("nothing to update: give a fingerprints_dns.csv and/or fingerprints_http.csv")
    manifest = read_manifest(directory)
    texts = {kind: _read(directory, filename) for kind, filename in FILES.items()}
    for kind, path in (("dns", dns_csv), ("http", http_csv)):
        if path is not None:
            texts[kind] = path.read_bytes().decode("utf-8")
    parsed = {kind: parse_rows(text, kind, FILES[kind]) for kind, text in texts.items()}
    build_db(version, parsed["dns"], parsed["http"])
    files = {}
    for kind, filename in FILES.items():
        _write_atomically(directory / filename, texts[kind])
        files[filename] = {"sha256": sha256_text(texts[kind]), "rows": len(parsed[kind])}
    updated = {**manifest, "version": version, "source": source, "files": files,
               "previous": [*manifest.get("previous", []), {"version": manifest["version"],
                                                            "source": manifest.get("source")}]}
    provenance = directory / PROVENANCE
    history = provenance.read_text(encoding="utf-8") if provenance.exists() else ""
    counts = ", ".join(f"`{name}` ({entry['rows']} rows)" for name, entry in files.items())
    _write_atomically(provenance, history.rstrip("\n") + f"\n\n## Update to version {version}\n\n"
                      f"Source: {source}. Files: {counts}. {note}".rstrip() + "\n")
    _write_atomically(directory / MANIFEST, json.dumps(updated, indent=2) + "\n")
    load_fingerprints.cache_clear()
    return updated


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(text.encode("utf-8"))
    partial.replace(path)
