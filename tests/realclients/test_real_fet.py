"""shadowsocks-libev and obfs4proxy under the fully-encrypted-traffic rule, at the rate the paper's rules imply.

Wu et al., USENIX Security 2023: the GFW applies Algorithm 1 to the first data
packet of a TCP connection and blocks a connection that no exemption covers
with probability ~0.26 (wallwatch.protocols.fet.BLOCK_PROBABILITY). So the
expected number of caught connections is not guessed here: the first data
packets are captured on the client's link, `protocols.fet.detect` says which
are candidates, and the count the censor caught must be a plausible
Binomial(candidates, probability) draw. Ordinary TLS and plain HTTP through
the same policy are never caught.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
from realclients_helpers import (
    Capture,
    DecisionLog,
    binomial_interval,
    client_tool,
    require_properties,
)

from wallwatch.lab import vpn_servers
from wallwatch.lab.topology import Lab
from wallwatch.protocols import fet

pytestmark = pytest.mark.lab

ALLOW_ALL_CONNECTIONS = 8
FET_CONNECTIONS = 60  # enough for the binomial interval to exclude both 0 and "all candidates"
NEVER_CAUGHT_CONNECTIONS = 20
CONNECTION_TIMEOUT = "2"  # seconds; a lab GET through a proxy takes a few ms, a dropped one never ends
PARALLEL = "6"


@dataclass
class Proxy:
    """A real circumvention client/server pair and how to reach the backend through it."""

    name: str
    server: vpn_servers.Running
    client: vpn_servers.Running

    def socks_args(self, backend: vpn_servers.Running) -> list[str]:
        host, port = self.client.info["socks"]
        # obfs4 (like Tor) CONNECTs to the bridge, which forwards to the backend;
        # shadowsocks CONNECTs to the final target.
        target = f"{self.server.address}:{self.server.port}" if self.name == "obfs4" else f"{backend.address}:{backend.port}"
        args = ["socks-get", "--socks", f"{host}:{port}", "--target", target]
        if "credentials" in self.client.info:
            username, password = self.client.info["credentials"]
            args += ["--username-hex", username.hex(), "--password-hex", password.hex()]
        return args


@pytest.fixture(scope="module", params=["shadowsocks", "obfs4"])
def proxy(request: pytest.FixtureRequest, lab: Lab, backend: vpn_servers.Running) -> Iterator[Proxy]:
    if request.param == "shadowsocks":
        with vpn_servers.start_shadowsocks_server(lab) as server, vpn_servers.start_shadowsocks_client(lab, server) as client:
            yield Proxy("shadowsocks", server, client)
    else:
        with vpn_servers.start_obfs4_server(lab, backend=(backend.address, backend.port)) as server, \
                vpn_servers.start_obfs4_client(lab, server) as client:
            yield Proxy("obfs4", server, client)


def fet_policy() -> dict[str, Any]:
    """The paper's rule: a candidate connection is dropped with probability 0.26."""
    return {
        "name": "fet-usenix23",
        "rules": [{
            "name": "fully-encrypted",
            "match": {"fet.suspicious": True},
            "action": "drop",
            "probability": fet.BLOCK_PROBABILITY,
        }],
    }


def _through(lab: Lab, proxy: Proxy, backend: vpn_servers.Running, count: int) -> dict[str, Any]:
    return client_tool(lab, *proxy.socks_args(backend), "--count", str(count), "--timeout", CONNECTION_TIMEOUT,
                       "--parallel", PARALLEL, timeout=120)


def test_proxy_works_with_allow_all(allow_all: Lab, proxy: Proxy, backend: vpn_servers.Running, tmp_path: Path) -> None:
    capture = Capture.start(allow_all, proxy.server.address, proxy.server.port, tmp_path / "first.pcap")
    try:
        answer = _through(allow_all, proxy, backend, ALLOW_ALL_CONNECTIONS)
    finally:
        capture.stop()
    assert answer["ok"] == ALLOW_ALL_CONNECTIONS, (answer, proxy.client.logs(), proxy.server.logs())
    first = capture.first_data_packets()
    assert len(first) == ALLOW_ALL_CONNECTIONS
    # Both are built to look random: most first packets are FET candidates (paper §5, Table 3).
    candidates = sum(fet.detect(payload).blocked_candidate for payload in first.values())
    assert candidates >= ALLOW_ALL_CONNECTIONS - 1, [fet.detect(p) for p in first.values()]
