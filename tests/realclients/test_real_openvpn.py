"""Debian's openvpn client and server through the censor: a tunnel with allow-all, none under `openvpn.handshake`."""

from __future__ import annotations

import json
from typing import Iterator

import pytest
from realclients_helpers import DecisionLog, client_tool, ping, require_properties, rule_policy

from wallwatch.lab import vpn_servers
from wallwatch.lab.topology import Lab

pytestmark = pytest.mark.lab

CONNECT_TIMEOUT = 15.0  # a lab handshake takes ~1 s; the busy 2-core box needs slack
BLOCKED_WAIT = 8.0  # long enough for several client resets (connect-retry 1) to be dropped


@pytest.fixture(scope="module")
def openvpn_server(lab: Lab) -> Iterator[vpn_servers.Running]:
    with vpn_servers.start_openvpn_server(lab) as running:
        yield running


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_openvpn_tunnel_works_with_allow_all(allow_all: Lab, openvpn_server: vpn_servers.Running,
                                              backend: vpn_servers.Running, proto: str) -> None:
    with vpn_servers.start_openvpn_client(allow_all, openvpn_server, proto) as client:
        assert vpn_servers.openvpn_client_connected(client, CONNECT_TIMEOUT), client.logs()
        gateway = openvpn_server.info["tunnel_gateway"][proto]
        assert ping(allow_all, gateway), f"no ping through the tunnel to {gateway}"
        route = allow_all.run_in_client(["ip", "route", "get", backend.address]).stdout
        assert "dev ovpn-c" in route, route  # the TCP check below really goes through the tunnel
        answer = client_tool(allow_all, "http-get", "--target", f"{backend.address}:{backend.port}")
        assert answer["ok"] == 1, answer


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_openvpn_handshake_rule_stops_the_tunnel(allow_all: Lab, openvpn_server: vpn_servers.Running, proto: str) -> None:
    require_properties("openvpn.handshake")
    allow_all.set_policy(rule_policy("block-openvpn", {"openvpn.handshake": True}, "drop"))
    log = DecisionLog(allow_all)
    with vpn_servers.start_openvpn_client(allow_all, openvpn_server, proto) as client:
        assert not vpn_servers.openvpn_client_connected(client, BLOCKED_WAIT), client.logs()
        assert not ping(allow_all, openvpn_server.info["tunnel_gateway"][proto], count=1)
    assert openvpn_server.alive(), openvpn_server.logs()
    decided = log.decisions(f"{openvpn_server.address}:{openvpn_server.port}")
    summary = "\n".join(json.dumps(d) for d in decided)
    dropped = [d for d in decided if d["rule"] == "block-openvpn" and d["action"] == "drop"]
    assert dropped and all(d["props"].get("openvpn.handshake") is True for d in dropped), summary
    # Anything else let through is not a handshake (e.g. the previous test's client's
    # last data packets after it stopped).
    assert not [d for d in decided if d["action"] != "drop" and d["props"].get("openvpn.handshake")], summary
    assert {d["proto"] for d in dropped} == {proto}
