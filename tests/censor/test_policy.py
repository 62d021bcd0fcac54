"""censor.policy: loading, validation errors, every operator, three-valued first match."""

from __future__ import annotations

from pathlib import Path

import pytest

from wallwatch.censor.policy import Decided, PolicyError, Tri, Undecided, load_policy, parse_policy, static_drops

POLICIES = sorted((Path(__file__).parents[2] / "policies").glob("*.yaml"))


def rule_of(match: dict, action: str = "drop", **extra: object):
    return parse_policy({"name": "t", "rules": [{"name": "r", "match": match, "action": action, **extra}]}).rules[0]


def matches(match: dict, props: dict, pending: frozenset[str] = frozenset()) -> Tri:
    return rule_of(match).evaluate(props, pending.__contains__)


@pytest.mark.parametrize("path", POLICIES, ids=lambda p: p.name)
def test_example_policies_load(path: Path) -> None:
    policy = load_policy(path)
    assert policy.name and policy.sha256 and len(policy.sha256) == 64


def test_all_example_policies_exist() -> None:
    names = {p.stem for p in POLICIES}
    assert {"none", "whatsapp-dns", "whatsapp-chat-ip", "whatsapp-media-sni", "whatsapp-chat-dpi",
            "whatsapp-all", "cn-2017-07", "cn-2017-09"} <= names


@pytest.mark.parametrize("match, value, expected", [
    ({"tls.sni": "MMG.whatsapp.net"}, "mmg.whatsapp.net", Tri.YES),          # scalar, case-insensitive name
    ({"tls.sni": "mmg.whatsapp.net"}, "web.whatsapp.net", Tri.NO),
    ({"tls.sni": ["a.example", "mmg.whatsapp.net"]}, "mmg.whatsapp.net", Tri.YES),  # list: any of
    ({"tls.sni": {"suffix": "whatsapp.net"}}, "mmg.whatsapp.net", Tri.YES),
    ({"tls.sni": {"suffix": "whatsapp.net"}}, "whatsapp.net", Tri.YES),
    ({"tls.sni": {"suffix": "whatsapp.net"}}, "notwhatsapp.net", Tri.NO),     # label boundary
    ({"tls.sni": {"suffix": [".x.org", "whatsapp.net"]}}, "a.x.org", Tri.YES),
    ({"tls.sni": {"glob": "mmg*.whatsapp.net"}}, "MMG2.whatsapp.net", Tri.YES),
    ({"tls.sni": {"glob": "mmg*.whatsapp.net"}}, "web.whatsapp.net", Tri.NO),
    ({"tls.sni": {"regex": r"^e\d+\.whatsapp\.net$"}}, "e12.whatsapp.net", Tri.YES),
    ({"tls.sni": {"regex": r"^e\d+\.whatsapp\.net$"}}, "mmg.whatsapp.net", Tri.NO),
    ({"http.path": {"glob": "/v2/*"}}, "/v2/register", Tri.YES),
    ({"http.path": "/V2/register"}, "/v2/register", Tri.NO),                  # paths are case-sensitive
])
def test_string_operators(match: dict, value: str, expected: int) -> None:
    key = next(iter(match))
    assert matches(match, {key: value}) == expected


def test_cidr_eq_range_bool_int() -> None:
    assert matches({"ip.dst": {"cidr": ["198.19.1.0/24", "10.0.0.0/8"]}}, {"ip.dst": "198.19.1.7"}) == Tri.YES
    assert matches({"ip.dst": {"cidr": "198.19.1.0/24"}}, {"ip.dst": "198.19.2.7"}) == Tri.NO
    assert matches({"ip.dst": "198.19.2.3"}, {"ip.dst": "198.19.2.3"}) == Tri.YES
    assert matches({"ip.src": "2001:db8::1"}, {"ip.src": "2001:db8:0::1"}) == Tri.YES
    assert matches({"port.dst": {"range": "5000-5999"}}, {"port.dst": 5222}) == Tri.YES
    assert matches({"port.dst": {"range": ["1-10", 443]}}, {"port.dst": 443}) == Tri.YES
    assert matches({"port.dst": {"range": "5000-5999"}}, {"port.dst": 443}) == Tri.NO
    assert matches({"port.dst": [443, 5222]}, {"port.dst": 5222}) == Tri.YES
    assert matches({"whatsapp.header": True}, {"whatsapp.header": True}) == Tri.YES
    assert matches({"whatsapp.header": True}, {"whatsapp.header": False}) == Tri.NO
    assert matches({"whatsapp.magic": 5}, {"whatsapp.magic": 6}) == Tri.NO
    assert matches({"tls.alpn": "h2"}, {"tls.alpn": ("http/1.1", "h2")}) == Tri.YES  # tuple: any element
    assert matches({"proto": "UDP"}, {"proto": "udp"}) == Tri.YES


