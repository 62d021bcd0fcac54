"""Rules as data: load, validate and evaluate a YAML censor policy.

A policy is an ordered list of rules; each matches flow properties (addresses,
ports and what the analyzers found) and names an action. The first rule that
matches wins, as in OpenGFW (`ruleset/expr.go`). Evaluation is three-valued
because properties arrive packet by packet: a rule whose properties are not
known yet does not match *yet*, and a later rule may only win once every
earlier rule is known not to match. A flow that no rule can match any more is
allowed.

Per-rule options ([Rambert2021], [Wu2023]): `probability` (the rule fires
on a matching flow with this chance, drawn once per flow: "on and off"
blocking), `residual` / `duration` (after the rule fires, new flows to the
same (client IP, server IP, server port) triple, or (client IP, server IP)
pair, are dropped for a while: the GFW's penalty box), and the `throttle`
action's `rate`, `delay_ms` and `jitter_ms`.
"""

from __future__ import annotations

import enum
import fnmatch
import hashlib
import ipaddress
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from wallwatch.censor.analyzers import PROPERTY_TYPES
from wallwatch.censor.analyzers.base import ADDRESS_PROPERTIES, FLOW_PROPERTIES, PropType
from wallwatch.yamlfile import KeyPath, YamlDocument, YamlError, load_yaml

ACTIONS = ("allow", "drop", "reset", "dns-inject", "blackhole-ip", "throttle", "blockpage")
# Actions that stop a flow: the ones `residual` (penalty box) may follow.
BLOCKING_ACTIONS = frozenset({"drop", "reset", "blockpage"})

# What each property is, which decides how values compare: declared by the
# flow (analyzers.base.FLOW_PROPERTIES) and by each analyzer (`provides`).
KEY_TYPES: Mapping[str, PropType] = PROPERTY_TYPES
# Keys known from the first packet of a flow (no analyzer needed): what a
# kernel rule can match.
ADDRESS_KEYS = frozenset(ADDRESS_PROPERTIES)
# Every key the engine sets at a flow's first packet.
FLOW_KEYS = frozenset(FLOW_PROPERTIES)

OPERATORS_BY_TYPE: Mapping[PropType, frozenset[str]] = {
    PropType.NAME: frozenset({"suffix", "glob", "regex", "contains"}),
    PropType.TEXT: frozenset({"glob", "regex", "contains"}),
    PropType.IP: frozenset({"cidr"}),
    PropType.INT: frozenset({"range"}),
    PropType.BOOL: frozenset(),
}

# The GFW sends three RSTs per direction ([Clayton2006]; still several in 2023, [net4people285]); a cap keeps a typo
# from turning the censor into a packet flood.
DEFAULT_RST_COUNT = 3
MAX_RST_COUNT = 20
# The lab's "nothing lives here" sink (lab contract), the default forged answer.
DEFAULT_FORGED_ANSWER = "198.19.250.1"
# dnspython/protocols.dns default; GFW forgeries carry assorted TTLs.
DEFAULT_FORGED_TTL = 60
# `blockpage`: the HTTP response injected in place of the server's. An ISP's block page is a small
# HTML page served 200 or 403 (the pages of [ooni-fingerprints]); a cap keeps it within a few packets.
DEFAULT_BLOCKPAGE_STATUS = 200
DEFAULT_BLOCKPAGE = ("<html><head><meta charset=\"utf-8\"><title>Blocked</title></head>"
                     "<body><p>This page is not available on this network.</p></body></html>\n")
MAX_BLOCKPAGE_BYTES = 16 * 1024
# The GFW's penalty box: 90 s on (client IP, server IP, server port) after a
# keyword/SNI trigger [Rambert2021]. FET blocking
# lasts "up to three minutes" = 180 s ([Wu2023]; protocols.fet).
DEFAULT_RESIDUAL_SECONDS = 90
MAX_RESIDUAL_SECONDS = 86400
RESIDUAL_SCOPES = ("triple", "pair")
# Throttle rates: tc's units (tc(8) "RATES"); htb below ~8 kbit/s is not
# meaningful at MTU-sized packets and above 10 Gbit/s is beyond a veth here.
MIN_RATE_BPS = 8_000
MAX_RATE_BPS = 10_000_000_000
_RATE_UNITS = {"bit": 1, "kbit": 1_000, "mbit": 1_000_000, "gbit": 1_000_000_000,
               "bps": 8, "kbps": 8_000, "mbps": 8_000_000, "gbps": 8_000_000_000}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]+)\s*$", re.IGNORECASE)
