"""Confirmed blocking and probe faults: a fingerprint decides first wherever it is found (DNS
answers, a body, a header, any response of a redirect chain; OONI's tests and wallwatch's own), and
a measurement whose only failures are the probe's own (or strings the taxonomy does not class) is never
`blocked`.

Each case starts from a real OONI sample and changes only the facts under test.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wallwatch.analysis.ingest.header import read_header
from wallwatch.analysis.verdicts.failures import (
    PROBE,
    failure_class,
    failure_table,
    interference_strings,
    is_interference_candidate,
)
from wallwatch.analysis.verdicts.fingerprints import build_db, load_fingerprints, parse_rows
from wallwatch.analysis.verdicts.observations import make_observations
from wallwatch.analysis.verdicts.rules import judge_measurement

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "ooni-samples"


def _load(name: str) -> dict[str, Any]:
    return orjson.loads((SAMPLES / name).read_bytes())


def _judge(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    header, meta, test_keys = read_header(record)
    facts = make_observations(header, test_keys, meta["input"])
    return {row["feature"]: row for row in judge_measurement(header, meta, test_keys, facts)}


def _cited(row: dict[str, Any]) -> tuple:
    return (row["verdict"], row["method"], row["rule_id"], row["confirmed"], row["fingerprint"],
            row["fingerprint_scope"], row["fingerprint_location"], row["fingerprint_found_in"])


def test_dns_fingerprint_confirms_in_its_country_and_is_evidence_elsewhere() -> None:
    record = _load("ts-018-whatsapp.example.json")
    for query in record["test_keys"]["queries"]:
        if query["hostname"] == "v.whatsapp.net":
            for answer in query["answers"] or []:
                answer["ipv4"] = "8.7.198.45"  # ooni.cn_0, a GFW poison address (expected in CN)
    record["probe_cc"] = "CN"
    got = _judge(record)
    assert _cited(got["registration"]) == ("blocked", "dns", "im.dns_fingerprint", True, "ooni.cn_0", "nat", "dns",
                                           "v.whatsapp.net")
    assert got["text"]["verdict"] == "ok" and got["text"]["fingerprint"] is None
    record["probe_cc"] = "IT"
    got = _judge(record)
    assert _cited(got["registration"]) == ("blocked", "dns", "im.dns_fingerprint_elsewhere", False, "ooni.cn_0",
                                           "nat", "dns", "v.whatsapp.net")


def _web(body: str | None = None, headers: dict[str, str] | None = None) -> dict[str, Any]:
    record = _load("probe-cli-cmd-minipipeline/measurement.json")
    for request in record["test_keys"]["requests"]:
        if body is not None:
            request["response"]["body"] = body
        if headers is not None:
            request["response"]["headers"] = headers
    return record


def test_a_block_page_decides_before_the_control_says_down() -> None:
    # Iran's national block page (ooni.ir_0, a body `contains` row) while the control failed too.
    record = _web(body='<html><iframe src="http://10.10.34.34?type=Invalid Site&policy=MainPolicy"></iframe></html>')
    record["probe_cc"] = "IR"
    record["test_keys"]["control"]["http_request"] = {"failure": "generic_timeout_error"}
    got = _judge(record)["page"]
    assert _cited(got) == ("blocked", "blockpage", "web.blockpage", True, "ooni.ir_0", "nat", "body",
                           "https://nexa.polito.it/")


def test_a_header_fingerprint_is_found_in_any_header() -> None:
    record = _web(headers={"Server": "Protected by WireFilter 8000 (WF8000)"})  # ooni.ae_0, header.server prefix
    record["probe_cc"] = "SA"
    assert _cited(_judge(record)["page"]) == ("blocked", "blockpage", "web.blockpage", True, "ooni.ae_0", "nat",
                                              "header.server", "https://nexa.polito.it/")


def test_a_block_page_anywhere_in_a_redirect_chain_counts() -> None:
    """The final response is the site's own page; an earlier hop redirected through a block portal."""
    record = _web()
    requests = record["test_keys"]["requests"]  # newest first, as probe-cli writes them
    hop = copy.deepcopy(requests[-1])
    hop["request"]["url"] = "http://nexa.polito.it/"
    hop["response"] = {"code": 302, "body": "", "headers": {
        "Location": "http://lamanlabuh.aduankonten.id/?u=nexa.polito.it"}}  # ooni.id_lamanlabuh_kominfo
    requests.append(hop)
    record["probe_cc"] = "ID"
    got = _judge(record)["page"]
    assert _cited(got) == ("blocked", "blockpage", "web.blockpage", True, "ooni.id_lamanlabuh_kominfo", "nat",
                           "header.location", "http://nexa.polito.it/")


