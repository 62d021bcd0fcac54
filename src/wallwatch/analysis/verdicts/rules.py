"""Judgments: per (measurement, service, feature) verdicts made by versioned rules kept as data.

Facts come from observation rows (observations.py) summarised per feature into a
small flat dict (`feature_facts`); the rules in `analysis/verdicts/rulesets/*.yaml` are an
ordered cascade over those facts, first match wins, and every verdict row names
the rule that made it (`rule_id`) and the rule set's version (`rules_version`).
This is ooni/data's `multiIf` cascade (analysis/rules.py) kept as data rather
than SQL, evaluated in tight Python because it runs inside the single ingest pass.

wallwatch's own measurements already carry per-feature verdicts made by the
probe's versioned rules (`test_keys.x_wallwatch.features`); they are taken as
made, validated, and keep the probe's rule id and rules version. A wallwatch
measurement without them (web_connectivity: the probe writes OONI's keys and
no verdict of its own) is judged by its test's rule set, as OONI's are.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from wallwatch.analysis.rows import VerdictRow
from wallwatch.analysis.tables import row_template
from wallwatch.analysis.verdicts.failures import (
    PROBE,
    UNCLASSIFIED,
    failure_class,
    interference_strings,
    is_interference_candidate,
    is_never_evidence,
)
from wallwatch.analysis.verdicts.fingerprints import (
    DNS_EVIDENCE,
    FALSE_POSITIVE,
    HTTP_EVIDENCE,
    KINDS,
    VAGUE,
    Fingerprint,
    FingerprintMatch,
    best,
)
from wallwatch.analysis.verdicts.observations import (
    Header,
    MeasurementFacts,
    Row,
    ech_handshakes,
    header_row,
    iter_feature_groups,
)
from wallwatch.vocabulary import METHODS, VERDICTS, is_finding, qualifiers

RULES_PACKAGE = "wallwatch.analysis.verdicts.rulesets"
# libyaml's safe loader when PyYAML was built with it: the pure-Python one takes ~0.15 s for the rules.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_OPERATORS: Mapping[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq, "ne": operator.ne, "gt": operator.gt, "ge": operator.ge,
    "lt": operator.lt, "le": operator.le, "in": lambda value, options: value in options,
}


class RulesError(ValueError):
    """A rules file that does not say what it means (unknown operator, verdict or method)."""


@dataclass(frozen=True, slots=True)
class Condition:
    fact: str
    op: str
    value: Any

    def holds(self, facts: Mapping[str, Any]) -> bool:
        actual = facts.get(self.fact)
        if actual is None and self.op not in ("eq", "ne"):
            return False
        return _OPERATORS[self.op](actual, self.value)


# What a rule may cite as its evidence: a DNS fingerprint, a block page (HTTP) fingerprint, a vague
# blocking word (an HTTP row of scope `vbw`) or a known false positive (scope `fp`); the verdict
# then names the row that matched (fingerprints.py `Fingerprint.kind`).
FINGERPRINT_KINDS = KINDS
# The facts a group's fingerprint matches set (`_fingerprint_facts`), at their values when none matched.
_FINGERPRINT_FACTS: Mapping[str, Any] = {
    "n_dns_fingerprint": 0, "n_blockpage": 0, "n_vague_blockpage": 0, "n_known_false_positive": 0,
    # A DNS fingerprint / block page whose expected_countries include the probe's country
    # (or name none): confirmed blocking.
    "dns_fingerprint_expected": False, "blockpage_expected": False,
}
_FINGERPRINT_FACT_NAMES = tuple(_FINGERPRINT_FACTS)


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    verdict: str
    method: str | None
    confidence: float
    all_of: tuple[Condition, ...]
    any_of: tuple[tuple[Condition, ...], ...]
    fingerprint: str | None = None  # one of FINGERPRINT_KINDS: the verdict names the matching row
    confirmed: bool = False  # the verdict is confirmed blocking (a fingerprint expected in the country)

    def matches(self, facts: Mapping[str, Any]) -> bool:
        for condition in self.all_of:
            if not condition.holds(facts):
                return False
        return not self.any_of or any(all(c.holds(facts) for c in group) for group in self.any_of)


# A condition as the cascade runs it: (fact, comparison, value, whether a missing fact fails it).
_Check = tuple[str, Callable[[Any, Any], bool], Any, bool]


def _checks(conditions: Sequence[Condition]) -> tuple[_Check, ...]:
    return tuple((c.fact, _OPERATORS[c.op], c.value, c.op not in ("eq", "ne")) for c in conditions)


def _all_hold(checks: tuple[_Check, ...], facts: Mapping[str, Any]) -> bool:
    """`Condition.holds` of every check, inlined (see RuleSet.judge)."""
    get = facts.get
    for fact, compare, value, missing_fails in checks:
        actual = get(fact)
        if (actual is None and missing_fails) or not compare(actual, value):
            return False
    return True


_Step = tuple[Rule, tuple[_Check, ...], tuple[tuple[_Check, ...], ...]]  # a rule, its all_of and any_of checks
# Cascades specialised to one state of the fingerprint facts kept per rule set (a few exist in practice:
# no match, one fp row, one block page ...); past this many, judging falls back to the whole cascade.
_MAX_SPECIALISED = 256


@dataclass(frozen=True, slots=True)
class RuleSet:
    name: str
    version: str
    applies_to: tuple[str, ...]
    rules: tuple[Rule, ...]
    # Each rule's conditions as flat checks, made once: `judge` runs ~10 rules for each of ~3
    # verdicts per measurement, and a method call per condition was a third of a verdict's cost.
    _cascade: tuple[_Step, ...] = field(default=(), init=False, repr=False, compare=False)
    # The cascade specialised to the fingerprint facts at their defaults (nothing matched), and to
    # each other state of them seen (see `judge`; a cache, filled as states appear).
    _unmatched: tuple[_Step, ...] = field(default=(), init=False, repr=False, compare=False)
    _specialised: dict[tuple[Any, ...], tuple[_Step, ...]] = field(default_factory=dict, init=False, repr=False,
                                                                   compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_cascade", tuple(
            (rule, _checks(rule.all_of), tuple(_checks(group) for group in rule.any_of)) for rule in self.rules))
        object.__setattr__(self, "_unmatched", self._specialise(tuple(_FINGERPRINT_FACTS.values())))

    @property
    def rules_version(self) -> str:
        return f"{self.name}/{self.version}"

    def judge(self, facts: Mapping[str, Any], fingerprinted: bool = True) -> Rule:
        """The first rule whose conditions all hold (and one `any` group, if it has them).

        The fingerprint facts (`_FINGERPRINT_FACTS`) take few values: for each state of them the
        cascade is specialised once, without the rules a condition on them rules out and without
        the conditions on them that hold (most features match no fingerprint: the four
        fingerprint rules at the top of a cascade are then never tried). Same first rule.
        `fingerprinted=False` says the fingerprint facts are at their defaults (nothing matched),
        which spares reading them.
        """
        if fingerprinted:
            state = tuple(map(facts.get, _FINGERPRINT_FACT_NAMES))
            cascade = self._specialised.get(state)
            if cascade is None:
                cascade = self._specialise(state) if len(self._specialised) < _MAX_SPECIALISED else self._cascade
        else:
            cascade = self._unmatched
        for rule, all_of, any_of in cascade:
            if _all_hold(all_of, facts) and (not any_of or any(_all_hold(group, facts) for group in any_of)):
                return rule
        raise RulesError(f"rule set {self.rules_version} has no fallback rule")

    def _specialise(self, state: tuple[Any, ...]) -> tuple[_Step, ...]:
        known = dict(zip(_FINGERPRINT_FACT_NAMES, state))
        cascade = []
        for rule, all_of, any_of in self._cascade:
            decided = [check for check in all_of if check[0] in known]
            if _all_hold(tuple(decided), known):
                cascade.append((rule, tuple(check for check in all_of if check[0] not in known), any_of))
        specialised = tuple(cascade)
        self._specialised[state] = specialised
        return specialised


def _conditions(spec: Any, where: str) -> tuple[Condition, ...]:
    if spec is None:
        return ()
    if not isinstance(spec, dict):
        raise RulesError(f"{where}: conditions must be a mapping, got {spec!r}")
    conditions = []
    for fact, test in spec.items():
        if isinstance(test, dict):
            for op, value in test.items():
                if op not in _OPERATORS:
                    raise RulesError(f"{where}: unknown operator {op!r}")
                conditions.append(Condition(str(fact), op, tuple(value) if op == "in" else value))
        else:
            conditions.append(Condition(str(fact), "eq", test))
    return tuple(conditions)


def parse_rule_set(document: Mapping[str, Any], source: str) -> RuleSet:
    rules = []
    for index, spec in enumerate(document.get("rules") or ()):
        where = f"{source} rule #{index} ({spec.get('id')})"
        verdict, method = spec.get("verdict"), spec.get("method")
        if verdict not in VERDICTS:
            raise RulesError(f"{where}: verdict must be one of {VERDICTS}")
        if method is not None and method not in METHODS + qualifiers(verdict):
            raise RulesError(f"{where}: unknown method {method!r}")
        if not is_finding(verdict, method):
            raise RulesError(f"{where}: a method goes with, and only with, a blocked verdict (a throttled one "
                             "names a kind of throttling)")
        confidence = float(spec.get("confidence", 0.0))
        if not 0.0 <= confidence <= 1.0:
            raise RulesError(f"{where}: confidence must be within [0, 1]")
        fingerprint, confirmed = spec.get("fingerprint"), spec.get("confirmed", False)
        if fingerprint is not None and fingerprint not in FINGERPRINT_KINDS:
            raise RulesError(f"{where}: fingerprint must be one of {FINGERPRINT_KINDS}")
        if confirmed not in (True, False) or (confirmed and (verdict != "blocked" or fingerprint not in ("dns", "http"))):
            raise RulesError(f"{where}: only a blocked verdict citing a blocking fingerprint can be confirmed")
        rules.append(Rule(
            id=str(spec["id"]), verdict=verdict, method=method, confidence=confidence,
            all_of=_conditions(spec.get("when"), where),
            any_of=tuple(_conditions(group, where) for group in spec.get("any") or ()),
            fingerprint=fingerprint, confirmed=bool(confirmed),
        ))
    if not rules or rules[-1].all_of or rules[-1].any_of:
        raise RulesError(f"{source}: the last rule must be an unconditional fallback")
    return RuleSet(
        name=str(document["name"]), version=str(document["version"]),
        applies_to=tuple(document.get("applies_to") or ()), rules=tuple(rules),
    )


def load_rule_sets(directory: Path | None = None) -> dict[str, RuleSet]:
    """test_name -> RuleSet, from every YAML file in `directory` (default: the shipped rules)."""
    if directory is None:
        files = [(entry.name, entry.read_text(encoding="utf-8"))
                 for entry in resources.files(RULES_PACKAGE).iterdir() if entry.name.endswith(".yaml")]
    else:
        files = [(path.name, path.read_text(encoding="utf-8")) for path in sorted(directory.glob("*.yaml"))]
    by_test: dict[str, RuleSet] = {}
    for name, text in sorted(files):
        rule_set = parse_rule_set(yaml.load(text, Loader=_YAML_LOADER), name)
        for test_name in rule_set.applies_to:
            if test_name in by_test:
                raise RulesError(f"{test_name} is claimed by {by_test[test_name].name} and {rule_set.name}")
            by_test[test_name] = rule_set
    return by_test


@lru_cache(maxsize=1)
def default_rule_sets() -> dict[str, RuleSet]:
    return load_rule_sets()


@lru_cache(maxsize=1)
def not_judged() -> dict[str, str]:
    """OONI test name -> why wallwatch stores its measurements without judging them (data/not_judged.yaml)."""
    text = resources.files("wallwatch.analysis.verdicts.data").joinpath("not_judged.yaml").read_text(encoding="utf-8")
    return {str(name): str(why) for name, why in (yaml.load(text, Loader=_YAML_LOADER) or {}).items()}


def judgement_of(test_name: str, rule_sets: Mapping[str, RuleSet] | None = None) -> str:
    """How a test's measurements are judged, in words for the ingest summary."""
    rule_set = (rule_sets or default_rule_sets()).get(test_name)
    if rule_set is not None:
        return f"judged by {rule_set.rules_version}"
    why = not_judged().get(test_name)
    return f"stored, not judged: {why}" if why else "stored, not judged: a test wallwatch does not know"


