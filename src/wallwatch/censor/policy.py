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
    """The policy file is not valid; the message names the rule and key."""


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


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file; PolicyError on any problem."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PolicyError(f"cannot read policy {path}: {exc.strerror}") from None
    return parse_policy(raw, path=str(path))


def parse_policy(source: bytes | str | Mapping[str, Any], *, path: str = "") -> Policy:
    """Validate a policy given as YAML bytes/text or as an already-parsed mapping."""
    if isinstance(source, Mapping):
        document: Any = source
        digest = hashlib.sha256(yaml.safe_dump(dict(source), sort_keys=True).encode()).hexdigest()
    else:
        raw = source.encode() if isinstance(source, str) else source
        digest = hashlib.sha256(raw).hexdigest()
        try:
            document = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise PolicyError(f"policy is not valid YAML: {exc}") from None
    if document is None:
        document = {}
    if not isinstance(document, Mapping):
        raise PolicyError("policy must be a mapping with 'name' and 'rules'")
    _reject_unknown(document, {"name", "description", "rules"}, "policy")
    rules_doc = document.get("rules") or []
    if not isinstance(rules_doc, list):
        raise PolicyError("policy 'rules' must be a list")
    rules: list[Rule] = []
    seen: set[str] = set()
    htb_classes = 0
    for index, rule_doc in enumerate(rules_doc):
        rule = _parse_rule(rule_doc, index)
        if rule.name in seen:
            raise PolicyError(f"rule {rule.name!r}: duplicate rule name")
        seen.add(rule.name)
        if rule.throttle is not None and rule.throttle.rate_bps:
            htb_classes += 1
            if htb_classes > MAX_THROTTLE_RULES:
                raise PolicyError(f"rule {rule.name!r}: more than {MAX_THROTTLE_RULES} rate-limiting throttle rules")
            rule = replace(rule, throttle=replace(rule.throttle, htb_class=htb_classes))
        rules.append(rule)
    name = document.get("name") or (Path(path).stem if path else "unnamed")
    return Policy(str(name), str(document.get("description") or "").strip(), tuple(rules), digest, path)


