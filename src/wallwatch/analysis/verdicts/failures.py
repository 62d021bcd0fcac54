"""Whose fault a failure string is: the failure taxonomy, kept once as data.

Every failure string of OONI's data format (ooni/spec data-formats/df-007-errors.md
[ooni-df007]), those probe-cli's netxlite writes (internal/netxlite: errno.go,
classify.go [ooni-netxlite]) and those seen in the shipped samples are classed in
`data/failures.csv`, each with its source and why:

* `interference`: a network-interference candidate (a reset, a timeout, a lying
  resolver, a bad certificate): evidence of blocking when the control or the
  rest of the measurement says the service works;
* `probe`: a probe-side fault (no route on the probe's network, its own
  exception text, a socket misused by the probe, an Android DNS cache quirk):
  never evidence of blocking; a verdict resting on one is `unknown`, naming it;
* `server`: the server (or resolver) answered, with an error or nothing of that
  type: no evidence of interference.

A string the table does not list is `unclassified`: never evidence of blocking
on its own (a verdict a journalist can quote must not rest on a string nobody has
read), but not called a probe fault either, since it may be a new kind of
interference that OONI's probe learnt to name after this table was written. A
verdict names it (column `unclassified_failure`) and `wallwatch ingest` counts
each such string in its summary, so a maintainer classes it here. Prefix rows
(`unknown_failure ...`, `socks_...`) cover the families whose tail is free text.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

DATA_PACKAGE = "wallwatch.analysis.verdicts.data"
TABLE = "failures.csv"
INTERFERENCE = "interference"
PROBE = "probe"
SERVER = "server"
UNCLASSIFIED = "unclassified"
CLASSES = (INTERFERENCE, PROBE, SERVER)


@dataclass(frozen=True, slots=True)
class FailureClass:
    failure: str
    match: str  # exact | prefix
    kind: str  # interference | probe | server
    source: str
    why: str


@dataclass(frozen=True, slots=True)
class FailureTable:
    exact: Mapping[str, FailureClass]
    prefixes: tuple[FailureClass, ...]

    def lookup(self, failure: str) -> FailureClass | None:
        found = self.exact.get(failure)
        if found is not None:
            return found
        for row in self.prefixes:
            if failure.startswith(row.failure):
                return row
        return None

    def rows(self) -> list[FailureClass]:
        return [*self.exact.values(), *self.prefixes]


def parse_table(text: str) -> FailureTable:
    exact: dict[str, FailureClass] = {}
    prefixes: list[FailureClass] = []
    for record in csv.DictReader(io.StringIO(text)):
        row = FailureClass(record["failure"], record["match"], record["class"], record["source"], record["why"])
        if row.kind not in CLASSES or row.match not in ("exact", "prefix") or not row.failure:
            raise ValueError(f"{TABLE}: bad row {record}")
        if row.match == "exact":
            if row.failure in exact:
                raise ValueError(f"{TABLE}: {row.failure} is classed twice")
            exact[row.failure] = row
        else:
            prefixes.append(row)
    return FailureTable(exact, tuple(prefixes))


@lru_cache(maxsize=1)
def failure_table() -> FailureTable:
    return parse_table(resources.files(DATA_PACKAGE).joinpath(TABLE).read_text(encoding="utf-8"))


@lru_cache(maxsize=4096)
def failure_class(failure: str) -> str:
    """interference | probe | server | unclassified (cached: a few dozen strings recur)."""
    row = failure_table().lookup(failure)
    return row.kind if row is not None else UNCLASSIFIED


def is_interference_candidate(failure: str | None) -> bool:
    """A failure that can be evidence of interference (None: no failure)."""
    return failure is not None and failure_class(failure) == INTERFERENCE


@lru_cache(maxsize=1)
def interference_strings() -> frozenset[str]:
    """Every failure string of class `interference`, for a set lookup where the verdicts count
    failures (`failure in interference_strings()` is `is_interference_candidate(failure)`).

    Exact because the table classes no prefix family as interference (prefix rows are the
    free-text families of the probe's own faults); a table that did would be refused here.
    """
    table = failure_table()
    if any(row.kind == INTERFERENCE for row in table.prefixes):
        raise ValueError(f"{TABLE}: an interference row must match exactly")
    return frozenset(row.failure for row in table.exact.values() if row.kind == INTERFERENCE)


def is_probe_fault(failure: str | None) -> bool:
    """A probe-side fault (never evidence of blocking)."""
    return failure is not None and failure_class(failure) == PROBE


def is_unclassified(failure: str | None) -> bool:
    """A string the table does not list (never evidence of blocking on its own)."""
    return failure is not None and failure_class(failure) == UNCLASSIFIED


def is_never_evidence(failure: str | None) -> bool:
    """A failure that says nothing about the network: a probe fault or an unclassified string."""
    return failure is not None and failure_class(failure) in (PROBE, UNCLASSIFIED)
