"""Which ways around still work: the circumvention nettest against the lab's real servers, through the real censor.

One lab runs Debian's OpenVPN, wireguard-go, shadowsocks-libev and obfs4proxy
servers and a Tor bridge (lab/vpn_servers.py); the probe drives Debian's
clients (probe/nettests/circumvention.py). Each case puts in force the
fingerprint rules of policies/vpn-2017.yaml or policies/all-techniques.yaml,
as written, except where a rule is probabilistic or leaves a penalty box:
the fully-encrypted-traffic rule fires on 26% of flows and then blocks for
180 s, so its verdict would depend on a coin and poison the cases after it;
here it fires on every flow and leaves no penalty (its detection is the same).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from wallwatch.lab.scenario import Expectation, observed_features, probe_in_lab

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(600)]

POLICIES = Path(__file__).resolve().parents[2] / "policies"
OPTIONS = ("openvpn_udp", "openvpn_tcp", "wireguard", "shadowsocks", "obfs4", "tor", "tor_obfs4")
WORKS = dict.fromkeys(OPTIONS, "ok")


def rules_of(policy_file: str, *names: str, deterministic: bool = False) -> list[dict[str, Any]]:
    rules = {rule["name"]: rule for rule in yaml.safe_load((POLICIES / policy_file).read_text())["rules"]}
    chosen = [dict(rules[name]) for name in names]
    if deterministic:
        for rule in chosen:
            rule.pop("probability", None)
            rule.pop("duration", None)
            rule.pop("residual", None)
    return chosen


# Ground truth: what each policy does to each option, in the probe's words.
CASES: dict[str, tuple[list[dict[str, Any]], dict[str, str]]] = {
    "no-rules": ([], WORKS),
    # OpenVPN's opcode fingerprint: over UDP the server answers the client reset and the flow dies on the
    # next packet; over TCP the framed reset is dropped while a printable payload passes. WireGuard's
    # initiations are dropped: the probe sees UDP dropped (no server answers a probe's control there).
    "vpn-2017-fingerprints": (rules_of("vpn-2017.yaml", "openvpn", "wireguard"), {
        **WORKS, "openvpn_udp": "blocked/protocol_dpi", "openvpn_tcp": "blocked/protocol_dpi",
        "wireguard": "blocked/udp_blocking"}),
    # Fully encrypted first flights ([Wu2023]): Shadowsocks and obfs4 (and Tor behind obfs4) are caught,
    # TLS (plain Tor) and OpenVPN's opcodes are exempt, WireGuard is UDP.
    "vpn-2017-fully-encrypted": (rules_of("vpn-2017.yaml", "fully-encrypted", deterministic=True), {
        **WORKS, "shadowsocks": "blocked/protocol_dpi", "obfs4": "blocked/protocol_dpi",
        "tor_obfs4": "blocked/protocol_dpi"}),
    # Tor's TLS ClientHello (Winter & Lindskog, FOCI 2012); the obfs4 bridge hides it.
    "all-techniques-tor": (rules_of("all-techniques.yaml", "tor-tls"), {**WORKS, "tor": "blocked/protocol_dpi"}),
}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    import shutil

    from wallwatch.lab.capabilities import missing_lab_features
    from wallwatch.lab.topology import CIRCUMVENTION_SERVERS, VPN_SERVER_BINARIES, Lab

    missing = missing_lab_features()
    if missing:
        pytest.skip("lab unavailable: " + "; ".join(missing))
    absent = [binary for binary in VPN_SERVER_BINARIES.values() if shutil.which(binary) is None]
    if absent:
        pytest.skip(f"not installed: {', '.join(absent)} (scripts/install.sh)")
    state = tmp_path_factory.mktemp("circumvention") / "lab.json"
    with Lab.up(policy={"name": "none", "rules": []}, state_path=state,
                vpn_servers=list(CIRCUMVENTION_SERVERS)) as running:
        yield running


@pytest.mark.parametrize("case", list(CASES))
def test_each_option_reads_the_policys_ground_truth(lab: Any, case: str, tmp_path: Path) -> None:
    rules, truth = CASES[case]
    lab.set_policy({"name": case, "rules": rules})
    try:
        measurement = probe_in_lab(lab, tmp_path / "m.jsonl", timeout=3.0, nettest="circumvention")
    finally:
        lab.set_policy({"name": "none", "rules": []})
    seen = observed_features(measurement)
    wrong = {option: (str(seen[option]) if option in seen else "missing", list(seen[option].evidence[:2])
                      if option in seen else [])
             for option, expected in truth.items()
             if option not in seen or not Expectation.parse(expected).matches(seen[option])}
    assert not wrong, f"{case}: {wrong}"
    x = measurement["test_keys"]["x_wallwatch"]
    assert measurement["test_name"] == "circumvention" and measurement["test_runtime"] < 20
    # The measurement says in words which options work from here.
    worked = [option for option, expected in truth.items() if expected == "ok"]
    assert x["summary"].split(";")[0].endswith("worked") and all(
        x["features"][option]["verdict"] == "ok" for option in worked)
    if case == "vpn-2017-fingerprints":
        assert "OpenVPN over UDP and OpenVPN over TCP were blocked (the app's protocol was recognised" in x["summary"]
    if case == "all-techniques-tor":
        assert "Tor through an obfs4 bridge" in x["summary"].split(";")[0]
