"""The keyword nettest against the lab's emulated chat platform, filtering on and off, and behind a censor.

Citizen Lab's method ([CitizenLab2016], [CitizenLab2017]) in a real lab: the real probe sends each
keyword's message and its twin without it, reads the recipient's inbox, and must say
`blocked/platform_filter` exactly when the platform's keyword list holds the word. Network blocking
of the platform must read as that network method, never as platform filtering.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from wallwatch.lab.chat_platform import load_keyword_list
from wallwatch.lab.scenario import observed_features, probe_in_lab
from wallwatch.probe.verdicts import rules_version

pytestmark = [pytest.mark.lab, pytest.mark.slow]

CN_2017 = Path(__file__).resolve().parents[2] / "scenarios" / "keywords" / "cn-2017.yaml"
NO_RULES: dict[str, Any] = {"name": "none", "rules": []}


def _keyword(lab: Any, tmp_path: Path, policy: dict[str, Any], platform: tuple[str, ...] | None,
             *options: str) -> dict[str, Any]:
    lab.set_policy(policy)
    lab.set_platform_filter(platform)
    extra = [arg for option in options for arg in ("--option", option)]
    return probe_in_lab(lab, tmp_path / "keyword.jsonl", timeout=2.0, extra_args=extra, nettest="keyword")


def _feature(measurement: dict[str, Any]) -> tuple[str, str | None, tuple[str, ...]]:
    seen = observed_features(measurement)["keywords"]
    return seen.verdict, seen.method, seen.evidence


def test_no_filtering_every_keyword_is_delivered(lab: Any, tmp_path: Path) -> None:
    measurement = _keyword(lab, tmp_path, NO_RULES, None)
    assert _feature(measurement)[:2] == ("ok", None)
    keys = measurement["test_keys"]
    assert keys["keyword_platform_reachable"] and keys["keyword_withheld"] == []
    # The messaging nettests' shared rule set (probe/verdicts.py), which main moved to /2 (residual, throttled).
    assert keys["x_wallwatch"]["rules_version"] == rules_version("keyword") == "wallwatch-keyword-verdicts/2"


def test_the_2017_list_is_withheld_by_the_platform_and_said_to_be_the_platform(lab: Any, tmp_path: Path) -> None:
    measurement = _keyword(lab, tmp_path, NO_RULES, load_keyword_list(CN_2017))
    verdict, method, evidence = _feature(measurement)
    assert (verdict, method) == ("blocked", "platform_filter")
    assert "not the network" in evidence[0]
    assert measurement["test_keys"]["keyword_withheld"] == ["小熊维尼", "Winnie the Pooh"]
    canaries = measurement["test_keys"]["x_wallwatch"]["canaries"]
    assert all(c["control_delivered"] and c["keyword_status"] == 200 and not c["keyword_delivered"] for c in canaries)


def test_a_word_the_platform_does_not_list_is_delivered(lab: Any, tmp_path: Path) -> None:
    measurement = _keyword(lab, tmp_path, NO_RULES, load_keyword_list(CN_2017), "keywords=Paddington|小熊维尼")
    assert _feature(measurement)[:2] == ("blocked", "platform_filter")
    keys = measurement["test_keys"]
    assert (keys["keyword_withheld"], keys["keyword_delivered"]) == (["小熊维尼"], ["Paddington"])
    assert observed_features(measurement)["keywords"].partial is True  # one of two withheld


@pytest.mark.parametrize(("rule", "expected"), [
    ({"name": "dns", "match": {"dns.qname": {"suffix": "chat-platform.test"}}, "action": "dns-inject",
      "answer": ["198.19.250.1"]}, "blocked/dns"),
    ({"name": "sni", "match": {"tls.sni": {"suffix": "chat-platform.test"}}, "action": "reset"}, "blocked/tls_sni"),
    ({"name": "ip", "match": {"ip.dst": {"cidr": "198.19.17.1/32"}}, "action": "blackhole-ip"}, "blocked/tcp_ip"),
], ids=["dns", "sni", "ip"])
def test_network_blocking_of_the_platform_reads_as_network_blocking(lab: Any, tmp_path: Path, rule: dict[str, Any],
                                                                   expected: str) -> None:
    # The platform filters too: a censor in front of it must still not be mistaken for the platform.
    measurement = _keyword(lab, tmp_path, {"name": "platform-blocked", "rules": [rule]}, load_keyword_list(CN_2017))
    verdict, method, evidence = _feature(measurement)
    assert f"{verdict}/{method}" == expected, evidence
    assert "says nothing of what the platform filters" in evidence[0]
    assert measurement["test_keys"]["keyword_platform_reachable"] is False
