"""Verdicts: rules as data, evidence before "blocked", probe's own verdicts for wallwatch measurements.

Each case starts from a real OONI sample and changes only the facts under test,
so the rule that fires is the one the change calls for.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from wallwatch.analysis.ingest.pipeline import ingest
from wallwatch.analysis.store import Store
from wallwatch.analysis.verdicts.rules import (
    _FACTS_TEMPLATE,
    _FINGERPRINT_FACTS,
    _MAX_SPECIALISED,
    RulesError,
    load_rule_sets,
    parse_rule_set,
)


def _load(samples_dir: Path, name: str) -> dict[str, Any]:
    return orjson.loads((samples_dir / name).read_bytes())


def _verdicts(records: list[dict[str, Any]], data_dir: Path, tmp_path: Path) -> dict[tuple[str, str], tuple]:
    path = tmp_path / "cases.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    summary = ingest([path], data_dir)
    assert summary.quarantined == 0
    rows = Store(data_dir).read("verdicts").to_pylist()
    uid_to_report = {r["measurement_uid"]: r["probe_key"] for r in rows}
    assert len(uid_to_report) == len(records)
    return {(r["probe_key"].removeprefix("report:"), r["feature"]): (r["verdict"], r["method"], r["rule_id"])
            for r in rows}


def _whatsapp_text(record: dict[str, Any], failure: str | None, *, tls: bool = False) -> dict[str, Any]:
    case = copy.deepcopy(record)
    for entry in case["test_keys"]["tcp_connect"]:
        if entry["port"] in (443, 5222) and not tls:
            entry["status"] = {"success": failure is None, "failure": failure}
    return case


def test_whatsapp_interference_needs_evidence(samples_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    base = _load(samples_dir, "ts-018-whatsapp.example.json")
    cases = {}
    cases["ok"] = copy.deepcopy(base)
    cases["reset"] = _whatsapp_text(base, "connection_reset")
    cases["refused"] = _whatsapp_text(base, "connection_refused")
    blackholed = _whatsapp_text(base, "generic_timeout_error")
    cases["timeout"] = blackholed
    poisoned = copy.deepcopy(base)
    for query in poisoned["test_keys"]["queries"]:
        for answer in query["answers"] or []:
            answer["ipv4"] = "8.7.198.45"  # ooni.cn_0, a GFW poison address
    cases["poisoned"] = poisoned
    offline = _whatsapp_text(base, "generic_timeout_error")
    for query in offline["test_keys"]["queries"]:
        query["answers"], query["failure"] = None, "generic_timeout_error"
    for entry in offline["test_keys"]["tls_handshakes"]:
        entry["failure"] = "generic_timeout_error"
    for entry in offline["test_keys"]["requests"]:
        entry["failure"], entry["response"] = "generic_timeout_error", None
    cases["offline"] = offline
    sni = copy.deepcopy(base)
    for entry in sni["test_keys"]["tls_handshakes"]:
        if entry["server_name"] == "web.whatsapp.com":
            entry["failure"] = "connection_reset"
    for entry in sni["test_keys"]["requests"]:
        if "web.whatsapp.com" in entry["request"]["url"]:
            entry["failure"], entry["response"] = "connection_reset", None
    cases["sni"] = sni
    records = [dict(record, report_id=name) for name, record in cases.items()]
    got = _verdicts(records, data_dir, tmp_path)
    assert got[("ok", "text")] == ("ok", None, "im.all_ok")
    assert got[("ok", "web")] == ("ok", None, "im.all_ok")  # web.whatsapp.com answers 400: reachable
    assert got[("reset", "text")] == ("blocked", "tcp_reset", "im.tcp_reset")
    assert got[("refused", "text")] == ("down", None, "im.refused")
    assert got[("timeout", "text")] == ("blocked", "tcp_ip", "im.tcp_blackholed")
    # ooni.cn_0 is a GFW address expected in CN; the sample probe is in IT: evidence, not confirmation.
    assert got[("poisoned", "text")] == ("blocked", "dns", "im.dns_fingerprint_elsewhere")
    assert got[("offline", "text")] == ("unknown", None, "im.probe_offline")
    assert got[("sni", "web")] == ("blocked", "tls_sni", "im.tls_reset")
    assert got[("sni", "text")] == ("ok", None, "im.all_ok")


def test_web_connectivity_control_separates_down_from_blocked(samples_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    base = _load(samples_dir, "probe-cli-cmd-minipipeline/measurement.json")
    ok = dict(copy.deepcopy(base), report_id="ok")
    geo = copy.deepcopy(base)
    geo["report_id"] = "status"
    for request in geo["test_keys"]["requests"]:
        request["response"]["code"] = 403  # answered, differently from the control, no block page
    blockpage = copy.deepcopy(geo)
    blockpage["report_id"], blockpage["probe_cc"] = "blockpage", "IR"  # Iran's national block page (ooni.ir_0)
    for request in blockpage["test_keys"]["requests"]:
        request["response"]["body"] = '<html><iframe src="http://10.10.34.34?type=Invalid Site"></iframe></html>'
    no_control = copy.deepcopy(base)
    no_control["report_id"], no_control["test_keys"]["control"] = "no_control", None
    no_control["test_keys"]["control_failure"] = "generic_timeout_error"
    for entry in no_control["test_keys"]["tls_handshakes"]:
        entry["failure"] = "connection_reset"
    for request in no_control["test_keys"]["requests"]:
        request["failure"], request["response"] = "connection_reset", None
    sni = copy.deepcopy(no_control)
    sni["report_id"], sni["test_keys"]["control"] = "sni", base["test_keys"]["control"]
    sni["test_keys"]["control_failure"] = None
    got = _verdicts([ok, geo, blockpage, no_control, sni], data_dir, tmp_path)
    assert got[("ok", "page")] == ("ok", None, "web.final_ok_status_match")
    # Answered differently from the control, no block page: and the page is the site's own (its
    # twitter:card meta is Censored Planet's known false positive cp.fp_r_fp_6).
    assert got[("status", "page")] == ("unknown", None, "web.known_false_positive")
    assert got[("blockpage", "page")] == ("blocked", "blockpage", "web.blockpage")
    assert got[("no_control", "page")] == ("unknown", None, "web.no_control")
    assert got[("sni", "page")] == ("blocked", "tls_sni", "web.tls_reset_ctrl_ok")


def test_samples_verdicts_match_oonis_probe_where_it_had_evidence(samples_dir: Path, data_dir: Path) -> None:
    ingest([samples_dir], data_dir)
    rows = Store(data_dir).connect().execute(
        "SELECT m.input, v.verdict, v.method, v.rule_id FROM verdicts v JOIN measurements m USING (measurement_uid) "
        "WHERE v.test_name = 'web_connectivity'").fetchall()
    got = {row[0]: row[1:] for row in rows}
    # OONI's probe said "dns" (NXDOMAIN while the control resolved): we agree.
    assert got["http://www.wikispaces.com/"] == ("blocked", "dns", "web.dns_failure_ctrl_ok")
    # OONI's probe said "http-failure" on an invalid redirect after a 307; the 307's Location (base64
    # in the measurement) is a Check Point URL filter's block portal: a block page, confirmed.
    assert got["http://www.feminist.org"] == ("blocked", "blockpage", "web.blockpage")
    # Port 80 timed out for the probe and for the control: the service is down, not blocked.
    assert got["http://dns.google"] == ("down", None, "web.tcp_failed_ctrl_failed")


def test_wallwatch_measurements_keep_the_probes_verdicts(samples_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    record = _load(samples_dir, "ts-018-whatsapp.example.json")
    record.update(software_name="wallwatch", report_id="ww1", probe_asn="AS0", probe_cc="ZZ")
    record["test_keys"]["x_wallwatch"] = {
        "rules_version": "wallwatch-whatsapp-verdicts/1",
        "features": {
            "text": {"verdict": "blocked", "method": "protocol_dpi", "confidence": 0.9, "rule": "wa.text.dpi_reset",
                     "evidence": ["reset after WA header"], "targets_ok": 15, "targets_total": 32,
                     "partial": True, "blocked_share": 0.5312},
            "media": {"verdict": "ok", "method": None, "confidence": 1.0, "rule": "feature.all_ok",
                      "blocked_share": True},  # not a share: stored as unknown (null)
            "calls": {"verdict": "maybe", "method": None, "confidence": 2, "rule": "x"},
        },
        "lab": {"run_id": "r1", "resolver": "198.19.0.53"},
    }
    got = _verdicts([record], data_dir, tmp_path)
    assert got[("ww1", "text")] == ("blocked", "protocol_dpi", "wa.text.dpi_reset")
    assert got[("ww1", "calls")] == ("unknown", None, "wallwatch.invalid_feature_verdict")
    rows = Store(data_dir).read("verdicts").to_pylist()
    assert {r["rules_version"] for r in rows} == {"wallwatch-whatsapp-verdicts/1"}
    assert {r["software_name"] for r in rows} == {"wallwatch"}
    shares = {r["feature"]: r["blocked_share"] for r in rows}
    assert shares["text"] == pytest.approx(0.5312) and shares["media"] is None and shares["calls"] is None


def test_rule_files_are_validated(tmp_path: Path) -> None:
    rule_sets = load_rule_sets()
    assert {"whatsapp", "telegram", "signal", "facebook_messenger", "web_connectivity", "vanilla_tor",
            "openvpn", "riseupvpn"} <= set(rule_sets)
    base = {"name": "t", "version": "1", "applies_to": ["x"]}
    fallback = {"id": "f", "verdict": "unknown"}
    with pytest.raises(RulesError, match="method goes with"):
        parse_rule_set({**base, "rules": [{"id": "a", "verdict": "blocked"}, fallback]}, "t")
    with pytest.raises(RulesError, match="unknown operator"):
        parse_rule_set({**base, "rules": [{"id": "a", "verdict": "ok", "when": {"n": {"approx": 1}}}, fallback]}, "t")
    with pytest.raises(RulesError, match="fallback"):
        parse_rule_set({**base, "rules": [{"id": "a", "verdict": "ok", "when": {"n": 1}}]}, "t")
    custom = tmp_path / "rules"
    custom.mkdir()
    (custom / "mine.yaml").write_text(
        "name: mine\nversion: '7'\napplies_to: [whatsapp]\nrules:\n"
        "  - {id: mine.any_ok, when: {n_ok: {ge: 1}}, verdict: ok, confidence: 0.5}\n"
        "  - {id: mine.fallback, verdict: unknown}\n")
    assert load_rule_sets(custom)["whatsapp"].rules_version == "mine/7"


def _replace_address(record: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """The measurement with every mention of one address replaced (answers, connects, control)."""
    return orjson.loads(orjson.dumps(record).replace(old.encode(), new.encode()))


def _unreachable(record: dict[str, Any], *, control_connects: bool) -> dict[str, Any]:
    """No connection got through (SYNs time out): no TLS, no request; the helper connected or not."""
    case = copy.deepcopy(record)
    keys = case["test_keys"]
    for entry in keys["tcp_connect"]:
        entry["status"] = {"blocked": control_connects, "failure": "generic_timeout_error", "success": False}
    keys["tls_handshakes"], keys["requests"] = [], []
    keys["http_experiment_failure"] = "generic_timeout_error"
    for entry in keys["control"]["tcp_connect"].values():
        entry.update(status=control_connects, failure=None if control_connects else "generic_timeout_error")
    return case


def test_web_connectivity_failed_round_trip_with_code_zero_is_no_response(samples_dir: Path, data_dir: Path,
                                                                         tmp_path: Path) -> None:
    """probe-cli writes `"code": 0` for a round trip that failed; that is no answer from the server."""
    case = copy.deepcopy(_load(samples_dir, "probe-cli-cmd-minipipeline/measurement.json"))
    case["report_id"] = "reset"
    for request in case["test_keys"]["requests"]:
        request["failure"] = "connection_reset"
        request["response"] = {"body": "", "body_is_truncated": False, "code": 0, "headers_list": [], "headers": {}}
    got = _verdicts([case], data_dir, tmp_path)
    assert got[("reset", "page")] == ("blocked", "http_failure", "web.http_failed_ctrl_ok")


def test_web_connectivity_forged_dns_is_dns_even_when_the_helper_cannot_reach_the_forged_address(
        samples_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    """An injector's answer points nowhere: the helper, dialling the probe's addresses, fails too. That
    is DNS blocking (ts-017), not a site that is down: the helper resolved and fetched the real page."""
    base = _load(samples_dir, "probe-cli-cmd-minipipeline/measurement.json")
    forged = _unreachable(_replace_address(base, "130.192.16.171", "5.9.200.17"), control_connects=False)
    forged["report_id"] = "forged"
    forged["test_keys"]["control"]["dns"]["addrs"] = ["130.192.16.171"]  # the helper's answer is the real one
    forged["test_keys"]["control"]["ip_info"] = {"130.192.16.171": {"asn": 137, "flags": 10},
                                                 "5.9.200.17": {"asn": 0, "flags": 1}}
    down = _unreachable(base, control_connects=False)
    down["report_id"] = "down"
    down["test_keys"]["control"]["http_request"].update(failure="generic_timeout_error", status_code=-1,
                                                        body_length=-1)
    got = _verdicts([forged, down], data_dir, tmp_path)
    assert got[("forged", "page")] == ("blocked", "dns", "web.dns_inconsistent")
    assert got[("down", "page")] == ("down", None, "web.tcp_failed_ctrl_failed")


def test_web_connectivity_a_helper_vouches_for_addresses_outside_the_public_internet(
        samples_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    """The lab's sites live in RFC 2544 space; its helper's ip_info says they are no bogons there, so
    an address block reads as tcp_ip, not as a bogon DNS answer. Without that word, it is a bogon."""
    base = _replace_address(_load(samples_dir, "probe-cli-cmd-minipipeline/measurement.json"),
                            "130.192.16.171", "198.19.40.1")
    vouched = _unreachable(base, control_connects=True)
    vouched["report_id"] = "vouched"
    vouched["test_keys"]["control"]["ip_info"] = {"198.19.40.1": {"asn": 0, "flags": 11}}
    unvouched = copy.deepcopy(vouched)
    unvouched["report_id"] = "unvouched"
    unvouched["test_keys"]["control"]["ip_info"] = {"198.19.40.1": {"asn": 0, "flags": 7}}  # bogon flag set
    got = _verdicts([vouched, unvouched], data_dir, tmp_path)
    assert got[("vouched", "page")] == ("blocked", "tcp_ip", "web.tcp_failed_ctrl_ok")
    assert got[("unvouched", "page")] == ("blocked", "dns", "web.dns_bogon")


def test_wallwatch_web_connectivity_is_judged_by_the_rule_set(samples_dir: Path, data_dir: Path,
                                                              tmp_path: Path) -> None:
    """The probe writes OONI's keys and no verdict of its own: the rule set judges it as OONI's."""
    record = copy.deepcopy(_load(samples_dir, "probe-cli-cmd-minipipeline/measurement.json"))
    record.update(software_name="wallwatch", report_id="ww-web")
    record["test_keys"]["x_wallwatch"] = {"helper": "https://th.wallwatch.test/", "lab": None}
    got = _verdicts([record], data_dir, tmp_path)
    assert got[("ww-web", "page")] == ("ok", None, "web.final_ok_status_match")


_FACT_VALUES = (None, False, True, 0, 1, 2)


def test_the_specialised_cascades_pick_the_rule_the_plain_cascade_picks() -> None:
    """RuleSet.judge runs the cascade specialised to the state of the fingerprint facts; on any facts it
    picks the first rule whose conditions hold as `Rule.matches` reads them (the plain cascade)."""
    rng = random.Random(10)
    rule_sets = list({id(r): r for r in load_rule_sets().values()}.values())
    for _ in range(3000):
        facts = {fact: rng.choice(_FACT_VALUES) for fact in _FACTS_TEMPLATE}
        unmatched = rng.random() < 0.5
        if unmatched:
            facts.update(_FINGERPRINT_FACTS)  # the common state: no fingerprint matched
        for rule_set in rule_sets:
            plain = next(rule for rule in rule_set.rules if rule.matches(facts))
            assert rule_set.judge(facts) is plain
            if unmatched:
                assert rule_set.judge(facts, fingerprinted=False) is plain
    no_match = tuple(_FINGERPRINT_FACTS.values())
    assert any(len(r._specialised[no_match]) < len(r.rules) for r in rule_sets)  # rules were left out
    # Past _MAX_SPECIALISED states (random facts make thousands) the whole cascade judged, as well.
    assert all(len(r._specialised) == _MAX_SPECIALISED for r in rule_sets)