def _reject_unknown(doc: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(map(str, doc)) - allowed)
    if unknown:
        raise PolicyError(f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")


def _parse_rule(doc: Any, index: int) -> Rule:
    if not isinstance(doc, Mapping):
        raise PolicyError(f"rule #{index + 1}: must be a mapping")
    name = doc.get("name")
    if not isinstance(name, str) or not name.strip():
        raise PolicyError(f"rule #{index + 1}: every rule needs a non-empty 'name'")
    where = f"rule {name!r}"
    _reject_unknown(doc, {"name", "match", "action", "count", "answer", "ttl", "description", "probability",
                          "residual", "duration", "rate", "delay_ms", "jitter_ms", "page", "status"}, where)
    action = doc.get("action")
    if action not in ACTIONS:
        raise PolicyError(f"{where}: action {action!r} is not one of {', '.join(ACTIONS)}")
    match = doc.get("match")
    if not isinstance(match, Mapping) or not match:
        raise PolicyError(f"{where}: 'match' must be a non-empty mapping of property -> value")
    matchers = tuple(_compile_matcher(where, str(key), value) for key, value in match.items())
    keys = {m.key for m in matchers}
    if action == "blackhole-ip" and not keys <= ADDRESS_KEYS:
        extra = ", ".join(sorted(keys - ADDRESS_KEYS))
        raise PolicyError(f"{where}: blackhole-ip is a static kernel rule; only {', '.join(sorted(ADDRESS_KEYS))}"
                          f" may be matched, not {extra}")
    if action == "blackhole-ip" and not keys & {"ip.src", "ip.dst"}:
        raise PolicyError(f"{where}: blackhole-ip needs ip.src or ip.dst")
    if action == "dns-inject" and not keys & {"dns.qname", "dns.qtype"}:
        raise PolicyError(f"{where}: dns-inject needs a dns.qname or dns.qtype match")
    if "count" in doc and action != "reset":
        raise PolicyError(f"{where}: 'count' only applies to the reset action")
    if ("answer" in doc or "ttl" in doc) and action != "dns-inject":
        raise PolicyError(f"{where}: 'answer' and 'ttl' only apply to the dns-inject action")
    if action == "blockpage" and not any(key.startswith("http.") for key in keys):
        raise PolicyError(f"{where}: blockpage answers an HTTP request; it needs an http.* match")
    if ("page" in doc or "status" in doc) and action != "blockpage":
        raise PolicyError(f"{where}: 'page' and 'status' only apply to the blockpage action")
    if action == "blackhole-ip":
        static_drops(Rule(name, matchers, action))  # validates now, at load time
    count = _int_in(where, "count", doc.get("count", DEFAULT_RST_COUNT), 1, MAX_RST_COUNT)
    ttl = _int_in(where, "ttl", doc.get("ttl", DEFAULT_FORGED_TTL), 0, 2**31 - 1)
    page, status = _blockpage(where, doc)
    return Rule(name, matchers, action, count, _answers(where, doc.get("answer", DEFAULT_FORGED_ANSWER)), ttl,
                _probability(where, doc, action), _residual(where, doc, action), _throttle(where, doc, action),
                page, status)


def _blockpage(where: str, doc: Mapping[str, Any]) -> tuple[str, int]:
    page = doc.get("page", DEFAULT_BLOCKPAGE)
    if not isinstance(page, str) or not page or len(page.encode()) > MAX_BLOCKPAGE_BYTES:
        raise PolicyError(f"{where}: 'page' must be the page's text, 1..{MAX_BLOCKPAGE_BYTES} bytes")
    return page, _int_in(where, "status", doc.get("status", DEFAULT_BLOCKPAGE_STATUS), 100, 599)


def _probability(where: str, doc: Mapping[str, Any], action: str) -> float:
    if "probability" not in doc:
        return 1.0
    value = doc["probability"]
    if action == "blackhole-ip":
        raise PolicyError(f"{where}: 'probability' cannot apply to blackhole-ip (a static kernel rule, no flow)")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise PolicyError(f"{where}: 'probability' must be a number in (0, 1], got {value!r}")
    return float(value)


def _residual(where: str, doc: Mapping[str, Any], action: str) -> Residual | None:
    if "residual" not in doc and "duration" not in doc:
        return None
    if action not in BLOCKING_ACTIONS:
        raise PolicyError(f"{where}: 'residual' and 'duration' only follow a blocking action "
                          f"({', '.join(sorted(BLOCKING_ACTIONS))}), not {action}")
    if "residual" in doc and "duration" in doc:
        raise PolicyError(f"{where}: give 'residual' or 'duration' (= residual on the triple), not both")
    if "duration" in doc:
        return Residual(_seconds(where, "duration", doc["duration"]), "triple")
    spec = doc["residual"]
    if not isinstance(spec, Mapping):
        raise PolicyError(f"{where}: 'residual' must be a mapping like {{seconds: 90, scope: triple}}")
    _reject_unknown(spec, {"seconds", "scope"}, f"{where}, residual")
    scope = spec.get("scope", "triple")
    if scope not in RESIDUAL_SCOPES:
        raise PolicyError(f"{where}: residual 'scope' must be one of {', '.join(RESIDUAL_SCOPES)}, got {scope!r}")
    return Residual(_seconds(where, "residual seconds", spec.get("seconds", DEFAULT_RESIDUAL_SECONDS)), scope)


def _seconds(where: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_RESIDUAL_SECONDS:
        raise PolicyError(f"{where}: '{key}' must be a number of seconds in (0, {MAX_RESIDUAL_SECONDS}], got {value!r}")
    return float(value)


def parse_rate(value: Any) -> int:
    """'256kbit' -> 256000 bit/s, in tc's units (tc(8): bit, kbit, mbit, gbit; bps, kbps... are bytes/s)."""
    match = _RATE.match(str(value)) if isinstance(value, str) else None
    if match is None or match.group(2).lower() not in _RATE_UNITS:
        raise ValueError(f"a rate is a number and a unit ({', '.join(_RATE_UNITS)}), like \"256kbit\"; got {value!r}")
    return round(float(match.group(1)) * _RATE_UNITS[match.group(2).lower()])


def _throttle(where: str, doc: Mapping[str, Any], action: str) -> Throttle | None:
    keys = [k for k in ("rate", "delay_ms", "jitter_ms") if k in doc]
    if action != "throttle":
        if keys:
            raise PolicyError(f"{where}: {', '.join(repr(k) for k in keys)} only apply to the throttle action")
        return None
    if "rate" not in doc and "delay_ms" not in doc:
        raise PolicyError(f"{where}: throttle needs a 'rate' (like \"256kbit\") or a 'delay_ms', or both")
    rate = None
    if "rate" in doc:
        try:
            rate = parse_rate(doc["rate"])
        except ValueError as exc:
            raise PolicyError(f"{where}: 'rate': {exc}") from None
        if not MIN_RATE_BPS <= rate <= MAX_RATE_BPS:
            raise PolicyError(f"{where}: 'rate' must be within 8kbit..10gbit, got {doc['rate']!r}")
    delay = _milliseconds(where, "delay_ms", doc.get("delay_ms", 0))
    jitter = _milliseconds(where, "jitter_ms", doc.get("jitter_ms", 0))
    if jitter > delay:
        raise PolicyError(f"{where}: 'jitter_ms' ({jitter:g}) cannot exceed 'delay_ms' ({delay:g}): "
                          "a packet cannot leave before it arrived")
    return Throttle(rate, delay, jitter)


def _milliseconds(where: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_DELAY_MS:
        raise PolicyError(f"{where}: '{key}' must be a number of milliseconds in 0..{MAX_DELAY_MS}, got {value!r}")
    return float(value)


def _int_in(where: str, key: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise PolicyError(f"{where}: '{key}' must be an integer in {low}..{high}, got {value!r}")
    return value


def _answers(where: str, value: Any) -> tuple[str, ...]:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise PolicyError(f"{where}: 'answer' must name at least one address")
    try:
        return tuple(str(ipaddress.ip_address(str(v))) for v in values)
    except ValueError as exc:
        raise PolicyError(f"{where}: 'answer': {exc}") from None


# --- matchers -----------------------------------------------------------------


def _compile_matcher(where: str, key: str, spec: Any) -> Matcher:
    if key not in KEY_TYPES:
        raise PolicyError(f"{where}: unknown property {key!r} (known: {', '.join(KEY_TYPES)})")
    kind = KEY_TYPES[key]
    where = f"{where}, key {key!r}"
    if isinstance(spec, Mapping):
        if len(spec) != 1:
            raise PolicyError(f"{where}: a mapping value takes exactly one operator, got {sorted(spec)}")
        operator, operand = next(iter(spec.items()))
        if operator not in OPERATORS_BY_TYPE[kind]:
            allowed = ", ".join(sorted(OPERATORS_BY_TYPE[kind])) or "none (use a value or a list)"
            raise PolicyError(f"{where}: operator {operator!r} does not apply to a {kind} property; allowed: {allowed}")
        values = tuple(operand) if isinstance(operand, list) else (operand,)
    else:
        operator = "eq"
        values = tuple(spec) if isinstance(spec, list) else (spec,)
    if not values:
        raise PolicyError(f"{where}: empty list of values")
    try:
        test = _BUILDERS[operator](kind, values)
    except (ValueError, TypeError, re.error) as exc:
        raise PolicyError(f"{where}: bad {operator} value: {exc}") from None
    return Matcher(key, operator, values, test)


def _normalise(kind: PropType, value: Any) -> Any:
    if kind is PropType.NAME:
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            raise ValueError(f"expected a string, got {value!r}")
        return str(value).lower().rstrip(".")
    if kind is PropType.TEXT:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
        return value
    if kind is PropType.IP:
        return ipaddress.ip_address(str(value))
    if kind is PropType.INT:
        if isinstance(value, bool):
            raise ValueError(f"expected an integer, got {value!r}")
        return int(value)
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
    flags = re.IGNORECASE if kind is PropType.NAME else 0
    patterns = [re.compile(fnmatch.translate(str(v)), flags) for v in values]
    return lambda value: any(p.match(str(value)) for p in patterns)


def _build_regex(kind: PropType, values: tuple[Any, ...]) -> Callable[[Any], bool]:
    # re.search semantics: anchor with ^...$ in the policy when needed.
    flags = re.IGNORECASE if kind is PropType.NAME else 0
    patterns = [re.compile(str(v), flags) for v in values]
    return lambda value: any(p.search(str(value)) for p in patterns)


def _build_cidr(kind: PropType, values: tuple[Any, ...]) -> Callable[[Any], bool]:
    networks = tuple(ipaddress.ip_network(str(v), strict=False) for v in values)
    return lambda value: any(ipaddress.ip_address(value) in n for n in networks)


def parse_port_range(value: Any) -> tuple[int, int]:
    """'5000-5999' or 5000 -> (5000, 5999) / (5000, 5000)."""
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
    needles = tuple(str(v).lower() for v in values)
    if not all(needles):
        raise ValueError("an empty keyword would match everything")
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