def test_three_valued_evaluation() -> None:
    match = {"proto": "tcp", "tls.sni": "x.example"}
    assert matches(match, {"proto": "tcp"}, frozenset({"tls.sni"})) == Tri.UNKNOWN  # may still arrive
    assert matches(match, {"proto": "tcp"}) == Tri.NO                               # will never arrive
    assert matches(match, {"proto": "udp"}, frozenset({"tls.sni"})) == Tri.NO       # a known key already fails
    assert matches(match, {"proto": "tcp", "tls.sni": None}) == Tri.NO              # known absent


def test_first_match_waits_for_earlier_unknown_rules() -> None:
    policy = parse_policy({"name": "p", "rules": [
        {"name": "sni", "match": {"tls.sni": "x.example"}, "action": "reset"},
        {"name": "ip", "match": {"ip.dst": "198.19.9.9"}, "action": "drop"},
    ]})
    props = {"ip.dst": "198.19.9.9"}
    assert policy.decide(props, {"tls.sni"}.__contains__) is Undecided.NEED_MORE_DATA
    assert policy.decide(props, frozenset().__contains__) == Decided(policy.rules[1])
    assert policy.decide({**props, "tls.sni": "x.example"}, frozenset().__contains__) == Decided(policy.rules[0])
    assert policy.decide({"ip.dst": "198.19.9.8"}, frozenset().__contains__) is Undecided.NO_MATCH


def test_a_skipped_coin_lets_the_rules_below_decide() -> None:
    policy = parse_policy({"name": "p", "rules": [
        {"name": "sometimes", "match": {"ip.dst": "198.19.9.9"}, "action": "drop", "probability": 0.5},
        {"name": "port", "match": {"port.dst": 443}, "action": "reset"},
    ]})
    props = {"ip.dst": "198.19.9.9", "port.dst": 443}
    assert policy.decide(props, frozenset().__contains__, lambda rule: True) == Decided(policy.rules[0])
    assert policy.decide(props, frozenset().__contains__, lambda rule: False) == Decided(policy.rules[1])
    assert policy.decide({"ip.dst": "198.19.9.9"}, frozenset().__contains__, lambda rule: False) is Undecided.NO_MATCH