def test_a_known_false_positive_is_named_and_never_blocking() -> None:
    record = _web(body="<html><body><p><em>Thank you for using nginx.</em></p></body></html>")  # cp.fp_x_fpru_nginx
    for request in record["test_keys"]["requests"]:
        request["response"]["code"] = 404
    got = _judge(record)["page"]
    assert _cited(got) == ("unknown", None, "web.known_false_positive", False, "cp.fp_x_fpru_nginx", "fp", "body",
                           "https://nexa.polito.it/")


def test_a_known_false_positive_in_dns_answers_is_never_evidence_either() -> None:
    """Upstream has no DNS row of scope fp today; one added by an update (an anycast CDN address, say)
    must name the answer as a known false positive, never count as a DNS fingerprint."""
    shipped = load_fingerprints()
    record = _web()
    answer = next(a["ipv4"] for q in record["test_keys"]["queries"] for a in q["answers"] or () if a.get("ipv4"))
    extra = parse_rows("name,scope,other_names,location_found,pattern_type,pattern,confidence_no_fp,"
                       f"expected_countries,source,exp_url,notes\nt.fp_dns,fp,,dns,full,{answer},1,,,,\n", "dns", "t")
    db = build_db("t", [*shipped.dns, *extra], shipped.http)
    header, meta, test_keys = read_header(record)
    facts = make_observations(header, test_keys, meta["input"], db)
    named = {fingerprint.name: fingerprint.kind for _, fingerprint in facts.fingerprint_matches}
    assert named["t.fp_dns"] == "fp" and "dns" not in named.values()
    (got,) = judge_measurement(header, meta, test_keys, facts)
    (before,) = judge_measurement(*read_header(record), make_observations(header, test_keys, meta["input"], shipped))
    assert (got["verdict"], got["rule_id"]) == (before["verdict"], before["rule_id"]) == ("ok", "web.final_ok_status_match")


def test_wallwatch_records_too_a_fingerprint_overrides_the_probes_verdict() -> None:
    record = _load("ts-018-whatsapp.example.json")
    record.update(software_name="wallwatch", probe_cc="CN")
    record["test_keys"]["x_wallwatch"] = {"rules_version": "wallwatch-whatsapp-verdicts/2", "features": {
        "registration": {"verdict": "ok", "method": None, "confidence": 0.9, "rule": "feature.all_ok"},
        "text": {"verdict": "ok", "method": None, "confidence": 0.9, "rule": "feature.all_ok"}}}
    for query in record["test_keys"]["queries"]:
        if query["hostname"] == "v.whatsapp.net":
            query["tags"] = ["feature:registration"]
            for answer in query["answers"] or []:
                answer["ipv4"] = "8.7.198.45"
    got = _judge(record)
    assert _cited(got["registration"]) == ("blocked", "dns", "ww.dns_fingerprint", True, "ooni.cn_0", "nat", "dns",
                                           "v.whatsapp.net")
    assert got["registration"]["rules_version"] == "wallwatch-fingerprints/1"
    assert (got["text"]["verdict"], got["text"]["rule_id"]) == ("ok", "feature.all_ok")


def test_a_probe_fault_is_unknown_with_its_reason() -> None:
    got = _judge(_load("backend/bug_351.json"))["page"]  # OONI's probe could not decode the page ('ascii' codec)
    assert (got["verdict"], got["rule_id"]) == ("unknown", "web.probe_fault")
    assert got["probe_fault"].startswith("unknown_failure 'ascii' codec can't decode")


# A string OONI might add after failures.csv was written: unlisted, so `unclassified`.
_NEW_STRING = "quic_handshake_blackholed_by_middlebox"


def test_an_unclassified_failure_is_never_called_a_probe_fault() -> None:
    """A string the taxonomy does not list is not evidence (the verdict stays `unknown`), and it is named
    as unclassified, not as a probe fault: it may be interference OONI learnt to name after the table."""
    assert failure_class(_NEW_STRING) == "unclassified"
    record = _load("probe-cli-cmd-minipipeline/measurement.json")
    keys = record["test_keys"]
    for entry in keys["tcp_connect"]:
        entry["status"] = {"success": False, "failure": _NEW_STRING}
    for entry in keys["tls_handshakes"] or []:
        entry["failure"] = _NEW_STRING
    for entry in keys["requests"]:
        entry["failure"], entry["response"] = _NEW_STRING, None
    keys["http_experiment_failure"] = _NEW_STRING
    got = _judge(record)["page"]
    assert (got["verdict"], got["rule_id"], got["probe_fault"], got["unclassified_failure"]) == (
        "unknown", "web.unclassified_failure", None, _NEW_STRING)
    tunnel = _load("backend/vanilla_tor_ok.json")
    tunnel["test_keys"].update(failure=_NEW_STRING, success=False)
    got = _judge(tunnel)["tunnel"]
    assert (got["verdict"], got["rule_id"], got["unclassified_failure"]) == (
        "unknown", "tunnel.unclassified_failure", _NEW_STRING)
    # Beside evidence it decides nothing, and is still named.
    whatsapp = _load("ts-018-whatsapp.example.json")
    for entry in whatsapp["test_keys"]["tcp_connect"]:
        unlisted = (entry["ip"], entry["port"]) == ("3.33.221.48", 5222)  # one of e5.whatsapp.net's endpoints
        entry["status"] = {"success": False, "failure": _NEW_STRING if unlisted else "connection_reset"}
    text = _judge(whatsapp)["text"]
    assert (text["verdict"], text["method"], text["unclassified_failure"]) == ("blocked", "tcp_reset", _NEW_STRING)


