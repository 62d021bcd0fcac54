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
CONNECTION_TIMEOUT = "3"  # seconds; a lab GET through a proxy takes a few ms, a dropped one never ends
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
    assert len(first) == ALLOW_ALL_CONNECTIONS and capture.ports_without_data() == {}
    # Both are built to look random: most first packets are FET candidates (paper §5, Table 3).
    candidates = sum(fet.detect(payload).blocked_candidate for payload in first.values())
    assert candidates >= ALLOW_ALL_CONNECTIONS - 1, [fet.detect(p) for p in first.values()]


def _client_port(decision: dict[str, Any]) -> int:
    return int(decision["client"].rsplit(":", 1)[1])


def test_fet_rule_catches_at_the_rate_the_paper_implies(allow_all: Lab, proxy: Proxy, backend: vpn_servers.Running,
                                                         tmp_path: Path) -> None:
    require_properties("fet.suspicious")
    allow_all.set_policy(fet_policy())
    log = DecisionLog(allow_all)
    capture = Capture.start(allow_all, proxy.server.address, proxy.server.port, tmp_path / "first.pcap")
    try:
        answer = _through(allow_all, proxy, backend, FET_CONNECTIONS)
    finally:
        capture.stop()
    first = capture.first_data_packets()
    # A connection that dies before its first data packet (seen once in many runs: its SYNs are
    # listed below) never reaches the FET rule; it is left out of the rate, counted as failed,
    # and must stay rare.
    missing = FET_CONNECTIONS - len(first)
    assert missing <= 1, (f"captured {len(first)} first packets of {FET_CONNECTIONS}; client: {answer}; "
                          f"ports with SYNs but no data: {capture.ports_without_data()}")
    if missing:
        print(f"{proxy.name}: one connection sent no data: {answer}, {capture.ports_without_data()}")
    candidates = {port for port, payload in first.items() if fet.detect(payload).blocked_candidate}
    decisions = {_client_port(d): d for d in log.decisions(f"{proxy.server.address}:{proxy.server.port}")
                 if not d.get("residual")}
    assert set(first) <= set(decisions), "every connection was decided by the censor"
    caught = {port for port in first if decisions[port]["action"] == "drop"}

    assert caught <= candidates, "only a first packet no exemption covers is ever caught"
    assert {port for port in first if decisions[port]["props"].get("fet.suspicious")} == candidates, \
        "the censor's fet analyzer agrees with protocols.fet on the captured packets"
    low, high = binomial_interval(len(candidates), fet.BLOCK_PROBABILITY)
    print(f"{proxy.name}: {len(candidates)}/{len(first)} first packets are FET candidates; caught {len(caught)}, "
          f"expected {len(candidates) * fet.BLOCK_PROBABILITY:.1f}, 99.9% interval [{low}, {high}]")
    assert low <= len(caught) <= high, (
        f"{proxy.name}: {len(caught)} of {len(candidates)} candidates caught; "
        f"Binomial({len(candidates)}, {fet.BLOCK_PROBABILITY}) 99.9% interval is [{low}, {high}]"
    )
    assert answer["failed"] == len(caught) + missing, "exactly the caught connections failed for the client"


def test_tls_and_http_are_never_caught_by_the_fet_rule(allow_all: Lab, backend: vpn_servers.Running) -> None:
    require_properties("fet.suspicious")
    from wallwatch.lab import addresses

    allow_all.set_policy(fet_policy())
    log = DecisionLog(allow_all)
    web = addresses.HTTPS_SERVICES[addresses.WEB]
    tls = client_tool(allow_all, "tls-get", "--target", f"{web}:{addresses.HTTPS_PORT}", "--sni", addresses.WEB,
                      "--ca", str(allow_all.ca_cert), "--count", str(NEVER_CAUGHT_CONNECTIONS), "--parallel", PARALLEL)
    http = client_tool(allow_all, "http-get", "--target", f"{backend.address}:{backend.port}",
                       "--count", str(NEVER_CAUGHT_CONNECTIONS), "--parallel", PARALLEL)
    assert tls["ok"] == NEVER_CAUGHT_CONNECTIONS, tls
    assert http["ok"] == NEVER_CAUGHT_CONNECTIONS, http
    for server in (f"{web}:{addresses.HTTPS_PORT}", f"{backend.address}:{backend.port}"):
        decided = log.decisions(server)
        assert len(decided) == NEVER_CAUGHT_CONNECTIONS
        assert all(d["action"] == "allow" and not d["props"].get("fet.suspicious") for d in decided), decided


PENALTY_PROBES = 3  # connections after the first catch that must all fall in the penalty box


def test_fet_block_holds_the_triple_for_its_duration(allow_all: Lab, backend: vpn_servers.Running) -> None:
    """After a catch, the GFW blocks the (client, server, port) triple "up to three minutes"
    (Wu et al. 2023, artifact README): every later connection through the proxy fails,
    while other servers stay reachable. A fresh ss-server on its own port keeps the
    penalty box away from the other tests."""
    require_properties("fet.suspicious")
    policy = fet_policy()
    policy["rules"][0]["duration"] = fet.RESIDUAL_BLOCK_SECONDS
    allow_all.set_policy(policy)
    log = DecisionLog(allow_all)
    port = vpn_servers.SHADOWSOCKS_PORT + 1
    with vpn_servers.start_shadowsocks_server(allow_all, port=port) as server, \
            vpn_servers.start_shadowsocks_client(allow_all, server, socks_port=1081) as client:
        proxy = Proxy("shadowsocks", server, client)
        # P(no catch in 40 candidates) = 0.74**40 ~ 6e-6.
        answer = client_tool(allow_all, *proxy.socks_args(backend), "--count", "40", "--timeout", CONNECTION_TIMEOUT,
                             "--stop-after-failures", str(1 + PENALTY_PROBES), timeout=180)
        outcomes = [r["ok"] for r in answer["results"]]
        first_failure = outcomes.index(False)
        assert outcomes[first_failure:] == [False] * (1 + PENALTY_PROBES), outcomes
        # Other servers are untouched meanwhile.
        assert client_tool(allow_all, "http-get", "--target", f"{backend.address}:{backend.port}")["ok"] == 1

    decided = log.decisions(f"{server.address}:{port}")
    fired = [d for d in decided if d["action"] == "drop" and not d.get("residual")]
    boxed = [d for d in decided if d.get("residual")]
    assert len(fired) == 1 and fired[0]["props"].get("fet.suspicious") is True, fired
    assert len({d["client"] for d in boxed}) >= PENALTY_PROBES, boxed
    assert all(d["rule"] == "fully-encrypted" for d in boxed)
    assert all(0 < d["until"] <= fet.RESIDUAL_BLOCK_SECONDS for d in boxed)