# -- facts per feature ------------------------------------------------------------

_TIMEOUTS = frozenset({"generic_timeout_error", "connect_operation_timed_out", "timeout"})
_RESET = "connection_reset"


def _is_timeout(failure: str | None) -> bool:
    return failure is not None and (failure in _TIMEOUTS or "timed_out" in failure or "timeout" in failure)


# The failures that can be evidence (verdicts/failures.py), for a set lookup: the verdicts count them
# for every row, `x in _INTERFERENCE` is False for None and for every string of another class.
_INTERFERENCE = interference_strings()


# Every fact a rule may test, with its value before any row is counted.
_FACTS_TEMPLATE: dict[str, Any] = {
    **dict.fromkeys((
        "n_dns", "n_dns_ok", "n_dns_failed", "n_dns_nxdomain", "n_dns_bogon",
        "n_dns_inconsistent", "n_endpoints", "n_ok", "n_failed", "n_tcp_ok", "n_tcp_reset", "n_tcp_timeout",
        "n_tcp_refused", "n_tcp_failed_ctrl_ok", "n_tcp_reset_ctrl_ok", "n_tcp_failed_ctrl_failed",
        "n_tls_failed", "n_tls_reset", "n_tls_timeout", "n_tls_cert", "n_http_failed", "n_http_reset",
        "n_probe_dns_inconsistent", "n_probe_faults", "n_unclassified_failures"), 0),
    "probe_online": False, "has_control": False, "final_http_ok": False, "status_class_match": None,
    "ctrl_dns_ok": None, "ctrl_http_ok": None, "tunnel_ok": False, "tunnel_reset": False,
    **_FINGERPRINT_FACTS,  # set by `judge_measurement` from the matches
    "probe_fault": None,  # the first probe-side failure string seen (failures.py)
    "unclassified_failure": None,  # the first failure string failures.csv does not list
    "tampering": None, "ech_control_ok": None, "ech_target_ok": None, "ech_target_interference": False,
}