@pytest.mark.parametrize("document, message", [
    ({"rules": [{"match": {"proto": "tcp"}, "action": "drop"}]}, "needs a non-empty 'name'"),
    ({"rules": [{"name": "a", "match": {"proto": "tcp"}, "action": "explode"}]}, "rule 'a': action 'explode'"),
    ({"rules": [{"name": "a", "match": {"tls.snii": "x"}, "action": "drop"}]}, "unknown property 'tls.snii'"),
    ({"rules": [{"name": "a", "match": {"ip.dst": {"suffix": "x"}}, "action": "drop"}]}, "key 'ip.dst': operator 'suffix'"),
    ({"rules": [{"name": "a", "match": {"ip.dst": {"cidr": "300.1.1.0/24"}}, "action": "drop"}]}, "key 'ip.dst': bad cidr"),
    ({"rules": [{"name": "a", "match": {"port.dst": {"range": "9-1"}}, "action": "drop"}]}, "key 'port.dst': bad range"),
    ({"rules": [{"name": "a", "match": {"tls.sni": {"regex": "("}}, "action": "drop"}]}, "key 'tls.sni': bad regex"),
    ({"rules": [{"name": "a", "match": {"tls.sni": {"glob": "a", "suffix": "b"}}, "action": "drop"}]}, "exactly one operator"),
    ({"rules": [{"name": "a", "match": {"whatsapp.header": "yes"}, "action": "drop"}]}, "key 'whatsapp.header'"),
    ({"rules": [{"name": "a", "match": {"tls.sni": "x"}, "action": "blackhole-ip"}]}, "rule 'a': blackhole-ip is a static"),
    ({"rules": [{"name": "a", "match": {"ip.dst": "2001:db8::1"}, "action": "blackhole-ip"}]}, "IPv4-only"),
    ({"rules": [{"name": "a", "match": {"tls.sni": "x"}, "action": "dns-inject"}]}, "rule 'a': dns-inject needs"),
    ({"rules": [{"name": "a", "match": {"tls.sni": "x"}, "action": "reset", "count": 0}]}, "'count' must be"),
    ({"rules": [{"name": "a", "match": {"tls.sni": "x"}, "action": "drop", "count": 3}]}, "only applies to the reset"),
    ({"rules": [{"name": "a", "match": {"dns.qname": "x"}, "action": "dns-inject", "answer": ["nope"]}]}, "'answer'"),
    ({"rules": [{"name": "a", "match": {"proto": "tcp"}, "action": "drop"},
                {"name": "a", "match": {"proto": "udp"}, "action": "drop"}]}, "rule 'a': duplicate"),
    ({"rules": [{"name": "a", "match": {}, "action": "drop"}]}, "'match' must be a non-empty"),
    ({"rules": [{"name": "a", "match": {"proto": "tcp"}, "action": "drop", "colour": 1}]}, "unknown key(s) colour"),
    ({"rules": "nope"}, "'rules' must be a list"),
])
def test_errors_name_the_rule_and_key(document: dict, message: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(document)
    assert message in str(info.value)


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules: [\n")
    with pytest.raises(PolicyError, match="not valid YAML"):
        load_policy(bad)
    with pytest.raises(PolicyError, match="cannot read policy"):
        load_policy(tmp_path / "missing.yaml")


def test_sha256_is_of_the_file_bytes(tmp_path: Path) -> None:
    import hashlib

    path = tmp_path / "p.yaml"
    path.write_bytes(b"name: p\nrules: []\n")
    assert load_policy(path).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_static_drops_expand_ports_without_proto_to_tcp_and_udp() -> None:
    rule = rule_of({"ip.dst": {"cidr": ["198.19.1.0/24", "198.19.3.1"]}, "port.dst": {"range": "3478-3479"}},
                   "blackhole-ip")
    specs = static_drops(rule)
    assert {(s.proto, s.dst, s.dport) for s in specs} == {
        (p, d, (3478, 3479)) for p in ("tcp", "udp") for d in ("198.19.1.0/24", "198.19.3.1/32")}


# --- policy files: every mistake is an error naming file:line --------------------------------

RULE_HEAD = "name: p\nrules:\n  - name: r\n"


@pytest.mark.parametrize("text, line, message", [
    # A duplicate key: `action: allow` used to win silently over `action: drop`.
    (RULE_HEAD + "    match: {proto: tcp}\n    action: drop\n    action: allow\n", 6, "duplicate key 'action'"),
    (RULE_HEAD + "    match: {tls.sni: a.example, tls.sni: b.example}\n    action: drop\n", 4, "duplicate key 'tls.sni'"),
    ("name: p\nrules: []\nrules: []\n", 3, "duplicate key 'rules'"),
    # No rules: an empty file, `rules:` with nothing, no `rules` at all.
    ("", 1, "the policy file is empty"),
    ("# nothing but a comment\n", 1, "the policy file is empty"),
    ("name: p\nrules:\n", 2, "'rules' must be a list (`rules: []` for none), got None"),
    ("name: p\n", 1, "a policy needs `rules`"),
    # Null or a number where a string or a pattern is expected (YAML reads them as such).
    (RULE_HEAD + "    match: {tls.sni: {suffix: null}}\n    action: drop\n", 4, "expected a string (quote it"),
    (RULE_HEAD + "    match:\n      http.target: {regex: 5}\n    action: drop\n", 5, "got 5"),
    (RULE_HEAD + "    match: {http.target: {contains: 1.5}}\n    action: drop\n", 4, "got 1.5"),
    (RULE_HEAD + "    match: {tls.sni: 123}\n    action: drop\n", 4, "got 123"),
    (RULE_HEAD + "    match: {tls.sni: {glob: ~}}\n    action: drop\n", 4, "got None"),
    (RULE_HEAD + "    match: {tls.sni: [a.example, null]}\n    action: drop\n", 4, "got None"),
    (RULE_HEAD + "    match: {ip.dst: {cidr: 5}}\n    action: drop\n", 4, "got 5"),
    (RULE_HEAD + "    match: {port.dst: 443.5}\n    action: drop\n", 4, "expected an integer, got 443.5"),
    (RULE_HEAD + "    match: {port.dst: {range: null}}\n    action: drop\n", 4, "a range is a port"),
    (RULE_HEAD + "    match: {proto: tcp}\n    action: drop\n    description: 7\n", 6, "'description' must be a string"),
    ("name: 12\nrules: []\n", 1, "'name' must be a non-empty string"),
    (RULE_HEAD + "    match: {dns.qname: x}\n    action: dns-inject\n    answer: [198.19.0.1, 7]\n", 6, "'answer'"),
    # Unsafe or unsupported regexes: backtracking-only features, and sizes beyond the bounds.
    (RULE_HEAD + "    match:\n      tls.sni: {regex: '(a)\\1'}\n    action: drop\n", 5, "no backreferences"),
    (RULE_HEAD + "    match:\n      tls.sni: {regex: 'a(?=b)'}\n    action: drop\n", 5, "lookaround"),
    (RULE_HEAD + "    match:\n      tls.sni: {regex: '((a{100}){100}){100}'}\n    action: drop\n", 5, "bad regex"),
    (RULE_HEAD + "    match:\n      tls.sni: {regex: '" + "a" * 1001 + "'}\n    action: drop\n", 5, "at most 1000"),
    # The line of the key at fault, deep in a file.
    (RULE_HEAD + "    match: {proto: tcp}\n    action: drop\n  - name: s\n    match: {proto: udp}\n"
     "    action: reset\n    count: 99\n", 9, "rule 's': 'count' must be an integer in 1..20"),
])
def test_policy_file_errors_name_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert str(info.value).startswith(f"{path}:{line}: "), str(info.value)
    assert message in str(info.value)
    assert info.value.line == line


def test_an_explicit_empty_rule_list_is_a_policy() -> None:
    policy = parse_policy("name: open\nrules: []\n")
    assert policy.rules == () and policy.name == "open"


@pytest.mark.timeout(60)
def test_a_catastrophic_pattern_matches_in_linear_time() -> None:
    """`(a+)+$` backtracks exponentially in Python's `re` on 'aaa...ab' (2^40 paths here: the
    censor would hang on one SNI); RE2 answers at once, whatever the pattern."""
    rule = rule_of({"tls.sni": {"regex": "^(a+)+$"}, "http.target": {"regex": "(x+x+)+y"}})
    hostile_sni, hostile_target = "a" * 40 + ".example", "x" * 5000
    assert rule.evaluate({"tls.sni": hostile_sni, "http.target": hostile_target}, frozenset().__contains__) is Tri.NO
    assert rule.evaluate({"tls.sni": "aaaa", "http.target": "xxy"}, frozenset().__contains__) is Tri.YES
    # Names stay case-insensitive, text case-sensitive, as with `re` before.
    assert matches({"tls.sni": {"regex": r"^E\d+\.WhatsApp\.net$"}}, {"tls.sni": "e12.whatsapp.net"}) is Tri.YES
    assert matches({"http.target": {"regex": "^/Pooh"}}, {"http.target": "/pooh"}) is Tri.NO
