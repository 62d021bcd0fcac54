"""The openvpn nettest in the lab: Debian's openvpn server in the services namespace, the real censor between.

The probe runs in the client namespace exactly as `wallwatch lab exec -- wallwatch probe run openvpn` does;
the censor's `openvpn.handshake` rule is the opcode fingerprint of OpenGFW and Xue et al. 2022.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from wallwatch.lab.capabilities import missing_lab_features

    missing = missing_lab_features()
    if missing:
        pytest.skip("lab unavailable: " + "; ".join(missing))
    import shutil

    if shutil.which("openvpn") is None:
        pytest.skip("the openvpn binary is not installed (scripts/install.sh)")
    from wallwatch.lab.topology import Lab

    state = tmp_path_factory.mktemp("ovpnlab") / "lab.json"  # never the user's own lab state
    with Lab.up(policy={"name": "none", "rules": []}, state_path=state) as running:
        yield running


@pytest.fixture(scope="module")
def openvpn_server(lab: Any) -> Iterator[Any]:
    from wallwatch.lab import vpn_servers

    with vpn_servers.start_openvpn_server(lab) as running:
        yield running


def probe(lab: Any, server: Any, tmp_path: Path) -> dict[str, Any]:
    output = tmp_path / "m.jsonl"
    argv = [sys.executable, "-m", "wallwatch.cli", "probe", "run", "openvpn", "--timeout", "3", "-o", str(output)]
    for transport in ("udp", "tcp"):
        argv += ["--target", f"openvpn://lab/?address={server.address}:{server.port}&transport={transport}"]
    result = lab.run_in_client(argv, timeout=90)
    assert result.returncode == 0 and output.exists(), result.stderr[-3000:]
    return json.loads(output.read_text().splitlines()[-1])


def facts(measurement: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    x = measurement["test_keys"]["x_wallwatch"]
    return x["features"]["tunnel"], {h["transport"]: h for h in x["openvpn_handshakes"]}


def test_handshake_passes_without_a_rule(lab: Any, openvpn_server: Any, tmp_path: Path) -> None:
    lab.set_policy({"name": "none", "rules": []})
    tunnel, handshakes = facts(probe(lab, openvpn_server, tmp_path))
    assert (tunnel["verdict"], tunnel["targets_ok"]) == ("ok", 2), tunnel
    assert {h["server_tls"] for h in handshakes.values()} == {"server_hello"}


def test_opcode_fingerprint_is_caught_on_both_transports(lab: Any, openvpn_server: Any, tmp_path: Path) -> None:
    lab.set_policy({"name": "block-openvpn", "rules": [
        {"name": "block-openvpn", "match": {"openvpn.handshake": True}, "action": "drop"}]})
    try:
        measurement = probe(lab, openvpn_server, tmp_path)
    finally:
        lab.set_policy({"name": "none", "rules": []})
    tunnel, handshakes = facts(measurement)
    assert (tunnel["verdict"], tunnel["method"], tunnel["partial"]) == ("blocked", "protocol_dpi", False), tunnel
    for transport, h in handshakes.items():
        assert h["failure"] is not None and h["server_tls"] is None, (transport, h)
    # Over UDP this censor lets both resets pass and drops the client's next step, the ClientHello
    # in P_CONTROL_V1 (censor/analyzers/openvpn.py): the server answered, then the flow stalled.
    # Over TCP it decides on the framed client reset, so no server reset comes back, while the
    # printable control to the same address:port passes and the server closes it, which pins the
    # drop on the OpenVPN bytes.
    udp, tcp = handshakes["udp"], handshakes["tcp"]
    assert (udp["failed_at"], udp["failure"], udp["packets_received"]) == ("server_tls", "generic_timeout_error", 1)
    assert (tcp["failed_at"], tcp["failure"]) == ("server_reset", "generic_timeout_error")
    assert tcp["control"] == {"outcome": "closed", "failure": "eof_error"}, tcp
    assert any("openvpn.reset_dpi" in tunnel["rule"] or "same-size non-OpenVPN payload" in line
               for line in tunnel["evidence"])
    assert any("once both resets had crossed the wire" in line for line in tunnel["evidence"]), tunnel["evidence"]