def feature_facts(rows: Sequence[Row], measurement: MeasurementFacts,
                  extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The flat facts the rules test, summarising one feature's observation rows."""
    facts = _FACTS_TEMPLATE.copy()
    facts["probe_online"] = measurement.any_network_success
    for row in rows:
        if row["dns_engine"] is not None:
            _add_dns_facts(facts, row)
        else:
            _add_endpoint_facts(facts, row)
    if extra:
        facts.update(extra)
    return facts


def _add_dns_facts(facts: dict[str, Any], row: Row) -> None:
    facts["n_dns"] += 1
    failure = row["dns_failure"]
    if row["dns_answers"]:
        facts["n_dns_ok"] += 1
    elif failure in _INTERFERENCE:
        facts["n_dns_failed"] += 1
        if failure == "dns_nxdomain_error":
            facts["n_dns_nxdomain"] += 1
    elif failure is not None and is_never_evidence(failure):
        _note_fault(facts, failure)
    if failure == "dns_bogon_error" or row["dns_bogon"]:
        facts["n_dns_bogon"] += 1
    if row["dns_ctrl_consistent"] is False:
        facts["n_dns_inconsistent"] += 1
    if row["ctrl_dns_failure"] is not None or row["dns_ctrl_consistent"] is not None:
        facts["has_control"] = True
    _note_ctrl_dns(facts, row)


def _note_ctrl_dns(facts: dict[str, Any], row: Row) -> None:
    if row["ctrl_http_status"] is not None or row["ctrl_http_failure"] is not None:
        facts["has_control"] = True
        facts["ctrl_http_ok"] = row["ctrl_http_failure"] is None and bool(row["ctrl_http_status"])
    if facts["has_control"] or row["ctrl_tcp_success"] is not None:
        facts["has_control"] = True
        if facts["ctrl_dns_ok"] is None:
            facts["ctrl_dns_ok"] = row["ctrl_dns_failure"] is None


def _note_fault(facts: dict[str, Any], failure: str) -> None:
    """Count a failure that is never evidence: a probe fault, or a string the taxonomy does not list."""
    if failure_class(failure) == PROBE:
        facts["n_probe_faults"] += 1
        if facts["probe_fault"] is None:
            facts["probe_fault"] = failure
    else:
        facts["n_unclassified_failures"] += 1
        if facts["unclassified_failure"] is None:
            facts["unclassified_failure"] = failure


def _note_attempt_without_evidence(facts: dict[str, Any], *failures: str | None) -> bool:
    """When every failure of an attempt is never evidence (no IPv6 route, the probe's own exception
    text, a string nobody classed), note the first probe fault and the first unclassified string and
    say so: such an attempt says nothing about the network."""
    probe = unclassified = None
    for failure in failures:
        if failure is None:
            continue
        kind = failure_class(failure)
        if kind == PROBE:
            probe = probe or failure
        elif kind == UNCLASSIFIED:
            unclassified = unclassified or failure
        else:
            return False  # interference or the server's answer: the attempt tells something
    for first in (probe, unclassified):
        if first is not None:
            _note_fault(facts, first)
    return probe is not None or unclassified is not None


def _add_endpoint_facts(facts: dict[str, Any], row: Row) -> None:
    if row["tunnel_failure"] is not None or row["tunnel_bootstrap_s"] is not None:
        failure = row["tunnel_failure"]
        facts["tunnel_ok"] = facts["tunnel_ok"] or failure is None  # one bootstrap / target / lookup worked
        facts["tunnel_reset"] = facts["tunnel_reset"] or (bool(failure) and _RESET in failure)
        if is_never_evidence(failure):
            _note_fault(facts, failure)
        return
    tcp, tls, http = row["tcp_failure"], row["tls_failure"], row["http_failure"]
    failed = tcp is not None or tls is not None or http is not None  # most endpoints: nothing to class
    if failed and row["http_status"] is None and _note_attempt_without_evidence(facts, tcp, tls, http):
        return  # not an attempt that can tell us anything

    facts["n_endpoints"] += 1
    tcp_ok = row["tcp_success"] is True or (row["tcp_success"] is None and (row["tls_server_name"] is not None
                                                                            or row["http_status"] is not None))
    if row["tcp_success"] is True:
        facts["n_tcp_ok"] += 1
    if failed:
        _add_failure_facts(facts, row, tcp, tls, http)
    if row["ctrl_tcp_success"] is not None or row["ctrl_http_status"] is not None or row["ctrl_http_failure"]:
        facts["has_control"] = True
    _note_ctrl_dns(facts, row)
    reached = _reached(row, tcp_ok)
    facts["n_ok"] += reached
    facts["n_failed"] += not reached
    if row["http_url"] is not None:
        _add_final_http(facts, row)


def _add_failure_facts(facts: dict[str, Any], row: Row, tcp: str | None, tls: str | None, http: str | None) -> None:
    """Count an endpoint's interference candidates (failures.py) by layer and kind."""
    if tcp in _INTERFERENCE:
        facts["n_tcp_reset"] += tcp == _RESET
        facts["n_tcp_timeout"] += _is_timeout(tcp)
        facts["n_tcp_refused"] += tcp == "connection_refused"
        if row["ctrl_tcp_success"] is True:
            facts["n_tcp_failed_ctrl_ok"] += 1
            facts["n_tcp_reset_ctrl_ok"] += tcp == _RESET
        elif row["ctrl_tcp_success"] is False:
            facts["n_tcp_failed_ctrl_failed"] += 1
    if tls in _INTERFERENCE:
        facts["n_tls_failed"] += 1
        facts["n_tls_reset"] += tls == _RESET
        facts["n_tls_timeout"] += _is_timeout(tls)
        facts["n_tls_cert"] += tls.startswith("ssl_")  # type: ignore[union-attr]
    if http in _INTERFERENCE and row["http_status"] is None:
        facts["n_http_failed"] += 1
        facts["n_http_reset"] += http == _RESET


def _reached(row: Row, tcp_ok: bool) -> bool:
    """The endpoint answered at the deepest layer attempted (any HTTP status counts)."""
    if row["http_url"] is not None:
        # Any answer counts, even one the probe then failed on (e.g. http_invalid_redirect_url
        # after a 307): a server that answered was reachable.
        # A round trip with no failure is a response too (2019 probes logged no status code).
        return row["http_status"] is not None or row["http_failure"] is None
    if row["tls_server_name"] is not None:
        return row["tls_failure"] is None
    return tcp_ok and row["tcp_failure"] is None


def _add_final_http(facts: dict[str, Any], row: Row) -> None:
    if row["http_status"] is not None:
        # With redirects only the final answer is compared (ts-017 `status_code_match`).
        facts["final_http_ok"] = True
        if row["ctrl_http_status"]:
            facts["status_class_match"] = row["http_status"] // 100 == row["ctrl_http_status"] // 100 or (
                facts["status_class_match"] is True)


