"""Every feature's verdict and method equal the policy's ground truth.

One lab for the module; each case swaps the censor's policy while it runs and
probes WhatsApp from the client namespace with the real nettest, exactly as
`wallwatch lab exec -- wallwatch probe run whatsapp` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from wallwatch.lab.demo import (
    DEFAULT_SCENARIO,
    Expectation,
    Phase,
    compare,
    load_phases,
    observed_features,
    play_phase,
    probe_in_lab,
)

pytestmark = [pytest.mark.lab, pytest.mark.slow]

OK = {"text": "ok", "media": "ok", "calls": "ok", "web": "ok", "registration": "ok"}

DNS_INJECTION = {"name": "dns-whatsapp-net", "rules": [
    {"name": "whatsapp-net-dns", "match": {"dns.qname": {"suffix": "whatsapp.net"}},
     "action": "dns-inject", "answer": ["198.19.250.1"]},
]}
CHAT_IP = {"name": "chat-ip", "rules": [
    {"name": "chat-servers", "match": {"ip.dst": {"cidr": "198.19.1.0/24"}}, "action": "blackhole-ip"},
]}
MEDIA_SNI = {"name": "media-sni", "rules": [
    {"name": "media-sni", "match": {"tls.sni": {"suffix": "mmg.whatsapp.net"}}, "action": "reset"},
]}
CHAT_DPI = {"name": "chat-dpi", "rules": [
    {"name": "chat-fingerprint", "match": {"whatsapp.header": True}, "action": "reset"},
]}
ALL = {"name": "all", "rules": [
    *DNS_INJECTION["rules"], *CHAT_IP["rules"], *MEDIA_SNI["rules"], *CHAT_DPI["rules"],
    {"name": "web-sni", "match": {"tls.sni": {"suffix": "web.whatsapp.com"}}, "action": "reset"},
    {"name": "call-relays", "match": {"proto": "udp", "ip.dst": {"cidr": "198.19.3.0/24"}}, "action": "drop"},
]}

# Ground truth per policy. web.whatsapp.com is a .com name, so injecting
# whatsapp.net names leaves the web client alone; calls dial relay addresses
# with no DNS at all. With everything on, DNS is the first thing interfered
# with for the .net names, so it is the method the probe must name.
CASES: dict[str, tuple[dict[str, Any], dict[str, str]]] = {
    "none": ({"name": "none", "rules": []}, OK),
    "dns-injection": (DNS_INJECTION, {**OK, "text": "blocked/dns", "media": "blocked/dns", "registration": "blocked/dns"}),
    "chat-ip-blackhole": (CHAT_IP, {**OK, "text": "blocked/tcp_ip"}),
    "media-sni-reset": (MEDIA_SNI, {**OK, "media": "blocked/tls_sni"}),
    "chat-protocol-dpi": (CHAT_DPI, {**OK, "text": "blocked/protocol_dpi"}),
    "all-together": (ALL, {
        "text": "blocked/dns", "media": "blocked/dns", "registration": "blocked/dns",
        "web": "blocked/tls_sni", "calls": "blocked/udp_blocking",
    }),
}


def _phase(case: str) -> Phase:
    policy, expect = CASES[case]
    return Phase(case, case, "", policy, {"whatsapp": {f: Expectation.parse(v) for f, v in expect.items()}})


def _check(lab: Any, phase: Phase, tmp_path: Path) -> dict[str, Any]:
    lab.set_policy(phase.policy)
    measurement = probe_in_lab(lab, tmp_path / "m.jsonl", timeout=3.0)
    rows = compare(phase, measurement)
    wrong = [
        f"{r['feature']}: expected {r['expected_verdict']}/{r['expected_method']}, "
        f"saw {r['observed_verdict']}/{r['observed_method']} ({'; '.join(r['evidence'])})"
        for r in rows if not r["match"]
    ]
    assert not wrong, f"policy {phase.id}:\n" + "\n".join(wrong)
    return measurement


@pytest.mark.parametrize("case", list(CASES))
def test_verdicts_match_policy_ground_truth(lab: Any, case: str, tmp_path: Path) -> None:
    measurement = _check(lab, _phase(case), tmp_path)
    # The measurement stays OONI-shaped and anonymous by default.
    assert measurement["test_name"] == "whatsapp" and measurement["probe_ip"] == "127.0.0.1"
    assert measurement["software_name"] == "wallwatch"


def test_no_collateral_verdicts(lab: Any, tmp_path: Path) -> None:
    """Blocking one feature never makes an unblocked feature look blocked."""
    for case in ("chat-ip-blackhole", "media-sni-reset", "chat-protocol-dpi"):
        policy, expect = CASES[case]
        lab.set_policy(policy)
        measurement = probe_in_lab(lab, tmp_path / f"{case}.jsonl", timeout=3.0)
        seen = observed_features(measurement)
        unblocked = [f for f, v in expect.items() if v == "ok"]
        assert len(unblocked) == 4
        for feature in unblocked:
            assert seen[feature].verdict == "ok", f"{case}: {feature} reported {seen[feature]}"


@pytest.mark.parametrize("phase_index", [0, 1, 2])
def test_demo_scenario_phases_every_service(lab: Any, phase_index: int, tmp_path: Path) -> None:
    """Each phase of `wallwatch demo`, every service of 2017 probed at once as the demo does (OpenVPN aside:
    this module's lab runs no VPN server; `wallwatch demo` brings one up)."""
    scenario = load_phases(DEFAULT_SCENARIO)
    probes = tuple(p for p in scenario.probes if p != "openvpn")
    assert {"whatsapp", "telegram", "signal", "facebook_messenger", "wechat", "skype", "facetime"} <= set(probes)
    measurements, rows = play_phase(lab, scenario, scenario.phases[phase_index], probes, tmp_path, 3.0)
    wrong = [f"{r['service']}.{r['feature']}: expected {r['expected_verdict']}/{r['expected_method']}, saw "
             f"{r['observed_verdict']}/{r['observed_method']} ({'; '.join(r['evidence'][:2]) or r['error']})"
             for r in rows if not r["match"]]
    assert not wrong, "\n".join(wrong)
    assert len(rows) == sum(len(scenario.phases[phase_index].expect[p]) for p in probes) == 25
    whatsapp = next(m for m in measurements if m["test_name"] == "whatsapp")
    assert whatsapp["test_keys"]["x_wallwatch"]["opening"] == "2017"  # the scenario's options reached the probe
