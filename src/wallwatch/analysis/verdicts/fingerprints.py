"""OONI's blocking fingerprint database, shipped whole as versioned data, matched in one pass.

The rows live in `analysis/verdicts/data/fingerprints_{dns,http}.csv`: unmodified
copies of https://github.com/ooni/blocking-fingerprints at the commit named in
`data/fingerprints.json` (the manifest: version, source, commit, sha256 and row
count of each file) and `data/PROVENANCE.md` [ooni-fingerprints]. Matching
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

Speed: every row of one location (DNS answers, bodies, each header name) has one
literal any text it matches must contain (a `regexp` row: the longest piece of
its literal chain, or the text every match begins with); all the literals of a
location go into one Hyperscan literal database [Hyperscan2019], built once per
process, so one scan of a body finds every candidate row, and each candidate is
then checked by itself. A regexp runs only where its literal occurs, and one made
of literals joined by `.*` runs as a chain of `str.find`. DNS rows (all `full`)
are a dict lookup; header values and short bodies recur across measurements and
are matched once each (a per-set cache). `bench/bench_fingerprints.py` measures
the cost per measurement, `bench/bench_ingest.py` the ingest it is part of.
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
from operator import attrgetter
from importlib import resources
from pathlib import Path
from typing import Any, cast

import hyperscan

DATA_PACKAGE = "wallwatch.analysis.verdicts.data"
MANIFEST = "fingerprints.json"
PROVENANCE = "PROVENANCE.md"
FILES = {"dns": "fingerprints_dns.csv", "http": "fingerprints_http.csv"}
COLUMNS = ("name", "scope", "other_names", "location_found", "pattern_type", "pattern", "confidence_no_fp",
           "expected_countries", "source", "exp_url", "notes")
PATTERN_TYPES = ("full", "prefix", "contains", "regexp")
# Upstream Readme, after Citizen Lab's annotations [citizenlab-annotations]: nat, isp, prod (middlebox
# product), inst (school/office), vbw (vague blocking word), fp (a known false positive); the data also
# holds `injb` (injected block) and `prov`.
FALSE_POSITIVE_SCOPE = "fp"
# A "vague blocking word" in a page ("Access Denied"): CDNs and origin servers say it too (a 403 from
# an object store matched it on OONI's signal_022 sample), so an HTTP row of this scope is named as
# a hint but never decides "blocked" alone. DNS rows of it (1.2.3.4, 0.0.0.0, 127.0.0.1) are answers
# no public name has, and stay evidence.
VAGUE_SCOPE = "vbw"
# ZZ in expected_countries: expected anywhere. OONI's fastpath matched its "ZZ" fingerprints against every
# country's measurements, beside that country's own [ooni-backend] (fastpath/core.py `match_fingerprints`).
ANY_COUNTRY = "ZZ"
# What a match is to a verdict: evidence in DNS answers, evidence in an HTTP response, a vague blocking word
# (a hint), a known false positive (any location: never evidence). Rules cite them by these names.
DNS_EVIDENCE, HTTP_EVIDENCE, VAGUE, FALSE_POSITIVE = "dns", "http", "vague", "fp"
KINDS = (DNS_EVIDENCE, HTTP_EVIDENCE, VAGUE, FALSE_POSITIVE)


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
    # What a match of this row is to a verdict (one of KINDS), made once: the verdicts ask per match.
    kind: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        kind = (FALSE_POSITIVE if self.false_positive else DNS_EVIDENCE if self.location_found == "dns"
                else VAGUE if self.vague else HTTP_EVIDENCE)
        object.__setattr__(self, "kind", kind)

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


def literal_chain(pattern: str) -> tuple[str, ...] | None:
    """The literal pieces of a regexp made only of literal text joined by `.*`, in order; else None.

    With `re.DOTALL` (how the rows are compiled) `A.*B.*C` matches somewhere exactly when A occurs,
    then B at or after the end of that first A, then C after that B: finding the leftmost
    occurrence of each piece in turn is enough, and never backtracks. Regexps such as
    `<meta name=.*twitter:card` otherwise cost `re` a pass to the end of the text from every
    occurrence of the first piece. 13 of the 14 upstream regexps are such chains.
    """
    pieces: list[str] = []
    current: list[str] = []
    index = 0
    while index < len(pattern):
        if pattern.startswith(".*", index):
            if pattern[index + 2 : index + 3] in ("?", "+", "*", "{"):  # lazy/possessive/odd: not a plain .*
                return None
            pieces.append("".join(current))
            current = []
            index += 2
            continue
        literal, step = _literal_at(pattern, index)
        if literal is None:
            return None
        following = pattern[index + step : index + step + 1]
        if following in ("*", "+", "?") or (following == "{" and _QUANTIFIER.match(pattern, index + step)):
            return None
        current.append(literal)
        index += step
    pieces.append("".join(current))
    chain = tuple(piece for piece in pieces if piece)  # an empty piece (a leading or doubled .*) asks nothing
    return chain or None


# What `re` reads as a repeat count after `{` (sre_parse); any other `{` is a literal character.
_QUANTIFIER = re.compile(r"\{\d*,?\d*\}")


def _literal_at(pattern: str, index: int) -> tuple[str | None, int]:
    """The literal character at `index` and how many pattern characters it takes (None: not a literal)."""
    char = pattern[index]
    if char == "\\":
        following = pattern[index + 1 : index + 2]
        return (following, 2) if following and not following.isalnum() else (None, 0)
    if char == "{" and not _QUANTIFIER.match(pattern, index):
        return char, 1
    return (None, 0) if char in _REGEX_META else (char, 1)


def _chain_search(chain: tuple[str, ...], text: str) -> bool:
    position = 0
    for piece in chain:
        found = text.find(piece, position)
        if found < 0:
            return False
        position = found + len(piece)
    return True


# How a candidate row is checked once its literal was seen (the literal of a `contains` row is the row).
_CONTAINS, _PREFIX, _FULL, _CHAIN, _REGEXP = range(5)


def _collect(literal_id: int, start: int, end: int, flags: int, found: object) -> None:
    """Hyperscan's match callback: note which literal occurred (SINGLEMATCH: once per literal).
    `found` is the scan's context, the list of ids (hyperscan's stubs type it `object`)."""
    cast("list[int]", found).append(literal_id)


class _PatternSet:
    """Every row of one location, found by one Hyperscan literal scan, then each candidate checked.

    Each row has one literal that any text it matches must contain: the pattern itself for
    `contains`, `prefix` and `full`; for a regexp the longest piece of its literal chain, else the
    text every match begins with (`required_literal`). Hyperscan [Hyperscan2019] looks for all of
    them in one pass over the UTF-8 bytes (its FDR literal matcher reads ~3 GB/s here, ten times an
    Aho-Corasick DFA of 1,300 body literals, whose tables do not fit the cache); a row whose literal
    occurs is then checked by itself (startswith, equality, the chain, or `re`), so the set finds
    exactly the rows `Fingerprint.matches` accepts. UTF-8 is self-synchronising, so a literal's
    bytes occur in the text's bytes exactly where the literal occurs in the text.
    """

    def __init__(self, rows: Sequence[Fingerprint]) -> None:
        self.rows = tuple(rows)
        literals: dict[str, list[tuple[Fingerprint, int, tuple[str, ...] | None]]] = {}
        self.unanchored: list[Fingerprint] = []  # regexps with no literal: searched every time
        for row in self.rows:
            chain = literal_chain(row.pattern) if row.pattern_type == "regexp" else None
            if row.pattern_type != "regexp":
                literal, check = row.pattern, {"contains": _CONTAINS, "prefix": _PREFIX, "full": _FULL}[row.pattern_type]
            elif chain is not None:
                literal, check = max(chain, key=len), _CHAIN
            else:
                literal, check = required_literal(row.pattern), _REGEXP
            if literal:
                literals.setdefault(literal, []).append((row, check, chain))
            else:
                self.unanchored.append(row)
        self.by_literal = tuple(literals.values())
        self.full = {row.pattern: row for row in reversed(self.rows) if row.pattern_type == "full"}
        self.only_full = all(row.pattern_type == "full" for row in self.rows)
        self.database: hyperscan.Database | None = None
        if literals and not self.only_full:
            self.database = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
            self.database.compile(expressions=[literal.encode("utf-8") for literal in literals],
                                  ids=list(range(len(literals))), flags=hyperscan.HS_FLAG_SINGLEMATCH, literal=True)
        # Header values (and short bodies: an API's error page) recur across measurements: each
        # distinct one is matched once per process.
        self.cached = lru_cache(maxsize=SHORT_TEXT_CACHE)(self._matches)

    def matches(self, text: str) -> tuple[Fingerprint, ...]:
        """Every row matching `text`, in file order."""
        if self.only_full:  # DNS: a dict lookup, no scan
            row = self.full.get(text)
            return (row,) if row is not None else ()
        return self.cached(text) if len(text) <= SHORT_TEXT else self._matches(text)

    def _matches(self, text: str) -> tuple[Fingerprint, ...]:
        found: list[Fingerprint] = []
        if self.database is not None:
            seen: list[int] = []
            # surrogatepass: a lone surrogate (JSON allows "\\ud800") encodes too, and cannot form a
            # literal's bytes, so the match is unchanged.
            self.database.scan(text.encode("utf-8", "surrogatepass"), match_event_handler=_collect, context=seen)
            for literal_id in seen:
                for row, check, chain in self.by_literal[literal_id]:
                    if check == _CONTAINS or (check == _PREFIX and text.startswith(row.pattern)) or (
                            check == _FULL and text == row.pattern) or (
                            check == _CHAIN and _chain_search(chain, text)) or (  # type: ignore[arg-type]
                            check == _REGEXP and _compiled(row.pattern).search(text) is not None):
                        found.append(row)
        for row in self.unanchored:
            if _compiled(row.pattern).search(text) is not None:
                found.append(row)
        if len(found) > 1:
            found.sort(key=_ORDER)
        return tuple(found)


_ORDER = attrgetter("order")
# Texts up to this many characters are matched through the per-set cache, of this many entries.
SHORT_TEXT = 1024
SHORT_TEXT_CACHE = 4096


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
        return [FingerprintMatch(row, row.location_found, where) for row in self._match_response(body, headers)]

    def match_http(self, body: str | None, headers: Mapping[str, Any] | None) -> Fingerprint | None:
        """The row a response is named by (see `best`): evidence before known false positives."""
        found = self._match_response(body, headers)
        if not found:
            return None
        return found[0] if len(found) == 1 else min(found, key=_rank)

    def _match_response(self, body: str | None, headers: Mapping[str, Any] | None) -> tuple[Fingerprint, ...]:
        assert self._body is not None
        found = self._body.matches(body) if body else ()
        if headers:
            lengths, by_name = self._header_lengths, self._headers
            for key, value in headers.items():
                # Only names as long as a fingerprinted one can match: most headers skip lower().
                if len(key) not in lengths:
                    continue
                patterns = by_name.get(key.lower())
                if patterns is None:
                    continue
                text = value if type(value) is str else maybe_binary_text(value)
                if text:
                    matched = patterns.matches(text)
                    if matched:
                        found = (*found, *matched)
        return found


def _rank(row: Fingerprint) -> tuple[bool, bool, int]:
    """`best`'s order for rows: evidence first (in file order), then vague words, then false positives."""
    return row.false_positive, row.vague, row.order


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