# -- per-test extra facts ---------------------------------------------------------

_FB_KEYS = {"text": ("b_api", "b_graph", "edge"), "media": ("external_cdn", "scontent_cdn"),
            "web": ("star",), "calls": ("stun",)}


def _tampering(value: Any) -> bool | None:
    """ts-006 `tampering` is a map whose `total` says it all; ts-007's is a bool."""
    if isinstance(value, dict):
        value = value.get("total")
    return value if isinstance(value, bool) else None


def _extra_facts(test_name: str, feature: str, test_keys: Mapping[str, Any]) -> dict[str, Any] | None:
    if test_name in ("http_header_field_manipulation", "http_invalid_request_line"):
        return {"tampering": _tampering(test_keys.get("tampering"))}
    if test_name == "echcheck":
        handshakes = ech_handshakes(test_keys)
        controls = [entry.get("failure") for entry, control in handshakes if control]
        targets = [entry.get("failure") for entry, control in handshakes if not control]
        return {"ech_control_ok": bool(controls) and all(failure is None for failure in controls),
                "ech_target_ok": bool(targets) and all(failure is None for failure in targets),
                "ech_target_interference": any(isinstance(failure, str) and is_interference_candidate(failure)
                                               for failure in targets)}
    if test_name == "facebook_messenger":
        # ts-019: `facebook_<ep>_dns_consistent` is false when an answer's ASN is not Facebook's
        # (AS32934); the probe had the ASN database we do not, so its fact is kept.
        keys = _FB_KEYS.get(feature, ())
        return {"n_probe_dns_inconsistent": sum(test_keys.get(f"facebook_{k}_dns_consistent") is False for k in keys)}
    return None


