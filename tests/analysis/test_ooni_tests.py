"""Every OONI test is named: judged by a rule set, or stored with why; the spec examples of the new
ones (tests/data/ooni-spec-examples) judged, and one change each turns them."""

from __future__ import annotations

import copy
from pathlib import Path

import orjson
from typer.testing import CliRunner

from wallwatch.analysis.ingest.header import read_header
from wallwatch.analysis.ingest.pipeline import ingest
from wallwatch.analysis.store import Store
from wallwatch.analysis.verdicts.observations import make_observations
from wallwatch.analysis.verdicts.rules import default_rule_sets, judge_measurement, judgement_of, not_judged
from wallwatch.cli import app

EXAMPLES = Path(__file__).resolve().parents[1] / "data" / "ooni-spec-examples"
# ooni/spec nettests/ (ts-001 .. ts-041) and ooni/backend fastpath test names.
OONI_TESTS = ["web_connectivity", "whatsapp", "telegram", "signal", "facebook_messenger", "vanilla_tor", "tor",
              "torsf", "psiphon", "openvpn", "riseupvpn", "stunreachability", "dnscheck", "echcheck",
              "http_header_field_manipulation", "http_invalid_request_line", "ndt", "dash", "urlgetter",
              "dns_consistency", "http_requests", "http_host", "dns_spoof", "bridge_reachability", "tcp_connect",
              "multi_protocol_traceroute", "captive_portal", "dns_injection", "lantern",
              "meek_fronted_requests_test", "sni_blocking", "quicping", "tcpping", "tlsping", "simplequicping",
              "dnsping", "browser_web", "tlsmiddlebox", "portfiltering", "randomtraffic", "shadowsocks", "ddr"]


def test_every_ooni_test_is_judged_or_says_why_not() -> None:
    judged, skipped = set(default_rule_sets()), set(not_judged())
    assert not judged & skipped
    for name in OONI_TESTS:
        assert name in judged or name in skipped, name
    assert judgement_of("ndt").startswith("stored, not judged: a speed test")
    assert judgement_of("torsf") == "judged by tunnel/3"


def _judge(record: dict) -> dict:
    header, meta, test_keys = read_header(record)
    facts = make_observations(header, test_keys, meta["input"])
    (row,) = judge_measurement(header, meta, test_keys, facts)
    return row


def _example(name: str) -> dict:
    return orjson.loads((EXAMPLES / name).read_bytes())


def test_the_new_tests_are_judged() -> None:
    torsf = _example("ts-030-torsf.example.json")
    assert (_judge(torsf)["service"], _judge(torsf)["verdict"], _judge(torsf)["rule_id"]) == (
        "tor_snowflake", "ok", "tunnel.ok")
    reset = copy.deepcopy(torsf)
    reset["test_keys"].update(failure="connection_reset", bootstrap_time=0)
    assert (_judge(reset)["verdict"], _judge(reset)["method"]) == ("blocked", "protocol_dpi")
    faulted = copy.deepcopy(torsf)
    faulted["test_keys"].update(failure="unknown_failure: tor: exit status 1", bootstrap_time=0)
    assert (_judge(faulted)["verdict"], _judge(faulted)["probe_fault"]) == ("unknown",
                                                                           "unknown_failure: tor: exit status 1")
    psiphon = copy.deepcopy(torsf)
    psiphon["test_name"] = "psiphon"
    assert (_judge(psiphon)["service"], _judge(psiphon)["verdict"]) == ("psiphon", "ok")
    stun = copy.deepcopy(reset)
    stun.update(test_name="stunreachability", input="stun.l.google.com:19302")
    stun["test_keys"]["failure"] = "generic_timeout_error"
    assert (_judge(stun)["service"], _judge(stun)["feature"], _judge(stun)["verdict"]) == ("stun", "calls", "unknown")
    ech = _example("ts-039-echcheck.example.json")
    assert (_judge(ech)["feature"], _judge(ech)["verdict"]) == ("ech", "ok")
    ech["test_keys"]["target"]["failure"] = "connection_reset"
    assert (_judge(ech)["verdict"], _judge(ech)["method"], _judge(ech)["rule_id"]) == ("blocked", "tls", "ech.blocked")
    line = _example("ts-007-http-invalid-request-line.example.json")
    got = _judge(line)
    assert (got["service"], got["feature"], got["target"], got["verdict"], got["method"]) == (
        "middlebox", "request_line", None, "blocked", "middlebox")
    headers = copy.deepcopy(line)
    headers["test_name"] = "http_header_field_manipulation"
    headers["test_keys"] = {"tampering": {"header_field_name": False, "total": False}}
    assert (_judge(headers)["feature"], _judge(headers)["verdict"]) == ("http_headers", "ok")
    tor = copy.deepcopy(torsf)
    tor["test_name"] = "tor"
    tor["test_keys"] = {"targets": {"a": {"failure": "generic_timeout_error"}, "b": {"failure": None}}}
    assert _judge(tor)["verdict"] == "ok"
    dnscheck = copy.deepcopy(torsf)
    dnscheck.update(test_name="dnscheck", input="https://dns.google/dns-query")
    dnscheck["test_keys"] = {"lookups": {"x": {"failure": "connection_reset"}}, "bootstrap_failure": None}
    assert (_judge(dnscheck)["feature"], _judge(dnscheck)["verdict"]) == ("resolver", "blocked")