def test_every_failure_string_of_the_samples_and_of_df_007_is_classed() -> None:
    seen = set()
    for path in SAMPLES.rglob("*.json"):
        text = path.read_text()
        for key in ('"failure": "', '"failure":"', '_failure": "'):
            for part in text.split(key)[1:]:
                seen.add(part.split('"', 1)[0])
    df_007 = ["address_family_not_supported_error", "connect_error", "connection_done", "connection_lost_error",
              "connection_refused_error", "connection_refused", "connection_reset", "deferred_timeout_error",
              "dns_bogon_error", "dns_lookup_error", "dns_name_error", "dns_name_failure", "dns_nxdomain_error",
              "eof_error", "generic_timeout_error", "response_never_received", "socks_address_not_supported",
              "socks_command_not_supported", "socks_connection_not_allowed", "socks_connection_refused",
              "socks_error", "socks_host_unreachable", "socks_network_unreachable", "socks_server_failure",
              "socks_ttl_expired", "ssl_invalid_hostname", "ssl_unknown_autority", "ssl_invalid_certificate",
              "task_timed_out", "tcp_timed_out_error", "unknown_failure anything"]
    for failure in sorted(seen | set(df_007)):
        assert failure_table().lookup(failure) is not None, failure
    assert failure_class("network_unreachable") == PROBE
    assert failure_class("http_invalid_redirect_url") == PROBE
    assert failure_class("connection_reset") == "interference"
    assert failure_class("dns_no_answer") == "server"
    assert failure_class("something nobody wrote down") == "unclassified"
    # The set the verdicts look failures up in says what the table says.
    for failure in [*(row.failure for row in failure_table().rows()), *seen, "unknown_failure x", "socks_x", "new"]:
        assert (failure in interference_strings()) == is_interference_candidate(failure), failure


_PROBE_FAULTS = sorted(row.failure for row in failure_table().rows() if row.kind == PROBE and row.match == "exact")
_FAULT = st.one_of(st.sampled_from(_PROBE_FAULTS),
                   st.text(min_size=0, max_size=30).map(lambda tail: f"unknown_failure {tail}".strip()),
                   # strings nobody classed (a new one OONI adds later): never evidence on their own either
                   st.text(min_size=1, max_size=30).filter(lambda text: failure_class(text) == "unclassified"))
_OK_SAMPLES = ["ts-018-whatsapp.example.json", "ts-020-telegram.example.json", "ts-029-signal.example.json",
               "ts-019-facebook-messenger.example.json", "probe-cli-cmd-minipipeline/measurement.json",
               "ts-017-web-connectivity.example.json", "backend/vanilla_tor_ok.json", "backend/openvpn.json"]
_BASES = {name: _load(name) for name in _OK_SAMPLES}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(_OK_SAMPLES), data=st.data())
def test_no_measurement_whose_only_failures_are_probe_faults_or_unclassified_is_ever_blocked(name: str, data: st.DataObject) -> None:
    record = copy.deepcopy(_BASES[name])
    keys = record["test_keys"]
    faulted = 0
    for query in keys.get("queries") or []:
        if data.draw(st.booleans()):
            query["failure"], query["answers"] = data.draw(_FAULT), None
            faulted += 1
    for entry in keys.get("tcp_connect") or []:
        if isinstance(entry, dict) and data.draw(st.booleans()):
            entry["status"] = {"success": False, "failure": data.draw(_FAULT)}
            faulted += 1
    for entry in keys.get("tls_handshakes") or []:
        if data.draw(st.booleans()):
            entry["failure"] = data.draw(_FAULT)
            faulted += 1
    for entry in keys.get("requests") or []:
        if data.draw(st.booleans()):
            entry["failure"], entry["response"] = data.draw(_FAULT), None
            faulted += 1
    if "failure" in keys and data.draw(st.booleans()):
        keys["failure"] = data.draw(_FAULT)  # a tunnel's bootstrap
        faulted += 1
    for feature, row in _judge(record).items():
        assert row["verdict"] != "blocked", (name, feature, row["rule_id"], faulted)