# -- the verdict rows ---------------------------------------------------------------


# Every column of a verdict row at its default (rows.VerdictRow), copied for each row.
_VERDICT_TEMPLATE: Row = row_template(VerdictRow)


def _verdict_base(header: Header, meta: Mapping[str, Any]) -> Row:
    """The verdict template with the measurement's own columns filled (copied for each verdict)."""
    row = header_row(_VERDICT_TEMPLATE, header)
    row["probe_network_name"] = meta.get("probe_network_name")
    row["probe_key"] = meta.get("probe_key")
    row["software_name"] = meta.get("software_name")
    return row


def _verdict_row(base: Row, service: str, feature: str, target: str | None, verdict: str, method: str | None,
                 confidence: float, rule_id: str, rules_version: str, blocked_share: float | None = None) -> Row:
    row = base.copy()
    row["service"] = service
    row["feature"] = feature
    row["target"] = target
    row["verdict"] = verdict
    row["method"] = method
    row["confidence"] = confidence
    row["rule_id"] = rule_id
    row["rules_version"] = rules_version
    row["blocked_share"] = blocked_share
    return row


# -- fingerprint evidence -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GroupFingerprints:
    """The fingerprint matches of one feature's observation rows, by what a rule may cite."""

    dns: tuple[FingerprintMatch, ...] = ()
    http: tuple[FingerprintMatch, ...] = ()
    vague: tuple[FingerprintMatch, ...] = ()
    false_positives: tuple[FingerprintMatch, ...] = ()

    def cited(self, kind: str, probe_cc: str) -> FingerprintMatch | None:
        """The match a rule citing `kind` names: one expected in the probe's country first."""
        matches = {"dns": self.dns, "http": self.http, "vague": self.vague, "fp": self.false_positives}[kind]
        expected = [m for m in matches if m.fingerprint.expected_in(probe_cc)]
        return best(expected) or best(matches)