# Userspace delay holds verdicts; a minute is beyond any real path.
MAX_DELAY_MS = 60_000
# htb class ids 1:1..1:N are encoded in connmark bits 24-31 (actions.py).
MAX_THROTTLE_RULES = 200


class PolicyError(ValueError):
    """The policy is not valid; the message names the file and line (YAML input), the rule and key.

    `path` is the key path of the offending part (("rules", 0, "match", "tls.sni")), so a
    caller that embedded the policy in a file of its own can name that file's line."""

    def __init__(self, message: str, *, path: KeyPath = (), line: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.line = line


class Tri(enum.Enum):
    """A rule's match on what is known of a flow so far."""

    NO = 0
    YES = 1
    UNKNOWN = 2  # a property it needs may still arrive


# Bound once for the per-packet loop: looking a member up on an Enum class costs
# ~70 ns on Python 3.11, a module global ~10 ns.
_YES, _NO, _UNKNOWN = Tri.YES, Tri.NO, Tri.UNKNOWN


@dataclass(frozen=True, slots=True)
class Decided:
    """The policy's answer for a flow: this rule matched (and, with a probability, fired)."""

    rule: Rule


class Undecided(enum.Enum):
    """The policy's answer for a flow when no rule won."""

    NO_MATCH = "no-match"  # no rule can match any more: the flow is allowed
    NEED_MORE_DATA = "need-more-data"  # a rule waits for properties still to come


RuleResult = Decided | Undecided


@dataclass(frozen=True, slots=True)
class Matcher:
    key: str
    operator: str  # "eq" | "suffix" | "glob" | "regex" | "cidr" | "range"
    values: tuple[Any, ...]
    test: Callable[[Any], bool] = field(compare=False, repr=False)

    def matches(self, value: object) -> bool:
        if value is None:
            return False
        if isinstance(value, tuple):
            return any(self.test(item) for item in value)
        try:
            return self.test(value)
        except (TypeError, ValueError):
            return False


@dataclass(frozen=True, slots=True)
class Residual:
    """After a rule fires: drop new flows to the same triple (or pair) for `seconds`."""

    seconds: float
    scope: str = "triple"  # "triple": (client IP, server IP, server port) | "pair": (client IP, server IP)


@dataclass(frozen=True, slots=True)
class Throttle:
    """The throttle action's parameters; rate_bps None = no rate limit (delay only)."""

    rate_bps: int | None
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    htb_class: int = 0  # 1..MAX_THROTTLE_RULES when rate_bps is set (assigned by parse_policy)


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    matchers: tuple[Matcher, ...]
    action: str
    count: int = DEFAULT_RST_COUNT
    answer: tuple[str, ...] = (DEFAULT_FORGED_ANSWER,)
    ttl: int = DEFAULT_FORGED_TTL
    probability: float = 1.0
    residual: Residual | None = None
    throttle: Throttle | None = None
    page: str = DEFAULT_BLOCKPAGE  # blockpage: the HTML served
    status: int = DEFAULT_BLOCKPAGE_STATUS  # blockpage: its HTTP status

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(m.key for m in self.matchers)

    def evaluate(self, props: Mapping[str, object], pending: Callable[[str], bool]) -> Tri:
        """YES, NO or UNKNOWN given the known properties and which keys may still arrive."""
        result = _YES
        for matcher in self.matchers:
            if matcher.key in props:
                if not matcher.matches(props[matcher.key]):
                    return _NO
            elif pending(matcher.key):
                result = _UNKNOWN
            else:
                return _NO
        return result


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    description: str
    rules: tuple[Rule, ...]
    sha256: str = ""
    path: str = ""

    @property
    def static_rules(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.action == "blackhole-ip")

    @property
    def throttle_classes(self) -> tuple[tuple[int, int, str], ...]:
        """(htb class, rate in bit/s, rule name) for every rate-limiting throttle rule."""
        return tuple((r.throttle.htb_class, r.throttle.rate_bps, r.name)
                     for r in self.rules if r.throttle is not None and r.throttle.rate_bps)

    def decide(self, props: Mapping[str, object], pending: Callable[[str], bool],
               fires: Callable[[Rule], bool] | None = None) -> RuleResult:
        """The first rule that matches, in order; a rule whose properties may still
        arrive makes every rule below it wait (NEED_MORE_DATA).

        `fires(rule)` is asked for a matching rule with probability < 1: False
        means the coin for this flow said no, and evaluation goes on below it.
        """
        for rule in self.rules:
            result = rule.evaluate(props, pending)
            if result is _YES:
                if rule.probability >= 1.0 or fires is None or fires(rule):
                    return Decided(rule)
                continue
            if result is _UNKNOWN:
                return Undecided.NEED_MORE_DATA
        return Undecided.NO_MATCH


# --- loading ------------------------------------------------------------------

# A policy regex longer than this is refused: a rule names a domain or a path,
# not a grammar, and RE2's compiled program grows with the pattern.
MAX_REGEX_LENGTH = 1000
# RE2's memory budget for one compiled pattern (re2::RE2::Options::max_mem; its
# default is 8 MiB): a pattern whose automaton needs more fails to compile, so a
# policy cannot make the censor build a huge one per rule.
REGEX_MAX_MEM = 1 << 20


@dataclass(frozen=True, slots=True)
class _At:
    """Where a validator is: the words of its messages ("rule 'x', key 'tls.sni'") and the key
    path in the document (("rules", 0, "match", "tls.sni")) that becomes file:line."""

    text: str
    path: KeyPath = ()

    def into(self, *keys: str | int, text: str | None = None) -> _At:
        return _At(text if text is not None else self.text, self.path + keys)

    def error(self, message: str, *keys: str | int) -> PolicyError:
        return PolicyError(f"{self.text}: {message}" if self.text else message, path=self.path + keys)


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file; PolicyError ('file:line: rule ...: why') on any problem."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PolicyError(f"cannot read policy {path}: {exc.strerror}") from None
    return parse_policy(raw, path=str(path))


def parse_policy(source: bytes | str | Mapping[str, Any], *, path: str = "") -> Policy:
    """Validate a policy given as YAML bytes/text or as an already-parsed mapping.

    YAML goes through the strict loader (`wallwatch.yamlfile`: duplicate keys are
    errors) and every error names `file:line`. A mapping's errors carry the key
    path instead (`PolicyError.path`), for a caller that knows the lines (a scenario).
    """
    lines: YamlDocument | None = None
    if isinstance(source, Mapping):
        document: Any = source
        digest = hashlib.sha256(yaml.safe_dump(_plain(source), sort_keys=True).encode()).hexdigest()
    else:
        raw = source.encode() if isinstance(source, str) else source
        digest = hashlib.sha256(raw).hexdigest()
        try:
            lines = load_yaml(raw, path or "<policy>")
        except YamlError as exc:
            raise PolicyError(str(exc), line=exc.line) from None
        if lines.empty:
            raise PolicyError(f"{lines.at()}: the policy file is empty; a policy needs `rules` "
                              "(an explicit `rules: []` allows everything)", line=1)
        document = lines.data
    try:
        return _parse_document(document, digest, path)
    except PolicyError as exc:
        if lines is None:
            raise
        raise PolicyError(f"{lines.at(*exc.path)}: {exc}", path=exc.path, line=lines.line(*exc.path)) from None


def _plain(value: Any) -> Any:
    """Mappings and lists as plain dicts and lists (what yaml.safe_dump represents)."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _parse_document(document: Any, digest: str, path: str) -> Policy:
    top = _At("")
    if not isinstance(document, Mapping):
        raise top.error("a policy is a mapping with 'name', 'description' and 'rules'")
    _reject_unknown(document, {"name", "description", "rules"}, _At("policy"))
    if "rules" not in document:
        raise top.error("a policy needs `rules` (an explicit `rules: []` allows everything)")
    rules_doc = document["rules"]
    if not isinstance(rules_doc, list):
        raise top.error(f"policy 'rules' must be a list (`rules: []` for none), got {rules_doc!r}", "rules")
    name = document.get("name", Path(path).stem if path else "unnamed")
    if not isinstance(name, str) or not name.strip():
        raise top.error(f"policy 'name' must be a non-empty string, got {name!r}", "name")
    description = document.get("description") or ""
    if not isinstance(description, str):
        raise top.error(f"policy 'description' must be a string, got {description!r}", "description")
    rules: list[Rule] = []
    seen: set[str] = set()
    htb_classes = 0
    for index, rule_doc in enumerate(rules_doc):
        rule = _parse_rule(rule_doc, index)
        at = _At(f"rule {rule.name!r}", ("rules", index))
        if rule.name in seen:
            raise at.error("duplicate rule name", "name")
        seen.add(rule.name)
        if rule.throttle is not None and rule.throttle.rate_bps:
            htb_classes += 1
            if htb_classes > MAX_THROTTLE_RULES:
                raise at.error(f"more than {MAX_THROTTLE_RULES} rate-limiting throttle rules", "rate")
            rule = replace(rule, throttle=replace(rule.throttle, htb_class=htb_classes))
        rules.append(rule)
    return Policy(name, description.strip(), tuple(rules), digest, path)


def _reject_unknown(doc: Mapping[str, Any], allowed: set[str], at: _At) -> None:
    unknown = sorted(set(map(str, doc)) - allowed)
    if unknown:
        raise at.error(f"unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})", unknown[0])


def _parse_rule(doc: Any, index: int) -> Rule:
    at = _At(f"rule #{index + 1}", ("rules", index))
    if not isinstance(doc, Mapping):
        raise at.error("must be a mapping")
    name = doc.get("name")
    if not isinstance(name, str) or not name.strip():
        raise at.error("every rule needs a non-empty 'name'", "name")
    at = _At(f"rule {name!r}", ("rules", index))
    _reject_unknown(doc, {"name", "match", "action", "count", "answer", "ttl", "description", "probability",
                          "residual", "duration", "rate", "delay_ms", "jitter_ms", "page", "status"}, at)
    if not isinstance(doc.get("description", ""), str):
        raise at.error(f"'description' must be a string, got {doc['description']!r}", "description")
    action = doc.get("action")
    if action not in ACTIONS:
        raise at.error(f"action {action!r} is not one of {', '.join(ACTIONS)}", "action")
    match = doc.get("match")
    if not isinstance(match, Mapping) or not match:
        raise at.error("'match' must be a non-empty mapping of property -> value", "match")
    matchers = tuple(_compile_matcher(at.into("match"), key, value) for key, value in match.items())
    keys = {m.key for m in matchers}
    if action == "blackhole-ip" and not keys <= ADDRESS_KEYS:
        extra = ", ".join(sorted(keys - ADDRESS_KEYS))
        raise at.error(f"blackhole-ip is a static kernel rule; only {', '.join(sorted(ADDRESS_KEYS))}"
                       f" may be matched, not {extra}", "match")
    if action == "blackhole-ip" and not keys & {"ip.src", "ip.dst"}:
        raise at.error("blackhole-ip needs ip.src or ip.dst", "match")
    if action == "dns-inject" and not keys & {"dns.qname", "dns.qtype"}:
        raise at.error("dns-inject needs a dns.qname or dns.qtype match", "match")
    if "count" in doc and action != "reset":
        raise at.error("'count' only applies to the reset action", "count")
    if ("answer" in doc or "ttl" in doc) and action != "dns-inject":
        raise at.error("'answer' and 'ttl' only apply to the dns-inject action", "answer" if "answer" in doc else "ttl")
    if action == "blockpage" and not any(key.startswith("http.") for key in keys):
        raise at.error("blockpage answers an HTTP request; it needs an http.* match", "match")
    if ("page" in doc or "status" in doc) and action != "blockpage":
        raise at.error("'page' and 'status' only apply to the blockpage action", "page" if "page" in doc else "status")
    if action == "blackhole-ip":
        try:
            static_drops(Rule(name, matchers, action))  # validates now, at load time
        except PolicyError as exc:
            raise PolicyError(str(exc), path=at.path + ("match",)) from None
    count = _int_in(at, "count", doc.get("count", DEFAULT_RST_COUNT), 1, MAX_RST_COUNT)
    ttl = _int_in(at, "ttl", doc.get("ttl", DEFAULT_FORGED_TTL), 0, 2**31 - 1)
    page, status = _blockpage(at, doc)
    return Rule(name, matchers, action, count, _answers(at, doc.get("answer", DEFAULT_FORGED_ANSWER)), ttl,
                _probability(at, doc, action), _residual(at, doc, action), _throttle(at, doc, action),
                page, status)


def _blockpage(at: _At, doc: Mapping[str, Any]) -> tuple[str, int]:
    page = doc.get("page", DEFAULT_BLOCKPAGE)
    if not isinstance(page, str) or not page or len(page.encode()) > MAX_BLOCKPAGE_BYTES:
        raise at.error(f"'page' must be the page's text, 1..{MAX_BLOCKPAGE_BYTES} bytes", "page")
    return page, _int_in(at, "status", doc.get("status", DEFAULT_BLOCKPAGE_STATUS), 100, 599)


def _probability(at: _At, doc: Mapping[str, Any], action: str) -> float:
    if "probability" not in doc:
        return 1.0
    value = doc["probability"]
    if action == "blackhole-ip":
        raise at.error("'probability' cannot apply to blackhole-ip (a static kernel rule, no flow)", "probability")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise at.error(f"'probability' must be a number in (0, 1], got {value!r}", "probability")
    return float(value)


def _residual(at: _At, doc: Mapping[str, Any], action: str) -> Residual | None:
    if "residual" not in doc and "duration" not in doc:
        return None
    key = "residual" if "residual" in doc else "duration"
    if action not in BLOCKING_ACTIONS:
        raise at.error("'residual' and 'duration' only follow a blocking action "
                       f"({', '.join(sorted(BLOCKING_ACTIONS))}), not {action}", key)
    if "residual" in doc and "duration" in doc:
        raise at.error("give 'residual' or 'duration' (= residual on the triple), not both", "duration")
    if "duration" in doc:
        return Residual(_seconds(at.into("duration"), "duration", doc["duration"]), "triple")
    spec = doc["residual"]
    if not isinstance(spec, Mapping):
        raise at.error("'residual' must be a mapping like {seconds: 90, scope: triple}", "residual")
    _reject_unknown(spec, {"seconds", "scope"}, at.into("residual", text=f"{at.text}, residual"))
    scope = spec.get("scope", "triple")
    if scope not in RESIDUAL_SCOPES:
        raise at.error(f"residual 'scope' must be one of {', '.join(RESIDUAL_SCOPES)}, got {scope!r}",
                       "residual", "scope")
    seconds = _seconds(at.into("residual", "seconds"), "residual seconds", spec.get("seconds", DEFAULT_RESIDUAL_SECONDS))
    return Residual(seconds, scope)


def _seconds(at: _At, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_RESIDUAL_SECONDS:
        raise at.error(f"'{key}' must be a number of seconds in (0, {MAX_RESIDUAL_SECONDS}], got {value!r}")
    return float(value)


def parse_rate(value: Any) -> int:
    """'256kbit' -> 256000 bit/s, in tc's units (tc(8): bit, kbit, mbit, gbit; bps, kbps... are bytes/s)."""
    match = _RATE.match(str(value)) if isinstance(value, str) else None
    if match is None or match.group(2).lower() not in _RATE_UNITS:
        raise ValueError(f"a rate is a number and a unit ({', '.join(_RATE_UNITS)}), like \"256kbit\"; got {value!r}")
    return round(float(match.group(1)) * _RATE_UNITS[match.group(2).lower()])


def _throttle(at: _At, doc: Mapping[str, Any], action: str) -> Throttle | None:
    keys = [k for k in ("rate", "delay_ms", "jitter_ms") if k in doc]
    if action != "throttle":
        if keys:
            raise at.error(f"{', '.join(repr(k) for k in keys)} only apply to the throttle action", keys[0])
        return None
    if "rate" not in doc and "delay_ms" not in doc:
        raise at.error("throttle needs a 'rate' (like \"256kbit\") or a 'delay_ms', or both", "action")
    rate = None
    if "rate" in doc:
        try:
            rate = parse_rate(doc["rate"])
        except ValueError as exc:
            raise at.error(f"'rate': {exc}", "rate") from None
        if not MIN_RATE_BPS <= rate <= MAX_RATE_BPS:
            raise at.error(f"'rate' must be within 8kbit..10gbit, got {doc['rate']!r}", "rate")
    delay = _milliseconds(at, "delay_ms", doc.get("delay_ms", 0))
    jitter = _milliseconds(at, "jitter_ms", doc.get("jitter_ms", 0))
    if jitter > delay:
        raise at.error(f"'jitter_ms' ({jitter:g}) cannot exceed 'delay_ms' ({delay:g}): "
                       "a packet cannot leave before it arrived", "jitter_ms")
    return Throttle(rate, delay, jitter)


def _milliseconds(at: _At, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_DELAY_MS:
        raise at.error(f"'{key}' must be a number of milliseconds in 0..{MAX_DELAY_MS}, got {value!r}", key)
    return float(value)


def _int_in(at: _At, key: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise at.error(f"'{key}' must be an integer in {low}..{high}, got {value!r}", key)
    return value


def _answers(at: _At, value: Any) -> tuple[str, ...]:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise at.error("'answer' must name at least one address", "answer")
    if not all(isinstance(v, str) for v in values):
        raise at.error(f"'answer' must be an address or a list of addresses, got {value!r}", "answer")
    try:
        return tuple(str(ipaddress.ip_address(v)) for v in values)
    except ValueError as exc:
        raise at.error(f"'answer': {exc}", "answer") from None


# --- matchers -----------------------------------------------------------------


def _compile_matcher(at: _At, key: Any, spec: Any) -> Matcher:
    if key not in KEY_TYPES:
        raise at.error(f"unknown property {key!r} (known: {', '.join(KEY_TYPES)})", key)
    kind = KEY_TYPES[key]
    at = at.into(key, text=f"{at.text}, key {key!r}")
    if isinstance(spec, Mapping):
        if len(spec) != 1:
            raise at.error(f"a mapping value takes exactly one operator, got {sorted(map(str, spec))}")
        operator, operand = next(iter(spec.items()))
        if operator not in OPERATORS_BY_TYPE[kind]:
            allowed = ", ".join(sorted(OPERATORS_BY_TYPE[kind])) or "none (use a value or a list)"
            raise at.error(f"operator {operator!r} does not apply to a {kind} property; allowed: {allowed}", operator)
        values = tuple(operand) if isinstance(operand, list) else (operand,)
        at = at.into(operator)
    else:
        operator = "eq"
        values = tuple(spec) if isinstance(spec, list) else (spec,)
    if not values:
        raise at.error("empty list of values")
    try:
        test = _BUILDERS[operator](kind, values)
    except (ValueError, TypeError, re.error) as exc:
        raise at.error(f"bad {operator} value: {exc}") from None
    return Matcher(key, operator, values, test)


def _text_operand(value: Any) -> str:
    """A name, text or pattern as the policy wrote it: a string, never null or a number (YAML reads
    `1.5` and `null` as those; quote them), and never a string that is empty."""
    if not isinstance(value, str):
        raise ValueError(f"expected a string (quote it in YAML), got {value!r}")
    if not value:
        raise ValueError("an empty keyword, name or pattern is not allowed (it would match everything or nothing)")
    return value


def _normalise(kind: PropType, value: Any) -> Any:
    if kind is PropType.NAME:
        return _text_operand(value).lower().rstrip(".")
    if kind is PropType.TEXT:
        return _text_operand(value)
    if kind is PropType.IP:
        return ipaddress.ip_address(_text_operand(value))
    if kind is PropType.INT:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
        return value
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _build_eq(kind: PropType, values: tuple[Any, ...]) -> Callable[[Any], bool]:
    wanted = frozenset(_normalise(kind, v) for v in values)
    if kind is PropType.IP:
        return lambda value: ipaddress.ip_address(value) in wanted
    if kind is PropType.NAME:
        return lambda value: str(value).lower().rstrip(".") in wanted
    if kind is PropType.BOOL:
        return lambda value: isinstance(value, bool) and value in wanted
    return lambda value: value in wanted


def _build_suffix(kind: PropType, values: tuple[Any, ...]) -> Callable[[Any], bool]:
    # On a label boundary: "whatsapp.net" matches itself and "mmg.whatsapp.net",
    # never "notwhatsapp.net" (the GFW's domain lists behave this way, GFWatch).
    suffixes = tuple(_normalise(PropType.NAME, v).lstrip(".") for v in values)
    dotted = tuple("." + s for s in suffixes)

    def test(value: Any) -> bool:
        name = str(value).lower().rstrip(".")
        return name in suffixes or name.endswith(dotted)

    return test


def _build_glob(kind: PropType, values: tuple[Any, ...]) -> Callable[[Any], bool]:
    # fnmatch.translate wraps each `*` in an atomic group since Python 3.11, so no glob backtracks.
    flags = re.IGNORECASE if kind is PropType.NAME else 0
    patterns = [re.compile(fnmatch.translate(_text_operand(v)), flags) for v in values]
    return lambda value: any(p.match(str(value)) for p in patterns)


def _build_regex(kind: PropType, values: tuple[Any, ...]) -> Callable[[Any], bool]:
    """Policy regexes run on RE2 [RE2], not Python's backtracking `re`: a pattern such as `(a+)+$`
    takes exponential time in `re` on a hostile SNI or URL (ReDoS [Davis2018]), and a censor
    stuck in one match stalls every flow. RE2 matches in time linear in the subject whatever
    the pattern, so no policy can be unsafe in that way; what RE2 cannot do without
    backtracking (backreferences, lookaround) it refuses at load time, as it refuses a
    pattern whose automaton exceeds `REGEX_MAX_MEM`. Search semantics, as `re.search`:
    anchor with ^...$ in the policy when needed."""
    import re2  # google-re2, the RE2 authors' bindings

    options = re2.Options()
    options.case_sensitive = kind is not PropType.NAME
    options.max_mem = REGEX_MAX_MEM
    options.log_errors = False
    patterns = []
    for value in values:
        pattern = _text_operand(value)
        if len(pattern) > MAX_REGEX_LENGTH:
            raise ValueError(f"the pattern has {len(pattern)} characters (at most {MAX_REGEX_LENGTH})")
        try:
            patterns.append(re2.compile(pattern, options))
        except re2.error as exc:
            reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else exc
            raise ValueError(f"{pattern!r}: {reason} (policy regexes are RE2 syntax: no backreferences or "
                             "lookaround)") from None
    return lambda value: any(p.search(str(value)) for p in patterns)


def _build_cidr(kind: PropType, values: tuple[Any, ...]) -> Callable[[Any], bool]:
    networks = tuple(ipaddress.ip_network(_text_operand(v), strict=False) for v in values)
    return lambda value: any(ipaddress.ip_address(value) in n for n in networks)


def parse_port_range(value: Any) -> tuple[int, int]:
    """'5000-5999' or 5000 -> (5000, 5999) / (5000, 5000)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"a range is a port or \"low-high\", got {value!r}")
    text = str(value)
    low_text, _, high_text = text.partition("-")
    low, high = int(low_text), int(high_text or low_text)
    if not 0 <= low <= high <= 65535:
        raise ValueError(f"range {text!r} is not within 0-65535 with low <= high")
    return low, high


def _build_range(kind: PropType, values: tuple[Any, ...]) -> Callable[[Any], bool]:
    ranges = tuple(parse_port_range(v) for v in values)
    return lambda value: any(low <= int(value) <= high for low, high in ranges)


def _build_contains(kind: PropType, values: tuple[Any, ...]) -> Callable[[Any], bool]:
    # Case-insensitive substring, as keyword filters match (the GFW's HTTP
    # keyword list; Geneva's censors look for "ultrasurf" anywhere).
    needles = tuple(_text_operand(v).lower() for v in values)
    return lambda value: any(n in str(value).lower() for n in needles)


_BUILDERS: dict[str, Callable[[PropType, tuple[Any, ...]], Callable[[Any], bool]]] = {
    "eq": _build_eq, "suffix": _build_suffix, "glob": _build_glob, "regex": _build_regex,
    "cidr": _build_cidr, "range": _build_range, "contains": _build_contains,
}


# --- static kernel rules (blackhole-ip) ------------------------------------------

# A blackhole-ip rule expands to the product of its values; a cap keeps a
# policy typo from installing thousands of iptables rules.
MAX_STATIC_RULES_PER_RULE = 256
_STATIC_PROTOS = ("tcp", "udp", "icmp")


@dataclass(frozen=True, slots=True)
class StaticDrop:
    """One kernel DROP rule (IPv4; the lab is IPv4-only). None = any."""

    rule: str
    proto: str | None
    src: str | None
    dst: str | None
    sport: tuple[int, int] | None
    dport: tuple[int, int] | None


def static_drops(rule: Rule) -> tuple[StaticDrop, ...]:
    """Expand a blackhole-ip rule into kernel DROP rules; PolicyError if it cannot be."""
    where = f"rule {rule.name!r}"
    by_key = {m.key: m for m in rule.matchers}
    try:
        protos = _static_protos(by_key.get("proto"))
        srcs = _static_networks(by_key.get("ip.src"))
        dsts = _static_networks(by_key.get("ip.dst"))
        sports = _static_ports(by_key.get("port.src"))
        dports = _static_ports(by_key.get("port.dst"))
    except ValueError as exc:
        raise PolicyError(f"{where}: {exc}") from None
    if (sports != [None] or dports != [None]) and protos == [None]:
        protos = ["tcp", "udp"]  # iptables needs -p for --sport/--dport
    if "icmp" in protos and (sports != [None] or dports != [None]):
        raise PolicyError(f"{where}: ports cannot be matched with proto icmp")
    specs = [StaticDrop(rule.name, proto, src, dst, sport, dport)
             for proto in protos for src in srcs for dst in dsts for sport in sports for dport in dports]
    if len(specs) > MAX_STATIC_RULES_PER_RULE:
        raise PolicyError(f"{where}: expands to {len(specs)} kernel rules (max {MAX_STATIC_RULES_PER_RULE})")
    return tuple(specs)


def _static_protos(matcher: Matcher | None) -> list[str | None]:
    if matcher is None:
        return [None]
    if matcher.operator != "eq":
        raise ValueError("proto takes a value or a list in a blackhole-ip rule")
    protos = [str(v).lower() for v in matcher.values]
    bad = [p for p in protos if p not in _STATIC_PROTOS]
    if bad:
        raise ValueError(f"proto {bad[0]!r} is not one of {', '.join(_STATIC_PROTOS)}")
    return list(dict.fromkeys(protos))


def _static_networks(matcher: Matcher | None) -> list[str | None]:
    if matcher is None:
        return [None]
    networks = [ipaddress.ip_network(str(v), strict=False) for v in matcher.values]
    if any(n.version != 4 for n in networks):
        raise ValueError(f"key {matcher.key!r}: kernel rules are IPv4-only here (the lab is IPv4)")
    return [str(n) for n in networks]


def _static_ports(matcher: Matcher | None) -> list[tuple[int, int] | None]:
    if matcher is None:
        return [None]
    return [parse_port_range(v) for v in matcher.values]
