"""web_connectivity against every technique that blocked web sites in 2017, in real namespaces.

One lab, one policy that blocks six sites of the 2017 list, each by a different
technique (DNS injection to the lab's sink, DNS injection of a published GFW
poison address, IP black-hole, a reset on the HTTP Host, a reset on the TLS
SNI, an injected block page), and leaves the other seven alone. The real probe
(`wallwatch probe run web_connectivity`) measures the whole list at once with
the lab's test helper as its control; then the real pipeline (`ingest`) judges
every measurement with its web_connectivity rule set, as it judges OONI's.
Every site must read what the policy implies: OONI's `blocking` type (the
probe's own keys) and wallwatch's verdict and method (the pipeline's), and
every site the policy does not name must read ok (no collateral verdicts).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.lab, pytest.mark.slow]

# The China MIIT "site temporarily unavailable" page, a block page Chinese networks serve
# ([ooni-fingerprints] row cp.e_unk_cn_temporarily_unavailable matches it).
MIIT_PAGE = ("<html><head><meta charset=\"utf-8\"><title>\u6e29\u99a8\u63d0\u793a</title></head><body>"
             "\u6e29\u99a8\u63d0\u793a\uff1a\u8be5\u7f51\u7ad9\u6682\u65f6\u65e0\u6cd5\u8bbf\u95ee\uff0c"
             "\u6709\u53ef\u80fd\u662f\u4ee5\u4e0b\u539f\u56e0\uff1a</br></body></html>")
GFW_POISON = "8.7.198.45"  # [ooni-fingerprints] ooni.cn_0, a published GFW poison answer

RULES: list[dict[str, Any]] = [
    {"name": "dns-sink", "match": {"dns.qname": {"suffix": "www.facebook.com"}}, "action": "dns-inject"},
    {"name": "dns-poison", "match": {"dns.qname": {"suffix": "twitter.com"}}, "action": "dns-inject",
     "answer": GFW_POISON},
    {"name": "ip", "match": {"ip.dst": "198.19.40.1"}, "action": "blackhole-ip"},
    {"name": "host-reset", "match": {"http.host": {"suffix": "voachinese.com"}}, "action": "reset"},
    {"name": "sni-reset", "match": {"tls.sni": {"suffix": "youtube.com"}}, "action": "reset"},
    {"name": "page", "match": {"http.host": {"suffix": "rfa.org"}}, "action": "blockpage", "page": MIIT_PAGE},
]

# input -> (OONI's blocking, wallwatch's verdict/method); inputs not named must read (False, "ok").
BLOCKED: dict[str, tuple[str, str]] = {
    "https://www.facebook.com/": ("dns", "blocked/dns"),
    "https://twitter.com/": ("dns", "blocked/dns"),
    "https://www.google.com/": ("tcp_ip", "blocked/tcp_ip"),
    "http://www.voachinese.com/": ("http-failure", "blocked/http_failure"),
    "https://www.youtube.com/": ("http-failure", "blocked/tls_sni"),
    "http://www.rfa.org/mandarin/": ("http-diff", "blocked/blockpage"),
}


def _run(lab: Any, policy: dict[str, Any], tmp_path: Path) -> list[dict[str, Any]]:
    lab.set_policy(policy)
    output = tmp_path / "web.jsonl"
    argv = [sys.executable, "-m", "wallwatch.cli", "probe", "run", "web_connectivity", "--timeout", "2",
            "--probe-cc", "CN", "--probe-asn", "AS4134", "--output", str(output)]
    result = lab.run_in_client(argv, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in output.read_text().splitlines() if line.strip()]


def _judged(measurements: list[dict[str, Any]], tmp_path: Path) -> dict[str, tuple[str, str]]:
    """The pipeline's verdict per input: ingest the JSONL as any OONI file, read the verdicts table."""
    from wallwatch.analysis.ingest.pipeline import ingest
    from wallwatch.analysis.store import Store

    path = tmp_path / "judge.jsonl"
    path.write_text("".join(json.dumps(m) + "\n" for m in measurements))
    summary = ingest([path], tmp_path / "data")
    assert summary.quarantined == 0
    rows = Store(tmp_path / "data").read("verdicts").to_pylist()
    return {row["target"]: (f"{row['verdict']}/{row['method']}" if row["method"] else row["verdict"],
                            row["rule_id"]) for row in rows}


def _check(measurements: list[dict[str, Any]], blocked: dict[str, tuple[str, str]], tmp_path: Path) -> None:
    from wallwatch.probe.nettests.web_connectivity import shipped_list

    urls = shipped_list()
    assert [m["input"] for m in measurements] == urls
    judged = _judged(measurements, tmp_path)
    wrong = []
    for measurement in measurements:
        url, keys = measurement["input"], measurement["test_keys"]
        ooni, verdict = blocked.get(url, (False, "ok"))
        seen = (keys["blocking"], judged[url][0])
        if seen != (ooni, verdict) or keys["accessible"] is not (url not in blocked):
            wrong.append(f"{url}: expected {ooni}, {verdict}; saw {seen[0]}, {seen[1]} (rule {judged[url][1]}; "
                         f"dns {keys['dns_consistency']}, failure {keys['http_experiment_failure']}, "
                         f"control {keys['control_failure']}, accessible {keys['accessible']}, status/body/headers/"
                         f"title match {keys['status_code_match']}/{keys['body_length_match']}/"
                         f"{keys['headers_match']}/{keys['title_match']})")
        assert keys["control_failure"] is None, url  # the helper answered for every site
    assert not wrong, "\n".join(wrong)


def test_unblocked_every_site_is_accessible_and_ok(lab: Any, tmp_path: Path) -> None:
    measurements = _run(lab, {"name": "none", "rules": []}, tmp_path)
    _check(measurements, {}, tmp_path)
    first = measurements[0]
    assert first["test_name"] == "web_connectivity" and first["software_name"] == "wallwatch"
    assert first["test_helpers"]["backend"]["address"] == "https://th.wallwatch.test/"
    assert first["test_keys"]["control"]["http_request"]["status_code"] == 200


def test_each_technique_yields_its_blocking_type_and_verdict_and_nothing_else_is_blocked(
        lab: Any, tmp_path: Path) -> None:
    measurements = _run(lab, {"name": "web-2017", "rules": RULES}, tmp_path)
    _check(measurements, BLOCKED, tmp_path)
    by_url = {m["input"]: m["test_keys"] for m in measurements}
    # The facts behind the verdicts, as OONI's tools would read them.
    facebook = by_url["https://www.facebook.com/"]
    assert facebook["dns_consistency"] == "inconsistent"
    assert facebook["queries"][0]["answers"][0]["ipv4"] == "198.19.250.1"
    assert facebook["queries"][0]["x_dns_duplicate_responses"], "the real answer arrives after the forgery"
    google = by_url["https://www.google.com/"]
    assert google["tcp_connect"][0]["status"] == {"success": False, "failure": "generic_timeout_error",
                                                  "blocked": True}
    rfa = by_url["http://www.rfa.org/mandarin/"]
    assert rfa["status_code_match"] is True and rfa["body_length_match"] is False and rfa["title_match"] is False
    assert "\u6e29\u99a8\u63d0\u793a" in rfa["requests"][0]["response"]["body"]
    assert by_url["https://www.youtube.com/"]["tls_handshakes"][0]["failure"] == "connection_reset"