_NO_FINGERPRINTS = GroupFingerprints()
_Matches = Sequence[tuple[Row, Fingerprint]]  # observation rows with the fingerprint row each is named by


def group_fingerprints(matches: _Matches) -> GroupFingerprints:
    """A feature's matches (MeasurementFacts.fingerprint_matches) by what a rule may cite
    (`Fingerprint.kind`), each with where it was found: the name queried or the response's URL."""
    if not matches:
        return _NO_FINGERPRINTS
    by_kind: dict[str, list[FingerprintMatch]] = {kind: [] for kind in KINDS}
    for row, fingerprint in matches:
        where = row["hostname"] if fingerprint.location_found == "dns" else row["http_url"]
        by_kind[fingerprint.kind].append(FingerprintMatch(fingerprint, fingerprint.location_found, where))
    return GroupFingerprints(*(tuple(by_kind[kind]) for kind in (DNS_EVIDENCE, HTTP_EVIDENCE, VAGUE, FALSE_POSITIVE)))


_KIND_COUNTS = {DNS_EVIDENCE: "n_dns_fingerprint", HTTP_EVIDENCE: "n_blockpage", VAGUE: "n_vague_blockpage",
                FALSE_POSITIVE: "n_known_false_positive"}
_KIND_EXPECTED = {DNS_EVIDENCE: "dns_fingerprint_expected", HTTP_EVIDENCE: "blockpage_expected"}