def test_ingest_counts_each_test(tmp_path: Path) -> None:
    summary = ingest([EXAMPLES], tmp_path / "data")
    assert summary.tests == {"torsf": 1, "echcheck": 1, "http_invalid_request_line": 1}
    assert summary.verdicts == 3


def test_ingest_reports_failure_strings_nobody_classed(tmp_path: Path) -> None:
    """A string failures.csv does not list is counted in the summary (and printed by `wallwatch ingest`),
    so a maintainer classes it; the measurement is stored and judged `unknown`, not blocked."""
    torsf = _example("ts-030-torsf.example.json")
    lines = []
    for index, failure in enumerate(["a_new_failure_string", "a_new_failure_string", "another_one", "eof_error"]):
        record = copy.deepcopy(torsf)
        record["report_id"] = f"20250101T000000Z_torsf_IT_1_n1_{index}"
        record["test_keys"].update(failure=failure, bootstrap_time=0)
        lines.append(orjson.dumps(record))
    source = tmp_path / "new.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    summary = ingest([source], tmp_path / "data", workers=1)
    assert summary.unclassified_failures == {"a_new_failure_string": 2, "another_one": 1}
    assert summary.as_dict()["unclassified_failures"] == {"a_new_failure_string": 2, "another_one": 1}
    printed = CliRunner().invoke(app, ["ingest", "--data", str(tmp_path / "cli"), str(source)],
                                 env={"COLUMNS": "250"})
    assert printed.exit_code == 0, printed.output
    assert "failure strings the taxonomy does not class" in printed.output
    assert "a_new_failure_string" in printed.output and "another_one" in printed.output


def _echcheck_0_2_0() -> dict:
    """The spec example in echcheck's 0.2.0 format (ts-039 "tls_handshakes ... since 0.2.0"): one list
    of df-006 handshakes where the control's `echconfig` is empty; probe-cli writes the ECH config list
    (base64) and the outer SNI of the others. The spec names two ECH handshakes (the config's public
    name, then another); the second is the target with its outer name changed."""
    old = _example("ts-039-echcheck.example.json")
    control, target = old["test_keys"]["control"], old["test_keys"]["target"]
    second = dict(target, outer_server_name="not-the-public-name.example", t0=1.5, t=1.8)
    record = copy.deepcopy(old)
    record["test_version"] = "0.2.0"
    record["test_keys"] = {"tls_handshakes": [
        dict(control, echconfig=""),
        dict(target, echconfig="AEX+DQBBpQAgACB/0pbAvvJ1KnpHQR4+QSddSZ1Ol6OYnkl+cKbJMvLUGQAEAAEAAQASY2xvdWRmbGFyZS1lY2guY29tAAA=",
             outer_server_name="cloudflare-ech.com"),
        dict(second, echconfig="AEX+DQBBpQAgACB/0pbAvvJ1KnpHQR4+QSddSZ1Ol6OYnkl+cKbJMvLUGQAEAAEAAQASY2xvdWRmbGFyZS1lY2guY29tAAA="),
    ]}
    return record


def test_echcheck_0_2_0_reads_its_tls_handshakes(tmp_path: Path) -> None:
    record = _echcheck_0_2_0()
    assert (_judge(record)["feature"], _judge(record)["verdict"], _judge(record)["rule_id"]) == ("ech", "ok", "ech.ok")
    header, meta, test_keys = read_header(record)
    rows = make_observations(header, test_keys, meta["input"]).rows
    assert [(row["is_control"], row["tls_server_name"]) for row in rows] == [
        (True, "example.org"), (False, "cloudflare-ech.com"), (False, "not-the-public-name.example")]
    reset = copy.deepcopy(record)
    reset["test_keys"]["tls_handshakes"][2]["failure"] = "connection_reset"  # one ECH handshake reset
    assert (_judge(reset)["verdict"], _judge(reset)["method"], _judge(reset)["rule_id"]) == (
        "blocked", "tls", "ech.blocked")
    both_fail = copy.deepcopy(reset)
    both_fail["test_keys"]["tls_handshakes"][0]["failure"] = "generic_timeout_error"  # the control too
    assert (_judge(both_fail)["verdict"], _judge(both_fail)["rule_id"]) == ("unknown", "ech.fallback")
    # Through the ingest's decoder too (it reads only the fields it names).
    source = tmp_path / "ech.jsonl"
    source.write_bytes(orjson.dumps(reset) + b"\n")
    ingest([source], tmp_path / "data", workers=1)
    (stored,) = Store(tmp_path / "data").read("verdicts").to_pylist()
    assert (stored["verdict"], stored["rule_id"]) == ("blocked", "ech.blocked")
