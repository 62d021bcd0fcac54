"""wireguard-go + wg on both ends through the censor: handshake and traffic with allow-all, none under `wireguard.handshake`."""

from __future__ import annotations

import time
from typing import Iterator

import pytest
from realclients_helpers import DecisionLog, client_tool, ping, require_properties, rule_policy

from wallwatch.lab import vpn_servers
from wallwatch.lab.topology import Lab

pytestmark = pytest.mark.lab

# WireGuard retries a lost initiation after REKEY_TIMEOUT = 5 s (whitepaper §6.4),
# so 7 pings a second apart cover two initiations.
BLOCKED_PINGS = 7


@pytest.fixture(scope="module")
def wireguard_server(lab: Lab) -> Iterator[vpn_servers.Running]:
    with vpn_servers.start_wireguard_server(lab) as running:
        yield running


def test_wireguard_handshake_and_traffic_with_allow_all(allow_all: Lab, wireguard_server: vpn_servers.Running,
                                                         backend: vpn_servers.Running) -> None:
    before = time.time()
    with vpn_servers.start_wireguard_client(allow_all, wireguard_server) as client:
        assert ping(allow_all, wireguard_server.info["tunnel_server"], count=3), client.logs()
        interface = client.info["interface"]
        assert vpn_servers.wireguard_latest_handshake(allow_all, "client", interface) >= int(before)
        assert vpn_servers.wireguard_latest_handshake(allow_all, "services", wireguard_server.info["interface"]) >= int(before)
        route = allow_all.run_in_client(["ip", "route", "get", backend.address]).stdout
        assert f"dev {interface}" in route, route
        answer = client_tool(allow_all, "http-get", "--target", f"{backend.address}:{backend.port}")
        assert answer["ok"] == 1, answer


def test_wireguard_handshake_rule_stops_the_tunnel(allow_all: Lab, wireguard_server: vpn_servers.Running) -> None:
    require_properties("wireguard.handshake")
    allow_all.set_policy(rule_policy("block-wireguard", {"wireguard.handshake": True}, "drop"))
    log = DecisionLog(allow_all)
    with vpn_servers.start_wireguard_client(allow_all, wireguard_server) as client:
        assert not ping(allow_all, wireguard_server.info["tunnel_server"], count=BLOCKED_PINGS, interval=1.0)
        assert vpn_servers.wireguard_latest_handshake(allow_all, "client", client.info["interface"]) == 0
    assert wireguard_server.alive(), wireguard_server.logs()
    decided = log.decisions(f"{wireguard_server.address}:{wireguard_server.port}")
    dropped = [d for d in decided if d["rule"] == "block-wireguard" and d["action"] == "drop"]
    assert dropped and all(d["props"].get("wireguard.handshake") is True for d in dropped), decided
    assert not [d for d in decided if d["action"] != "drop" and d["props"].get("wireguard.handshake")], decided