def _fingerprint_facts(facts: dict[str, Any], matches: _Matches, probe_cc: str) -> None:
    """Facts of a feature's matches: counted by kind, and whether one is expected in the probe's country."""
    for _, fingerprint in matches:
        kind = fingerprint.kind
        facts[_KIND_COUNTS[kind]] += 1
        expected = _KIND_EXPECTED.get(kind)
        if expected is not None and not facts[expected] and fingerprint.expected_in(probe_cc):
            facts[expected] = True


def _cite(row: Row, rule: Rule, found: GroupFingerprints, probe_cc: str, facts: Mapping[str, Any]) -> Row:
    """Fill the verdict's evidence columns: the fingerprint a rule cites, the probe fault it rests on."""
    if rule.fingerprint is not None:
        match = found.cited(rule.fingerprint, probe_cc)
        if match is not None:
            row["confirmed"] = rule.confirmed and match.fingerprint.expected_in(probe_cc)
            row["fingerprint"] = match.fingerprint.name
            row["fingerprint_scope"] = match.fingerprint.scope
            row["fingerprint_location"] = match.location
            row["fingerprint_found_in"] = match.where
    if row["verdict"] == "unknown" and facts.get("probe_fault") is not None:
        row["probe_fault"] = facts["probe_fault"]
    row["unclassified_failure"] = facts.get("unclassified_failure")
    return row


def judge_measurement(header: Header, meta: Mapping[str, Any], test_keys: Mapping[str, Any],
                      measurement: MeasurementFacts, rule_sets: Mapping[str, RuleSet] | None = None) -> list[Row]:
    """Verdict rows for one measurement: the probe's own for wallwatch (unless a fingerprint matched),
    else by the rule set of its test."""
    if meta.get("software_name") == "wallwatch" and _carries_verdicts(test_keys):
        return list(_wallwatch_verdicts(header, meta, test_keys, measurement))
    rule_set = (rule_sets or default_rule_sets()).get(header.test_name)
    if rule_set is None:
        return []
    base = _verdict_base(header, meta)
    rows = []
    # The rows that matched a fingerprint, by feature group (most measurements have none).
    matched: dict[tuple[str, str, str | None], list[tuple[Row, Fingerprint]]] = {}
    for match in measurement.fingerprint_matches:
        row = match[0]
        matched.setdefault((row["service"], row["feature"], row["target"]), []).append(match)
    for key, group in iter_feature_groups(measurement.rows):
        service, feature, target = key
        if feature == "uptime":
            continue  # ts-029: uptime.signal.org is resolved and ignored by OONI too
        facts = feature_facts(group, measurement, _extra_facts(header.test_name, feature, test_keys))
        matches = matched.get(key) if matched else None
        if matches:
            _fingerprint_facts(facts, matches, header.probe_cc)
        rule = rule_set.judge(facts, fingerprinted=bool(matches))
        row = _verdict_row(base, service, feature, target, rule.verdict, rule.method, rule.confidence,
                           rule.id, rule_set.rules_version)
        found = group_fingerprints(matches) if matches and rule.fingerprint is not None else _NO_FINGERPRINTS
        rows.append(_cite(row, rule, found, header.probe_cc, facts))
    return rows


def _carries_verdicts(test_keys: Mapping[str, Any]) -> bool:
    """The probe judged its own features (every wallwatch nettest but web_connectivity)."""
    extension = test_keys.get("x_wallwatch")
    return not isinstance(extension, dict) or "features" in extension


WALLWATCH_INVALID_RULE = "wallwatch.invalid_feature_verdict"


def _unit_fraction(value: Any) -> float | None:
    """A number within [0, 1] (a probe's confidence or blocked_share) as a float, else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0:
        return float(value)
    return None


# wallwatch's own records: a fingerprint match in the probe's DNS answers or HTTP responses decides
# before the probe's verdict, as it does for OONI's tests (rule ids of this pseudo rule set).
WALLWATCH_FINGERPRINT_RULES = "wallwatch-fingerprints/1"
_WALLWATCH_FINGERPRINT_RULES = {
    ("dns", True): Rule("ww.dns_fingerprint", "blocked", "dns", 0.95, (), (), "dns", True),
    ("dns", False): Rule("ww.dns_fingerprint_elsewhere", "blocked", "dns", 0.7, (), (), "dns", False),
    ("http", True): Rule("ww.blockpage", "blocked", "blockpage", 0.95, (), (), "http", True),
    ("http", False): Rule("ww.blockpage_elsewhere", "blocked", "blockpage", 0.7, (), (), "http", False),
}


def _wallwatch_fingerprint_rule(found: GroupFingerprints, probe_cc: str) -> Rule | None:
    for kind, matches in (("dns", found.dns), ("http", found.http)):
        if matches:
            expected = any(m.fingerprint.expected_in(probe_cc) for m in matches)
            return _WALLWATCH_FINGERPRINT_RULES[(kind, expected)]
    return None


def _wallwatch_verdicts(header: Header, meta: Mapping[str, Any], test_keys: Mapping[str, Any],
                        measurement: MeasurementFacts) -> Iterable[Row]:
    extension = test_keys.get("x_wallwatch")
    extension = extension if isinstance(extension, dict) else {}
    rules_version = str(extension.get("rules_version") or "wallwatch-unversioned")
    features = extension.get("features")
    service = header.test_name
    base = _verdict_base(header, meta)
    by_feature: dict[str, list[tuple[Row, Fingerprint]]] = {}
    for match in measurement.fingerprint_matches:
        by_feature.setdefault(match[0]["feature"], []).append(match)
    for feature, made in (features.items() if isinstance(features, dict) else ()):
        found = group_fingerprints(by_feature.get(str(feature), ()))
        rule = _wallwatch_fingerprint_rule(found, header.probe_cc) if found is not _NO_FINGERPRINTS else None
        made = made if isinstance(made, dict) else {}
        share = _unit_fraction(made.get("blocked_share"))
        if rule is not None:
            row = _verdict_row(base, service, str(feature), None, rule.verdict, rule.method, rule.confidence,
                               rule.id, WALLWATCH_FINGERPRINT_RULES, share)
            yield _cite(row, rule, found, header.probe_cc, {})
            continue
        verdict, method, confidence = made.get("verdict"), made.get("method"), _unit_fraction(made.get("confidence"))
        rule_id = made.get("rule")
        # Each check also narrows the type (for mypy, and mypyc's compiled checks: analysis/compiled.py).
        if (isinstance(verdict, str) and is_finding(verdict, method) and confidence is not None
                and isinstance(rule_id, str)):
            yield _verdict_row(base, service, str(feature), None, verdict, method, confidence, rule_id,
                               rules_version, share)
        else:
            # Keep the row (a feature was measured) but refuse to repeat a verdict we cannot read.
            yield _verdict_row(base, service, str(feature), None, "unknown", None, 0.0, WALLWATCH_INVALID_RULE,
                               rules_version)
